"""Figures (matplotlib, Agg backend: no display needed): bucket surprisal, learning curves, AoA scatter.

Every function takes plain arrays and writes one PNG; none computes statistics.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from megatron_mile.analysis._io import ensure_parent

__all__ = ["plot_aoa_scatter", "plot_bucket_surprisal", "plot_curves_by_bucket"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    ensure_parent(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _run_colors(runs: Sequence[str]) -> Dict[str, str]:
    cycle = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    return {run: cycle[i % len(cycle)] for i, run in enumerate(runs)}


def _bars(ax, labels: List[str], values: Dict[str, np.ndarray], counts: np.ndarray, ylabel: str, title: str):
    """Grouped bars, one group per label, one bar per run; empty groups get no bar and 'empty'."""
    runs = list(values)
    colors = _run_colors(runs)
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(labels))
    for i, run in enumerate(runs):
        v = np.where(counts > 0, values[run], 0.0)
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, v, width, label=run, color=colors[run])
    ax.axhline(0, color="0.3", lw=0.6)
    for xi, c in zip(x, counts):
        ax.annotate(f"n={c}" if c else "empty", (xi, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7, color="0.35")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, pad=14)
    ax.grid(axis="y", alpha=0.3)


def plot_bucket_surprisal(path: str, bucket_labels: List[str], bucket_means: Dict[str, np.ndarray],
                          bucket_counts: np.ndarray, domain_labels: Optional[List[str]] = None,
                          domain_means: Optional[Dict[str, np.ndarray]] = None,
                          domain_counts: Optional[np.ndarray] = None, title: str = "") -> str:
    """Mean surprisal per frequency bucket (and per domain) for each run; with several runs a second
    row shows each run minus the first (negative: lower surprisal than the first run)."""
    plt = _pyplot()
    runs = list(bucket_means)
    cols = 2 if domain_labels else 1
    rows = 2 if len(runs) > 1 else 1
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.9 * rows), squeeze=False)
    _bars(axes[0, 0], bucket_labels, bucket_means, bucket_counts, "mean surprisal (bits)",
          "by training-frequency bucket (count)")
    if cols == 2:
        _bars(axes[0, 1], domain_labels, domain_means, domain_counts, "mean surprisal (bits)", "by domain")
    if rows == 2:
        base = runs[0]

        def delta(means):
            return {r: means[r] - means[base] for r in runs[1:]}

        _bars(axes[1, 0], bucket_labels, delta(bucket_means), bucket_counts, f"minus {base} (bits)",
              f"difference to {base}, by bucket")
        if cols == 2:
            _bars(axes[1, 1], domain_labels, delta(domain_means), domain_counts, f"minus {base} (bits)",
                  f"difference to {base}, by domain")
        for ax in axes[1]:  # keep the runs' colours of the first row
            for patch, run in zip(ax.containers, runs[1:]):
                for bar in patch:
                    bar.set_color(_run_colors(runs)[run])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=len(runs))
    if title:
        fig.suptitle(title, fontsize=11, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path)


def plot_curves_by_bucket(path: str, curves: Dict[str, tuple], bucket_labels: List[str],
                          chance: Optional[float] = None, title: str = "", min_tokens: int = 100) -> str:
    """One panel per run: the mean surprisal of each frequency bucket against the training step
    (log axis); with several runs checkpointed at the same steps, a last panel shows each bucket's
    difference between the last and the first run (buckets of at least ``min_tokens`` evaluated
    tokens: the difference of two means of a handful of tokens is noise). ``curves[run] = (steps
    [C], mean [C, B], tokens [B])``; empty buckets are skipped."""
    plt = _pyplot()
    runs = list(curves)
    same_steps = len(runs) > 1 and all(np.array_equal(curves[r][0], curves[runs[0]][0]) for r in runs)
    panels = len(runs) + (1 if same_steps else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels + 1.8, 4.2), squeeze=False)
    cmap = plt.get_cmap("viridis")
    num = len(bucket_labels)
    color = [cmap(b / max(1, num - 1)) for b in range(num)]
    top = max(np.nanmax(np.where(curves[r][2] > 0, curves[r][1], np.nan)) for r in runs)
    for ax, run in zip(axes[0], runs):
        steps, mean, tokens = curves[run]
        for b in range(num):
            if tokens[b]:
                ax.plot(steps, mean[:, b], marker="o", ms=3, color=color[b], label=f"{bucket_labels[b]} (n={tokens[b]})")
        if chance is not None:
            ax.axhline(chance, ls="--", lw=0.8, color="0.5", label=f"chance log2 V = {chance:.2f}")
        ax.set_ylim(0, top * 1.05)
        ax.set_ylabel("mean surprisal (bits)")
        ax.set_title(run, fontsize=10)
    if same_steps:
        ax = axes[0, -1]
        first, last = runs[0], runs[-1]
        steps, tokens = curves[first][0], curves[first][2]
        for b in range(num):
            if tokens[b] >= min_tokens:
                ax.plot(steps, curves[last][1][:, b] - curves[first][1][:, b], marker="o", ms=3, color=color[b])
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_ylabel(f"{last} minus {first} (bits)")
        ax.set_title(f"{last} - {first} (buckets with >= {min_tokens} tokens)", fontsize=10)
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, title="training-frequency bucket",
               title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.8 / (4.6 * panels + 1.8), 1))
    return _save(fig, path)


def plot_aoa_scatter(path: str, points: Dict[str, tuple], title: str = "", bins: int = 12, min_types: int = 5) -> str:
    """AoA (log10 step) against log10 training frequency, one point per token type and run, with the
    binned mean per run (bins with at least ``min_types`` types). ``points[run] = (log10 count [T],
    mean AoA [T], occurrences [T])``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    colors = _run_colors(list(points))
    all_x = np.concatenate([p[0] for p in points.values()]) if points else np.zeros(0)
    edges = np.linspace(all_x.min(), all_x.max(), bins + 1) if all_x.size else None
    for run, (x, y, occ) in points.items():
        size = 4 + 10 * np.log10(1 + np.asarray(occ))
        ax.scatter(x, y, s=size, alpha=0.25, color=colors[run], edgecolors="none")
        if edges is not None and x.size:
            which = np.clip(np.digitize(x, edges) - 1, 0, bins - 1)
            centers, means = [], []
            for b in range(bins):
                sel = which == b
                if sel.sum() >= min_types:  # a mean of one or two types is noise
                    centers.append(x[sel].mean())
                    means.append(y[sel].mean())
            ax.plot(centers, means, color=colors[run], lw=2, label=f"{run} (binned mean, {x.size} types)")
    ax.set_xlabel("log10 training count of the token")
    ax.set_ylabel("age of acquisition, log10 step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
