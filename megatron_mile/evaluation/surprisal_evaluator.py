"""Per-token surprisal and entropy of checkpoints on held-out indexed data, into a surprisal store.

Steps of :func:`evaluate_checkpoints`:

1. pick the evaluation tokens once (:func:`sample_windows`, :func:`select_positions`): from each
   held-out dataset, ``num_sequences`` non-overlapping windows of ``seq_length + 1`` tokens at
   random offsets of its token stream (optionally restricted to the validation or test documents of
   a Megatron ``--split``), and in each window every position or ``positions_per_sequence`` random
   ones (Chang et al. take 10 positions of 100K sequences); they go to the store with the windows;
2. per run, rebuild the model in the current TP/PP layout from the first checkpoint's ``args.json``
   (:func:`build_eval_model`) and, per checkpoint, load its weights with ``dist_checkpointing``
   (which reshards whatever layout saved it) and check it is the same model;
3. run the windows through megatron's forward-only pipeline schedule; on the last stage
   ``vocab_parallel_cross_entropy_with_entropy`` turns the vocabulary-parallel logits into per-token
   cross entropy and entropy without gathering the vocabulary (nats; stored in bits);
4. gather the last stage's results over data-parallel ranks on rank 0, which writes one array per
   checkpoint.

Launch with ``torchrun`` and ``--tensor-model-parallel-size`` / ``--pipeline-model-parallel-size``
for a parallel layout (the remaining ranks split the windows data-parallel), or as one process.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import numpy as np

from megatron_mile.analysis.frequency import (
    SPLIT_NAMES,
    VocabularyMismatchError,
    document_token_range,
    open_indexed_dataset,
    parse_blend,
)
from megatron_mile.analysis.surprisal_store import ModelMismatchError, SurprisalStore, model_signature

__all__ = [
    "EvalDataConfig",
    "build_eval_model",
    "evaluate_checkpoints",
    "prepare_store",
    "sample_windows",
    "select_positions",
    "token_surprisal",
]

LN2 = math.log(2.0)


@dataclass
class EvalDataConfig:
    """Which held-out tokens are evaluated (fixed for a store: every checkpoint sees the same)."""

    data_path: List[str]
    """Held-out indexed datasets: prefixes or ``LABEL=PREFIX`` (e.g. one per Pile domain). Blend
    weights, if given, are ignored: every dataset contributes ``num_sequences`` windows."""
    seq_length: int
    """Tokens of context per window (the model's ``--seq-length`` or less)."""
    num_sequences: int = 64
    """Windows per dataset (fewer if a dataset is too small; the manifest records how many)."""
    positions_per_sequence: Optional[int] = None
    """Evaluated positions per window (random, fixed by ``seed``); None: all ``seq_length``."""
    split: Optional[str] = None
    """Megatron ``--split`` (e.g. '969,30,1') to take only one split's documents; None: all."""
    split_name: str = "valid"
    """Which split of ``split`` to evaluate on: train, valid or test."""
    seed: int = 1234
    """Seed of the window and position choice."""

    def identity(self) -> dict:
        """What must match for a store to be reused."""
        d = asdict(self)
        d["data_path"] = list(self.data_path)
        return d


# --------------------------------------------------------------------------- choosing the tokens
def sample_windows(token_ranges: Sequence[tuple[int, int]], seq_length: int, num_sequences: int,
                   seed: int) -> np.ndarray:
    """``[W, 2]`` int64 (dataset index, first token) of non-overlapping ``seq_length + 1``-token
    windows, up to ``num_sequences`` per dataset, chosen at random and sorted."""
    rng = np.random.default_rng(seed)
    width = seq_length + 1
    rows = []
    for d, (lo, hi) in enumerate(token_ranges):
        slots = (hi - lo) // width
        if slots == 0:
            continue
        chosen = np.sort(rng.choice(slots, size=min(num_sequences, slots), replace=False))
        rows.append(np.stack([np.full(chosen.size, d), lo + chosen * width], axis=1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def read_windows(datasets, windows: np.ndarray, seq_length: int) -> np.ndarray:
    """``[W, seq_length + 1]`` int64 tokens of the windows."""
    out = np.empty((len(windows), seq_length + 1), np.int64)
    for i, (d, start) in enumerate(windows):
        index = datasets[d].index
        itemsize = np.dtype(index.dtype).itemsize
        out[i] = datasets[d].bin_reader.read(dtype=index.dtype, count=seq_length + 1, offset=int(start) * itemsize)
    return out


def select_positions(num_windows: int, seq_length: int, per_window: Optional[int], seed: int) -> np.ndarray:
    """``[W, seq_length]`` bool: which positions of each window are evaluated. Position ``i`` predicts
    token ``i + 1`` of the window from a context of ``i + 1`` tokens."""
    if per_window is None or per_window >= seq_length:
        return np.ones((num_windows, seq_length), bool)
    if per_window < 1:
        raise ValueError(f"positions_per_sequence must be >= 1, got {per_window}")
    rng = np.random.default_rng(seed + 1)
    keys = rng.random((num_windows, seq_length))
    chosen = np.argpartition(keys, per_window - 1, axis=1)[:, :per_window]
    mask = np.zeros((num_windows, seq_length), bool)
    np.put_along_axis(mask, chosen, True, axis=1)
    return mask


def prepare_store(root: str, config: EvalDataConfig, vocab_size: int, storage_dtype: str = "float16") -> SurprisalStore:
    """Open the store at ``root`` (checking it was made from the same ``config``) or create it."""
    if os.path.isfile(os.path.join(root, "manifest.json")):
        store = SurprisalStore(root)
        if store.manifest.get("eval_data") != config.identity():
            raise ValueError(f"{root} was made from other evaluation data ({store.manifest.get('eval_data')}); "
                             "use another --output or the same data flags")
        if store.vocab_size != vocab_size:
            raise ModelMismatchError(f"{root} holds tokens of a vocabulary of {store.vocab_size}, the model's "
                                     f"tokenizer has {vocab_size}")
        return store
    prefixes, _, labels = parse_blend(config.data_path)
    datasets = [open_indexed_dataset(p) for p in prefixes]
    ranges = [document_token_range(ds, config.split, config.split_name) for ds in datasets]
    windows = sample_windows(ranges, config.seq_length, config.num_sequences, config.seed)
    if len(windows) == 0:
        raise ValueError(f"no dataset has {config.seq_length + 1} held-out tokens in a row")
    tokens = read_windows(datasets, windows, config.seq_length)
    top = int(tokens.max())
    if top >= vocab_size:
        d = int(windows[np.argmax((tokens >= vocab_size).any(1)), 0])
        raise VocabularyMismatchError(
            f"{prefixes[d]}: token id {top} >= the model's vocabulary size {vocab_size} (the evaluation data "
            "was tokenised with another tokenizer)")
    mask = select_positions(len(windows), config.seq_length, config.positions_per_sequence, config.seed)
    window_of, position = np.nonzero(mask)
    targets = tokens[window_of, position + 1]
    per_dataset = np.bincount(windows[:, 0], minlength=len(prefixes))
    meta = [{"label": lab, "prefix": p, "windows": int(w), "token_range": [int(a), int(b)]}
            for lab, p, w, (a, b) in zip(labels, prefixes, per_dataset, ranges)]
    return SurprisalStore.create(root, targets, position + 1, window_of, windows, meta, vocab_size,
                                 config.seq_length, dtype=storage_dtype, extra={"eval_data": config.identity()})


# --------------------------------------------------------------------------- the model
def tokenizer_vocab_size(args) -> int:
    """The vocabulary of the checkpoint's tokenizer (not the padded output size)."""
    from megatron_mile.data.tokenizers import build_tokenizer

    try:
        return build_tokenizer(args.tokenizer_type, tokenizer_model=args.tokenizer_model,
                               vocab_file=args.vocab_file, merge_file=args.merge_file,
                               vocab_size=args.vocab_size).vocab_size
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot rebuild the checkpoint's tokenizer ({args.tokenizer_type}, "
                                f"{args.tokenizer_model or args.vocab_file}): {exc}") from exc


def build_eval_model(args: argparse.Namespace):
    """One model chunk for this rank in the current ``parallel_state`` layout (no VPP), eval mode,
    not initialised (weights come from :func:`load_weights`)."""
    import torch
    from megatron.core import parallel_state

    from megatron_mile import platform
    from megatron_mile.model import gpt_model_from_args
    from megatron_mile.training.arguments import transformer_config_from_args

    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if args.padded_vocab_size % tp:
        raise ValueError(f"the checkpoint's padded vocabulary ({args.padded_vocab_size}) does not split over TP={tp}")
    if args.num_layers % pp:
        raise ValueError(f"{args.num_layers} layers do not split over PP={pp}")
    eval_args = argparse.Namespace(**vars(args))
    eval_args.tensor_model_parallel_size, eval_args.pipeline_model_parallel_size = tp, pp
    eval_args.num_layers_per_virtual_pipeline_stage = None
    eval_args.sequence_parallel = False
    if not torch.cuda.is_available():
        eval_args.transformer_impl = "local"
    config = transformer_config_from_args(eval_args)
    config.perform_initialization = False
    with platform.cuda_to_cpu():  # tied embeddings on the last stage are copied with .cuda()
        model = gpt_model_from_args(eval_args, config,
                                    pre_process=parallel_state.is_pipeline_first_stage(),
                                    post_process=parallel_state.is_pipeline_last_stage())
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model.eval(), config


def load_weights(model, checkpoint_path: str, dtype) -> None:
    """Load ``iter_N``'s model weights into ``model`` (collective over all ranks)."""
    from megatron.core import dist_checkpointing

    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, checkpoint_path)
    model.load_state_dict(loaded["model"])
    model.to(dtype)
    model.config.pipeline_dtype = dtype  # the pipeline's receive buffers


def _forward_step(batch, model):
    """megatron's ``forward_step_func`` for one micro-batch ``(tokens, labels)``: the model's output
    (logits on the last stage), then :func:`_per_token_terms` as the "loss function"."""
    from functools import partial

    tokens, labels = batch
    position_ids = _positions(tokens)
    output = model(tokens if model.pre_process else None, position_ids if model.pre_process else None, None)
    return output, partial(_per_token_terms, labels)


def _positions(tokens):
    import torch

    return torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)


def _per_token_terms(labels, logits, non_loss_data=False):
    """``[b, s, V/tp]`` logits -> (ce, entropy) ``[b, s]`` float32 nats, vocabulary-parallel."""
    from megatron_mile.losses import vocab_parallel_cross_entropy_with_entropy

    logits = logits.transpose(0, 1).float().contiguous()  # [s, b, V/tp], the kernel's layout
    ce, entropy = vocab_parallel_cross_entropy_with_entropy(logits, labels.transpose(0, 1).contiguous())
    return ce.transpose(0, 1).cpu(), entropy.transpose(0, 1).cpu()


def token_surprisal(model, windows_tokens: np.ndarray, micro_batch_size: int):
    """``(ce, entropy)`` ``[W, seq_length]`` float32 nats of every position of the windows on the last
    pipeline stage (None elsewhere). Collective within the model-parallel group."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_mile import platform

    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    forward_backward = get_forward_backward_func()
    seq_length = windows_tokens.shape[1] - 1
    last = parallel_state.is_pipeline_last_stage()
    ce_out, ent_out = [], []
    with torch.no_grad():
        for s in range(0, len(windows_tokens), micro_batch_size):
            block = torch.from_numpy(windows_tokens[s:s + micro_batch_size]).to(device)
            batch = (block[:, :-1].contiguous(), block[:, 1:].contiguous())
            with platform.cuda_to_cpu():  # the schedules allocate on "cuda"
                outputs = forward_backward(
                    forward_step_func=lambda _data_iterator, m, b=batch: _forward_step(b, m),
                    data_iterator=None, model=[model], num_microbatches=1, seq_length=seq_length,
                    micro_batch_size=block.shape[0], forward_only=True, collect_non_loss_data=True)
            if last:
                ce, ent = outputs[0]
                ce_out.append(ce.numpy())
                ent_out.append(ent.numpy())
    if not last:
        return None, None
    if not ce_out:  # this data-parallel rank had no windows
        empty = np.zeros((0, seq_length), np.float32)
        return empty, empty
    return np.concatenate(ce_out), np.concatenate(ent_out)


# --------------------------------------------------------------------------- putting it together
def _dp_shard(num: int):
    """This data-parallel rank's contiguous share ``[start, end)`` of ``num`` windows."""
    from megatron.core import parallel_state

    rank = parallel_state.get_data_parallel_rank()
    world = parallel_state.get_data_parallel_world_size()
    per_rank = math.ceil(num / world)
    return min(num, rank * per_rank), min(num, (rank + 1) * per_rank)


def _gather_to_rank0(local):
    """All ranks' ``local`` objects on global rank 0 (a list; None elsewhere)."""
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(local, gathered, dst=0)
    return gathered


def evaluate_checkpoints(runs: Sequence[tuple[str, str]], store_root: str, data: Optional[EvalDataConfig],
                         iterations: Optional[Sequence[int]] = None, micro_batch_size: int = 8,
                         compute_dtype: str = "float32", storage_dtype: str = "float16",
                         log=print) -> SurprisalStore:
    """Evaluate every (or the listed) checkpoint of each ``(run name, --save directory)`` into the
    store at ``store_root``. Collective: every rank calls it, with megatron's ``parallel_state``
    initialised in the layout to evaluate with. ``data`` may be None for an existing store."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    from megatron_mile import platform
    from megatron_mile.training.checkpointing import checkpoint_name, list_checkpoints, load_args

    platform.adapt_megatron_to_cpu()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[compute_dtype]
    rank0 = dist.get_rank() == 0
    for run, save_dir in runs:
        its = list_checkpoints(save_dir) if os.path.isdir(save_dir) else []
        if iterations is not None:
            missing = sorted(set(iterations) - set(its))
            if missing:
                raise FileNotFoundError(f"run {run!r}: no checkpoint for iterations {missing} in {save_dir}")
            its = sorted(iterations)
        if not its:
            raise FileNotFoundError(f"run {run!r}: no complete checkpoint (iter_*/args.json) in {save_dir}")
        first_args, _ = load_args(save_dir, its[0])
        vocab = tokenizer_vocab_size(first_args)
        signature = model_signature(first_args, vocab)
        # Every checkpoint must be the same model: checked before anything is evaluated or stored.
        for it in its[1:]:
            args, path = load_args(save_dir, it)
            other = model_signature(args, vocab)
            if other != signature:
                diff = ", ".join(f"{k}: {signature.get(k)!r} vs {other.get(k)!r}"
                                 for k in sorted(set(signature) | set(other)) if signature.get(k) != other.get(k))
                raise ModelMismatchError(f"run {run!r}: {path} is a different model from "
                                         f"{checkpoint_name(save_dir, its[0])} ({diff})")
        if data is None:
            store = SurprisalStore(store_root)
        else:
            # Rank 0 creates the store; the others wait, then open it.
            store = prepare_store(store_root, data, vocab, storage_dtype) if rank0 else None
            dist.barrier()
            store = store or SurprisalStore(store_root)
        if store.manifest["seq_length"] > first_args.seq_length:
            raise ValueError(f"run {run!r}: evaluation windows of {store.manifest['seq_length']} tokens exceed "
                             f"the model's --seq-length {first_args.seq_length}")
        store.check_model(run, signature)
        tokens_all = _window_tokens(store)
        start, end = _dp_shard(len(tokens_all))
        mask = _position_mask(store)

        # megatron's RNG tracker must hold the model-parallel streams before a model is built.
        torch.manual_seed(first_args.seed)
        tensor_parallel.model_parallel_cuda_manual_seed(first_args.seed)
        model, _ = build_eval_model(first_args)
        for it in its:
            t0 = time.perf_counter()
            args, path = load_args(save_dir, it)
            load_weights(model, path, dtype)
            ce, ent = token_surprisal(model, tokens_all[start:end], micro_batch_size)
            mine = None
            if ce is not None and parallel_state.get_tensor_model_parallel_rank() == 0:
                mine = (start, ce, ent)
            gathered = _gather_to_rank0(mine)
            if rank0:
                # NaN until filled: a window no rank evaluated is caught by add_checkpoint's check.
                ce_full = np.full((len(tokens_all), tokens_all.shape[1] - 1), np.nan, np.float32)
                ent_full = np.full_like(ce_full, np.nan)
                for piece in gathered:
                    if piece is not None:
                        s, c, e = piece
                        ce_full[s:s + len(c)], ent_full[s:s + len(c)] = c, e
                store.add_checkpoint(run, it, ce_full[mask] / LN2, ent_full[mask] / LN2, signature,
                                     run_info={"checkpoint_dir": os.path.abspath(save_dir), "loss": args.loss,
                                               "seed": args.seed})
                log(f"[eval_surprisal] {run} iter {it}: mean surprisal "
                    f"{float(np.mean(ce_full[mask])) / LN2:.3f} bits ({time.perf_counter() - t0:.1f}s)")
            dist.barrier()
        del model
    return SurprisalStore(store_root)


def _window_tokens(store: SurprisalStore) -> np.ndarray:
    prefixes = [d["prefix"] for d in store.manifest["datasets"]]
    datasets = [open_indexed_dataset(p) for p in prefixes]
    windows = np.asarray(store._array("windows"))
    return read_windows(datasets, windows, store.manifest["seq_length"])


def _position_mask(store: SurprisalStore) -> np.ndarray:
    mask = np.zeros((store.manifest["num_windows"], store.manifest["seq_length"]), bool)
    mask[np.asarray(store._array("window")), np.asarray(store.positions) - 1] = True
    return mask


# --------------------------------------------------------------------------- command line
def _run_spec(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--checkpoints takes NAME=SAVE_DIR, got {text!r}")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval_surprisal.py",
        description="Per-token surprisal and entropy of checkpoints on held-out indexed data.")
    # Not "--run": under torchrun, argparse would take it for an abbreviation of torchrun's --run-path.
    p.add_argument("--checkpoints", dest="run", type=_run_spec, action="append", required=True,
                   metavar="NAME=SAVE_DIR",
                   help="A run's name and checkpoint directory (its --save); repeat for several runs.")
    p.add_argument("--iterations", type=lambda s: [int(x) for x in s.split(",") if x], default=None,
                   help="Comma-separated iterations to evaluate (default: every complete checkpoint).")
    p.add_argument("--output", required=True, help="Surprisal store directory (created or extended).")
    p.add_argument("--data-path", nargs="+", default=None,
                   help="Held-out datasets (prefixes or LABEL=PREFIX); needed to create the store.")
    p.add_argument("--seq-length", type=int, default=None, help="Window length (default: the model's).")
    p.add_argument("--num-sequences", type=int, default=64, help="Windows per dataset.")
    p.add_argument("--positions-per-sequence", type=int, default=None, help="Evaluated positions per window.")
    p.add_argument("--split", default=None, help="Megatron --split to evaluate only one split's documents.")
    p.add_argument("--split-name", choices=SPLIT_NAMES, default="valid")
    p.add_argument("--seed", type=int, default=1234, help="Seed of the window/position choice.")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--compute-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--storage-dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import torch.distributed as dist

    from megatron_mile.training.logger import fused_path_notice

    with fused_path_notice():  # megatron-core's notices on import (the model's modules too): one line
        from megatron.core import parallel_state

        import megatron_mile.model  # noqa: F401
        from megatron_mile.training.checkpointing import list_checkpoints, load_args
        from megatron_mile.training.distributed import initialize_distributed

    data = None
    if args.data_path:
        seq_length = args.seq_length
        if seq_length is None:
            first = args.run[0][1]
            seq_length = load_args(first, list_checkpoints(first)[0])[0].seq_length if list_checkpoints(first) else None
            if seq_length is None:
                raise SystemExit(f"eval_surprisal: no checkpoint in {first}")
        data = EvalDataConfig(data_path=args.data_path, seq_length=seq_length, num_sequences=args.num_sequences,
                              positions_per_sequence=args.positions_per_sequence, split=args.split,
                              split_name=args.split_name, seed=args.seed)
    elif not os.path.isfile(os.path.join(args.output, "manifest.json")):
        raise SystemExit("eval_surprisal: --data-path is needed to create a new store")
    layout = argparse.Namespace(tensor_model_parallel_size=args.tensor_model_parallel_size,
                                pipeline_model_parallel_size=args.pipeline_model_parallel_size,
                                num_layers_per_virtual_pipeline_stage=None, distributed_backend=None,
                                distributed_timeout_minutes=30)
    created = initialize_distributed(layout)
    try:
        store = evaluate_checkpoints(args.run, args.output, data, args.iterations, args.micro_batch_size,
                                     args.compute_dtype, args.storage_dtype,
                                     log=print if dist.get_rank() == 0 else (lambda *a, **k: None))
        if dist.get_rank() == 0:
            print(f"[eval_surprisal] {store.num_tokens} tokens x {sum(len(store.iterations(r)) for r in store.runs())} "
                  f"checkpoints in {args.output}")
    finally:
        if created.get("model_parallel"):
            parallel_state.destroy_model_parallel()
        if created.get("process_group"):
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
