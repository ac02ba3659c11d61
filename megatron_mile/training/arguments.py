"""Command-line arguments of ``mile-pretrain`` (``python -m megatron_mile.pretrain_gpt``).

Flags shared with Megatron-LM's ``pretrain_gpt.py`` keep Megatron-LM's names, defaults and meaning
(``--tensor-model-parallel-size``, ``--data-path 30 a 70 b``, ``--lr-decay-style cosine``, ...), so a
Megatron launch script keeps working after adding ``--loss mile``. What is new is grouped under
"loss", "checkpoint schedule" and "logging".

Validation happens in two steps, both before any process group exists, so a bad launch fails on
every rank with the same message instead of hanging in a collective:

* :func:`parse_args` checks everything that depends only on the flags (heads vs. TP, layers vs.
  PP, tokenizer requirements, contradictory options).
* :func:`validate_runtime` adds what depends on the launch: the world size (divisibility by TP x
  PP, the global batch vs. micro-batch x DP, micro-batches for the interleaved schedule), the
  existence of data and tokenizer files, and whether CUDA / transformer-engine are there.

Both raise :class:`ConfigError` (a ``ValueError``); ``main`` prints it and exits with status 2, as
argparse does for syntax errors (one line each, then "see --help").

Every other flag of Megatron-LM's ``pretrain_gpt.py`` is accepted and ignored with a one-line
warning, or rejected naming the flag, as :mod:`megatron_mile.training.megatron_flags` classifies it.

Nothing here imports megatron-core at module level: ``--help`` and flag errors answer before it
loads (:func:`main` imports the training loop only after parsing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from typing import List, Optional, Sequence

from megatron_mile.data.tokenizers import TOKENIZER_TYPES
from megatron_mile.training.megatron_flags import DOCS_SECTION, ignored_flags, rejected_flags
from megatron_mile.losses.registry import add_loss_arguments, loss_config_from_args

LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")
# Megatron-LM's --attention-backend values. Here auto / flash / fused run torch's
# scaled_dot_product_attention (flash or cuDNN kernels on GPU) in the local layer spec and
# unfused / local megatron's DotProductAttention; under --transformer-impl transformer_engine the
# value goes to transformer-engine's attention as in Megatron-LM.
ATTENTION_BACKENDS = ("auto", "flash", "fused", "unfused", "local")
RECOMPUTE_MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts")
ADAM_IMPLS = ("auto", "fused", "foreach", "for-loop")

# What --model-style fills in for the shape flags the user did not give explicitly.
MODEL_STYLES = {
    "gpt2": dict(normalization="LayerNorm", swiglu=False, position_embedding_type="learned_absolute",
                 untie_embeddings_and_output_weights=False, disable_bias_linear=False),
    "llama": dict(normalization="RMSNorm", swiglu=True, position_embedding_type="rope",
                  untie_embeddings_and_output_weights=True, disable_bias_linear=True),
}


class ConfigError(ValueError):
    """The flags describe a run that cannot work (raised before any collective)."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block is what ``--help`` is for)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_list(text: str) -> List[int]:
    try:
        return sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The full parser (no validation beyond argparse's own types and choices)."""
    parser = _ArgumentParser(
        prog="mile-pretrain",
        description="GPT pretraining on megatron-core with token-difficulty-aware losses (MiLe, focal).",
        epilog=f"Megatron-LM flags not listed here are accepted and ignored with a warning, or rejected: "
               f"{DOCS_SECTION}.",
        allow_abbrev=False,
    )

    g = parser.add_argument_group("model")
    g.add_argument("--model-style", choices=sorted(MODEL_STYLES), default=None,
                   help="Defaults for the shape switches below: 'gpt2' (LayerNorm, GELU, learned positions, "
                        "tied embeddings, biases) or 'llama' (RMSNorm, SwiGLU, rotary, untied, no biases). "
                        "Explicit flags win.")
    g.add_argument("--num-layers", type=int, required=True, help="Number of transformer layers.")
    g.add_argument("--hidden-size", type=int, required=True, help="Transformer hidden size.")
    g.add_argument("--ffn-hidden-size", type=int, default=None,
                   help="MLP hidden size; default 4 x hidden size.")
    g.add_argument("--num-attention-heads", type=int, required=True, help="Number of attention heads.")
    g.add_argument("--kv-channels", type=int, default=None,
                   help="Projection size per head; default hidden size / heads.")
    g.add_argument("--group-query-attention", action="store_true", help="Use grouped-query attention.")
    g.add_argument("--num-query-groups", type=int, default=1,
                   help="Number of key/value groups with --group-query-attention.")
    g.add_argument("--seq-length", type=int, required=True, help="Tokens per training sample.")
    g.add_argument("--max-position-embeddings", type=int, default=None,
                   help="Size of the learned position table; default --seq-length.")
    g.add_argument("--position-embedding-type", choices=["learned_absolute", "rope", "none"], default=None,
                   help="Position embedding (default learned_absolute).")
    g.add_argument("--rotary-base", type=int, default=10000, help="RoPE base.")
    g.add_argument("--rotary-percent", type=float, default=1.0, help="Fraction of head dims that rotate.")
    g.add_argument("--normalization", choices=["LayerNorm", "RMSNorm"], default=None,
                   help="Normalisation layer (default LayerNorm).")
    g.add_argument("--norm-epsilon", type=float, default=1e-5, help="Epsilon of the normalisation layers.")
    g.add_argument("--swiglu", action="store_true", default=None, help="SwiGLU MLP instead of GELU.")
    g.add_argument("--disable-bias-linear", action="store_true", default=None,
                   help="No biases in the linear layers.")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true", default=None,
                   help="Separate input embedding and output layer weights.")
    g.add_argument("--init-method-std", type=float, default=0.02, help="Std of the normal weight init.")
    g.add_argument("--hidden-dropout", type=float, default=0.1, help="Dropout after attention and MLP.")
    g.add_argument("--attention-dropout", type=float, default=0.1, help="Dropout on attention probabilities.")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="Pad the vocabulary to a multiple of this times the TP size.")
    g.add_argument("--transformer-impl", choices=["local", "transformer_engine"], default=None,
                   help="Layer implementation. Default: transformer_engine when it is importable and CUDA "
                        "is available, local otherwise (always local on CPU).")
    g.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="auto",
                   help="Core attention. Local layers: auto, flash and fused run torch's "
                        "scaled_dot_product_attention (flash / cuDNN / memory-efficient kernels on GPU), "
                        "unfused and local megatron's DotProductAttention. transformer-engine layers: "
                        "transformer-engine's backend of that name.")
    g.add_argument("--use-flash-attn", action="store_true",
                   help="Megatron-LM's older switch: the same as --attention-backend flash.")

    g = parser.add_argument_group("activation recompute")
    g.add_argument("--recompute-activations", action="store_true",
                   help="Recompute activations of the memory-heavy parts of the layers (the same as "
                        "--recompute-granularity selective).")
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None,
                   help="full: recompute whole transformer layers (with --recompute-method); selective: "
                        "recompute only --recompute-modules (default core_attn).")
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None,
                   help="With full granularity: uniform recomputes every chunk of --recompute-num-layers "
                        "layers; block recomputes the first --recompute-num-layers layers of each stage.")
    g.add_argument("--recompute-num-layers", type=int, default=None,
                   help="Layers per recompute chunk (uniform) or recomputed layers per stage (block).")
    g.add_argument("--distribute-saved-activations", action="store_true",
                   help="Distribute recomputed activations over the tensor-parallel group.")
    g.add_argument("--recompute-modules", nargs="*", choices=RECOMPUTE_MODULES, default=None,
                   help="Submodules recomputed with selective granularity (default core_attn; of "
                        "these only core_attn, layernorm and mlp exist in a dense GPT).")

    g = parser.add_argument_group("parallelism and distributed")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1, help="Tensor-parallel size.")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="Pipeline-parallel size.")
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                   help="Layers per virtual pipeline stage (interleaved 1F1B schedule).")
    g.add_argument("--sequence-parallel", action="store_true",
                   help="Sequence parallelism (needs TP > 1 and --transformer-impl transformer_engine).")
    g.add_argument("--use-distributed-optimizer", action="store_true",
                   help="Shard optimizer state over data-parallel ranks (GPU only here).")
    g.add_argument("--overlap-grad-reduce", action="store_true",
                   help="Overlap the data-parallel gradient reduction with the backward pass.")
    g.add_argument("--overlap-param-gather", action="store_true",
                   help="Overlap the parameter all-gather with the forward pass (distributed optimizer).")
    g.add_argument("--distributed-backend", choices=["nccl", "gloo"], default=None,
                   help="torch.distributed backend; default nccl with CUDA, gloo without.")
    g.add_argument("--distributed-timeout-minutes", type=int, default=10, help="Collective timeout.")
    g.add_argument("--context-parallel-size", type=int, default=1,
                   help="Context parallelism; only 1 here (it needs transformer-engine attention and a "
                        "data path that splits each sequence over ranks).")
    g.add_argument("--use-cpu-initialization", action="store_true",
                   help="Initialise weights on CPU. Here it also makes the initial model independent of "
                        "the TP/PP/VPP layout (each weight drawn from a generator keyed by seed and name).")

    g = parser.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, required=True, help="Samples per micro-batch per DP rank.")
    g.add_argument("--global-batch-size", type=int, default=None,
                   help="Samples per optimizer step over all DP ranks; default micro-batch size x DP.")
    g.add_argument("--train-iters", type=int, default=None,
                   help="Optimizer steps to train for (or give --train-samples).")
    g.add_argument("--train-samples", type=int, default=None,
                   help="Samples to train on; iterations follow from the global batch size (and the "
                        "ramp-up). The LR schedule is then counted in samples (--lr-*-samples).")
    g.add_argument("--rampup-batch-size", nargs=3, type=int, default=None,
                   metavar=("START", "INCREMENT", "RAMP_SAMPLES"),
                   help="Grow the global batch from START by INCREMENT over RAMP_SAMPLES samples up to "
                        "--global-batch-size (Megatron-LM's ramp).")
    g.add_argument("--seed", type=int, default=1234, help="Random seed.")
    g.add_argument("--bf16", action="store_true",
                   help="bf16 parameters and activations, fp32 master weights. The default with CUDA; "
                        "on CPU the default is fp32 (see --fp32).")
    g.add_argument("--fp32", action="store_true",
                   help="Train in fp32 even when CUDA is available (there the default is --bf16).")
    g.add_argument("--fp16", action="store_true",
                   help="fp16 parameters and activations, fp32 master weights, loss scaling (dynamic "
                        "unless --loss-scale is given), through megatron-core's optimizer.")
    g.add_argument("--loss-scale", type=float, default=None,
                   help="Static loss scale (a positive power of 2 helps convergence); default: dynamic.")
    g.add_argument("--initial-loss-scale", type=float, default=2**32, help="Initial dynamic loss scale.")
    g.add_argument("--min-loss-scale", type=float, default=1.0, help="Minimum dynamic loss scale.")
    g.add_argument("--loss-scale-window", type=float, default=1000,
                   help="Steps without overflow before the dynamic loss scale grows.")
    g.add_argument("--hysteresis", type=int, default=2, help="Overflows tolerated before the scale shrinks.")
    g.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="Optimizer (adam is AdamW).")
    g.add_argument("--adam-beta1", type=float, default=0.9, help="Adam beta1.")
    g.add_argument("--adam-beta2", type=float, default=0.999, help="Adam beta2.")
    g.add_argument("--adam-eps", type=float, default=1e-8, help="Adam epsilon.")
    g.add_argument("--sgd-momentum", type=float, default=0.9, help="SGD momentum.")
    g.add_argument("--adam-impl", choices=ADAM_IMPLS, default="auto",
                   help="torch AdamW implementation when neither transformer-engine nor apex provides a "
                        "fused Adam: fused (one kernel), foreach (multi-tensor) or for-loop; auto = fused "
                        "on CUDA, torch's default on CPU.")
    g.add_argument("--weight-decay", type=float, default=0.01, help="Decoupled weight decay (not on norms/biases).")
    g.add_argument("--start-weight-decay", type=float, default=None,
                   help="Weight decay at the start (default --weight-decay).")
    g.add_argument("--end-weight-decay", type=float, default=None,
                   help="Weight decay at the end (default --weight-decay).")
    g.add_argument("--weight-decay-incr-style", choices=["constant", "linear", "cosine"], default="constant",
                   help="How weight decay goes from --start-weight-decay to --end-weight-decay.")
    g.add_argument("--clip-grad", type=float, default=1.0, help="Global gradient-norm clip (0 disables).")
    g.add_argument("--exit-interval", type=int, default=None, help="Stop after this iteration (checkpoint first).")

    g = parser.add_argument_group("learning rate")
    g.add_argument("--lr", type=float, required=True, help="Peak learning rate.")
    g.add_argument("--min-lr", type=float, default=0.0, help="Learning rate at the end of the decay.")
    g.add_argument("--lr-decay-style", choices=LR_DECAY_STYLES, default="linear", help="Decay shape.")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="Iterations to decay over; default --train-iters.")
    g.add_argument("--lr-decay-samples", type=int, default=None,
                   help="Samples to decay over (with --train-samples); default --train-samples.")
    g.add_argument("--lr-warmup-iters", type=int, default=0, help="Linear warmup iterations.")
    g.add_argument("--lr-warmup-samples", type=int, default=0, help="Linear warmup samples (with --train-samples).")
    g.add_argument("--lr-warmup-fraction", type=float, default=None,
                   help="Warmup as a fraction of --lr-decay-iters (instead of --lr-warmup-iters).")
    g.add_argument("--lr-warmup-init", type=float, default=0.0, help="Learning rate at the start of warmup.")
    g.add_argument("--lr-wsd-decay-iters", type=int, default=None, help="Decay iterations of the WSD schedule.")
    g.add_argument("--lr-wsd-decay-samples", type=int, default=None,
                   help="Decay samples of the WSD schedule (with --train-samples).")
    g.add_argument("--lr-wsd-decay-style", choices=["exponential", "linear", "cosine", "minus_sqrt"],
                   default="exponential", help="Decay shape of the WSD schedule.")

    g = parser.add_argument_group("data")
    g.add_argument("--data-path", nargs="*", default=None,
                   help="Indexed-dataset prefixes, optionally weighted: 'w1 prefix1 w2 prefix2 ...'.")
    g.add_argument("--train-data-path", nargs="*", default=None,
                   help="Training blend, instead of --data-path and --split (then give the validation "
                        "blend with --valid-data-path).")
    g.add_argument("--valid-data-path", nargs="*", default=None, help="Validation blend (with --train-data-path).")
    g.add_argument("--test-data-path", nargs="*", default=None,
                   help="Test blend (with --train-data-path; accepted, no test pass is run).")
    g.add_argument("--dataloader-type", choices=["single"], default="single",
                   help="Megatron-LM's sampler: 'single' (sequential, resumable) is the only one here.")
    g.add_argument("--split", type=str, default="969, 30, 1",
                   help="Train/validation/test proportions of each dataset, e.g. '98,2,0'.")
    g.add_argument("--mock-data", action="store_true", help="Synthetic data (megatron's MockGPTDataset).")
    g.add_argument("--data-cache-path", type=str, default=None,
                   help="Where the dataset index caches go; default next to the data.")
    g.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes per rank.")
    g.add_argument("--eod-mask-loss", action="store_true", help="No loss on end-of-document tokens.")
    g.add_argument("--reset-position-ids", action="store_true", help="Restart position ids after each EOD.")

    g = parser.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default=None,
                   help="Tokenizer; default NullTokenizer with --mock-data.")
    g.add_argument("--tokenizer-model", type=str, default=None,
                   help="SentencePiece model file or Hugging Face tokenizer directory/file.")
    g.add_argument("--vocab-file", type=str, default=None, help="GPT-2 BPE vocab.json.")
    g.add_argument("--merge-file", type=str, default=None, help="GPT-2 BPE merges.txt.")
    g.add_argument("--vocab-size", type=int, default=None, help="Vocabulary size of the NullTokenizer.")

    # The loss flags: --loss, each registered loss's parameters (megatron_mile/losses/<name>.py),
    # --mile-normalization. Values are checked as they are parsed (exit 2 with the flag's name).
    g = parser.add_argument_group("loss")
    add_loss_arguments(g)
    g.add_argument("--fused-output-loss", action="store_true",
                   help="Fuse the output layer into the loss: no [tokens, vocab/TP] logits in memory, the backward "
                        "recomputes them block by block (weighted cross-entropy losses; not emo). Megatron-LM's "
                        "development branch calls this --cross-entropy-loss-fusion --cross-entropy-fusion-impl linear.")

    g = parser.add_argument_group("evaluation and logging")
    g.add_argument("--eval-interval", type=int, default=1000, help="Validate every this many iterations.")
    g.add_argument("--eval-iters", type=int, default=100,
                   help="Global batches per validation (per dataset of the blend); 0 disables.")
    g.add_argument("--log-interval", type=int, default=100, help="Print every this many iterations.")
    g.add_argument("--log-json", type=str, default=None,
                   help="Append one JSON object per logged iteration (and per validation) to this file.")
    g.add_argument("--tensorboard-dir", type=str, default=None, help="TensorBoard event directory.")
    g.add_argument("--tensorboard-log-interval", type=int, default=1, help="TensorBoard scalar interval.")
    g.add_argument("--wandb-project", type=str, default=None,
                   help="Weights & Biases project: log the TensorBoard scalars there too (extra [wandb]; "
                        "WANDB_MODE=offline works without a network).")
    g.add_argument("--wandb-exp-name", type=str, default=None, help="W&B run name.")
    g.add_argument("--wandb-save-dir", type=str, default=None,
                   help="W&B local directory; default <--save>/wandb, or ./wandb without --save.")
    g.add_argument("--wandb-entity", type=str, default=None, help="W&B entity (user or team).")

    g = parser.add_argument_group("checkpointing")
    g.add_argument("--save", type=str, default=None, help="Checkpoint directory.")
    g.add_argument("--save-interval", type=int, default=None, help="Save every this many iterations.")
    g.add_argument("--save-schedule", choices=["interval", "exp"], default="interval",
                   help="'exp' adds exponentially spaced checkpoints (1, 2, 4, ... iterations) for "
                        "learning-curve analysis, on top of --save-interval.")
    g.add_argument("--save-exp-per-doubling", type=int, default=1,
                   help="With --save-schedule exp: checkpoints per doubling of the iteration count.")
    g.add_argument("--save-iters", type=_int_list, default=None,
                   help="Explicit iterations to save at, e.g. '1,2,4,8,100' (on top of the others).")
    g.add_argument("--load", type=str, default=None, help="Resume from this checkpoint directory.")
    g.add_argument("--ckpt-format", choices=["torch_dist"], default="torch_dist",
                   help="Checkpoint format: megatron's dist_checkpointing torch_dist (the only one here).")
    g.add_argument("--no-load-optim", action="store_true", help="Do not load optimizer and scheduler state.")
    g.add_argument("--no-load-rng", action="store_true", help="Do not load RNG states.")
    g.add_argument("--finetune", action="store_true",
                   help="Load model weights only and start at iteration 0.")
    g.add_argument("--no-save-final", action="store_true",
                   help="Do not save a checkpoint at the last iteration.")

    g = parser.add_argument_group("resume and preemption")
    g.add_argument("--override-opt_param-scheduler", "--override-opt-param-scheduler", action="store_true",
                   help="On --load, take the learning-rate schedule from the flags, not the checkpoint "
                        "(without this or the next flag, a schedule that differs from the checkpoint's is "
                        "an error).")
    g.add_argument("--use-checkpoint-opt_param-scheduler", "--use-checkpoint-opt-param-scheduler",
                   action="store_true",
                   help="On --load, keep the checkpoint's learning-rate schedule whatever the flags say.")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="On SIGTERM or SIGINT, finish the current iteration on every rank, save (with --save) "
                        "and exit 0.")
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="Save (with --save) and exit once training has run this many minutes.")

    _add_ignored_megatron_flags(parser)
    return parser


_IGNORED_PREFIX = "ignored_megatron_flag__"


def _add_ignored_megatron_flags(parser: argparse.ArgumentParser) -> None:
    """Megatron-LM flags accepted and ignored (hidden from --help; docs/training.md lists them)."""
    defined = set(parser._option_string_actions)
    for flag, (nargs, _reason) in ignored_flags().items():
        if flag in defined:  # supported after all (someone added it): the parser's meaning wins
            continue
        dest = _IGNORED_PREFIX + flag[2:].replace("-", "_")
        if nargs == 0:
            parser.add_argument(flag, dest=dest, action="store_true", default=None, help=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, dest=dest, nargs=None if nargs == 1 else "*", default=None,
                                help=argparse.SUPPRESS)


def _reject_megatron_flags(argv: Sequence[str]) -> None:
    """One line naming every rejected Megatron-LM flag in ``argv`` and why (before argparse, so the
    message names the table instead of 'unrecognized arguments')."""
    rejected = rejected_flags()
    found = []
    for token in argv:
        flag = token.split("=", 1)[0]
        if flag in rejected and flag not in found:
            found.append(flag)
    if found:
        reasons = "; ".join(f"{flag} ({rejected[flag]})" for flag in found)
        raise ConfigError(f"Megatron-LM flag{'s' if len(found) > 1 else ''} not supported by mile-pretrain: "
                          f"{reasons}; see {DOCS_SECTION}")


def _strip_ignored_megatron_flags(args: argparse.Namespace) -> List[str]:
    """Remove the ignored flags from ``args``; returns those that were given."""
    given = []
    for dest in [d for d in vars(args) if d.startswith(_IGNORED_PREFIX)]:
        if getattr(args, dest) is not None:
            given.append("--" + dest[len(_IGNORED_PREFIX):].replace("_", "-"))
        delattr(args, dest)
    return given


def _warn(text: str) -> None:
    """A start-up warning, printed once (by global rank 0 under torchrun)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"mile-pretrain: warning: {text}", file=sys.stderr, flush=True)


def parse_args(argv: Optional[Sequence[str]] = None, world_size: Optional[int] = None) -> argparse.Namespace:
    """Parse and validate ``argv`` (default ``sys.argv[1:]``).

    Layout-independent checks always run; with ``world_size`` also :func:`validate_runtime`
    (which needs the data and tokenizer files to exist). Raises :class:`ConfigError`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _reject_megatron_flags(argv)
    parser = build_parser()
    _model_defaults_from_checkpoint(parser, argv)
    args = parser.parse_args(argv)
    args.ignored_megatron_flags = _strip_ignored_megatron_flags(args)
    reasons = ignored_flags()
    for flag in args.ignored_megatron_flags:
        _warn(f"{flag} accepted and ignored ({reasons[flag][1]})")
    _fill_defaults(args)
    validate_args(args)
    if world_size is not None:
        validate_runtime(args, world_size)
    return args


# The model and its tokenizer: with --load, those of these flags the command line does not give
# come from the checkpoint's args.json (the effect of Megatron-LM's --use-checkpoint-args), so a
# checkpoint continues, e.g. one written by mile-import-hf, without repeating them.
CHECKPOINT_MODEL_FLAGS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels", "group_query_attention",
    "num_query_groups", "seq_length", "max_position_embeddings", "position_embedding_type", "rotary_base",
    "rotary_percent", "normalization", "norm_epsilon", "swiglu", "disable_bias_linear",
    "untie_embeddings_and_output_weights", "make_vocab_size_divisible_by",
    "tokenizer_type", "tokenizer_model", "vocab_file", "merge_file", "vocab_size",
)


def _model_defaults_from_checkpoint(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Make :data:`CHECKPOINT_MODEL_FLAGS` default to the values in the args.json of the latest
    checkpoint in ``--load`` (no longer required); nothing happens without one."""
    load_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    load_parser.add_argument("--load")
    load = load_parser.parse_known_args(argv)[0].load
    if load is None:
        return
    from megatron_mile.training.checkpointing import ARGS_FILE, CheckpointError, checkpoint_name, read_latest_iteration

    try:
        iteration = read_latest_iteration(load)
    except CheckpointError:
        return  # reported when the checkpoint is loaded
    path = os.path.join(checkpoint_name(load, iteration), ARGS_FILE) if iteration is not None else None
    if path is None or not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return  # unreadable: reported, naming the file, when the checkpoint is loaded
    defaults = {name: saved[name] for name in CHECKPOINT_MODEL_FLAGS if name in saved}
    parser.set_defaults(**defaults)
    for action in parser._actions:
        if action.dest in defaults:
            action.required = False


def _fill_defaults(args: argparse.Namespace) -> None:
    style = MODEL_STYLES[args.model_style or "gpt2"]
    for name, value in style.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.ffn_hidden_size is None:
        # As Megatron-LM: 4h, or for SwiGLU (two input projections) 2/3 of it rounded down to a
        # multiple of 64, which keeps the parameter count.
        args.ffn_hidden_size = int(4 * args.hidden_size * 2 / 3 / 64) * 64 if args.swiglu else 4 * args.hidden_size
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if not args.group_query_attention:
        args.num_query_groups = args.num_attention_heads
    if args.use_flash_attn:
        if args.attention_backend not in ("auto", "flash"):
            raise ConfigError(f"--use-flash-attn contradicts --attention-backend {args.attention_backend}")
        args.attention_backend = "flash"
    if args.recompute_activations:  # Megatron-LM's shorthand
        if args.recompute_granularity not in (None, "selective"):
            raise ConfigError("--recompute-activations means --recompute-granularity selective, "
                              f"not {args.recompute_granularity}")
        args.recompute_granularity = "selective"
    for name in ("start_weight_decay", "end_weight_decay"):
        if getattr(args, name) is None:
            setattr(args, name, args.weight_decay)
    _make_paths_absolute(args)
    if (args.train_iters is None) == (args.train_samples is None):
        raise ConfigError("give exactly one of --train-iters and --train-samples")
    if args.train_samples is not None:
        # Sample-based training (Megatron-LM): the iteration count and the schedule in samples
        # follow once the global batch size is known (validate_runtime).
        for flag, value, default in (("--lr-decay-iters", args.lr_decay_iters, None),
                                     ("--lr-warmup-iters", args.lr_warmup_iters, 0),
                                     ("--lr-wsd-decay-iters", args.lr_wsd_decay_iters, None)):
            if value != default:
                raise ConfigError(f"{flag} is for iteration-based training; with --train-samples give the "
                                  f"{flag.replace('-iters', '-samples')} flag")
        if args.lr_decay_samples is None:
            args.lr_decay_samples = args.train_samples
        if args.lr_warmup_fraction is not None:
            if args.lr_warmup_samples != 0:
                raise ConfigError("give only one of --lr-warmup-samples and --lr-warmup-fraction")
            if not 0 <= args.lr_warmup_fraction < 1:
                raise ConfigError(f"--lr-warmup-fraction must be in [0, 1), got {args.lr_warmup_fraction}")
            args.lr_warmup_samples = int(args.lr_warmup_fraction * args.lr_decay_samples)
    else:
        # (--rampup-batch-size with --train-iters is allowed, unlike Megatron-LM's assertion, since
        # its own GPT-3 example combines them; the schedule then stays in iterations.)
        for flag, value, default in (("--lr-decay-samples", args.lr_decay_samples, None),
                                     ("--lr-warmup-samples", args.lr_warmup_samples, 0),
                                     ("--lr-wsd-decay-samples", args.lr_wsd_decay_samples, None)):
            if value != default:
                raise ConfigError(f"{flag} needs sample-based training (--train-samples instead of --train-iters)")
        if args.lr_decay_iters is None:
            args.lr_decay_iters = args.train_iters
        if args.lr_warmup_fraction is not None:
            if args.lr_warmup_iters != 0:
                raise ConfigError("give only one of --lr-warmup-iters and --lr-warmup-fraction")
            if not 0 <= args.lr_warmup_fraction < 1:
                raise ConfigError(f"--lr-warmup-fraction must be in [0, 1), got {args.lr_warmup_fraction}")
            args.lr_warmup_iters = int(args.lr_warmup_fraction * args.lr_decay_iters)
    if args.tokenizer_type is None and args.mock_data:
        args.tokenizer_type = "NullTokenizer"
    if args.tokenizer_type is None and args.vocab_file is not None and args.merge_file is not None:
        args.tokenizer_type = "GPT2BPETokenizer"  # what Megatron-LM's GPT examples pass these files for
    if args.mock_data and args.tokenizer_type == "NullTokenizer" and args.vocab_size is None:
        args.vocab_size = 512


def split_blend(tokens: Sequence[str]):
    """``(prefixes, weights or None)`` of a ``--data-path``-style list, by Megatron-LM's rule
    (``megatron.core.datasets.utils.get_blend_from_list``, without importing megatron-core): an
    even-length list whose every other entry, from the first, is a number is 'weight prefix ...',
    anything else a list of prefixes. Raises :class:`ConfigError` for a half-weighted list."""
    tokens = list(tokens)
    if len(tokens) % 2 == 1:
        return tokens, None
    weights = []
    for token in tokens[0::2]:
        try:
            weights.append(float(token))
        except ValueError:
            weights.append(None)
    if all(w is None for w in weights):
        return tokens, None
    if any(w is None for w in weights):
        raise ConfigError(f"a blend must be 'prefix ...' or 'weight prefix weight prefix ...', got {tokens}")
    return tokens[1::2], weights


DATA_PATH_FLAGS = ("data_path", "train_data_path", "valid_data_path", "test_data_path")


def _make_paths_absolute(args: argparse.Namespace) -> None:
    """Tokenizer files, dataset prefixes and the index cache as absolute paths, so what args.json
    stores with a checkpoint (and every tool reading it) works from any directory."""
    for name in ("tokenizer_model", "vocab_file", "merge_file", "data_cache_path"):
        if getattr(args, name) is not None:
            setattr(args, name, os.path.abspath(getattr(args, name)))
    for name in DATA_PATH_FLAGS:
        tokens = getattr(args, name)
        if tokens:
            prefixes, weights = split_blend(tokens)
            prefixes = [os.path.abspath(p) for p in prefixes]
            setattr(args, name, prefixes if weights is None else
                    [x for w, p in zip(tokens[0::2], prefixes) for x in (w, p)])


def data_prefixes(args: argparse.Namespace) -> List[str]:
    """Every dataset prefix the flags name (``--data-path`` or the per-split blends)."""
    return [p for name in DATA_PATH_FLAGS if getattr(args, name) for p in split_blend(getattr(args, name))[0]]


def validate_args(args: argparse.Namespace) -> None:
    """Checks that depend on the flags alone."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "seq_length",
                 "micro_batch_size", "tensor_model_parallel_size", "pipeline_model_parallel_size",
                 "eval_interval", "log_interval", "num_query_groups"):
        need(getattr(args, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.train_samples is not None:
        need(args.train_samples >= 0, "--train-samples must be >= 0")
    else:
        need(args.train_iters >= 0, "--train-iters must be >= 0")
    need(args.num_attention_heads % tp == 0,
         f"--num-attention-heads ({args.num_attention_heads}) must be divisible by "
         f"--tensor-model-parallel-size ({tp})")
    need(args.num_attention_heads % args.num_query_groups == 0,
         f"--num-attention-heads ({args.num_attention_heads}) must be divisible by --num-query-groups "
         f"({args.num_query_groups})")
    need(args.num_query_groups % tp == 0,
         f"--num-query-groups ({args.num_query_groups}) must be divisible by --tensor-model-parallel-size ({tp})")
    need(args.kv_channels is not None or args.hidden_size % args.num_attention_heads == 0,
         f"--hidden-size ({args.hidden_size}) must be divisible by --num-attention-heads "
         f"({args.num_attention_heads}) unless --kv-channels is given")
    need(args.ffn_hidden_size % tp == 0,
         f"--ffn-hidden-size ({args.ffn_hidden_size}) must be divisible by --tensor-model-parallel-size ({tp})")
    need(args.num_layers % pp == 0,
         f"--num-layers ({args.num_layers}) must be divisible by --pipeline-model-parallel-size ({pp})")
    if args.num_layers_per_virtual_pipeline_stage is not None:
        need(pp > 1, "--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1")
        per_stage = args.num_layers // pp
        need(per_stage % args.num_layers_per_virtual_pipeline_stage == 0,
             f"layers per pipeline stage ({per_stage}) must be divisible by "
             f"--num-layers-per-virtual-pipeline-stage ({args.num_layers_per_virtual_pipeline_stage})")
    if args.position_embedding_type == "learned_absolute":
        need(args.max_position_embeddings >= args.seq_length,
             f"--max-position-embeddings ({args.max_position_embeddings}) < --seq-length ({args.seq_length})")
    if args.global_batch_size is not None:
        need(args.global_batch_size % args.micro_batch_size == 0,
             f"--global-batch-size ({args.global_batch_size}) must be divisible by --micro-batch-size "
             f"({args.micro_batch_size})")
    if args.sequence_parallel:
        need(tp > 1, "--sequence-parallel needs --tensor-model-parallel-size > 1")
        need(args.transformer_impl == "transformer_engine",
             "--sequence-parallel needs --transformer-impl transformer_engine (the local spec's norms "
             "do not support it)")

    # Activation recompute (megatron-core's TransformerConfig checks, as one line each).
    if args.recompute_granularity == "full":
        need(args.recompute_method is not None,
             "--recompute-granularity full needs --recompute-method uniform or block")
    if args.recompute_method is not None:
        need(args.recompute_granularity == "full", "--recompute-method needs --recompute-granularity full")
        need(args.recompute_num_layers is not None and args.recompute_num_layers > 0,
             "--recompute-method needs a positive --recompute-num-layers")
        layers_per_stage = args.num_layers // pp
        need(args.recompute_method == "block" or args.recompute_num_layers <= layers_per_stage,
             f"--recompute-num-layers ({args.recompute_num_layers}) must be <= the layers per pipeline "
             f"stage ({layers_per_stage})")
    need(args.recompute_modules is None or args.recompute_granularity == "selective",
         "--recompute-modules needs --recompute-granularity selective (or --recompute-activations)")
    need(not args.distribute_saved_activations or (args.recompute_granularity == "full" and tp > 1),
         "--distribute-saved-activations needs --recompute-granularity full and TP > 1")

    # Data and tokenizer.
    per_split = args.train_data_path is not None or args.valid_data_path is not None or args.test_data_path is not None
    need(sum(map(bool, (args.data_path, per_split, args.mock_data))) == 1,
         "give exactly one of --data-path PREFIX [...], --train-data-path PREFIX [...] (with "
         "--valid-data-path) and --mock-data")
    if per_split:
        need(bool(args.train_data_path) or (args.train_samples or args.train_iters) == 0,
             "--valid-data-path / --test-data-path need --train-data-path")
        need(bool(args.valid_data_path) or args.eval_iters == 0,
             "--train-data-path needs --valid-data-path (or --eval-iters 0)")
    need(args.tokenizer_type is not None, "--tokenizer-type is required with --data-path")
    if args.tokenizer_type in ("SentencePieceTokenizer", "HuggingFaceTokenizer"):
        need(args.tokenizer_model is not None, f"--tokenizer-type {args.tokenizer_type} needs --tokenizer-model")
    if args.tokenizer_type == "GPT2BPETokenizer":
        need(args.vocab_file is not None and args.merge_file is not None,
             "--tokenizer-type GPT2BPETokenizer needs --vocab-file and --merge-file")
    if args.tokenizer_type == "NullTokenizer":
        need(args.vocab_size is not None and args.vocab_size > 1, "--tokenizer-type NullTokenizer needs --vocab-size")
    for name in DATA_PATH_FLAGS:
        if getattr(args, name):
            split_blend(getattr(args, name))
    try:
        split = [float(x) for x in args.split.replace(" ", "").split(",")]
    except ValueError:
        raise ConfigError(f"--split must be comma-separated numbers, got {args.split!r}")
    need(len(split) <= 3 and all(x >= 0 for x in split) and sum(split) > 0, f"bad --split {args.split!r}")

    # Optimisation. The learning-rate checks are the assertions of megatron's OptimizerParamScheduler
    # (which would otherwise fail with a bare AssertionError after the model is built).
    need(sum((args.bf16, args.fp16, args.fp32)) <= 1, "give at most one of --bf16, --fp16 and --fp32")
    need(args.loss_scale is None or args.loss_scale > 0, "--loss-scale must be positive")
    need(args.initial_loss_scale > 0 and 0 < args.min_loss_scale <= args.initial_loss_scale,
         "need 0 < --min-loss-scale <= --initial-loss-scale")
    need(args.lr >= 0 and 0 <= args.min_lr <= args.lr, f"need 0 <= --min-lr ({args.min_lr}) <= --lr ({args.lr})")
    need(0 <= args.lr_warmup_init <= args.lr,
         f"need 0 <= --lr-warmup-init ({args.lr_warmup_init}) <= --lr ({args.lr})")
    # In iterations, or in samples with --train-samples (Megatron-LM's two units).
    unit = "samples" if args.train_samples is not None else "iters"
    total, warmup, decay, wsd_decay = (getattr(args, name.format(unit)) for name in (
        "train_{}", "lr_warmup_{}", "lr_decay_{}", "lr_wsd_decay_{}"))
    need(warmup >= 0, f"--lr-warmup-{unit} must be >= 0")
    if total > 0:
        need(decay > 0, f"--lr-decay-{unit} must be positive")
        warmup_source = ("--lr-warmup-fraction " + str(args.lr_warmup_fraction)
                         if args.lr_warmup_fraction is not None else f"--lr-warmup-{unit}")
        word = "samples" if unit == "samples" else "iterations"
        need(warmup < decay,
             f"warmup {word} ({warmup}, {warmup_source}) must be fewer than the decay "
             f"{word} ({decay}, --lr-decay-{unit}, default --train-{unit})")
    if args.lr_decay_style == "WSD":
        need(wsd_decay is not None, f"--lr-decay-style WSD needs --lr-wsd-decay-{unit}")
        need(0 < wsd_decay <= decay or total == 0,
             f"--lr-wsd-decay-{unit} ({wsd_decay}) must be in [1, decay "
             f"{'samples' if unit == 'samples' else 'iterations'} ({decay})]")
    need(args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}")
    need(args.clip_grad >= 0, "--clip-grad must be >= 0")
    need(0 <= args.hidden_dropout < 1 and 0 <= args.attention_dropout < 1, "dropout must be in [0, 1)")
    need(not (args.overlap_param_gather and not args.use_distributed_optimizer),
         "--overlap-param-gather needs --use-distributed-optimizer")
    if args.fused_output_loss:
        from megatron_mile.losses import get_loss

        need(get_loss(args.loss).weighted_cross_entropy,
             f"--fused-output-loss needs a weighted cross-entropy loss; --loss {args.loss} reads the logits")
        # megatron's DDP waits for a layer's gathered parameters in that layer's forward hook, which
        # the fused loss does not call for the output layer.
        need(not args.overlap_param_gather, "--fused-output-loss does not support --overlap-param-gather")

    # Checkpoints.
    need(args.save is not None or (args.save_interval is None and args.save_iters is None
                                   and args.save_schedule == "interval"),
         "--save-interval / --save-iters / --save-schedule exp need --save DIR")
    need(args.save_interval is None or args.save_interval > 0, "--save-interval must be positive")
    need(args.save_exp_per_doubling > 0, "--save-exp-per-doubling must be positive")
    need(not (args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler),
         "give at most one of --override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler")
    need(args.exit_duration_in_mins is None or args.exit_duration_in_mins >= 0,
         "--exit-duration-in-mins must be >= 0")
    if args.mile_normalization == "microbatch":
        from megatron_mile.losses.reduction import MICROBATCH_UNWEIGHTED_LOSSES, MICROBATCH_WEIGHTED_LOSSES

        known = MICROBATCH_WEIGHTED_LOSSES + MICROBATCH_UNWEIGHTED_LOSSES
        need(args.loss in known, f"--mile-normalization microbatch (the MiLe authors' code) is defined for "
                                 f"--loss {', '.join(known)}, not {args.loss}")

    try:
        loss_config_from_args(args)
    except ValueError as exc:
        raise ConfigError(str(exc))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def transformer_engine_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def resolve_precision(args: argparse.Namespace, cuda_available: bool) -> str:
    """The training precision, ``"bf16"``, ``"fp16"`` or ``"fp32"``: an explicit ``--bf16`` /
    ``--fp16`` / ``--fp32`` wins; otherwise bf16 with CUDA (as one would train on GPUs) and fp32 on
    CPU (where bf16 is slow). Pure: it reads the flags and does not change ``args``."""
    if args.bf16:
        return "bf16"
    if args.fp16:
        return "fp16"
    if args.fp32:
        return "fp32"
    return "bf16" if cuda_available else "fp32"


def validate_runtime(args: argparse.Namespace, world_size: int) -> None:
    """Checks that depend on the launch; fills ``args.data_parallel_size``, ``args.num_microbatches``,
    ``args.global_batch_size``, ``args.transformer_impl`` and ``args.distributed_backend``."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    need(world_size % (tp * pp) == 0,
         f"world size ({world_size}) must be divisible by --tensor-model-parallel-size ({tp}) x "
         f"--pipeline-model-parallel-size ({pp})")
    dp = world_size // (tp * pp)
    args.data_parallel_size = dp
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    need(args.global_batch_size % (args.micro_batch_size * dp) == 0,
         f"--global-batch-size ({args.global_batch_size}) must be divisible by --micro-batch-size "
         f"({args.micro_batch_size}) x data-parallel size ({dp})")
    args.num_microbatches = args.global_batch_size // (args.micro_batch_size * dp)
    if args.rampup_batch_size is not None:
        start, increment, ramp_samples = args.rampup_batch_size
        chunk = args.micro_batch_size * dp
        need(0 < start < args.global_batch_size and increment > 0 and ramp_samples >= 0,
             f"--rampup-batch-size {start} {increment} {ramp_samples}: need 0 < START < --global-batch-size "
             f"({args.global_batch_size}), INCREMENT > 0, RAMP_SAMPLES >= 0")
        need((args.global_batch_size - start) % increment == 0,
             f"--rampup-batch-size: --global-batch-size - START ({args.global_batch_size - start}) must be "
             f"divisible by INCREMENT ({increment})")
        need(start % chunk == 0 and increment % chunk == 0,
             f"--rampup-batch-size: START ({start}) and INCREMENT ({increment}) must be multiples of "
             f"--micro-batch-size x data-parallel size ({chunk})")
    if args.train_samples is not None:
        args.train_iters = iterations_for_samples(args)
    if args.num_layers_per_virtual_pipeline_stage is not None:
        batches = [args.global_batch_size]
        if args.rampup_batch_size is not None:  # every batch size of the ramp
            batches += list(range(args.rampup_batch_size[0], args.global_batch_size, args.rampup_batch_size[1]))
        counts = sorted({b // (args.micro_batch_size * dp) for b in batches})
        need(all(c % pp == 0 for c in counts),
             f"the interleaved schedule needs micro-batches per step ({counts[0] if len(counts) == 1 else counts}) "
             f"to be a "
             f"multiple of --pipeline-model-parallel-size ({pp})")

    has_cuda = cuda_available()
    if args.distributed_backend is None:
        args.distributed_backend = "nccl" if has_cuda else "gloo"
    need(has_cuda or args.distributed_backend == "gloo", "--distributed-backend nccl needs CUDA; use gloo")
    if args.transformer_impl is None:
        args.transformer_impl = "transformer_engine" if has_cuda and transformer_engine_available() else "local"
    if args.transformer_impl == "transformer_engine":
        need(has_cuda and transformer_engine_available(),
             "--transformer-impl transformer_engine needs CUDA and transformer-engine installed")
    need(has_cuda or not args.use_distributed_optimizer,
         "--use-distributed-optimizer is GPU-only here; drop the flag on CPU")
    if args.context_parallel_size != 1:
        need(args.transformer_impl == "transformer_engine",
             f"--context-parallel-size {args.context_parallel_size} needs transformer-engine attention "
             f"(--transformer-impl transformer_engine, with CUDA and transformer-engine installed); the "
             f"local layer spec's attention has no context parallelism")
        need(False, f"--context-parallel-size {args.context_parallel_size}: mile-pretrain does not split "
                    f"sequences over context-parallel ranks yet (data path and loss); use 1")

    # Metrics packages: missing ones stop the run now, not with a warning lost in the log.
    for flag, value, module, extra in (("--tensorboard-dir", args.tensorboard_dir, "tensorboard", "tensorboard"),
                                       ("--wandb-project", args.wandb_project, "wandb", "wandb")):
        need(value is None or importlib.util.find_spec(module) is not None,
             f"{flag} needs the {module} package: pip install 'megatron-mile[{extra}]' (or pip install {module})")

    for name in DATA_PATH_FLAGS:
        for prefix in split_blend(getattr(args, name))[0] if getattr(args, name) else ():
            missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(p)]
            need(not missing, f"--{name.replace('_', '-')}: dataset file(s) not found: {', '.join(missing)}")
    if args.data_path:
        from megatron_mile.training.data import check_dataset_splits

        try:
            check_dataset_splits(args)
        except ValueError as exc:
            raise ConfigError(str(exc))
    for flag, path in (("--tokenizer-model", args.tokenizer_model), ("--vocab-file", args.vocab_file),
                       ("--merge-file", args.merge_file)):
        if path is not None and args.tokenizer_type != "NullTokenizer":
            need(os.path.exists(path), f"{flag}: {path} not found")
    if any(getattr(args, name) for name in DATA_PATH_FLAGS):
        from megatron_mile.training.data import check_data_tokenizer

        try:  # data made with another tokenizer, or a dataset its manifest disagrees with
            check_data_tokenizer(args)
        except ValueError as exc:
            raise ConfigError(str(exc))


def iterations_for_samples(args: argparse.Namespace) -> int:
    """Iterations of a ``--train-samples`` run, as Megatron-LM's ``update_train_iters`` counts them:
    the ramp-up steps (while the consumed samples are <= RAMP_SAMPLES and <= --train-samples), then
    whole global batches; a partial last batch is dropped."""
    if args.rampup_batch_size is None:
        return args.train_samples // args.global_batch_size
    iterations = consumed = 0
    while consumed <= args.rampup_batch_size[2] and consumed <= args.train_samples:
        consumed += global_batch_size_at(args, consumed)
        iterations += 1
    if args.train_samples > consumed:
        iterations += (args.train_samples - consumed) // args.global_batch_size
    return iterations


def global_batch_size_at(args: argparse.Namespace, consumed_samples: int) -> int:
    """The global batch size of the step that starts after ``consumed_samples``: constant, or with
    ``--rampup-batch-size START INCREMENT SAMPLES`` Megatron-LM's ramp (START, raised by INCREMENT
    every ``SAMPLES / ((global - START) / INCREMENT)`` consumed samples, the full size once more than
    SAMPLES are consumed). Written out here because megatron-core 0.18 replaced its ramp calculator."""
    if args.rampup_batch_size is None:
        return args.global_batch_size
    start, increment, ramp_samples = args.rampup_batch_size
    if consumed_samples > ramp_samples or ramp_samples == 0:
        return args.global_batch_size
    samples_per_increment = ramp_samples / ((args.global_batch_size - start) // increment)
    return min(start + int(consumed_samples / samples_per_increment) * increment, args.global_batch_size)


def save_iterations(args: argparse.Namespace) -> set:
    """Iterations (1-based) after which a checkpoint is written, besides ``--save-interval``."""
    its = set(args.save_iters or ())
    if args.save_schedule == "exp" and args.train_iters > 0:
        # ceil(2^(k/n)) for k = 0, 1, ...: 1, 2, 4, ... for n = 1; denser for n > 1.
        k = 0
        while True:
            it = math.ceil(2 ** (k / args.save_exp_per_doubling) - 1e-9)
            if it > args.train_iters:
                break
            its.add(it)
            k += 1
    if args.save is not None and not args.no_save_final and args.train_iters > 0:
        its.add(args.train_iters)
    return {it for it in its if 0 < it <= args.train_iters}


def should_save(args: argparse.Namespace, iteration: int, extra: set) -> bool:
    if args.save is None:
        return False
    if args.save_interval and iteration % args.save_interval == 0:
        return True
    return iteration in extra


def virtual_pipeline_size(args: argparse.Namespace) -> Optional[int]:
    """Model chunks per pipeline rank for the interleaved schedule (None without it)."""
    if args.num_layers_per_virtual_pipeline_stage is None:
        return None
    return args.num_layers // args.pipeline_model_parallel_size // args.num_layers_per_virtual_pipeline_stage


def transformer_config_from_args(args: argparse.Namespace):
    """megatron-core's ``TransformerConfig`` for these flags (as Megatron-LM's
    ``core_transformer_config_from_args``), with the platform's pipeline settings."""
    import torch
    import torch.nn.functional as F
    from megatron.core.transformer import TransformerConfig

    from megatron_mile import platform

    from megatron.core.transformer.enums import AttnBackend

    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    use_te = getattr(args, "transformer_impl", None) == "transformer_engine"
    return TransformerConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        kv_channels=args.kv_channels,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std,
        normalization=args.normalization,
        layernorm_epsilon=args.norm_epsilon,
        gated_linear_unit=args.swiglu,
        activation_func=F.silu if args.swiglu else F.gelu,
        add_bias_linear=not args.disable_bias_linear,
        bias_activation_fusion=use_te and args.swiglu,
        masked_softmax_fusion=use_te,
        bias_dropout_fusion=use_te,
        # megatron's own linear layers (the output layer, also under the TE spec) need apex's
        # fused_weight_gradient_mlp_cuda for this, as Megatron-LM checks too; off on CPU.
        gradient_accumulation_fusion=use_te and importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_size(args),
        sequence_parallel=args.sequence_parallel,
        # What Megatron-LM's development branch reads for its fused linear cross entropy; here
        # MileGPTModel.fuses_output_layer_and_loss (getattr: checkpoints saved before the flag).
        cross_entropy_loss_fusion=getattr(args, "fused_output_loss", False),
        cross_entropy_fusion_impl="linear" if getattr(args, "fused_output_loss", False) else "native",
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=args.bf16,
        fp16=args.fp16,
        # transformer-engine's attention reads it (megatron-core exports it as NVTE_* variables,
        # asserting they do not change within a process); the local spec's choice is its
        # core_attention class (model.gpt_layer_spec), so there the default stays.
        attention_backend=AttnBackend[args.attention_backend] if use_te else AttnBackend.auto,
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers,
        distribute_saved_activations=args.distribute_saved_activations,
        **({} if args.recompute_modules is None else {"recompute_modules": args.recompute_modules}),
        use_cpu_initialization=args.use_cpu_initialization,
        # The loss function returns sums and token counts; the step divides once per global batch
        # (see pretrain_gpt.LossDenominator).
        calculate_per_token_loss=True,
        deallocate_pipeline_outputs=True,
        **platform.pipeline_p2p_kwargs(),
    )


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``mile-pretrain``: parse (answering ``--help`` and flag errors before megatron-core is
    imported), then train. Configuration errors print one line and exit with status 2."""
    from megatron_mile.training.logger import fused_path_notice

    with fused_path_notice():  # (--load reads the checkpoint's args.json, which imports megatron-core)
        try:
            args = parse_args(argv)
        except ConfigError as exc:
            print(f"mile-pretrain: error: {exc}", file=sys.stderr)
            sys.exit(2)
        from megatron_mile import pretrain_gpt
    pretrain_gpt.main(args)
