"""Small tokenizers trained in seconds on local text, for tests and CPU demos (no downloads).

* :func:`train_small_sentencepiece`: a sentencepiece ``.model`` (bpe or unigram).
* :func:`train_small_huggingface`: a directory with ``tokenizer.json`` + ``tokenizer_config.json``
  (Metaspace BPE with ``<unk> <s> </s>``; ``eos_token`` ``</s>``).
* :func:`train_small_gpt2`: GPT-2 style ``vocab.json`` + ``merges.txt`` (byte-level BPE with
  ``<|endoftext|>``), for ``GPT2BPETokenizer``.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from megatron_mile.data.train_tokenizer import TokenizerTrainConfig, train_sentencepiece


def train_small_sentencepiece(corpus: str, model_prefix: str, vocab_size: int = 2000,
                              model_type: str = "bpe", sample_bytes: int = 2 * 2**20) -> str:
    """Train on the head of a jsonl corpus; returns the ``.model`` path."""
    return train_sentencepiece(TokenizerTrainConfig(
        inputs=[corpus], model_prefix=model_prefix, vocab_size=vocab_size,
        model_type=model_type, sample_bytes=sample_bytes, num_threads=2))


def train_small_huggingface(texts: Iterable[str], out_dir: str, vocab_size: int = 3000) -> str:
    """Train a Metaspace BPE ``tokenizer.json``; returns ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                   "eos_token": "</s>", "unk_token": "<unk>"}, f)
    return out_dir


def train_small_gpt2(texts: Iterable[str], out_dir: str, vocab_size: int = 3000) -> tuple[str, str]:
    """Train a byte-level BPE; returns ``(vocab.json, merges.txt)`` paths."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    os.makedirs(out_dir, exist_ok=True)
    vocab, merges = tok.save_model(out_dir)
    return vocab, merges
