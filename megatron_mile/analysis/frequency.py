"""Token frequency counts over Megatron indexed datasets (or a weighted blend) and frequency buckets.

Counting streams the ``.bin`` through megatron's ``IndexedDataset`` in chunks of
``chunk_tokens`` and adds ``np.bincount`` of each chunk, so memory is one chunk plus one
``[vocab]`` int64 vector whatever the dataset size. The result is saved as ``<out>.npy`` (the
counts) and ``<out>.json`` (what was counted and a summary).

For a blend (``--data-path 30 a 70 b``) the counts the model actually trains on are not the sum
of the datasets' counts but each dataset's relative frequencies mixed with the blend weights;
:func:`count_tokens` then stores those expected counts (float64, scaled to the blend's total
token count) and the JSON says so (``"kind": "blend_expected"``).

Buckets (:class:`FrequencyBuckets`) are half-open intervals of count, so they are defined by
their edges alone and a token's bucket depends on its count only (ties never straddle two
buckets). Two schemes: log-spaced counts (``[1, 10), [10, 100), ...``) and quantiles of token
mass (each bucket holds about the same share of all training tokens: a handful of very frequent
types in the top bucket, most of the vocabulary in the bottom one). Tokens never seen in the
counted data get their own bucket, ``unseen``, so a held-out token with count 0 is reported,
not dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from megatron_mile.analysis._io import ensure_parent, save_npy, write_json

__all__ = [
    "BUCKET_SCHEMES",
    "DatasetTokens",
    "FrequencyBuckets",
    "TokenCounts",
    "VocabularyMismatchError",
    "build_buckets",
    "count_dataset_tokens",
    "count_tokens",
    "dataset_label",
    "log_buckets",
    "mass_quantile_buckets",
    "paper_buckets",
    "parse_blend",
]

BUCKET_SCHEMES = ("log", "mass", "paper")
# The MiLe paper's low / medium / high-frequency tokens: the rarest types holding 5% of the training
# token mass, the next 15%, the most frequent 80% (rarest first, as the buckets here).
PAPER_MASS_SHARES = (0.05, 0.15, 0.80)
PAPER_BUCKET_NAMES = ("low", "medium", "high")

# 16M tokens per read: 32 MiB of uint16 plus bincount's output, fast and small.
DEFAULT_CHUNK_TOKENS = 1 << 24


class VocabularyMismatchError(ValueError):
    """Token ids of a dataset do not fit the vocabulary they are counted (or evaluated) against."""


# --------------------------------------------------------------------------- counting
@dataclass
class DatasetTokens:
    """What was counted in one dataset of the blend."""

    prefix: str
    """Path prefix of ``.bin``/``.idx``."""
    label: str
    """Short name (the Pile domain for ``mile-preprocess --split-by`` outputs)."""
    weight: Optional[float]
    """Normalised blend weight, or None for an unweighted list."""
    tokens: int
    """Tokens in the dataset."""
    sequences: int
    """Sequences (= documents for text data) in the dataset."""
    max_token_id: int
    """Largest token id seen (-1 for an empty dataset)."""


@dataclass
class TokenCounts:
    """Token counts of a dataset or blend, indexed by token id."""

    counts: np.ndarray
    """``[vocab_size]``: int64 occurrences, or float64 expected occurrences for a weighted blend."""
    vocab_size: int
    """Length of ``counts``: the tokenizer's vocabulary size (or max id + 1 if it was not given)."""
    datasets: List[DatasetTokens] = field(default_factory=list)
    """The counted datasets, in blend order."""
    vocab_size_inferred: bool = False
    """True when no vocabulary size was given and ``max id + 1`` was used."""

    @property
    def kind(self) -> str:
        return "blend_expected" if self.counts.dtype.kind == "f" else "tokens"

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def frequency(self) -> np.ndarray:
        """Relative frequency per token id (sums to 1; all zeros for an empty dataset)."""
        total = self.total
        return self.counts / total if total > 0 else np.zeros(self.vocab_size)

    def summary(self, top: int = 20) -> dict:
        """JSON-able description: totals, coverage, concentration of the token mass."""
        total = self.total
        seen = int(np.count_nonzero(self.counts))
        order = np.argsort(-self.counts, kind="stable")
        freq = self.frequency()
        nz = freq[freq > 0]
        out = {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "vocab_size_inferred": self.vocab_size_inferred,
            "total_tokens": total if self.kind == "blend_expected" else int(total),
            "types_seen": seen,
            "types_unseen": self.vocab_size - seen,
            "unigram_entropy_bits": float(-(nz * np.log2(nz)).sum()) if nz.size else None,
            "top_tokens": [{"id": int(i), "count": _json_number(self.counts[i])} for i in order[:top]
                           if self.counts[i] > 0],
            "mass_of_top_types": {},
            "datasets": [asdict(d) for d in self.datasets],
        }
        for share in (0.001, 0.01, 0.1):
            k = max(1, int(round(share * self.vocab_size)))
            out["mass_of_top_types"][f"{share:g}"] = float(freq[order[:k]].sum())
        return out

    def save(self, out_prefix: str) -> tuple[str, str]:
        """Write ``<out_prefix>.npy`` and ``<out_prefix>.json`` (each atomically)."""
        out_prefix = _strip_suffix(out_prefix)
        ensure_parent(out_prefix)
        npy, js = out_prefix + ".npy", out_prefix + ".json"
        save_npy(npy, self.counts)
        write_json(js, self.summary())
        return npy, js

    @classmethod
    def load(cls, path: str) -> "TokenCounts":
        """Read counts saved by :meth:`save` (``path``: the ``.npy``, the ``.json`` or the prefix)."""
        prefix = _strip_suffix(path)
        counts = np.load(prefix + ".npy", allow_pickle=False)
        if counts.ndim != 1:
            raise ValueError(f"{prefix}.npy: expected a 1-d array of counts, got shape {counts.shape}")
        meta = {}
        if os.path.exists(prefix + ".json"):
            with open(prefix + ".json", encoding="utf-8") as f:
                meta = json.load(f)
        datasets = [DatasetTokens(**d) for d in meta.get("datasets", [])]
        return cls(counts=counts, vocab_size=int(counts.size), datasets=datasets,
                   vocab_size_inferred=bool(meta.get("vocab_size_inferred", False)))


def _strip_suffix(path: str) -> str:
    for ext in (".npy", ".json"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def _json_number(x):
    return float(x) if isinstance(x, (float, np.floating)) else int(x)


def dataset_label(prefix: str) -> str:
    """``out/pile_Pile-CC_text_document`` -> ``pile_Pile-CC``: the file name without the
    ``_{key}_document`` tail that preprocessing appends."""
    name = os.path.basename(prefix.rstrip("/"))
    if name.endswith("_document"):
        name = name[: -len("_document")]
        name = name.rsplit("_", 1)[0] if "_" in name else name
    return name or prefix


def _strip_shared_prefix(labels: List[str], named: List[bool]) -> List[str]:
    """``corpus_Licenses, corpus_Python_Code`` -> ``Licenses, Python_Code``: the output prefix that
    all of one preprocessing run's datasets share says nothing (user-given labels are kept)."""
    auto = [lab for lab, n in zip(labels, named) if not n]
    if len(auto) < 2:
        return labels
    common = os.path.commonprefix(auto)
    cut = common.rfind("_") + 1
    if cut == 0 or any(len(lab) <= cut for lab in auto):
        return labels
    return [lab if n else lab[cut:] for lab, n in zip(labels, named)]


def parse_blend(items: Sequence[str]) -> tuple[List[str], Optional[List[float]], List[str]]:
    """Megatron's ``--data-path`` list, ``[prefix ...]`` or ``[w1 prefix1 w2 prefix2 ...]``, with
    an optional ``LABEL=`` in front of each prefix. Returns ``(prefixes, weights or None, labels)``;
    weights are normalised to sum to 1."""
    items = list(items)
    if not items:
        raise ValueError("no dataset given")

    def is_number(s: str) -> bool:
        try:
            float(s)
            return True
        except ValueError:
            return False

    weighted = len(items) % 2 == 0 and all(is_number(items[i]) for i in range(0, len(items), 2))
    if weighted:
        weights = [float(items[i]) for i in range(0, len(items), 2)]
        raw = [items[i] for i in range(1, len(items), 2)]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"blend weights must be >= 0 with a positive sum, got {weights}")
        weights = [w / sum(weights) for w in weights]
    else:
        if any(is_number(s) for s in items):
            raise ValueError(f"--data-path {' '.join(items)}: give either prefixes or weight/prefix pairs")
        weights, raw = None, items
    labels, prefixes, named = [], [], []
    for s in raw:
        label, sep, prefix = s.partition("=")
        if not sep:
            label, prefix = dataset_label(s), s
        labels.append(label)
        prefixes.append(prefix)
        named.append(bool(sep))
    labels = _strip_shared_prefix(labels, named)
    if len(set(labels)) != len(labels):
        raise ValueError(f"dataset labels must be distinct, got {labels} (name them LABEL=PREFIX)")
    return prefixes, weights, labels


def open_indexed_dataset(prefix: str):
    """megatron's ``IndexedDataset`` with a readable error when the files are missing."""
    for ext in (".idx", ".bin"):
        if not os.path.isfile(prefix + ext):
            raise FileNotFoundError(f"{prefix}{ext} not found (give the prefix without .bin/.idx)")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(prefix, mmap=True)


SPLIT_NAMES = ("train", "valid", "test")


def document_token_range(dataset, split: Optional[str] = None, split_name: str = "train") -> tuple[int, int]:
    """``(first token, end token)`` in the dataset's token stream of the documents megatron puts in
    split ``split_name`` of ``split`` (e.g. '969,30,1'; same rounding as
    ``BlendedMegatronDatasetBuilder``); the whole dataset without ``split``."""
    lengths = dataset.index.sequence_lengths.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    if split is None:
        return 0, int(starts[-1])
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    if split_name not in SPLIT_NAMES:
        raise ValueError(f"split name must be one of {SPLIT_NAMES}, got {split_name!r}")
    bookends = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))[SPLIT_NAMES.index(split_name)]
    if bookends is None:
        raise ValueError(f"--split {split!r} has an empty {split_name} split")
    doc_idx = dataset.index.document_indices
    num_docs = doc_idx.shape[0] - 1
    first_doc = int(round(bookends[0] * float(num_docs)))
    end_doc = int(round(bookends[1] * float(num_docs)))
    return int(starts[doc_idx[first_doc]]), int(starts[doc_idx[end_doc]])


def iter_token_chunks(dataset, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, token_range: Optional[tuple] = None):
    """The dataset's tokens in reading order (those in ``token_range`` of its token stream),
    ``chunk_tokens`` at a time, as numpy views of the mmap.

    Megatron writes sequences back to back, so the ``.bin`` is read as one array; a dataset whose
    pointers are not contiguous (hand-made) is read sequence by sequence instead."""
    index = dataset.index
    lengths = index.sequence_lengths.astype(np.int64)
    if lengths.size == 0:
        return
    itemsize = np.dtype(index.dtype).itemsize
    pointers = index.sequence_pointers.astype(np.int64)
    contiguous = pointers[0] == 0 and np.array_equal(pointers[1:], np.cumsum(lengths[:-1]) * itemsize)
    lo, hi = token_range if token_range is not None else (0, int(lengths.sum()))
    if contiguous:
        for start in range(lo, hi, chunk_tokens):
            count = min(chunk_tokens, hi - start)
            yield dataset.bin_reader.read(dtype=index.dtype, count=count, offset=start * itemsize)
    elif token_range is None:
        for i in range(lengths.size):
            yield dataset.get(i)
    else:
        raise ValueError(f"{dataset.path_prefix}: sequences are not stored back to back; cannot select a split")


def count_dataset_tokens(prefix: str, vocab_size: Optional[int] = None, label: Optional[str] = None,
                         chunk_tokens: int = DEFAULT_CHUNK_TOKENS, split: Optional[str] = None,
                         split_name: str = "train") -> tuple[np.ndarray, DatasetTokens]:
    """``(counts int64 [vocab_size or max id + 1], DatasetTokens)`` of one indexed dataset (or of
    the documents of one split of Megatron's ``--split``).

    Raises :class:`VocabularyMismatchError` if a token id is ``>= vocab_size`` or negative."""
    dataset = open_indexed_dataset(prefix)
    token_range = document_token_range(dataset, split, split_name) if split is not None else None
    counts = np.zeros(vocab_size or 0, dtype=np.int64)
    tokens, max_id = 0, -1
    for chunk in iter_token_chunks(dataset, chunk_tokens, token_range):
        if chunk.size == 0:
            continue
        if chunk.dtype.kind == "i" and chunk.min() < 0:
            raise VocabularyMismatchError(f"{prefix}: negative token id {int(chunk.min())}")
        chunk_max = int(chunk.max())
        if vocab_size is not None and chunk_max >= vocab_size:
            raise VocabularyMismatchError(
                f"{prefix}: token id {chunk_max} >= vocabulary size {vocab_size} (the dataset was "
                "tokenised with a larger vocabulary than the one given)")
        binned = np.bincount(chunk, minlength=counts.size)
        if binned.size > counts.size:  # vocabulary inferred: grow to the largest id so far
            counts = np.concatenate([counts, np.zeros(binned.size - counts.size, np.int64)])
        counts += binned
        tokens += int(chunk.size)
        max_id = max(max_id, chunk_max)
    info = DatasetTokens(prefix=prefix, label=label or dataset_label(prefix), weight=None, tokens=tokens,
                         sequences=int(len(dataset)), max_token_id=max_id)
    return counts, info


def count_tokens(data_path: Sequence[str], vocab_size: Optional[int] = None,
                 chunk_tokens: int = DEFAULT_CHUNK_TOKENS, split: Optional[str] = None,
                 split_name: str = "train") -> TokenCounts:
    """Counts over a dataset or blend given as Megatron's ``--data-path`` list (see :func:`parse_blend`),
    optionally over one split (``split='98,2,0'``, ``split_name='train'``: what training sees).

    Unweighted: the int64 sum of the datasets' counts. Weighted: the expected counts under the
    blend, ``total * sum_i w_i * counts_i / tokens_i`` (float64), which is what training samples."""
    prefixes, weights, labels = parse_blend(data_path)
    per_dataset = []
    for prefix, label in zip(prefixes, labels):
        per_dataset.append(count_dataset_tokens(prefix, vocab_size, label, chunk_tokens, split, split_name))
    size = vocab_size if vocab_size is not None else max(c.size for c, _ in per_dataset)
    infos = [info for _, info in per_dataset]
    if weights is None:
        counts = np.zeros(size, np.int64)
        for c, _ in per_dataset:
            counts[: c.size] += c
    else:
        total = sum(info.tokens for info in infos)
        counts = np.zeros(size, np.float64)
        for (c, info), w in zip(per_dataset, weights):
            info.weight = w
            if w > 0 and info.tokens == 0:
                raise ValueError(f"{info.prefix}: empty dataset with blend weight {w}")
            if info.tokens:
                counts[: c.size] += w * total * (c / info.tokens)
    return TokenCounts(counts=counts, vocab_size=int(size), datasets=infos,
                       vocab_size_inferred=vocab_size is None)


# --------------------------------------------------------------------------- buckets
@dataclass
class FrequencyBuckets:
    """Buckets of token count: bucket ``b`` holds the token ids with ``edges[b] <= count < edges[b+1]``.

    Bucket 0 is always ``unseen`` (count 0); the others go from rare to frequent."""

    edges: np.ndarray
    """Increasing count edges, ``[0, 1 (or the smallest positive count), ..., inf]``."""
    scheme: str
    """How the edges were chosen: 'log' or 'mass'."""
    labels: List[str]
    """One short label per bucket, for tables and legends."""
    token_bucket: np.ndarray
    """``[vocab_size]`` int16: the bucket of each token id."""
    types: np.ndarray
    """``[buckets]``: token types (ids) in each bucket."""
    mass: np.ndarray
    """``[buckets]``: share of the counted tokens in each bucket."""

    @property
    def num_buckets(self) -> int:
        return len(self.labels)

    def of(self, token_ids: np.ndarray) -> np.ndarray:
        """The bucket of each token id in ``token_ids``; ids outside the vocabulary raise."""
        token_ids = np.asarray(token_ids)
        if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= self.token_bucket.size):
            raise VocabularyMismatchError(
                f"token id {int(token_ids.max())} outside the counted vocabulary of {self.token_bucket.size}")
        return self.token_bucket[token_ids]

    def describe(self) -> List[dict]:
        """One dict per bucket: label, count range, types, mass share."""
        rows = []
        for b, label in enumerate(self.labels):
            hi = self.edges[b + 1]
            rows.append({"bucket": b, "label": label, "min_count": _json_number(self.edges[b]),
                         "max_count_exclusive": None if math.isinf(hi) else _json_number(hi),
                         "types": int(self.types[b]), "mass": float(self.mass[b])})
        return rows


def _fmt_count(x: float) -> str:
    if math.isinf(x):
        return "inf"
    if x >= 1e4:
        return f"{x:.0e}".replace("e+0", "e").replace("e+", "e")
    return f"{x:g}" if float(x) != int(x) else str(int(x))


def _from_edges(counts: np.ndarray, edges: np.ndarray, scheme: str) -> FrequencyBuckets:
    edges = np.asarray(edges, dtype=np.float64)
    token_bucket = (np.searchsorted(edges, counts, side="right") - 1).astype(np.int16)
    n = edges.size - 1
    types = np.bincount(token_bucket, minlength=n)[:n]
    total = float(counts.sum())
    mass = np.bincount(token_bucket, weights=counts.astype(np.float64), minlength=n)[:n]
    mass = mass / total if total > 0 else mass
    labels = ["unseen"]
    for b in range(1, n):
        lo, hi = edges[b], edges[b + 1]
        labels.append(f">={_fmt_count(lo)}" if math.isinf(hi) else f"[{_fmt_count(lo)}, {_fmt_count(hi)})")
    return FrequencyBuckets(edges=edges, scheme=scheme, labels=labels, token_bucket=token_bucket,
                            types=types, mass=mass)


def log_buckets(counts: np.ndarray, base: float = 10.0) -> FrequencyBuckets:
    """``unseen, [1, b), [b, b^2), ...`` up to the largest count (the last bucket is open-ended)."""
    if base <= 1:
        raise ValueError(f"log bucket base must be > 1, got {base}")
    counts = np.asarray(counts)
    top = float(counts.max()) if counts.size else 0.0
    edges = [0.0, min(1.0, float(counts[counts > 0].min())) if top > 0 else 1.0]
    edge = 1.0
    while edge * base <= top:
        edge *= base
        edges.append(edge)
    edges.append(math.inf)
    return _from_edges(counts, np.array(edges), "log")


def mass_quantile_buckets(counts: np.ndarray, num_buckets: int = 5) -> FrequencyBuckets:
    """``unseen`` plus up to ``num_buckets`` buckets holding about equal shares of the token mass.

    The types with one count value take up the interval ``[below, below + mass)`` of the cumulative
    mass (rarest first); they go to the quantile holding the interval's middle,
    ``floor((below + mass / 2) / total * num_buckets)``. That depends on the count only, so equal
    counts share a bucket; a type holding more than one quantile of the mass takes the quantile of
    its middle and the quantiles it covers disappear (fewer buckets, never empty ones)."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    return _mass_share_buckets(counts, lambda share: np.minimum(np.floor(share * num_buckets), num_buckets - 1),
                               "mass")


def paper_buckets(counts: np.ndarray) -> FrequencyBuckets:
    """``unseen`` plus the MiLe paper's low / medium / high-frequency tokens: the rarest types
    holding 5% of the token mass, the next 15%, the most frequent 80% (:data:`PAPER_MASS_SHARES`),
    a count value going to the share holding the middle of its mass (as :func:`mass_quantile_buckets`).
    Labels name the share and its count range, e.g. ``medium [41, 980)``."""
    bounds = np.cumsum(PAPER_MASS_SHARES)[:-1]
    return _mass_share_buckets(counts, lambda share: np.searchsorted(bounds, share, side="right"), "paper")


def _mass_share_buckets(counts: np.ndarray, share_index, scheme: str) -> FrequencyBuckets:
    """Buckets of token mass: ``share_index(middle share [values]) -> bucket number per count value``."""
    counts = np.asarray(counts)
    positive = counts[counts > 0].astype(np.float64)
    if positive.size == 0:
        return _from_edges(counts, np.array([0.0, 1.0, math.inf]), scheme)
    values, multiplicity = np.unique(positive, return_counts=True)  # ascending
    mass = values * multiplicity
    middle = np.cumsum(mass) - mass / 2  # mass of strictly rarer types + half of this value's
    index = share_index(middle / mass.sum())
    starts = np.flatnonzero(np.diff(index, prepend=-1) > 0)  # first value of each share
    edges = np.concatenate([[0.0], values[starts], [math.inf]])
    buckets = _from_edges(counts, edges, scheme)
    if scheme == "paper":
        buckets.labels[1:] = [f"{PAPER_BUCKET_NAMES[int(index[i])]} {label}"
                              for i, label in zip(starts, buckets.labels[1:])]
    return buckets


def build_buckets(counts: np.ndarray, scheme: str = "log", num_buckets: int = 5,
                  base: float = 10.0) -> FrequencyBuckets:
    """Buckets by ``scheme``: 'log' (``base``), 'mass' (``num_buckets`` quantiles) or 'paper' (the
    MiLe paper's 5 / 15 / 80% of the token mass)."""
    if scheme == "log":
        return log_buckets(counts, base)
    if scheme == "mass":
        return mass_quantile_buckets(counts, num_buckets)
    if scheme == "paper":
        return paper_buckets(counts)
    raise ValueError(f"unknown bucket scheme {scheme!r}; choose from {BUCKET_SCHEMES}")


def add_bucket_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("frequency buckets")
    g.add_argument("--buckets", choices=BUCKET_SCHEMES, default="log",
                   help="log: counts [1,10), [10,100), ...; mass: quantiles of the token mass; paper: the MiLe "
                        "paper's low / medium / high-frequency tokens (5 / 15 / 80%% of the token mass).")
    g.add_argument("--num-buckets", type=int, default=5, help="Quantiles for --buckets mass.")
    g.add_argument("--log-base", type=float, default=10.0, help="Bucket width for --buckets log.")


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="token_frequency.py",
        description="Count token frequencies over Megatron .bin/.idx datasets (or a weighted blend).")
    p.add_argument("--data-path", nargs="+", required=True,
                   help="Prefixes, or weight/prefix pairs as Megatron's --data-path; LABEL=PREFIX names one.")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="Tokenizer vocabulary size (default: read from --preprocess-stats, else max id + 1).")
    p.add_argument("--preprocess-stats", default=None,
                   help="A mile-preprocess manifest (DIR/mile-manifests/NAME.json) to take the vocabulary size from.")
    p.add_argument("--output", required=True, help="Output prefix: writes <output>.npy and <output>.json.")
    p.add_argument("--split", default=None,
                   help="Count only one split's documents, as training's --split makes them (e.g. '90,10,0').")
    p.add_argument("--split-name", choices=SPLIT_NAMES, default="train")
    p.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS)
    add_bucket_arguments(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    vocab_size = args.vocab_size
    if vocab_size is None and args.preprocess_stats:
        with open(args.preprocess_stats, encoding="utf-8") as f:
            vocab_size = int(json.load(f)["tokenizer"]["vocab_size"])
    counts = count_tokens(args.data_path, vocab_size, args.chunk_tokens, args.split, args.split_name)
    npy, js = counts.save(args.output)
    buckets = build_buckets(counts.counts, args.buckets, args.num_buckets, args.log_base)
    print(f"{counts.kind} counts of {counts.total:.0f} tokens over a vocabulary of {counts.vocab_size} "
          f"-> {npy}, {js}")
    for row in buckets.describe():
        print(f"  {row['label']:>16}  types {row['types']:>7}  mass {100 * row['mass']:6.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
