"""MiLe (Su et al., arXiv 2310.19531): weight ``(sigma + H)^gamma``, ``H`` the predicted entropy.

gamma = 0 is plain cross entropy. A negative gamma down-weights uncertain tokens instead; it is
accepted only with sigma > 0, which keeps the weight finite at zero entropy (at most sigma^gamma).
"""

from megatron_mile.losses.registry import Loss, LossParam


class MiLe(Loss):
    name = "mile"
    summary = "MiLe, cross entropy weighted by (sigma + entropy)^gamma"
    paper = "arXiv 2310.19531"
    params = (
        LossParam("mile_gamma", 1.0, "MiLe exponent gamma: w = (sigma + H)^gamma; < 0 only with sigma > 0."),
        LossParam("mile_sigma", 1.0, "MiLe offset sigma.", requirement=">= 0", accepts=lambda v: v >= 0),
    )

    def check(self, values):
        if values["mile_gamma"] < 0 and values["mile_sigma"] <= 0:
            raise ValueError(f"--mile-gamma {values['mile_gamma']} < 0 needs --mile-sigma > 0 (the weight "
                             f"(sigma + H)^gamma is infinite at zero entropy otherwise)")

    def token_weight(self, values, stats, loss_mask, dp_group):
        return (stats.entropy + values["mile_sigma"]).pow_(values["mile_gamma"])


LOSS = MiLe()
