"""Training refuses data made with another tokenizer: before the first step from the manifest
(type and tokenizer-file hash) or, without one, from the largest id at the start of each .bin;
and in the batch path, an id the vocabulary does not have never reaches the embedding.

The data are written by megatron-core's own ``IndexedDatasetBuilder`` (ids chosen by the test) or
by ``mile-preprocess`` with a sentencepiece model trained here."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_mile.data import corpus as corpus_mod
from megatron_mile.data.preprocess import main as preprocess_main
from megatron_mile.data.small_tokenizers import train_small_sentencepiece
from megatron_mile.training.arguments import ConfigError, parse_args

WORLD_SIZE = 1
TINY = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --micro-batch-size 2 "
        "--global-batch-size 2 --train-iters 2 --lr 1e-3 --eval-iters 0 --log-interval 1000 --num-workers 0 "
        "--use-cpu-initialization --make-vocab-size-divisible-by 64").split()


def write_megatron_dataset(prefix, documents):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for doc in documents:
        builder.add_document(np.asarray(doc, dtype=np.uint16), [len(doc)])
    builder.finalize(prefix + ".idx")
    return prefix


@pytest.fixture(scope="module")
def sp_data(tmp_path_factory):
    """Datasets preprocessed with tokenizer A; tokenizer B trained on other text, same size."""
    root = tmp_path_factory.mktemp("tok")
    corpus_a, corpus_b = str(root / "a.jsonl"), str(root / "b.jsonl")
    corpus_mod.write_text_corpus(corpus_a, min_bytes=300_000, seed=1)
    corpus_mod.write_text_corpus(corpus_b, min_bytes=200_000, seed=2)
    model_a = train_small_sentencepiece(corpus_a, str(root / "a"), vocab_size=500)
    model_b = train_small_sentencepiece(corpus_b, str(root / "b"), vocab_size=500)
    assert preprocess_main(["--input", corpus_a, "--output-prefix", str(root / "data"), "--tokenizer-type",
                            "SentencePieceTokenizer", "--tokenizer-model", model_a, "--append-eod",
                            "--quiet"]) == 0
    return str(root / "data_text_document"), model_a, model_b


def sp_flags(prefix, model):
    return TINY + ["--data-path", prefix, "--split", "100,0,0", "--tokenizer-type", "SentencePieceTokenizer",
                   "--tokenizer-model", model]


def test_data_made_with_another_tokenizer_stops_before_the_first_step(sp_data):
    prefix, model_a, model_b = sp_data
    parse_args(sp_flags(prefix, model_a), world_size=1)  # its own tokenizer: fine
    with pytest.raises(ConfigError) as err:
        parse_args(sp_flags(prefix, model_b), world_size=1)
    message = str(err.value)
    assert prefix in message and "mile-manifests" in message and os.path.abspath(model_a) in message
    assert os.path.abspath(model_b) in message
    with pytest.raises(ConfigError, match=f"{prefix}.*NullTokenizer"):
        parse_args(TINY + ["--data-path", prefix, "--split", "100,0,0", "--tokenizer-type", "NullTokenizer",
                           "--vocab-size", "499"], world_size=1)
    # The command line: exit 2, the dataset named, before any process group or model.
    proc = subprocess.run([sys.executable, "-m", "megatron_mile.pretrain_gpt", *sp_flags(prefix, model_b)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and prefix in proc.stderr, proc.stderr[-2000:]


def test_data_without_manifest_gets_a_bounded_id_check(tmp_path):
    rng = np.random.default_rng(0)
    prefix = write_megatron_dataset(str(tmp_path / "plain"),
                                    [rng.integers(0, 700, 50).tolist() + [700] for _ in range(20)])
    flags = TINY + ["--data-path", prefix, "--split", "100,0,0", "--tokenizer-type", "NullTokenizer"]
    parse_args(flags + ["--vocab-size", "700"], world_size=1)  # ids 0..700, 700 the eod: fine
    with pytest.raises(ConfigError, match=f"{prefix}: token id 700 in its first .* ids 0..699"):
        parse_args(flags + ["--vocab-size", "699"], world_size=1)


def _train_and_report(argv, check_tokens):
    """In a pool rank: train, with the up-front check reading only ``check_tokens`` tokens."""
    from megatron_mile.pretrain_gpt import pretrain
    from megatron_mile.training import data

    data.MAX_ID_CHECK_TOKENS = check_tokens
    try:
        pretrain(argv)
    except Exception as e:  # noqa: BLE001 - report what the user would see
        return f"{type(e).__name__}: {e}"
    return "trained"


def test_an_id_past_the_vocabulary_never_reaches_the_embedding(dist_pool, tmp_path):
    """Ids past the vocabulary beyond the bounded check's window: the batch path names the dataset
    (the embedding alone would raise an IndexError, or on a GPU a device-side assert)."""
    rng = np.random.default_rng(1)
    good = [rng.integers(0, 100, 40).tolist() + [100] for _ in range(2)]
    bad = [rng.integers(0, 100, 39).tolist() + [150, 100] for _ in range(60)]  # 150: past the padded 128
    prefix = write_megatron_dataset(str(tmp_path / "late"), good + bad)
    argv = TINY + ["--data-path", prefix, "--split", "100,0,0", "--tokenizer-type", "NullTokenizer",
                   "--vocab-size", "100", "--data-cache-path", str(tmp_path / "cache")]
    (report,) = dist_pool.run(_train_and_report, argv, 80)
    assert report.startswith("ValueError: ") and prefix in report and "token id 150" in report, report
    (report,) = dist_pool.run(_train_and_report, argv, 1 << 22)  # the check up front sees it
    assert report.startswith("ConfigError: ") and f"{prefix}: token id 150" in report, report
