"""EMO (Ren et al., arXiv 2310.04691): earth mover distance to the one-hot target, vocabulary-parallel.

With the transport cost ``C(v, y) = 1 - cos(e_v, e_y)`` over the (detached) output-embedding rows,
all of the predicted mass must move to the target, so the distance is the expected cost

    EMO_t = sum_v q_v C(v, y) = 1 - sum_v q_v c_v,     c_v = ê_v . ê_y   (ê: unit rows),

linear in the predicted distribution ``q``. Per token, with this rank's vocabulary slice of the
logits ``[s, b, V/tp]`` and of the output weight ``[V/tp, h]`` (megatron's layouts):

* collective 1 (SUM, ``[tokens, h]``): the target's unit embedding ``ê_y`` reaches every rank (its
  owner contributes it, the others zeros); every ``c_v`` of the slice needs it;
* one sweep in chunks of tokens, float32: ``m = max z``, ``s = sum e``, ``a = sum (z - m) e``,
  ``u = sum e c`` with ``e = exp(z - m)`` and ``c = ê_y ê_slice^T`` (one ``[chunk, V/tp]`` matrix
  product per chunk, never kept whole);
* collective 2 (MAX of ``m``), then collective 3 (SUM of the stacked ``[s, a, z_y - M, u]``
  rescaled to the global max ``M``);
* ``ce = log S - (z_y - M)``, ``H = log S - A / S``, ``EMO = 1 - U / S``;
* backward, per chunk with ``c`` recomputed: ``dce/dz = q - onehot(y)``,
  ``dEMO/dz = -q (c - U / S)``, written over the logits buffer (consumed, as megatron's CE does).

Training uses EMO together with maximum likelihood (:func:`emo_mle_loss`, the public code's
``0.5 * (MLE + (MLE / EMO).detach() * EMO)``). The plain reference is ``reference.reference_emo``.
"""

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_mile.losses.registry import Loss
from megatron_mile.losses.vocab_parallel import (
    VocabParallelWeightedCrossEntropy,
    WeightedCrossEntropy,
    _group_rank_size,
    _tp_group,
    default_chunk_tokens,
)


class EmoTerms(NamedTuple):
    """Per-token outputs, each ``[s, b]`` float32. ``ce`` and ``emo`` carry gradients."""

    ce: torch.Tensor
    emo: torch.Tensor
    entropy: torch.Tensor


def _unit_rows(weight: torch.Tensor) -> torch.Tensor:
    return F.normalize(weight.detach().float(), dim=-1)


class _VocabParallelEMO(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, output_weight, tp_group, chunk_tokens):
        steps = VocabParallelWeightedCrossEntropy
        rank, world = _group_rank_size(tp_group)
        width = vocab_parallel_logits.size(-1)
        steps.check_inputs(vocab_parallel_logits, target, width * world)
        if output_weight.dim() != 2 or output_weight.size(0) != width:
            raise ValueError(f"output_weight {tuple(output_weight.shape)} must be this rank's [V/tp = {width}, h] "
                             f"slice of the output layer")
        vocab_start = rank * width
        buffer = vocab_parallel_logits.contiguous()
        logits_2d = buffer.view(-1, width)
        target_1d = target.reshape(-1).long()
        unit = _unit_rows(output_weight)

        rows, cols = steps.owned_targets(target_1d, vocab_start, width)
        target_unit = torch.zeros(target_1d.numel(), unit.size(1), dtype=torch.float32, device=unit.device)
        target_unit[rows] = unit[cols]
        if world > 1:
            dist.all_reduce(target_unit, op=dist.ReduceOp.SUM, group=tp_group)

        f32 = dict(dtype=torch.float32, device=logits_2d.device)
        n_rows = logits_2d.size(0)
        local_max, sum_exp, sum_shifted_exp, sum_exp_similarity = (torch.empty(n_rows, **f32) for _ in range(4))
        for start in range(0, n_rows, chunk_tokens):
            sl = slice(start, min(start + chunk_tokens, n_rows))
            shifted = logits_2d[sl].to(torch.float32, copy=True)  # the logits stay for the backward
            m = torch.amax(shifted, dim=-1, out=local_max[sl])
            shifted.sub_(m.unsqueeze(-1))
            e = torch.exp(shifted)
            torch.sum(e, dim=-1, out=sum_exp[sl])
            torch.sum(shifted.mul_(e), dim=-1, out=sum_shifted_exp[sl])
            similarity = target_unit[sl] @ unit.T  # c for this chunk's tokens
            torch.sum(similarity.mul_(e), dim=-1, out=sum_exp_similarity[sl])

        if world > 1:
            global_max = local_max.clone()
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=tp_group)
            steps.rescale_to_global_max(local_max, global_max, sum_exp, sum_shifted_exp)
            sum_exp_similarity.mul_(torch.exp(local_max - global_max))
        else:
            global_max = local_max
        target_shifted = torch.zeros_like(sum_exp)
        target_shifted[rows] = logits_2d[rows, cols].float() - global_max[rows]
        if world > 1:
            stacked = torch.stack((sum_exp, sum_shifted_exp, target_shifted, sum_exp_similarity))
            dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=tp_group)
            sum_exp, sum_shifted_exp, target_shifted, sum_exp_similarity = stacked.unbind(0)

        ce, entropy, _ = steps.token_terms(sum_exp, sum_shifted_exp, target_shifted)
        expected_similarity = sum_exp_similarity / sum_exp
        emo = 1.0 - expected_similarity

        target_col = steps.target_columns(target_1d, rows, cols)
        ctx.save_for_backward(buffer, unit, target_unit, global_max + torch.log(sum_exp), expected_similarity,
                              target_col)
        ctx.chunk_tokens = chunk_tokens
        shape = target.shape
        ctx.mark_non_differentiable(entropy)
        return ce.view(shape), emo.view(shape), entropy.view(shape)

    @staticmethod
    def backward(ctx, grad_ce, grad_emo, unused_grad_entropy):
        buffer, unit, target_unit, log_normalizer, expected_similarity, target_col = ctx.saved_tensors
        width = buffer.size(-1)
        logits_2d = buffer.view(-1, width)
        grad_ce = grad_ce.reshape(-1).float()
        grad_emo = grad_emo.reshape(-1).float()
        n_rows = logits_2d.size(0)
        for start in range(0, n_rows, ctx.chunk_tokens):
            sl = slice(start, min(start + ctx.chunk_tokens, n_rows))
            # float32 logits are turned into their gradient in place; 16-bit ones via a float32 copy
            q = logits_2d[sl].float().sub_(log_normalizer[sl].unsqueeze(-1)).exp_()
            # d/dz [g_ce ce + g_emo EMO] = g_ce (q - onehot) - g_emo q (c - U / S)
            similarity = target_unit[sl] @ unit.T
            coefficient = similarity.sub_(expected_similarity[sl].unsqueeze(-1)).mul_(-grad_emo[sl].unsqueeze(-1))
            grad = q.mul_(coefficient.add_(grad_ce[sl].unsqueeze(-1)))
            local_rows = (target_col[sl] >= 0).nonzero().squeeze(-1)
            grad[local_rows, target_col[sl][local_rows]] -= grad_ce[sl][local_rows]
            logits_2d[sl] = grad.to(logits_2d.dtype)
        return buffer, None, None, None, None


def vocab_parallel_emo(
    vocab_parallel_logits: torch.Tensor,
    target: torch.Tensor,
    output_weight: torch.Tensor,
    tp_group: Optional[dist.ProcessGroup] = None,
    chunk_tokens: Optional[int] = None,
) -> EmoTerms:
    """Cross entropy, EMO and predicted entropy per token, never gathering the vocabulary.

    Args:
        vocab_parallel_logits: ``[s, b, V/tp]`` logits of this rank's vocabulary slice (consumed).
        target: ``[s, b]`` global token ids.
        output_weight: ``[V/tp, h]`` this rank's rows of the output layer (or tied embedding); only
            their directions are used, and no gradient flows into them.
        tp_group: tensor-parallel group; defaults to megatron's.
        chunk_tokens: tokens per chunk (bounds the ``[chunk, V/tp]`` float32 scratch).

    Returns:
        :class:`EmoTerms` ``(ce, emo, entropy)``, float32 ``[s, b]``; ``ce`` and ``emo`` differentiable.
    """
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(vocab_parallel_logits.size(-1), vocab_parallel_logits.device)
    return EmoTerms(*_VocabParallelEMO.apply(vocab_parallel_logits, target, output_weight, _tp_group(tp_group),
                                             chunk_tokens))


def emo_mle_loss(ce: torch.Tensor, emo: torch.Tensor) -> torch.Tensor:
    """Per-token ``0.5 * (ce + r * emo)`` with ``r = sum(ce) / sum(emo)`` over the given tokens,
    detached: the public EMO code's combination with maximum likelihood (computed there on batch
    means), which puts the EMO term on the cross-entropy scale."""
    ratio = (ce.detach().sum() / emo.detach().sum().clamp_min(torch.finfo(torch.float32).tiny))
    return 0.5 * (ce + ratio * emo)


class EMO(Loss):
    name = "emo"
    summary = "EMO, earth mover distance to the target combined with maximum likelihood"
    paper = "arXiv 2310.04691"
    weighted_cross_entropy = False

    def language_model_loss(self, config, logits, labels, *, tp_group, loss_mask, dp_group, output_weight):
        terms = vocab_parallel_emo(logits, labels, output_weight, tp_group=tp_group)
        ce = terms.ce.detach()
        return WeightedCrossEntropy(emo_mle_loss(terms.ce, terms.emo), torch.ones_like(ce), ce, terms.entropy)


LOSS = EMO()
