"""The replication statistics: the paired bootstrap against distributions known exactly (all
resamples enumerated, or a binomial), pairing that cancels seed noise, and the report on a small
synthetic store."""

import itertools
import json
import math

import numpy as np
import pytest

from megatron_mile.analysis.frequency import TokenCounts
from megatron_mile.analysis.replication import (
    build_replication_report,
    compare_groups,
    main,
    paired_bootstrap,
    seed_spread,
)
from megatron_mile.analysis.surprisal_store import SurprisalStore

RESAMPLES = 20000  # the percentile's own sampling error: sd sqrt(.025 * .975 / 20000) = 0.0011 in probability


def exact_quantile(values, weights, q):
    """The q-quantile of a discrete distribution (smallest value whose CDF reaches q)."""
    order = np.argsort(values)
    cdf = np.cumsum(np.asarray(weights, float)[order])
    cdf /= cdf[-1]
    return float(np.asarray(values, float)[order][np.searchsorted(cdf, q - 1e-12)])


def test_seed_bootstrap_matches_the_enumerated_distribution():
    # Every unit of a seed has the same difference: only the draw of seeds matters. The bootstrap
    # distribution is the mean of 5 draws with replacement from 5 values: all 5^5 draws enumerated.
    per_seed = np.array([-0.9, -0.2, 0.1, 0.3, 1.4])
    diff = np.repeat(per_seed[:, None], 7, axis=1)
    got = paired_bootstrap(diff, RESAMPLES, seed=1)
    means = [np.mean(per_seed[list(draw)]) for draw in itertools.product(range(5), repeat=5)]
    ones = np.ones(len(means))
    assert exact_quantile(means, ones, 0.02) <= got.low <= exact_quantile(means, ones, 0.03)
    assert exact_quantile(means, ones, 0.97) <= got.high <= exact_quantile(means, ones, 0.98)
    assert got.mean == pytest.approx(per_seed.mean()) and got.per_seed == pytest.approx(per_seed.tolist())


def test_unit_bootstrap_is_binomial():
    # One seed, 0/1 differences with 60 ones in 200: the bootstrap mean is Binomial(200, 0.3) / 200.
    n, k = 200, 60
    diff = np.zeros((1, n))
    diff[0, :k] = 1.0
    got = paired_bootstrap(diff, RESAMPLES, seed=2)
    support = np.arange(n + 1) / n
    pmf = [math.comb(n, j) * 0.3 ** j * 0.7 ** (n - j) for j in range(n + 1)]
    assert exact_quantile(support, pmf, 0.02) <= got.low <= exact_quantile(support, pmf, 0.03)
    assert exact_quantile(support, pmf, 0.97) <= got.high <= exact_quantile(support, pmf, 0.98)
    assert got.mean == pytest.approx(0.3) and got.excludes_zero


def test_pairing_cancels_seed_noise_and_the_spread_is_reported():
    rng = np.random.default_rng(0)
    seed_offsets = np.array([[0.0], [2.0], [-1.5]])  # large seed-to-seed variation of the baseline
    baseline = 8.0 + seed_offsets + rng.normal(size=(3, 500))
    shifted = baseline - 0.01  # better by exactly 0.01 bits on every token of every seed
    noisy = baseline + rng.normal(scale=0.5, size=baseline.shape) * np.array([[1.0], [-1.0], [1.0]])
    (c,) = compare_groups("all", ["all"], np.zeros(500, int), baseline, {"shifted": shifted, "noisy": noisy},
                          num_resamples=500)
    d = c.differences["shifted"]
    assert d.mean == pytest.approx(-0.01) and d.low == pytest.approx(-0.01) and d.high == pytest.approx(-0.01)
    assert d.excludes_zero
    means = baseline.mean(1)
    assert c.baseline_seed_sd == pytest.approx(np.std(means, ddof=1))
    assert c.baseline_seed_range == pytest.approx(means.max() - means.min())
    assert not c.differences["noisy"].excludes_zero
    assert seed_spread([1.0])[1] == 0.0 and math.isnan(seed_spread([1.0])[0])
    with pytest.raises(ValueError, match="non-finite"):
        paired_bootstrap(np.array([[np.nan]]))


def _store(tmp_path, seeds=(1, 2, 3)):
    """A store with runs ce/mile-s<seed>: mile is better by 0.2 bits on the rare tokens only."""
    rng = np.random.default_rng(3)
    n, vocab = 600, 20
    counts = np.array([0] + [1] * 10 + [50] * 6 + [3000, 2000, 1000])  # rare ids 1..10, frequent 17..19
    tokens = np.concatenate([rng.integers(1, 11, n // 2), rng.integers(17, 20, n // 2)])
    window = np.repeat(np.arange(6), n // 6)
    store = SurprisalStore.create(str(tmp_path / "store"), tokens, np.ones(n), window,
                                  [[k % 2, 0] for k in range(6)],
                                  [{"label": "A", "prefix": "a"}, {"label": "B", "prefix": "b"}],
                                  vocab_size=vocab, seq_length=4, dtype="float32")
    sig = {"padded_vocab_size": 32, "tokenizer_type": "NullTokenizer", "tokenizer_vocab_size": vocab}
    rare = tokens <= 10
    for s in seeds:
        base = 6.0 + 0.3 * s + rng.normal(scale=0.2, size=n)
        store.add_checkpoint(f"ce-s{s}", 64, base, np.ones(n), sig)
        store.add_checkpoint(f"mile-s{s}", 64, base - 0.2 * rare, np.ones(n), sig)
    path = tmp_path / "freq"
    TokenCounts(counts=counts, vocab_size=vocab).save(str(path))
    return store, str(path)


def test_report_on_a_store(tmp_path):
    store, freq = _store(tmp_path)
    cloze_dir = tmp_path / "cloze"
    cloze_dir.mkdir()
    for s in (1, 2, 3):
        for name, correct in (("ce", [1, 0, 0, 1] * 25), ("mile", [1, 1, 0, 1] * 25)):
            (cloze_dir / f"downstream_{name}-s{s}.json").write_text(
                json.dumps({"tasks": {"cloze": {"correct": correct}}}))
    out = tmp_path / "report" / "replication"
    assert main(["--store", store.root, "--frequency", freq, "--variants", "mile", "--seeds", "1", "2", "3",
                 "--cloze-dir", str(cloze_dir), "--bootstrap-resamples", "300", "--output-prefix", str(out)]) == 0
    result = json.loads((out.parent / "replication.json").read_text())
    by = {(c["kind"], c["group"].split()[0]): c for c in result["comparisons"]}
    rare = by[("paper bucket", "low")]["differences"]["mile"]
    assert rare["mean"] == pytest.approx(-0.2, abs=1e-6) and rare["excludes_zero"]
    frequent = by[("paper bucket", "high")]["differences"]["mile"]
    assert frequent["mean"] == pytest.approx(0.0, abs=1e-6) and not frequent["excludes_zero"]
    assert by[("cloze", "accuracy")]["differences"]["mile"]["mean"] == pytest.approx(0.25)
    assert {c["kind"] for c in result["comparisons"]} == {"all", "paper bucket", "log bucket", "domain", "cloze"}
    # The baseline's seed spread: seed s shifts every token by 0.3 s.
    assert by[("all", "all")]["baseline_seed_range"] == pytest.approx(0.6, abs=0.05)
    text = (out.parent / "replication.md").read_text()
    assert "outside the noise" in text and "paper bucket low" in text


def test_report_refuses_unequal_or_missing_runs(tmp_path):
    store, freq = _store(tmp_path, seeds=(1, 2))
    counts = TokenCounts.load(freq)
    with pytest.raises(ValueError, match="runs missing from the store: ce-s3, mile-s3"):
        build_replication_report(store, counts, "ce", ["mile"], [1, 2, 3])
    store.add_checkpoint("ce-s1", 128, np.ones(store.num_tokens), np.ones(store.num_tokens),
                         store.manifest["runs"]["ce-s1"]["model"])
    with pytest.raises(ValueError, match="last checkpoints differ"):
        build_replication_report(store, counts, "ce", ["mile"], [1, 2])
    with pytest.raises(SystemExit, match="replication: .*no per-item cloze results"):
        main(["--store", store.root, "--frequency", freq, "--variants", "mile", "--seeds", "1", "--cloze-dir",
              str(tmp_path), "--output-prefix", str(tmp_path / "r")])
