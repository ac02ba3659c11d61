"""ESLM, risk-averse selective language modelling (Bal et al., arXiv 2505.19893): train on the tokens
whose score (predicted entropy, or the loss itself) is at or above the batch's value-at-risk.

Definition implemented, per micro-batch, with ``S_j`` the detached score of each counted token
(``loss_mask`` = 1) of the micro-batch on every data-parallel rank (n tokens in all) and ``alpha``
the confidence level:

    VaR_alpha = min { s : #{j : S_j <= s} >= alpha * n }      (the empirical alpha-quantile, lower)
    w_j       = 1 if S_j >= VaR_alpha else 0

so at least the top ``1 - alpha`` of the tokens are kept (ties at the threshold are all kept) and
``alpha = 0`` keeps every token (plain cross entropy). With ``--mile-normalization global`` the
objective is the mean cross entropy of the kept tokens, the paper's selected-token loss.

The scores of the data-parallel ranks are gathered (one ``all_gather`` of ``[tokens]`` float32 over
the data-parallel group, after the sweep's two tensor-parallel collectives); every rank then finds
the same threshold. Departure: the paper's batch is the whole mini-batch; here the quantile is taken
per micro-batch (over all data-parallel ranks), so with gradient accumulation each micro-batch keeps
its own top tokens.
"""

from fractions import Fraction

import torch
import torch.distributed as dist

from megatron_mile.losses.registry import Loss, LossParam


def _data_parallel_group(dp_group):
    """The given group, megatron's data-parallel group (with context parallelism) or None."""
    if dp_group is not None or not (dist.is_available() and dist.is_initialized()):
        return dp_group
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_data_parallel_group(with_context_parallel=True)
    return None


def value_at_risk(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """The lower empirical ``alpha``-quantile of the non-NaN ``scores`` (NaN when there are none)."""
    valid = scores[~torch.isnan(scores)]
    if valid.numel() == 0:
        return torch.full((), float("nan"), device=scores.device)
    k = max(1, int(-(-Fraction(alpha) * valid.numel() // 1)))  # ceil(alpha * n), exact for the float alpha
    return torch.kthvalue(valid, k).values


class ESLM(Loss):
    name = "eslm"
    summary = ("ESLM, cross entropy of the tokens whose entropy (or loss) is at or above the batch's "
               "alpha-quantile (weight 1), the others dropped (weight 0)")
    paper = "arXiv 2505.19893"
    params = (
        LossParam("eslm_alpha", 0.5, "ESLM confidence level alpha: keep the tokens whose score is at or above "
                  "the alpha-quantile of the micro-batch's scores over the data-parallel ranks.",
                  requirement="in [0, 1)", accepts=lambda v: 0 <= v < 1),
        LossParam("eslm_score", "entropy", "ESLM risk score: the predicted entropy or the loss (cross entropy).",
                  choices=("entropy", "loss")),
    )

    def token_weight(self, values, stats, loss_mask, dp_group):
        score = stats.entropy if values["eslm_score"] == "entropy" else stats.ce
        counted = torch.ones_like(score, dtype=torch.bool) if loss_mask is None else loss_mask > 0
        scores = torch.where(counted, score, torch.full_like(score, float("nan"))).reshape(-1)
        group = _data_parallel_group(dp_group)
        if group is not None and dist.get_world_size(group) > 1:
            gathered = [torch.empty_like(scores) for _ in range(dist.get_world_size(group))]
            dist.all_gather(gathered, scores.contiguous(), group=group)
            scores = torch.cat(gathered)
        threshold = value_at_risk(scores, values["eslm_alpha"])
        return ((score >= threshold) & counted).float()


LOSS = ESLM()
