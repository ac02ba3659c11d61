"""Streaming readers for ``.jsonl``, ``.json`` and ``.jsonl.zst`` files.

The preprocessing tool reads *blocks*: runs of whole lines, about ``block_bytes`` long, tagged
with the number of their first line. Blocks go to the tokenisation workers as one ``bytes``
object (one cheap pickle instead of one per line), and the workers split, JSON-decode and
tokenise them, so the main process does little more than ``read`` and ``rfind``.

zstd input is decompressed as a stream, frame after frame (Pile shards hold several), so memory
stays bounded by the block size. A corrupt or truncated frame raises :class:`InputError` naming
the file and the line where decoding failed, instead of silently ending the input early.
"""

from __future__ import annotations

import errno
import glob
import os
from typing import Iterator, Optional

# Raw read size; large enough that per-call overhead vanishes, small enough to bound memory.
READ_BYTES = 2**20
# Compressed bytes per zstd decompress call (bounds the size of one call's output).
ZSTD_FEED_BYTES = 2**16


class InputError(Exception):
    """Bad input; the message names the file and line it came from."""

    def __init__(self, path: str, line: Optional[int], reason: str, detail: str = "") -> None:
        self.path, self.line, self.reason, self.detail = path, line, reason, detail
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}{': ' + detail if detail else ''}")

    def __reduce__(self):  # picklable across worker processes
        return (InputError, (self.path, self.line, self.reason, self.detail))


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files named by ``patterns`` (paths or globs), in the order given; each glob sorted."""
    files: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(errno.ENOENT, "--input pattern matched no files", pattern)
            files.extend(matches)
        elif os.path.isfile(pattern):
            files.append(pattern)
        else:
            raise FileNotFoundError(errno.ENOENT, "--input file not found", pattern)
    return files


def is_zstd(path: str) -> bool:
    return path.endswith((".zst", ".zstd"))


def _raw_chunks(path: str, progress: Optional[list]) -> Iterator[bytes]:
    """The file's bytes in ``READ_BYTES`` pieces; ``progress[0]`` counts bytes read from disk."""
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(READ_BYTES)
            if not chunk:
                return
            if progress is not None:
                progress[0] += len(chunk)
            yield chunk


def _zstd_chunks(path: str, raw: Iterator[bytes], lines_so_far) -> Iterator[bytes]:
    """Decompressed bytes of every zstd frame in ``raw``, raising on corrupt/truncated frames."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    pending = False  # bytes fed to the current frame that have not completed it
    for raw_chunk in raw:
        # Fed in small slices: decompressobj has no output limit and text compresses 4-10x
        # (repetitive data far more), so this bounds the memory of one call.
        for start in range(0, len(raw_chunk), ZSTD_FEED_BYTES):
            chunk = raw_chunk[start:start + ZSTD_FEED_BYTES]
            while chunk:
                try:
                    out = dobj.decompress(chunk)
                except zstandard.ZstdError as e:
                    raise InputError(path, lines_so_far(), "undecodable zstd data",
                                     str(e)) from e
                if out:
                    yield out
                if dobj.eof:  # frame finished; the rest of the slice starts the next frame
                    chunk = dobj.unused_data
                    dobj = dctx.decompressobj()
                    pending = False
                else:
                    pending = True
                    chunk = b""
    if pending:
        raise InputError(path, lines_so_far(), "undecodable zstd data",
                         "truncated stream (the last frame is incomplete)")


def iter_blocks(path: str, block_bytes: int = 2**20,
                progress: Optional[list] = None) -> Iterator[tuple[int, bytes]]:
    """``(first_line_number, block)`` for runs of whole lines of ``path``.

    Every block but the file's last ends with ``b"\\n"``; line numbers are 1-based. A single line
    longer than ``block_bytes`` makes a block of its own.
    """
    next_line = 1
    buf = bytearray()

    def lines_so_far() -> int:
        return next_line + buf.count(b"\n")

    chunks = _raw_chunks(path, progress)
    if is_zstd(path):
        chunks = _zstd_chunks(path, chunks, lines_so_far)
    for chunk in chunks:
        buf += chunk
        while len(buf) >= block_bytes:
            # Whole lines up to ~block_bytes; a line longer than that makes a block of its own.
            cut = buf.rfind(b"\n", 0, block_bytes) + 1 or buf.find(b"\n", block_bytes) + 1
            if cut == 0:
                break  # one long line still being read
            block = bytes(buf[:cut])
            del buf[:cut]
            yield next_line, block
            next_line += block.count(b"\n")
    if buf:
        yield next_line, bytes(buf)


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` for every line of ``path``, line ending stripped."""
    for first, block in iter_blocks(path):
        lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()
        for i, line in enumerate(lines):
            yield first + i, line.rstrip(b"\r")


def input_size(paths: list[str]) -> int:
    """Total bytes on disk of ``paths`` (the compressed size for zstd)."""
    return sum(os.path.getsize(p) for p in paths)
