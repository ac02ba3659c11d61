"""Vocabulary-parallel CE / MiLe / focal against a float64 full-vocabulary reference written here.

Every multi-process case runs in one pool of 4 gloo ranks (TP=1, 2, 4; the remaining ranks are
data-parallel replicas doing the same computation). The reference below is deliberately plain:
float64, the whole vocabulary, autograd for the gradient; it shares no code with the package.

Both kernels are checked: ``torch`` (the CPU path) and ``triton`` (the GPU path, here through
triton's interpreter, which conftest.py switches on in the pool's workers). The triton cases use
32-element vocabulary blocks so that rows span several blocks, as they do on a GPU.
"""

import contextlib
import math

import pytest
import torch
import torch.distributed as dist

from megatron_mile.losses import (
    LossConfig,
    microbatch_alpha,
    reduce_weighted_loss,
    vocab_parallel_cross_entropy_with_entropy,
    vocab_parallel_emo,
    vocab_parallel_focal_cross_entropy,
    vocab_parallel_mile_cross_entropy,
    vocab_parallel_weighted_cross_entropy,
    weighted_mean,
)
from megatron_mile.losses import reference as plain_reference
from megatron_mile.losses import triton_kernels

WORLD_SIZE = 4


# --------------------------------------------------------------------------- the independent reference
def float64_objective(full_logits, target, mask, upstream, loss, gamma, sigma):
    """Per-token (weighted_ce, weight, ce, entropy) and the gradient of
    sum(upstream * w * ce) + sum(mask * w * ce) / sum(mask * w), all in float64 over the full vocab."""
    z = full_logits.detach().double().requires_grad_(True)
    logp = torch.log_softmax(z, dim=-1)
    ce = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    p = logp.exp().detach()
    entropy = -(p * logp.detach()).sum(-1)
    if loss == "mile":
        weight = (sigma + entropy) ** gamma
    elif loss == "focal":
        weight = (1 - p.gather(-1, target.unsqueeze(-1)).squeeze(-1)) ** gamma
    else:
        weight = torch.ones_like(ce)
    wce = weight * ce
    maskd = mask.double()
    objective = (wce * maskd).sum() / (weight * maskd).sum() + (upstream.double() * wce).sum()
    (grad,) = torch.autograd.grad(objective, z)
    return wce.detach(), weight, ce.detach(), entropy, objective.detach(), grad


def _layout():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()


def _shard(full, rank, world):
    width = full.size(-1) // world
    return full[..., rank * width:(rank + 1) * width]


def _inputs(seed, s, b, vocab, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(s, b, vocab, generator=gen, dtype=torch.float64) * scale
    target = torch.randint(0, vocab, (s, b), generator=gen)
    mask = (torch.rand(s, b, generator=gen) > 0.3).float()
    mask[0, 0] = 1.0
    upstream = torch.randn(s, b, generator=gen)
    return logits, target, mask, upstream


KERNELS = ["torch", "triton"]
GPU_MAX_BLOCK = triton_kernels.MAX_BLOCK


@contextlib.contextmanager
def _triton_blocks(size):
    """Vocabulary blocks of ``size`` elements for the duration (the pool's workers outlive a test,
    so the module global is put back)."""
    saved = triton_kernels.MAX_BLOCK
    triton_kernels.MAX_BLOCK = size
    try:
        yield
    finally:
        triton_kernels.MAX_BLOCK = saved


def _config(loss, gamma, sigma, kernel="torch"):
    params = {"mile": dict(mile_gamma=gamma, mile_sigma=sigma), "focal": dict(focal_gamma=gamma)}.get(loss, {})
    return LossConfig(loss=loss, params=params, kernel=kernel)


def small_blocks(body, *args):
    """``body(*args)`` with 32-element triton blocks (forward and backward), so that rows span a few
    blocks even at test sizes (the online max/sum rescaling across blocks)."""
    with _triton_blocks(32):
        return body(*args)


def _fast(loss, logits_shard, target, gamma, sigma, kernel="torch"):
    return vocab_parallel_weighted_cross_entropy(logits_shard, target, _config(loss, gamma, sigma, kernel))


# --------------------------------------------------------------------------- rank bodies
def body_matches_reference(loss, gamma, sigma, dtype, vocab, seed, kernel):
    rank, world = _layout()
    logits, target, mask, upstream = _inputs(seed, 7, 3, vocab)
    logits = logits.to(dtype).double()  # the reference sees exactly the values the kernel sees
    shard = _shard(logits, rank, world).to(dtype).clone().requires_grad_(True)
    out = _fast(loss, shard * 1, target, gamma, sigma, kernel)  # *1: a non-leaf, as a model's logits are
    terms = reduce_weighted_loss(out.weighted_ce, out.weight, mask, out.ce, out.entropy)
    objective = weighted_mean(terms.numerator, terms.denominator) + (upstream * out.weighted_ce).sum()
    objective.backward()
    ref_wce, ref_w, ref_ce, ref_h, ref_obj, ref_grad = float64_objective(
        logits, target, mask, upstream, loss, gamma, sigma
    )
    for name, got, want in [("weighted_ce", out.weighted_ce, ref_wce), ("weight", out.weight, ref_w),
                            ("ce", out.ce, ref_ce), ("entropy", out.entropy, ref_h)]:
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5, msg=name)
    torch.testing.assert_close(objective.double(), ref_obj, rtol=2e-5, atol=2e-5)
    grad_tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(shard.grad.double(), _shard(ref_grad, rank, world),
                               rtol=grad_tol, atol=grad_tol)
    assert shard.grad.dtype == dtype
    # The stats the training loop logs: plain CE and entropy means over the mask.
    torch.testing.assert_close(terms.ce_sum.double(), (ref_ce * mask).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.entropy_sum.double(), (ref_h * mask).sum(), rtol=1e-5, atol=1e-5)
    return True


def body_gamma0_equals_megatron_ce(seed):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    rank, world = _layout()
    logits, target, _, upstream = _inputs(seed, 9, 2, 512)
    shard = _shard(logits, rank, world).float()
    ours_in = shard.clone().requires_grad_(True)
    theirs_in = shard.clone().requires_grad_(True)
    ce_mile, weight = vocab_parallel_mile_cross_entropy(ours_in * 1, target, gamma=0.0)
    ce_meg = vocab_parallel_cross_entropy(theirs_in * 1, target)
    assert torch.equal(weight, torch.ones_like(weight))
    assert ce_mile.dtype == ce_meg.dtype == torch.float32
    torch.testing.assert_close(ce_mile, ce_meg, rtol=1e-6, atol=0)
    (ce_mile * upstream.float()).sum().backward()
    (ce_meg * upstream.float()).sum().backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-6, atol=1e-7)
    # The plain-CE entry point too.
    ce_plain, entropy = vocab_parallel_cross_entropy_with_entropy(shard.clone(), target)
    torch.testing.assert_close(ce_plain, ce_meg.detach(), rtol=1e-6, atol=0)
    assert not entropy.requires_grad
    return True


def body_extreme_values(seed, kernel):
    """+-1e4 logits, near-one-hot and uniform distributions, a fully masked batch."""
    rank, world = _layout()
    vocab = 256
    logits, target, mask, upstream = _inputs(seed, 4, 2, vocab)
    big = torch.where(torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed)) > 0.5,
                      torch.tensor(1e4, dtype=torch.float64), torch.tensor(-1e4, dtype=torch.float64))
    big += logits  # distinct values around +-1e4
    for full in (big, logits * 1e3):
        out = _fast("mile", _shard(full, rank, world).float().clone(), target, 1.0, 1.0, kernel)
        ref = float64_objective(full.float().double(), target, mask, upstream, "mile", 1.0, 1.0)
        assert torch.isfinite(out.weighted_ce).all() and torch.isfinite(out.entropy).all()
        torch.testing.assert_close(out.ce.double(), ref[2], rtol=1e-5, atol=1e-2)
        torch.testing.assert_close(out.entropy.double(), ref[3], rtol=1e-4, atol=1e-4)
    # Near one-hot: entropy ~ 0, weight ~ sigma, CE ~ 0 at the hot target.
    onehot = torch.full((4, 2, vocab), -30.0, dtype=torch.float64)
    onehot.scatter_(-1, target.unsqueeze(-1), 30.0)
    out = _fast("mile", _shard(onehot, rank, world).float().clone(), target, 1.0, 1.0, kernel)
    assert (out.entropy >= 0).all() and (out.entropy < 1e-20).all(), out.entropy
    assert (out.ce < 1e-20).all()
    torch.testing.assert_close(out.weight, torch.ones_like(out.weight))
    # Uniform: entropy = log V exactly, CE = log V.
    uniform = torch.full((4, 2, vocab), 0.25, dtype=torch.float64)
    out = _fast("mile", _shard(uniform, rank, world).float().clone(), target, 1.0, 1.0, kernel)
    torch.testing.assert_close(out.entropy, torch.full_like(out.entropy, math.log(vocab)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.ce, torch.full_like(out.ce, math.log(vocab)), rtol=1e-6, atol=1e-6)
    # Fully masked batch: zero loss, zero gradient, no NaN.
    shard = _shard(logits, rank, world).float().clone().requires_grad_(True)
    out = _fast("mile", shard * 1, target, 1.0, 1.0, kernel)
    terms = reduce_weighted_loss(out.weighted_ce, out.weight, torch.zeros_like(mask), out.ce, out.entropy)
    loss = weighted_mean(terms.numerator, terms.denominator)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(shard.grad).all() and shard.grad.abs().max() == 0
    return True


def body_large_vocab(seed, kernel):
    """A 256k vocabulary split over the ranks, bf16 logits (the triton kernel at its GPU block size)."""
    rank, world = _layout()
    assert triton_kernels.MAX_BLOCK == GPU_MAX_BLOCK  # no earlier test left its block size behind
    vocab = 256 * 1024
    logits, target, mask, upstream = _inputs(seed, 3, 2, vocab, scale=4.0)
    logits = logits.bfloat16().double()
    shard = _shard(logits, rank, world).bfloat16().clone().requires_grad_(True)
    out = vocab_parallel_weighted_cross_entropy(shard * 1, target, LossConfig(loss="mile", kernel=kernel))
    wce, weight = out.weighted_ce, out.weight
    (wce * upstream.float()).sum().backward()
    ref_wce, ref_w, _, _, _, _ = float64_objective(logits, target, mask, upstream, "mile", 1.0, 1.0)
    torch.testing.assert_close(wce.double(), ref_wce, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(weight.double(), ref_w, rtol=1e-5, atol=1e-4)
    # Reference gradient of sum(upstream * w * ce) = upstream * w * (softmax - onehot).
    p = torch.softmax(logits, -1)
    ref_grad = p.clone()
    ref_grad.scatter_add_(-1, target.unsqueeze(-1), -torch.ones_like(p[..., :1]))
    ref_grad *= (upstream.double() * ref_w).unsqueeze(-1)
    torch.testing.assert_close(shard.grad.double(), _shard(ref_grad, rank, world), rtol=2e-2, atol=1e-4)
    return True


def body_counts_collectives(seed, kernel):
    """One MAX and one SUM all-reduce per call, nothing gathered."""
    rank, world = _layout()
    calls = []
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        calls.append((str(op), tuple(tensor.shape)))
        return real_all_reduce(tensor, op=op, group=group, async_op=async_op)

    logits, target, _, _ = _inputs(seed, 5, 2, 128)
    dist.all_reduce = counting_all_reduce
    try:
        gathered = []
        real_gather = dist.all_gather
        dist.all_gather = lambda *a, **k: gathered.append(1) or real_gather(*a, **k)
        shard = _shard(logits, rank, world).float().clone().requires_grad_(True)
        _fast("mile", shard * 1, target, 1.0, 1.0, kernel).weighted_ce.sum().backward()
    finally:
        dist.all_reduce = real_all_reduce
        dist.all_gather = real_gather
    assert not gathered
    if world == 1:
        assert calls == [], calls
    else:
        assert len(calls) == 2, calls
        assert "MAX" in calls[0][0].upper() and calls[0][1] == (10,), calls
        assert calls[1][1] == (3, 10), calls
    return True


def body_bad_input(case):
    rank, world = _layout()
    logits, target, _, _ = _inputs(0, 4, 2, 64)
    shard = _shard(logits, rank, world).float().clone()
    if case == "target_range":
        target = target.clone()
        target[1, 1] = 64
    elif case == "negative_target":
        target = target.clone()
        target[0, 0] = -1
    elif case == "shape":
        target = target[:3]
    elif case == "dtype":
        target = target.float()
    try:
        vocab_parallel_mile_cross_entropy(shard, target)
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)
    return None


def body_microbatch_alpha(seed):
    from megatron.core import parallel_state as ps

    dp_rank = ps.get_data_parallel_rank()
    logits, target, mask, _ = _inputs(seed + dp_rank, 6, 2, 96)
    out = _fast("mile", logits.float().clone(), target, 1.0, 1.0)
    alpha = microbatch_alpha(out.weight)
    # Reference: every DP rank's float64 weights, recomputed here.
    alphas = []
    for r in range(ps.get_data_parallel_world_size()):
        lg, tg, mk, up = _inputs(seed + r, 6, 2, 96)
        w = float64_objective(lg, tg, mk, up, "mile", 1.0, 1.0)[1]
        alphas.append(1.0 / w.mean())
    torch.testing.assert_close(alpha.double(), torch.stack(alphas).mean(), rtol=1e-5, atol=0)
    return True  # the objective built on it: tests/test_mile_authors.py


# --------------------------------------------------------------------------- EMO
def float64_emo(full_logits, target, full_weight, upstream_ce, upstream_emo):
    """(ce, emo, entropy, grad of sum(g_ce * ce + g_emo * emo)): the earth mover distance from the
    predicted distribution to the one-hot target with cost 1 - cos over the output-weight rows,
    built from the whole [V, V] cost matrix (all mass moves to the target)."""
    z = full_logits.detach().double().requires_grad_(True)
    logp = torch.log_softmax(z, dim=-1)
    ce = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    w = full_weight.double()
    cosine = (w @ w.T) / (w.norm(dim=-1, keepdim=True) * w.norm(dim=-1).unsqueeze(0))
    cost = 1.0 - cosine
    emo = torch.einsum("sbv,sbv->sb", logp.exp(), cost[target])
    entropy = -(logp.exp() * logp).sum(-1).detach()
    objective = (upstream_ce.double() * ce).sum() + (upstream_emo.double() * emo).sum()
    (grad,) = torch.autograd.grad(objective, z)
    return ce.detach(), emo.detach(), entropy, grad


def body_emo_matches_reference(dtype, seed):
    rank, world = _layout()
    logits, target, _, upstream = _inputs(seed, 6, 3, 128)
    logits = logits.to(dtype).double()
    gen = torch.Generator().manual_seed(seed + 1)
    weight = torch.randn(128, 16, generator=gen)
    upstream_emo = torch.randn(6, 3, generator=gen)
    shard = _shard(logits, rank, world).to(dtype).clone().requires_grad_(True)
    weight_shard = weight[rank * 128 // world:(rank + 1) * 128 // world].clone().requires_grad_(True)
    out = vocab_parallel_emo(shard * 1, target, weight_shard, chunk_tokens=5)
    ((out.ce * upstream).sum() + (out.emo * upstream_emo).sum()).backward()
    ref_ce, ref_emo, ref_h, ref_grad = float64_emo(logits, target, weight, upstream, upstream_emo)
    for name, got, want in [("ce", out.ce, ref_ce), ("emo", out.emo, ref_emo), ("entropy", out.entropy, ref_h)]:
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5, msg=name)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(shard.grad.double(), _shard(ref_grad, rank, world), rtol=tol, atol=tol)
    assert weight_shard.grad is None  # the transport cost is a constant
    return True


def body_emo_collectives(seed):
    """The target's embedding (SUM of [tokens, h]), the max (MAX), the stacked sums (SUM of [4, tokens])."""
    rank, world = _layout()
    calls = []
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        calls.append((str(op).upper(), tuple(tensor.shape)))
        return real_all_reduce(tensor, op=op, group=group, async_op=async_op)

    logits, target, _, _ = _inputs(seed, 5, 2, 64)
    weight = torch.randn(64 // world, 8)
    dist.all_reduce = counting_all_reduce
    try:
        out = vocab_parallel_emo(_shard(logits, rank, world).float().clone().requires_grad_(True) * 1, target, weight)
        (out.ce + out.emo).sum().backward()
    finally:
        dist.all_reduce = real_all_reduce
    if world == 1:
        assert calls == [], calls
    else:
        assert [shape for _, shape in calls] == [(10, 8), (10,), (4, 10)], calls
        assert "MAX" in calls[1][0] and "SUM" in calls[0][0] and "SUM" in calls[2][0], calls
    return True


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("loss,gamma,sigma", [("mile", 1.0, 1.0), ("mile", 2.0, 0.5), ("focal", 2.0, 0.0),
                                              ("cross_entropy", 0.0, 0.0)])
def test_matches_float64_reference(dist_pool, tp, loss, gamma, sigma, kernel):
    assert all(dist_pool.run(small_blocks, body_matches_reference, loss, gamma, sigma, torch.float32, 96, 11 + tp,
                             kernel, tp=tp))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("tp", [1, 2])
def test_bf16_matches_float64_reference(dist_pool, tp, kernel):
    assert all(dist_pool.run(small_blocks, body_matches_reference, "mile", 1.0, 1.0, torch.bfloat16, 96, 5, kernel,
                             tp=tp))


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_gamma0_equals_megatron_cross_entropy(dist_pool, tp):
    assert all(dist_pool.run(body_gamma0_equals_megatron_ce, 3, tp=tp))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("tp", [1, 4])
def test_extreme_values(dist_pool, tp, kernel):
    assert all(dist_pool.run(small_blocks, body_extreme_values, 7, kernel, tp=tp))


@pytest.mark.parametrize("kernel", KERNELS)
def test_large_vocab_bf16_tp4(dist_pool, kernel):
    assert all(dist_pool.run(body_large_vocab, 1, kernel, tp=4))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_two_collectives_per_call(dist_pool, tp, kernel):
    assert all(dist_pool.run(small_blocks, body_counts_collectives, 2, kernel, tp=tp))


@pytest.mark.parametrize("case,exc,words", [
    ("target_range", "ValueError", "[0, 64)"), ("negative_target", "ValueError", "min -1"),
    ("shape", "ValueError", "disagree"), ("dtype", "TypeError", "integer"),
])
def test_bad_input_raises_on_every_rank(dist_pool, case, exc, words):
    results = dist_pool.run(body_bad_input, case, tp=2)
    assert all(r is not None and r[0] == exc for r in results), results
    assert words in results[0][1], results[0][1]


def test_microbatch_alpha_averages_over_data_parallel_ranks(dist_pool):
    assert all(dist_pool.run(body_microbatch_alpha, 4, tp=1))


# --------------------------------------------------------------------------- single process
def test_plain_reference_module_agrees_with_fast_kernel():
    """Liger-style: the package's plain reference (used by benchmarks/debugging) vs the kernel."""
    logits, target, _, _ = _inputs(9, 6, 2, 300)
    for fast, ref, kwargs in [
        (vocab_parallel_mile_cross_entropy, plain_reference.reference_mile_cross_entropy, dict(gamma=1.5, sigma=0.5)),
        (vocab_parallel_focal_cross_entropy, plain_reference.reference_focal_cross_entropy, dict(gamma=2.0)),
        (vocab_parallel_cross_entropy_with_entropy, plain_reference.reference_cross_entropy_with_entropy, {}),
    ]:
        got = fast(logits.float().clone(), target, **kwargs)
        want = ref(logits.clone(), target, **kwargs)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w.detach(), rtol=1e-5, atol=1e-5)


def test_loss_config_rejects_unknown_values():
    with pytest.raises(ValueError, match="loss must be one of"):
        LossConfig(loss="mle")
    with pytest.raises(ValueError, match="normalization"):
        LossConfig(normalization="token")
    with pytest.raises(ValueError, match="kernel must be one of"):
        LossConfig(kernel="cuda")


def body_kernel_choice():
    from megatron_mile.losses.vocab_parallel import _use_triton

    cpu = torch.zeros(2, 3)
    assert triton_kernels.interpreting()  # the pool's workers (conftest.py)
    return _use_triton("auto", cpu), _use_triton("triton", cpu), _use_triton("torch", cpu)


def test_auto_kernel_uses_torch_for_cpu_tensors_even_when_interpreting(dist_pool):
    assert dist_pool.run(body_kernel_choice)[0] == (False, True, False)
    if not triton_kernels.interpreting():  # this process: a CPU tensor cannot take the triton kernel
        from megatron_mile.losses.vocab_parallel import _use_triton

        with pytest.raises(RuntimeError, match="needs triton and a CUDA tensor"):
            _use_triton("triton", torch.zeros(2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multithreaded_sweep_matches_float64_reference(dtype):
    """With several intra-op threads the sweep splits the tokens over Python threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        logits, target, mask, upstream = _inputs(21, 37, 3, 500)
        logits = logits.to(dtype).double()
        z = logits.to(dtype).clone().requires_grad_(True)
        config = LossConfig(loss="mile", params=dict(mile_gamma=1.5, mile_sigma=1.0))
        out = vocab_parallel_weighted_cross_entropy(z * 1, target, config, chunk_tokens=4)
        (out.weighted_ce * upstream).sum().backward()
    finally:
        torch.set_num_threads(threads)
    ref_wce, ref_w, _, ref_h, _, _ = float64_objective(logits, target, mask, upstream, "mile", 1.5, 1.0)
    torch.testing.assert_close(out.weighted_ce.double(), ref_wce, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(out.entropy.double(), ref_h, rtol=2e-5, atol=2e-5)
    p = torch.softmax(logits, -1)
    ref_grad = p.scatter_add(-1, target.unsqueeze(-1), -torch.ones_like(p[..., :1]))
    ref_grad *= (upstream.double() * ref_w).unsqueeze(-1)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(z.grad.double(), ref_grad, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- EMO
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_emo_matches_float64_cost_matrix(dist_pool, tp):
    assert all(dist_pool.run(body_emo_matches_reference, torch.float32, 31 + tp, tp=tp))


def test_emo_bf16_matches_float64_cost_matrix(dist_pool):
    assert all(dist_pool.run(body_emo_matches_reference, torch.bfloat16, 41, tp=2))


@pytest.mark.parametrize("tp", [1, 4])
def test_emo_three_collectives_per_call(dist_pool, tp):
    assert all(dist_pool.run(body_emo_collectives, 3, tp=tp))


def test_emo_limits():
    """A confident correct prediction moves no mass (EMO ~ 0); a uniform one costs the mean cost
    to the target; the more similar a token's embedding to the target's, the cheaper it is."""
    vocab, hidden = 50, 6
    weight = torch.randn(vocab, hidden, generator=torch.Generator().manual_seed(0))
    target = torch.arange(4).view(2, 2)
    onehot = torch.full((2, 2, vocab), -40.0).scatter_(-1, target.unsqueeze(-1), 40.0)
    assert vocab_parallel_emo(onehot, target, weight).emo.abs().max() < 1e-6
    unit = weight / weight.norm(dim=-1, keepdim=True)
    out = vocab_parallel_emo(torch.zeros(2, 2, vocab), target, weight)
    torch.testing.assert_close(out.emo, 1.0 - (unit[target] @ unit.T).mean(-1), rtol=1e-5, atol=1e-6)
    # All mass on one wrong token: EMO is that token's cost, 1 - cos.
    wrong = torch.full((1, 1, vocab), -40.0)
    wrong[0, 0, 7] = 40.0
    cos = float(unit[7] @ unit[3])
    assert math.isclose(vocab_parallel_emo(wrong, torch.tensor([[3]]), weight).emo.item(), 1.0 - cos, abs_tol=1e-5)


def test_emo_reference_module_agrees_and_weighted_entry_refuses_emo():
    logits, target, _, _ = _inputs(5, 4, 2, 90)
    weight = torch.randn(90, 12, generator=torch.Generator().manual_seed(5))
    got = vocab_parallel_emo(logits.float().clone(), target, weight)
    want = plain_reference.reference_emo(logits.clone(), target, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not a weighted cross entropy"):
        vocab_parallel_weighted_cross_entropy(logits.float(), target, LossConfig(loss="emo"))
    with pytest.raises(ValueError, match="slice of the output layer"):
        vocab_parallel_emo(logits.float(), target, weight[:45])
