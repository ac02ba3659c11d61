"""Checkpoints: megatron-core ``dist_checkpointing`` (torch_dist format) on CPU and GPU alike.

Layout (Megatron-LM's)::

    <save>/latest_checkpointed_iteration.txt        the last complete iteration, written last
    <save>/iter_0000100/                            one checkpoint (complete once renamed)
        metadata.json, common.pt, __*_*.distcp      dist_checkpointing's files
        args.json                                   the training flags: the checkpoint describes itself

``iter_N`` holds the model (``model``, or ``model0``, ``model1``, ... for virtual pipeline
chunks), the optimizer state, the LR scheduler, the iteration and consumed samples (common state)
and every rank's RNG states (one ``ShardedObject`` per rank). Tensors are stored by their global
names and offsets, so the model (and, without the distributed optimizer, the optimizer state) can
be loaded into another TP/PP layout; the RNG states are restored only into the same layout.

A checkpoint is written into ``iter_N.tmp`` and renamed to ``iter_N`` by rank 0 when every rank
has finished; only then is the tracker file replaced (atomically). A crash leaves at most a stale
``.tmp`` directory, never a tracker pointing at a partial checkpoint; loading ignores such
directories and the next save removes them. On multi-node runs ``--save`` must be on a shared file
system, as for Megatron-LM.

Resuming checks, on every rank alike and before the collective load (so no rank waits for one that
stopped): the files named by the checkpoint's metadata are there and whole
(:class:`CheckpointError` names the directory, the iteration and the file; there is no fallback to
an older checkpoint), the padded vocabulary (:func:`padded_vocab_size_for_resume`) and the
learning-rate schedule (:func:`check_scheduler_state`, Megatron-LM's
``--override-opt_param-scheduler`` / ``--use-checkpoint-opt_param-scheduler``).

On CPU this needs two of ``megatron_mile.platform``'s measures (P2 for dist_checkpointing's
``torch.cuda.synchronize`` and the psutil guard); the formats are the same as on GPU.

For analysis, :func:`load_model_for_eval` rebuilds a single-process (TP=1, PP=1) model from a
checkpoint directory and its ``args.json``, whatever layout trained it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import random
import shutil
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch.distributed.checkpoint.api import CheckpointException
from megatron.core.utils import unwrap_model

TRACKER_FILE = "latest_checkpointed_iteration.txt"
ARGS_FILE = "args.json"

# The distributed optimizer's default sharding type cannot be saved on this version
# ("ShardedTensor.flattened_range is not supported"); dp_reshardable can.
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def checkpoint_name(save_dir: str, iteration: int) -> str:
    return os.path.join(save_dir, f"iter_{iteration:07d}")


class CheckpointError(RuntimeError):
    """A checkpoint directory that names a checkpoint which cannot be read (partial or corrupt)."""


class ResumeMismatch(ValueError):
    """The checkpoint and the flags disagree in a way training cannot continue from silently."""


def read_latest_iteration(save_dir: str) -> Optional[int]:
    """The iteration in ``<save_dir>/latest_checkpointed_iteration.txt``, or None if there is no
    such file. Raises :class:`CheckpointError` if the file does not hold an iteration number."""
    path = os.path.join(save_dir, TRACKER_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{path} should hold an iteration number, found {text[:40]!r}") from None


@dataclass
class FoundCheckpoint:
    iteration: Optional[int]
    """The iteration to resume from, or None: start from scratch."""
    message: str
    """What to log when there is nothing to load (empty otherwise)."""


def _checkpoint_files() -> tuple:
    """Files dist_checkpointing writes into every checkpoint besides the shards: megatron-core up to
    0.18 keeps the common state in ``common.pt``; 0.19 stores it inside the torch_dist shards."""
    from packaging.version import Version

    from megatron_mile.platform import megatron_core_version

    if Version(megatron_core_version()) >= Version("0.19"):
        return ("metadata.json",)
    return ("metadata.json", "common.pt")


def find_checkpoint(load_dir: str) -> FoundCheckpoint:
    """What ``--load load_dir`` resumes from, as Megatron-LM decides it (no collective, no model).

    * ``load_dir`` does not exist: nothing to load, with a warning (a typo is likely).
    * no tracker file (e.g. the first job of a chain that saves to and loads from one directory,
      or only a crashed ``iter_N.tmp``): nothing to load, start from scratch.
    * the tracker names a checkpoint that is missing or incomplete, or the tracker is garbled:
      :class:`CheckpointError` (starting from scratch would silently discard the run)."""
    if not os.path.exists(load_dir):
        return FoundCheckpoint(None, f"WARNING: --load {load_dir} does not exist; no checkpoint loaded, "
                                     f"training starts from scratch")
    if not os.path.isdir(load_dir):
        raise CheckpointError(f"--load {load_dir} is not a directory")
    iteration = read_latest_iteration(load_dir)
    if iteration is None:
        complete = list_checkpoints(load_dir)
        if complete:
            raise CheckpointError(
                f"--load {load_dir} has checkpoints (iterations {complete}) but no {TRACKER_FILE}; write the "
                f"iteration to resume from into that file, or load from an empty directory to start over")
        return FoundCheckpoint(None, f"> no checkpoint in {load_dir} ({TRACKER_FILE} not found): "
                                     f"training starts from scratch")
    path = checkpoint_name(load_dir, iteration)
    if not os.path.isdir(path):
        raise CheckpointError(f"--load {load_dir}: {TRACKER_FILE} names iteration {iteration}, but {path} "
                              f"does not exist")
    missing = [name for name in _checkpoint_files() if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise CheckpointError(f"--load {load_dir}: checkpoint {path} is incomplete (no {', '.join(missing)})")
    return FoundCheckpoint(iteration, "")


def list_checkpoints(save_dir: str) -> List[int]:
    """Iterations of the complete checkpoints under ``save_dir`` (ascending)."""
    its = []
    for name in os.listdir(save_dir) if os.path.isdir(save_dir) else ():
        if name.startswith("iter_") and name[5:].isdigit() and os.path.isfile(os.path.join(save_dir, name, ARGS_FILE)):
            its.append(int(name[5:]))
    return sorted(its)


def _model_key(i: int, n: int) -> str:
    return "model" if n == 1 else f"model{i}"


def _model_state(model_chunks) -> dict:
    # Sharded dicts come from the unwrapped modules: DDP and Float16Module add a 'module.' prefix.
    chunks = unwrap_model(model_chunks)
    return {_model_key(i, len(chunks)): c.sharded_state_dict() for i, c in enumerate(chunks)}


def _layout() -> tuple:
    return (parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_data_parallel_world_size())


def _rng_state() -> ShardedObject:
    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    offset = (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank(),
              parallel_state.get_data_parallel_rank())
    return ShardedObject("rng_state", state, _layout(), offset, replica_id=0)


def _set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _args_to_json(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


def remove_partial_checkpoints(save_dir: str) -> List[str]:
    """Delete the ``iter_*.tmp`` directories under ``save_dir`` (saves that never finished: only
    one save runs at a time). Returns what was removed."""
    partial = sorted(glob.glob(os.path.join(glob.escape(save_dir), "iter_*.tmp")))
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def save_checkpoint(save_dir: str, iteration: int, model_chunks, optimizer, scheduler, args,
                    consumed_samples: int) -> str:
    """Write ``<save_dir>/iter_<iteration>`` (collective: every rank calls it). Returns the path."""
    final = checkpoint_name(save_dir, iteration)
    tmp = final + ".tmp"
    rank = dist.get_rank()
    if rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        remove_partial_checkpoints(save_dir)  # left over from a crashed or killed save
        os.makedirs(tmp)
    dist.barrier()

    state = _model_state(model_chunks)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, metadata=_OPTIMIZER_METADATA)
    state["opt_param_scheduler"] = scheduler.state_dict() if scheduler is not None else None
    state["iteration"] = iteration
    state["consumed_train_samples"] = consumed_samples
    state["layout"] = list(_layout())
    state["rng_state"] = _rng_state()
    dist_checkpointing.save(state, tmp)

    if rank == 0:
        with open(os.path.join(tmp, ARGS_FILE), "w") as f:
            json.dump(_args_to_json(args), f, indent=1, sort_keys=True)
    dist.barrier()  # every rank's shards are on disk
    if rank == 0:
        if os.path.exists(final):  # re-saving an iteration (e.g. after a resume)
            shutil.rmtree(final)
        os.rename(tmp, final)
        tracker_tmp = os.path.join(save_dir, TRACKER_FILE + ".tmp")
        with open(tracker_tmp, "w") as f:
            f.write(str(iteration))
        os.replace(tracker_tmp, os.path.join(save_dir, TRACKER_FILE))
    dist.barrier()
    return final


@dataclass
class LoadedState:
    iteration: int
    consumed_samples: int


def _create_distributed_optimizer_state(optimizer) -> None:
    """megatron's DistributedOptimizer builds its loading template from ``state_dict()``, which,
    with torch's Adam (no transformer-engine or apex), reads a ``step`` from every parameter's
    state: before the first step there is none (``assert len(steps) == 1``, seen on an H200).
    megatron's own dummy step on zero gradients creates the states; the load then overwrites them
    and the fp32 master weights."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(inner, DistributedOptimizer) and not inner.optimizer.state:
            inner._init_optimizer_states_with_dummy_values()


def _unreadable(load_dir: str, iteration: int, name: str, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"--load {load_dir}: checkpoint of iteration {iteration} is unreadable: "
        f"{os.path.join(checkpoint_name(load_dir, iteration), name)}: {type(exc).__name__}: {exc} "
        f"(truncated or corrupt; no older checkpoint is used in its place: point "
        f"{TRACKER_FILE} at another iteration to resume from it)")


def read_checkpoint_files(load_dir: str, iteration: int) -> tuple:
    """``(common state, saved flags)`` of ``iter_<iteration>`` after checking that every file its
    metadata names is readable and whole; :class:`CheckpointError` names the first that is not.
    Reads metadata only (no tensors), no collective."""
    from torch.distributed.checkpoint import FileSystemReader

    path = checkpoint_name(load_dir, iteration)
    json_files = {}
    for name in ("metadata.json", ARGS_FILE):
        try:
            with open(os.path.join(path, name)) as f:
                json_files[name] = json.load(f)
        except (OSError, ValueError) as exc:
            raise _unreadable(load_dir, iteration, name, exc) from None
    try:
        storage = FileSystemReader(path).read_metadata().storage_data
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError) as exc:
        raise _unreadable(load_dir, iteration, ".metadata", exc) from None
    needed = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = os.path.join(path, name)
        have = os.path.getsize(file) if os.path.isfile(file) else None
        if have is None or have < size:
            found = "missing" if have is None else f"{have} bytes"
            raise _unreadable(load_dir, iteration, name, EOFError(f"{found}, the metadata needs {size}"))
    try:
        common = dist_checkpointing.load_common_state_dict(path)
    except Exception as exc:  # noqa: BLE001 - torch.load's errors (zip, pickle, EOF) have no common base
        raise _unreadable(load_dir, iteration, "common.pt", exc) from None
    return common, json_files[ARGS_FILE]


def padded_vocab_size_for_resume(args: argparse.Namespace, vocab_size: int, padded: int) -> int:
    """The padded vocabulary to build the model with when ``--load`` resumes a checkpoint.

    ``padded`` is what this run's flags give (``vocab_size`` padded to a multiple of
    ``--make-vocab-size-divisible-by`` x TP). The checkpoint's own padded size (in its
    ``args.json``) wins when it differs, if it splits evenly over this run's TP size (padding rows
    only have to divide by TP); otherwise :class:`ResumeMismatch`, before any process group."""
    found = find_checkpoint(args.load)
    if found.iteration is None:
        return padded
    _, saved = read_checkpoint_files(args.load, found.iteration)
    saved_padded = saved.get("padded_vocab_size")
    if saved_padded is None or saved_padded == padded:
        return padded
    tp = args.tensor_model_parallel_size
    where = (f"--load {args.load}: the checkpoint of iteration {found.iteration} has a padded vocabulary of "
             f"{saved_padded} rows (trained at TP {saved.get('tensor_model_parallel_size')})")
    if saved_padded < vocab_size:
        raise ResumeMismatch(f"{where}, fewer than this tokenizer's {vocab_size} tokens: it was trained with "
                             f"another tokenizer or --vocab-size")
    if saved_padded % tp:
        fits = [n for n in range(1, saved_padded + 1) if saved_padded % n == 0 and n <= 64]
        raise ResumeMismatch(f"{where}, which does not split over --tensor-model-parallel-size {tp} (this run "
                             f"would pad {vocab_size} to {padded}); resume at a tensor-parallel size that divides "
                             f"{saved_padded} ({', '.join(map(str, fits))})")
    return saved_padded


# The scheduler values Megatron-LM's OptimizerParamScheduler checks on load, and the flags behind them.
SCHEDULER_FLAGS = {
    "max_lr": "--lr",
    "min_lr": "--min-lr",
    "lr_warmup_steps": "--lr-warmup-iters / --lr-warmup-fraction",
    "lr_decay_steps": "--lr-decay-iters, default --train-iters",
    "lr_decay_style": "--lr-decay-style",
    "start_wd": "--weight-decay",
    "end_wd": "--weight-decay",
    "wd_incr_steps": "--train-iters",
    "wd_incr_style": "weight-decay increment style",
}


def check_scheduler_state(saved: dict, scheduler, args: argparse.Namespace, where: str) -> None:
    """Megatron-LM's rule for the learning-rate schedule of a resumed run: the checkpoint's values
    must equal the flags' unless ``--override-opt_param-scheduler`` (the flags win) or
    ``--use-checkpoint-opt_param-scheduler`` (the checkpoint wins). Sets the scheduler's switches
    for its ``load_state_dict``; raises :class:`ResumeMismatch` listing every mismatch otherwise.
    ``wd_incr_steps`` is compared only for an increasing weight decay (it is unused when constant)."""
    scheduler.override_opt_param_scheduler = args.override_opt_param_scheduler
    scheduler.use_checkpoint_opt_param_scheduler = not args.override_opt_param_scheduler
    if args.override_opt_param_scheduler or args.use_checkpoint_opt_param_scheduler:
        return
    current = scheduler.state_dict()
    constant_wd = saved.get("wd_incr_style") == current["wd_incr_style"] == "constant"
    mismatches = [
        f"{name} {saved[name]!r} in the checkpoint vs {current[name]!r} from the flags ({flag})"
        for name, flag in SCHEDULER_FLAGS.items()
        if name in saved and saved[name] != current[name] and not (name == "wd_incr_steps" and constant_wd)
    ]
    if mismatches:
        raise ResumeMismatch(
            f"{where}: the learning-rate schedule differs from the checkpoint's: {'; '.join(mismatches)}. "
            f"Add --override-opt_param-scheduler to train on with the flags' schedule, or "
            f"--use-checkpoint-opt_param-scheduler to keep the checkpoint's")


def load_checkpoint(load_dir: str, model_chunks, optimizer, scheduler, args) -> LoadedState:
    """Resume from the latest checkpoint in ``load_dir`` (collective). With ``--finetune`` only the
    model is loaded and training starts at iteration 0; ``--no-load-optim`` / ``--no-load-rng``
    skip those parts. Returns the iteration and consumed samples to continue from."""
    iteration = find_checkpoint(load_dir).iteration
    if iteration is None:
        raise CheckpointError(f"--load {load_dir}: no checkpoint there ({TRACKER_FILE} not found)")
    path = checkpoint_name(load_dir, iteration)
    common, _ = read_checkpoint_files(load_dir, iteration)
    same_layout = tuple(common.get("layout", ())) == _layout()
    # Model weights only (mile-import-hf writes no optimizer state): as Megatron-LM's converted
    # "release" checkpoints, the optimizer, its schedule and the RNG start afresh.
    weights_only = "optimizer" not in common
    if weights_only and optimizer is not None and dist.get_rank() == 0:
        print(f"> {path} holds model weights only (no optimizer state): the optimizer, learning-rate "
              f"schedule and RNG start afresh", flush=True)
    load_optim = optimizer is not None and not (args.no_load_optim or args.finetune or weights_only)
    load_rng = not (args.no_load_rng or args.finetune or weights_only) and same_layout
    load_scheduler = load_optim and scheduler is not None and common.get("opt_param_scheduler") is not None
    if load_scheduler:  # every rank decides alike, before the collective load
        check_scheduler_state(common["opt_param_scheduler"], scheduler, args,
                              f"--load {load_dir} (iteration {iteration})")

    state = _model_state(model_chunks)
    if load_optim:
        _create_distributed_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=True, metadata=_OPTIMIZER_METADATA)
    if load_rng:
        state["rng_state"] = _rng_state()
    try:
        loaded = dist_checkpointing.load(state, path)
    except (EOFError, OSError, pickle.UnpicklingError, CheckpointException) as exc:
        raise _unreadable(load_dir, iteration, "*.distcp", exc) from None

    chunks = unwrap_model(model_chunks)
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(loaded[_model_key(i, len(chunks))])
    if load_optim:
        with torch.no_grad():  # fp32 optimizers copy in place into views of the parameters
            optimizer.load_state_dict(loaded["optimizer"])
        if load_scheduler:
            scheduler.load_state_dict(loaded["opt_param_scheduler"])
    elif optimizer is not None:
        optimizer.reload_model_params()  # fp32 master copies of the freshly loaded bf16 weights
    if load_rng:
        _set_rng_state(loaded["rng_state"])
    if args.finetune:
        return LoadedState(0, 0)
    return LoadedState(iteration, int(loaded["consumed_train_samples"]))


def load_args(checkpoint_dir: str, iteration: Optional[int] = None) -> tuple:
    """``(args, path)`` of a checkpoint: ``checkpoint_dir`` is a ``--save`` directory (latest or
    ``iteration``) or one ``iter_N`` directory."""
    if os.path.isfile(os.path.join(checkpoint_dir, ARGS_FILE)) and iteration is None:
        path = checkpoint_dir
    else:
        if iteration is None:
            iteration = read_latest_iteration(checkpoint_dir)
            if iteration is None:
                raise FileNotFoundError(f"{checkpoint_dir}: neither a checkpoint nor a directory with {TRACKER_FILE}")
        path = checkpoint_name(checkpoint_dir, iteration)
    with open(os.path.join(path, ARGS_FILE)) as f:
        return argparse.Namespace(**json.load(f)), path


def _init_single_process() -> None:
    if not dist.is_initialized():
        from megatron_mile.training.distributed import free_port

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    elif (parallel_state.get_tensor_model_parallel_world_size() != 1
          or parallel_state.get_pipeline_model_parallel_world_size() != 1):
        raise RuntimeError("load_model_for_eval builds a TP=1, PP=1 model; parallel_state has another layout")


def load_model_for_eval(checkpoint_dir: str, iteration: Optional[int] = None, device: Optional[str] = None,
                        dtype: Optional[torch.dtype] = None):
    """Rebuild the trained model on one process (TP=1, PP=1) and load its weights.

    ``checkpoint_dir``: a ``--save`` directory (then ``iteration``, default the latest) or one
    ``iter_N`` directory. Works whatever TP/PP/VPP layout saved it (dist_checkpointing reshards).
    Initialises a one-process gloo group (nccl with CUDA) and megatron's ``parallel_state`` if
    none exists, and applies the CPU adaptations on CPU. In a multi-process job, every rank must
    call it (the load is collective) with parallel_state at TP=PP=1.

    Returns ``(model, args)``: a :class:`megatron_mile.model.MileGPTModel` in eval mode on
    ``device`` (default cuda if available else cpu), in the training dtype unless ``dtype`` is
    given, and the training flags (``argparse.Namespace``). ``model(tokens, position_ids, None)``
    gives logits ``[b, s, V_padded]``; ``model(tokens, position_ids, None, labels=labels)`` gives the
    training loss per token and fills ``model.token_statistics`` (cross entropy = surprisal in
    nats, entropy, weight), each ``[b, s]``.
    """
    from megatron_mile import platform
    from megatron_mile.model import gpt_model_from_args
    from megatron_mile.training.arguments import transformer_config_from_args

    args, path = load_args(checkpoint_dir, iteration)
    _init_single_process()
    platform.adapt_megatron_to_cpu()
    tensor_parallel.model_parallel_cuda_manual_seed(args.seed)

    eval_args = argparse.Namespace(**vars(args))
    eval_args.tensor_model_parallel_size = eval_args.pipeline_model_parallel_size = 1
    eval_args.num_layers_per_virtual_pipeline_stage = None
    eval_args.sequence_parallel = False
    if not torch.cuda.is_available():
        eval_args.transformer_impl = "local"
    config = transformer_config_from_args(eval_args)
    config.perform_initialization = False  # the weights come from the checkpoint
    model = gpt_model_from_args(eval_args, config, pre_process=True, post_process=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, path)
    model.load_state_dict(loaded["model"])
    if dtype is not None:
        model.to(dtype)
    return model.eval(), args
