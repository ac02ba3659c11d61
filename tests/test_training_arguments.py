"""Flags of mile-pretrain: Megatron-LM semantics, and bad launches rejected before any collective."""

import argparse
import os
import subprocess
import sys

import pytest

from megatron_mile.training.arguments import (
    ConfigError,
    build_parser,
    parse_args,
    resolve_precision,
    save_iterations,
    should_save,
    validate_runtime,
)

TINY = ("--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --micro-batch-size 2 "
        "--train-iters 10 --lr 1e-3 --mock-data").split()


def args_of(extra="", world_size=None):
    return parse_args(TINY + extra.split(), world_size=world_size)


def test_megatron_defaults_and_derived_values():
    args = args_of("--global-batch-size 16", world_size=4)
    assert args.ffn_hidden_size == 4 * 64
    assert args.max_position_embeddings == 32
    assert args.num_query_groups == 4  # no GQA: one group per head
    assert args.lr_decay_iters == 10
    assert args.data_parallel_size == 4 and args.num_microbatches == 2
    assert args.tokenizer_type == "NullTokenizer" and args.vocab_size == 512  # mock data
    assert args.loss == "cross_entropy"  # Megatron's behaviour until --loss is given
    assert args.split == "969, 30, 1" and args.lr_decay_style == "linear"


def test_model_styles_fill_only_unset_switches():
    llama = args_of("--model-style llama")
    assert (llama.normalization, llama.swiglu, llama.position_embedding_type) == ("RMSNorm", True, "rope")
    assert llama.untie_embeddings_and_output_weights and llama.disable_bias_linear
    assert llama.ffn_hidden_size == int(4 * 64 * 2 / 3 / 64) * 64  # Megatron-LM's SwiGLU size
    gpt2 = args_of()
    assert (gpt2.normalization, gpt2.swiglu, gpt2.position_embedding_type) == ("LayerNorm", False, "learned_absolute")
    mixed = args_of("--model-style llama --normalization LayerNorm")
    assert mixed.normalization == "LayerNorm" and mixed.swiglu


def test_weighted_blend_and_split_parse(tmp_path):
    argv = [a for a in TINY if a != "--mock-data"]
    args = parse_args(argv + ["--data-path", "0.3", "a", "0.7", "b", "--tokenizer-type", "NullTokenizer",
                              "--vocab-size", "100", "--split", "98,2,0"])
    assert args.data_path == ["0.3", os.path.abspath("a"), "0.7", os.path.abspath("b")]


def test_bad_values_are_one_line_argparse_errors(capsys):
    with pytest.raises(SystemExit) as info:
        args_of("--mile-sigma -1 --loss mile")
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mile-pretrain: error: argument --mile-sigma: must be >= 0, got '-1' (see --help)"]


@pytest.mark.parametrize("blend", [["a"], ["a", "b"], ["a", "b", "c"], ["30", "a", "70", "b"], ["1", "a"],
                                   ["0.5", "x/y", "2e-1", "z"]])
def test_blend_rule_is_megatrons(blend):
    from megatron.core.datasets.utils import get_blend_from_list

    from megatron_mile.training.arguments import split_blend

    prefixes, weights = split_blend(blend)
    assert (prefixes, weights) == tuple(get_blend_from_list(blend))


def test_paths_stored_with_a_checkpoint_are_absolute(tmp_path, monkeypatch):
    """args.json holds the parsed flags: tokenizer files, data prefixes and the index cache are made
    absolute when parsed, so tools reading a checkpoint work from any directory."""
    monkeypatch.chdir(tmp_path)
    argv = [a for a in TINY if a != "--mock-data"]
    args = parse_args(argv + ["--train-data-path", "2", "data/a", "1", "data/b", "--valid-data-path", "data/c",
                              "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", "tok/vocab.json",
                              "--merge-file", "../merges.txt", "--data-cache-path", "cache"])
    assert args.train_data_path == ["2", str(tmp_path / "data/a"), "1", str(tmp_path / "data/b")]
    assert args.valid_data_path == [str(tmp_path / "data/c")]
    assert args.vocab_file == str(tmp_path / "tok/vocab.json")
    assert args.merge_file == str(tmp_path.parent / "merges.txt")
    assert args.data_cache_path == str(tmp_path / "cache")
    sp = parse_args(argv + ["--data-path", "d", "--tokenizer-type", "SentencePieceTokenizer",
                            "--tokenizer-model", "t.model"])
    assert sp.tokenizer_model == str(tmp_path / "t.model") and sp.data_path == [str(tmp_path / "d")]


@pytest.mark.parametrize("extra, world, message", [
    ("--tensor-model-parallel-size 3", None, "--num-attention-heads (4) must be divisible by --tensor-model-parallel-size (3)"),
    ("--pipeline-model-parallel-size 3", None, "--num-layers (4) must be divisible by --pipeline-model-parallel-size (3)"),
    ("--tensor-model-parallel-size 2", 3, "world size (3) must be divisible"),
    ("--global-batch-size 6", 4, "--global-batch-size (6) must be divisible by --micro-batch-size (2) x data-parallel size (4)"),
    ("--pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 1 --global-batch-size 6", 2,
     "interleaved schedule needs micro-batches per step (3) to be a multiple"),
    ("--pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 3", None, "layers per pipeline stage (2)"),
    ("--save-interval 5", None, "need --save DIR"),
    ("--sequence-parallel --tensor-model-parallel-size 2", None, "transformer_engine"),
])
def test_inconsistent_flags_are_rejected(extra, world, message):
    with pytest.raises(ConfigError) as err:
        args_of(extra, world_size=world)
    assert message in str(err.value)


def test_data_and_tokenizer_errors(tmp_path):
    argv = [a for a in TINY if a != "--mock-data"]
    with pytest.raises(ConfigError, match="exactly one of --data-path"):
        parse_args(argv)
    with pytest.raises(ConfigError, match="needs --tokenizer-model"):
        parse_args(argv + ["--data-path", "x", "--tokenizer-type", "SentencePieceTokenizer"])
    missing = str(tmp_path / "nothing_text_document")
    with pytest.raises(ConfigError, match="dataset file.* not found: .*nothing_text_document.bin"):
        parse_args(argv + ["--data-path", missing, "--tokenizer-type", "NullTokenizer", "--vocab-size", "9"],
                   world_size=1)
    with pytest.raises(SystemExit):  # argparse: unknown tokenizer / unknown flag
        build_parser().parse_args(TINY + ["--tokenizer-type", "BertWordPieceTokenizer"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(TINY + ["--no-such-flag"])


def test_save_schedules():
    args = args_of("--save /tmp/x --save-schedule exp --train-iters 100")
    assert save_iterations(args) == {1, 2, 4, 8, 16, 32, 64, 100}
    dense = args_of("--save /tmp/x --save-schedule exp --save-exp-per-doubling 2 --train-iters 10 --no-save-final")
    assert save_iterations(dense) == {1, 2, 3, 4, 6, 8}
    explicit = args_of("--save /tmp/x --save-iters 3,5 --save-interval 4 --train-iters 10")
    extra = save_iterations(explicit)
    assert [i for i in range(1, 11) if should_save(explicit, i, extra)] == [3, 4, 5, 8, 10]


def test_cli_reports_config_errors_without_starting(tmp_path):
    """The entry point exits with status 2 and one line, before creating any process group."""
    env = dict(os.environ, WORLD_SIZE="3", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_mile.pretrain_gpt", *TINY, "--tensor-model-parallel-size", "2"],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: world size (3) must be divisible by --tensor-model-parallel-size (2)" in proc.stderr


def test_validate_runtime_is_idempotent():
    args = args_of("--global-batch-size 8")
    validate_runtime(args, 2)
    first = argparse.Namespace(**vars(args))
    validate_runtime(args, 2)
    assert vars(args) == vars(first)


# --- precision -------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, cuda, expected", [
    ("", True, "bf16"),            # GPU default
    ("", False, "fp32"),           # CPU default
    ("--fp32", True, "fp32"),      # opt-out on GPU
    ("--bf16", False, "bf16"),     # explicit bf16 on CPU
    ("--bf16", True, "bf16"),
    ("--fp32", False, "fp32"),
])
def test_precision_defaults_to_bf16_on_gpu_only(extra, cuda, expected):
    args = args_of(extra)
    before = vars(args).copy()
    assert resolve_precision(args, cuda_available=cuda) == expected
    assert vars(args) == before  # pure


def test_bf16_and_fp32_exclude_each_other():
    with pytest.raises(ConfigError, match="at most one of --bf16, --fp16 and --fp32"):
        args_of("--bf16 --fp32")


# --- learning-rate schedule: rejected up front exactly where megatron's scheduler would assert ----

class _FakeOptimizer:
    def __init__(self):
        self.param_groups = [{"params": []}]


def _parse_unvalidated(extra):
    from megatron_mile.training import arguments

    args = build_parser().parse_args(TINY + extra.split())
    arguments._fill_defaults(args)
    return args


@pytest.mark.parametrize("extra, message", [
    ("--lr-warmup-iters 10", "warmup iterations (10, --lr-warmup-iters) must be fewer than the decay iterations (10"),
    ("--lr-warmup-iters 25", "warmup iterations (25, --lr-warmup-iters) must be fewer than the decay iterations (10"),
    ("--lr-warmup-iters 6 --lr-decay-iters 5", "must be fewer than the decay iterations (5, --lr-decay-iters"),
    ("--min-lr 1e-2", "need 0 <= --min-lr (0.01) <= --lr (0.001)"),
    ("--lr-warmup-init 1e-2", "need 0 <= --lr-warmup-init (0.01) <= --lr (0.001)"),
    ("--weight-decay -0.1", "--weight-decay must be >= 0"),
])
def test_scheduler_inconsistencies_are_config_errors(extra, message):
    """Each case is one megatron's OptimizerParamScheduler asserts on; we reject it with a message."""
    from megatron_mile.pretrain_gpt import build_scheduler

    with pytest.raises(ConfigError) as err:
        args_of(extra)
    assert message in str(err.value)
    with pytest.raises(AssertionError):  # what the run would have died of, after building the model
        build_scheduler(_parse_unvalidated(extra), _FakeOptimizer())


@pytest.mark.parametrize("extra, message", [
    ("--lr-warmup-fraction 1.0", "--lr-warmup-fraction must be in [0, 1)"),
    ("--lr-warmup-fraction 0.1 --lr-warmup-iters 2", "only one of --lr-warmup-iters and --lr-warmup-fraction"),
    ("--lr-decay-style WSD --lr-wsd-decay-iters 20", "--lr-wsd-decay-iters (20) must be in [1, decay iterations (10)]"),
])
def test_warmup_fraction_and_wsd_checks(extra, message):
    with pytest.raises(ConfigError) as err:
        args_of(extra)
    assert message in str(err.value)


@pytest.mark.parametrize("extra", ["--lr-warmup-iters 9", "--lr-warmup-iters 3 --lr-decay-iters 4",
                                   "--lr-warmup-fraction 0.9 --lr-decay-style cosine --min-lr 1e-3",
                                   "--lr-decay-style WSD --lr-wsd-decay-iters 10 --lr-warmup-iters 2",
                                   "--train-iters 0 --lr-warmup-iters 5"])
def test_accepted_schedules_run_through_megatron(extra):
    """The boundary cases validation accepts construct and step megatron's scheduler to the end."""
    from megatron_mile.pretrain_gpt import build_scheduler

    args = args_of(extra)
    optimizer = _FakeOptimizer()
    scheduler = build_scheduler(args, optimizer)
    for it in range(1, args.train_iters + 1):
        scheduler.step(increment=1)
        lr = optimizer.param_groups[0]["lr"]
        assert 0 <= lr <= args.lr + 1e-12
        if it > args.lr_warmup_iters:  # warmup starts from --lr-warmup-init, below --min-lr
            assert lr >= args.min_lr - 1e-12


# --- --load ----------------------------------------------------------------------------------------

def test_load_from_nothing_starts_from_scratch(tmp_path):
    from megatron_mile.training.checkpointing import find_checkpoint

    missing = find_checkpoint(str(tmp_path / "nope"))
    assert missing.iteration is None and missing.message.startswith("WARNING:") and "does not exist" in missing.message
    (tmp_path / "iter_0000003.tmp").mkdir()  # a crashed save leaves only a temp dir
    empty = find_checkpoint(str(tmp_path))
    assert empty.iteration is None and "starts from scratch" in empty.message
    assert not empty.message.startswith("WARNING")


@pytest.mark.parametrize("setup, message", [
    ({"latest_checkpointed_iteration.txt": "7"}, "names iteration 7, but .*iter_0000007 does not exist"),
    ({"latest_checkpointed_iteration.txt": "7", "iter_0000007/args.json": "{}"},
     "iter_0000007 is incomplete \\(no metadata.json"),
    ({"latest_checkpointed_iteration.txt": "seven"}, "should hold an iteration number, found 'seven'"),
    ({"iter_0000004/args.json": "{}"}, "has checkpoints \\(iterations \\[4\\]\\) but no latest_checkpointed_iteration.txt"),
])
def test_load_from_a_broken_checkpoint_raises(tmp_path, setup, message):
    from megatron_mile.training.checkpointing import CheckpointError, find_checkpoint, load_checkpoint

    for name, text in setup.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(CheckpointError, match=message):
        find_checkpoint(str(tmp_path))
    with pytest.raises(CheckpointError, match=message):  # also before touching the model
        load_checkpoint(str(tmp_path), None, None, None, args_of())


# --- mock data -------------------------------------------------------------------------------------

def test_mock_data_index_grows_with_the_run_not_with_megatrons_corpus():
    """The mock train split indexes what the run needs (megatron's default corpus indexed 2.1M
    samples per split at seq 32 on every rank); samples keep megatron's mock pattern."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder

    from megatron_mile.data.tokenizers import build_tokenizer
    from megatron_mile.training.data import SmallMockGPTDataset, _config

    args = args_of("--vocab-size 255")
    tokenizer = build_tokenizer("NullTokenizer", vocab_size=255)
    sizes = {}
    for samples in (80, 200_000):
        train, _, _ = BlendedMegatronDatasetBuilder(
            SmallMockGPTDataset, [samples, 0, 0], lambda: True, _config(args, tokenizer, None)).build()
        assert len(train) >= samples
        sizes[samples] = len(train)
    assert sizes[80] < 50_000 and sizes[200_000] < 300_000
    sample = train[5]
    tokens, labels = sample["tokens"], sample["labels"]
    assert tokens.shape == labels.shape == (32,)
    assert (labels[:-1] == tokens[1:]).all()
    # consecutive tokens count up by one, except around an end-of-document token
    steps = (tokens[1:] - tokens[:-1]) % 255
    assert ((steps == 1) | (tokens[1:] == tokenizer.eod) | (tokens[:-1] == tokenizer.eod)).all()


def test_a_split_shorter_than_one_sample_is_a_config_error(tmp_path):
    """A split megatron cannot draw samples from is rejected up front, naming the dataset: in an
    unweighted blend fewer than seq_length + 1 tokens (megatron asserts), in a weighted one no token
    (GPTDataset loops forever)."""
    import numpy as np

    from megatron_mile.data.indexed import IndexedDatasetWriter

    prefix = str(tmp_path / "small_text_document")
    writer = IndexedDatasetWriter(prefix, np.uint16)
    lengths = np.array([200] * 9 + [10], dtype=np.int32)  # the last 10% is one 10-token document
    writer.add_documents(np.arange(lengths.sum()) % 50, lengths)
    writer.finalize()
    argv = [a for a in TINY if a != "--mock-data"] + [
        "--data-path", prefix, "--tokenizer-type", "NullTokenizer", "--vocab-size", "64",
        "--eval-iters", "1", "--eval-interval", "5"]
    with pytest.raises(ConfigError, match=r"validation split of .*small_text_document holds 10 tokens"):
        parse_args(argv + ["--split", "90,10,0"], world_size=1)
    parse_args(argv + ["--split", "80,20,0"], world_size=1)  # 2 documents, 210 tokens: fine
    # A weighted blend concatenates epochs, so 10 tokens suffice; 0 tokens never do.
    weighted = [a if a != prefix else f"1.0 {prefix}" for a in argv]
    weighted = " ".join(weighted).split()
    parse_args(weighted + ["--split", "90,10,0"], world_size=1)
    with pytest.raises(ConfigError, match=r"validation split .* holds 0 tokens, less than any token"):
        parse_args(weighted + ["--split", "95,5,0"], world_size=1)  # 0.5 of 10 documents rounds to none


def test_context_parallelism_needs_transformer_engine_attention(monkeypatch):
    from megatron_mile.training import arguments

    with pytest.raises(ConfigError, match="--context-parallel-size 2 needs transformer-engine attention"):
        args_of("--context-parallel-size 2", world_size=2)
    # With transformer-engine present, the data path is what is missing (one line, no hang later).
    monkeypatch.setattr(arguments, "cuda_available", lambda: True)
    monkeypatch.setattr(arguments, "transformer_engine_available", lambda: True)
    with pytest.raises(ConfigError, match="does not split sequences over context-parallel ranks"):
        args_of("--context-parallel-size 2 --transformer-impl transformer_engine --distributed-backend gloo",
                world_size=2)
