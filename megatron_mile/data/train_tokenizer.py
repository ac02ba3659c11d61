"""Train a sentencepiece model on a sample of a jsonl / jsonl.zst corpus, in-process.

``mile-train-tokenizer --input 00.jsonl.zst --model-prefix pile_bpe32k --vocab-size 32000``

The sample is the first ``--sample-bytes`` of text, split evenly over the input files (Pile
shards are already shuffled, so their heads are representative). Documents are fed to the
trainer line by line: sentencepiece skips "sentences" longer than ``max_sentence_length``, so
feeding whole documents would silently drop most long ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Iterator, Optional

from megatron_mile.data.jsonl import InputError, expand_inputs, iter_lines

# sentencepiece's own default; longer lines are cut into pieces of this many bytes.
MAX_SENTENCE_BYTES = 4192


@dataclasses.dataclass
class TokenizerTrainConfig:
    """Options of :func:`train_sentencepiece`."""

    inputs: list
    """jsonl / jsonl.zst / json files or globs."""
    model_prefix: str
    """Writes ``{model_prefix}.model`` and ``{model_prefix}.vocab``."""
    vocab_size: int = 32000
    """Number of pieces, including the unk/bos/eos ids 0/1/2."""
    model_type: str = "bpe"
    """``bpe`` or ``unigram`` (also ``char``, ``word``)."""
    sample_bytes: int = 16 * 2**20
    """Bytes of text to read from the corpus (evenly over the input files)."""
    json_key: str = "text"
    """Field holding the document text."""
    input_sentence_size: int = 2_000_000
    """At most this many lines are used for training (sentencepiece samples them)."""
    character_coverage: float = 0.9995
    """Characters covering this share of the sample get their own piece; rarer ones do not."""
    byte_fallback: bool = True
    """Rare characters are encoded as UTF-8 byte pieces instead of unk (as LLaMA's tokenizer)."""
    num_threads: Optional[int] = None
    """Trainer threads; default all cores."""
    seed: int = 0
    """Seed of sentencepiece's sentence sampling and shuffling."""


def sample_lines(files: list[str], sample_bytes: int, json_key: str = "text") -> Iterator[str]:
    """Non-empty text lines from the head of each file, ``sample_bytes`` in all."""
    budget = max(sample_bytes // max(len(files), 1), 1)
    for path in files:
        taken = 0
        for lineno, raw in iter_lines(path):
            if not raw.strip():
                continue
            try:
                text = json.loads(raw)[json_key]
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(path, lineno, f"cannot read {json_key!r} from this line",
                                 str(e)) from e
            if not isinstance(text, str):
                continue
            for line in text.split("\n"):
                line = line.strip()
                if not line:
                    continue
                data = line.encode("utf-8", "replace")
                for i in range(0, len(data), MAX_SENTENCE_BYTES):
                    yield data[i:i + MAX_SENTENCE_BYTES].decode("utf-8", "ignore")
                taken += len(data)
            if taken >= budget:
                break


def train_sentencepiece(config: TokenizerTrainConfig) -> str:
    """Train and write the model; returns the ``.model`` path."""
    import os

    import sentencepiece as spm

    files = expand_inputs(list(config.inputs))
    spm.set_random_generator_seed(config.seed)
    # Read the (bounded) sample first: an exception raised inside sentencepiece's iterator
    # callback comes back as an opaque RuntimeError, losing the file and line.
    sample = list(sample_lines(files, config.sample_bytes, config.json_key))
    if not sample:
        raise ValueError(f"no text under key {config.json_key!r} in {files}")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample),
        model_prefix=config.model_prefix,
        vocab_size=config.vocab_size,
        model_type=config.model_type,
        input_sentence_size=config.input_sentence_size,
        shuffle_input_sentence=True,
        character_coverage=config.character_coverage,
        byte_fallback=config.byte_fallback,
        num_threads=config.num_threads or os.cpu_count() or 1,
        max_sentence_length=MAX_SENTENCE_BYTES,
        # Keep digits and whitespace runs as written (code and tables), as LLaMA's tokenizer.
        split_digits=True,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
    )
    return config.model_prefix + ".model"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Train a sentencepiece model on a jsonl corpus.")
    parser.add_argument("--input", nargs="+", required=True, help="jsonl / jsonl.zst files or globs")
    parser.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--model-type", default="bpe", choices=["bpe", "unigram", "char", "word"])
    parser.add_argument("--sample-bytes", type=float, default=16 * 2**20,
                        help="bytes of text to sample (default 16 MiB)")
    parser.add_argument("--json-key", default="text")
    parser.add_argument("--input-sentence-size", type=int, default=2_000_000)
    parser.add_argument("--character-coverage", type=float, default=0.9995)
    parser.add_argument("--no-byte-fallback", dest="byte_fallback", action="store_false")
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = TokenizerTrainConfig(
        inputs=args.input, model_prefix=args.model_prefix, vocab_size=args.vocab_size,
        model_type=args.model_type, sample_bytes=int(args.sample_bytes), json_key=args.json_key,
        input_sentence_size=args.input_sentence_size,
        character_coverage=args.character_coverage, byte_fallback=args.byte_fallback,
        num_threads=args.num_threads, seed=args.seed,
    )
    start = time.perf_counter()
    try:
        model = train_sentencepiece(config)
    except (InputError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {model} ({config.model_type}, {config.vocab_size} pieces) in "
          f"{time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
