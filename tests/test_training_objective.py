"""An independent check of the training objective: one plain SGD step against float64 autograd.

Two runs of the training entry point start from the same step-0 weights (layout-invariant
initialisation) on the same first global batch: one with learning rate 0 (its checkpoint holds the
step-0 weights), one with learning rate ``LR``; plain SGD (no momentum, weight decay or clipping),
fp32, ``--eod-mask-loss`` so that the loss mask is not all ones. The parameter update must be
``-LR x`` the gradient of the objective, computed here in float64 from scratch: the step-0 model
cast to float64 gives the logits of every micro-batch; the loss is written below from the
definitions (log-softmax, entropy, target probability, the weights, the mask, the normalisation)
and differentiated by autograd. Nothing of the package's loss code is used on this side.

    global:      sum(mask * w * ce) / sum(mask * w)              over the whole global batch
    microbatch:  the MiLe authors' code: per micro-batch alpha * mean over all positions of
                 mask * w * ce, alpha = 1 / mean(w) (focal: w = 0 where masked) averaged over
                 data-parallel ranks, then the mean over micro-batches and ranks

at TP1 (DP 4, one micro-batch per rank) and TP2 x PP2 (DP 1, four micro-batches).
"""

import math

import pytest
import torch

from megatron_mile.pretrain_gpt import pretrain

WORLD_SIZE = 4
LR = 10.0  # one step only: large enough that the fp32 rounding of the weights is far below the update
MBS, GBS = 2, 8

BASE = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --vocab-size 63 "
        "--tokenizer-type NullTokenizer --split 100,0,0 "
        "--make-vocab-size-divisible-by 32 --micro-batch-size 2 --global-batch-size 8 --train-iters 1 "
        "--optimizer sgd --sgd-momentum 0 --weight-decay 0 --clip-grad 0 --lr-warmup-iters 0 "
        "--lr-decay-style constant --eod-mask-loss --hidden-dropout 0 --attention-dropout 0 --fp32 "
        "--use-cpu-initialization --init-method-std 0.3 --seed 3 --eval-iters 0 --num-workers 0 "
        "--log-interval 1000").split()
# A wide initialisation so that step-0 predictions are far from uniform: the weights differ from token
# to token, and a loss that ignored gamma, sigma or the weights would move the update visibly.

LOSSES = {
    "cross_entropy": ["--loss", "cross_entropy"],
    "mile": ["--loss", "mile", "--mile-gamma", "2", "--mile-sigma", "0.5"],
    "focal": ["--loss", "focal", "--focal-gamma", "2"],
    "mile_microbatch": ["--loss", "mile", "--mile-gamma", "2", "--mile-sigma", "0.5", "--mile-normalization",
                        "microbatch"],
    "focal_microbatch": ["--loss", "focal", "--focal-gamma", "2", "--mile-normalization", "microbatch"],
}
LAYOUTS = {
    "TP1": ([], dict(tp=1, pp=1)),
    "TP2xPP2": (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], dict(tp=2, pp=2)),
}


def _train(argv):
    pretrain(argv)


# --------------------------------------------------------------------------- the float64 reference
def reference_objective(logits, labels, mask, loss, normalization, dp, micro_batches):
    """The objective of one global batch from float64 logits ``[n, s, V]`` of its ``n`` samples in
    order (sample ``k`` is in micro-batch ``(k // MBS) // dp`` of data-parallel rank
    ``(k // MBS) % dp``, as Megatron-LM's sampler hands them out)."""
    logp = torch.log_softmax(logits, dim=-1)
    ce = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    p = logp.exp().detach()
    if loss.startswith("mile"):
        entropy = -(p * logp.detach()).sum(-1)
        w = (0.5 + entropy) ** 2
    elif loss.startswith("focal"):
        w = (1 - p.gather(-1, labels.unsqueeze(-1)).squeeze(-1)) ** 2
    else:
        w = torch.ones_like(ce)
    mask = mask.double()
    if normalization == "global":
        return (mask * w * ce).sum() / (mask * w).sum()
    groups = logits.shape[0] // MBS
    assert groups == dp * micro_batches
    total = 0.0
    for i in range(micro_batches):
        members = [slice((i * dp + d) * MBS, (i * dp + d + 1) * MBS) for d in range(dp)]
        alpha_w = [w[m] * mask[m] if loss.startswith("focal") else w[m] for m in members]
        alpha = sum(1.0 / aw.mean() for aw in alpha_w) / dp
        for m in members:
            total = total + alpha * (mask[m] * w[m] * ce[m]).mean() / (dp * micro_batches)
    return total


def body_reference(step0_dir, step1_dir, flags, loss, normalization, dp):
    """On every rank (TP1, collective loads): (relative error of the update, fraction of masked
    positions, spread of the weights)."""
    from megatron_mile.data.tokenizers import build_tokenizer
    from megatron_mile.training.arguments import parse_args, validate_runtime
    from megatron_mile.training.checkpointing import load_model_for_eval
    from megatron_mile.training.data import build_datasets

    model0, _ = load_model_for_eval(step0_dir, dtype=torch.float64)
    model1, _ = load_model_for_eval(step1_dir, dtype=torch.float64)
    args = parse_args(flags)
    validate_runtime(args, 4)  # the data of the 4-rank pool's TP1 layout: samples 0..GBS-1
    tokenizer = build_tokenizer("NullTokenizer", vocab_size=args.vocab_size)
    train = build_datasets(args, tokenizer).train
    samples = [train[k] for k in range(GBS)]
    tokens = torch.stack([torch.as_tensor(s["tokens"]) for s in samples]).long()
    labels = torch.stack([torch.as_tensor(s["labels"]) for s in samples]).long()
    mask = torch.stack([torch.as_tensor(s["loss_mask"]) for s in samples]).double()
    positions = torch.stack([torch.as_tensor(s["position_ids"]) for s in samples]).long()

    model0.train()  # dropout is 0; the step's forward is a training forward
    logits = model0(tokens, positions, None).double()
    micro_batches = GBS // (MBS * dp)
    objective = reference_objective(logits, labels, mask, loss, normalization, dp, micro_batches)
    objective.backward()
    params1 = dict(model1.named_parameters())
    num, den = 0.0, 0.0
    for name, p0 in model0.named_parameters():
        expected = -LR * p0.grad
        update = params1[name].detach() - p0.detach()
        num += float(((update - expected) ** 2).sum())
        den += float((expected ** 2).sum())
    return math.sqrt(num / den), float(1 - mask.mean())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Flags for an indexed dataset of short documents (2-8 random tokens and the EOD, id 63, of
    the 63-token NullTokenizer), so that --eod-mask-loss masks about a fifth of the positions."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = str(tmp_path_factory.mktemp("data") / "short_docs")
    gen = torch.Generator().manual_seed(0)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for _ in range(300):
        length = int(torch.randint(2, 9, (), generator=gen))
        doc = torch.cat([torch.randint(0, 63, (length,), generator=gen), torch.tensor([63])])
        builder.add_document(doc, [len(doc)])
    builder.finalize(prefix + ".idx")
    return ["--data-path", prefix, "--data-cache-path", str(tmp_path_factory.mktemp("cache"))]


@pytest.fixture(scope="module")
def step0(dist_pool, data):
    """Per layout: the checkpoint of a learning-rate-0 step (the step-0 weights)."""
    dirs = {}
    for name, (layout_flags, pool_layout) in LAYOUTS.items():
        dirs[name] = data[-1] + "_step0_" + name
        dist_pool.run(_train, BASE + data + layout_flags + ["--lr", "0", "--save", dirs[name]], **pool_layout)
    return dirs


CASES = [(layout, loss) for layout in LAYOUTS for loss in LOSSES
         if not (layout == "TP2xPP2" and loss == "focal_microbatch")]  # the suite's time: one layout is enough


@pytest.mark.parametrize("layout,loss", CASES)
def test_sgd_update_is_minus_lr_times_the_float64_gradient(dist_pool, data, step0, tmp_path, layout, loss):
    layout_flags, pool_layout = LAYOUTS[layout]
    step1 = str(tmp_path / "step1")
    flags = BASE + data + LOSSES[loss] + ["--lr", str(LR)]
    dist_pool.run(_train, flags + layout_flags + ["--save", step1], **pool_layout)
    normalization = "microbatch" if loss.endswith("microbatch") else "global"
    dp = WORLD_SIZE // (pool_layout["tp"] * pool_layout["pp"])
    error, masked = dist_pool.run(body_reference, step0[layout], step1, flags, loss, normalization, dp,
                                  tp=1, pp=1)[0]
    assert masked > 0.05, masked  # --eod-mask-loss masks enough positions to matter
    assert error < 1e-5, (layout, loss, error)
