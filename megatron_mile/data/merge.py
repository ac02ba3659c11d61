"""Merge indexed datasets written by several runs (Megatron-LM's ``tools/merge_datasets.py``).

Two ways to name the inputs:

* Megatron's: ``--input DIR`` (every ``.bin``/``.idx`` pair in it, sorted by name) and/or dataset
  prefixes; everything is concatenated into ``{output_prefix}.bin/.idx``, byte-identical to
  Megatron's ``IndexedDatasetBuilder.add_index`` + ``finalize``.
* Per domain: ``--input run00_stats.json run01_stats.json ...`` (the ``_stats.json`` of
  ``mile-preprocess`` runs, e.g. one per Pile shard). Datasets are grouped by (json key, domain)
  and each group is merged into ``{output_prefix}[_{domain}]_{key}_document``, in the order the
  stats files are given; a merged ``{output_prefix}_stats.json`` is written for ``mile-blend``.

Streaming (the ``.bin`` files are copied, never loaded), written under temporary names and
renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

from megatron_mile.data.indexed import IndexedDatasetWriter, read_index_header, tmp_name
from megatron_mile.data.preprocess import dataset_prefix


def _dataset_prefixes(inputs: list[str]) -> list[str]:
    """Dataset prefixes named by directories and prefixes (``.bin``/``.idx`` suffix allowed)."""
    prefixes: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted({os.path.splitext(n)[0] for n in os.listdir(item)
                            if n.endswith((".bin", ".idx"))})
            if not found:
                raise FileNotFoundError(f"no .bin/.idx files in directory {item}")
            prefixes.extend(os.path.join(item, p) for p in found)
        else:
            prefixes.append(item[:-4] if item.endswith((".bin", ".idx")) else item)
    for prefix in prefixes:
        for ext in (".bin", ".idx"):
            if not os.path.isfile(prefix + ext):
                raise FileNotFoundError(f"{prefix}{ext} not found (each dataset needs both "
                                        ".bin and .idx)")
    return prefixes


def merge_datasets(prefixes: list[str], output_prefix: str) -> dict:
    """Concatenate datasets into ``output_prefix``; returns documents/tokens/sequences."""
    if not prefixes:
        raise ValueError("nothing to merge")
    out = os.path.abspath(output_prefix)
    if any(os.path.abspath(p) == out for p in prefixes):
        raise ValueError(f"the output {output_prefix} is also an input")
    dtype = read_index_header(prefixes[0] + ".idx")[0]
    writer = IndexedDatasetWriter(output_prefix, dtype)
    try:
        for prefix in prefixes:
            writer.add_dataset(prefix)
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    return {"prefix": output_prefix, "documents": writer.documents, "tokens": writer.tokens,
            "sequences": writer.sequences}


def merge_runs(stats_files: list[str], output_prefix: str) -> dict:
    """Merge the datasets of several ``mile-preprocess`` runs per (key, domain)."""
    start = time.perf_counter()
    runs = []
    for path in stats_files:
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    groups: dict = {}
    for run in runs:
        for d in run["datasets"]:
            group = groups.setdefault((d["key"], d.get("domain")), [])
            group.append(d)
    datasets = []
    written: list[str] = []
    try:
        for (key, domain), parts in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            prefix = dataset_prefix(output_prefix, key, domain)
            merged = merge_datasets([p["prefix"] for p in parts], prefix)
            written.append(prefix)
            datasets.append({"prefix": prefix, "key": key, "domain": domain,
                             "documents": merged["documents"], "tokens": merged["tokens"],
                             "text_bytes": sum(p.get("text_bytes", 0) for p in parts)})
    except BaseException:
        # All or nothing: a half-merged set of domains would silently skew a blend.
        for prefix in written:
            for ext in (".idx", ".bin"):
                if os.path.exists(prefix + ext):
                    os.remove(prefix + ext)
        raise
    stats = {
        "output_prefix": output_prefix,
        "merged_from": stats_files,
        "tokenizer": runs[0].get("tokenizer"),
        "dtype": runs[0].get("dtype"),
        "datasets": datasets,
        "totals": {
            "datasets": len(datasets),
            "documents": sum(d["documents"] for d in datasets),
            "tokens": sum(d["tokens"] for d in datasets),
            "text_bytes": sum(d["text_bytes"] for d in datasets),
        },
        "seconds": round(time.perf_counter() - start, 3),
    }
    path = f"{output_prefix}_stats.json"
    with open(tmp_name(path), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2)
        f.write("\n")
    os.replace(tmp_name(path), path)
    return stats


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mile-merge-datasets",
        description="Merge Megatron indexed datasets (directory / prefixes), or the per-domain "
                    "datasets of several mile-preprocess runs (their _stats.json files).")
    parser.add_argument("--input", nargs="+", required=True,
                        help="directories, dataset prefixes, or *_stats.json files")
    parser.add_argument("--output-prefix", required=True)
    args = parser.parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(args.output_prefix))
    try:
        stats_inputs = [i for i in args.input if i.endswith(".json")]
        if stats_inputs and len(stats_inputs) != len(args.input):
            raise ValueError("give either _stats.json files or datasets/directories, not both")
        os.makedirs(out_dir, exist_ok=True)
        if stats_inputs:
            stats = merge_runs(stats_inputs, args.output_prefix)
            summary = stats["totals"]
        else:
            summary = merge_datasets(_dataset_prefixes(args.input), args.output_prefix)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"mile-merge-datasets: error: {e}", file=sys.stderr)
        return 1
    print(f"[mile-merge-datasets] {args.output_prefix}: {summary['documents']:,} documents, "
          f"{summary['tokens']:,} tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
