"""A ready ``--data-path`` blend from ``mile-preprocess`` / ``mile-merge-datasets`` manifests.

    $ mile-blend /data/mile-manifests/pile.json
    --data-path 0.181 /data/pile_Pile-CC_text_document 0.144 /data/pile_PubMed_Central_text_document ...

Weights are proportional to tokens (natural sampling) unless given per domain:

* ``--weights "Pile-CC=0.18" "ArXiv=0.09" ...``: each domain's share of the blend (normalised),
  e.g. the sampling rates of a paper; every domain needs one (or ``--default-weight``).
* ``--epochs "Wikipedia (en)=3" ...``: tokens times epochs, as the Pile paper specifies its mix;
  unlisted domains get 1.

A domain spread over several datasets (several runs) splits its share by their tokens. Domains
may be named as in the data (``Wikipedia (en)``) or filename-safe (``Wikipedia_en``).

Every dataset's files are checked against its manifest first (sizes, ``.idx`` checksum): a set
that an interrupted re-run left half replaced is refused, naming the file.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from megatron_mile.data.manifest import load_manifest
from megatron_mile.data.preprocess import safe_name


def load_datasets(manifests: list[str], key: Optional[str] = None) -> list[dict]:
    """The ``datasets`` entries of the manifests (only json key ``key`` if given), each with its
    ``prefix``, after checking every dataset's files against its manifest."""
    datasets = []
    for path in manifests:
        datasets.extend(d for d in load_manifest(path)["datasets"]
                        if key is None or d["key"] == key)
    if key is None and len({d["key"] for d in datasets}) > 1:
        raise ValueError(f"the manifests hold several json keys {sorted({d['key'] for d in datasets})}"
                         "; choose one with --key")
    return datasets


def _lookup_domain(table: dict, domain: Optional[str]) -> Optional[float]:
    if domain is None:
        return table.get(None)
    for name in (domain, safe_name(domain)):
        if name in table:
            return table[name]
    return None


def blend_weights(datasets: list[dict], weights: Optional[dict] = None,
                  epochs: Optional[dict] = None,
                  default_weight: Optional[float] = None) -> list[tuple[float, str]]:
    """``[(weight, prefix), ...]`` summing to 1, in the order of ``datasets``.

    Args:
        datasets: entries with ``prefix``, ``domain`` and ``tokens``.
        weights: domain -> share of the blend (normalised over the domains present).
        epochs: domain -> multiplier of its tokens (default 1).
        default_weight: share for domains missing from ``weights`` (else that is an error).
    """
    if weights is not None and epochs is not None:
        raise ValueError("give per-domain weights or epochs, not both")
    datasets = [d for d in datasets if d["tokens"] > 0]
    if not datasets:
        raise ValueError("no non-empty datasets")
    domain_tokens: dict = {}
    for d in datasets:
        domain_tokens[d.get("domain")] = domain_tokens.get(d.get("domain"), 0) + d["tokens"]
    if weights is not None:
        missing = [dom for dom in domain_tokens if _lookup_domain(weights, dom) is None]
        if missing and default_weight is None:
            raise ValueError(f"no weight given for domains {missing} (or use --default-weight)")
        unknown = set(weights) - {k for dom in domain_tokens for k in (dom, safe_name(dom or ""))}
        if unknown:
            raise ValueError(f"weights given for domains not in the data: {sorted(unknown)}")
        raw = []
        for d in datasets:
            share = _lookup_domain(weights, d.get("domain"))
            share = default_weight if share is None else share
            raw.append(share * d["tokens"] / domain_tokens[d.get("domain")])
    else:
        epochs = epochs or {}
        raw = []
        for d in datasets:
            mult = _lookup_domain(epochs, d.get("domain"))
            raw.append(d["tokens"] * (1.0 if mult is None else mult))
    total = sum(raw)
    if total <= 0:
        raise ValueError("all weights are zero")
    return [(w / total, d["prefix"]) for w, d in zip(raw, datasets)]


def format_data_path(blend: list[tuple[float, str]], digits: int = 6) -> str:
    """``--data-path w1 prefix1 w2 prefix2 ...`` as Megatron's training takes it."""
    return "--data-path " + " ".join(f"{w:.{digits}g} {p}" for w, p in blend if w > 0)


def _parse_pairs(items: Optional[list[str]], flag: str) -> Optional[dict]:
    if items is None:
        return None
    table = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"{flag} expects DOMAIN=NUMBER, got {item!r}")
        table[name] = float(value)
    return table


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mile-blend", description=__doc__.split("\n\n")[0])
    parser.add_argument("manifests", nargs="+",
                        help="manifests of mile-preprocess runs (DIR/mile-manifests/NAME.json)")
    parser.add_argument("--key", default=None, help="json key to blend (when several)")
    parser.add_argument("--weights", nargs="+", metavar="DOMAIN=SHARE", default=None)
    parser.add_argument("--epochs", nargs="+", metavar="DOMAIN=EPOCHS", default=None)
    parser.add_argument("--default-weight", type=float, default=None)
    parser.add_argument("--table", action="store_true",
                        help="also print a table of domains, tokens and weights to stderr")
    args = parser.parse_args(argv)
    try:
        datasets = load_datasets(args.manifests, args.key)
        blend = blend_weights(datasets, _parse_pairs(args.weights, "--weights"),
                              _parse_pairs(args.epochs, "--epochs"), args.default_weight)
    except (OSError, ValueError, KeyError) as e:
        print(f"mile-blend: error: {e}", file=sys.stderr)
        return 1
    if args.table:
        by_prefix = {d["prefix"]: d for d in datasets}
        for w, prefix in blend:
            d = by_prefix[prefix]
            print(f"{str(d.get('domain')):30s} {d['tokens']:>15,} tokens  weight {w:.4f}",
                  file=sys.stderr)
    print(format_data_path(blend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
