"""Run a function in N gloo processes with megatron's ``parallel_state`` initialised.

A pool is started once (spawn, gloo over loopback) and reused for many calls, so a test module pays
the process start-up and ``init_process_group`` once. Each call names the parallel layout it wants;
the workers re-initialise ``parallel_state`` only when the layout changes.

    pool = DistributedPool(world_size=4)
    results = pool.run(body, arg1, tp=2, pp=1)   # body(arg1) on every rank, results by rank
    pool.close()

``body`` must be picklable (a module-level function). If any rank raises, or the call does not
finish within ``timeout`` seconds (a rank stuck in a collective), the pool is torn down, restarted
lazily on the next call, and :class:`RankError` carries every failing rank's traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from multiprocessing.connection import wait
from typing import Any, Callable, Dict, List, Optional

import torch.multiprocessing as mp


class RankError(RuntimeError):
    """A function run by :class:`DistributedPool` failed (or hung) on at least one rank."""


def _worker(rank: int, world_size: int, port: int, conn, sys_path: List[str], threads: int,
            env: Dict[str, str]) -> None:
    sys.path[:0] = [p for p in sys_path if p not in sys.path]
    os.environ.update(env)  # before anything initialises CUDA or defines a triton kernel
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from megatron.core import parallel_state

    layout = None
    while True:
        msg = conn.recv()
        if msg is None:
            break
        fn, args, kwargs, want = msg
        try:
            if want != layout:
                if parallel_state.model_parallel_is_initialized():
                    parallel_state.destroy_model_parallel()
                tp, pp, vpp = want
                parallel_state.initialize_model_parallel(
                    tensor_model_parallel_size=tp,
                    pipeline_model_parallel_size=pp,
                    virtual_pipeline_model_parallel_size=vpp,
                )
                layout = want
            conn.send(("ok", fn(*args, **kwargs)))
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            conn.send(("err", traceback.format_exc()))
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


class DistributedPool:
    """``world_size`` persistent gloo worker processes (see module docstring); ``env`` is added to
    the workers' environment."""

    def __init__(self, world_size: int, timeout: float = 600.0, threads_per_rank: Optional[int] = None,
                 env: Optional[Dict[str, str]] = None):
        self.world_size = world_size
        self.env = dict(env or {})
        self.timeout = timeout
        self.threads = threads_per_rank or max(1, (os.cpu_count() or 1) // world_size)
        self._procs: list = []
        self._conns: list = []

    def _start(self) -> None:
        # Imported here: the harness itself stays importable without the training stack.
        from megatron_mile.training.distributed import free_port

        ctx = mp.get_context("spawn")
        port = free_port()
        for rank in range(self.world_size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker, args=(rank, self.world_size, port, child, list(sys.path), self.threads, self.env),
                daemon=True,
            )
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)

    def run(self, fn: Callable, *args, tp: int = 1, pp: int = 1, vpp: Optional[int] = None,
            **kwargs) -> List[Any]:
        """Call ``fn(*args, **kwargs)`` on every rank under layout (tp, pp, vpp); results by rank."""
        if self.world_size % (tp * pp):
            raise ValueError(f"world size {self.world_size} is not divisible by tp*pp={tp * pp}")
        if not self._procs:
            self._start()
        for conn in self._conns:
            conn.send((fn, args, kwargs, (tp, pp, vpp)))
        results: dict = {}
        errors: dict = {}
        pending = {conn: rank for rank, conn in enumerate(self._conns)}
        while pending:
            ready = wait(list(pending), timeout=self.timeout)
            if not ready:
                errors.update({r: f"no answer within {self.timeout:.0f}s (hung?)" for r in pending.values()})
                break
            for conn in ready:
                rank = pending.pop(conn)
                try:
                    status, payload = conn.recv()
                except EOFError:
                    status, payload = "err", "process died"
                (results if status == "ok" else errors)[rank] = payload
            if errors:  # other ranks may now be stuck in a collective: don't wait for them
                break
        if errors:
            self.close(force=True)
            detail = "\n".join(f"--- rank {r} ---\n{e}" for r, e in sorted(errors.items()))
            raise RankError(f"{getattr(fn, '__name__', fn)} failed on ranks {sorted(errors)}:\n{detail}")
        return [results[r] for r in range(self.world_size)]

    def close(self, force: bool = False) -> None:
        """Stop the workers (politely unless ``force``)."""
        for conn in self._conns:
            if not force:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        for proc in self._procs:
            proc.join(timeout=0 if force else 30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        self._procs, self._conns = [], []

    def __enter__(self) -> "DistributedPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
