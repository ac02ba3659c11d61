"""Shared fixtures: one gloo process pool per test module (``WORLD_SIZE`` in the module, default 4).

Without a GPU, triton's interpreter is switched on (before any kernel is defined, and inherited by
the pool's workers) so the GPU loss kernels run, slowly, on CPU tensors in the loss tests."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from megatron_mile.testing import DistributedPool


@pytest.fixture(scope="module")
def dist_pool(request):
    pool = DistributedPool(getattr(request.module, "WORLD_SIZE", 4))
    yield pool
    pool.close()
