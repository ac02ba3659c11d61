"""Writing Megatron ``.bin``/``.idx`` indexed datasets with numpy only, in bounded memory.

The bytes are identical to ``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder``'s
(what Megatron-LM's ``tools/preprocess_data.py`` and ``merge_datasets.py`` use), but:

* no torch/megatron import (seconds and hundreds of MB per process);
* sequence lengths and document indices are spooled to side files instead of Python lists, so
  memory does not grow with the dataset (Megatron's builder holds ~100 bytes per document);
* everything is written under ``<final>.tmp-<pid>`` names and renamed on :meth:`finalize`,
  ``.bin`` before ``.idx``: a killed run never leaves an ``.idx`` that looks finished.

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


def tmp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def remove_temporaries(prefix: str) -> None:
    """Delete this process's temporary files of dataset ``prefix`` (all of them, whether or not
    its writer finished constructing: a signal can arrive in between)."""
    for suffix in (".bin", ".lengths", ".docidx", ".idx"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_name(prefix + suffix))


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


class IndexedDatasetWriter:
    """Streams one dataset ``{prefix}.bin``/``{prefix}.idx``.

    Use :meth:`add_documents` for batches of single-sequence documents (what preprocessing
    makes), :meth:`add_dataset` to append a finished dataset (merging), then :meth:`finalize`,
    or :meth:`abort` to delete the temporary files.
    """

    def __init__(self, prefix: str, dtype: type) -> None:
        self.prefix = prefix
        self.dtype = np.dtype(dtype).type
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {dtype}")
        self.bin_path, self.idx_path = prefix + ".bin", prefix + ".idx"
        self._bin_tmp = tmp_name(self.bin_path)
        self._lens_tmp = tmp_name(prefix + ".lengths")
        self._docs_tmp = tmp_name(prefix + ".docidx")
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

    def finalize(self) -> None:
        """Write the ``.idx`` and move both files to their final names (``.bin`` first)."""
        for f in (self._bin, self._lens, self._docs):
            f.close()
        idx_tmp = tmp_name(self.idx_path)
        with open(idx_tmp, "wb") as out:
            self._write_index(out)
        # An .idx from an earlier run must not end up next to this run's .bin, even briefly.
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.idx_path)
        os.replace(self._bin_tmp, self.bin_path)
        os.replace(idx_tmp, self.idx_path)
        for path in (self._lens_tmp, self._docs_tmp):
            os.remove(path)

    def abort(self) -> None:
        """Close and delete every temporary file; final names are left untouched."""
        for f in (self._bin, self._lens, self._docs):
            with contextlib.suppress(Exception):
                f.close()
        remove_temporaries(self.prefix)
