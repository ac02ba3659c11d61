"""The fused output layer + weighted loss against a float64 reference written here.

The reference multiplies the whole hidden states by the whole (all ranks') output weight in
float64, takes a plain log-softmax over the full vocabulary and differentiates
``sum(upstream * w * ce)`` with autograd; the weight is written out per loss (ESLM's quantile:
the registry's function applied to the float64 statistics). The fused op runs in a pool of 4 gloo
ranks at TP 1, 2 and 4 with small blocks (several vocabulary chunks per rank, token chunks that
do not divide the tokens), so every merge and accumulation path runs; the Triton block kernels
(the GPU path) run here through triton's interpreter.
"""

import re

import pytest
import torch
import torch.distributed as dist

from megatron_mile.losses import LossConfig, vocab_parallel_weighted_cross_entropy
from megatron_mile.losses.linear_cross_entropy import vocab_parallel_linear_weighted_cross_entropy
from megatron_mile.losses.registry import TokenStats, token_weight

WORLD_SIZE = 4
SEQ, BATCH, HIDDEN, VOCAB = 12, 3, 16, 48  # V/tp = 48, 24, 12
CHUNKS = dict(chunk_tokens=7, chunk_vocab=5)
LOSSES = {
    "cross_entropy": {},
    "mile": dict(mile_gamma=1.5, mile_sigma=0.5),
    "focal": dict(focal_gamma=2.0),
    "dft": {},
    "eslm": dict(eslm_alpha=0.5),
}


def float64_reference(hidden, weight, target, upstream, loss, params):
    """Per-token (weighted_ce, weight, ce, entropy) and d/d(hidden, weight) of sum(upstream * w * ce)."""
    x = hidden.detach().double().requires_grad_(True)
    w_out = weight.detach().double().requires_grad_(True)
    logp = torch.log_softmax(x @ w_out.T, dim=-1)
    ce = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    p = logp.detach().exp()
    entropy = -(p * logp.detach()).sum(-1)
    p_target = (-ce.detach()).exp()
    if loss == "mile":
        w = (params["mile_sigma"] + entropy) ** params["mile_gamma"]
    elif loss == "focal":
        w = (1 - p_target) ** params["focal_gamma"]
    elif loss == "dft":
        w = p_target
    elif loss == "eslm":  # the registry's quantile rule on the float64 statistics
        w = token_weight(LossConfig(loss=loss, params=params), TokenStats(ce.detach(), entropy, p_target)).double()
    else:
        w = torch.ones_like(ce)
    wce = w * ce
    grad_x, grad_w = torch.autograd.grad((upstream.double() * wce).sum(), (x, w_out))
    return (wce.detach(), w, ce.detach(), entropy), grad_x, grad_w


def _inputs(seed, dtype, hidden_size=HIDDEN, vocab=VOCAB):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(SEQ, BATCH, hidden_size, generator=gen)
    weight = torch.randn(vocab, hidden_size, generator=gen) * 0.6
    target = torch.randint(0, vocab, (SEQ, BATCH), generator=gen)
    upstream = torch.rand(SEQ, BATCH, generator=gen)
    return hidden.to(dtype), weight.to(dtype), target, upstream


def _tp():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_rank(), \
        ps.get_tensor_model_parallel_world_size()


def _max_error(values, expected):
    """Largest error of each pair, relative to the expected tensor's largest magnitude."""
    return max(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-6)).item()
               for a, b in zip(values, expected))


def body_matches_reference(loss, dtype, seed, sequence_parallel=False, kernel="auto"):
    if sequence_parallel:  # megatron's sequence-parallel gather allocates on torch.cuda.current_device()
        from megatron_mile import platform

        platform.adapt_megatron_to_cpu()
    group, rank, tp = _tp()
    hidden, weight, target, upstream = _inputs(seed, dtype)
    rows = slice(rank * VOCAB // tp, (rank + 1) * VOCAB // tp)
    shard = slice(rank * SEQ // tp, (rank + 1) * SEQ // tp) if sequence_parallel else slice(None)
    x = hidden[shard].clone().requires_grad_(True)
    w = weight[rows].clone().requires_grad_(True)
    config = LossConfig(loss=loss, params=LOSSES[loss], kernel=kernel)
    out = vocab_parallel_linear_weighted_cross_entropy(x, w, target, config, tp_group=group,
                                                       sequence_parallel=sequence_parallel, **CHUNKS)
    (out.weighted_ce * upstream).sum().backward()
    expected, grad_x, grad_w = float64_reference(hidden, weight, target, upstream, loss, LOSSES[loss])
    # bf16: the logits are rounded to bf16 as megatron's output layer rounds them, and so are dX, dW
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    errors = (_max_error(out, expected), _max_error([x.grad], [grad_x[shard]]), _max_error([w.grad], [grad_w[rows]]))
    assert max(errors) <= tol, (loss, dtype, tp, errors)
    return True


def body_bf16_no_worse_than_unfused(loss, seed):
    """bf16 errors against float64 stay within 1.5x those of the unfused bf16 path (megatron's
    logits in bf16, then the vocab-parallel loss) + a small floor."""
    group, rank, tp = _tp()
    hidden, weight, target, upstream = _inputs(seed, torch.bfloat16)
    rows = slice(rank * VOCAB // tp, (rank + 1) * VOCAB // tp)
    config = LossConfig(loss=loss, params=LOSSES[loss])
    expected, grad_x, grad_w = float64_reference(hidden, weight, target, upstream, loss, LOSSES[loss])
    errors = []
    for fused in (True, False):
        x, w = hidden.clone().requires_grad_(True), weight[rows].clone().requires_grad_(True)
        if fused:
            out = vocab_parallel_linear_weighted_cross_entropy(x, w, target, config, tp_group=group, **CHUNKS)
        else:
            from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

            logits = copy_to_tensor_model_parallel_region(x, group=group) @ w.T if tp > 1 else x @ w.T
            out = vocab_parallel_weighted_cross_entropy(logits, target, config, tp_group=group)
        (out.weighted_ce * upstream).sum().backward()
        errors.append((_max_error(out[:1], expected[:1]), _max_error([x.grad], [grad_x]),
                       _max_error([w.grad], [grad_w[rows]])))
    fused_err, unfused_err = errors
    assert all(f <= 1.5 * u + 1e-3 for f, u in zip(fused_err, unfused_err)), (loss, tp, fused_err, unfused_err)
    return True


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_fp32_matches_float64_reference(dist_pool, tp, loss):
    assert all(dist_pool.run(body_matches_reference, loss, torch.float32, 100 + tp, tp=tp))


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("loss", ["cross_entropy", "mile", "focal"])
def test_bf16_matches_float64_reference(dist_pool, tp, loss):
    assert all(dist_pool.run(body_matches_reference, loss, torch.bfloat16, 200 + tp, tp=tp))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_block_kernels_match_float64_reference(dist_pool, dtype):
    """The GPU path's block kernels, run by triton's interpreter (conftest.py) on CPU tensors."""
    pytest.importorskip("triton")
    assert all(dist_pool.run(body_matches_reference, "mile", dtype, 500, False, "triton", tp=2))


@pytest.mark.parametrize("tp", [1, 4])
def test_bf16_no_worse_than_unfused_path(dist_pool, tp):
    assert all(dist_pool.run(body_bf16_no_worse_than_unfused, "mile", 300 + tp, tp=tp))


@pytest.mark.parametrize("tp", [2, 4])
def test_sequence_parallel_matches_float64_reference(dist_pool, tp):
    assert all(dist_pool.run(body_matches_reference, "mile", torch.float32, 400 + tp, True, tp=tp))


def body_collectives_and_largest_tensor(seed):
    """All-reduces in forward and backward, and the largest storage behind any op's output."""
    from torch.utils._python_dispatch import TorchDispatchMode

    group, rank, tp = _tp()
    hidden, weight, target, upstream = _inputs(seed, torch.float32, SMALL_HIDDEN, LARGE_VOCAB)
    x = hidden.clone().requires_grad_(True)
    w = weight[rank * LARGE_VOCAB // tp:(rank + 1) * LARGE_VOCAB // tp].clone().requires_grad_(True)

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dim() >= 2:  # per-token vectors are 1-D
                    elements = t.untyped_storage().nbytes() // t.element_size()  # memory, not views
                    LargestOutput.largest = max(LargestOutput.largest, elements)
            return out

    calls = {"forward": 0, "backward": 0}
    phase = ["forward"]
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):
        calls[phase[0]] += 1
        return real_all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce
    try:
        with LargestOutput():
            out = vocab_parallel_linear_weighted_cross_entropy(x, w, target, LossConfig(loss="mile"),
                                                               tp_group=group, chunk_tokens=4, chunk_vocab=6)
            phase[0] = "backward"
            (out.weighted_ce * upstream).sum().backward()
    finally:
        dist.all_reduce = real_all_reduce
    return calls, LargestOutput.largest, w.numel()


SMALL_HIDDEN, LARGE_VOCAB = 8, 160  # the logits [36, 160/tp] outgrow the inputs [36, 8] and [160/tp, 8]


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_two_collectives_and_no_full_logits(dist_pool, tp):
    for calls, largest, weight_numel in dist_pool.run(body_collectives_and_largest_tensor, 7, tp=tp):
        # forward: MAX and the stacked SUM; backward: the output layer's all-reduce of dX (megatron's)
        assert calls == ({"forward": 2, "backward": 1} if tp > 1 else {"forward": 0, "backward": 0})
        # nothing of [tokens, V/tp]: the largest are the inputs and their gradients (blocks: 4 x 6)
        assert largest <= max(SEQ * BATCH * SMALL_HIDDEN, weight_numel) < SEQ * BATCH * LARGE_VOCAB // tp


def body_bad_input(case):
    group, rank, tp = _tp()
    hidden, weight, target, _ = _inputs(1, torch.float32)
    w = weight[: VOCAB // tp]
    config = LossConfig(loss="mile")
    if case == "target_range":
        target = target.clone()
        target[0, 0] = VOCAB
    elif case == "weight_width":
        w = w[:, :-1]
    elif case == "dtype":
        w = w.double()
    elif case == "emo":
        config = LossConfig(loss="emo")
    try:
        vocab_parallel_linear_weighted_cross_entropy(hidden, w, target, config, tp_group=group)
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)
    return None


@pytest.mark.parametrize("case, words", [
    ("target_range", "target ids must lie in [0, 48)"),
    ("weight_width", "must be this rank's [V/tp, h] rows"),
    ("dtype", "must share a dtype"),
    ("emo", "not a weighted cross entropy"),
])
def test_bad_input_raises_on_every_rank(dist_pool, case, words):
    results = dist_pool.run(body_bad_input, case, tp=2)
    assert all(r is not None and words in r[1] for r in results), results


# --------------------------------------------------------------------------- training with --fused-output-loss
def _train_metrics(argv):
    from megatron_mile.pretrain_gpt import pretrain

    return [(m["iteration"], m["loss"], m["lm_loss"], m["grad_norm"]) for m in pretrain(argv).train]


@pytest.mark.parametrize("layout, loss, flags", [
    ("TP1xDP4", "mile", []),
    ("TP2xPP2", "mile", []),
    ("TP2xPP2", "focal", ["--untie-embeddings-and-output-weights"]),
])
def test_training_with_and_without_the_flag_agrees(dist_pool, layout, loss, flags):
    """Same seed and data, fp32: loss, lm loss and gradient norm agree per iteration at 1e-4,
    with the output weights tied (gpt2 style) and untied."""
    from tests.test_training_parallel import LAYOUTS, NO_DROPOUT, TINY

    _, layout_flags, pool_layout = next(entry for entry in LAYOUTS if entry[0] == layout)
    argv = TINY + layout_flags + NO_DROPOUT + flags + ["--loss", loss, "--train-iters", "3"]
    unfused, fused = (dist_pool.run(_train_metrics, argv + extra, **pool_layout)[-1]
                      for extra in ([], ["--fused-output-loss"]))
    assert len(fused) == len(unfused) == 3
    for got, want in zip(fused, unfused):
        assert got[0] == want[0] and all(abs(a - b) <= 1e-4 for a, b in zip(got[1:], want[1:])), (got, want)


@pytest.mark.parametrize("flags, words", [
    (["--loss", "emo"], "--fused-output-loss needs a weighted cross-entropy loss; --loss emo reads the logits"),
    (["--use-distributed-optimizer", "--overlap-param-gather"],
     "--fused-output-loss does not support --overlap-param-gather"),
])
def test_flag_rejects_what_it_cannot_fuse(flags, words):
    from megatron_mile.training.arguments import ConfigError, parse_args
    from tests.test_training_parallel import TINY

    with pytest.raises(ConfigError, match=re.escape(words)):
        parse_args(TINY + ["--train-iters", "3", "--fused-output-loss"] + flags)
    assert parse_args(TINY + ["--train-iters", "3", "--fused-output-loss"]).fused_output_loss
