"""A real-English jsonl corpus built from the standard library and the project's required
dependencies; no downloads.

Tests, the CPU demo and the preprocessing benchmark need real text (tokenizer speed and token
statistics on synthetic text are not representative), and the machines they run on have no
internet. Every Python installation carries several megabytes of English prose and code, so we
collect it into Pile-style documents, one pseudo-domain per source:

================================  ===========================================================
``pile_set_name``                 source
================================  ===========================================================
``Python Docs``                   CPython's ``pydoc_data.topics`` (language reference prose)
``Docstrings (stdlib)``           ``inspect.getdoc`` of stdlib modules, classes and functions
``Docstrings (packages)``         the same over numpy (and torch for large corpora)
``Package Metadata``              long descriptions (READMEs) of :data:`REQUIRED_DISTRIBUTIONS`
``Licenses``                      LICENSE / COPYING files of :data:`REQUIRED_DISTRIBUTIONS`
``Python Code``                   stdlib ``.py`` sources (and, for large corpora, those of
                                  :data:`REQUIRED_DISTRIBUTIONS`)
================================  ===========================================================

Only these sources are read, never "whatever else is installed" (extras, other projects), so the
same Python and dependency versions give the same bytes (:func:`source_versions` lists them;
``CorpusStats.versions`` records them). Output lines are ``{"text": ..., "meta": {"pile_set_name":
...}}`` like the Pile's. When the requested size exceeds the unique text, documents are repeated in
freshly shuffled epochs and the stats say so (``epochs`` > 1, ``unique_bytes`` < ``bytes``). Output
is deterministic for a given ``(seed, min_bytes)`` and those versions.

CLI: ``python -m megatron_mile.data.corpus --output corpus.jsonl[.zst] --min-mb 64``
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.metadata
import inspect
import io
import json
import os
import random
import sys
import sysconfig
import time
import warnings
from typing import Callable, Iterator

# Split long texts into documents of at most this many characters, at paragraph boundaries.
# The Pile's median document is a few KB; very long single documents would make the
# per-document statistics of small corpora meaningless.
MAX_DOC_CHARS = 32_000
MIN_DOC_CHARS = 200

# Stdlib modules that open windows, browsers, print on import or are test suites.
_STDLIB_SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "test",
    "ensurepip", "venv", "webbrowser", "pydoc", "xxsubtype", "xxlimited", "msilib", "winreg",
    "winsound", "msvcrt", "nt", "_winapi", "readline",
    # setuptools' distutils-precedence.pth swaps in its own copy: the text would depend on setuptools.
    "distutils",
}


@dataclasses.dataclass
class Document:
    domain: str
    text: str


@dataclasses.dataclass
class CorpusStats:
    """What :func:`write_text_corpus` wrote."""

    path: str
    """The jsonl (or jsonl.zst) file written."""
    documents: int = 0
    """Lines written (repeated documents counted each time)."""
    bytes: int = 0
    """UTF-8 bytes of jsonl written (before compression)."""
    text_bytes: int = 0
    """UTF-8 bytes of document text written."""
    unique_documents: int = 0
    """Distinct documents available from the installed sources."""
    unique_bytes: int = 0
    """UTF-8 bytes of text in the distinct documents."""
    epochs: int = 1
    """Shuffled passes over the distinct documents (> 1 means documents were repeated)."""
    repeated: bool = False
    """True when some documents appear more than once."""
    domains: dict = dataclasses.field(default_factory=dict)
    """Per ``pile_set_name``: ``{"documents": n, "text_bytes": b}`` as written."""
    sources: list = dataclasses.field(default_factory=list)
    """Source collectors used, in order."""
    versions: dict = dataclasses.field(default_factory=dict)
    """Python and the distributions the text came from (:func:`source_versions`)."""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Sources. Each yields Documents in a deterministic order.
# ----------------------------------------------------------------------------------------------


def _chunk(text: str, max_chars: int = MAX_DOC_CHARS) -> Iterator[str]:
    """Split ``text`` at blank lines into pieces of at most ~``max_chars`` characters."""
    text = text.strip()
    if len(text) <= max_chars:
        if len(text) >= MIN_DOC_CHARS:
            yield text
        return
    piece: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        if size + len(para) > max_chars and piece:
            yield "\n\n".join(piece)
            piece, size = [], 0
        # A single paragraph longer than max_chars is cut hard; rare (long code listings).
        while len(para) > max_chars:
            yield para[:max_chars]
            para = para[max_chars:]
        piece.append(para)
        size += len(para) + 2
    if piece and size >= MIN_DOC_CHARS:
        yield "\n\n".join(piece)


def _python_docs() -> Iterator[Document]:
    from pydoc_data import topics

    for name in sorted(topics.topics):
        for text in _chunk(topics.topics[name]):
            yield Document("Python Docs", text)


def _docstrings_of_module(module, seen: set[str]) -> str:
    """Module docstring plus those of its public functions, classes and their methods."""
    # Touching deprecated attributes (torch.distributed.reduce_op, ...) warns; not our business.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _collect_docstrings(module, seen)


def _collect_docstrings(module, seen: set[str]) -> str:
    parts = []
    doc = inspect.getdoc(module)
    if doc:
        parts.append(f"{module.__name__}\n\n{doc}")
    # Sorted by name: some modules fill their namespace from sets (numpy.matlib), so definition
    # order is not stable from one interpreter to the next.
    for name, obj in sorted(vars(module).items(), key=lambda kv: kv[0]):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        members = [(name, obj)]
        if inspect.isclass(obj):
            members += [
                (f"{name}.{m}", v)
                for m, v in sorted(vars(obj).items(), key=lambda kv: kv[0])
                if not m.startswith("_") and (inspect.isroutine(v) or isinstance(v, property))
            ]
        for qualname, member in members:
            with contextlib.suppress(Exception):
                doc = inspect.getdoc(member)
                # Inherited docstrings repeat verbatim; keep the first occurrence only.
                if doc and len(doc) > 40:
                    digest = hashlib.sha1(doc.encode("utf-8", "replace")).hexdigest()
                    if digest not in seen:
                        seen.add(digest)
                        parts.append(f"{module.__name__}.{qualname}\n\n{doc}")
    return "\n\n".join(parts)


def _quiet_import(name: str):
    # Some modules warn or print on import; none of that belongs in a test's output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - SystemExit/ImportError/anything from a module
            return None


def _stdlib_docstrings() -> Iterator[Document]:
    seen: set[str] = set()
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in _STDLIB_SKIP:
            continue
        module = _quiet_import(name)
        if module is None:
            continue
        for text in _chunk(_docstrings_of_module(module, seen)):
            yield Document("Docstrings (stdlib)", text)


def _public_submodules(root: str) -> list[str]:
    """``root`` and its public submodules, recursively, in sorted order (``root=`` prefix: only
    the module itself).

    Walked and imported explicitly rather than read from ``sys.modules``, so the corpus does not
    depend on what the calling process happened to import before.
    """
    import pkgutil

    recursive = not root.startswith("=")
    root = root.lstrip("=")
    pkg = _quiet_import(root)
    if pkg is None:
        return []
    names = [root]
    if not recursive:
        return names
    for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), root + ".",
                                      onerror=lambda name: None):
        parts = info.name.split(".")
        if any(p.startswith("_") or p in ("test", "tests", "testing", "conftest") for p in parts):
            continue
        names.append(info.name)
    return sorted(names)


def _package_docstrings(roots: tuple[str, ...]) -> Callable[[], Iterator[Document]]:
    def collect() -> Iterator[Document]:
        seen: set[str] = set()
        for root in roots:
            for name in _public_submodules(root):
                module = _quiet_import(name)
                if module is None:
                    continue
                for text in _chunk(_docstrings_of_module(module, seen)):
                    yield Document("Docstrings (packages)", text)

    return collect


# The project's required dependencies (setup.py's install_requires; a test keeps the two equal):
# every installation of megatron-mile has them, whatever extras or other projects it has too.
REQUIRED_DISTRIBUTIONS = ("megatron-core", "numpy", "psutil", "sentencepiece", "torch", "zstandard")


def _distributions() -> list:
    """The installed :data:`REQUIRED_DISTRIBUTIONS`, in that (sorted) order."""
    dists = []
    for name in REQUIRED_DISTRIBUTIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            dists.append(importlib.metadata.distribution(name))
    return dists


def source_versions() -> dict:
    """``{"python": ..., <distribution>: <version>}`` of everything the corpus is read from."""
    import platform

    versions = {"python": platform.python_version()}
    versions.update({dist.metadata["Name"].lower(): dist.version for dist in _distributions()})
    return versions


def _package_metadata() -> Iterator[Document]:
    for dist in _distributions():
        meta = dist.metadata
        body = meta.get_payload() or meta.get("Description") or ""
        if isinstance(body, str):
            for text in _chunk(body):
                yield Document("Package Metadata", text)


def _licenses() -> Iterator[Document]:
    seen: set[str] = set()
    for dist in _distributions():
        for f in sorted(dist.files or [], key=str):
            upper = f.name.upper()
            if not ("LICENSE" in upper or "LICENCE" in upper or "COPYING" in upper):
                continue
            with contextlib.suppress(Exception):
                text = f.read_text(encoding="utf-8")
                digest = hashlib.sha1(text.encode()).hexdigest()
                if digest in seen:  # Apache-2.0 and MIT texts are everywhere
                    continue
                seen.add(digest)
                for piece in _chunk(text):
                    yield Document("Licenses", piece)


def _python_files(root: str, skip_dirs: tuple[str, ...]) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def _code(roots: Callable[[], list[str]], skip_dirs: tuple[str, ...]) -> Callable[[], Iterator[Document]]:
    def collect() -> Iterator[Document]:
        for root in roots():
            for path in _python_files(root, skip_dirs):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    with open(path, encoding="utf-8") as f:
                        source = f.read()
                    for text in _chunk(source):
                        yield Document("Python Code", text)

    return collect


def _stdlib_root() -> list[str]:
    return [sysconfig.get_paths()["stdlib"]]


_SITE_CODE_SKIP = ("test", "tests", "testing", "__pycache__", "_vendor", "vendored")


def _dependency_code() -> Iterator[Document]:
    """``.py`` files of :data:`REQUIRED_DISTRIBUTIONS` (their installed file lists), sorted."""
    for dist in _distributions():
        files = sorted(str(f) for f in dist.files or [] if str(f).endswith(".py"))
        for name in files:
            if any(part in _SITE_CODE_SKIP or part.startswith(".") for part in name.split("/")[:-1]):
                continue
            with contextlib.suppress(OSError, UnicodeDecodeError):
                with open(dist.locate_file(name), encoding="utf-8") as f:
                    source = f.read()
                for text in _chunk(source):
                    yield Document("Python Code", text)


_STDLIB_CODE_SKIP = ("site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
                     "lib2to3", "__pycache__", "ensurepip")

# (name, collector, approximate cost class). Cheap sources are always collected; the expensive
# ones (importing torch, reading the dependencies' code) only when the cheap ones are not enough unique
# text for the requested size, so that a small test corpus takes a second or two.
_CHEAP_SOURCES: list[tuple[str, Callable[[], Iterator[Document]]]] = [
    ("pydoc_data.topics", _python_docs),
    ("stdlib docstrings", _stdlib_docstrings),
    ("numpy docstrings", _package_docstrings(("numpy",))),
    ("distribution metadata", _package_metadata),
    ("distribution licenses", _licenses),
    ("stdlib code", _code(_stdlib_root, _STDLIB_CODE_SKIP)),
]
_LARGE_SOURCES: list[tuple[str, Callable[[], Iterator[Document]]]] = [
    # torch itself (its top-level functions) and the documented user-facing packages; not all of
    # torch's submodules (some need optional dependencies, some take long to import).
    ("torch docstrings", _package_docstrings(("=torch", "torch.nn", "torch.optim",
                                              "torch.distributions", "torch.autograd"))),
    ("dependency code", _dependency_code),
]


def collect_documents(min_bytes: int = 0, include_large: bool | None = None) -> tuple[list[Document], list[str]]:
    """Distinct documents from the installed sources, deterministic order.

    ``include_large=None`` adds the large sources only when the cheap ones give less than
    ``min_bytes`` of text; the dependencies' code is then capped at half the requested size so
    prose stays a large share of the corpus.
    """
    docs: list[Document] = []
    used: list[str] = []
    seen: set[str] = set()
    total = 0

    def add(source_docs: Iterator[Document], budget: float = float("inf")) -> None:
        nonlocal total
        taken = 0
        for doc in source_docs:
            digest = hashlib.sha1(doc.text.encode("utf-8", "replace")).digest()
            if digest in seen:
                continue
            seen.add(digest)
            size = len(doc.text.encode("utf-8", "replace"))
            docs.append(doc)
            total += size
            taken += size
            if taken >= budget:
                return

    for name, collect in _CHEAP_SOURCES:
        add(collect())
        used.append(name)
    if include_large or (include_large is None and total < min_bytes):
        for name, collect in _LARGE_SOURCES:
            budget = max(min_bytes - total, 0) if name == "dependency code" else float("inf")
            if budget <= 0:
                break
            add(collect(), budget=budget)
            used.append(name)
    return docs, used


def _open_output(path: str, compress: bool):
    if compress:
        import zstandard

        raw = open(path, "wb")
        return zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(raw, closefd=True)
    return open(path, "wb")


def write_text_corpus(path: str, min_bytes: int = 4 * 2**20, seed: int = 0,
                      isolated: bool = True) -> CorpusStats:
    """Write a Pile-style jsonl (``.jsonl`` or ``.jsonl.zst``) of at least ``min_bytes``.

    Returns :class:`CorpusStats`; ``stats.repeated`` tells whether documents had to be repeated
    to reach the size. The file is written under a temporary name and renamed when complete.

    ``isolated`` collects the text in a fresh interpreter: imported libraries patch each other
    (torch wraps ``inspect`` functions, for one), so docstrings seen from a process that has
    already imported things differ, and the corpus would depend on the caller's history.
    """
    if isolated:
        return _write_in_subprocess(path, min_bytes, seed)
    start = time.perf_counter()
    docs, used = collect_documents(min_bytes)
    if not docs:
        raise RuntimeError("no text found in the installed packages")
    stats = CorpusStats(path=path, sources=used, unique_documents=len(docs), versions=source_versions())
    stats.unique_bytes = sum(len(d.text.encode("utf-8", "replace")) for d in docs)

    rng = random.Random(seed)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with _open_output(tmp, compress=path.endswith(".zst")) as out:
            epoch = 0
            while stats.bytes < min_bytes or epoch == 0:
                epoch += 1
                order = list(range(len(docs)))
                rng.shuffle(order)
                for i in order:
                    doc = docs[i]
                    line = json.dumps({"text": doc.text, "meta": {"pile_set_name": doc.domain}},
                                      ensure_ascii=False) + "\n"
                    data = line.encode("utf-8", "replace")
                    out.write(data)
                    stats.documents += 1
                    stats.bytes += len(data)
                    text_bytes = len(doc.text.encode("utf-8", "replace"))
                    stats.text_bytes += text_bytes
                    dom = stats.domains.setdefault(doc.domain, {"documents": 0, "text_bytes": 0})
                    dom["documents"] += 1
                    dom["text_bytes"] += text_bytes
                    if stats.bytes >= min_bytes and min_bytes > 0:
                        break
            stats.epochs = epoch
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    stats.repeated = stats.documents > stats.unique_documents
    stats.seconds = round(time.perf_counter() - start, 3)
    return stats


def _write_in_subprocess(path: str, min_bytes: int, seed: int) -> CorpusStats:
    import subprocess

    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_mile.data.corpus", "--output", path,
         "--min-bytes", str(min_bytes), "--seed", str(seed)],
        capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"corpus generation failed:\n{proc.stderr[-4000:]}")
    return CorpusStats(**json.loads(proc.stdout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="output .jsonl or .jsonl.zst")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--min-mb", type=float, default=4.0, help="minimum size in MiB of jsonl")
    size.add_argument("--min-bytes", type=int, default=None, help="minimum size in bytes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    min_bytes = args.min_bytes if args.min_bytes is not None else int(args.min_mb * 2**20)
    # A fresh interpreter when run as a program: collect here. Called as a function from a
    # test or script, main() still isolates (see write_text_corpus).
    isolated = __name__ != "__main__"
    stats = write_text_corpus(args.output, min_bytes=min_bytes, seed=args.seed, isolated=isolated)
    print(json.dumps(stats.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
