"""Running megatron-core's training path without CUDA (CPU + gloo): every adaptation, in one place.

megatron-core (0.16.1 to 0.19.x) assumes CUDA in a handful of places on the GPT training path.
Without a GPU the entry points call :func:`adapt_megatron_to_cpu` once per process and wrap three
calls in :func:`cuda_to_cpu`; with a GPU both do nothing and megatron-core runs unmodified. Each
measure:

P1  ``torch.cuda.current_device()`` returns ``torch.device("cpu")``. megatron passes it only as
    ``device=`` (RoPE frequencies, the global memory buffer of core attention, the DDP grad/param
    buffers, pipeline receive buffers, timers), so everything lands on the CPU.
P2  ``torch.cuda.synchronize()`` is a no-op (timers, p2p shape exchange, dist_checkpointing), and
    ``torch.cuda.current_stream()`` returns torch's CPU stub stream (0.19's DDP grad sync asks it to
    wait for CUDA-graph events; there are none on CPU).
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
    Its torch_dist writer otherwise starts a ``multiprocessing`` manager for its results queue on
    every save, and up to 0.16 also one writer process per file: costly on a small CPU machine, and
    impossible in daemonic processes (worker pools, as in the tests). megatron-core 0.17 renamed the
    queue factory (``_get_write_results_queue`` -> ``get_write_results_queue``) and replaced the
    per-file processes by threads (``write_preloaded_data_multiproc`` ->
    ``write_preloaded_data_multithread``), which need no patch. Same files, same format.
P6  Activation recompute (``tensor_parallel.checkpoint``) saves and restores the CUDA generator's
    state besides the CPU one and the tracker's; without CUDA its get/set do nothing
    (:func:`_ignore_cuda_generator_in_recompute`).

Every patch first checks its target with :func:`_patch_target`: the name exists, takes the
parameters the replacement relies on, and is the one megatron-core's caller reads (a renamed target
would otherwise leave the patch silently without effect). A mismatch raises
:class:`PlatformPatchError` naming the target and the installed megatron-core version.

Not CUDA-specific but in the same spirit: dist_checkpointing's forked writer hangs silently when
``psutil`` is missing (``filesystem_async._process_memory``); :func:`guard_dist_checkpointing`
(called by :func:`adapt_megatron_to_cpu`, on GPU too) stubs it out in that case.

Left alone: the fused kernels (gradient-accumulation fusion, RoPE fusion) and sequence parallelism
with the local spec, which need CUDA or TE anyway; the training code keeps them off on CPU.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import inspect
import queue
from typing import Callable, Dict, Optional, Sequence

import torch
from megatron.core.tensor_parallel import random as megatron_random

__all__ = [
    "SUPPORTED_MEGATRON_CORE",
    "CpuRNGStatesTracker",
    "CudaToCpuMode",
    "PlatformPatchError",
    "adapt_megatron_to_cpu",
    "cuda_to_cpu",
    "guard_dist_checkpointing",
    "on_cpu",
    "pipeline_p2p_kwargs",
    "write_checkpoints_in_process",
]


SUPPORTED_MEGATRON_CORE = ">=0.16.1,<0.20"
"""The megatron-core releases whose patch targets this module has been checked against (setup.py)."""


class PlatformPatchError(RuntimeError):
    """A megatron-core name this module patches is missing or has changed (another release)."""


def megatron_core_version() -> str:
    try:
        return importlib.metadata.version("megatron-core")
    except importlib.metadata.PackageNotFoundError:
        import megatron.core

        return getattr(megatron.core, "__version__", "unknown")


def _code_names(function: Callable) -> set:
    """Global and attribute names that ``function``'s body (and its nested functions) read."""
    todo, names = [getattr(inspect.unwrap(function), "__code__", None)], set()
    while todo:
        current = todo.pop()
        if current is not None:
            names.update(current.co_names)
            todo.extend(c for c in current.co_consts if inspect.iscode(c))
    return names


def _patch_target(owner, name: str, *, params: Sequence[str] = (), read_by: Optional[Callable] = None):
    """``getattr(owner, name)`` after checking that it exists, that its signature starts with
    ``params`` (when given), and that ``read_by`` reads it (so replacing it takes effect). Raises
    :class:`PlatformPatchError` naming the target and the installed megatron-core otherwise."""
    target = f"{getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', '')}".strip(".")
    if inspect.ismodule(owner):
        target = owner.__name__
    target += f".{name}"
    problem = None
    if not hasattr(owner, name):
        problem = "does not exist"
    elif params:
        try:
            found = list(inspect.signature(getattr(owner, name)).parameters)[: len(params)]
        except (TypeError, ValueError):
            found = None
        if found != list(params):
            problem = f"takes ({', '.join(found or ['?'])}), expected ({', '.join(params)})"
    if problem is None and read_by is not None and name not in _code_names(read_by):
        problem = f"is no longer used by {read_by.__qualname__}, so patching it would have no effect"
    if problem is not None:
        raise PlatformPatchError(
            f"megatron_mile.platform: {target} {problem} in megatron-core {megatron_core_version()}; "
            f"this module supports megatron-core{SUPPORTED_MEGATRON_CORE} (install one of those, or "
            f"adapt megatron_mile/platform.py to the new name)")
    return getattr(owner, name)


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
    _patch_target(megatron_random.CudaRNGStatesTracker, "add", params=("self", "name", "seed"))
    _patch_target(megatron_random.CudaRNGStatesTracker, "fork", params=("self", "name"))
    tracker = _patch_target(megatron_random, "_CUDA_RNG_STATE_TRACKER", read_by=megatron_random.get_cuda_rng_tracker)
    _patch_target(megatron_random, "_CUDA_RNG_STATE_TRACKER_INITIALIZED",
                  read_by=megatron_random.initialize_rng_tracker)
    if not isinstance(tracker, CpuRNGStatesTracker):
        megatron_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
        megatron_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def guard_dist_checkpointing() -> None:
    """Without psutil, dist_checkpointing's writer process dies before its try block and the parent
    waits forever on its queue; report 0 bytes of process memory instead (only used for logging)."""
    if importlib.util.find_spec("psutil") is None:
        from megatron.core.dist_checkpointing.strategies import filesystem_async

        _patch_target(filesystem_async, "_process_memory",
                      read_by=filesystem_async.FileSystemWriterAsync.write_preloaded_data)
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


def _in_process_results_queue(*_args, **_kwargs) -> queue.Queue:
    """The write-results queue factory without a ``multiprocessing`` manager (P5)."""
    return queue.Queue()


# dist_checkpointing's torch_dist writer: (results-queue factory, per-save writer) by release.
_WRITERS_UP_TO_0_16 = ("_get_write_results_queue", "write_preloaded_data_multiproc")  # a process per file
_WRITERS_FROM_0_17 = ("get_write_results_queue", "write_preloaded_data_multithread")  # a thread per file
_WRITER_PARAMS = ("transform_list", "use_msc", "rank", "write_buckets", "global_results_queue")


def write_checkpoints_in_process() -> None:
    """P5: make dist_checkpointing's torch_dist writer write in this process (see module docstring)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    writer_class = filesystem_async.FileSystemWriterAsync
    old_names = _WRITERS_UP_TO_0_16[0] in _code_names(writer_class.prepare_write_data)
    queue_name, writer_name = _WRITERS_UP_TO_0_16 if old_names else _WRITERS_FROM_0_17
    _patch_target(filesystem_async, queue_name, read_by=writer_class.prepare_write_data)
    _patch_target(writer_class, writer_name, params=_WRITER_PARAMS, read_by=writer_class.get_save_function_and_args)
    setattr(filesystem_async, queue_name, _in_process_results_queue)
    if old_names:  # from 0.17 on megatron's writer uses threads, which work in any process
        _patch_target(writer_class, "write_preloaded_data",
                      params=("transform_list", "local_proc_idx", "write_bucket", "results_queue", "count_queue",
                              "use_fsync"))
        setattr(writer_class, writer_name, staticmethod(_write_buckets_in_process))


_ADAPTED = False


def _ignore_cuda_generator_in_recompute() -> None:
    """P6: activation recompute (``tensor_parallel.checkpoint``) saves and restores the CPU state,
    the tracker's states and the CUDA generator's; without CUDA there is no CUDA generator, so its
    get/set do nothing (the CPU generator, which the CPU dropout uses, is still restored)."""
    _patch_target(megatron_random, "_get_cuda_rng_state", read_by=megatron_random._get_all_rng_states)
    _patch_target(megatron_random, "_set_cuda_rng_state", read_by=megatron_random._set_all_rng_states)
    megatron_random._get_cuda_rng_state = lambda *args, **kwargs: None
    megatron_random._set_cuda_rng_state = lambda *args, **kwargs: None


def adapt_megatron_to_cpu() -> None:
    """Apply P1-P3 and P5 in this process (idempotent; call after ``init_process_group`` and before
    seeding or building the model). Only the psutil guard when CUDA is available."""
    global _ADAPTED
    guard_dist_checkpointing()
    if not on_cpu():
        return
    if not _ADAPTED:
        write_checkpoints_in_process()  # P5
        for name in ("current_device", "synchronize", "current_stream"):
            _patch_target(torch.cuda, name)
        torch.cuda.current_device = lambda: torch.device("cpu")  # P1
        torch.cuda.synchronize = lambda device=None: None  # P2
        torch.cuda.current_stream = lambda device=None: torch.cpu.current_stream()  # P2
        _ignore_cuda_generator_in_recompute()  # P6
        _ADAPTED = True
    _install_cpu_rng_tracker()  # P3 (again if someone rebuilt megatron's tracker)


def pipeline_p2p_kwargs() -> Dict[str, bool]:
    """C1: model-config fields for the pipeline's point-to-point messages on this platform."""
    return {"batch_p2p_comm": False} if on_cpu() else {}
