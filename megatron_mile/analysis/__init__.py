"""What MiLe changes, seen on your own runs: token frequencies, per-token surprisal, learning curves.

* :mod:`~megatron_mile.analysis.frequency`: streaming token counts over ``.bin/.idx`` datasets and
  blends, frequency buckets (log-spaced counts, quantiles of token mass);
* :mod:`~megatron_mile.analysis.surprisal_store`: the on-disk store of per-token surprisal/entropy per
  checkpoint (filled by :mod:`megatron_mile.evaluation.surprisal_evaluator`);
* :mod:`~megatron_mile.analysis.learning_curves`: smoothing, age of acquisition, forgettability,
  within- and cross-run variability (Chang et al., arXiv 2308.15419), aggregation by bucket;
* :mod:`~megatron_mile.analysis.report` / :mod:`~megatron_mile.analysis.plots`: tables and figures.

This package needs numpy (and scipy for spline smoothing, matplotlib for figures: the ``analysis``
extra); only counting imports megatron-core (its ``IndexedDataset``), and nothing imports torch
except through it.
"""

from megatron_mile.analysis.frequency import (
    FrequencyBuckets,
    TokenCounts,
    VocabularyMismatchError,
    build_buckets,
    count_tokens,
    log_buckets,
    mass_quantile_buckets,
)
from megatron_mile.analysis.learning_curves import (
    CurveMetrics,
    CurveSmoother,
    SmoothingConfig,
    aggregate_by_bucket,
    chance_bits,
    compute_curve_metrics,
    cross_run_variability,
)
from megatron_mile.analysis.surprisal_store import ModelMismatchError, SurprisalStore, model_signature

__all__ = [
    "CurveMetrics",
    "CurveSmoother",
    "FrequencyBuckets",
    "ModelMismatchError",
    "SmoothingConfig",
    "SurprisalStore",
    "TokenCounts",
    "VocabularyMismatchError",
    "aggregate_by_bucket",
    "build_buckets",
    "chance_bits",
    "compute_curve_metrics",
    "count_tokens",
    "cross_run_variability",
    "log_buckets",
    "mass_quantile_buckets",
    "model_signature",
]
