"""Cross entropy: weight 1 (megatron's ``vocab_parallel_cross_entropy``, value and gradient)."""

import torch

from megatron_mile.losses.registry import Loss


class CrossEntropy(Loss):
    name = "cross_entropy"
    summary = "plain cross entropy (weight 1)"

    def token_weight(self, values, stats, loss_mask, dp_group):
        return torch.ones_like(stats.ce)


LOSS = CrossEntropy()
