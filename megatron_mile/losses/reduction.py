"""From per-token weighted losses to the training objective.

The objective of a global batch (all micro-batches, all data-parallel ranks) is

    loss = sum(mask * w * ce) / sum(mask * w)                       ('global', the default)

so that MiLe and focal losses stay on the cross-entropy scale (for w == 1 it is the per-token mean
cross entropy megatron reports). Each micro-batch contributes a numerator and a denominator; they
are summed over micro-batches and data-parallel ranks before dividing, exactly as megatron-core's
``calculate_per_token_loss`` path sums token counts. Because ``w`` carries no gradient the
denominator is a constant, and the gradient of the objective is that of the numerator divided by it.

The paper authors' code instead normalises per micro-batch ('microbatch'):

    alpha = 1 / mean(w)   over all positions of the micro-batch (padding included),
                          averaged over data-parallel ranks (one all-reduce),
    loss  = mean over valid tokens of alpha * w * ce

:func:`microbatch_alpha` computes that alpha; :func:`reduce_weighted_loss` with ``alpha`` gives the
numerator ``alpha * sum(mask * w * ce)`` and the denominator ``sum(mask)``. The two agree when every
micro-batch has the same mean weight; otherwise 'global' is the exact weighted mean over the batch.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class LossTerms:
    """Sums over one micro-batch's valid tokens; add them up over micro-batches and DP ranks."""

    numerator: torch.Tensor
    """``alpha * sum(mask * w * ce)``; carries the gradient."""
    denominator: torch.Tensor
    """``sum(mask * w)`` ('global') or ``sum(mask)`` ('microbatch', with alpha); float32, no gradient."""
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
    alpha: Optional[torch.Tensor] = None,
) -> LossTerms:
    """Numerator and denominator of the objective for one micro-batch (see module docstring).

    ``weighted_ce``, ``weight``, ``loss_mask`` (and ``ce``, ``entropy`` for the statistics) have
    the same shape. ``alpha`` switches to the per-micro-batch normalisation."""
    if not (weighted_ce.shape == weight.shape == loss_mask.shape):
        raise ValueError(
            f"shapes differ: weighted_ce {tuple(weighted_ce.shape)}, weight {tuple(weight.shape)}, "
            f"loss_mask {tuple(loss_mask.shape)}"
        )
    mask = loss_mask.float()
    numerator = (weighted_ce * mask).sum()
    weight_sum = (weight.detach() * mask).sum()
    num_tokens = mask.sum()
    zero = torch.zeros((), device=mask.device)
    ce_sum = (ce.detach() * mask).sum() if ce is not None else zero
    entropy_sum = (entropy.detach() * mask).sum() if entropy is not None else zero
    if alpha is not None:
        numerator = numerator * alpha.detach()
        denominator = num_tokens
    else:
        denominator = weight_sum
    return LossTerms(numerator, denominator, num_tokens, ce_sum, entropy_sum, weight_sum)


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
