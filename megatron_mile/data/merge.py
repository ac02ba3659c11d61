"""Merge indexed datasets written by several runs (Megatron-LM's ``tools/merge_datasets.py``).

Two ways to name the inputs:

* Megatron's: ``--input DIR`` (every ``.bin``/``.idx`` pair in it, sorted by name) and/or dataset
  prefixes; everything is concatenated into ``{output_prefix}.bin/.idx``, byte-identical to
  Megatron's ``IndexedDatasetBuilder.add_index`` + ``finalize``.
* Per domain: ``--input DIR/mile-manifests/run00.json DIR/mile-manifests/run01.json ...`` (the
  manifests of ``mile-preprocess`` runs, e.g. one per Pile shard). Datasets are grouped by (json
  key, domain) and each group is merged into ``{output_prefix}[_{domain}]_{key}_document``, in
  the order the manifests are given, with a manifest of its own for ``mile-blend``.

An input listed in a manifest must agree with it (:mod:`megatron_mile.data.manifest`), and
inputs made with different tokenizers are refused. The output gets a manifest when its inputs
have one. Streaming (the ``.bin`` files are copied, never loaded), staged and committed as
``mile-preprocess`` commits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

from megatron_mile.data import manifest as manifest_mod
from megatron_mile.data.indexed import IndexedDatasetWriter, read_index_header
from megatron_mile.data.preprocess import dataset_prefix

# What must agree between the tokenizers of merged data.
_TOKENIZER_FIELDS = ("type", "vocab_size", "sha256")


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


def _same_tokenizer(sources: list[tuple[str, dict]]) -> dict:
    """The tokenizer all ``(manifest path, manifest)`` sources were made with, or ValueError."""
    first_path, first = sources[0]
    for path, manifest in sources[1:]:
        a = {k: first["tokenizer"].get(k) for k in _TOKENIZER_FIELDS}
        b = {k: manifest["tokenizer"].get(k) for k in _TOKENIZER_FIELDS}
        if a != b:
            raise ValueError(f"{path}: made with another tokenizer than {first_path} ({b} vs "
                             f"{a}); cannot merge")
    return first["tokenizer"]


def _merge_into(writer: IndexedDatasetWriter, prefixes: list[str]) -> None:
    for prefix in prefixes:
        writer.add_dataset(prefix)
    writer.finish()


def _write(output_prefix: str, groups: list[tuple[str, list[str]]], dtype,
           describe) -> Optional[dict]:
    """Merge each ``(output dataset prefix, input prefixes)`` group, then commit them all with the
    manifest ``describe(writers, staging)`` returns (None: no manifest)."""
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    staging = manifest_mod.make_staging(out_dir)
    writers = []
    try:
        for out, prefixes in groups:
            writers.append(IndexedDatasetWriter(out, dtype, staging))
            _merge_into(writers[-1], prefixes)
        manifest = describe(writers, staging)
        path = manifest_mod.manifest_path(output_prefix)
        moves = [m for w in writers for m in w.moves()]
        manifest_mod.commit(moves, manifest_mod.replaced_files(path, moves), manifest, path,
                            staging)
    except BaseException:
        for w in writers:
            try:
                w.close()
            except OSError:
                pass
        manifest_mod.remove_staging(staging)
        raise
    return manifest


def _entry(w: IndexedDatasetWriter, staging: str, **extra) -> dict:
    return {"name": os.path.basename(w.prefix), **extra, "documents": w.documents,
            "tokens": w.tokens,
            **manifest_mod.describe_files(os.path.join(staging, os.path.basename(w.prefix)))}


def merge_datasets(prefixes: list[str], output_prefix: str) -> dict:
    """Concatenate datasets into ``output_prefix``; returns documents/tokens/sequences."""
    if not prefixes:
        raise ValueError("nothing to merge")
    out = os.path.abspath(output_prefix)
    if any(os.path.abspath(p) == out for p in prefixes):
        raise ValueError(f"the output {output_prefix} is also an input")
    found = [manifest_mod.find_manifest(p) for p in prefixes]  # refuses disagreeing files
    dtype = read_index_header(prefixes[0] + ".idx")[0]
    summary: dict = {}

    def describe(writers, staging):
        (w,) = writers
        summary.update(prefix=output_prefix, documents=w.documents, tokens=w.tokens,
                       sequences=w.sequences)
        if tokenizer is None:
            return None  # an input without metadata: so is the output
        return {"format": manifest_mod.MANIFEST_FORMAT,
                "output_prefix": os.path.basename(output_prefix),
                "merged_from": [os.path.abspath(p) for p in prefixes], "tokenizer": tokenizer,
                "dtype": found[0][1].get("dtype"),
                "datasets": [_entry(w, staging, key=None, domain=None, text_bytes=sum(
                    f[2].get("text_bytes", 0) for f in found))]}

    tokenizer = None
    if all(f is not None for f in found):
        tokenizer = _same_tokenizer([(f[0], f[1]) for f in found])  # before any byte is copied
    _write(output_prefix, [(output_prefix, prefixes)], dtype, describe)
    return summary


def merge_runs(manifest_files: list[str], output_prefix: str) -> dict:
    """Merge the datasets of several ``mile-preprocess`` runs per (key, domain)."""
    start = time.perf_counter()
    runs = [manifest_mod.load_manifest(path) for path in manifest_files]  # verified
    tokenizer = _same_tokenizer(list(zip(manifest_files, runs)))
    groups: dict = {}
    for run in runs:
        for d in run["datasets"]:
            groups.setdefault((d["key"], d.get("domain")), []).append(d)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
    if not ordered:
        raise ValueError(f"no datasets in {', '.join(manifest_files)}")
    dtype = read_index_header(ordered[0][1][0]["prefix"] + ".idx")[0]

    def describe(writers, staging):
        datasets = [_entry(w, staging, key=key, domain=domain,
                           text_bytes=sum(p.get("text_bytes", 0) for p in parts))
                    for w, ((key, domain), parts) in zip(writers, ordered)]
        return {
            "format": manifest_mod.MANIFEST_FORMAT,
            "output_prefix": os.path.basename(output_prefix),
            "merged_from": [os.path.abspath(p) for p in manifest_files],
            "tokenizer": tokenizer,
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

    manifest = _write(output_prefix, [(dataset_prefix(output_prefix, key, domain),
                                       [p["prefix"] for p in parts])
                                      for (key, domain), parts in ordered], dtype, describe)
    for d in manifest["datasets"]:
        d["prefix"] = os.path.join(os.path.dirname(output_prefix), d["name"])
    return manifest


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mile-merge-datasets",
        description="Merge Megatron indexed datasets (directory / prefixes), or the per-domain "
                    "datasets of several mile-preprocess runs (their manifests).")
    parser.add_argument("--input", nargs="+", required=True,
                        help="directories, dataset prefixes, or manifests "
                             "(DIR/mile-manifests/NAME.json)")
    parser.add_argument("--output-prefix", required=True)
    args = parser.parse_args(argv)
    try:
        manifests = [i for i in args.input if i.endswith(".json")]
        if manifests and len(manifests) != len(args.input):
            raise ValueError("give either manifests (.json) or datasets/directories, not both")
        if manifests:
            summary = merge_runs(manifests, args.output_prefix)["totals"]
        else:
            summary = merge_datasets(_dataset_prefixes(args.input), args.output_prefix)
    except OSError as e:
        reason = f"{e.filename}: {e.strerror}" if e.filename is not None and e.strerror else e
        print(f"mile-merge-datasets: error: {reason}", file=sys.stderr)
        return 1
    except (ValueError, KeyError) as e:
        print(f"mile-merge-datasets: error: {e}", file=sys.stderr)
        return 1
    print(f"[mile-merge-datasets] {args.output_prefix}: {summary['documents']:,} documents, "
          f"{summary['tokens']:,} tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
