"""Very long documents are encoded in pieces, with exactly the ids of the whole text.

Reference: each tokenizer library's own encode of the whole text. The pieces are forced small
(a few hundred characters, thousands of cuts) so that every kind of cut the text offers is
exercised; the text is real English plus a stretch written to tempt a wrong cut (whitespace runs,
tabs, newlines, punctuation, digits, contractions, non-ASCII letters next to spaces).
Memory is measured by ``bench/preprocess_bench.py --long-document-mb 50``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from megatron_mile.data import corpus as corpus_mod
from megatron_mile.data.preprocess import main as preprocess_main
from megatron_mile.data.small_tokenizers import (
    train_small_gpt2,
    train_small_huggingface,
    train_small_sentencepiece,
)
from megatron_mile.data.tokenizers import MileTokenizer, build_tokenizer

TRICKY = ("It's  a test\tof   cuts: 12 34 abc 5x y7 z. Don't  stop\n\nnow  é café naïve Ωmega x\u00a0y "
          "end.  'quoted' word-word (paren) a , b ; c ... \t\t tab\ttab I'm we'll they've ")


@pytest.fixture(scope="module")
def text_and_tokenizers(tmp_path_factory):
    pytest.importorskip("tokenizers")
    import sentencepiece as spm
    from tokenizers import ByteLevelBPETokenizer, Tokenizer

    root = tmp_path_factory.mktemp("long")
    corpus = str(root / "c.jsonl")
    corpus_mod.write_text_corpus(corpus, min_bytes=300_000, seed=5)
    texts = [json.loads(line)["text"] for line in open(corpus)]
    long_text = (TRICKY * 40).join(texts[:40])[:250_000]
    sp_bpe = train_small_sentencepiece(corpus, str(root / "bpe"), vocab_size=800)
    sp_uni = train_small_sentencepiece(corpus, str(root / "uni"), vocab_size=800, model_type="unigram")
    hf_dir = train_small_huggingface(texts, str(root / "hf"), vocab_size=800)
    vocab, merges = train_small_gpt2(texts, str(root / "gpt2"), vocab_size=800)
    hf = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    gpt2 = ByteLevelBPETokenizer(vocab, merges, add_prefix_space=False)
    libraries = {  # name -> (ours, the library's own encode)
        "sentencepiece-bpe": (build_tokenizer("SentencePieceTokenizer", sp_bpe),
                              spm.SentencePieceProcessor(model_file=sp_bpe).encode_as_ids),
        "sentencepiece-unigram": (build_tokenizer("SentencePieceTokenizer", sp_uni),
                                  spm.SentencePieceProcessor(model_file=sp_uni).encode_as_ids),
        "huggingface": (build_tokenizer("HuggingFaceTokenizer", hf_dir),
                        lambda t: hf.encode(t, add_special_tokens=False).ids),
        "gpt2": (build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges),
                 lambda t: gpt2.encode(t).ids),
    }
    return root, corpus, long_text, libraries


@pytest.mark.parametrize("name", ["sentencepiece-bpe", "huggingface", "gpt2"])
def test_pieces_give_the_ids_of_the_whole_text(text_and_tokenizers, name):
    _, _, text, libraries = text_and_tokenizers
    tok, library_encode = libraries[name]
    assert tok.exact_cuts
    tok.long_text_chars = 300  # ~800 cuts over the text
    try:
        got = tok.tokenize_arrays([text, "short text"])
    finally:
        del tok.long_text_chars
    assert got[0].tolist() == library_encode(text)
    assert got[1].tolist() == library_encode("short text")


def test_unprovable_models_encode_the_whole_text(text_and_tokenizers):
    """A sentencepiece unigram model (cut, it gave other ids for a run of dashes on this text), a
    sentencepiece model whose pieces may span spaces, and a tokenizer.json whose normaliser strips
    are not cut; they encode the whole text in one call."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, normalizers

    root, corpus, text, libraries = text_and_tokenizers
    texts = [json.loads(line)["text"] for line in open(corpus)][:200]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(t[:4000] for t in texts),
                                   model_prefix=str(root / "nows"), vocab_size=600,
                                   split_by_whitespace=False, minloglevel=2)
    hf_dir = train_small_huggingface(texts, str(root / "hf_strip"), vocab_size=600)
    hf = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
    hf.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.NFKC()])
    hf.save(os.path.join(hf_dir, "tokenizer.json"))
    for tok, encode in (libraries["sentencepiece-unigram"],
                        (build_tokenizer("SentencePieceTokenizer", str(root / "nows.model")),
                         spm.SentencePieceProcessor(model_file=str(root / "nows.model")).encode_as_ids),
                        (build_tokenizer("HuggingFaceTokenizer", hf_dir),
                         lambda t: hf.encode(t, add_special_tokens=False).ids)):
        assert not tok.exact_cuts
        tok.long_text_chars = 300
        assert tok.tokenize_arrays([text])[0].tolist() == encode(text)


def test_tool_output_of_a_long_document(text_and_tokenizers, tmp_path, monkeypatch):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    _, _, text, libraries = text_and_tokenizers
    tok, encode = libraries["sentencepiece-bpe"]
    src = tmp_path / "long.jsonl"
    src.write_text(json.dumps({"text": "A short one."}) + "\n" + json.dumps({"text": text}) + "\n")
    monkeypatch.setattr(MileTokenizer, "long_text_chars", 1000)
    prefix = str(tmp_path / "p")
    assert preprocess_main(["--input", str(src), "--output-prefix", prefix, "--tokenizer-type",
                            "SentencePieceTokenizer", "--tokenizer-model", tok._init_args["model_file"],
                            "--append-eod", "--quiet"]) == 0
    ds = IndexedDataset(prefix + "_text_document")
    eod = tok.eod
    assert [ds[i].tolist() for i in range(len(ds))] == [encode("A short one.") + [eod], encode(text) + [eod]]
    assert ds[1].dtype == np.uint16
