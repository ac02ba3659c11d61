"""Shared fixtures: one gloo process pool per test module (``WORLD_SIZE`` in the module, default 4).

The pool is the CPU test harness: its workers never see a GPU (so a GPU machine runs the same CPU
path) and run triton's interpreter, so the GPU loss kernels run, slowly, on CPU tensors in the loss
tests. The compiled kernels are tested on a GPU by test_gpu.py."""

import pytest

from megatron_mile.testing import DistributedPool

CPU_WORKER_ENV = {"CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1"}


@pytest.fixture(scope="module")
def dist_pool(request):
    pool = DistributedPool(getattr(request.module, "WORLD_SIZE", 4), env=CPU_WORKER_ENV)
    yield pool
    pool.close()
