"""Shared fixtures: one gloo process pool per test module (``WORLD_SIZE`` in the module, default 4)."""

import pytest

from megatron_mile.testing import DistributedPool


@pytest.fixture(scope="module")
def dist_pool(request):
    pool = DistributedPool(getattr(request.module, "WORLD_SIZE", 4))
    yield pool
    pool.close()
