"""GPT pretraining with the MiLe loss on megatron-core: TP x PP x DP on CPU/gloo (4 ranks).

Every assertion compares against an independent reference run (another layout, the plain
cross-entropy run, the uninterrupted run, the run's own start), never a stored number.
"""

import json
import math
import os

import pytest

from megatron_mile.pretrain_gpt import pretrain

WORLD_SIZE = 4

COMMON = ("--hidden-size 64 --num-attention-heads 4 --make-vocab-size-divisible-by 64 --micro-batch-size 2 "
          "--global-batch-size 8 --lr-warmup-iters 1 --lr-decay-style cosine --use-cpu-initialization --seed 7 "
          "--log-interval 1000 --eval-iters 0 --num-workers 0").split()
TINY = COMMON + "--mock-data --vocab-size 255 --num-layers 4 --seq-length 32 --lr 1e-3".split()
NO_DROPOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]

# (name, flags, pool layout): every layout a 4-rank world allows, VPP included.
LAYOUTS = [
    ("TP1xDP4", [], dict(tp=1, pp=1)),
    ("TP2xDP2", ["--tensor-model-parallel-size", "2"], dict(tp=2, pp=1)),
    ("PP2xDP2", ["--pipeline-model-parallel-size", "2"], dict(tp=1, pp=2)),
    ("TP2xPP2", ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], dict(tp=2, pp=2)),
    ("PP2xVPP2xDP2", ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"],
     dict(tp=1, pp=2, vpp=2)),
]
TP2PP2 = LAYOUTS[3]


def _train(argv):
    """Run in every rank; returns the per-iteration metrics and saved iterations."""
    result = pretrain(argv)
    return [(m["iteration"], m["loss"], m["lm_loss"], m["grad_norm"]) for m in result.train], result.valid, \
        result.checkpoints


def run(pool, layout, *flags):
    name, layout_flags, pool_layout = layout
    per_rank = pool.run(_train, TINY + layout_flags + list(flags), **pool_layout)
    assert all(r[0] == per_rank[0][0] for r in per_rank), f"{name}: ranks disagree on the metrics"
    return per_rank[0]


def _close(a, b, tol):
    return all(math.isclose(x, y, rel_tol=0, abs_tol=tol) for x, y in zip(a, b))


def test_layouts_agree_for_mile(dist_pool):
    """--use-cpu-initialization, same seed and data: losses and gradient norms agree across layouts."""
    runs = {layout[0]: run(dist_pool, layout, "--loss", "mile", "--train-iters", "3", *NO_DROPOUT)[0]
            for layout in LAYOUTS}
    reference = runs["TP1xDP4"]
    assert all(math.isfinite(loss) for _, loss, _, _ in reference)
    for name, metrics in runs.items():
        for (it, loss, lm_loss, gnorm), (_, ref_loss, ref_lm, ref_gnorm) in zip(metrics, reference):
            assert _close((loss, lm_loss), (ref_loss, ref_lm), 1e-4), (name, it, loss, ref_loss)
            assert math.isclose(gnorm, ref_gnorm, rel_tol=1e-4), (name, it, gnorm, ref_gnorm)


def test_mile_gamma0_is_cross_entropy_and_every_loss_trains(dist_pool):
    """TP2xPP2: --mile-gamma 0 reproduces --loss cross_entropy iteration by iteration; MiLe,
    focal, the per-micro-batch normalisation and EMO train with finite losses."""
    common = ["--train-iters", "3"]
    ce = run(dist_pool, TP2PP2, "--loss", "cross_entropy", *common)[0]
    gamma0 = run(dist_pool, TP2PP2, "--loss", "mile", "--mile-gamma", "0", *common)[0]
    for (it, loss, lm_loss, gnorm), (_, ce_loss, ce_lm, ce_gnorm) in zip(gamma0, ce):
        assert _close((loss, lm_loss, gnorm), (ce_loss, ce_lm, ce_gnorm), 1e-6), it
        assert math.isclose(ce_loss, ce_lm, abs_tol=1e-6)  # CE: objective == plain CE
    for flags in (["--loss", "mile"], ["--loss", "focal", "--focal-gamma", "2"],
                  ["--loss", "mile", "--mile-normalization", "microbatch"],
                  ["--loss", "emo"], ["--loss", "emo", "--model-style", "llama"]):  # tied / untied output
        metrics = run(dist_pool, TP2PP2, *flags, *common)[0]
        assert all(math.isfinite(v) for m in metrics for v in m[1:]), flags
        assert metrics != ce, flags  # the weighting changes the run


def test_resume_equals_uninterrupted_run(dist_pool, tmp_path):
    """Save at iteration 2 and stop; resuming gives iterations 3.. of the uninterrupted run
    (dropout on: the RNG states come back too), for TP2xPP2 and the interleaved schedule."""
    for layout in (TP2PP2, LAYOUTS[4]):
        save = str(tmp_path / layout[0])
        flags = ["--loss", "mile", "--train-iters", "4", "--model-style", "llama"]
        full = run(dist_pool, layout, *flags)[0]
        first, _, saved = run(dist_pool, layout, *flags, "--save", save, "--save-iters", "2", "--exit-interval", "2")
        assert saved == [2] and [m[0] for m in first] == [1, 2]
        second = run(dist_pool, layout, *flags, "--load", save)[0]
        assert [m[0] for m in second] == [3, 4]
        for a, b in zip(first + second, full):
            assert _close(a[1:], b[1:], 1e-6), (layout[0], a, b)
        # Atomic layout: the tracker names a complete, self-describing checkpoint; no temp dirs.
        assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "2"
        assert sorted(os.listdir(save)) == ["iter_0000002", "latest_checkpointed_iteration.txt"]
        saved_args = json.load(open(os.path.join(save, "iter_0000002", "args.json")))
        assert saved_args["loss"] == "mile" and saved_args["padded_vocab_size"] == 256


def test_resume_into_another_layout(dist_pool, tmp_path):
    """A TP2xPP2 checkpoint (model and optimizer) resumes under PP2xVPP2: dist_checkpointing
    reshards it, and iterations 3.. match the uninterrupted run (dropout off, layout-invariant)."""
    save = str(tmp_path / "ckpt")
    flags = ["--loss", "mile", "--train-iters", "4", "--model-style", "llama", *NO_DROPOUT]
    full = run(dist_pool, LAYOUTS[0], *flags)[0]
    run(dist_pool, TP2PP2, *flags, "--save", save, "--save-iters", "2", "--exit-interval", "2")
    resumed = run(dist_pool, LAYOUTS[4], *flags, "--load", save)[0]
    assert [m[0] for m in resumed] == [3, 4]
    for a, b in zip(resumed, full[2:]):
        assert _close(a[1:], b[1:], 1e-5), (a, b)


def test_load_without_a_checkpoint_starts_from_scratch(dist_pool, tmp_path):
    """--load on an empty or a missing directory trains from iteration 1, as the run without --load
    (Megatron-LM's behaviour: the first job of a chain that saves to and loads from one directory)."""
    flags = ["--train-iters", "2", *NO_DROPOUT]
    fresh = run(dist_pool, LAYOUTS[0], *flags)[0]
    (tmp_path / "empty").mkdir()
    for load in (tmp_path / "empty", tmp_path / "missing"):
        metrics = run(dist_pool, LAYOUTS[0], *flags, "--load", str(load))[0]
        assert [m[0] for m in metrics] == [1, 2]
        for a, b in zip(metrics, fresh):
            assert _close(a[1:], b[1:], 1e-6), (load, a, b)


def _load_and_score(checkpoint_dir):
    import torch

    from megatron_mile.training.checkpointing import load_model_for_eval

    model, args = load_model_for_eval(checkpoint_dir)
    tokens = torch.arange(2 * args.seq_length).reshape(2, -1) % 250
    positions = torch.arange(args.seq_length).expand(2, -1)
    with torch.no_grad():
        logits = model(tokens, positions, None)
        model(tokens, positions, None, labels=(tokens + 1) % 250)
    return logits, model.token_statistics.cross_entropy, args.tensor_model_parallel_size


def test_load_model_for_eval_reshards_any_layout(dist_pool, tmp_path):
    """Checkpoints of TP2xPP2 and of the interleaved PP2xVPP2 run rebuild as one TP1/PP1 model with
    the same predictions (the two runs train the same model)."""
    import torch

    dirs = {}
    for layout in (TP2PP2, LAYOUTS[4]):
        dirs[layout[0]] = str(tmp_path / layout[0])
        run(dist_pool, layout, "--loss", "mile", "--model-style", "llama", "--train-iters", "2", *NO_DROPOUT,
            "--save", dirs[layout[0]])
    # parallel_state at TP=PP=1 (DP=4): every rank loads, as the collective load requires.
    a = dist_pool.run(_load_and_score, dirs["TP2xPP2"], tp=1, pp=1)[0]
    b = dist_pool.run(_load_and_score, dirs["PP2xVPP2xDP2"], tp=1, pp=1)[0]
    assert a[0].shape == (2, 32, 256) and a[2] == 2
    assert torch.allclose(a[0], b[0], atol=1e-4)
    assert torch.allclose(a[1], b[1], atol=1e-4)


@pytest.fixture(scope="module")
def real_text(tmp_path_factory):
    """A ~1 MB real-English corpus, a 512-piece sentencepiece model and per-domain datasets."""
    from megatron_mile.data import preprocess, train_tokenizer
    from megatron_mile.data.blend import blend_weights, load_datasets
    from megatron_mile.data.corpus import write_text_corpus

    root = tmp_path_factory.mktemp("real_text")
    corpus = str(root / "corpus.jsonl")
    write_text_corpus(corpus, min_bytes=2**20, seed=0)
    train_tokenizer.main(["--input", corpus, "--model-prefix", str(root / "tok"), "--vocab-size", "512"])
    preprocess.main(["--input", corpus, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                     str(root / "tok.model"), "--output-prefix", str(root / "data"), "--split-by",
                     "meta.pile_set_name", "--append-eod", "--quiet"])
    # Domains with a handful of documents, so that each has a validation split.
    datasets = [d for d in load_datasets([str(root / "mile-manifests" / "data.json")]) if d["documents"] >= 5]
    blend = blend_weights(datasets)
    data_path = [x for weight, prefix in blend for x in (str(weight), prefix)]
    return root, data_path


def test_loss_falls_on_real_text_with_per_domain_validation(dist_pool, real_text):
    root, data_path = real_text
    flags = ["--data-path", *data_path, "--split", "80,20,0", "--tokenizer-type", "SentencePieceTokenizer",
             "--tokenizer-model", str(root / "tok.model"), "--data-cache-path", str(root / "cache"),
             "--model-style", "llama", "--num-layers", "2", "--seq-length", "64", "--lr", "3e-3",
             "--train-iters", "24", "--eval-interval", "24", "--eval-iters", "1", "--loss", "mile",
             "--log-json", str(root / "log.jsonl"), "--log-interval", "4"]
    per_rank = dist_pool.run(_train, COMMON + flags + ["--tensor-model-parallel-size", "2"], tp=2, pp=1)
    metrics, valid, _ = per_rank[0]
    losses = [m[2] for m in metrics]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3, losses  # against its own start
    domains = {v["dataset"] for v in valid}
    assert "all" in domains and len(domains) >= 3  # the blend and its domains
    records = [json.loads(line) for line in open(root / "log.jsonl")]
    train = [r for r in records if r["split"] == "train"]
    assert [r["iteration"] for r in train] == [4, 8, 12, 16, 20, 24]
    assert {"lm_loss", "loss", "entropy", "mean_weight", "lr", "grad_norm", "tokens_per_s"} <= set(train[0])
    assert len([r for r in records if r["split"] == "valid"]) == len(domains)
