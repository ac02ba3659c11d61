"""The data helpers: real-text corpus, tokenizers, sentencepiece training, merge, blend."""

from __future__ import annotations

import json
import os
import pickle
import time

import numpy as np
import pytest

from megatron_mile.data import corpus as corpus_mod
from megatron_mile.data.blend import blend_weights, format_data_path
from megatron_mile.data.blend import main as blend_main
from megatron_mile.data.merge import main as merge_main
from megatron_mile.data.preprocess import main as preprocess_main
from megatron_mile.data.small_tokenizers import train_small_gpt2, train_small_huggingface
from megatron_mile.data.tokenizers import TOKENIZER_TYPES, build_tokenizer
from megatron_mile.data.train_tokenizer import main as train_main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("corpus") / "c.jsonl")
    stats = corpus_mod.write_text_corpus(path, min_bytes=1_000_000, seed=0)
    return path, stats


@pytest.fixture(scope="module")
def sp_model(corpus, tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("sp") / "m")
    assert train_main(["--input", corpus[0], "--model-prefix", prefix, "--vocab-size", "2000",
                       "--sample-bytes", "1e6"]) == 0
    return prefix + ".model"


def read_texts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------


def test_corpus_is_real_multi_domain_and_deterministic(corpus, tmp_path):
    path, stats = corpus
    recs = read_texts(path)
    assert stats.documents == len(recs) and stats.bytes == os.path.getsize(path) >= 1_000_000
    assert set(stats.domains) == {r["meta"]["pile_set_name"] for r in recs}
    assert len(stats.domains) >= 5
    assert all(isinstance(r["text"], str) and len(r["text"]) >= 200 for r in recs)
    # Real English: common words appear throughout.
    words = " ".join(r["text"] for r in recs).lower().split()
    assert sum(w in {"the", "of", "and", "to", "is"} for w in words) > 0.02 * len(words)
    again = str(tmp_path / "again.jsonl.zst")
    corpus_mod.write_text_corpus(again, min_bytes=1_000_000, seed=0)
    import zstandard

    with open(again, "rb") as f:
        assert zstandard.ZstdDecompressor().stream_reader(f).read() == open(path, "rb").read()
    other = str(tmp_path / "other.jsonl")
    corpus_mod.write_text_corpus(other, min_bytes=1_000_000, seed=1)
    assert open(other, "rb").read() != open(path, "rb").read()


def test_corpus_repeats_in_shuffled_epochs_when_text_runs_out(tmp_path, monkeypatch):
    docs = [corpus_mod.Document("D", f"document {i} " * 40) for i in range(5)]
    monkeypatch.setattr(corpus_mod, "collect_documents", lambda *a, **k: (docs, ["fake"]))
    stats = corpus_mod.write_text_corpus(str(tmp_path / "r.jsonl"), min_bytes=5000, seed=3,
                                         isolated=False)
    assert stats.repeated and stats.epochs > 1 and stats.unique_documents == 5
    assert stats.bytes >= 5000 and stats.documents > 5


def test_corpus_cli(tmp_path, capsys):
    out = str(tmp_path / "cli.jsonl")
    assert corpus_mod.main(["--output", out, "--min-mb", "0.2"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] >= 0.2 * 2**20


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------


def test_data_tools_import_neither_torch_nor_megatron():
    """Workers stay small and start fast: the preprocessing path never imports torch."""
    import subprocess
    import sys

    code = ("import sys, megatron_mile.data.preprocess, megatron_mile.data.merge, "
            "megatron_mile.data.blend, megatron_mile.data.train_tokenizer; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_tokenizer_type_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        build_tokenizer("BertWordPieceCase")
    for name in TOKENIZER_TYPES:
        assert name in str(err.value)


def test_sentencepiece_tokenizer(sp_model, corpus):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=sp_model)
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model)
    assert tok.vocab_size == 2000 == sp.get_piece_size()
    assert tok.eod == sp.eos_id() == 2
    text = read_texts(corpus[0])[0]["text"]
    assert tok.tokenize(text) == sp.encode_as_ids(text)
    assert [a.tolist() for a in tok.tokenize_arrays([text, ""])] == [sp.encode_as_ids(text), []]
    assert tok.detokenize(tok.tokenize("Hello world.")) == "Hello world."
    assert isinstance(tok.unique_identifiers, dict) and sp_model in str(tok.unique_identifiers)
    clone = pickle.loads(pickle.dumps(tok))  # workers rebuild it from the file
    assert clone.tokenize(text) == tok.tokenize(text)


def test_huggingface_tokenizer_local_only(corpus, tmp_path):
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer

    texts = [r["text"] for r in read_texts(corpus[0])]
    hf_dir = train_small_huggingface(texts, str(tmp_path / "hf"), vocab_size=1500)
    ref = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    for model in (hf_dir, os.path.join(hf_dir, "tokenizer.json")):
        tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=model)
        assert tok.tokenize(texts[1]) == ref.encode(texts[1], add_special_tokens=False).ids
        assert tok.eod == ref.token_to_id("</s>") and tok.vocab_size == ref.get_vocab_size()
    with pytest.raises(FileNotFoundError, match="no hub downloads"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_model="gpt2")


def test_huggingface_matches_transformers_megatron_path(corpus, tmp_path):
    """Megatron's HuggingFaceTokenizer: AutoTokenizer.tokenize + convert_tokens_to_ids."""
    pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    texts = [r["text"] for r in read_texts(corpus[0])][:20]
    hf_dir = train_small_huggingface(texts, str(tmp_path / "hf"), vocab_size=1500)
    ref = transformers.AutoTokenizer.from_pretrained(hf_dir)
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=hf_dir)
    for text in texts:
        assert tok.tokenize(text) == ref.convert_tokens_to_ids(ref.tokenize(text))
    assert tok.eod == ref.eos_token_id and tok.vocab_size == len(ref)


def test_gpt2_tokenizer(corpus, tmp_path):
    pytest.importorskip("tokenizers")
    texts = [r["text"] for r in read_texts(corpus[0])]
    vocab, merges = train_small_gpt2(texts, str(tmp_path / "g"), vocab_size=1000)
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
    with open(vocab) as f:
        table = json.load(f)
    assert tok.vocab_size == len(table) and tok.eod == table["<|endoftext|>"]
    text = "Hello <|endoftext|> world  \n\n  it's 2024!"
    ids = tok.tokenize(text)
    assert tok.eod not in ids  # "<|endoftext|>" in text is plain text, as in Megatron
    assert tok.detokenize(ids) == text
    with pytest.raises(FileNotFoundError, match="merge"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=None)


def test_null_tokenizer():
    tok = build_tokenizer("NullTokenizer", vocab_size=100)
    assert tok.tokenize("5 7 99") == [5, 7, 99]
    assert tok.vocab_size == 101 and tok.eod == 100
    assert tok.detokenize([1, 2]) == "1 2"
    with pytest.raises(ValueError):
        tok.tokenize("5 100")
    with pytest.raises(ValueError):
        build_tokenizer("NullTokenizer")


# ----------------------------------------------------------------------------------------------
# Tokenizer training
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type,vocab", [("bpe", 4000), ("unigram", 3000)])
def test_train_tokenizer_small_vocab_is_fast(corpus, tmp_path, model_type, vocab):
    import sentencepiece as spm

    prefix = str(tmp_path / model_type)
    start = time.perf_counter()
    assert train_main(["--input", corpus[0], "--model-prefix", prefix, "--vocab-size",
                       str(vocab), "--model-type", model_type, "--sample-bytes", "1e6"]) == 0
    assert time.perf_counter() - start < 60
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    assert sp.get_piece_size() == vocab and sp.eos_id() == 2
    text = read_texts(corpus[0])[3]["text"]
    assert sp.decode(sp.encode(text)).split() == text.split()  # byte fallback: lossless-ish


def test_train_tokenizer_bad_input_names_line(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "fine"}\n{"text": oops}\n')
    assert train_main(["--input", str(src), "--model-prefix", str(tmp_path / "m"),
                       "--vocab-size", "100"]) == 1
    assert f"{src}:2" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Merge and blend
# ----------------------------------------------------------------------------------------------


def _run_preprocess(src, prefix, sp_model, *extra):
    assert preprocess_main(["--input", src, "--output-prefix", prefix, "--quiet",
                            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                            sp_model, "--append-eod", *extra]) == 0


def _split_corpus(corpus_path, tmp_path):
    lines = open(corpus_path, encoding="utf-8").readlines()
    half = len(lines) // 2
    parts = []
    for i, chunk in enumerate((lines[:half], lines[half:])):
        p = tmp_path / f"part{i}.jsonl"
        p.write_text("".join(chunk), encoding="utf-8")
        parts.append(str(p))
    return parts


def test_merge_runs_per_domain_equals_single_run(corpus, sp_model, tmp_path):
    parts = _split_corpus(corpus[0], tmp_path)
    split = ["--split-by", "meta.pile_set_name"]
    for i, part in enumerate(parts):
        _run_preprocess(part, str(tmp_path / f"run{i}"), sp_model, *split)
    _run_preprocess(corpus[0], str(tmp_path / "whole"), sp_model, *split)
    manifests = tmp_path / "mile-manifests"
    assert merge_main(["--input", str(manifests / "run0.json"), str(manifests / "run1.json"),
                       "--output-prefix", str(tmp_path / "merged")]) == 0
    whole = json.load(open(manifests / "whole.json"))
    merged = json.load(open(manifests / "merged.json"))
    assert [d["domain"] for d in merged["datasets"]] == [d["domain"] for d in whole["datasets"]]
    for m, w in zip(merged["datasets"], whole["datasets"]):
        assert (m["documents"], m["tokens"], m["text_bytes"]) == (
            w["documents"], w["tokens"], w["text_bytes"])
        for ext in (".bin", ".idx"):
            assert open(tmp_path / (m["name"] + ext), "rb").read() == \
                open(tmp_path / (w["name"] + ext), "rb").read()


def test_merge_directory_matches_megatron_add_index(corpus, sp_model, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    parts = _split_corpus(corpus[0], tmp_path)
    os.makedirs(tmp_path / "d")
    for i, part in enumerate(parts):
        _run_preprocess(part, str(tmp_path / "d" / f"r{i}"), sp_model)
    assert merge_main(["--input", str(tmp_path / "d"), "--output-prefix",
                       str(tmp_path / "ours")]) == 0
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.uint16)
    for i in range(2):
        builder.add_index(str(tmp_path / "d" / f"r{i}_text_document"))
    builder.finalize(str(tmp_path / "ref.idx"))
    for ext in (".bin", ".idx"):
        assert open(tmp_path / f"ours{ext}", "rb").read() == open(tmp_path / f"ref{ext}",
                                                                  "rb").read()


def test_merge_rejects_mixed_dtypes(tmp_path, capsys):
    for name, vocab in (("small", 100), ("large", 70000)):
        src = tmp_path / f"{name}.jsonl"
        src.write_text('{"text": "1 2 3"}\n')
        assert preprocess_main(["--input", str(src), "--output-prefix", str(tmp_path / name),
                                "--quiet", "--tokenizer-type", "NullTokenizer", "--vocab-size",
                                str(vocab)]) == 0
    assert merge_main(["--input", str(tmp_path / "small_text_document"),
                       str(tmp_path / "large_text_document"),
                       "--output-prefix", str(tmp_path / "m")]) == 1
    assert "cannot merge" in capsys.readouterr().err
    assert not any(p.name.startswith("m.") for p in tmp_path.iterdir())


def test_blend_weights():
    ds = [{"prefix": "p/a", "domain": "Wikipedia (en)", "tokens": 300},
          {"prefix": "p/b", "domain": "Pile-CC", "tokens": 100},
          {"prefix": "q/b", "domain": "Pile-CC", "tokens": 600}]
    assert blend_weights(ds) == [(0.3, "p/a"), (0.1, "p/b"), (0.6, "q/b")]
    w = blend_weights(ds, weights={"Wikipedia_en": 0.5, "Pile-CC": 0.5})
    assert [round(x, 6) for x, _ in w] == [0.5, round(0.5 / 7, 6), round(3 / 7, 6)]
    e = blend_weights(ds, epochs={"Wikipedia (en)": 3})
    assert [round(x, 6) for x, _ in e] == [0.5625, 0.0625, 0.375]
    with pytest.raises(ValueError, match="no weight"):
        blend_weights(ds, weights={"Pile-CC": 1})
    with pytest.raises(ValueError, match="not in the data"):
        blend_weights(ds, weights={"ArXiv": 1}, default_weight=1)
    assert format_data_path([(0.25, "x"), (0.75, "y")]) == "--data-path 0.25 x 0.75 y"


def test_blend_cli_from_stats(corpus, sp_model, tmp_path, capsys):
    _run_preprocess(corpus[0], str(tmp_path / "b"), sp_model, "--split-by", "meta.pile_set_name")
    manifest = str(tmp_path / "mile-manifests" / "b.json")
    stats = json.load(open(manifest))
    capsys.readouterr()
    assert blend_main([manifest]) == 0
    words = capsys.readouterr().out.split()
    assert words[0] == "--data-path"
    weights, prefixes = [float(x) for x in words[1::2]], words[2::2]
    total = stats["totals"]["tokens"]
    assert prefixes == [str(tmp_path / d["name"]) for d in stats["datasets"]]
    assert weights == pytest.approx([d["tokens"] / total for d in stats["datasets"]], rel=1e-5)
