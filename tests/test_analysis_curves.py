"""Learning-curve statistics on synthetic curves whose answers are known analytically, and the
handling of empty buckets in the reports."""

import json
import math

import numpy as np
import pytest

from megatron_mile.analysis.frequency import log_buckets
from megatron_mile.analysis.learning_curves import (
    CurveSmoother,
    SmoothingConfig,
    aggregate_by_bucket,
    compute_curve_metrics,
    cross_run_variability,
    grouped_mean,
    mean_curves_by_bucket,
)
from megatron_mile.analysis.report import format_markdown_table, rows_to_csv

CHANCE, FLOOR = 13.0, 3.0
STEPS = np.unique(np.ceil(2 ** (np.arange(0, 80) / 6)).astype(int))  # 1 .. ~10^4, dense in log-step
X = np.log10(STEPS)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def drop_curve(x0, width=0.12):
    return CHANCE - (CHANCE - FLOOR) * sigmoid((X - x0) / width)


def true_aoa(x0, width=0.12):
    """Solve drop_curve(x) = (chance + min) / 2 exactly; min is at the last step."""
    minimum = drop_curve(x0, width)[-1]
    share = (CHANCE - 0.5 * (CHANCE + minimum)) / (CHANCE - FLOOR)
    return x0 + width * math.log(share / (1 - share))


@pytest.mark.parametrize("method,tol", [("none", 2e-3), ("spline", 2e-2)])
def test_aoa_of_a_sigmoid_drop(method, tol):
    x0s = [0.8, 1.6, 2.5]
    y = np.stack([drop_curve(x0) for x0 in x0s], axis=1)
    m = compute_curve_metrics(STEPS, y, CHANCE, SmoothingConfig(method=method, df=25))
    np.testing.assert_allclose(m.aoa, [true_aoa(x0) for x0 in x0s], atol=tol)
    assert m.acquired.all() and not m.aoa_censored.any()
    # A monotone drop is never forgotten (the spline may ring a little).
    assert np.all(m.forgettability < (1e-9 if method == "none" else 0.05))


def test_one_known_bump_is_its_height():
    height = 1.7
    base = drop_curve(1.0)
    bump = height * np.exp(-0.5 * ((X - 2.8) / 0.25) ** 2)
    y = (base + bump)[:, None]
    exact = np.maximum(np.diff(y[:, 0]), 0).sum()  # rise of the bump (the base only falls)
    m = compute_curve_metrics(STEPS, y, CHANCE, SmoothingConfig(method="none"))
    assert m.forgettability[0] == pytest.approx(exact, rel=1e-12)
    assert exact == pytest.approx(height, rel=0.02)  # the sampled bump reaches close to its peak
    spline = compute_curve_metrics(STEPS, y, CHANCE, SmoothingConfig(method="spline", df=30))
    assert spline.forgettability[0] == pytest.approx(height, rel=0.05)


def test_final_surprisal_and_within_run_variability():
    steps = np.array([1, 2, 4, 8, 16, 32])
    y = np.array([[13.0, 12.0, 9.0, 7.0, 5.0, 6.0]]).T
    m = compute_curve_metrics(steps, y, CHANCE, SmoothingConfig(method="none"), final_window=3)
    assert m.final_surprisal[0] == pytest.approx(6.0)
    assert m.within_run_variability[0] == pytest.approx(math.sqrt(2 / 3))
    assert m.minimum[0] == pytest.approx(5.0)
    # Midpoint (13 + 5) / 2 = 9 is reached exactly at step 4.
    assert m.aoa[0] == pytest.approx(math.log10(4))


def test_not_acquired_and_censored_are_flagged_not_silent():
    steps = np.array([1, 2, 4, 8, 16])
    y = np.stack([np.full(5, CHANCE + 0.5), [4.0, 3.0, 3.0, 3.0, 3.0],
                  [CHANCE, CHANCE - 0.5, CHANCE, CHANCE + 2, CHANCE + 4]], axis=1)
    m = compute_curve_metrics(steps, y, CHANCE, SmoothingConfig(method="none"))
    assert not m.acquired[0] and math.isnan(m.aoa[0])
    assert m.acquired[1] and m.aoa_censored[1] and m.aoa[1] == pytest.approx(0.0)
    # A dip of 0.5 bit below chance is noise under the default min_drop of 1 bit...
    assert not m.acquired[2] and math.isnan(m.aoa[2])
    # ...and an acquisition under the paper's definition: midpoint chance - 0.25 at log10(1.5).
    paper = compute_curve_metrics(steps, y, CHANCE, SmoothingConfig(method="none"), min_drop=0)
    assert paper.acquired[2] and paper.aoa[2] == pytest.approx(math.log10(1) + 0.5 * math.log10(2))


def test_cross_run_variability():
    y = np.stack([drop_curve(1.0), drop_curve(2.0)], axis=1)
    sm = SmoothingConfig(method="spline", df=12)
    assert np.all(cross_run_variability([(STEPS, y), (STEPS, y.copy()), (STEPS, y.copy())], sm) == 0.0)
    # Constant offsets 0, c, 2c: pairs differ by c, c, 2c -> mean squared difference 2 c^2 (the
    # spline reproduces linear functions, so the offsets survive smoothing exactly).
    c = 0.3
    runs = [(STEPS, y), (STEPS, y + c), (STEPS, y + 2 * c)]
    np.testing.assert_allclose(cross_run_variability(runs, sm), 2 * c * c, rtol=1e-9)
    # Runs checkpointed at different steps are compared on their common range.
    other = STEPS[::2]
    rows = np.searchsorted(STEPS, other)
    v = cross_run_variability([(STEPS, y), (other, y[rows] + c)], SmoothingConfig(method="none"))
    np.testing.assert_allclose(v, c * c, atol=0.05)
    with pytest.raises(ValueError, match="at least 2 runs"):
        cross_run_variability([(STEPS, y)])


def test_bad_steps_are_rejected():
    with pytest.raises(ValueError, match=">= 1"):
        CurveSmoother([0, 1, 2, 4, 8])
    with pytest.raises(ValueError, match="increasing"):
        CurveSmoother([1, 2, 2, 4, 8])
    with pytest.raises(ValueError, match="at least 5 checkpoints"):
        CurveSmoother([1, 2, 4], SmoothingConfig(method="spline"))
    with pytest.raises(ValueError, match="non-finite"):
        compute_curve_metrics([1, 2, 4, 8, 16], np.full((5, 1), np.nan), CHANCE)


def test_spline_degrees_of_freedom():
    sm = CurveSmoother(STEPS, SmoothingConfig(df=7))
    assert sm.df == pytest.approx(7, abs=1e-3)
    # A straight line in log-step is left unchanged by any smoothing spline.
    line = (2.0 - 0.5 * X)[:, None]
    np.testing.assert_allclose(sm.smooth(line)[:, 0], 2.0 - 0.5 * sm.grid, atol=1e-8)


def test_grouped_mean_against_loops_and_empty_groups():
    rng = np.random.default_rng(0)
    values, groups = rng.normal(size=500), rng.integers(0, 4, size=500)  # group 4 stays empty
    mean, count = grouped_mean(values, groups, 5)
    for g in range(4):
        assert mean[g] == pytest.approx(values[groups == g].mean())
        assert count[g] == (groups == g).sum()
    assert count[4] == 0 and math.isnan(mean[4])


def test_empty_bucket_is_reported_as_empty(tmp_path):
    counts = np.array([0, 5, 50, 500])  # buckets: unseen, [1,10), [10,100), >=100
    buckets = log_buckets(counts)
    tokens = np.array([1, 1, 3, 3])  # nothing from the unseen or [10, 100) buckets
    steps = np.array([1, 2, 4, 8, 16])
    y = np.linspace(CHANCE, 4, 5)[:, None] + np.zeros((1, 4))
    m = compute_curve_metrics(steps, y, CHANCE, SmoothingConfig(method="none"))
    agg = aggregate_by_bucket("ce", m, buckets.of(tokens), buckets.num_buckets)
    assert agg.tokens.tolist() == [0, 2, 0, 2]
    curves, n = mean_curves_by_bucket(y, buckets.of(tokens), buckets.num_buckets)
    assert n.tolist() == [0, 2, 0, 2] and np.isnan(curves[:, 0]).all() and np.isfinite(curves[:, 1]).all()

    from megatron_mile.analysis.report import CurveReport

    report = CurveReport(buckets=buckets, aggregates={"ce": agg}, curves={}, aoa_points={}, chance=CHANCE,
                         smoothing=m.smoothing, final_window=3, seed_groups={})
    rows = report.rows()
    empty = [r for r in rows if r["tokens"] == 0]
    assert len(empty) == 2 and all(r["final_surprisal_bits"] is None for r in empty)
    md = report.markdown()
    assert "n/a" in md and "nan" not in md.lower()
    csv_text = rows_to_csv(rows)
    assert "nan" not in csv_text.lower()
    json.dumps(rows, allow_nan=False)  # raises on NaN


def test_markdown_table_shape():
    text = format_markdown_table(["a", "b"], [[1, "x"], [2, "y"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2 | y |"]


# ----------------------------------------------------------------------------- reference definitions
# Chang et al.'s code (github tylerachang/lm-learning-curves, fc89e49, utils/annotator.py). Expected
# values below follow from its rules by hand, on raw curves (smoothing 'none': linear interpolation
# in log10 step, exact at the checkpoints), so only the definitions are under test.
RAW = SmoothingConfig(method="none")


def test_reference_aoa_never_acquired_token_and_grid():
    steps = np.array([1, 3, 10, 30, 100, 1000])  # uneven in log10 step
    x = np.log10(steps)
    drop = np.array([CHANCE, CHANCE, 9.0, 5.0, 5.0, 5.0])  # midpoint (13 + 5) / 2 = 9 reached at step 10
    late = np.array([CHANCE, CHANCE, CHANCE, CHANCE, 11.0, 7.0])  # midpoint 10 crossed inside (100, 1000)
    never = np.array([CHANCE + 1, CHANCE + 0.5, CHANCE, CHANCE + 2, CHANCE + 1, CHANCE + 3])  # min == chance
    m = compute_curve_metrics(steps, np.stack([drop, late, never], 1), CHANCE, RAW, definitions="reference")
    grid = x[0] + (x[-1] - x[0]) * np.arange(1000) / 999  # np.linspace(first, last, 1000)
    # drop: threshold (13 + 5) / 2 = 9 is reached at log10(10) exactly; the first grid point at or past it.
    h = grid[1] - grid[0]
    assert m.aoa[0] == pytest.approx(grid[int(math.ceil((1.0 - x[0]) / h - 1e-9))], abs=1e-12)
    # late: on the segment from (2, 11) to (3, 7) the curve is 10 at log10 step 2.25; the reference
    # takes the first grid point at or after it (no interpolation between grid points).
    assert m.aoa[1] == pytest.approx(grid[int(math.ceil((2.25 - x[0]) / h))], abs=1e-12)
    assert m.aoa[1] != pytest.approx(2.25, abs=1e-6)
    # never: the minimum is not below chance -> AoA = log10 of the last step, flagged not acquired.
    assert m.aoa[2] == pytest.approx(3.0) and not m.acquired[2] and m.acquired[:2].all()
    # ...and it stays in the bucket's mean AoA (all three tokens in one bucket).
    agg = aggregate_by_bucket("ce", m, np.zeros(3, int), 1)
    assert agg.aoa[0] == pytest.approx((m.aoa[0] + m.aoa[1] + 3.0) / 3)
    # The project definitions drop it instead (NaN, not in the mean).
    project = compute_curve_metrics(steps, np.stack([drop, late, never], 1), CHANCE, RAW, min_drop=0)
    assert math.isnan(project.aoa[2])
    assert aggregate_by_bucket("ce", project, np.zeros(3, int), 1).aoa[0] == \
        pytest.approx((project.aoa[0] + project.aoa[1]) / 2)


def test_reference_final_window_is_eleven_checkpoints_and_step_zero():
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048])
    y = np.array([CHANCE, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1], float)[:, None]
    m = compute_curve_metrics(steps, y, CHANCE, RAW, definitions="reference")
    assert m.final_window == 11
    assert m.final_surprisal[0] == pytest.approx(np.mean(np.arange(1, 12)))
    assert m.within_run_variability[0] == pytest.approx(math.sqrt((11 ** 2 - 1) / 12))  # sd of 1..11, ddof 0
    # Step 0 is dropped from the smoothed statistics: minimum 1, threshold 7 at step 32 exactly.
    assert m.aoa[0] == pytest.approx(np.linspace(0, math.log10(2048), 1000)[
        int(math.ceil(math.log10(32) / (math.log10(2048) / 999) - 1e-9))], abs=1e-12)
    # Fewer than 11 checkpoints: the reference's [-11:] takes them all, step 0 included.
    few = compute_curve_metrics(steps[:6], y[:6], CHANCE, RAW, definitions="reference")
    assert few.final_window == 6 and few.final_surprisal[0] == pytest.approx(np.mean([CHANCE, 12, 11, 10, 9, 8]))
    with pytest.raises(ValueError, match="last 11 checkpoints"):
        compute_curve_metrics(steps, y, CHANCE, RAW, final_window=3, definitions="reference")
    with pytest.raises(ValueError, match="min_drop is a project definition"):
        compute_curve_metrics(steps, y, CHANCE, RAW, min_drop=1.0, definitions="reference")


def test_reference_forgettability_at_the_checkpoints():
    steps = np.array([1, 2, 4, 8, 16, 32])
    y = np.array([CHANCE, 8.0, 10.0, 6.0, 7.5, 7.0])[:, None]
    m = compute_curve_metrics(steps, y, CHANCE, RAW, definitions="reference")
    assert m.forgettability[0] == pytest.approx(2.0 + 1.5)


def test_reference_cross_run_variability_averages_over_uneven_checkpoints():
    steps = np.array([1, 2, 3, 4, 5, 10, 100, 1000, 10000])  # dense early, sparse late
    base = np.linspace(CHANCE, 4.0, steps.size)[:, None] + np.zeros((1, 2))
    early = base.copy()
    early[:3] += np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])  # the runs differ at the first 3 checkpoints
    runs = [(steps, base), (steps, early)]
    got = cross_run_variability(runs, RAW, definitions="reference")
    np.testing.assert_allclose(got, [3 * 1.0 / 9, 3 * 4.0 / 9], rtol=1e-12)
    # Three runs: the mean over the three pairs.
    third = base + 0.5
    got3 = cross_run_variability(runs + [(steps, third)], RAW, definitions="reference")
    want = [((3 * d * d) / 9 + 0.25 + np.mean((early[:, k] - third[:, k]) ** 2)) / 3 for k, d in enumerate((1.0, 2.0))]
    np.testing.assert_allclose(got3, want, rtol=1e-12)
    # The project average over a uniform log-step grid weighs the early, dense checkpoints far less.
    project = cross_run_variability(runs, RAW)
    assert np.all(project < 0.5 * got)
    with pytest.raises(ValueError, match="same checkpoint steps"):
        cross_run_variability([(steps, base), (steps * 2, base)], RAW, definitions="reference")


def test_reference_report_chance_is_the_tokenizer_vocabulary(tmp_path):
    from megatron_mile.analysis.frequency import TokenCounts
    from megatron_mile.analysis.report import build_curve_report
    from megatron_mile.analysis.surprisal_store import SurprisalStore

    n, vocab, padded = 6, 10, 16
    store = SurprisalStore.create(str(tmp_path / "s"), np.arange(n), np.ones(n), np.zeros(n), [[0, 0]],
                                  [{"label": "d", "prefix": "p"}], vocab_size=vocab, seq_length=4,
                                  dtype="float32")
    sig = {"padded_vocab_size": padded, "tokenizer_type": "NullTokenizer", "tokenizer_vocab_size": vocab}
    steps = [1, 2, 4, 8, 16, 32]
    # Every token at 3.5 bits until step 8, then 1.5: log2 10 = 3.32 < 3.5 < log2 16 = 4.
    for step in steps:
        store.add_checkpoint("ce", step, np.full(n, 3.5 if step < 8 else 1.5), np.ones(n), sig)
    counts = TokenCounts(counts=np.arange(vocab) * 10, vocab_size=vocab)
    buckets = log_buckets(counts.counts)
    ref = build_curve_report(store, counts, buckets, smoothing=RAW, definitions="reference")
    assert ref.chance == pytest.approx(math.log2(vocab)) and ref.final_window == 6
    assert "Chang et al.'s code" in ref.markdown()
    # Threshold (log2 10 + 1.5) / 2 = 2.41 is first reached at step 8 (the curve is 3.5 at step 4).
    grid = np.linspace(0, math.log10(32), 1000)
    want = grid[np.argmax(grid >= math.log10(4) + (3.5 - (math.log2(vocab) + 1.5) / 2) / 2 * math.log10(2))]
    rows = [r for r in ref.rows() if r["tokens"]]
    assert all(r["aoa_log10_step"] == pytest.approx(want, abs=1e-9) for r in rows)
    project = build_curve_report(store, counts, buckets, smoothing=RAW)
    assert project.chance == pytest.approx(math.log2(padded))
