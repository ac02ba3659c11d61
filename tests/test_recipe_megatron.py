"""A Megatron-LM GPT recipe runs unchanged with ``--loss mile``; every Megatron-LM flag is classified.

Fixtures are facts from Megatron-LM ``core_v0.16.1``: the option strings of its ``pretrain_gpt.py``
(``tests/fixtures/megatron_lm_core_v0.16.1_flags.txt``) and the flags of its two GPT example
recipes, copied below. Expected classes of the LLaMA-3 recipe's flags are written out by hand.
"""

import math
import os
import re

import pytest

from megatron_mile.training import megatron_flags
from megatron_mile.training.arguments import ConfigError, build_parser, parse_args

WORLD_SIZE = 2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

with open(os.path.join(ROOT, "tests", "fixtures", "megatron_lm_core_v0.16.1_flags.txt")) as _f:
    MEGATRON_FLAGS = [line.strip() for line in _f if line.startswith("--")]

# examples/gpt3/train_gpt3_175b_distributed.sh (core_v0.16.1): every flag, in order, with its value.
# VALUES are the recipe's; the test scales the sizes down (same flags) to run on 2 CPU processes.
GPT3_RECIPE = {
    "--num-layers": "96", "--hidden-size": "12288", "--num-attention-heads": "96", "--seq-length": "2048",
    "--max-position-embeddings": "2048", "--attention-backend": "auto",
    "--micro-batch-size": "1", "--global-batch-size": "1536", "--rampup-batch-size": "16 16 5859375",
    "--train-iters": "500000", "--weight-decay": "0.1", "--adam-beta1": "0.9", "--adam-beta2": "0.95",
    "--init-method-std": "0.006", "--clip-grad": "1.0", "--fp16": None, "--lr": "6.0e-5",
    "--lr-decay-style": "cosine", "--min-lr": "6.0e-6", "--lr-warmup-fraction": ".001",
    "--lr-decay-iters": "430000",
    "--tensor-model-parallel-size": "8", "--pipeline-model-parallel-size": "16",
    "--data-path": "$DATA_PATH", "--vocab-file": "$VOCAB_FILE", "--merge-file": "$MERGE_FILE",
    "--split": "949,50,1",
    "--log-interval": "100", "--save-interval": "10000", "--eval-interval": "1000",
    "--save": "$CHECKPOINT_PATH", "--load": "$CHECKPOINT_PATH", "--eval-iters": "10",
    "--tensorboard-dir": "$TENSORBOARD_LOGS_PATH",
}

# examples/llama/train_llama3_8b_h100_fp8.sh (core_v0.16.1): its flags and the class each has here.
LLAMA3_RECIPE_CLASSES = {
    **{flag: "supported" for flag in (
        "--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads", "--group-query-attention",
        "--num-query-groups", "--kv-channels", "--seq-length", "--max-position-embeddings",
        "--position-embedding-type", "--rotary-base", "--rotary-percent", "--attention-dropout",
        "--hidden-dropout", "--swiglu", "--normalization", "--init-method-std", "--attention-backend",
        "--untie-embeddings-and-output-weights", "--disable-bias-linear", "--micro-batch-size",
        "--global-batch-size", "--train-samples", "--lr-decay-samples", "--lr-warmup-samples", "--lr",
        "--min-lr", "--lr-decay-style", "--clip-grad", "--weight-decay", "--adam-beta1", "--adam-beta2",
        "--bf16", "--exit-duration-in-mins", "--tensor-model-parallel-size", "--context-parallel-size",
        "--sequence-parallel", "--use-distributed-optimizer", "--overlap-grad-reduce",
        "--overlap-param-gather", "--mock-data", "--tokenizer-type", "--vocab-size", "--data-cache-path",
        "--split", "--num-workers", "--data-path", "--tokenizer-model", "--log-interval", "--eval-iters",
        "--eval-interval", "--save-interval", "--ckpt-format", "--distributed-timeout-minutes", "--save",
        "--load", "--tensorboard-dir")},
    **{flag: "ignored" for flag in (
        "--use-mcore-models", "--cross-entropy-loss-fusion", "--calculate-per-token-loss", "--manual-gc",
        "--empty-unused-memory-level", "--no-create-attention-mask-in-dataloader", "--no-mmap-bin-files",
        "--log-throughput", "--profile", "--profile-step-start", "--profile-step-end")},
    **{flag: "rejected" for flag in (
        "--apply-layernorm-1p", "--decoupled-lr", "--decoupled-min-lr", "--grad-reduce-in-bf16",
        "--fp8-format", "--fp8-amax-history-len", "--fp8-amax-compute-algo", "--fp8-param-gather",
        "--tiktoken-pattern")},
}

# The issue's example: a Megatron-LM user's flags that used to stop with 'unrecognized arguments'.
ISSUE_FLAGS = ["--use-flash-attn", "--recompute-activations", "--wandb-project", "x", "--fp16",
               "--train-samples", "100"]

TINY = ("--num-layers 2 --hidden-size 32 --num-attention-heads 2 --seq-length 16 --micro-batch-size 1 "
        "--lr 1e-3 --mock-data").split()


def supported_flags():
    return {o for action in build_parser()._actions for o in action.option_strings
            if not action.dest.startswith("ignored_megatron_flag__")}


def class_of(flag):
    if flag in supported_flags():
        return "supported"
    if flag in megatron_flags.ignored_flags():
        return "ignored"
    if flag in megatron_flags.rejected_flags():
        return "rejected"
    return None


def test_every_megatron_flag_has_exactly_one_class():
    supported, ignored, rejected = supported_flags(), set(megatron_flags.ignored_flags()), \
        set(megatron_flags.rejected_flags())
    assert len(MEGATRON_FLAGS) == 680
    for flag in MEGATRON_FLAGS:
        classes = [name for name, group in (("supported", supported), ("ignored", ignored), ("rejected", rejected))
                   if flag in group]
        assert len(classes) == 1, (flag, classes)
    assert not (ignored | rejected) - set(MEGATRON_FLAGS), "a classified flag that Megatron-LM does not have"


def test_docs_table_lists_every_ignored_and_rejected_flag():
    with open(os.path.join(ROOT, "docs", "training.md")) as f:
        text = f.read()
    section = text[text.index("## Megatron-LM flags"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    listed = set(re.findall(r"`(--[A-Za-z0-9_-]+)", section))
    missing = (set(megatron_flags.ignored_flags()) | set(megatron_flags.rejected_flags())) - listed
    assert not missing, sorted(missing)
    assert megatron_flags.MEGATRON_LM_VERSION in section


def test_recipe_flag_classes():
    for flag in GPT3_RECIPE:
        assert class_of(flag) == "supported", flag
    for flag, expected in LLAMA3_RECIPE_CLASSES.items():
        assert class_of(flag) == expected, (flag, class_of(flag), expected)


def test_the_issues_flags_parse_with_megatron_meanings():
    args = parse_args(TINY + ISSUE_FLAGS)
    assert args.attention_backend == "flash"  # --use-flash-attn
    assert args.recompute_granularity == "selective"  # --recompute-activations
    assert args.fp16 and args.train_samples == 100 and args.train_iters is None and args.lr_decay_samples == 100
    assert args.wandb_project == "x"


def test_ignored_flags_warn_one_line_each_and_change_nothing(capsys):
    ignored = megatron_flags.ignored_flags()
    extra = []
    for flag, (nargs, _) in ignored.items():
        extra += [flag] + (["7"] if nargs == 1 else ["1", "2"] if nargs == "*" else [])
    plain = vars(parse_args(TINY + ["--train-iters", "3"]))
    capsys.readouterr()
    with_ignored = vars(parse_args(TINY + ["--train-iters", "3"] + extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(ignored)
    for line, flag in zip(err, ignored):
        assert line.startswith(f"mile-pretrain: warning: {flag} accepted and ignored (")
    assert sorted(with_ignored.pop("ignored_megatron_flags")) == sorted(ignored)
    plain.pop("ignored_megatron_flags")
    assert with_ignored == plain


@pytest.mark.parametrize("flag", sorted(megatron_flags.rejected_flags()))
def test_rejected_flags_stop_naming_the_flag_and_the_table(flag):
    with pytest.raises(ConfigError) as info:
        parse_args(TINY + ["--train-iters", "3", flag, "1"])
    message = str(info.value)
    assert f"{flag} (" in message and megatron_flags.DOCS_SECTION in message and "\n" not in message


def test_unknown_flag_is_one_line_pointing_to_help(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(TINY + ["--train-iters", "3", "--no-such-flag"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "mile-pretrain: error: unrecognized arguments: --no-such-flag (see --help)"]


# --- the GPT-3 recipe, trained ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_dataset(tmp_path_factory):
    """A small GPT-2 BPE vocabulary and an indexed dataset made with it (the recipe's data flags)."""
    from megatron_mile.data import preprocess
    from megatron_mile.data.small_tokenizers import train_small_gpt2

    work = tmp_path_factory.mktemp("gpt3_recipe")
    words = "the model reads a token and predicts the next one while the loss weighs each token".split()
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40 + i % 13)) for i in range(300)]
    vocab, merges = train_small_gpt2(texts, str(work / "tok"), vocab_size=400)
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join('{"text": "%s"}\n' % t for t in texts))
    preprocess.main(["--input", str(corpus), "--output-prefix", str(work / "gpt"), "--tokenizer-type",
                     "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges, "--append-eod",
                     "--workers", "1"])
    other = work / "other.jsonl"  # a second dataset for the per-split blends
    other.write_text("".join('{"text": "%s"}\n' % " ".join(reversed(t.split())) for t in texts[:120]))
    preprocess.main(["--input", str(other), "--output-prefix", str(work / "other"), "--tokenizer-type",
                     "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges, "--append-eod",
                     "--workers", "1"])
    return {"$DATA_PATH": str(work / "gpt_text_document"), "$VOCAB_FILE": vocab, "$MERGE_FILE": merges,
            "$CHECKPOINT_PATH": str(work / "ckpt"), "$TENSORBOARD_LOGS_PATH": str(work / "tb"),
            "other": str(work / "other_text_document")}


# The recipe's sizes scaled to two CPU processes; every other value as the recipe has it.
SCALED = {"--num-layers": "2", "--hidden-size": "32", "--num-attention-heads": "4", "--seq-length": "32",
          "--max-position-embeddings": "32", "--global-batch-size": "8", "--rampup-batch-size": "2 2 8",
          "--train-iters": "6", "--lr-decay-iters": "5", "--lr-warmup-fraction": ".2",
          "--tensor-model-parallel-size": "1", "--pipeline-model-parallel-size": "2", "--log-interval": "2",
          "--save-interval": "3", "--eval-interval": "3", "--eval-iters": "1", "--split": "90,10,0"}


def _recipe_argv(paths):
    argv = []
    for flag, value in GPT3_RECIPE.items():
        value = SCALED.get(flag, value)
        argv.append(flag)
        if value is not None:
            argv += [paths.get(v, v) for v in value.split()]
    return argv + ["--loss", "mile", "--num-workers", "0"]


def _train(argv):
    from megatron_mile.pretrain_gpt import pretrain

    result = pretrain(argv)
    return [(m["iteration"], m["global_batch_size"], m["loss_scale"], m["skipped"], m["loss"], m["lr"])
            for m in result.train], result.checkpoints, [v["lm_loss"] for v in result.valid]


def test_gpt3_recipe_trains_with_mile_on_cpu(dist_pool, gpt2_dataset):
    """The recipe's flags at PP2 train: the global batch ramps by Megatron-LM's rule, and fp16 runs
    megatron's dynamic loss scaler (from 2^32 the first steps overflow; the scale halves from the
    second overflow on, hysteresis 2; a skipped step leaves the learning rate where it was)."""
    train, checkpoints, valid = dist_pool.run(_train, _recipe_argv(gpt2_dataset), pp=2)[0]
    assert [t[0] for t in train] == [1, 2, 3, 4, 5, 6]
    # Megatron's ramp (independent arithmetic): increments = (8 - 2) / 2 = 3, one per 8/3 samples.
    consumed, expected_batches = 0, []
    for _ in range(6):
        batch = 8 if consumed > 8 else 2 + int(consumed / (8 / 3)) * 2
        expected_batches.append(batch)
        consumed += batch
    assert [t[1] for t in train] == expected_batches
    scale, hysteresis, expected_scales = 2.0 ** 32, 2, []
    for t in train:
        if t[3]:  # overflow: Megatron's DynamicGradScaler
            hysteresis -= 1
            if hysteresis <= 0:
                scale /= 2
        expected_scales.append(scale)
    assert [t[2] for t in train] == expected_scales and train[0][3], "no overflow at 2^32?"
    for before, after in zip(train, train[1:]):
        if before[3]:
            assert after[5] == before[5]  # the schedule did not advance
    assert all(math.isfinite(t[4]) for t in train) and all(math.isfinite(v) for v in valid)
    assert checkpoints == [3, 6]


def _valid_sets(argv):
    from megatron_mile.pretrain_gpt import pretrain

    result = pretrain(argv)
    return len(result.train), sorted({v["dataset"] for v in result.valid}), [v["lm_loss"] for v in result.valid]


def test_separate_split_blends(dist_pool, gpt2_dataset):
    """--train-data-path / --valid-data-path instead of --data-path + --split: training reads its
    blend, validation the other one whole, reported as a blend and per dataset."""
    common = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
              "--micro-batch-size", "1", "--global-batch-size", "2", "--lr", "1e-3", "--train-iters", "2",
              "--eval-iters", "2", "--eval-interval", "2", "--vocab-file", gpt2_dataset["$VOCAB_FILE"],
              "--merge-file", gpt2_dataset["$MERGE_FILE"], "--num-workers", "0"]
    train, other = gpt2_dataset["$DATA_PATH"], gpt2_dataset["other"]
    iterations, names, losses = dist_pool.run(
        _valid_sets, common + ["--train-data-path", train, "--valid-data-path", "1", train, "2", other])[0]
    assert iterations == 2 and names == ["all", "gpt", "other"] and all(math.isfinite(x) for x in losses)
    for bad, message in ((["--valid-data-path", other], "need --train-data-path"),
                         (["--train-data-path", train], "needs --valid-data-path"),
                         (["--train-data-path", train, "--valid-data-path", other, "--data-path", train],
                          "give exactly one of --data-path")):
        with pytest.raises(ConfigError, match=message):
            parse_args(common + bad)
