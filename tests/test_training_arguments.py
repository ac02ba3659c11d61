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
    assert args.data_path == ["0.3", "a", "0.7", "b"]


@pytest.mark.parametrize("extra, world, message", [
    ("--tensor-model-parallel-size 3", None, "--num-attention-heads (4) must be divisible by --tensor-model-parallel-size (3)"),
    ("--pipeline-model-parallel-size 3", None, "--num-layers (4) must be divisible by --pipeline-model-parallel-size (3)"),
    ("--tensor-model-parallel-size 2", 3, "world size (3) must be divisible"),
    ("--global-batch-size 6", 4, "--global-batch-size (6) must be divisible by --micro-batch-size (2) x data-parallel size (4)"),
    ("--pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 1 --global-batch-size 6", 2,
     "interleaved schedule needs micro-batches per step (3) to be a multiple"),
    ("--pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 3", None, "layers per pipeline stage (2)"),
    ("--save-interval 5", None, "need --save DIR"),
    ("--mile-sigma -1 --loss mile", None, "mile_sigma must be >= 0"),
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
