"""Plain, obviously-correct reference implementations (not for training).

They gather the full vocabulary, compute in float64 (or the dtype given) with autograd doing the
gradients, and exist so the fast kernels in :mod:`vocab_parallel` have something simple to be
compared against. Same signatures and return values as the fast functions.
"""

from typing import Optional, Tuple

import torch
import torch.distributed as dist

from megatron_mile.losses.registry import TokenStats, token_weight
from megatron_mile.losses.vocab_parallel import _group_rank_size, _tp_group


def _gather_vocab(vocab_parallel_logits: torch.Tensor, tp_group) -> torch.Tensor:
    """All-gather the vocabulary shards (differentiable: each rank keeps its slice's gradient)."""
    _, world = _group_rank_size(tp_group)
    if world == 1:
        return vocab_parallel_logits
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    return gather_from_tensor_model_parallel_region(vocab_parallel_logits, group=tp_group)


def reference_terms(vocab_parallel_logits, target, tp_group=None, dtype=torch.float64):
    """(ce, entropy, p_target) from full-vocabulary log-softmax in ``dtype``; ce carries gradient."""
    logits = _gather_vocab(vocab_parallel_logits, _tp_group(tp_group)).to(dtype)
    logp = torch.log_softmax(logits, dim=-1)
    ce = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    p = logp.detach().exp()
    entropy = -(p * logp.detach()).sum(-1)
    p_target = (-ce.detach()).exp()
    return ce, entropy, p_target


def reference_weighted_cross_entropy(vocab_parallel_logits, target, config, tp_group=None, dtype=torch.float64,
                                     loss_mask=None, dp_group=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(weight * ce, weight)`` for any registered weighted cross entropy ``config.loss``: its
    weight (``registry.token_weight``) from the float64 full-vocabulary statistics."""
    ce, entropy, p_target = reference_terms(vocab_parallel_logits, target, tp_group, dtype)
    weight = token_weight(config, TokenStats(ce.detach(), entropy, p_target), loss_mask, dp_group).to(dtype)
    return weight * ce, weight


def reference_cross_entropy_with_entropy(vocab_parallel_logits, target, tp_group=None, dtype=torch.float64):
    ce, entropy, _ = reference_terms(vocab_parallel_logits, target, tp_group, dtype)
    return ce, entropy


def reference_mile_cross_entropy(vocab_parallel_logits, target, gamma=1.0, sigma=1.0, tp_group=None,
                                 dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    ce, entropy, _ = reference_terms(vocab_parallel_logits, target, tp_group, dtype)
    weight = (sigma + entropy) ** gamma
    return weight * ce, weight


def reference_focal_cross_entropy(vocab_parallel_logits, target, gamma=1.0, tp_group=None,
                                  dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor]:
    ce, _, p_target = reference_terms(vocab_parallel_logits, target, tp_group, dtype)
    weight = (1.0 - p_target).clamp_min(0.0) ** gamma
    return weight * ce, weight


def reference_emo(vocab_parallel_logits, target, output_weight, tp_group=None, dtype=torch.float64):
    """(ce, emo, entropy) over the full vocabulary: the earth mover distance to the one-hot target
    as the expected transport cost ``sum_v q_v (1 - cos(e_v, e_y))`` from the whole cost matrix."""
    group = _tp_group(tp_group)
    ce, entropy, _ = reference_terms(vocab_parallel_logits, target, group, dtype)
    logits = _gather_vocab(vocab_parallel_logits, group).to(dtype)
    weight = output_weight.detach().to(dtype)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        shards = [torch.empty_like(weight) for _ in range(dist.get_world_size(group))]
        dist.all_gather(shards, weight.contiguous(), group=group)
        weight = torch.cat(shards)
    unit = torch.nn.functional.normalize(weight, dim=-1)
    cost = 1.0 - unit @ unit.T  # [V, V]
    emo = (torch.softmax(logits, dim=-1) * cost[target]).sum(-1)
    return ce, emo, entropy
