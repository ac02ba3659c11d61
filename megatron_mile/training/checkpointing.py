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
``.tmp`` directory, never a tracker pointing at a partial checkpoint. On multi-node runs ``--save``
must be on a shared file system, as for Megatron-LM.

On CPU this needs two of ``megatron_mile.platform``'s measures (P2 for dist_checkpointing's
``torch.cuda.synchronize`` and the psutil guard); the formats are the same as on GPU.

For analysis, :func:`load_model_for_eval` rebuilds a single-process (TP=1, PP=1) model from a
checkpoint directory and its ``args.json``, whatever layout trained it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
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
    missing = [name for name in ("metadata.json", "common.pt") if not os.path.isfile(os.path.join(path, name))]
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


def save_checkpoint(save_dir: str, iteration: int, model_chunks, optimizer, scheduler, args,
                    consumed_samples: int) -> str:
    """Write ``<save_dir>/iter_<iteration>`` (collective: every rank calls it). Returns the path."""
    final = checkpoint_name(save_dir, iteration)
    tmp = final + ".tmp"
    rank = dist.get_rank()
    if rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a crashed save
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


def load_checkpoint(load_dir: str, model_chunks, optimizer, scheduler, args) -> LoadedState:
    """Resume from the latest checkpoint in ``load_dir`` (collective). With ``--finetune`` only the
    model is loaded and training starts at iteration 0; ``--no-load-optim`` / ``--no-load-rng``
    skip those parts. Returns the iteration and consumed samples to continue from."""
    iteration = find_checkpoint(load_dir).iteration
    if iteration is None:
        raise CheckpointError(f"--load {load_dir}: no checkpoint there ({TRACKER_FILE} not found)")
    path = checkpoint_name(load_dir, iteration)
    common = dist_checkpointing.load_common_state_dict(path)
    same_layout = tuple(common.get("layout", ())) == _layout()
    load_optim = optimizer is not None and not (args.no_load_optim or args.finetune)
    load_rng = not (args.no_load_rng or args.finetune) and same_layout

    state = _model_state(model_chunks)
    if load_optim:
        _create_distributed_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=True, metadata=_OPTIMIZER_METADATA)
    if load_rng:
        state["rng_state"] = _rng_state()
    loaded = dist_checkpointing.load(state, path)

    chunks = unwrap_model(model_chunks)
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(loaded[_model_key(i, len(chunks))])
    if load_optim:
        with torch.no_grad():  # fp32 optimizers copy in place into views of the parameters
            optimizer.load_state_dict(loaded["optimizer"])
        if scheduler is not None and loaded.get("opt_param_scheduler") is not None:
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
