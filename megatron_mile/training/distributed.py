"""Process groups for a training run: torchrun, a single process, or an existing group (tests).

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` (also for
multi-node ``--rdzv-backend c10d``); ``init_process_group`` reads them. A plain ``python -m``
launch has none of them and runs as a world of one on a free local port. A caller that already
created the default group (and possibly megatron's ``parallel_state``, as the test pool does) keeps
it; the layout must then match the flags.
"""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_mile.training.arguments import ConfigError, virtual_pipeline_size


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a single-process or test process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_world_size() -> int:
    """World size of this launch, known before any process group exists."""
    if dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def initialize_distributed(args) -> dict:
    """Create what is missing of: the default process group, megatron's model-parallel groups.

    Returns which of them this call created (to tear down in :func:`destroy_distributed`)."""
    created = {"process_group": False, "model_parallel": False}
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # single process, no launcher
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
        dist.init_process_group(
            backend=args.distributed_backend,
            timeout=datetime.timedelta(minutes=args.distributed_timeout_minutes),
        )
        created["process_group"] = True

    want = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, virtual_pipeline_size(args))
    if parallel_state.model_parallel_is_initialized():
        have = (parallel_state.get_tensor_model_parallel_world_size(),
                parallel_state.get_pipeline_model_parallel_world_size(),
                parallel_state.get_virtual_pipeline_model_parallel_world_size())
        if have != want:
            # Same answer on every rank, so no rank is left waiting in a collective.
            raise ConfigError(f"megatron parallel_state is initialised with (TP, PP, VPP) = {have}, "
                              f"the flags ask for {want}")
    else:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=want[0],
            pipeline_model_parallel_size=want[1],
            virtual_pipeline_model_parallel_size=want[2],
            distributed_timeout_minutes=args.distributed_timeout_minutes,
        )
        created["model_parallel"] = True
    return created


def destroy_distributed(created: dict) -> None:
    if created.get("model_parallel"):
        parallel_state.destroy_model_parallel()
    if created.get("process_group"):
        dist.destroy_process_group()
