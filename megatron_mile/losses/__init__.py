"""Language-model losses for megatron-core GPT: a registry of token-weighted, vocabulary-parallel losses.

Registered losses (``--loss``): cross_entropy, mile, focal, dft, eslm (weighted cross entropies, one
shared sweep over the logits) and emo. Each is one module (``losses/<name>.py``) built by name by
:mod:`megatron_mile.losses.registry`; adding one: docs/losses.md.

The per-token weight seam, for kernels that compute the statistics themselves (a fused output
layer and loss, say)::

    stats = TokenStats(ce, entropy, p_target)          # float32 [tokens], detached, full vocabulary
    weight = token_weight(config, stats, loss_mask, dp_group)   # float32 [tokens], no gradient
    # per-token loss = weight * ce; d/dlogits = weight * (softmax - onehot(target))

``loss_mask`` and ``dp_group`` may be None (every position counts; this rank's batch); ESLM uses them
for its quantile over the data-parallel group (one all_gather). ``token_weight`` raises for a loss
that is not a weighted cross entropy (``get_loss(name).weighted_cross_entropy`` is False: emo).

Fast path: :mod:`megatron_mile.losses.vocab_parallel` (EMO: :mod:`megatron_mile.losses.emo`); plain
float64 reference: :mod:`megatron_mile.losses.reference`; from per-token terms to the training
objective: :mod:`megatron_mile.losses.reduction`.
"""

from megatron_mile.losses.config import LOSS_TYPES, NORMALIZATIONS, LossConfig
from megatron_mile.losses.emo import EmoTerms, emo_training_loss, vocab_parallel_emo
from megatron_mile.losses.reduction import LossTerms, microbatch_alpha, reduce_weighted_loss, weighted_mean
from megatron_mile.losses.registry import (
    LOSS_NAMES,
    Loss,
    LossParam,
    TokenStats,
    add_loss_arguments,
    get_loss,
    loss_config_from_args,
    token_weight,
)
from megatron_mile.losses.vocab_parallel import (
    VocabParallelWeightedCrossEntropy,
    WeightedCrossEntropy,
    vocab_parallel_cross_entropy_with_entropy,
    vocab_parallel_focal_cross_entropy,
    vocab_parallel_mile_cross_entropy,
    vocab_parallel_weighted_cross_entropy,
)
from megatron_mile.losses.linear_cross_entropy import vocab_parallel_linear_weighted_cross_entropy

__all__ = [
    "EmoTerms",
    "LOSS_NAMES",
    "LOSS_TYPES",
    "Loss",
    "LossParam",
    "NORMALIZATIONS",
    "LossConfig",
    "LossTerms",
    "TokenStats",
    "VocabParallelWeightedCrossEntropy",
    "WeightedCrossEntropy",
    "add_loss_arguments",
    "emo_training_loss",
    "get_loss",
    "loss_config_from_args",
    "microbatch_alpha",
    "reduce_weighted_loss",
    "token_weight",
    "vocab_parallel_cross_entropy_with_entropy",
    "vocab_parallel_emo",
    "vocab_parallel_focal_cross_entropy",
    "vocab_parallel_linear_weighted_cross_entropy",
    "vocab_parallel_mile_cross_entropy",
    "vocab_parallel_weighted_cross_entropy",
    "weighted_mean",
]
