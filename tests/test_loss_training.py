"""The registered losses inside training (TP2 x PP2 on 4 gloo ranks): the model hook hands the loss
mask to the loss, ESLM with alpha 0 is cross entropy, every EMO variant trains, and EMO's frozen cost
from a checkpoint is that checkpoint's output layer."""

import math

from megatron_mile.pretrain_gpt import pretrain
from tests.test_training_parallel import TINY, TP2PP2, run

WORLD_SIZE = 4


def _masks_seen_by_eslm(argv):
    """Run training; return, per loss call on this rank, (mask given, fraction of positions masked)."""
    from megatron_mile.losses import eslm

    seen = []
    original = eslm.ESLM.token_weight

    def recording(self, values, stats, loss_mask, dp_group):
        seen.append((loss_mask is not None, None if loss_mask is None else float((loss_mask == 0).float().mean())))
        return original(self, values, stats, loss_mask, dp_group)

    eslm.ESLM.token_weight = recording
    try:
        pretrain(argv)
    finally:
        eslm.ESLM.token_weight = original
    return seen


def test_the_loss_sees_the_loss_mask(dist_pool):
    layout_flags, pool_layout = TP2PP2[1], TP2PP2[2]
    seen = dist_pool.run(_masks_seen_by_eslm, TINY + layout_flags + ["--loss", "eslm", "--eod-mask-loss",
                                                                      "--train-iters", "2"], **pool_layout)
    calls = [c for rank in seen for c in rank]
    assert calls and all(given for given, _ in calls), seen  # last stage: every call got the mask
    assert any(fraction > 0 for _, fraction in calls), seen  # and it masks the end-of-document tokens


def test_eslm_alpha0_is_cross_entropy_and_dft_trains(dist_pool):
    flags = ["--train-iters", "2", "--eod-mask-loss"]
    ce = run(dist_pool, TP2PP2, "--loss", "cross_entropy", *flags)[0]
    eslm = run(dist_pool, TP2PP2, "--loss", "eslm", "--eslm-alpha", "0", *flags)[0]
    for (it, loss, lm_loss, gnorm), (_, ce_loss, ce_lm, ce_gnorm) in zip(eslm, ce):
        assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in ((loss, ce_loss), (lm_loss, ce_lm), (gnorm, ce_gnorm)))
    for extra in (["--loss", "dft"], ["--loss", "eslm", "--eslm-score", "loss", "--eslm-alpha", "0.5"]):
        metrics = run(dist_pool, TP2PP2, *extra, *flags)[0]
        assert all(math.isfinite(v) for m in metrics for v in m[1:]) and metrics != ce, extra


def _frozen_cost_equals_loaded_head(argv):
    """Train; on the first loss call, whether the frozen cost equals the (just loaded) output layer."""
    from megatron_mile.model import MileGPTModel

    seen = []
    original = MileGPTModel.compute_language_model_loss

    def recording(self, labels, logits):
        if not seen:
            seen.append(self.frozen_output_weight is not None
                        and bool((self.frozen_output_weight == self.output_weight().detach().float()).all()))
        return original(self, labels, logits)

    MileGPTModel.compute_language_model_loss = recording
    try:
        metrics = pretrain(argv).train
    finally:
        MileGPTModel.compute_language_model_loss = original
    return seen, [m["loss"] for m in metrics]


def test_every_emo_variant_trains_and_the_checkpoint_cost_is_its_head(dist_pool, tmp_path):
    save = str(tmp_path / "pretrained")
    run(dist_pool, TP2PP2, "--loss", "cross_entropy", "--train-iters", "2", "--save", save, "--save-iters", "2")
    for variant in ("lm", "lm_adaptive", "batch_ratio"):
        metrics = run(dist_pool, TP2PP2, "--loss", "emo", "--emo-variant", variant, "--train-iters", "2",
                      "--eod-mask-loss")[0]
        assert all(math.isfinite(v) for m in metrics for v in m[1:]), variant
    layout_flags, pool_layout = TP2PP2[1], TP2PP2[2]
    for variant in ("continual", "continual_emo2"):
        argv = TINY + layout_flags + ["--loss", "emo", "--emo-variant", variant, "--emo-cost-checkpoint", save,
                                      "--load", save, "--finetune", "--train-iters", "2"]
        results = dist_pool.run(_frozen_cost_equals_loaded_head, argv, **pool_layout)
        last_stage = [seen for seen, _ in results if seen]
        assert last_stage and all(seen == [True] for seen in last_stage), results
        assert all(math.isfinite(v) for _, losses in results for v in losses), results
