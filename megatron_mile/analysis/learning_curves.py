"""Per-token learning curves across checkpoints (Chang et al., arXiv 2308.15419) and their summaries.

Input: a run's surprisal ``[C, N]`` in bits, ``C`` checkpoints (training steps ``>= 1``) by ``N``
evaluated tokens. Per token:

* final surprisal: mean of the raw surprisal over the last ``final_window`` checkpoints;
* within-run variability: standard deviation (ddof 0) over the same checkpoints;
* age of acquisition (AoA): ``log10(step)`` where the smoothed curve first reaches the midpoint of
  chance ``log2 V`` and the smoothed curve's minimum (linear interpolation between grid points);
  *censored* (set to the first checkpoint) if the curve is already past the midpoint there;
  undefined (NaN, counted and reported as not acquired) unless the minimum is at least
  ``min_drop`` bits below chance. That threshold is ours: rare tokens whose surprisal only rises
  above chance (the model learns that they are rare) otherwise get an AoA at the first checkpoint
  that reflects nothing but initialisation noise. ``min_drop=0`` keeps every token whose minimum is
  below chance, but is still not the reference's rule (see ``definitions="reference"`` below);
* forgettability: the sum of the smoothed curve's increases (bits);
* cross-run variability: mean over pairs of runs (different seeds) of the squared difference of
  their smoothed curves, averaged over a uniform log-step grid on the runs' common range.

Smoothing. Chang et al. fit a GAM per token. We use a cubic smoothing spline in ``log10(step)``
(``scipy.interpolate.make_smoothing_spline``) with *one* penalty for all tokens, chosen so the
smoother has ``df`` effective degrees of freedom (the trace of its hat matrix: 2 is a straight
line, ``C`` interpolates). Why:

* the smoother is then a fixed linear map, an ``[G, C]`` matrix from the checkpoints to a fine grid,
  so a million tokens are one matrix product (in chunks): seconds, where per-token fits take hours;
* the curves here are short and noisy (a dozen checkpoints in the walkthrough, ~200 in the paper);
  per-token smoothness selection (GCV/REML) on a dozen points often picks interpolation, which turns
  noise into "forgetting" and jitters the AoA;
* a monotone smoother (isotonic regression) is not an option: it removes exactly the increases
  forgettability measures.

``SmoothingConfig(method="none")`` uses the raw curve, linearly interpolated in log-step (exact on
synthetic curves; useful to check what the smoothing changes). Step 0 (the untrained model, at
chance anyway) has no log-step and is not allowed.

``definitions="reference"`` computes every statistic as the authors' code does (github
tylerachang/lm-learning-curves, commit fc89e49, ``utils/annotator.py``), with our smoother in place of
their per-token GAM:

* final surprisal and within-run variability over the last 11 checkpoints (all of them if fewer);
* AoA: the smoothed curve on 1000 evenly spaced log10 steps from the first to the last checkpoint;
  threshold ``(chance + minimum) / 2``; AoA is the first of those points at or below it (no
  interpolation), and ``log10`` of the last step when the minimum is not below chance (such a token
  is *not acquired* but keeps that AoA and stays in every mean);
* forgettability and cross-run variability from the smoothed curves at the checkpoints themselves
  (cross-run: the squared differences averaged over the checkpoints, so all runs need the same steps);
* a leading step 0 is dropped from the smoothed statistics (as theirs) and kept in the raw ones;
* chance (chosen by the caller) is ``log2`` of the tokenizer's vocabulary there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

__all__ = [
    "BucketAggregate",
    "CurveMetrics",
    "CurveSmoother",
    "SmoothingConfig",
    "aggregate_by_bucket",
    "chance_bits",
    "compute_curve_metrics",
    "cross_run_variability",
    "grouped_mean",
    "mean_curves_by_bucket",
]

# Tokens per block of the vectorised computation: [grid, block] float64 = 256 * 32768 * 8 = 64 MiB.
DEFAULT_BLOCK_TOKENS = 1 << 15

# A token counts as acquired when its smoothed curve gets at least this far below chance (bits).
DEFAULT_MIN_DROP = 1.0

# ``definitions``: the project's (module docstring) or those of Chang et al.'s code.
DEFINITIONS = ("project", "reference")
DEFAULT_FINAL_WINDOW = 3
# utils/annotator.py: get_confidence_scores / get_variability_scores(last_n=11), get_gam_aoas(gam_granularity=1000).
REFERENCE_FINAL_WINDOW = 11
REFERENCE_AOA_GRID_POINTS = 1000


def _check_definitions(definitions: str) -> None:
    if definitions not in DEFINITIONS:
        raise ValueError(f"unknown definitions {definitions!r} (one of {', '.join(DEFINITIONS)})")


def _drop_step_zero(steps: Sequence[int], values: Optional[np.ndarray] = None):
    """The reference's handling of a first checkpoint at step 0 (log10 = -inf): left out of the
    smoothed statistics."""
    steps = np.asarray(steps)
    if steps.size and steps[0] == 0:
        return steps[1:], None if values is None else values[1:]
    return steps, values


def chance_bits(vocab_size: int) -> float:
    """Surprisal of a uniform prediction over ``vocab_size`` outputs, ``log2 V``."""
    if vocab_size < 2:
        raise ValueError(f"vocabulary size must be >= 2, got {vocab_size}")
    return math.log2(vocab_size)


@dataclass
class SmoothingConfig:
    """How each token's curve is smoothed before AoA, forgettability and cross-run variability."""

    method: str = "spline"
    """'spline' (cubic smoothing spline in log10 step, shared penalty) or 'none' (raw, linear
    interpolation in log10 step)."""
    df: Optional[float] = None
    """Effective degrees of freedom of the spline, in ``[2, C]``. Default ``clip(C / 3, 4, 12)``:
    enough for a drop, a plateau and a bump, not enough to follow checkpoint-to-checkpoint noise."""
    grid_points: int = 256
    """Points of the uniform log10-step grid the smoothed curves are evaluated on."""

    def resolved_df(self, num_checkpoints: int) -> float:
        df = self.df if self.df is not None else min(12.0, max(4.0, num_checkpoints / 3))
        return float(min(max(df, 2.0), num_checkpoints))


def _log_steps(steps: Sequence[int]) -> np.ndarray:
    steps = np.asarray(steps, dtype=np.float64)
    if steps.ndim != 1 or steps.size < 2:
        raise ValueError(f"need the steps of at least 2 checkpoints, got {steps.tolist()}")
    if steps.min() < 1:
        raise ValueError(f"learning curves are in log10(step): steps must be >= 1, got {steps.min():g}")
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"checkpoint steps must be strictly increasing, got {steps.tolist()}")
    return np.log10(steps)


def _spline_operator(u: np.ndarray, at: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(``[len(at), C]`` map from values at ``u`` to the smoothed curve at ``at``, hat matrix ``[C, C]``):
    the spline is linear in the data, so fitting the identity gives its matrix."""
    from scipy.interpolate import make_smoothing_spline

    spline = make_smoothing_spline(u, np.eye(u.size), lam=lam)
    return spline(at), spline(u)


class CurveSmoother:
    """The linear smoother of one set of checkpoint steps: ``smooth(Y[C, n]) -> [G, n]`` on :attr:`grid`."""

    def __init__(self, steps: Sequence[int], config: SmoothingConfig = SmoothingConfig(),
                 grid: Optional[np.ndarray] = None):
        x = _log_steps(steps)
        self.config = config
        self.log_steps = x
        if grid is None:
            # The checkpoints themselves are grid points, so 'none' is exact and no knot is skipped.
            grid = np.union1d(np.linspace(x[0], x[-1], config.grid_points), x)
        grid = np.asarray(grid, np.float64)
        if grid.min() < x[0] - 1e-12 or grid.max() > x[-1] + 1e-12:
            raise ValueError("the smoothing grid must lie within the checkpoints' log-step range")
        self.grid = grid
        self.lam: Optional[float] = None
        if config.method == "none":
            self.operator = np.stack([np.interp(grid, x, e) for e in np.eye(x.size)], axis=1)
            self.df = float(x.size)
        elif config.method == "spline":
            if x.size < 5:
                raise ValueError(f"spline smoothing needs at least 5 checkpoints, got {x.size}; "
                                 "save more checkpoints or use smoothing 'none'")
            self.operator, self.lam, self.df = self._fit(x, grid, config.resolved_df(x.size))
        else:
            raise ValueError(f"unknown smoothing method {config.method!r} (spline or none)")

    @staticmethod
    def _fit(x: np.ndarray, grid: np.ndarray, target_df: float):
        # Work on [0, 1] so the penalty's scale does not depend on the step range.
        span = x[-1] - x[0]
        u, at = (x - x[0]) / span, (grid - x[0]) / span
        if target_df >= x.size - 1e-9:
            op, hat = _spline_operator(u, at, 0.0)
            return op, 0.0, float(np.trace(hat))
        lo, hi = -14.0, 6.0  # log10 penalty: df(lo) ~ C, df(hi) ~ 2; df decreases with the penalty
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            df = float(np.trace(_spline_operator(u, u, 10.0 ** mid)[1]))
            lo, hi = (mid, hi) if df > target_df else (lo, mid)
        lam = 10.0 ** (0.5 * (lo + hi))
        op, hat = _spline_operator(u, at, lam)
        return op, lam, float(np.trace(hat))

    def smooth(self, values: np.ndarray) -> np.ndarray:
        """``[C, n]`` raw curves -> ``[G, n]`` smoothed curves on :attr:`grid` (float64)."""
        values = np.asarray(values, np.float64)
        if values.shape[0] != self.log_steps.size:
            raise ValueError(f"{values.shape[0]} checkpoints of data for {self.log_steps.size} steps")
        return self.operator @ values

    def describe(self) -> dict:
        return {"method": self.config.method, "df": round(self.df, 3), "lambda": self.lam,
                "grid_points": int(self.grid.size), "space": "log10(step)"}


@dataclass
class CurveMetrics:
    """Per-token learning-curve statistics of one run (each ``[N]`` float64 unless noted)."""

    final_surprisal: np.ndarray
    """Mean raw surprisal (bits) over the last ``final_window`` checkpoints."""
    within_run_variability: np.ndarray
    """Std (ddof 0) of the raw surprisal over the same checkpoints."""
    aoa: np.ndarray
    """Age of acquisition, log10(step). Project: NaN where the token is not acquired (see
    :attr:`acquired`). Reference: log10 of the last step there."""
    acquired: np.ndarray
    """bool: the smoothed curve's minimum is at least ``min_drop`` below chance (reference: below chance)."""
    aoa_censored: np.ndarray
    """bool: already past the midpoint at the first checkpoint (AoA = its log10 step or earlier)."""
    forgettability: np.ndarray
    """Sum of the smoothed curve's increases (bits)."""
    minimum: np.ndarray
    """Minimum of the smoothed curve (bits)."""
    steps: np.ndarray
    chance_bits: float
    final_window: int
    min_drop: float = DEFAULT_MIN_DROP
    smoothing: dict = field(default_factory=dict)
    definitions: str = "project"
    """'project' or 'reference' (Chang et al.'s code; see the module docstring)."""


def _first_crossing(grid: np.ndarray, smooth: np.ndarray, threshold: np.ndarray):
    """log10 step where each column of ``smooth`` first reaches ``<= threshold`` (interpolated),
    and whether that happens at the first grid point already."""
    below = smooth <= threshold[None, :]
    first = np.argmax(below, axis=0)
    cols = np.arange(smooth.shape[1])
    prev = np.maximum(first - 1, 0)
    y0, y1 = smooth[prev, cols], smooth[first, cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(first > 0, (y0 - threshold) / (y0 - y1), 0.0)
    aoa = grid[prev] + np.clip(frac, 0.0, 1.0) * (grid[first] - grid[prev])
    return aoa, first == 0


def _reference_first_crossing(grid: np.ndarray, smooth: np.ndarray, chance: float):
    """Chang et al.'s ``get_gam_aoas``: ``(aoa, minimum, acquired, censored)``; the first grid point
    at or below ``(chance + minimum) / 2``, the last one when the minimum is not below chance."""
    minimum = smooth.min(0)
    threshold = 0.5 * chance + 0.5 * minimum
    acquired = threshold < chance
    first = np.argmax(smooth <= threshold[None, :], axis=0)
    aoa = np.where(acquired, grid[first], grid[-1])
    return aoa, minimum, acquired, acquired & (first == 0)


def compute_curve_metrics(steps: Sequence[int], surprisal: np.ndarray, chance: float,
                          smoothing: SmoothingConfig = SmoothingConfig(), final_window: Optional[int] = None,
                          min_drop: Optional[float] = None, block_tokens: int = DEFAULT_BLOCK_TOKENS,
                          definitions: str = "project") -> CurveMetrics:
    """The per-token statistics of the module docstring for ``surprisal [C, N]`` (bits) at ``steps``.
    ``final_window`` defaults to 3 (project) or 11 (reference, which takes all checkpoints if there
    are fewer); ``min_drop`` (default 1 bit) is a project definition and refused with 'reference'."""
    _check_definitions(definitions)
    reference = definitions == "reference"
    surprisal = np.asarray(surprisal)
    if surprisal.ndim != 2 or surprisal.shape[0] != len(steps):
        raise ValueError(f"surprisal must be [checkpoints={len(steps)}, tokens], got {surprisal.shape}")
    if reference:
        if min_drop is not None:
            raise ValueError("min_drop is a project definition; the reference code has none (leave it unset)")
        if final_window not in (None, REFERENCE_FINAL_WINDOW):
            raise ValueError(f"the reference code averages the last {REFERENCE_FINAL_WINDOW} checkpoints; "
                             f"final_window {final_window} is not its definition")
        final_window, min_drop = min(REFERENCE_FINAL_WINDOW, surprisal.shape[0]), 0.0
    else:
        final_window = DEFAULT_FINAL_WINDOW if final_window is None else final_window
        min_drop = DEFAULT_MIN_DROP if min_drop is None else min_drop
    if min_drop < 0:
        raise ValueError(f"min_drop must be >= 0, got {min_drop}")
    if not 1 <= final_window <= surprisal.shape[0]:
        raise ValueError(f"final_window must be in [1, {surprisal.shape[0]}], got {final_window}")
    if not np.all(np.isfinite(surprisal)):
        raise ValueError("surprisal has non-finite values")
    if reference:
        smoothed_statistics, description = _reference_smoothed_statistics(steps, chance, smoothing)
    else:
        smoothed_statistics, description = _project_smoothed_statistics(steps, chance, smoothing, min_drop)
    n = surprisal.shape[1]
    out = {k: np.empty(n) for k in ("final", "var", "aoa", "forget", "min")}
    acquired, censored = np.empty(n, bool), np.empty(n, bool)
    for s in range(0, n, block_tokens):
        e = min(n, s + block_tokens)
        raw = surprisal[:, s:e].astype(np.float64)
        last = raw[-final_window:]
        out["final"][s:e] = last.mean(0)
        out["var"][s:e] = last.std(0)
        (out["aoa"][s:e], out["min"][s:e], acquired[s:e], censored[s:e],
         out["forget"][s:e]) = smoothed_statistics(raw)
    return CurveMetrics(final_surprisal=out["final"], within_run_variability=out["var"], aoa=out["aoa"],
                        acquired=acquired, aoa_censored=censored, forgettability=out["forget"],
                        minimum=out["min"], steps=np.asarray(steps), chance_bits=float(chance),
                        final_window=final_window, min_drop=min_drop, smoothing=description,
                        definitions=definitions)


def _project_smoothed_statistics(steps, chance, smoothing, min_drop):
    """``(raw [C, n] -> (aoa, minimum, acquired, censored, forgettability), smoothing description)``
    with the project's definitions (module docstring)."""
    smoother = CurveSmoother(steps, smoothing)

    def statistics(raw):
        smooth = smoother.smooth(raw)
        minimum = smooth.min(0)
        ok = minimum < chance - min_drop if min_drop > 0 else minimum < chance
        aoa, cens = _first_crossing(smoother.grid, smooth, 0.5 * (chance + minimum))
        forget = np.maximum(np.diff(smooth, axis=0), 0.0).sum(0)
        return np.where(ok, aoa, np.nan), minimum, ok, cens & ok, forget

    return statistics, smoother.describe()


def _reference_smoothed_statistics(steps, chance, smoothing):
    """As :func:`_project_smoothed_statistics`, with the reference code's definitions: a leading
    step 0 left out, AoA on a 1000-point grid, forgettability at the checkpoints."""
    smoothed_steps, _ = _drop_step_zero(steps)
    skip = len(steps) - len(smoothed_steps)
    x = _log_steps(smoothed_steps)
    at_checkpoints = CurveSmoother(smoothed_steps, smoothing, grid=x)
    aoa_grid = np.linspace(x[0], x[-1], REFERENCE_AOA_GRID_POINTS)
    on_aoa_grid = CurveSmoother(smoothed_steps, smoothing, grid=aoa_grid)

    def statistics(raw):
        aoa, minimum, ok, cens = _reference_first_crossing(aoa_grid, on_aoa_grid.smooth(raw[skip:]), chance)
        forget = np.maximum(np.diff(at_checkpoints.smooth(raw[skip:]), axis=0), 0.0).sum(0)
        return aoa, minimum, ok, cens, forget

    return statistics, {**on_aoa_grid.describe(), "aoa_grid_points": REFERENCE_AOA_GRID_POINTS}


def cross_run_variability(runs: Sequence[tuple], smoothing: SmoothingConfig = SmoothingConfig(),
                          block_tokens: int = DEFAULT_BLOCK_TOKENS, definitions: str = "project") -> np.ndarray:
    """Per-token mean pairwise squared difference (bits^2) between the smoothed curves of runs that
    differ only in their seed. ``runs``: ``(steps, surprisal [C_r, N])`` per run (same tokens).
    Project: the steps may differ; curves are compared on a uniform log-step grid over the common
    range. Reference: the runs need the same steps; curves are compared at the checkpoints."""
    _check_definitions(definitions)
    if len(runs) < 2:
        raise ValueError(f"cross-run variability needs at least 2 runs, got {len(runs)}")
    n = np.asarray(runs[0][1]).shape[1]
    if any(np.asarray(y).shape[1] != n for _, y in runs):
        raise ValueError("the runs were evaluated on different tokens")
    if definitions == "reference":
        if any(not np.array_equal(np.asarray(steps), np.asarray(runs[0][0])) for steps, _ in runs):
            raise ValueError("the reference compares curves checkpoint by checkpoint: the runs need the same "
                             "checkpoint steps (or use definitions 'project')")
        runs = [_drop_step_zero(steps, np.asarray(y)) for steps, y in runs]
        grid = _log_steps(runs[0][0])
    else:
        ranges = [_log_steps(steps) for steps, _ in runs]
        lo, hi = max(r[0] for r in ranges), min(r[-1] for r in ranges)
        if hi <= lo:
            raise ValueError("the runs' checkpoint steps do not overlap")
        grid = np.linspace(lo, hi, smoothing.grid_points)
    smoothers = [CurveSmoother(steps, smoothing, grid=grid) for steps, _ in runs]
    r = len(runs)
    out = np.empty(n)
    for s in range(0, n, block_tokens):
        e = min(n, s + block_tokens)
        curves = [sm.smooth(np.asarray(y)[:, s:e]) for sm, (_, y) in zip(smoothers, runs)]
        # Explicit pairs (a handful of seeds): identical runs give exactly 0, not rounding noise.
        total = np.zeros(e - s)
        for i in range(r):
            for j in range(i + 1, r):
                total += ((curves[i] - curves[j]) ** 2).mean(0)
        out[s:e] = total / (r * (r - 1) / 2)
    return out


# --------------------------------------------------------------------------- aggregation
def grouped_mean(values: np.ndarray, groups: np.ndarray, num_groups: int,
                 valid: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [G], count [G])`` of ``values`` per group, over the ``valid`` entries only. Groups with
    no valid entry get count 0 and mean NaN; callers report those cells as empty ("n/a")."""
    values = np.asarray(values, np.float64)
    groups = np.asarray(groups)
    if valid is None:
        valid = np.isfinite(values)
    count = np.bincount(groups[valid], minlength=num_groups)[:num_groups]
    total = np.bincount(groups[valid], weights=values[valid], minlength=num_groups)[:num_groups]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, count


def mean_curves_by_bucket(surprisal: np.ndarray, bucket: np.ndarray, num_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean raw surprisal [C, B], tokens per bucket [B])``; empty buckets are NaN columns."""
    curves = np.empty((surprisal.shape[0], num_buckets))
    count = np.bincount(bucket, minlength=num_buckets)[:num_buckets]
    for c in range(surprisal.shape[0]):
        curves[c] = grouped_mean(surprisal[c], bucket, num_buckets, valid=np.ones(bucket.size, bool))[0]
    return curves, count


@dataclass
class BucketAggregate:
    """Learning-curve statistics of one run averaged over the tokens of each frequency bucket."""

    run: str
    tokens: np.ndarray
    """``[B]`` evaluated tokens per bucket (0: the bucket is empty and its means are NaN)."""
    final_surprisal: np.ndarray
    within_run_variability: np.ndarray
    aoa: np.ndarray
    """Mean AoA over the bucket's tokens that have one: the acquired ones (project definitions),
    all of them (reference: a token not acquired has AoA = log10 of the last step)."""
    acquired: np.ndarray
    """``[B]`` tokens with a defined AoA."""
    censored: np.ndarray
    """``[B]`` tokens whose AoA is censored at the first checkpoint."""
    forgettability: np.ndarray
    cross_run_variability: Optional[np.ndarray] = None
    """Mean over the bucket (None without a seed group for this run)."""


def aggregate_by_bucket(run: str, metrics: CurveMetrics, bucket: np.ndarray, num_buckets: int,
                        cross: Optional[np.ndarray] = None) -> BucketAggregate:
    everyone = np.ones(bucket.size, bool)

    def mean(v, valid=everyone):
        return grouped_mean(v, bucket, num_buckets, valid)[0]

    tokens = np.bincount(bucket, minlength=num_buckets)[:num_buckets]
    return BucketAggregate(
        run=run, tokens=tokens,
        final_surprisal=mean(metrics.final_surprisal),
        within_run_variability=mean(metrics.within_run_variability),
        aoa=mean(metrics.aoa, np.isfinite(metrics.aoa)),
        acquired=np.bincount(bucket[metrics.acquired], minlength=num_buckets)[:num_buckets],
        censored=np.bincount(bucket[metrics.aoa_censored], minlength=num_buckets)[:num_buckets],
        forgettability=mean(metrics.forgettability),
        cross_run_variability=None if cross is None else mean(cross),
    )


def per_type_mean(values: np.ndarray, token_ids: np.ndarray, vocab_size: int,
                  valid: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mean [V], occurrences [V])`` of a per-token statistic per token type."""
    return grouped_mean(values, np.asarray(token_ids), vocab_size, valid)


def as_list(a: Optional[np.ndarray]) -> List:
    return [] if a is None else np.asarray(a).tolist()
