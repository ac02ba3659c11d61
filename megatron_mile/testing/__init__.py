"""Test utilities shared by the test suite (and usable by downstream projects)."""

from megatron_mile.testing.distributed import DistributedPool, RankError

__all__ = ["DistributedPool", "RankError"]
