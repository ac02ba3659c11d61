"""The README demo: real text -> tokenizer -> per-domain datasets -> a small LLaMA-style GPT trained
with the MiLe loss on CPU, in a few minutes.

    python -m megatron_mile.demo                       # writes ./runs/demo
    python -m megatron_mile.demo --output-dir /tmp/d --train-iters 100 --loss cross_entropy

Steps (each reuses its output when it is already there, so a re-run only trains again):

1. ``corpus.jsonl``: a few MB of English text and code from the standard library and the project's
   required dependencies, one Pile-style domain per source
   (:func:`megatron_mile.data.corpus.write_text_corpus`; the same versions give the same bytes).
2. ``tokenizer.model``: a small sentencepiece BPE model trained on it.
3. ``data/demo_<domain>_text_document.{bin,idx}``: one indexed dataset per domain
   (:mod:`megatron_mile.data.preprocess` with ``--split-by meta.pile_set_name``).
4. ``checkpoints/``: ``mile-pretrain`` on the blend of the domains (weights proportional to their
   tokens), printing Megatron-style progress and validation loss per domain; ``train_log.jsonl``
   holds the same numbers as JSON lines.

The training command is printed; the same flags work with ``torchrun`` and TP/PP/DP flags.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import List, Optional


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def prepare_data(out: str, corpus_mb: float, vocab_size: int, min_documents: int) -> List[str]:
    """Steps 1-3; returns the ``--data-path`` blend (weight prefix weight prefix ...)."""
    from megatron_mile.data import preprocess, train_tokenizer
    from megatron_mile.data.blend import blend_weights, load_datasets
    from megatron_mile.data.corpus import write_text_corpus
    from megatron_mile.data.manifest import manifest_path

    corpus = os.path.join(out, "corpus.jsonl")
    start = _step(f"1/4 corpus: {corpus}")
    if os.path.exists(corpus):
        print("reusing it")
    else:
        stats = write_text_corpus(corpus, min_bytes=int(corpus_mb * 2**20), seed=0)
        for domain, d in sorted(stats.domains.items()):
            print(f"  {domain:24s} {d['documents']:5d} documents {d['text_bytes'] / 2**20:6.2f} MB")
        # The corpus is a function of these versions only (megatron_mile.data.corpus).
        print("  from " + ", ".join(f"{name} {version}" for name, version in stats.versions.items()))
    print(f"  ({time.perf_counter() - start:.1f}s)")

    prefix = os.path.join(out, "tokenizer")
    start = _step(f"2/4 tokenizer: {prefix}.model ({vocab_size} BPE pieces)")
    if os.path.exists(prefix + ".model"):
        print("reusing it")
    else:
        train_tokenizer.main(["--input", corpus, "--model-prefix", prefix, "--vocab-size", str(vocab_size),
                              "--model-type", "bpe"])
    print(f"  ({time.perf_counter() - start:.1f}s)")

    data_prefix = os.path.join(out, "data", "demo")
    stats_file = manifest_path(data_prefix)
    start = _step(f"3/4 indexed datasets per domain: {data_prefix}_*")
    if os.path.exists(stats_file):
        print("reusing them")
    else:
        os.makedirs(os.path.dirname(data_prefix), exist_ok=True)
        preprocess.main(["--input", corpus, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                         prefix + ".model", "--output-prefix", data_prefix, "--split-by", "meta.pile_set_name",
                         "--append-eod", "--workers", "2"])
    datasets = load_datasets([stats_file])
    kept = [d for d in datasets if d["documents"] >= min_documents]
    for d in datasets:
        note = "" if d in kept else f"  (skipped: fewer than {min_documents} documents for a validation split)"
        print(f"  {d['domain']:24s} {d['tokens']:9,d} tokens{note}")
    print(f"  ({time.perf_counter() - start:.1f}s)")
    return [x for weight, path in blend_weights(kept) for x in (f"{weight:.6g}", path)]


def training_flags(out: str, data_path: List[str], args: argparse.Namespace) -> List[str]:
    """A small LLaMA-style GPT (RMSNorm, SwiGLU, rotary, untied, no biases)."""
    return [
        "--data-path", *data_path, "--split", "90,10,0",
        "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", os.path.join(out, "tokenizer.model"),
        "--data-cache-path", os.path.join(out, "data", "cache"),
        "--model-style", "llama", "--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4",
        "--seq-length", "128", "--hidden-dropout", "0", "--attention-dropout", "0", "--use-cpu-initialization",
        "--micro-batch-size", "8", "--global-batch-size", "16", "--train-iters", str(args.train_iters),
        "--lr", "3e-3", "--min-lr", "3e-4", "--lr-warmup-iters", "20", "--lr-decay-style", "cosine",
        "--weight-decay", "0.1", "--clip-grad", "1.0", "--seed", "1234",
        "--loss", args.loss,
        "--log-interval", "20", "--eval-interval", str(max(1, args.train_iters // 3)), "--eval-iters", "4",
        "--log-json", os.path.join(out, "train_log.jsonl"),
        "--save", os.path.join(out, "checkpoints"), "--save-interval", str(max(1, args.train_iters // 2)),
        "--num-workers", "0",
    ]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m megatron_mile.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=os.path.join("runs", "demo"), help="Where everything goes.")
    parser.add_argument("--corpus-mb", type=float, default=4.0, help="Size of the text corpus.")
    parser.add_argument("--vocab-size", type=int, default=2048, help="Sentencepiece vocabulary.")
    parser.add_argument("--train-iters", type=int, default=300, help="Training iterations (16 x 128 tokens each).")
    parser.add_argument("--loss", default="mile", choices=["cross_entropy", "mile", "focal"], help="Training loss.")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    began = time.perf_counter()

    data_path = prepare_data(out, args.corpus_mb, args.vocab_size, min_documents=10)

    flags = training_flags(out, data_path, args)
    log_json = os.path.join(out, "train_log.jsonl")
    if os.path.exists(log_json):
        os.remove(log_json)  # this run's log only
    _step("4/4 training (the same flags work with torchrun and TP/PP/DP flags):")
    print("mile-pretrain " + " ".join(shlex.quote(f) for f in flags), flush=True)
    from megatron_mile.training.logger import fused_path_notice

    with fused_path_notice():  # megatron-core's "transformer-engine / apex not installed" as one line
        from megatron_mile.pretrain_gpt import pretrain
    result = pretrain(flags)

    losses = [m["lm_loss"] for m in result.train]
    window = max(1, min(20, len(losses) // 4))
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    print(f"\n=== done in {time.perf_counter() - began:.0f}s")
    print(f"training lm loss (cross entropy): {first:.3f} (first {window} iterations) -> {last:.3f} "
          f"(last {window}), {'falling' if last < first else 'NOT falling'}")
    final = [v for v in result.valid if v["iteration"] == result.train[-1]["iteration"]]
    for v in final:
        print(f"  validation lm loss [{v['dataset']}]: {v['lm_loss']:.3f}")
    print(f"checkpoints: {os.path.join(out, 'checkpoints')} (iterations {result.checkpoints})")
    print(f"log: {log_json}")
    print("reload for analysis: from megatron_mile.training.checkpointing import load_model_for_eval; "
          f"model, args = load_model_for_eval({os.path.join(out, 'checkpoints')!r})")
    if last >= first:
        sys.exit(1)


if __name__ == "__main__":
    main()
