"""From per-token weighted losses to the training objective.

The objective of a global batch (all micro-batches, all data-parallel ranks) is

    loss = sum(mask * w * ce) / sum(mask * w)                       ('global', the default)

so that MiLe and focal losses stay on the cross-entropy scale (for w == 1 it is the per-token mean
cross entropy megatron reports). Each micro-batch contributes a numerator and a denominator; they
are summed over micro-batches and data-parallel ranks before dividing, exactly as megatron-core's
``calculate_per_token_loss`` path sums token counts. Because ``w`` carries no gradient the
denominator is a constant, and the gradient of the objective is that of the numerator divided by it.

'microbatch' is the objective of the MiLe authors' code (github suu990901/LLaMA-MiLe-Loss,
``utils/trainer.py``: ``MiLeLoss``, ``FocalLoss``, ``nn.CrossEntropyLoss``), per micro-batch:

    MiLe, focal:  alpha = 1 / mean(w)  over ALL positions of the micro-batch (masked ones included),
                                       averaged over data-parallel ranks (one all-reduce);
                  loss  = mean over ALL positions of alpha * w * ce * mask
                          (their ``loss.mean()``: a masked position has ce = 0 and counts in the mean)
    focal:        a masked position has ce = 0 there, so p_target = 1 and w = 0 in alpha's mean
    weight-1 losses (cross entropy, EMO): mean of ce over the valid tokens
                  (their ``nn.CrossEntropyLoss(reduction='mean', ignore_index=-100)``)

and the objective of a step is the mean of these over micro-batches and data-parallel ranks
(gradient accumulation divides by the steps, DDP averages). :func:`microbatch_loss_terms` expresses
each micro-batch's loss as a numerator (the loss itself) over a denominator of 1, so the same
sum-then-divide over micro-batches and ranks gives that mean. One difference remains, documented in
docs/training.md: the authors clamp probabilities at 1e-8 inside the entropy, which makes their
entropy larger than the exact one by at most ``V * 1e-8 * ln(1e8)`` (5.9e-3 nats at V = 32000).
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

MICROBATCH_WEIGHTED_LOSSES = ("mile", "focal")
"""Losses whose 'microbatch' objective is the authors' ``alpha * w * ce`` mean over all positions."""
MICROBATCH_UNWEIGHTED_LOSSES = ("cross_entropy", "emo")
"""Weight-1 losses: 'microbatch' is the per-micro-batch mean over valid tokens (``nn.CrossEntropyLoss``)."""


@dataclass
class LossTerms:
    """One micro-batch's share of the objective; add them up over micro-batches and DP ranks, the
    objective is ``sum(numerator) / sum(denominator)``."""

    numerator: torch.Tensor
    """'global': ``sum(mask * w * ce)``; 'microbatch': the micro-batch's loss. Carries the gradient."""
    denominator: torch.Tensor
    """'global': ``sum(mask * w)``; 'microbatch': 1. float32, no gradient."""
    num_tokens: torch.Tensor
    """``sum(mask)``: valid tokens."""
    ce_sum: torch.Tensor
    """``sum(mask * ce)``: plain cross entropy, for logging (``lm loss``)."""
    entropy_sum: torch.Tensor
    """``sum(mask * H)``: predicted entropy, for logging."""
    weight_sum: torch.Tensor
    """``sum(mask * w)``: for logging the mean weight."""


def reduce_weighted_loss(
    weighted_ce: torch.Tensor,
    weight: torch.Tensor,
    loss_mask: torch.Tensor,
    ce: Optional[torch.Tensor] = None,
    entropy: Optional[torch.Tensor] = None,
) -> LossTerms:
    """Numerator ``sum(mask * w * ce)`` and denominator ``sum(mask * w)`` of the 'global' objective
    for one micro-batch. ``weighted_ce``, ``weight``, ``loss_mask`` (and ``ce``, ``entropy`` for the
    statistics) have the same shape."""
    if not (weighted_ce.shape == weight.shape == loss_mask.shape):
        raise ValueError(
            f"shapes differ: weighted_ce {tuple(weighted_ce.shape)}, weight {tuple(weight.shape)}, "
            f"loss_mask {tuple(loss_mask.shape)}"
        )
    mask = loss_mask.float()
    weight_sum = (weight.detach() * mask).sum()
    zero = torch.zeros((), device=mask.device)
    return LossTerms(
        numerator=(weighted_ce * mask).sum(),
        denominator=weight_sum,
        num_tokens=mask.sum(),
        ce_sum=(ce.detach() * mask).sum() if ce is not None else zero,
        entropy_sum=(entropy.detach() * mask).sum() if entropy is not None else zero,
        weight_sum=weight_sum,
    )


def microbatch_loss_terms(
    weighted_ce: torch.Tensor,
    weight: torch.Tensor,
    loss_mask: torch.Tensor,
    loss: str,
    ce: Optional[torch.Tensor] = None,
    entropy: Optional[torch.Tensor] = None,
    dp_group: Optional[dist.ProcessGroup] = None,
) -> LossTerms:
    """The MiLe authors' loss of one micro-batch as the numerator over a denominator of 1 (see the
    module docstring); ``loss`` names the loss (``MICROBATCH_WEIGHTED_LOSSES`` or
    ``MICROBATCH_UNWEIGHTED_LOSSES``). Collective over ``dp_group`` (default megatron's
    data-parallel group) for the weighted losses."""
    terms = reduce_weighted_loss(weighted_ce, weight, loss_mask, ce, entropy)
    if loss in MICROBATCH_WEIGHTED_LOSSES:
        mask = loss_mask.float()
        # The authors' focal weight comes from ce, which is 0 at ignored positions: weight 0 there.
        alpha_weight = weight * mask if loss == "focal" else weight
        alpha = microbatch_alpha(alpha_weight, dp_group)
        terms.numerator = terms.numerator * alpha / mask.numel()
    elif loss in MICROBATCH_UNWEIGHTED_LOSSES:
        terms.numerator = weighted_mean(terms.numerator, terms.num_tokens)
    else:
        raise ValueError(f"--mile-normalization microbatch (the MiLe authors' code) is defined for "
                         f"{MICROBATCH_WEIGHTED_LOSSES + MICROBATCH_UNWEIGHTED_LOSSES}, not for loss {loss!r}")
    terms.denominator = torch.ones((), device=terms.num_tokens.device)
    return terms


def weighted_mean(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` that is 0 (not NaN) for a fully masked batch (both sums 0)."""
    return numerator / denominator.clamp_min(torch.finfo(torch.float32).tiny)


def microbatch_alpha(weight: torch.Tensor, dp_group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """The authors' ``alpha = 1 / mean(w)`` over all positions, averaged over data-parallel ranks."""
    alpha = 1.0 / weight.detach().float().mean()
    if dist.is_available() and dist.is_initialized():
        if dp_group is None:
            from megatron.core import parallel_state

            if parallel_state.model_parallel_is_initialized():
                dp_group = parallel_state.get_data_parallel_group()
        if dp_group is not None and dist.get_world_size(dp_group) > 1:
            alpha = alpha.clone()
            dist.all_reduce(alpha, group=dp_group)
            alpha /= dist.get_world_size(dp_group)
    return alpha
