"""Tables (Markdown + CSV) and the two reporting commands: the bucket report and the learning curves.

``bucket_report``: mean surprisal, perplexity (``2 ** mean surprisal``) and mean entropy of one
checkpoint per run (default the last) per training-frequency bucket and per domain (held-out
dataset), runs side by side, with the difference to the first run.

``learning_curves``: per-token curve statistics (see :mod:`megatron_mile.analysis.learning_curves`)
averaged per bucket, the aggregate curves per bucket, and the AoA-vs-frequency scatter.

Empty cells: a bucket or domain without evaluated tokens has ``tokens = 0`` and its statistics are
written "n/a" in Markdown and left blank in CSV; a statistic defined for none of a bucket's tokens
(no token acquired: no AoA) likewise. No NaN reaches a table or a JSON file.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from megatron_mile.analysis._io import ensure_parent, finite_or_none, save_npy, write_json, write_text
from megatron_mile.analysis.frequency import (
    FrequencyBuckets,
    TokenCounts,
    VocabularyMismatchError,
    add_bucket_arguments,
    build_buckets,
)
from megatron_mile.analysis.learning_curves import (
    DEFINITIONS,
    SmoothingConfig,
    aggregate_by_bucket,
    chance_bits,
    compute_curve_metrics,
    cross_run_variability,
    grouped_mean,
    mean_curves_by_bucket,
    per_type_mean,
)
from megatron_mile.analysis.surprisal_store import SurprisalStore

__all__ = [
    "BucketReport",
    "CurveReport",
    "build_bucket_report",
    "build_curve_report",
    "format_markdown_table",
    "rows_to_csv",
]

NA = "n/a"


# --------------------------------------------------------------------------- formatting
def _cell(value, digits: int = 3) -> str:
    v = finite_or_none(value) if value is not None else None
    return NA if v is None else f"{v:.{digits}f}"


def format_markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub Markdown table; cells are used as given (strings)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rows_to_csv(rows: List[dict]) -> str:
    """CSV of dict rows (union of keys, in first-seen order); None and NaN are blank cells."""
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if _blank(r.get(k)) else r.get(k) for k in keys})
    return out.getvalue()


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def _counts_for_store(counts: TokenCounts, store: SurprisalStore) -> TokenCounts:
    if counts.vocab_size != store.vocab_size:
        raise VocabularyMismatchError(
            f"the frequency counts cover {counts.vocab_size} token ids, the evaluated model's vocabulary has "
            f"{store.vocab_size}: count the training data with --vocab-size {store.vocab_size} (same tokenizer)")
    return counts


def _select_runs(store: SurprisalStore, runs: Optional[Sequence[str]]) -> List[str]:
    runs = list(runs) if runs else store.runs()
    if not runs:
        raise ValueError(f"{store.root} has no evaluated runs")
    for r in runs:
        store.iterations(r)  # raises a clear KeyError for an unknown run
    return runs


# --------------------------------------------------------------------------- bucket report
@dataclass
class BucketReport:
    """Per-bucket and per-domain surprisal of one checkpoint per run."""

    runs: List[str]
    iterations: Dict[str, int]
    buckets: FrequencyBuckets
    domains: List[str]
    bucket_tokens: np.ndarray
    """``[B]`` evaluated tokens per bucket."""
    domain_tokens: np.ndarray
    bucket_surprisal: Dict[str, np.ndarray] = field(default_factory=dict)
    bucket_entropy: Dict[str, np.ndarray] = field(default_factory=dict)
    domain_surprisal: Dict[str, np.ndarray] = field(default_factory=dict)
    domain_entropy: Dict[str, np.ndarray] = field(default_factory=dict)
    overall: Dict[str, float] = field(default_factory=dict)

    def rows(self) -> List[dict]:
        """Long format: one row per (run, group), with kind 'bucket', 'domain' or 'all'."""
        out = []
        for run in self.runs:
            it = self.iterations[run]
            for b, label in enumerate(self.buckets.labels):
                out.append(self._row(run, it, "bucket", label, self.bucket_tokens[b], self.bucket_surprisal[run][b],
                                     self.bucket_entropy[run][b], types=int(self.buckets.types[b]),
                                     mass=float(self.buckets.mass[b])))
            for d, label in enumerate(self.domains):
                out.append(self._row(run, it, "domain", label, self.domain_tokens[d], self.domain_surprisal[run][d],
                                     self.domain_entropy[run][d]))
            out.append(self._row(run, it, "all", "all", self.bucket_tokens.sum(), self.overall[run], None))
        return out

    @staticmethod
    def _row(run, it, kind, group, tokens, surprisal, entropy, **extra) -> dict:
        empty = int(tokens) == 0
        s = None if empty else finite_or_none(surprisal)
        return {"run": run, "iteration": it, "kind": kind, "group": group, **extra, "tokens": int(tokens),
                "mean_surprisal_bits": s, "perplexity": None if s is None else 2.0 ** s,
                "mean_entropy_bits": None if empty or entropy is None else finite_or_none(entropy)}

    def markdown(self) -> str:
        base = self.runs[0]
        others = self.runs[1:]
        runs_desc = ", ".join(f"{r} @ iter {self.iterations[r]}" for r in self.runs)
        text = [f"Mean surprisal in bits (perplexity in parentheses); {runs_desc}. "
                f"Delta: run minus {base} (negative = better than {base}).\n"]

        def table(first_cols, labels, tokens, per_run):
            header = first_cols + ["eval tokens"] + [f"{r} bits (ppl)" for r in self.runs] + \
                [f"delta {r}" for r in others]
            rows = []
            for i, label in enumerate(labels):
                row = list(label) + [int(tokens[i])]
                for r in self.runs:
                    v = per_run[r][i] if tokens[i] else None
                    row.append(NA if v is None else f"{v:.3f} ({2.0 ** v:.1f})")
                for r in others:
                    row.append(NA if not tokens[i] else f"{per_run[r][i] - per_run[base][i]:+.3f}")
                rows.append(row)
            return format_markdown_table(header, rows)

        blabels = [(lab, str(int(self.buckets.types[b])), f"{100 * self.buckets.mass[b]:.1f}%")
                   for b, lab in enumerate(self.buckets.labels)]
        text.append(f"By training-frequency bucket ({self.buckets.scheme} buckets of training counts):\n")
        text.append(table(["bucket (count)", "types", "train mass"], blabels, self.bucket_tokens, self.bucket_surprisal))
        text.append("\nBy domain (held-out dataset):\n")
        text.append(table(["domain"], [(d,) for d in self.domains], self.domain_tokens, self.domain_surprisal))
        return "\n".join(text)


def build_bucket_report(store: SurprisalStore, counts: TokenCounts, buckets: FrequencyBuckets,
                        runs: Optional[Sequence[str]] = None, iteration: Optional[int] = None) -> BucketReport:
    """One checkpoint per run (``iteration``, default each run's last) by bucket and by domain."""
    _counts_for_store(counts, store)
    runs = _select_runs(store, runs)
    token_bucket = buckets.of(np.asarray(store.tokens))
    domain = store.dataset_of_token
    nb, nd = buckets.num_buckets, len(store.dataset_labels)
    report = BucketReport(runs=runs, iterations={}, buckets=buckets, domains=store.dataset_labels,
                          bucket_tokens=np.bincount(token_bucket, minlength=nb)[:nb],
                          domain_tokens=np.bincount(domain, minlength=nd)[:nd])
    everyone = np.ones(token_bucket.size, bool)
    for run in runs:
        it = iteration if iteration is not None else store.iterations(run)[-1]
        arr = np.asarray(store.checkpoint_array(run, it), np.float64)
        report.iterations[run] = it
        report.bucket_surprisal[run] = grouped_mean(arr[0], token_bucket, nb, everyone)[0]
        report.bucket_entropy[run] = grouped_mean(arr[1], token_bucket, nb, everyone)[0]
        report.domain_surprisal[run] = grouped_mean(arr[0], domain, nd, everyone)[0]
        report.domain_entropy[run] = grouped_mean(arr[1], domain, nd, everyone)[0]
        report.overall[run] = float(arr[0].mean()) if arr.shape[1] else math.nan
    return report


# --------------------------------------------------------------------------- learning-curve report
@dataclass
class CurveReport:
    """Learning-curve statistics of several runs, by frequency bucket."""

    buckets: FrequencyBuckets
    aggregates: Dict[str, object]
    """run -> :class:`BucketAggregate`."""
    curves: Dict[str, tuple]
    """run -> (steps, mean surprisal [C, B], tokens [B])."""
    aoa_points: Dict[str, tuple]
    """run -> (log10 count, mean AoA, acquired occurrences) per token type with a defined AoA."""
    chance: float
    smoothing: dict
    final_window: int
    seed_groups: Dict[str, List[str]]
    min_drop: float = 1.0
    definitions: str = "project"

    def rows(self) -> List[dict]:
        out = []
        for run, agg in self.aggregates.items():
            for b, label in enumerate(self.buckets.labels):
                n = int(agg.tokens[b])

                def v(arr, ok=n > 0):
                    return None if arr is None or not ok else finite_or_none(arr[b])

                out.append({
                    "run": run, "bucket": label, "tokens": n,
                    "final_surprisal_bits": v(agg.final_surprisal),
                    "within_run_sd_bits": v(agg.within_run_variability),
                    "aoa_log10_step": v(agg.aoa),
                    "acquired_tokens": int(agg.acquired[b]), "aoa_censored_tokens": int(agg.censored[b]),
                    "forgettability_bits": v(agg.forgettability),
                    "cross_run_variability_bits2": v(agg.cross_run_variability),
                })
        return out

    def markdown(self) -> str:
        header = ["bucket (count)", "run", "eval tokens", "final surprisal", "within-run sd", "AoA log10 step",
                  "acquired / censored", "forgettability", "cross-run var"]
        rows = []
        for r in self.rows():
            rows.append([r["bucket"], r["run"], r["tokens"], _cell(r["final_surprisal_bits"]),
                         _cell(r["within_run_sd_bits"]), _cell(r["aoa_log10_step"], 2),
                         f"{r['acquired_tokens']} / {r['aoa_censored_tokens']}", _cell(r["forgettability_bits"]),
                         _cell(r["cross_run_variability_bits2"], 4)])
        sm = self.smoothing
        smoothing = (f"{sm.get('method')} smoothing"
                     + (f" with {sm.get('df')} effective degrees of freedom" if sm.get("method") == "spline" else ""))
        if self.definitions == "reference":
            definitions = (
                "Definitions of Chang et al.'s code (lm-learning-curves fc89e49, utils/annotator.py), with our "
                f"smoother ({smoothing} in log10(step)) for their GAM. Chance = {self.chance:.3f} bits. Final "
                f"surprisal and within-run sd over the last {self.final_window} checkpoints (raw). AoA: first "
                "of 1000 evenly spaced log10 steps where the smoothed curve is at or below (chance + minimum) / 2; "
                "log10 of the last step for tokens whose minimum is not below chance (not acquired, kept in "
                "the mean). Forgettability and cross-run variability from the smoothed curves at the "
                "checkpoints; censored = past the midpoint at the first checkpoint.")
        else:
            definitions = (
                f"Chance = log2 V = {self.chance:.3f} bits. Final surprisal and within-run sd over the last "
                f"{self.final_window} checkpoints (raw). AoA, forgettability and cross-run variability from "
                f"curves smoothed in log10(step): {smoothing}. AoA is averaged over acquired tokens (smoothed "
                f"minimum at least {self.min_drop:g} bit(s) below chance); censored = already past the midpoint "
                "at the first checkpoint.")
        intro = (definitions
                 + (" Seed groups: " + "; ".join(f"{g} = {', '.join(m)}" for g, m in self.seed_groups.items())
                    if self.seed_groups else " No seed groups: cross-run variability n/a.") + "\n")
        return intro + "\n" + format_markdown_table(header, rows)


def build_curve_report(store: SurprisalStore, counts: TokenCounts, buckets: FrequencyBuckets,
                       runs: Optional[Sequence[str]] = None, seed_groups: Optional[Dict[str, List[str]]] = None,
                       smoothing: SmoothingConfig = SmoothingConfig(), final_window: Optional[int] = None,
                       chance: Optional[float] = None, per_token_out: Optional[str] = None,
                       min_drop: Optional[float] = None, definitions: str = "project") -> CurveReport:
    """Curve statistics per run (and seed group), aggregated by ``buckets``, with the project's or
    the reference code's ``definitions`` (:func:`compute_curve_metrics`). ``chance`` defaults to
    ``log2`` of the models' output vocabulary (padded: what a uniform prediction is spread over) for
    the project, of the tokenizer's vocabulary for the reference. ``per_token_out``: directory for
    the per-token arrays (``<run>_<metric>.npy``)."""
    _counts_for_store(counts, store)
    seed_groups = dict(seed_groups or {})
    runs = _select_runs(store, runs)
    for group, members in seed_groups.items():
        if len(members) < 2:
            raise ValueError(f"seed group {group!r} needs at least 2 runs, got {members}")
        _select_runs(store, members)
    token_ids = np.asarray(store.tokens)
    token_bucket = buckets.of(token_ids)
    nb = buckets.num_buckets
    if chance is None and definitions == "reference":
        chance = chance_bits(store.vocab_size)
    if chance is None:
        padded = {store.manifest["runs"][r]["model"].get("padded_vocab_size", store.vocab_size) for r in runs}
        if len(padded) > 1:
            raise ValueError(f"runs have different output vocabularies {sorted(padded)}; pass chance explicitly")
        chance = chance_bits(padded.pop())

    loaded = {}

    def load(run):
        if run not in loaded:
            loaded[run] = store.load_run(run)
        return loaded[run]

    cross: Dict[str, np.ndarray] = {}
    for group, members in seed_groups.items():
        cross[group] = cross_run_variability([(load(m).steps, load(m).surprisal) for m in members], smoothing,
                                             definitions=definitions)
    group_of = {m: g for g, members in seed_groups.items() for m in members}

    aggregates, curves, points = {}, {}, {}
    smoothing_desc, windows, drops = {}, set(), set()
    log_counts = np.log10(np.where(counts.counts > 0, counts.counts, np.nan).astype(np.float64))
    for run in runs:
        data = load(run)
        metrics = compute_curve_metrics(data.steps, data.surprisal, chance, smoothing, final_window, min_drop,
                                        definitions=definitions)
        smoothing_desc = metrics.smoothing
        windows.add(metrics.final_window)
        drops.add(metrics.min_drop)
        crv = cross.get(group_of.get(run))
        aggregates[run] = aggregate_by_bucket(run, metrics, token_bucket, nb, crv)
        curves[run] = mean_curves_by_bucket(data.surprisal, token_bucket, nb)
        curves[run] = (data.steps, curves[run][0], curves[run][1])
        aoa_mean, occ = per_type_mean(metrics.aoa, token_ids, store.vocab_size, np.isfinite(metrics.aoa))
        types = np.flatnonzero((occ > 0) & np.isfinite(log_counts))  # unseen-in-training types have no log count
        points[run] = (log_counts[types], aoa_mean[types], occ[types])
        if per_token_out:
            os.makedirs(per_token_out, exist_ok=True)
            for name in ("final_surprisal", "within_run_variability", "aoa", "forgettability", "minimum"):
                save_npy(os.path.join(per_token_out, f"{run}_{name}.npy"), getattr(metrics, name).astype(np.float32))
            save_npy(os.path.join(per_token_out, f"{run}_acquired.npy"), metrics.acquired)
    if per_token_out:
        for group, values in cross.items():
            save_npy(os.path.join(per_token_out, f"{group}_cross_run_variability.npy"), values.astype(np.float32))
    # The reference window is min(11, checkpoints): runs with fewer checkpoints may differ.
    return CurveReport(buckets=buckets, aggregates=aggregates, curves=curves, aoa_points=points, chance=chance,
                       smoothing=smoothing_desc, final_window=min(windows), seed_groups=seed_groups,
                       min_drop=drops.pop(), definitions=definitions)


# --------------------------------------------------------------------------- command lines
def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="Surprisal store written by eval_surprisal.py.")
    p.add_argument("--frequency", required=True, help="Training token counts (token_frequency.py output).")
    p.add_argument("--runs", nargs="+", default=None, help="Runs to compare, in column order (default: all).")
    p.add_argument("--output-prefix", required=True,
                   help="Writes <prefix>.md, <prefix>.csv, <prefix>.json and the figures <prefix>*.png.")
    p.add_argument("--title", default="", help="Figure title.")
    add_bucket_arguments(p)


def _load_inputs(args):
    store = SurprisalStore(args.store)
    counts = TokenCounts.load(args.frequency)
    buckets = build_buckets(counts.counts, args.buckets, args.num_buckets, args.log_base)
    return store, counts, buckets


def _write_tables(prefix: str, markdown: str, rows: List[dict], meta: dict) -> List[str]:
    ensure_parent(prefix)
    write_text(prefix + ".md", markdown)
    write_text(prefix + ".csv", rows_to_csv(rows))
    write_json(prefix + ".json", {**meta, "rows": rows})
    return [prefix + ext for ext in (".md", ".csv", ".json")]


def bucket_report_main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="bucket_report.py", description=__doc__.split("\n\n")[0])
    _common_arguments(p)
    p.add_argument("--iteration", type=int, default=None, help="Checkpoint to report (default: each run's last).")
    args = p.parse_args(argv)
    store, counts, buckets = _load_inputs(args)
    report = build_bucket_report(store, counts, buckets, args.runs, args.iteration)
    from megatron_mile.analysis.plots import plot_bucket_surprisal

    written = _write_tables(args.output_prefix, report.markdown(), report.rows(),
                            {"buckets": buckets.describe(), "iterations": report.iterations})
    written.append(plot_bucket_surprisal(
        args.output_prefix + ".png", buckets.labels, report.bucket_surprisal, report.bucket_tokens,
        report.domains, report.domain_surprisal, report.domain_tokens, title=args.title))
    print(report.markdown())
    print("wrote " + ", ".join(written))
    return 0


def _seed_group(text: str) -> tuple:
    name, sep, members = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--seed-group takes NAME=RUN1,RUN2[,...], got {text!r}")
    return name, [m for m in members.split(",") if m]


def learning_curves_main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="learning_curves.py",
                                description="Per-token learning curves across checkpoints, by frequency bucket.")
    _common_arguments(p)
    p.add_argument("--seed-group", type=_seed_group, action="append", default=[], metavar="NAME=RUN1,RUN2",
                   help="Runs that differ only in their seed, for cross-run variability (repeatable).")
    p.add_argument("--definitions", choices=DEFINITIONS, default="project",
                   help="project: the definitions of docs/analysis.md; reference: every statistic as Chang et al.'s "
                        "code computes it (final window 11, AoA on 1000 log-step points, log10 of the last step for "
                        "tokens never below chance, cross-run variability over the checkpoints, chance = log2 of "
                        "the tokenizer's vocabulary), our smoother in place of their GAM.")
    p.add_argument("--smoothing", choices=["spline", "none"], default="spline")
    p.add_argument("--smoothing-df", type=float, default=None,
                   help="Effective degrees of freedom of the spline (default clip(C/3, 4, 12)).")
    p.add_argument("--final-window", type=int, default=None,
                   help="Checkpoints averaged for the final surprisal (default 3; 11 with --definitions reference, "
                        "which allows no other value).")
    p.add_argument("--min-drop", type=float, default=None,
                   help="Project definitions only: bits below chance the smoothed curve must reach for a token to "
                        "count as acquired (default 1; tokens not acquired have no AoA).")
    p.add_argument("--chance-vocab", type=int, default=None,
                   help="Vocabulary size for chance log2 V (default: the models' padded output size; the "
                        "tokenizer's vocabulary with --definitions reference).")
    p.add_argument("--per-token-dir", default=None, help="Also save the per-token statistics here (.npy).")
    args = p.parse_args(argv)
    if args.definitions == "reference" and args.min_drop is not None:
        p.error("--min-drop is a project definition; the reference code has none")
    if args.definitions == "reference" and args.final_window not in (None, 11):
        p.error("--definitions reference averages the last 11 checkpoints; drop --final-window")
    store, counts, buckets = _load_inputs(args)
    report = build_curve_report(
        store, counts, buckets, args.runs, dict(args.seed_group),
        SmoothingConfig(method=args.smoothing, df=args.smoothing_df), args.final_window,
        chance_bits(args.chance_vocab) if args.chance_vocab else None, args.per_token_dir, args.min_drop,
        args.definitions)
    from megatron_mile.analysis.plots import plot_aoa_scatter, plot_curves_by_bucket

    written = _write_tables(args.output_prefix, report.markdown(), report.rows(),
                            {"buckets": buckets.describe(), "chance_bits": report.chance,
                             "smoothing": report.smoothing, "final_window": report.final_window,
                             "min_drop_bits": report.min_drop, "definitions": report.definitions,
                             "seed_groups": report.seed_groups})
    title = args.title or "mean surprisal by training-frequency bucket"
    written.append(plot_curves_by_bucket(args.output_prefix + "_curves.png", report.curves, buckets.labels,
                                         report.chance, title=title))
    written.append(plot_aoa_scatter(args.output_prefix + "_aoa.png", report.aoa_points,
                                    title=args.title or "age of acquisition vs training frequency"))
    print(report.markdown())
    print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(bucket_report_main())
