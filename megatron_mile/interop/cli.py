"""Command lines ``mile-export-hf`` and ``mile-import-hf`` (see :mod:`megatron_mile.interop.hf_llama`)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def export_main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mile-export-hf", allow_abbrev=False,
        description="Export a megatron-mile checkpoint (any TP/PP/VPP layout, LLaMA-style model) to a "
                    "Hugging Face LlamaForCausalLM directory with its tokenizer.")
    parser.add_argument("--load", required=True, help="Checkpoint directory (--save of mile-pretrain) or one iter_N.")
    parser.add_argument("--iteration", type=int, default=None, help="Iteration to export; default the latest.")
    parser.add_argument("--output", required=True, help="New (or empty) directory to write.")
    args = parser.parse_args(argv)
    from megatron_mile.interop.hf_llama import InteropError, export_checkpoint

    try:
        export_checkpoint(args.load, args.output, args.iteration)
    except InteropError as exc:
        print(f"mile-export-hf: error: {exc}", file=sys.stderr)
        sys.exit(2)


def import_main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mile-import-hf", allow_abbrev=False,
        description="Import a Hugging Face LlamaForCausalLM directory as a weights-only megatron-mile checkpoint "
                    "(iteration 0, args.json, tokenizer) that `mile-pretrain --load DIR --use-checkpoint-args` "
                    "continues.")
    parser.add_argument("--hf", required=True,
                        help="Hugging Face model directory (config.json, safetensors, tokenizer).")
    parser.add_argument("--save", required=True, help="New (or empty) checkpoint directory to write.")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1,
                        help="TP size training will use: the vocabulary is padded for it, as training pads it.")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                        help="Vocabulary padding multiple (times the TP size), as for mile-pretrain.")
    parser.add_argument("--seq-length", type=int, default=None,
                        help="Training sequence length recorded in args.json; default max_position_embeddings.")
    args = parser.parse_args(argv)
    from megatron_mile.interop.hf_llama import InteropError, import_checkpoint

    try:
        import_checkpoint(args.hf, args.save, args.tensor_model_parallel_size, args.make_vocab_size_divisible_by,
                          args.seq_length)
    except InteropError as exc:
        print(f"mile-import-hf: error: {exc}", file=sys.stderr)
        sys.exit(2)
