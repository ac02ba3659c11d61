"""Cross entropy against focal and MiLe at small scale: paired differences by seed, bootstrap
confidence intervals, and which differences are outside the noise (``examples/replicate_small.sh``).

Every loss ("variant") is trained with the same seeds as the baseline (cross entropy), and a seed
fixes the initialisation and the data order, so run ``<variant>-s<seed>`` is paired with
``<baseline>-s<seed>``. All runs are evaluated on the same held-out tokens (one surprisal store)
and the same cloze items. For one group of evaluation units (all tokens, a frequency bucket, a
domain, the cloze items) and seeds ``s = 1..S``:

* ``d[s, t] = variant_s(t) - baseline_s(t)``: surprisal in bits (negative: the variant is better) or
  cloze correctness (positive: the variant is better), unit ``t`` of the group;
* the estimate is ``mean_s mean_t d[s, t]``;
* the 95% interval is the percentile interval of a two-level paired bootstrap
  (:func:`paired_bootstrap`): each replicate draws ``S`` seeds with replacement and the group's
  ``N`` units with replacement (one draw of units, used by every drawn seed, since the units are the
  same for all runs) and takes the same mean. It covers the seed-to-seed variation (initialisation,
  data order) and the finite evaluation sample. Tokens are drawn independently, although
  neighbouring tokens of one window are correlated, so the interval is somewhat too narrow on the
  token side; with 3 seeds the seed side of the bootstrap has only 10 distinct draws.
* a difference is *outside the noise* when its interval excludes 0; the baseline's own
  seed-to-seed spread (sample sd and range of its per-seed means) is reported beside it.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_mile.analysis._io import ensure_parent, finite_or_none, write_json, write_text

__all__ = [
    "BootstrapInterval",
    "GroupComparison",
    "ReplicationReport",
    "build_replication_report",
    "compare_groups",
    "paired_bootstrap",
    "seed_spread",
]

DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95
# Elements of the [seeds, resamples, units] gather per chunk of resamples (float64: 32 MiB).
_CHUNK_ELEMENTS = 1 << 22


@dataclass
class BootstrapInterval:
    mean: float
    """``mean_s mean_t d[s, t]``."""
    low: float
    high: float
    per_seed: List[float]
    """``mean_t d[s, t]`` for each seed, in seed order."""

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(diff: np.ndarray, num_resamples: int = DEFAULT_RESAMPLES,
                     confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> BootstrapInterval:
    """Percentile interval of ``mean_s mean_t diff[s, t]`` under resampling of seeds (rows) and
    evaluation units (columns), both with replacement; the drawn units are shared by the drawn
    seeds (module docstring). ``diff``: ``[seeds, units]`` paired differences."""
    diff = np.asarray(diff, np.float64)
    if diff.ndim != 2 or diff.shape[0] < 1 or diff.shape[1] < 1:
        raise ValueError(f"diff must be [seeds >= 1, units >= 1], got shape {diff.shape}")
    if not np.all(np.isfinite(diff)):
        raise ValueError("diff has non-finite values")
    if num_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need num_resamples >= 1 and 0 < confidence < 1, got {num_resamples}, {confidence}")
    num_seeds, num_units = diff.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(num_resamples)
    chunk = max(1, _CHUNK_ELEMENTS // (num_seeds * num_units))
    for start in range(0, num_resamples, chunk):
        b = min(chunk, num_resamples - start)
        units = rng.integers(0, num_units, size=(b, num_units))
        seeds = rng.integers(0, num_seeds, size=(b, num_seeds))
        per_seed = diff[:, units].mean(-1).T  # [b, seeds]: each seed's mean over the drawn units
        stats[start:start + b] = np.take_along_axis(per_seed, seeds, axis=1).mean(1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    per_seed = diff.mean(1)
    return BootstrapInterval(mean=float(per_seed.mean()), low=float(low), high=float(high),
                             per_seed=per_seed.tolist())


def seed_spread(per_seed: Sequence[float]) -> Tuple[float, float]:
    """``(sample sd (ddof 1), max - min)`` of per-seed values; sd is NaN for one seed."""
    values = np.asarray(per_seed, np.float64)
    sd = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return sd, float(values.max() - values.min())


@dataclass
class GroupComparison:
    """One group of evaluation units: the baseline and each variant's paired difference."""

    kind: str
    """'all', 'paper bucket', 'log bucket', 'domain' or 'cloze'."""
    group: str
    units: int
    baseline_per_seed: List[float]
    baseline_seed_sd: float
    baseline_seed_range: float
    differences: Dict[str, BootstrapInterval] = field(default_factory=dict)


def compare_groups(kind: str, labels: Sequence[str], unit_group: np.ndarray, baseline: np.ndarray,
                   variants: Dict[str, np.ndarray], num_resamples: int = DEFAULT_RESAMPLES,
                   confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> List[GroupComparison]:
    """Per group ``g`` (units with ``unit_group == g``; empty groups are skipped): the baseline's
    per-seed means and spread, and each variant's paired bootstrap against it. ``baseline`` and
    every variant: ``[seeds, units]`` in the same seed order."""
    baseline = np.asarray(baseline, np.float64)
    out = []
    for g, label in enumerate(labels):
        mask = np.asarray(unit_group) == g
        if not mask.any():
            continue
        base = baseline[:, mask]
        per_seed = base.mean(1)
        sd, spread = seed_spread(per_seed)
        comparison = GroupComparison(kind=kind, group=label, units=int(mask.sum()),
                                     baseline_per_seed=per_seed.tolist(), baseline_seed_sd=sd,
                                     baseline_seed_range=spread)
        for name, values in variants.items():
            values = np.asarray(values, np.float64)
            if values.shape != baseline.shape:
                raise ValueError(f"{name}: shape {values.shape} differs from the baseline's {baseline.shape}")
            comparison.differences[name] = paired_bootstrap(values[:, mask] - base, num_resamples, confidence, seed)
        out.append(comparison)
    return out


# --------------------------------------------------------------------------- the report
@dataclass
class ReplicationReport:
    baseline: str
    variants: List[str]
    seeds: List[int]
    iteration: int
    comparisons: List[GroupComparison]
    confidence: float = DEFAULT_CONFIDENCE
    num_resamples: int = DEFAULT_RESAMPLES

    def statement(self) -> str:
        """Which differences are outside the noise (interval excludes 0), in plain words."""
        lines = []
        for name in self.variants:
            outside, inside = [], []
            for c in self.comparisons:
                d = c.differences[name]
                better = d.mean > 0 if c.kind == "cloze" else d.mean < 0
                where = f"{c.kind} {c.group}" if c.kind != "all" else "all tokens"
                if d.excludes_zero:
                    note = ("" if math.isnan(c.baseline_seed_sd) or abs(d.mean) >= c.baseline_seed_sd
                            else f", smaller than {self.baseline}'s seed-to-seed sd {c.baseline_seed_sd:.4f}")
                    outside.append(f"{where} ({'better' if better else 'worse'}: {_signed(d.mean)}{note})")
                else:
                    inside.append(where)
            lines.append(f"- **{name}** vs {self.baseline}: outside the noise: "
                         + ("; ".join(outside) if outside else "none")
                         + ". Within the noise: " + (", ".join(inside) if inside else "none") + ".")
        head = (f"A difference is outside the noise when its {self.confidence:.0%} paired bootstrap interval "
                f"(over {len(self.seeds)} seeds and the evaluation units) excludes 0.")
        return head + "\n\n" + "\n".join(lines)

    def markdown(self) -> str:
        unit = {"cloze": "cloze accuracy (difference: variant - baseline, positive = better)"}
        parts = [f"Baseline {self.baseline}, seeds {', '.join(map(str, self.seeds))}, iteration {self.iteration}. "
                 f"Surprisal in bits per token; differences are variant - {self.baseline} (negative = better), "
                 f"mean over seeds, with the {self.confidence:.0%} paired bootstrap interval "
                 f"({self.num_resamples} resamples of seeds and units); * = the interval excludes 0. "
                 f"'sd' is {self.baseline}'s seed-to-seed standard deviation of the group mean."]
        for kind in dict.fromkeys(c.kind for c in self.comparisons):
            rows = [c for c in self.comparisons if c.kind == kind]
            what = unit.get(kind, "held-out surprisal")
            header = ["group", "units", f"{self.baseline} (sd, range)"] + [f"{v} - {self.baseline}" for v in self.variants]
            table = [header, ["---"] * len(header)]
            for c in rows:
                base = float(np.mean(c.baseline_per_seed))
                cells = [c.group, str(c.units), f"{base:.4f} ({_fmt(c.baseline_seed_sd)}, {c.baseline_seed_range:.4f})"]
                for v in self.variants:
                    d = c.differences[v]
                    cells.append(f"{_signed(d.mean)} [{_signed(d.low)}, {_signed(d.high)}]"
                                 + ("*" if d.excludes_zero else ""))
                table.append(cells)
            parts.append(f"### {kind}: {what}\n\n" + "\n".join("| " + " | ".join(r) + " |" for r in table))
        parts.append("### What is outside the noise\n\n" + self.statement())
        return "\n\n".join(parts) + "\n"

    def to_json(self) -> dict:
        def clean(obj):
            if isinstance(obj, float):
                return finite_or_none(obj)
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [clean(v) for v in obj]
            return obj

        comparisons = []
        for c in self.comparisons:
            entry = asdict(c)
            for name, d in c.differences.items():
                entry["differences"][name]["excludes_zero"] = d.excludes_zero
            comparisons.append(entry)
        return clean({"baseline": self.baseline, "variants": self.variants, "seeds": self.seeds,
                      "iteration": self.iteration, "confidence": self.confidence,
                      "num_resamples": self.num_resamples, "comparisons": comparisons,
                      "statement": self.statement()})


def _signed(x: float) -> str:
    return f"{x:+.4f}"


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def build_replication_report(store, counts, baseline: str, variants: Sequence[str], seeds: Sequence[int],
                             cloze: Optional[Dict[str, List[float]]] = None, log_base: float = 10.0,
                             num_resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                             seed: int = 0) -> ReplicationReport:
    """Comparisons of ``<variant>-s<seed>`` with ``<baseline>-s<seed>`` at every run's last
    checkpoint (which must be the same iteration for all): all tokens, the paper's 5/15/80% mass
    buckets, log buckets of the training counts, the store's domains, and the cloze items
    (``cloze``: run -> per-item correctness, optional)."""
    from megatron_mile.analysis.frequency import log_buckets, paper_buckets

    if not seeds or not variants:
        raise ValueError("need at least one seed and one variant")
    names = [baseline, *variants]
    runs = {(v, s): run_name(v, s) for v, s in itertools.product(names, seeds)}
    missing = [r for r in runs.values() if r not in store.runs()]
    if missing:
        raise ValueError(f"runs missing from the store: {', '.join(missing)} (has: {', '.join(store.runs())})")
    last = {r: store.iterations(r)[-1] for r in runs.values()}
    if len(set(last.values())) > 1:
        raise ValueError(f"the runs' last checkpoints differ: {last}; compare runs trained equally long")
    iteration = next(iter(last.values()))
    surprisal = {key: np.asarray(store.checkpoint_array(r, iteration)[0], np.float64) for key, r in runs.items()}

    def stacked(name):
        return np.stack([surprisal[(name, s)] for s in seeds])

    base = stacked(baseline)
    others = {v: stacked(v) for v in variants}
    tokens = np.asarray(store.tokens)
    if counts.vocab_size != store.vocab_size:
        raise ValueError(f"the counts cover {counts.vocab_size} token ids, the store's vocabulary is {store.vocab_size}")
    args = dict(num_resamples=num_resamples, confidence=confidence, seed=seed)
    comparisons = compare_groups("all", ["all"], np.zeros(tokens.size, int), base, others, **args)
    for kind, buckets in (("paper bucket", paper_buckets(counts.counts)), ("log bucket", log_buckets(counts.counts, log_base))):
        comparisons += compare_groups(kind, buckets.labels, buckets.of(tokens), base, others, **args)
    comparisons += compare_groups("domain", store.dataset_labels, store.dataset_of_token, base, others, **args)
    if cloze is not None:
        items = {key: np.asarray(cloze[r], np.float64) for key, r in runs.items()}
        if len({v.size for v in items.values()}) != 1:
            raise ValueError("the runs' cloze results have different numbers of items")
        cloze_base = np.stack([items[(baseline, s)] for s in seeds])
        cloze_others = {v: np.stack([items[(v, s)] for s in seeds]) for v in variants}
        comparisons += compare_groups("cloze", ["accuracy"], np.zeros(cloze_base.shape[1], int), cloze_base,
                                      cloze_others, **args)
    return ReplicationReport(baseline=baseline, variants=list(variants), seeds=list(seeds), iteration=iteration,
                             comparisons=comparisons, confidence=confidence, num_resamples=num_resamples)


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m megatron_mile.analysis.replication",
                                description="Paired comparison of losses against a baseline over seeds, with "
                                            "bootstrap intervals (runs named <loss>-s<seed> in one surprisal store).")
    p.add_argument("--store", required=True, help="Surprisal store (tools/eval_surprisal.py) holding every run.")
    p.add_argument("--frequency", required=True, help="Training token counts (tools/token_frequency.py).")
    p.add_argument("--baseline", default="ce", help="Run name prefix of the baseline loss.")
    p.add_argument("--variants", nargs="+", required=True, help="Run name prefixes of the other losses.")
    p.add_argument("--seeds", nargs="+", type=int, required=True)
    p.add_argument("--cloze-dir", default=None,
                   help="Directory of tools/eval_downstream.py outputs downstream_<run>.json (task 'cloze').")
    p.add_argument("--log-base", type=float, default=10.0)
    p.add_argument("--bootstrap-resamples", type=int, default=DEFAULT_RESAMPLES)
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)
    p.add_argument("--seed", type=int, default=0, help="Seed of the bootstrap.")
    p.add_argument("--output-prefix", required=True, help="Writes <prefix>.md and <prefix>.json.")
    return p


def _read_cloze(directory: str, runs: Sequence[str]) -> Dict[str, List[float]]:
    import json

    out = {}
    for run in runs:
        path = os.path.join(directory, f"downstream_{run}.json")
        try:
            with open(path, encoding="utf-8") as f:
                out[run] = json.load(f)["tasks"]["cloze"]["correct"]
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: no per-item cloze results ({exc!r}); run tools/eval_downstream.py "
                             f"--task cloze=... --output {path}") from None
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from megatron_mile.analysis.frequency import TokenCounts
    from megatron_mile.analysis.surprisal_store import SurprisalStore

    args = build_parser().parse_args(argv)
    try:
        store = SurprisalStore(args.store)
        counts = TokenCounts.load(args.frequency)
        runs = [run_name(v, s) for v in [args.baseline, *args.variants] for s in args.seeds]
        cloze = _read_cloze(args.cloze_dir, runs) if args.cloze_dir else None
        report = build_replication_report(store, counts, args.baseline, args.variants, args.seeds, cloze,
                                          args.log_base, args.bootstrap_resamples, args.confidence, args.seed)
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"replication: {exc}") from None
    ensure_parent(args.output_prefix)
    write_text(args.output_prefix + ".md", report.markdown())
    write_json(args.output_prefix + ".json", report.to_json())
    print(report.markdown())
    print(f"wrote {args.output_prefix}.md, {args.output_prefix}.json")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
