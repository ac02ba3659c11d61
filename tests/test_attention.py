"""Attention backend, activation recompute and the AdamW implementation: the flags reach megatron-core
and change nothing but speed and memory.

``SDPACoreAttention`` (torch's scaled_dot_product_attention, what ``--attention-backend auto``
runs in the local spec) is compared with megatron-core's own ``DotProductAttention`` (what
``unfused`` runs), run on CPU with megatron_mile.platform's P1 (current device) and P4 (its mask is
created on "cuda"): values and gradients, causal, grouped-query attention, dropout 0.
"""

import math

import pytest

from megatron_mile.training.arguments import parse_args, transformer_config_from_args

WORLD_SIZE = 2

TINY = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --group-query-attention --num-query-groups 2 "
        "--seq-length 32 --micro-batch-size 2 --global-batch-size 4 --lr 1e-3 --train-iters 3 --mock-data "
        "--vocab-size 255 --make-vocab-size-divisible-by 64 --use-cpu-initialization --seed 3 --log-interval 1000 "
        "--eval-iters 0 --num-workers 0 --hidden-dropout 0 --attention-dropout 0 --model-style llama").split()


def _attention_outputs(heads, groups, tp):
    import torch
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_mile import platform
    from megatron_mile.model import SDPACoreAttention

    platform.adapt_megatron_to_cpu()
    tensor_parallel.model_parallel_cuda_manual_seed(123)  # megatron's dropout forks the tracked stream
    config = TransformerConfig(num_layers=1, hidden_size=16 * heads, num_attention_heads=heads,
                               num_query_groups=groups, attention_dropout=0.0, tensor_model_parallel_size=tp)
    torch.manual_seed(11)  # the same inputs on every rank; each TP rank takes its heads
    s, b, hn = 24, 3, 16
    rank = parallel_state.get_tensor_model_parallel_rank()
    q_all = torch.randn(s, b, heads, hn, dtype=torch.float32)
    kv_all = torch.randn(2, s, b, groups, hn, dtype=torch.float32)
    q = q_all.chunk(tp, dim=2)[rank]
    k, v = (x.chunk(tp, dim=2)[rank] for x in kv_all)
    out_grad = torch.randn(s, b, q.shape[2] * hn, generator=torch.Generator().manual_seed(5 + rank))
    results = []
    for cls in (DotProductAttention, SDPACoreAttention):
        module = cls(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
        inputs = [x.clone().requires_grad_(True) for x in (q, k, v)]
        with platform.cuda_to_cpu():  # megatron's causal mask is built on "cuda"
            out = module(*inputs, attention_mask=None, attn_mask_type=AttnMaskType.causal)
            out.backward(out_grad)
        results.append([out.detach()] + [x.grad for x in inputs])
    return [[t.tolist() for t in r] for r in results]


@pytest.mark.parametrize("heads, groups, tp", [(4, 4, 1), (4, 2, 1), (8, 2, 2)])
def test_sdpa_equals_megatrons_unfused_attention(dist_pool, heads, groups, tp):
    import torch

    for megatron_out, ours in dist_pool.run(_attention_outputs, heads, groups, tp, tp=tp):
        for name, a, b in zip(("output", "dq", "dk", "dv"), megatron_out, ours):
            a, b = torch.tensor(a), torch.tensor(b)
            assert a.shape == b.shape, name
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)


def test_attention_backend_chooses_the_core_attention_class():
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from megatron_mile.model import SDPACoreAttention, SDPA_ATTENTION_BACKENDS, gpt_layer_spec

    for backend in ("auto", "flash", "fused", "unfused", "local"):
        args = parse_args(TINY + ["--attention-backend", backend])
        spec = gpt_layer_spec("local", args.normalization, backend in SDPA_ATTENTION_BACKENDS)
        expected = SDPACoreAttention if backend in ("auto", "flash", "fused") else DotProductAttention
        assert spec.submodules.self_attention.submodules.core_attention is expected, backend
    assert parse_args(TINY + ["--use-flash-attn"]).attention_backend == "flash"
    with pytest.raises(Exception, match="--use-flash-attn contradicts --attention-backend unfused"):
        parse_args(TINY + ["--use-flash-attn", "--attention-backend", "unfused"])


def test_recompute_flags_reach_transformer_config():
    from megatron.core.transformer.enums import AttnBackend

    config = transformer_config_from_args(parse_args(TINY + ["--recompute-activations"]))
    assert config.recompute_granularity == "selective" and config.recompute_modules == ["core_attn"]
    config = transformer_config_from_args(parse_args(
        TINY + "--recompute-granularity full --recompute-method block --recompute-num-layers 1".split()))
    assert (config.recompute_granularity, config.recompute_method, config.recompute_num_layers) == ("full", "block", 1)
    config = transformer_config_from_args(parse_args(
        TINY + "--recompute-granularity selective --recompute-modules mlp layernorm --attention-backend fused".split()))
    assert config.recompute_modules == ["mlp", "layernorm"]
    assert config.attention_backend == AttnBackend.auto  # local layers: the spec chooses (above)
    te_args = parse_args(TINY + ["--attention-backend", "fused"])
    te_args.transformer_impl = "transformer_engine"  # what validate_runtime sets when TE is there
    assert transformer_config_from_args(te_args).attention_backend == AttnBackend.fused
    for bad, message in (("--recompute-granularity full", "needs --recompute-method"),
                         ("--recompute-method uniform --recompute-num-layers 1", "needs --recompute-granularity full"),
                         ("--recompute-modules mlp", "needs --recompute-granularity selective")):
        with pytest.raises(Exception, match=message):
            parse_args(TINY + bad.split())


def _train(argv):
    from megatron_mile.pretrain_gpt import pretrain

    result = pretrain(argv)
    return [(m["loss"], m["grad_norm"]) for m in result.train]


def _adam_groups(argv):
    from megatron_mile.pretrain_gpt import build_model, build_optimizer_and_scheduler
    from megatron_mile.training.arguments import validate_runtime

    import torch.distributed as dist

    from megatron_mile import platform

    args = parse_args(argv)
    validate_runtime(args, dist.get_world_size())
    args.padded_vocab_size = 256
    platform.adapt_megatron_to_cpu()
    model = build_model(args, transformer_config_from_args(args))
    optimizer, _ = build_optimizer_and_scheduler(args, model)
    inner = [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    return [(type(o).__name__, [(g.get("fused"), g.get("foreach")) for g in o.param_groups]) for o in inner]


def test_adam_impl_reaches_torchs_adamw(dist_pool):
    for impl, expected in (("fused", (True, False)), ("foreach", (False, True)), ("for-loop", (False, False))):
        per_rank = dist_pool.run(_adam_groups, TINY + ["--adam-impl", impl])
        for name, groups in per_rank[0]:
            assert name == "AdamW" and groups and all(g == expected for g in groups), (impl, name, groups)


def test_backends_recompute_and_adam_impls_train_alike(dist_pool):
    """Same losses and gradient norms, per iteration, with megatron's unfused attention, full and
    selective recompute, and each AdamW kernel (DP2, fp32, dropout 0)."""
    reference = dist_pool.run(_train, TINY)[0]
    assert all(math.isfinite(loss) for loss, _ in reference)
    for extra in ("--attention-backend unfused", "--recompute-granularity full --recompute-method uniform "
                  "--recompute-num-layers 1", "--recompute-activations", "--adam-impl fused",
                  "--adam-impl foreach"):
        run = dist_pool.run(_train, TINY + extra.split())[0]
        for (loss, gnorm), (ref_loss, ref_gnorm) in zip(run, reference):
            assert math.isclose(loss, ref_loss, rel_tol=0, abs_tol=2e-5), (extra, loss, ref_loss)
            assert math.isclose(gnorm, ref_gnorm, rel_tol=1e-4), (extra, gnorm, ref_gnorm)
