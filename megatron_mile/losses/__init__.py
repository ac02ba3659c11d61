"""Token-weighted, vocabulary-parallel language-model losses: cross entropy, MiLe and focal; and EMO.

Fast path: :mod:`megatron_mile.losses.vocab_parallel` (EMO: :mod:`megatron_mile.losses.emo`); plain reference:
:mod:`megatron_mile.losses.reference`; from per-token terms to the training objective:
:mod:`megatron_mile.losses.reduction`.
"""

from megatron_mile.losses.config import LOSS_TYPES, NORMALIZATIONS, LossConfig
from megatron_mile.losses.emo import EmoTerms, emo_mle_loss, vocab_parallel_emo
from megatron_mile.losses.reduction import LossTerms, microbatch_alpha, reduce_weighted_loss, weighted_mean
from megatron_mile.losses.vocab_parallel import (
    VocabParallelWeightedCrossEntropy,
    WeightedCrossEntropy,
    vocab_parallel_cross_entropy_with_entropy,
    vocab_parallel_focal_cross_entropy,
    vocab_parallel_mile_cross_entropy,
    vocab_parallel_weighted_cross_entropy,
)

__all__ = [
    "EmoTerms",
    "LOSS_TYPES",
    "NORMALIZATIONS",
    "LossConfig",
    "LossTerms",
    "VocabParallelWeightedCrossEntropy",
    "WeightedCrossEntropy",
    "emo_mle_loss",
    "microbatch_alpha",
    "reduce_weighted_loss",
    "vocab_parallel_cross_entropy_with_entropy",
    "vocab_parallel_emo",
    "vocab_parallel_focal_cross_entropy",
    "vocab_parallel_mile_cross_entropy",
    "vocab_parallel_weighted_cross_entropy",
    "weighted_mean",
]
