"""The loss registry and the losses added through it (DFT, ESLM), against float64 references written here.

DFT (arXiv 2508.05629): per token ``sg(p_y) * ce``. ESLM (arXiv 2505.19893): weight 1 for the counted
tokens whose score (entropy or cross entropy) is at or above the lower empirical alpha-quantile of
the counted scores of the whole data-parallel batch (numpy's ``inverted_cdf`` quantile), 0 otherwise.
Multi-process cases run in one pool of 4 gloo ranks: TP=1 (DP=4), TP=2 (DP=2), TP=4 (DP=1).
"""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from megatron_mile.losses import (
    LOSS_NAMES,
    LossConfig,
    TokenStats,
    get_loss,
    loss_config_from_args,
    reference,
    token_weight,
    vocab_parallel_weighted_cross_entropy,
    weighted_mean,
)
from tests.test_losses import _inputs, _layout, _shard

WORLD_SIZE = 4


# --------------------------------------------------------------------------- float64 references
def float64_terms(full_logits, target):
    """(z with grad, ce, entropy, p_target) over the full vocabulary in float64."""
    z = full_logits.detach().double().requires_grad_(True)
    logp = torch.log_softmax(z, dim=-1)
    ce = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    p = logp.detach().exp()
    return z, ce, -(p * logp.detach()).sum(-1), p.gather(-1, target.unsqueeze(-1)).squeeze(-1)


def eslm_threshold(scores_per_rank, masks_per_rank, alpha):
    """The alpha-quantile of the counted scores of every data-parallel rank (lower, inverted CDF)."""
    counted = np.concatenate([s[m > 0].numpy() for s, m in zip(scores_per_rank, masks_per_rank)])
    return float(np.quantile(counted, alpha, method="inverted_cdf"))


def float64_objective(z, ce, weight, mask, upstream):
    """sum(mask w ce) / sum(mask w) + sum(upstream w ce) and its gradient."""
    wce = weight * ce
    objective = (wce * mask).sum() / (weight * mask).sum() + (upstream.double() * wce).sum()
    (grad,) = torch.autograd.grad(objective, z)
    return wce.detach(), objective.detach(), grad


# --------------------------------------------------------------------------- rank bodies
def body_matches_reference(loss, params, seed):
    """The fast path against the float64 reference for ``loss`` on this rank's data-parallel share."""
    from megatron.core import parallel_state as ps

    rank, world = _layout()
    dp_rank, dp_world = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    logits, target, mask, upstream = _inputs(seed + dp_rank, 7, 3, 96)
    shard = _shard(logits, rank, world).float().clone().requires_grad_(True)
    logits = logits.float().double()  # the values the kernel sees
    config = LossConfig(loss=loss, params=params, kernel="torch")
    out = vocab_parallel_weighted_cross_entropy(shard * 1, target, config, loss_mask=mask)
    objective = weighted_mean((out.weighted_ce * mask).sum(), (out.weight * mask).sum())
    (objective + (upstream * out.weighted_ce).sum()).backward()

    z, ce, entropy, p_target = float64_terms(logits, target)
    if loss == "dft":
        weight = p_target
    else:  # eslm: the threshold over every data-parallel rank's counted tokens
        scores, masks = [], []
        for r in range(dp_world):
            lg, tg, mk, _ = _inputs(seed + r, 7, 3, 96)
            _, ce_r, h_r, _ = float64_terms(lg.float().double(), tg)
            scores.append(h_r if params["eslm_score"] == "entropy" else ce_r.detach())
            masks.append(mk)
        threshold = eslm_threshold(scores, masks, params["eslm_alpha"])
        score = entropy if params["eslm_score"] == "entropy" else ce.detach()
        weight = ((score >= threshold) & (mask > 0)).double()
        kept = int(weight.sum())
        counted = int(sum(m.sum() for m in masks))
        assert kept >= 1 and (params["eslm_alpha"] > 0 or kept == int(mask.sum()))
        assert counted - sum(int(((s >= threshold) & (m > 0)).sum()) for s, m in zip(scores, masks)) \
            < params["eslm_alpha"] * counted + 1  # at most alpha of the tokens dropped
    ref_wce, ref_obj, ref_grad = float64_objective(z, ce, weight, mask.double(), upstream)
    torch.testing.assert_close(out.weight.double(), weight, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(out.weighted_ce.double(), ref_wce, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close((objective + (upstream * out.weighted_ce).sum()).double(), ref_obj,
                               rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(shard.grad.double(), _shard(ref_grad, rank, world), rtol=1e-5, atol=1e-5)
    return True


def body_eslm_collectives(seed):
    """ESLM adds one all_gather of [tokens] over the data-parallel group to the sweep's two all-reduces."""
    from megatron.core import parallel_state as ps

    rank, world = _layout()
    dp_world = ps.get_data_parallel_world_size()
    gathers, reduces = [], []
    real_gather, real_reduce = dist.all_gather, dist.all_reduce
    dist.all_gather = lambda out, t, group=None, **k: gathers.append((tuple(t.shape), len(out))) or \
        real_gather(out, t, group=group, **k)
    dist.all_reduce = lambda t, op=dist.ReduceOp.SUM, group=None, **k: reduces.append(tuple(t.shape)) or \
        real_reduce(t, op=op, group=group, **k)
    try:
        logits, target, mask, _ = _inputs(seed, 5, 2, 64)
        shard = _shard(logits, rank, world).float().clone().requires_grad_(True)
        config = LossConfig(loss="eslm", kernel="torch")
        vocab_parallel_weighted_cross_entropy(shard * 1, target, config, loss_mask=mask).weighted_ce.sum().backward()
    finally:
        dist.all_gather, dist.all_reduce = real_gather, real_reduce
    assert gathers == ([((10,), dp_world)] if dp_world > 1 else []), gathers
    assert len(reduces) == (2 if world > 1 else 0), reduces
    return True


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("loss,params", [
    ("dft", {}),
    ("eslm", dict(eslm_alpha=0.6, eslm_score="entropy")),
    ("eslm", dict(eslm_alpha=0.3, eslm_score="loss")),
    ("eslm", dict(eslm_alpha=0.0, eslm_score="entropy")),
])
def test_matches_float64_reference(dist_pool, tp, loss, params):
    assert all(dist_pool.run(body_matches_reference, loss, params, 5 + tp, tp=tp))


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_eslm_one_more_collective(dist_pool, tp):
    assert all(dist_pool.run(body_eslm_collectives, 3, tp=tp))


def test_eslm_quantile_edges():
    """Ties at the threshold are all kept; masked positions never count; alpha * n exact."""
    config = LossConfig(loss="eslm", params=dict(eslm_alpha=0.7))
    entropy = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    stats = TokenStats(entropy.clone(), entropy, entropy.clone())
    # alpha * n = 7 exactly (0.7 * 10 is 7.000000000000001 in floating point): the 7th smallest.
    assert token_weight(config, stats).tolist() == [0] * 6 + [1] * 4
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 0])
    # Counted: 0.1 .. 0.9 (n = 9), ceil(6.3) = 7th smallest = 0.7; the masked 1.0 gets weight 0.
    assert token_weight(config, stats, mask).tolist() == [0] * 6 + [1] * 3 + [0]
    tied = TokenStats(*(torch.tensor([1.0, 2.0, 2.0, 2.0]),) * 3)
    assert token_weight(config, tied).tolist() == [0, 1, 1, 1]
    nothing = token_weight(config, stats, torch.zeros(10))
    assert nothing.tolist() == [0] * 10


def test_registry_declarations():
    """Every name is a module whose LOSS carries that name; flags are unique; a weighted loss's
    weight comes through the public seam with no gradient, emo refuses it."""
    flags = []
    for name in LOSS_NAMES:
        loss = get_loss(name)
        assert loss.name == name and loss.summary
        flags += [p.flag for p in loss.params]
    assert len(flags) == len(set(flags))
    ce = torch.tensor([0.5, 2.0], requires_grad=True)
    stats = TokenStats(ce.detach(), torch.tensor([1.0, 3.0]), torch.exp(-ce.detach()))
    torch.testing.assert_close(token_weight(LossConfig(loss="dft"), stats), torch.exp(-torch.tensor([0.5, 2.0])))
    torch.testing.assert_close(token_weight(LossConfig(loss="mile", params=dict(mile_gamma=2.0, mile_sigma=0.5)),
                                            stats), torch.tensor([1.5**2, 3.5**2]))
    assert not token_weight(LossConfig(loss="dft"), stats).requires_grad
    with pytest.raises(ValueError, match="not a weighted cross entropy"):
        token_weight(LossConfig(loss="emo"), stats)


@pytest.mark.parametrize("bad,message", [
    (dict(loss="mile", params=dict(mile_gamma=float("nan"))), "--mile-gamma must be a finite number"),
    (dict(loss="mile", params=dict(mile_sigma=float("inf"))), "--mile-sigma must be a finite number"),
    (dict(loss="mile", params=dict(mile_sigma=-1.0)), "--mile-sigma must be >= 0"),
    (dict(loss="mile", params=dict(mile_gamma=-1.0, mile_sigma=0.0)), "needs --mile-sigma > 0"),
    (dict(loss="focal", params=dict(focal_gamma=-2.0)), "--focal-gamma must be >= 0"),
    (dict(loss="eslm", params=dict(eslm_alpha=1.0)), "--eslm-alpha must be in [0, 1)"),
    (dict(loss="eslm", params=dict(eslm_score="ppl")), "--eslm-score must be one of entropy, loss"),
    (dict(loss="dft", params=dict(mile_gamma=1.0)), "has no parameter mile_gamma"),
    (dict(loss="mle"), "loss must be one of"),
])
def test_loss_config_rejects(bad, message):
    with pytest.raises(ValueError) as err:
        LossConfig(**bad)
    assert message in str(err.value)


def test_negative_mile_gamma_needs_positive_sigma():
    config = LossConfig(loss="mile", params=dict(mile_gamma=-1.0, mile_sigma=0.5))
    stats = TokenStats(torch.ones(2), torch.tensor([0.0, 1.5]), torch.ones(2))
    torch.testing.assert_close(token_weight(config, stats), torch.tensor([2.0, 0.5]))


@pytest.mark.parametrize("flags,message", [
    ("--mile-gamma nan", "argument --mile-gamma: must be a finite number, got 'nan'"),
    ("--mile-sigma inf", "argument --mile-sigma: must be a finite number, got 'inf'"),
    ("--mile-sigma -1", "argument --mile-sigma: must be >= 0"),
    ("--focal-gamma -2", "argument --focal-gamma: must be >= 0"),
    ("--eslm-alpha -0.1", "argument --eslm-alpha: must be in [0, 1)"),
    ("--loss mile --mile-gamma -1 --mile-sigma 0", "--mile-gamma -1.0 < 0 needs --mile-sigma > 0"),
])
def test_cli_rejects_bad_loss_parameters_with_exit_2(flags, message):
    import subprocess
    import sys

    argv = ("--mock-data --num-layers 2 --hidden-size 16 --num-attention-heads 2 --seq-length 8 "
            "--max-position-embeddings 8 --micro-batch-size 1 --train-iters 1 --lr 1e-3 " + flags).split()
    proc = subprocess.run([sys.executable, "-m", "megatron_mile.pretrain_gpt", *argv], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]


def test_flags_and_config_come_from_the_registry():
    from megatron_mile.training.arguments import build_parser

    required = "--num-layers 2 --hidden-size 16 --num-attention-heads 2 --seq-length 8 --micro-batch-size 1 --lr 1 "
    args = build_parser().parse_args((required + "--loss eslm --eslm-alpha 0.25 --eslm-score loss").split())
    config = loss_config_from_args(args)
    assert (config.loss, config.params) == ("eslm", dict(eslm_alpha=0.25, eslm_score="loss"))
    args = build_parser().parse_args((required + "--loss mile").split())
    config = loss_config_from_args(args)
    assert config.params == dict(mile_gamma=1.0, mile_sigma=1.0)


def test_help_imports_neither_megatron_nor_triton():
    import subprocess
    import sys

    code = ("import sys; from megatron_mile.training.arguments import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('megatron.core', 'triton') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_duck_typed_tp_group_and_plain_reference():
    """A tp_group that is only ``rank()`` and ``size()`` (megatron-core main's contract); the package's
    float64 reference for any weighted loss agrees with the fast path."""
    class OneRank:
        def rank(self):
            return 0

        def size(self):
            return 1

    logits, target, mask, _ = _inputs(3, 6, 2, 80)
    for loss in ("dft", "eslm", "mile"):
        config = LossConfig(loss=loss, kernel="torch")
        got = vocab_parallel_weighted_cross_entropy(logits.float().clone(), target, config, tp_group=OneRank(),
                                                    loss_mask=mask)
        want_wce, want_w = reference.reference_weighted_cross_entropy(logits.clone(), target, config,
                                                                      tp_group=OneRank(), loss_mask=mask)
        torch.testing.assert_close(got.weight.double(), want_w, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.weighted_ce.double(), want_wce.detach(), rtol=1e-5, atol=1e-5)
