"""Running megatron-core's training path without CUDA (CPU + gloo): every adaptation, in one place.

megatron-core 0.16 assumes CUDA in a handful of places on the GPT training path (see
``/work/shared/notes/megatron_on_cpu.md`` in the project history for the file:line map). Without a
GPU the entry points call :func:`adapt_megatron_to_cpu` once per process and wrap three calls in
:func:`cuda_to_cpu`; with a GPU both do nothing and megatron-core runs unmodified. Each measure:

P1  ``torch.cuda.current_device()`` returns ``torch.device("cpu")``. megatron passes it only as
    ``device=`` (RoPE frequencies, the global memory buffer of core attention, the DDP grad/param
    buffers, pipeline receive buffers, timers), so everything lands on the CPU.
P2  ``torch.cuda.synchronize()`` is a no-op (timers, p2p shape exchange, dist_checkpointing).
P3  :class:`CpuRNGStatesTracker` replaces megatron's CUDA RNG tracker: named CPU generator states
    that ``get_cuda_rng_tracker().fork()`` swaps in (attention dropout, TP-region dropout, weight
    init without --use-cpu-initialization). ``model_parallel_cuda_manual_seed`` then runs as is.
P4  :class:`CudaToCpuMode`, a ``TorchFunctionMode`` active only around optimizer construction,
    ``forward_backward_func`` and ``optimizer.step()``: those write ``device="cuda"`` literally
    (the schedules' token counter, the optimizer's loss scale, grad-clipping buffers) or assert
    ``grad.type() == "torch.cuda.FloatTensor"``. It maps cuda devices to cpu, makes
    ``Tensor.cuda()`` a no-op and reports CPU tensor types under their CUDA names ("type spoof").
C1  ``batch_p2p_comm=False`` in the model config (set by the training code, see
    :func:`pipeline_p2p_kwargs`): gloo matches point-to-point messages per peer in posting order, so
    megatron's batched [send_prev, recv_prev, send_next, recv_next] swaps activation and gradient
    when the previous and next stage are the same rank (PP=2); the unbatched path is correct.

P5  dist_checkpointing writes its files in the training process (:func:`write_checkpoints_in_process`).
    Its torch_dist writer otherwise starts a ``multiprocessing`` manager and forks one writer process
    per file on every save: costly on a small CPU machine, and impossible in daemonic processes
    (worker pools, as in the tests). Same files, same format.

Not CUDA-specific but in the same spirit: dist_checkpointing's forked writer hangs silently when
``psutil`` is missing (``filesystem_async._process_memory``); :func:`guard_dist_checkpointing`
(called by :func:`adapt_megatron_to_cpu`, on GPU too) stubs it out in that case.

Left alone: the fused kernels (gradient-accumulation fusion, RoPE fusion) and sequence parallelism
with the local spec, which need CUDA or TE anyway; the training code keeps them off on CPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import queue
from typing import Dict

import torch
from megatron.core.tensor_parallel import random as megatron_random

__all__ = [
    "CpuRNGStatesTracker",
    "CudaToCpuMode",
    "adapt_megatron_to_cpu",
    "cuda_to_cpu",
    "guard_dist_checkpointing",
    "on_cpu",
    "pipeline_p2p_kwargs",
    "write_checkpoints_in_process",
]


def on_cpu() -> bool:
    """True when this process trains without CUDA (the adaptations below apply)."""
    return not torch.cuda.is_available()


def _is_cuda_device(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    return getattr(device, "type", None) == "cuda"


class CudaToCpuMode(torch.overrides.TorchFunctionMode):
    """P4: run code that names "cuda" literally on the CPU (see module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = torch.device("cpu")
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        if func is torch.Tensor.type:
            if len(args) == 1 and not kwargs:
                # megatron's optimizers check grad.type() == 'torch.cuda.FloatTensor'.
                return func(*args).replace("torch.", "torch.cuda.", 1)
            if len(args) > 1 and isinstance(args[1], str):
                args = (args[0], args[1].replace("torch.cuda.", "torch.", 1), *args[2:])
        return func(*args, **kwargs)


def cuda_to_cpu():
    """Context for megatron calls that write "cuda" literally: P4 on CPU, nothing on GPU."""
    return CudaToCpuMode() if on_cpu() else contextlib.nullcontext()


class CpuRNGStatesTracker(megatron_random.CudaRNGStatesTracker):
    """P3: megatron's named-RNG-state tracker, backed by the CPU default generator.

    ``add(name, seed)`` stores the state ``torch.manual_seed(seed)`` produces without disturbing
    the current one; ``fork(name)`` swaps that state in, and on exit stores its continuation and
    restores the outer state. So the tensor-parallel stream differs between TP ranks, is equal
    across DP ranks and continues from fork to fork, as on GPU. ``get_states``/``set_states``
    (inherited) serve checkpoints.
    """

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        outer = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(outer)

    @contextlib.contextmanager
    def fork(self, name: str = megatron_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def _install_cpu_rng_tracker() -> None:
    if not isinstance(megatron_random._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker):
        megatron_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
        megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def guard_dist_checkpointing() -> None:
    """Without psutil, dist_checkpointing's writer process dies before its try block and the parent
    waits forever on its queue; report 0 bytes of process memory instead (only used for logging)."""
    if importlib.util.find_spec("psutil") is None:
        from megatron.core.dist_checkpointing.strategies import filesystem_async

        filesystem_async._process_memory = lambda: 0


def _write_buckets_in_process(transform_list, use_msc, rank, write_buckets, global_results_queue) -> None:
    """``FileSystemWriterAsync.write_preloaded_data_multiproc`` without the worker processes: the
    same per-file writer, called in turn, with the same result format."""
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    local_results, done = queue.Queue(), queue.Queue()
    results: dict = {}
    for index, bucket in enumerate(write_buckets):
        done.put(index)
        FileSystemWriterAsync.write_preloaded_data(transform_list, index, bucket, local_results, done, True,
                                                   use_msc=use_msc)
        index, outcome = local_results.get()
        if isinstance(outcome, Exception):
            global_results_queue.put(outcome)
            return
        results[index] = outcome
    global_results_queue.put(results)


def write_checkpoints_in_process() -> None:
    """P5: make dist_checkpointing's torch_dist writer write in this process (see module docstring)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    filesystem_async._get_write_results_queue = queue.Queue
    filesystem_async.FileSystemWriterAsync.write_preloaded_data_multiproc = staticmethod(_write_buckets_in_process)


_ADAPTED = False


def adapt_megatron_to_cpu() -> None:
    """Apply P1-P3 and P5 in this process (idempotent; call after ``init_process_group`` and before
    seeding or building the model). Only the psutil guard when CUDA is available."""
    global _ADAPTED
    guard_dist_checkpointing()
    if not on_cpu():
        return
    if not _ADAPTED:
        torch.cuda.current_device = lambda: torch.device("cpu")  # P1
        torch.cuda.synchronize = lambda device=None: None  # P2
        write_checkpoints_in_process()  # P5
        _ADAPTED = True
    _install_cpu_rng_tracker()  # P3 (again if someone rebuilt megatron's tracker)


def pipeline_p2p_kwargs() -> Dict[str, bool]:
    """C1: model-config fields for the pipeline's point-to-point messages on this platform."""
    return {"batch_p2p_comm": False} if on_cpu() else {}
