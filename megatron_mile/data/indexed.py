"""Writing Megatron ``.bin``/``.idx`` indexed datasets with numpy only, in bounded memory.

The bytes are identical to ``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder``'s
(what Megatron-LM's ``tools/preprocess_data.py`` and ``merge_datasets.py`` use), but:

* no torch/megatron import (seconds and hundreds of MB per process);
* sequence lengths and document indices are spooled to side files instead of Python lists, so
  memory does not grow with the dataset (Megatron's builder holds ~100 bytes per document);
* everything is written into a staging directory (see :mod:`megatron_mile.data.manifest`) and
  moved to the final names by the caller's commit, so a killed run leaves nothing under a final
  name and nothing but ``.bin``/``.idx`` pairs beside the datasets.

``.idx`` layout (little endian): ``b"MMIDIDX\\x00\\x00"``, version ``<Q>`` = 1, dtype code ``<B>``,
sequence count ``<Q>``, document count ``<Q>`` (documents + 1), int32 sequence lengths, int64
byte pointers, int64 document indices.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from typing import Optional

import numpy as np

from megatron_mile.data import manifest

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
DTYPE_CODES = {
    np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6,
    np.float32: 7, np.uint16: 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
HEADER_BYTES = len(INDEX_HEADER) + 8 + 1 + 8 + 8  # 34

# Convert spooled arrays to the .idx in pieces of this many elements (bounded memory).
_CHUNK = 1 << 22


def optimal_dtype(vocab_size: Optional[int]) -> type:
    """uint16 below 65500 token ids, else int32 (Megatron's ``DType.optimal_dtype``)."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def read_index_header(idx_path: str) -> tuple[type, int, int]:
    """``(dtype, sequence_count, document_count)`` parsed from an ``.idx`` header."""
    with open(idx_path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:9] != INDEX_HEADER:
        raise ValueError(f"{idx_path}: not a Megatron indexed dataset index (bad header)")
    version, code, seqs, docs = struct.unpack("<QBQQ", head[9:])
    if version != INDEX_VERSION or code not in CODE_DTYPES:
        raise ValueError(f"{idx_path}: unsupported index version {version} / dtype code {code}")
    return CODE_DTYPES[code], seqs, docs


@contextlib.contextmanager
def _errors_name(path: str):
    """An OSError without a file name (a failed write: ENOSPC, EIO) gets ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, path) from e
        raise


class IndexedDatasetWriter:
    """Streams one dataset ``{prefix}.bin``/``{prefix}.idx``.

    Use :meth:`add_documents` for batches of single-sequence documents (what preprocessing
    makes), :meth:`add_dataset` to append a finished dataset (merging), then :meth:`finish`;
    the files are then complete under ``staging`` (:meth:`moves` says where they go, for the
    caller's :func:`manifest.commit` of a set). Deleting the staging directory discards them.
    Without ``staging``, a dataset on its own: the writer stages in a directory of its own and
    :meth:`finalize` commits it (or :meth:`abort`).
    """

    def __init__(self, prefix: str, dtype: type, staging: Optional[str] = None) -> None:
        self.prefix = prefix
        self._own_staging = staging is None
        if staging is None:
            staging = manifest.make_staging(os.path.dirname(os.path.abspath(prefix)))
        self.staging = staging
        self.dtype = np.dtype(dtype).type
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {dtype}")
        self.bin_path, self.idx_path = prefix + ".bin", prefix + ".idx"
        staged = os.path.join(staging, os.path.basename(prefix))
        self._bin_tmp, self._idx_tmp = staged + ".bin", staged + ".idx"
        self._lens_tmp = staged + ".lengths"
        self._docs_tmp = staged + ".docidx"
        self._bin = open(self._bin_tmp, "wb")
        self._lens = open(self._lens_tmp, "wb")
        self._docs = open(self._docs_tmp, "wb")
        self.sequences = 0
        self.documents = 0
        self.tokens = 0

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents of one sequence each: ``tokens`` back to back, ``lengths`` per doc."""
        if len(lengths) == 0:
            return
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        lengths = np.ascontiguousarray(lengths, dtype=np.int32)
        with _errors_name(self._bin_tmp):
            self._bin.write(memoryview(tokens).cast("B"))
            self._lens.write(lengths.tobytes())
            # A document ends after each sequence: indices sequences+1 .. sequences+n.
            self._docs.write(np.arange(self.sequences + 1, self.sequences + 1 + len(lengths),
                                       dtype=np.int64).tobytes())
        self.sequences += len(lengths)
        self.documents += len(lengths)
        self.tokens += int(tokens.size)

    def add_dataset(self, prefix: str) -> None:
        """Append the finished dataset ``{prefix}.bin/.idx`` (same dtype), as Megatron's
        ``IndexedDatasetBuilder.add_index``."""
        dtype, seqs, docs = read_index_header(prefix + ".idx")
        if dtype != self.dtype:
            raise ValueError(f"{prefix}.idx holds {np.dtype(dtype).name} tokens, the merged "
                             f"dataset {np.dtype(self.dtype).name}; cannot merge")
        index = np.memmap(prefix + ".idx", mode="r", dtype=np.uint8)
        try:
            lengths = np.frombuffer(index, np.int32, count=seqs, offset=HEADER_BYTES)
            doc_offset = HEADER_BYTES + seqs * 4 + seqs * 8
            doc_idx = np.frombuffer(index, np.int64, count=docs, offset=doc_offset)
            for i in range(0, seqs, _CHUNK):
                self._lens.write(lengths[i:i + _CHUNK].tobytes())
            for i in range(1, docs, _CHUNK):
                self._docs.write((doc_idx[i:i + _CHUNK] + self.sequences).tobytes())
            tokens = int(lengths.sum(dtype=np.int64))
        finally:
            del index
        expected = tokens * np.dtype(self.dtype).itemsize
        if os.path.getsize(prefix + ".bin") != expected:
            raise ValueError(f"{prefix}.bin has {os.path.getsize(prefix + '.bin')} bytes, its "
                             f".idx says {expected}")
        with open(prefix + ".bin", "rb") as f:
            shutil.copyfileobj(f, self._bin, 16 * 2**20)
        self.sequences += seqs
        self.documents += docs - 1
        self.tokens += tokens

    def _write_index(self, out) -> None:
        itemsize = np.dtype(self.dtype).itemsize
        out.write(INDEX_HEADER)
        out.write(struct.pack("<Q", INDEX_VERSION))
        out.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
        out.write(struct.pack("<Q", self.sequences))
        out.write(struct.pack("<Q", self.documents + 1))
        lengths = np.memmap(self._lens_tmp, dtype=np.int32, mode="r") if self.sequences else \
            np.zeros(0, np.int32)
        for i in range(0, self.sequences, _CHUNK):
            out.write(lengths[i:i + _CHUNK].tobytes())
        # Byte pointers: exclusive prefix sum of lengths * itemsize, carried across chunks.
        start = 0
        for i in range(0, self.sequences, _CHUNK):
            sizes = lengths[i:i + _CHUNK].astype(np.int64) * itemsize
            pointers = np.cumsum(sizes) - sizes + start
            out.write(pointers.tobytes())
            start = int(pointers[-1] + sizes[-1])
        del lengths
        out.write(np.zeros(1, np.int64).tobytes())  # document_indices[0] = 0
        with open(self._docs_tmp, "rb") as docs:
            shutil.copyfileobj(docs, out, 16 * 2**20)

    def finish(self) -> None:
        """Write the ``.idx``; both files are then complete in the staging directory."""
        with _errors_name(self._idx_tmp):
            for f in (self._bin, self._lens, self._docs):
                f.close()
            with open(self._idx_tmp, "wb") as out:
                self._write_index(out)
        for path in (self._lens_tmp, self._docs_tmp):
            os.remove(path)

    def moves(self) -> list[tuple[str, str]]:
        """``(staged, final)`` for the ``.bin`` then the ``.idx`` (the order a commit needs)."""
        return [(self._bin_tmp, self.bin_path), (self._idx_tmp, self.idx_path)]

    def close(self) -> None:
        """Close the open files (on failure, before the staging directory is deleted)."""
        for f in (self._bin, self._lens, self._docs):
            f.close()

    def finalize(self) -> None:
        """A dataset on its own: :meth:`finish`, then move it to its final name."""
        assert self._own_staging, "a writer in a shared staging directory is committed by its owner"
        try:
            self.finish()
            manifest.commit(self.moves(), [], None, manifest.manifest_path(self.prefix), self.staging)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """A dataset on its own: delete everything written."""
        try:
            self.close()
        except OSError:
            pass
        manifest.remove_staging(self.staging)
