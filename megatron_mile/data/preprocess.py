"""jsonl / jsonl.zst corpora to Megatron ``.bin``/``.idx`` indexed datasets, one per domain.

``mile-preprocess`` (or ``python tools/preprocess_data.py``) takes Megatron-LM's
``tools/preprocess_data.py`` flags where they overlap and, without ``--split-by``, writes
byte-identical ``{prefix}_{key}_document.{bin,idx}``. With ``--split-by meta.pile_set_name`` it
writes one dataset per distinct value, ``{prefix}_{domain}_{key}_document``, so a training blend
can weight the Pile's domains. The manifest ``DIR/mile-manifests/NAME.json`` (for the prefix
``DIR/NAME``; :mod:`megatron_mile.data.manifest`) records documents, tokens, bytes and checksums
per dataset and the tokenizer; ``mile-blend`` turns it into a ``--data-path``, training checks
the data against it. The output directory holds only ``.bin``/``.idx`` pairs.

Pipeline (memory bounded whatever the input size)::

    main: read blocks of whole lines ──► workers: split, json.loads, tokenise a batch,
          (file, first line, bytes)             pack uint16/int32 arrays per (key, domain)
    main: ◄── results, in input order ── at most ``2 * workers + 1`` blocks in flight
          write .bin, spool lengths (all in a staging directory); at the end write the .idx
          files, then commit: move every dataset to its final name, the manifest last

With ``--workers 1`` blocks are tokenised in the main process: no IPC at all. Workers import
only numpy and the tokenizer library (no torch, no megatron).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import multiprocessing
import os
import re
import signal
import sys
import time
from typing import Any, Iterator, Optional

import numpy as np

from megatron_mile.data import manifest as manifest_mod
from megatron_mile.data.indexed import IndexedDatasetWriter, optimal_dtype
from megatron_mile.data.jsonl import InputError, expand_inputs, input_size, iter_blocks
from megatron_mile.data.tokenizers import TOKENIZER_TYPES, build_tokenizer

# Reasons a line is bad; the keys of the manifest's "bad_lines".
BAD_JSON = "malformed_json"
NOT_OBJECT = "not_an_object"
MISSING_KEY = "missing_key"
NOT_STRING = "not_a_string"
BAD_UNICODE = "invalid_unicode"
MISSING_SPLIT = "missing_split_value"
TOKENIZER_ERROR = "tokenizer_error"
BAD_ZSTD = "undecodable_zstd"


@dataclasses.dataclass
class PreprocessConfig:
    """Options of :func:`preprocess` (the CLI flags, same names)."""

    input: list
    """Input files or globs: ``.jsonl``, ``.json`` (one object per line) or ``.jsonl.zst``."""
    output_prefix: str
    """Outputs are ``{output_prefix}[_{domain}]_{key}_document.{bin,idx}`` and the manifest
    (:func:`megatron_mile.data.manifest.manifest_path`)."""
    tokenizer_type: str
    """One of ``TOKENIZER_TYPES``."""
    tokenizer_model: Optional[str] = None
    """sentencepiece ``.model``, or ``tokenizer.json`` (file or directory) for Hugging Face."""
    vocab_file: Optional[str] = None
    """GPT-2 ``vocab.json``."""
    merge_file: Optional[str] = None
    """GPT-2 ``merges.txt``."""
    vocab_size: Optional[int] = None
    """NullTokenizer's vocabulary size."""
    json_keys: tuple = ("text",)
    """Fields to tokenise; each gets its own dataset(s)."""
    split_by: Optional[str] = None
    """Dotted JSON path (``meta.pile_set_name``): one dataset per distinct value."""
    append_eod: bool = False
    """Append the tokenizer's end-of-document id to every (non-empty) document."""
    workers: int = 1
    """Tokenisation processes; 1 tokenises in the main process."""
    log_interval: int = 10000
    """Print progress every this many documents (0: only at the end)."""
    skip_bad_lines: bool = False
    """Skip and count bad lines instead of stopping at the first one."""
    block_bytes: int = 2**20
    """Bytes of input per unit of work sent to a worker."""
    quiet: bool = False
    """No progress output."""
    allow_empty: bool = False
    """Succeed (with an empty manifest) when the inputs hold no document; else that is an error."""


# ----------------------------------------------------------------------------------------------
# Worker side: one block of lines in, packed token arrays per (key, domain) out.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _WorkerSettings:
    tokenizer: Any
    json_keys: tuple
    split_path: Optional[tuple]
    append_eod: bool
    dtype: type
    skip_bad_lines: bool


_settings: Optional[_WorkerSettings] = None


def _init_worker(settings: _WorkerSettings, in_child: bool = True) -> None:
    global _settings
    _settings = settings
    if in_child:
        # Ctrl-C and termination are the main process's to handle (it cleans up); a worker
        # just dies with the pool.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@dataclasses.dataclass
class BlockResult:
    """What a worker returns for one block (pickled back to the main process)."""

    outputs: dict
    """``(key, domain) -> (tokens, lengths, text_bytes)``; ``domain`` None without split."""
    lines: int = 0
    blank_lines: int = 0
    empty_documents: int = 0
    bad_lines: dict = dataclasses.field(default_factory=dict)
    bad_examples: list = dataclasses.field(default_factory=list)
    """Up to a few ``(line, reason, detail)`` of skipped lines, for the report."""
    error: Optional[tuple] = None
    """``(line, reason, detail)`` of the first bad line when not skipping them."""


class _BadLine(Exception):
    def __init__(self, reason: str, detail: str, lineno: Optional[int] = None) -> None:
        super().__init__(reason, detail, lineno)
        self.reason, self.detail, self.lineno = reason, detail, lineno


def _lookup(obj: dict, path: tuple) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            raise KeyError(part)
        obj = obj[part]
    return obj


_JSON_TYPES = {dict: "object", list: "array", type(None): "null", bool: "boolean", int: "number",
               float: "number", str: "string"}


def _parse_line(raw: bytes, s: _WorkerSettings) -> tuple[list[str], list[int], Optional[str]]:
    """The texts of ``json_keys``, their UTF-8 sizes and the split value of one line, or raise
    ``_BadLine``."""
    try:
        obj = json.loads(raw)
    except ValueError as e:  # includes invalid UTF-8
        raise _BadLine(BAD_JSON, str(e)) from None
    if not isinstance(obj, dict):
        raise _BadLine(NOT_OBJECT, f"a JSON {_JSON_TYPES[type(obj)]}, not an object")
    texts, sizes = [], []
    for key in s.json_keys:
        if key not in obj:
            raise _BadLine(MISSING_KEY, f"no key {key!r}")
        text = obj[key]
        if not isinstance(text, str):
            raise _BadLine(NOT_STRING, f"{key!r} is a JSON {_JSON_TYPES[type(text)]}, not a string")
        try:
            sizes.append(len(text.encode("utf-8")))
        except UnicodeEncodeError as e:  # JSON's "\ud800" escapes decode to lone surrogates
            raise _BadLine(BAD_UNICODE, f"{key!r} holds a lone surrogate "
                           f"{text[e.start]!r} at character {e.start} (not Unicode text)") from None
        texts.append(text)
    domain = None
    if s.split_path is not None:
        try:
            value = _lookup(obj, s.split_path)
        except KeyError:
            raise _BadLine(MISSING_SPLIT, f"no {'.'.join(s.split_path)!r}") from None
        if isinstance(value, (dict, list)) or value is None:
            raise _BadLine(MISSING_SPLIT, f"{'.'.join(s.split_path)!r} is not a string")
        domain = str(value)
    return texts, sizes, domain


def _tokenize_all(texts: list[str], linenos: list[int], s: _WorkerSettings) -> list:
    """Token id lists of ``texts``; a tokenizer failure is pinned to its line."""
    try:
        return s.tokenizer.tokenize_arrays(texts)
    except Exception:  # noqa: BLE001 - find the offending document, then report it
        out = []
        for text, lineno in zip(texts, linenos):
            try:
                out.append(np.asarray(s.tokenizer.tokenize(text), dtype=np.int64))
            except Exception as e:  # noqa: BLE001
                raise _BadLine(TOKENIZER_ERROR, f"{type(e).__name__}: {e}", lineno) from None
        return out


def _pack(ids: list, eod: Optional[int], dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Back-to-back tokens (plus EOD after each) and per-document lengths."""
    extra = 0 if eod is None else 1
    lengths = np.fromiter((a.size + extra for a in ids), dtype=np.int32, count=len(ids))
    tokens = np.empty(int(lengths.sum(dtype=np.int64)), dtype=dtype)
    pos = 0
    for a, n in zip(ids, lengths.tolist()):
        tokens[pos:pos + n - extra] = a  # casts int32/int64 ids to the dataset dtype
        pos += n
        if extra:
            tokens[pos - 1] = eod
    return tokens, lengths


def encode_block(task: tuple) -> BlockResult:
    """Tokenise one block ``(first_line, bytes)`` with the worker's settings."""
    s = _settings
    first_line, block = task
    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()
    result = BlockResult(outputs={}, lines=len(lines))
    per_key_texts: list[list[str]] = [[] for _ in s.json_keys]
    per_key_sizes: list[list[int]] = [[] for _ in s.json_keys]
    linenos: list[int] = []
    domains: list[Optional[str]] = []

    def bad(lineno: int, reason: str, detail: str) -> bool:
        """Record a bad line; True when the block must stop (not skipping)."""
        if not s.skip_bad_lines:
            result.error = (lineno, reason, detail)
            return True
        result.bad_lines[reason] = result.bad_lines.get(reason, 0) + 1
        if len(result.bad_examples) < 5:
            result.bad_examples.append((lineno, reason, detail[:200]))
        return False

    for i, raw in enumerate(lines):
        if not raw.strip():
            result.blank_lines += 1
            continue
        try:
            texts, sizes, domain = _parse_line(raw, s)
        except _BadLine as e:
            if bad(first_line + i, e.reason, e.detail):
                return result
            continue
        for k, (text, size) in enumerate(zip(texts, sizes)):
            per_key_texts[k].append(text)
            per_key_sizes[k].append(size)
        linenos.append(first_line + i)
        domains.append(domain)

    eod = s.tokenizer.eod if s.append_eod else None
    while True:
        try:
            per_key_ids = [_tokenize_all(texts, linenos, s) for texts in per_key_texts]
            break
        except _BadLine as e:
            if bad(e.lineno, e.reason, e.detail):
                return result
            # Drop the document for every key (keys stay aligned) and tokenise again.
            drop = linenos.index(e.lineno)
            for texts, sizes in zip(per_key_texts, per_key_sizes):
                del texts[drop], sizes[drop]
            del linenos[drop], domains[drop]
    for key, ids, sizes in zip(s.json_keys, per_key_ids, per_key_sizes):
        _collect(result, key, ids, sizes, domains, eod, s.dtype)
    return result


def _collect(result: BlockResult, key: str, ids: list, sizes: list[int],
             domains: list, eod: Optional[int], dtype: type) -> None:
    """Group one key's documents by domain (input order kept) and pack them."""
    groups: dict = {}
    for doc, size, domain in zip(ids, sizes, domains):
        if doc.size == 0:  # empty text, or text the tokenizer maps to nothing
            result.empty_documents += 1
            continue
        group = groups.get(domain)
        if group is None:
            group = groups[domain] = ([], [0])
        group[0].append(doc)
        group[1][0] += size
    for domain, (docs, text_bytes) in groups.items():
        tokens, lengths = _pack(docs, eod, dtype)
        result.outputs[(key, domain)] = (tokens, lengths, text_bytes[0])


# ----------------------------------------------------------------------------------------------
# Main process: reading, ordering, writing, progress, stats.
# ----------------------------------------------------------------------------------------------


def safe_name(domain: str) -> str:
    """Filename-safe domain: ``Wikipedia (en)`` -> ``Wikipedia_en``, ``Pile-CC`` unchanged."""
    name = re.sub(r"[^A-Za-z0-9.\-]+", "_", domain).strip("_.")
    return name or "empty"


def dataset_prefix(output_prefix: str, key: str, domain: Optional[str]) -> str:
    if domain is None:
        return f"{output_prefix}_{key}_document"
    return f"{output_prefix}_{safe_name(domain)}_{key}_document"


class _Outputs:
    """The datasets of a run, created (in the staging directory) as their (key, domain) first
    appears."""

    def __init__(self, output_prefix: str, dtype: type, staging: str) -> None:
        self.output_prefix = output_prefix
        self.dtype = dtype
        self.staging = staging
        self.writers: dict = {}
        self.text_bytes: dict = collections.Counter()
        self._names: dict = {}  # safe name -> domain, to catch two domains with one file name

    def writer(self, key: str, domain: Optional[str]) -> IndexedDatasetWriter:
        w = self.writers.get((key, domain))
        if w is None:
            prefix = dataset_prefix(self.output_prefix, key, domain)
            if domain is not None:
                other = self._names.setdefault((key, safe_name(domain)), domain)
                if other != domain:
                    raise ValueError(f"domains {other!r} and {domain!r} map to the same file "
                                     f"name {safe_name(domain)!r}")
            w = self.writers[(key, domain)] = IndexedDatasetWriter(prefix, self.dtype, self.staging)
        return w

    def write(self, result: BlockResult) -> None:
        for (key, domain), (tokens, lengths, text_bytes) in result.outputs.items():
            self.writer(key, domain).add_documents(tokens, lengths)
            self.text_bytes[(key, domain)] += text_bytes

    def finish(self) -> None:
        for w in self.writers.values():
            w.finish()

    def abort(self) -> None:
        """Discard everything written (never raises: the error that got us here matters)."""
        for w in self.writers.values():
            try:
                w.close()
            except OSError:
                pass
        manifest_mod.remove_staging(self.staging)


class _Progress:
    """One stderr line every ``interval`` documents: rates, and ETA when the size is known."""

    def __init__(self, interval: int, total_bytes: int, quiet: bool) -> None:
        self.interval, self.total_bytes, self.quiet = interval, total_bytes, quiet
        self.start = time.perf_counter()
        self.docs = self.tokens = self.text_bytes = 0
        self.next_report = interval if interval > 0 else float("inf")

    def update(self, docs: int, tokens: int, text_bytes: int, read_bytes: int) -> None:
        self.docs += docs
        self.tokens += tokens
        self.text_bytes += text_bytes
        if self.docs >= self.next_report and not self.quiet:
            self.report(read_bytes)
            while self.next_report <= self.docs:
                self.next_report += self.interval

    def report(self, read_bytes: int, final: bool = False) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        line = (f"[mile-preprocess] {self.docs:,} docs | {self.docs / elapsed:,.0f} docs/s | "
                f"{self.tokens / elapsed / 1e6:.2f} M tok/s | "
                f"{self.text_bytes / elapsed / 2**20:.1f} MB/s")
        if self.total_bytes and not final:
            frac = min(read_bytes / self.total_bytes, 1.0)
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
            line += f" | {100 * frac:.0f}% | ETA {_hms(eta)}"
        if final:
            line += f" | done in {_hms(elapsed)}"
        print(line, file=sys.stderr, flush=True)


def _hms(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _tasks(files: list[str], block_bytes: int, read: list) -> Iterator[tuple[int, int, int, bytes]]:
    """``(file_index, raw_bytes_read_so_far, first_line, block)`` over all inputs in order."""
    for file_index, path in enumerate(files):
        for first_line, block in iter_blocks(path, block_bytes, progress=read):
            yield file_index, read[0], first_line, block


def _results(config: PreprocessConfig, settings: _WorkerSettings, tasks: Iterator
             ) -> Iterator[tuple[int, int, int, BlockResult]]:
    """``(file_index, read_bytes, first_line, result)`` in input order."""
    if config.workers <= 1:
        _init_worker(settings, in_child=False)
        for file_index, read, first_line, block in tasks:
            yield file_index, read, first_line, encode_block((first_line, block))
        return
    # fork: workers inherit the imported modules and start in milliseconds. The tokenizer is
    # re-created from its files in each worker (see MileTokenizer.__getstate__).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    pool = ctx.Pool(config.workers, initializer=_init_worker, initargs=(settings,))
    try:
        pending: collections.deque = collections.deque()
        # Bounded read-ahead: enough blocks queued that no worker waits, no more.
        max_in_flight = 2 * config.workers + 1
        for file_index, read, first_line, block in tasks:
            pending.append((file_index, read, first_line,
                            pool.apply_async(encode_block, ((first_line, block),))))
            if len(pending) >= max_in_flight:
                file_index0, read0, first0, res = pending.popleft()
                yield file_index0, read0, first0, res.get()
        while pending:
            file_index0, read0, first0, res = pending.popleft()
            yield file_index0, read0, first0, res.get()
        pool.close()
        pool.join()
    finally:
        pool.terminate()


def preprocess(config: PreprocessConfig) -> dict:
    """Run the tool; returns the manifest it wrote (each dataset entry with its ``prefix``).

    Raises :class:`InputError` (file and line named) on bad input unless ``skip_bad_lines``,
    ``OSError`` (path named) when the output cannot be written, ``ValueError`` on bad settings
    and on inputs without documents (unless ``allow_empty``). Outputs appear under their final
    names only when the whole run succeeds, all together (:func:`manifest.commit`).
    """
    start = time.perf_counter()
    if not os.path.basename(config.output_prefix):
        raise ValueError(f"--output-prefix {config.output_prefix!r}: needs a file name prefix "
                         "after the directory, e.g. DIR/pile")
    files = expand_inputs(list(config.input))
    tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_model,
                                config.vocab_file, config.merge_file, config.vocab_size)
    if config.append_eod and tokenizer.eod is None:
        raise ValueError(f"--append-eod: the {config.tokenizer_type} has no end-of-document "
                         "token")
    dtype = optimal_dtype(tokenizer.vocab_size)
    json_keys = tuple(config.json_keys)
    if len(set(json_keys)) != len(json_keys):
        raise ValueError(f"--json-keys repeats a key: {json_keys}")
    settings = _WorkerSettings(
        tokenizer=tokenizer, json_keys=json_keys,
        split_path=tuple(config.split_by.split(".")) if config.split_by else None,
        append_eod=config.append_eod, dtype=dtype, skip_bad_lines=config.skip_bad_lines,
    )
    out_dir = os.path.dirname(os.path.abspath(config.output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    path = manifest_mod.manifest_path(config.output_prefix)
    staging = manifest_mod.make_staging(out_dir)

    total_in = input_size(files)
    progress = _Progress(config.log_interval, total_in, config.quiet)
    outputs = _Outputs(config.output_prefix, dtype, staging)
    counts = collections.Counter()
    bad_lines: collections.Counter = collections.Counter()
    bad_examples: list = []
    read = [0]
    try:
        for file_index, read_bytes, first_line, result in _results(
                config, settings, _tasks(files, config.block_bytes, read)):
            path_in = files[file_index]
            if result.error is not None:
                lineno, reason, detail = result.error
                raise InputError(path_in, lineno, reason.replace("_", " "), detail)
            outputs.write(result)
            docs = sum(len(v[1]) for (key, _), v in result.outputs.items() if key == json_keys[0])
            tokens = sum(int(v[0].size) for v in result.outputs.values())
            text_bytes = sum(v[2] for v in result.outputs.values())
            counts["lines"] += result.lines
            counts["blank_lines"] += result.blank_lines
            counts["empty_documents"] += result.empty_documents
            bad_lines.update(result.bad_lines)
            for lineno, reason, detail in result.bad_examples:
                if len(bad_examples) < 20:
                    bad_examples.append({"file": path_in, "line": lineno, "reason": reason,
                                         "detail": detail})
            progress.update(docs, tokens, text_bytes, read_bytes)
        if not outputs.writers and not config.allow_empty:
            raise ValueError(f"no documents in {', '.join(files)} ({counts['lines']} lines: "
                             f"{counts['blank_lines']} blank, {counts['empty_documents']} empty "
                             f"documents, {sum(bad_lines.values())} bad); --allow-empty accepts "
                             "that")
        outputs.finish()
        datasets = []
        for (key, domain), w in sorted(outputs.writers.items(),
                                       key=lambda kv: (kv[0][0], kv[0][1] or "")):
            staged = os.path.join(staging, os.path.basename(w.prefix))
            datasets.append({
                "name": os.path.basename(w.prefix), "key": key, "domain": domain,
                "documents": w.documents, "tokens": w.tokens,
                "text_bytes": outputs.text_bytes[(key, domain)],
                **manifest_mod.describe_files(staged),
            })
    except InputError as e:
        outputs.abort()
        if config.skip_bad_lines and "zstd" in e.reason:
            # A corrupt zstd stream cannot be resynchronised: the rest of the file is lost,
            # so even with --skip-bad-lines this is fatal rather than silently truncating.
            raise InputError(e.path, e.line, e.reason,
                             e.detail + " (not skippable: the rest of the file is unreadable)")
        raise
    except BaseException:
        outputs.abort()
        raise

    elapsed = time.perf_counter() - start
    total_tokens = sum(d["tokens"] for d in datasets)
    manifest = {
        "format": manifest_mod.MANIFEST_FORMAT,
        "output_prefix": os.path.basename(config.output_prefix),
        "inputs": [os.path.abspath(f) for f in files],
        "input_bytes": total_in,
        "tokenizer": tokenizer.metadata(),
        "dtype": np.dtype(dtype).name,
        "json_keys": list(json_keys),
        "split_by": config.split_by,
        "append_eod": config.append_eod,
        "workers": config.workers,
        "datasets": datasets,
        "totals": {
            "datasets": len(datasets),
            "documents": sum(d["documents"] for d in datasets),
            "tokens": total_tokens,
            "text_bytes": sum(d["text_bytes"] for d in datasets),
            "lines": counts["lines"],
            "blank_lines": counts["blank_lines"],
            "empty_documents": counts["empty_documents"],
            "bad_lines": dict(sorted(bad_lines.items())),
            "bad_line_examples": bad_examples,
        },
        "seconds": round(elapsed, 3),
        "tokens_per_second": round(total_tokens / elapsed, 1) if elapsed > 0 else None,
    }
    moves = [m for w in outputs.writers.values() for m in w.moves()]
    manifest_mod.commit(moves, _stale_files(config.output_prefix, path, moves), manifest, path,
                        staging)
    for d in datasets:
        d["prefix"] = os.path.join(os.path.dirname(config.output_prefix), d["name"])
    if not config.quiet:
        progress.report(read[0], final=True)
        if sum(bad_lines.values()):
            print(f"[mile-preprocess] skipped bad lines: {dict(bad_lines)} "
                  f"(examples in {path})", file=sys.stderr)
        if counts["blank_lines"] or counts["empty_documents"]:
            print(f"[mile-preprocess] dropped {counts['blank_lines']} blank lines and "
                  f"{counts['empty_documents']} empty documents", file=sys.stderr)
    return manifest


def _stale_files(output_prefix: str, path: str, moves: list) -> list[str]:
    """:func:`manifest.replaced_files`, and the ``{prefix}_stats.json`` (and the datasets it
    lists) that earlier versions of this tool wrote beside the datasets."""
    produced = {os.path.abspath(final) for _, final in moves}
    stale = manifest_mod.replaced_files(path, moves)
    legacy = f"{output_prefix}_stats.json"
    if os.path.isfile(legacy):
        try:
            with open(legacy, encoding="utf-8") as f:
                old = [d["prefix"] for d in json.load(f)["datasets"]]
        except (OSError, ValueError, KeyError, TypeError):
            old = []
        stale += [p + ext for p in old for ext in (".idx", ".bin")
                  if os.path.abspath(p + ext) not in produced]
        stale.append(legacy)
    return stale


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mile-preprocess",
        description="Tokenise jsonl / jsonl.zst into Megatron .bin/.idx datasets "
                    "(optionally one per domain).",
    )
    g = p.add_argument_group("input data")
    g.add_argument("--input", nargs="+", required=True,
                   help="input files or globs (.jsonl, .json, .jsonl.zst)")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="keys to tokenise; each gets its own dataset (default: text)")
    g.add_argument("--split-by", default=None, metavar="DOTTED.PATH",
                   help="one dataset per distinct value of this JSON path, "
                        "e.g. meta.pile_set_name")
    g.add_argument("--skip-bad-lines", action="store_true",
                   help="skip and count malformed lines instead of stopping")
    g.add_argument("--allow-empty", action="store_true",
                   help="succeed when the inputs hold no document (default: an error)")
    g = p.add_argument_group("tokenizer")
    g.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    g.add_argument("--tokenizer-model", default=None,
                   help="sentencepiece .model, or tokenizer.json / its directory")
    g.add_argument("--vocab-file", default=None, help="GPT-2 vocab.json")
    g.add_argument("--merge-file", default=None, help="GPT-2 merges.txt")
    g.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer vocabulary size")
    g.add_argument("--append-eod", action="store_true",
                   help="append the end-of-document token to every document")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True,
                   help="path prefix of the outputs (no suffix)")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=1,
                   help="tokenisation processes (default 1: in the main process)")
    g.add_argument("--log-interval", type=int, default=10000,
                   help="progress line every this many documents")
    g.add_argument("--block-bytes", type=int, default=2**20, help=argparse.SUPPRESS)
    g.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _sigterm_to_exit(signum, frame):  # noqa: ARG001
    # Turn `kill` into an exception so the temporary files are removed on the way out.
    raise SystemExit(128 + signum)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    config = PreprocessConfig(
        input=args.input, output_prefix=args.output_prefix, tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model, vocab_file=args.vocab_file,
        merge_file=args.merge_file, vocab_size=args.vocab_size, json_keys=tuple(args.json_keys),
        split_by=args.split_by, append_eod=args.append_eod, workers=args.workers,
        log_interval=args.log_interval, skip_bad_lines=args.skip_bad_lines,
        block_bytes=args.block_bytes, quiet=args.quiet, allow_empty=args.allow_empty,
    )
    previous = signal.signal(signal.SIGTERM, _sigterm_to_exit)
    try:
        preprocess(config)
    except OSError as e:
        reason = f"{e.filename}: {e.strerror}" if e.filename is not None and e.strerror else e
        print(f"mile-preprocess: error: {reason}", file=sys.stderr)
        return 1
    except (InputError, ValueError, ImportError) as e:
        print(f"mile-preprocess: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mile-preprocess: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
