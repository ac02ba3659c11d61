"""``--mile-normalization microbatch`` against a float64 re-implementation of the MiLe authors' code.

The reference below transcribes github suu990901/LLaMA-MiLe-Loss (commit e4a2edb), utils/trainer.py:
``MiLeLoss`` and ``FocalLoss`` (``nn.CrossEntropyLoss(reduction='none', ignore_index=-100)``, the
entropy of clamped probabilities, ``alpha = 1 / mean(w)`` all-reduced and divided by the world size,
``loss.mean()``), the cross-entropy baseline ``nn.CrossEntropyLoss(reduction='mean')``, and what the
trainer does with them: ``accelerator.backward`` per micro-batch (gradient accumulation divides by
the steps, data-parallel ranks average). It runs on one process over every rank's data, in float64,
with autograd for the gradient; it shares no code with the package.

The project's side is the public per-token losses and :func:`microbatch_loss_terms`, reduced the
way the training loop reduces them (numerators and denominators summed over micro-batches and
data-parallel ranks, gradients divided by the total denominator).
"""

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_mile.losses import (
    vocab_parallel_cross_entropy_with_entropy,
    vocab_parallel_focal_cross_entropy,
    vocab_parallel_mile_cross_entropy,
)
from megatron_mile.losses.reduction import microbatch_loss_terms

WORLD_SIZE = 2
MICRO_BATCHES = 2
S, B, V = 6, 3, 96  # positions per micro-batch: S x B; V divisible by TP 2
GAMMA, SIGMA = 2.0, 0.5


# --------------------------------------------------------------------------- the authors' code, float64
def authors_entropy(logits):
    probs = F.softmax(logits.detach(), dim=-1)
    probs = torch.clamp(probs, 1e-8, 1.0)
    return torch.sum(-1 * (probs * torch.log(probs)), dim=-1)


def authors_step(batches, loss, gamma, sigma):
    """(objective, gradients) of one step. ``batches[d][i] = (logits [S, B, V], target, mask)`` for
    data-parallel rank d and micro-batch i. Returns the mean of the per-micro-batch losses (as
    logged) and the gradient with respect to each micro-batch's float64 logits."""
    dp, m = len(batches), len(batches[0])
    leaves = [[lg.double().reshape(-1, V).clone().requires_grad_(True) for lg, _, _ in rank] for rank in batches]
    labels = [[torch.where(mk.reshape(-1) > 0, tg.reshape(-1), torch.full_like(tg.reshape(-1), -100))
               for _, tg, mk in rank] for rank in batches]
    ce_fn = torch.nn.CrossEntropyLoss(reduction="none", ignore_index=-100)
    total = 0.0
    for i in range(m):
        # All ranks run micro-batch i together; alpha is all-reduced over them.
        ces = [ce_fn(leaves[d][i], labels[d][i]) for d in range(dp)]
        if loss == "mile":
            weights = [(sigma + authors_entropy(leaves[d][i])) ** gamma for d in range(dp)]
        elif loss == "focal":
            weights = [(1 - torch.exp(-ces[d]).detach()) ** gamma for d in range(dp)]
        if loss == "cross_entropy":
            losses = [torch.nn.CrossEntropyLoss(reduction="mean", ignore_index=-100)(leaves[d][i], labels[d][i])
                      for d in range(dp)]
        else:
            alpha = sum(1.0 / w.mean() for w in weights) / dp
            losses = [(alpha * weights[d] * ces[d]).mean() for d in range(dp)]
        for d in range(dp):
            # accelerate divides by the accumulation steps; DDP averages the ranks' gradients.
            total = total + losses[d] / (m * dp)
    total.backward()
    return float(total.detach()), [[leaf.grad.reshape(S, B, V) for leaf in rank] for rank in leaves]


# --------------------------------------------------------------------------- data
def _batch(seed, masked):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(S, B, V, generator=gen) * 2.0  # every probability > 1e-8: the clamp is idle
    target = torch.randint(0, V, (S, B), generator=gen)
    mask = (torch.rand(S, B, generator=gen) > 0.35).float() if masked else torch.ones(S, B)
    return logits, target, mask


def _all_batches(seed, dp, masked):
    return [[_batch(seed + 100 * d + i, masked) for i in range(MICRO_BATCHES)] for d in range(dp)]


# --------------------------------------------------------------------------- the project, in the pool
def body_project_step(seed, loss, masked):
    from megatron.core import parallel_state as ps

    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    tp_rank, tp = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    width = V // tp
    leaves, numerators = [], []
    denominator = torch.zeros(())
    for logits, target, mask in _all_batches(seed, dp, masked)[dp_rank]:
        shard = logits[..., tp_rank * width:(tp_rank + 1) * width].clone().requires_grad_(True)
        leaves.append(shard)
        if loss == "mile":
            weighted_ce, weight = vocab_parallel_mile_cross_entropy(shard.clone(), target, gamma=GAMMA, sigma=SIGMA)
        elif loss == "focal":
            weighted_ce, weight = vocab_parallel_focal_cross_entropy(shard.clone(), target, gamma=GAMMA)
        else:
            weighted_ce, _ = vocab_parallel_cross_entropy_with_entropy(shard.clone(), target)
            weight = torch.ones_like(weighted_ce)
        terms = microbatch_loss_terms(weighted_ce, weight.detach(), mask, loss)
        numerators.append(terms.numerator)
        denominator += terms.denominator
    # As the training loop: sum over micro-batches and DP ranks, gradients divided by the total.
    dp_group = ps.get_data_parallel_group()
    numerator = torch.stack(numerators).sum()
    totals = torch.stack([numerator.detach(), denominator])
    dist.all_reduce(totals, group=dp_group)
    (numerator / totals[1]).backward()
    return float(totals[0] / totals[1]), [leaf.grad for leaf in leaves], (dp_rank, tp_rank, tp)


@pytest.mark.parametrize("loss", ["mile", "focal", "cross_entropy"])
@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("dp", [1, 2])
def test_microbatch_is_the_authors_objective(dist_pool, loss, masked, dp):
    """Value and gradient of one step equal the authors' code's, DP 1 (with TP 2) and DP 2."""
    seed = 11
    results = dist_pool.run(body_project_step, seed, loss, masked, tp=WORLD_SIZE // dp)
    value, grads = authors_step(_all_batches(seed, dp, masked), loss, GAMMA, SIGMA)
    for got_value, got_grads, (dp_rank, tp_rank, tp) in results:
        assert math.isclose(got_value, value, rel_tol=1e-5), (got_value, value)
        width = V // tp
        for got, want in zip(got_grads, grads[dp_rank]):
            torch.testing.assert_close(got.double(), want[..., tp_rank * width:(tp_rank + 1) * width],
                                       rtol=1e-5, atol=1e-9)


def test_masked_focal_positions_weigh_zero_in_alpha():
    """The one place where the authors' focal alpha differs from the real weights: a masked position
    has ce = 0 there (ignore_index), so weight 0 in alpha's mean (single process, DP 1)."""
    logits, target, mask = _batch(5, masked=True)
    assert 0 < mask.mean() < 1
    weighted_ce, weight = vocab_parallel_focal_cross_entropy(logits.clone(), target, gamma=GAMMA)
    terms = microbatch_loss_terms(weighted_ce, weight, mask, "focal")
    expected_alpha = 1.0 / (weight * mask).mean()
    torch.testing.assert_close(terms.numerator, expected_alpha * (weighted_ce * mask).sum() / mask.numel())


def test_authors_entropy_clamp_bound():
    """The authors clamp probabilities at 1e-8 inside the entropy; the project computes the exact
    entropy. Where probabilities fall below 1e-8 the two differ by at most V * 1e-8 * ln(1e8), the
    bound docs/training.md states (the clamped one is never smaller)."""
    vocab = 4096
    logits = torch.randn(64, vocab, dtype=torch.float64) * 12.0  # most probabilities far below 1e-8
    _, exact = vocab_parallel_cross_entropy_with_entropy(logits.float().unsqueeze(1),
                                                         torch.zeros(64, 1, dtype=torch.long))
    clamped = authors_entropy(logits)
    gap = clamped - exact.squeeze(1).double()
    bound = vocab * 1e-8 * math.log(1e8)
    assert (gap > -1e-5).all() and (gap <= bound + 1e-5).all(), (gap.min(), gap.max(), bound)
    assert gap.max() > 0.5 * bound  # the bound is nearly reached: the clamp is not negligible here


def test_microbatch_is_refused_for_losses_the_authors_code_does_not_define():
    from megatron_mile.training.arguments import ConfigError, parse_args

    flags = "--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --micro-batch-size 2 " \
            "--train-iters 1 --lr 1e-3 --mock-data --mile-normalization microbatch".split()
    for loss in ("mile", "focal", "cross_entropy", "emo"):
        assert parse_args(flags + ["--loss", loss]).mile_normalization == "microbatch"
    with pytest.raises(ConfigError, match="microbatch .* is defined for --loss mile, focal, cross_entropy, emo"):
        parse_args(flags + ["--loss", "dft"])
