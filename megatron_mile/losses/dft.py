"""DFT, dynamic fine-tuning (Wu et al., arXiv 2508.05629): ``ce * detached p_target``.

The paper's loss is ``-sg(p_y) log p_y`` per token: each token's cross entropy scaled by the
probability the model gives its target, which carries no gradient. That is a weight, so the
shared sweep computes everything; this module only says which weight.
"""

from megatron_mile.losses.registry import Loss


class DFT(Loss):
    name = "dft"
    summary = "DFT, cross entropy weighted by the detached target probability p_target"
    paper = "arXiv 2508.05629"

    def token_weight(self, values, stats, loss_mask, dp_group):
        return stats.p_target.clone()


LOSS = DFT()
