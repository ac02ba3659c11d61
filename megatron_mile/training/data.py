"""Datasets and micro-batch iterators for the training loop.

Datasets come from megatron-core: ``BlendedMegatronDatasetBuilder`` over ``GPTDataset`` for
``--data-path`` (a weighted blend of indexed datasets, each split train/valid/test by ``--split``)
or megatron's ``MockGPTDataset`` for ``--mock-data`` (over a smaller mock corpus, see
:class:`SmallMockGPTDataset`). Besides the blended validation set, each dataset of a
multi-prefix blend gets its own validation set (its validation split), so a Pile-style blend
reports validation loss per domain.

Micro-batches are read as Megatron-LM's pretraining sampler reads them: a global batch is
``num_microbatches`` consecutive chunks of ``micro_batch_size x DP`` samples, and DP rank ``r``
takes samples ``[r * mbs, (r + 1) * mbs)`` of each chunk. So every layout sees the same samples in
the same global batch, and resuming at ``consumed_samples`` continues the exact sequence. Every
rank of the first and last pipeline stages reads its batches itself (no broadcast over TP: the
samples are memory-mapped and cheap); middle stages read nothing.

Data made with another tokenizer is stopped twice. Before any process group exists,
:func:`check_data_tokenizer` compares each dataset's manifest (written by ``mile-preprocess``)
with the training tokenizer, or, for data without one, the largest id in the first
:data:`MAX_ID_CHECK_TOKENS` tokens of each ``.bin`` with the vocabulary. And every sample passes
:class:`TokenIdGuard`, so an id the embedding does not have never reaches it.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from megatron.core import parallel_state
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset, MockGPTLowLevelDataset
from megatron.core.datasets.utils import get_blend_from_list

BLEND = "all"
"""Name of the blended validation set in the per-dataset validation results."""


@dataclass
class TrainingDatasets:
    train: Optional[torch.utils.data.Dataset]
    """Blended training samples (None on middle pipeline stages)."""
    valid: Dict[str, torch.utils.data.Dataset] = field(default_factory=dict)
    """Validation sets by name: ``"all"`` (the blend) and, for a multi-dataset blend, one per dataset."""


def dataset_names(prefixes: List[str]) -> List[str]:
    """Short unique names for dataset prefixes: the file names without a shared leading part and
    without preprocess's ``_text_document`` suffix (``demo_Wikipedia_text_document`` ->
    ``Wikipedia``)."""
    names = [os.path.basename(p) for p in prefixes]
    names = [n[: -len("_text_document")] if n.endswith("_text_document") else n for n in names]
    if len(names) > 1:
        common = os.path.commonprefix(names)
        common = common[: common.rfind("_") + 1]  # cut only at a '_' boundary
        stripped = [n[len(common):] for n in names]
        if all(stripped) and len(set(stripped)) == len(stripped):
            names = stripped
    if len(set(names)) < len(names):  # fall back to unique positional names
        names = [f"{i}_{n}" for i, n in enumerate(names)]
    return names


def check_dataset_splits(args) -> None:
    """Raise ``ValueError`` if a split that samples are drawn from cannot give samples in some dataset.

    megatron-core's GPTDataset loops forever on such a split (its epoch count never reaches the
    requested samples), so a small domain with, say, ``--split 99,1,0`` would hang every rank.
    Reads only the ``.idx`` files (memory-mapped)."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefixes, weights = get_blend_from_list(args.data_path)
    # With given weights GPTDataset concatenates epochs, so any token will do (none loops forever);
    # without, megatron weights each dataset by its samples in one epoch and asserts they are > 0.
    min_tokens = 1 if weights is not None else args.seq_length + 1
    split_matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(args.split))
    wanted = {"train": args.train_iters > 0, "validation": args.eval_iters > 0}
    for prefix in prefixes:
        index = IndexedDataset(prefix, multimodal=False, mmap=True)
        num_documents = index.document_indices.shape[0] - 1
        for name, bookends in zip(("train", "validation"), split_matrix):
            if not wanted[name]:
                continue
            if bookends is None:
                raise ValueError(f"--split {args.split!r} leaves no {name} split, but {name} samples are needed")
            first = int(round(bookends[0] * num_documents))
            last = int(round(bookends[1] * num_documents))
            seqs = index.document_indices[first], index.document_indices[last]
            tokens = int(index.sequence_lengths[seqs[0]:seqs[1]].sum()) if last > first else 0
            if tokens < min_tokens:
                need = "any token" if weights is not None else (
                    f"one sample of --seq-length {args.seq_length} + 1 tokens (an unweighted blend)")
                raise ValueError(
                    f"the {name} split of {prefix} holds {tokens} tokens, less than {need} "
                    f"({num_documents} documents, --split {args.split!r}); give that split a larger "
                    f"share, weight the blend, or drop the dataset")


MAX_ID_CHECK_TOKENS = 1 << 22
"""Tokens read from the start of each ``.bin`` without a manifest by :func:`check_data_tokenizer`."""


def _describe_tokenizer(meta: dict) -> str:
    parts = [f"vocab {meta['vocab_size']}"] if meta.get("vocab_size") is not None else []
    if meta.get("sha256"):
        parts += [f"sha256 {meta['sha256'][:12]}", str(meta.get("path"))]
    return f"{meta.get('type')} ({', '.join(parts)})"


def token_id_range(prefix: str, max_tokens: int = MAX_ID_CHECK_TOKENS) -> tuple[int, int]:
    """``(smallest, largest)`` token id in the first ``max_tokens`` tokens of ``prefix.bin``
    (``(0, -1)`` if empty), read with the token dtype its ``.idx`` declares."""
    from megatron_mile.data.indexed import read_index_header

    dtype = np.dtype(read_index_header(prefix + ".idx")[0])
    count = min(max_tokens, os.path.getsize(prefix + ".bin") // dtype.itemsize)
    if count == 0:
        return 0, -1
    tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r", shape=(count,))
    return int(tokens.min()), int(tokens.max())


def check_data_tokenizer(args) -> None:
    """Raise ``ValueError`` naming the dataset when ``--data-path`` holds data made with another
    tokenizer than the training flags name.

    A dataset listed in a manifest must have files that agree with it (else
    :class:`~megatron_mile.data.manifest.ManifestError`) and a tokenizer of the same type and file
    contents (sha256), or for ``NullTokenizer`` the same vocabulary size. A dataset without one:
    no id in its first :data:`MAX_ID_CHECK_TOKENS` tokens may reach the tokenizer's vocabulary
    size. Reads the ``.idx`` files and those tokens, no more."""
    from megatron_mile.data.manifest import find_manifest, sha256_files
    from megatron_mile.data.tokenizers import build_tokenizer, tokenizer_files

    files = tokenizer_files(args.tokenizer_type, args.tokenizer_model, args.vocab_file, args.merge_file)
    ours = {"type": args.tokenizer_type, "sha256": sha256_files(files) if files else None,
            "path": os.path.abspath(files[0]) if files else None,
            "vocab_size": args.vocab_size + 1 if args.tokenizer_type == "NullTokenizer" else None}
    vocab_size = ours["vocab_size"]
    from megatron_mile.training.arguments import DATA_PATH_FLAGS

    prefixes = [p for name in DATA_PATH_FLAGS if getattr(args, name, None)
                for p in get_blend_from_list(getattr(args, name))[0]]
    for prefix in dict.fromkeys(prefixes):
        found = find_manifest(prefix)
        if found is not None:
            path, manifest, _ = found
            theirs = manifest.get("tokenizer") or {}
            keys = ("type", "sha256") if files else ("type", "vocab_size")
            if any(theirs.get(k) != ours[k] for k in keys):
                raise ValueError(
                    f"--data-path {prefix}: made with {_describe_tokenizer(theirs)} (its manifest "
                    f"{path}), but training uses {_describe_tokenizer(ours)}; train with that "
                    "tokenizer, or preprocess the data again with this one")
            continue
        if vocab_size is None:
            vocab_size = build_tokenizer(args.tokenizer_type, tokenizer_model=args.tokenizer_model,
                                         vocab_file=args.vocab_file, merge_file=args.merge_file,
                                         vocab_size=args.vocab_size).vocab_size
            ours["vocab_size"] = vocab_size
        low, top = token_id_range(prefix, MAX_ID_CHECK_TOKENS)
        if low < 0 or top >= vocab_size:
            raise ValueError(
                f"--data-path {prefix}: token id {top if top >= vocab_size else low} in its first {MAX_ID_CHECK_TOKENS} tokens, but "
                f"{_describe_tokenizer(ours)} has ids 0..{vocab_size - 1}: the data was made with "
                "another tokenizer (it has no manifest to say which); train with that tokenizer, or "
                "preprocess the data again with this one")


class TokenIdGuard(torch.utils.data.Dataset):
    """A dataset whose samples are checked: a token id ``>= vocab_size`` raises ``ValueError``
    naming the dataset it came from, before it can reach the embedding (where it would be an
    IndexError on CPU, a device-side assert on GPU, or silently an untrained padding row).
    A min and a max over each sample's tokens and labels (the last label is not among the tokens)."""

    def __init__(self, dataset, vocab_size: int, names: List[str]):
        self.dataset = dataset
        self.vocab_size = vocab_size
        self.names = names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        ids = [sample[k] for k in ("tokens", "labels") if k in sample and sample[k].numel()]
        low, top = (min(int(t.min()) for t in ids), max(int(t.max()) for t in ids)) if ids else (0, -1)
        if low < 0 or top >= self.vocab_size:
            which = int(sample["dataset_id"]) if "dataset_id" in sample and len(self.names) > 1 else 0
            raise ValueError(f"sample {index} of {self.names[which]} holds token id "
                             f"{top if top >= self.vocab_size else low}, but the "
                             f"tokenizer has ids 0..{self.vocab_size - 1}: the data was made with "
                             "another tokenizer")
        return sample


def _config(args, tokenizer, blend, blend_per_split=None) -> GPTDatasetConfig:
    """``blend`` split by ``--split``, or ``blend_per_split`` (train, valid, test) used whole."""
    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=args.split if blend_per_split is None else None,
        path_to_cache=args.data_cache_path,
        tokenizer=tokenizer,
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=False,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=False,  # causal attention needs no mask tensor
    )


class SmallMockGPTLowLevelDataset(MockGPTLowLevelDataset):
    """megatron's mock documents (``1, 2, 3, ... EOD`` with seeded random lengths below 4096),
    1000 of them instead of 100,000."""

    size = 1000


class SmallMockGPTDataset(MockGPTDataset):
    """``MockGPTDataset`` over :class:`SmallMockGPTLowLevelDataset`.

    megatron's mock corpus has 100,000 documents (~205M tokens), and ``GPTDataset`` indexes at
    least one whole epoch of each split (the mock split is 1:1:1, whatever ``--split`` says): at
    ``--seq-length 32`` that is 2.1M samples and a 2.1M-entry shuffle per split (train, valid and
    test, the last with 0 samples requested), built on every rank since mock indexes are never
    cached. That cost ~0.25 s per rank, serialised across the ranks sharing the cores, before
    the first step of every run. With 1000 documents an epoch is ~680k tokens per split and
    ``GPTDataset`` adds epochs as the requested samples need, so the index grows with the run
    instead of with megatron's constant."""

    @staticmethod
    def build_low_level_dataset(dataset_path, config: GPTDatasetConfig) -> SmallMockGPTLowLevelDataset:
        return SmallMockGPTLowLevelDataset(config.tokenizer)


def _needs_data() -> bool:
    return parallel_state.is_pipeline_first_stage() or parallel_state.is_pipeline_last_stage()


def build_datasets(args, tokenizer) -> TrainingDatasets:
    """Train and validation datasets for ``args`` (a collective call: every rank must make it)."""
    train_samples = args.train_iters * args.global_batch_size
    valid_samples = args.eval_iters * args.global_batch_size
    if args.mock_data:
        builder = BlendedMegatronDatasetBuilder(
            SmallMockGPTDataset, [train_samples, valid_samples, 0], _needs_data, _config(args, tokenizer, None))
        train, valid, _ = builder.build()
        return TrainingDatasets(train, {BLEND: valid} if valid_samples else {})

    if args.data_path:
        blend = get_blend_from_list(args.data_path)
        config, prefixes, valid_prefixes = _config(args, tokenizer, blend), blend[0], blend[0]
    else:  # --train-data-path / --valid-data-path / --test-data-path: one blend per split, used whole
        per_split = [get_blend_from_list(getattr(args, f"{split}_data_path") or None)
                     for split in ("train", "valid", "test")]
        config = _config(args, tokenizer, None, blend_per_split=per_split)
        prefixes, valid_prefixes = [(blend or ([], None))[0] for blend in per_split[:2]]
    builder = BlendedMegatronDatasetBuilder(GPTDataset, [train_samples, valid_samples, 0], _needs_data, config)

    def guard(dataset, names):
        return None if dataset is None else TokenIdGuard(dataset, tokenizer.vocab_size, names)

    train, valid, _ = builder.build()
    datasets = TrainingDatasets(guard(train, prefixes), {BLEND: guard(valid, valid_prefixes)} if valid_samples else {})
    if valid_samples and len(valid_prefixes) > 1:
        for name, prefix in zip(dataset_names(valid_prefixes), valid_prefixes):
            one_config = (_config(args, tokenizer, ([prefix], None)) if args.data_path else
                          _config(args, tokenizer, None, blend_per_split=[None, ([prefix], None), None]))
            one = BlendedMegatronDatasetBuilder(GPTDataset, [0, valid_samples, 0], _needs_data, one_config)
            datasets.valid[name] = guard(one.build()[1], [prefix])
    return datasets


class MicroBatchSampler:
    """Megatron-LM's pretraining batch sampler: this DP rank's slice of each ``mbs x DP`` chunk,
    starting at ``consumed_samples``; an incomplete last chunk is dropped."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int):
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __len__(self) -> int:
        chunk = self.micro_batch_size * self.dp_size
        return max(0, (self.total_samples - self.consumed_samples) // chunk)

    def __iter__(self) -> Iterator[List[int]]:
        chunk = self.micro_batch_size * self.dp_size
        start = self.consumed_samples
        while start + chunk <= self.total_samples:
            first = start + self.dp_rank * self.micro_batch_size
            yield list(range(first, first + self.micro_batch_size))
            start += chunk


def micro_batches(dataset, consumed_samples: int, micro_batch_size: int, num_workers: int) -> Optional[Iterator]:
    """Iterator over this rank's micro-batches (dicts of ``[mbs, seq]`` tensors), or None on ranks
    that read no data."""
    if dataset is None or not _needs_data():
        return None
    if multiprocessing.current_process().daemon:
        num_workers = 0  # a daemonic process (a worker pool) cannot start loader workers
    sampler = MicroBatchSampler(len(dataset), consumed_samples, micro_batch_size,
                                parallel_state.get_data_parallel_rank(),
                                parallel_state.get_data_parallel_world_size())
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
        # Its own generator: iter(DataLoader) draws a worker seed, which must not advance the global
        # RNG (dropout) or validation and resuming would change the training run.
        generator=torch.Generator().manual_seed(consumed_samples))
    return iter(loader)
