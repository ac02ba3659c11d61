"""Focal loss (Lin et al., arXiv 1708.02002), the MiLe paper's baseline: weight ``(1 - p_target)^gamma``."""

from megatron_mile.losses.registry import Loss, LossParam


class Focal(Loss):
    name = "focal"
    summary = "focal loss, cross entropy weighted by (1 - p_target)^gamma"
    paper = "arXiv 1708.02002"
    params = (
        LossParam("focal_gamma", 1.0, "Focal exponent gamma: w = (1 - p_y)^gamma.", requirement=">= 0 (a negative "
                  "exponent makes the weight unbounded as p_y -> 1)", accepts=lambda v: v >= 0),
    )

    def token_weight(self, values, stats, loss_mask, dp_group):
        return (1.0 - stats.p_target).clamp_min_(0.0).pow_(values["focal_gamma"])


LOSS = Focal()
