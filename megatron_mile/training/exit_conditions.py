"""Leaving the training loop early and cleanly, as Megatron-LM does.

* ``--exit-signal-handler``: SIGTERM (what SLURM sends ahead of the time limit, ``--signal``) and
  SIGINT (Ctrl-C) only set a flag (:class:`ExitSignalHandler`); the current iteration finishes.
* ``--exit-duration-in-mins``: the wall-clock budget since the start of training.
* ``--exit-interval``: an iteration count.

After every iteration, :func:`exit_reason` decides for all ranks at once: a signal may have reached
only some of them (or reached them in different iterations), so the signal and time flags are
combined with one MAX all-reduce over the world, as Megatron-LM's ``DistributedSignalHandler``
all-gathers its flag. Every rank then leaves after the same iteration, saving first when
``--save`` is set. The all-reduce runs only when one of the two flags is given.
"""

from __future__ import annotations

import signal
import time
from typing import Optional

import torch
import torch.distributed as dist

EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ExitSignalHandler:
    """While active (a context manager; a no-op unless ``enabled``), SIGTERM and SIGINT are
    recorded instead of ending the process. A second signal of the same kind acts as it would
    have without the handler (a second Ctrl-C interrupts at once)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.received: Optional[signal.Signals] = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received == signum:
            signal.signal(signum, self._previous[signum])
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum)

    def __enter__(self) -> "ExitSignalHandler":
        if self.enabled:
            for sig in EXIT_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def exit_reason(args, iteration: int, signals: ExitSignalHandler, start_time: float) -> Optional[str]:
    """Why every rank leaves the loop after ``iteration``, or None to go on (collective when
    ``--exit-signal-handler`` or ``--exit-duration-in-mins`` is set)."""
    if args.exit_signal_handler or args.exit_duration_in_mins is not None:
        elapsed_mins = (time.time() - start_time) / 60.0
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        # [signal number received (0: none), time is up], the largest over all ranks.
        flags = torch.tensor([int(signals.received or 0),
                              args.exit_duration_in_mins is not None and elapsed_mins > args.exit_duration_in_mins],
                             dtype=torch.int32, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0]:
            return f"received {signal.Signals(int(flags[0])).name} (--exit-signal-handler)"
        if flags[1]:
            return f"--exit-duration-in-mins {args.exit_duration_in_mins:g} reached"
    if args.exit_interval is not None and iteration % args.exit_interval == 0:
        return f"--exit-interval {args.exit_interval}"
    return None
