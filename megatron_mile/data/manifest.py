"""The manifest of a set of indexed datasets, and the staged commit that replaces such a set.

A run of ``mile-preprocess`` (or a per-domain ``mile-merge-datasets``) with output prefix
``DIR/NAME`` writes its datasets ``DIR/NAME[_{domain}]_{key}_document.{bin,idx}`` and one
manifest, ``DIR/mile-manifests/NAME.json``. The manifest sits in a subdirectory so that ``DIR``
holds only ``.bin``/``.idx`` pairs: Megatron-LM's ``tools/merge_datasets.py`` takes every *file*
of its input directory as half of a pair (and skips directories).

The manifest lists each dataset's file name, documents, tokens, the byte sizes of its ``.bin``
and ``.idx`` and the sha256 of its ``.idx``, and the tokenizer (type, vocabulary size, eod, the
absolute path of its file and the sha256 of that file's bytes). Readers (``mile-blend``,
``mile-merge-datasets``, training's data check) refuse a dataset whose files disagree with the
manifest that lists it, naming the file.

Replacing a set (a re-run into an existing prefix) cannot be one rename: the files keep their
names, which training flags name. So everything is written under a private staging directory
``DIR/mile-manifests/staging-<pid>-*`` and then moved, dataset after dataset, the manifest last
(:func:`commit`). A kill in between leaves the previous manifest, which then disagrees with the
files already moved, so readers refuse the set until a run completes: what they read is the old
set or the new set, never a mix. SIGTERM and SIGINT are held back while the renames run (a
``kill`` completes the commit, then exits). A ``kill -9`` leaves the staging directory, which the
next run into ``DIR`` removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
from typing import Optional

MANIFEST_DIR = "mile-manifests"
MANIFEST_FORMAT = "mile-manifest/1"
STAGING = "staging-"
# Test hook (deterministic fault injection): "K:SIGNAME" sends SIGNAME to this process just
# before the K-th step (1-based) of :func:`commit`.
FAULT_ENV = "MILE_TEST_SIGNAL_BEFORE_COMMIT_STEP"


class ManifestError(ValueError):
    """Datasets and their manifest disagree (or a manifest cannot be read); names the file."""


def manifest_dir(data_dir: str) -> str:
    return os.path.join(data_dir, MANIFEST_DIR)


def manifest_path(output_prefix: str) -> str:
    """``DIR/mile-manifests/NAME.json`` for the output prefix ``DIR/NAME``."""
    data_dir, name = os.path.split(output_prefix)
    return os.path.join(manifest_dir(data_dir), name + ".json")


def data_dir_of(path: str) -> str:
    """The directory holding the datasets of the manifest at ``path``."""
    return os.path.dirname(os.path.dirname(path))


def sha256_files(paths: list[str], chunk: int = 1 << 22) -> str:
    """sha256 of the bytes of ``paths``, one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def describe_files(prefix: str) -> dict:
    """Sizes of ``prefix.{bin,idx}`` and the sha256 of the ``.idx`` (what a manifest records)."""
    return {"bin_bytes": os.path.getsize(prefix + ".bin"),
            "idx_bytes": os.path.getsize(prefix + ".idx"),
            "idx_sha256": sha256_files([prefix + ".idx"])}


def verify_dataset(prefix: str, entry: dict, path: str) -> None:
    """Raise :class:`ManifestError` unless ``prefix``'s files are those the manifest ``path``
    describes in ``entry``."""
    for ext, key in ((".bin", "bin_bytes"), (".idx", "idx_bytes")):
        name = prefix + ext
        if not os.path.isfile(name):
            raise ManifestError(f"{name}: missing, but listed in {path} (an interrupted "
                                "re-run? run mile-preprocess again)")
        if os.path.getsize(name) != entry[key]:
            raise ManifestError(f"{name}: {os.path.getsize(name)} bytes, {path} says {entry[key]} "
                                "(replaced or interrupted; run mile-preprocess again)")
    if sha256_files([prefix + ".idx"]) != entry["idx_sha256"]:
        raise ManifestError(f"{prefix}.idx: its checksum differs from {path} (replaced or "
                            "interrupted; run mile-preprocess again)")


def load_manifest(path: str, verify: bool = True) -> dict:
    """The manifest at ``path``; each dataset entry gains ``prefix`` (its path, relative to where
    the manifest is). With ``verify`` every dataset's files are checked against it."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except ValueError as e:
        raise ManifestError(f"{path}: not a manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: not a {MANIFEST_FORMAT} manifest (written by an older "
                            "mile-preprocess? run it again)")
    data_dir = data_dir_of(path)
    for entry in manifest["datasets"]:
        entry["prefix"] = os.path.join(data_dir, entry["name"])
        if verify:
            verify_dataset(entry["prefix"], entry, path)
    return manifest


def find_manifest(prefix: str) -> Optional[tuple[str, dict, dict]]:
    """``(manifest path, manifest, dataset entry)`` of the manifest beside ``prefix`` that lists
    it and that its files agree with; None when no manifest lists it.

    Raises :class:`ManifestError` when manifests list it but its files agree with none."""
    data_dir, name = os.path.split(prefix)
    directory = manifest_dir(data_dir)
    if not os.path.isdir(directory):
        return None
    error = None
    for file_name in sorted(os.listdir(directory)):
        path = os.path.join(directory, file_name)
        if not file_name.endswith(".json") or not os.path.isfile(path):
            continue
        try:
            manifest = load_manifest(path, verify=False)
        except ManifestError:
            continue  # another tool's file, or an older format: it does not describe prefix
        for entry in manifest["datasets"]:
            if entry["name"] == name:
                try:
                    verify_dataset(prefix, entry, path)
                except ManifestError as e:
                    error = e
                    continue
                return path, manifest, entry
    if error is not None:
        raise error
    return None


def replaced_files(path: str, moves: list[tuple[str, str]]) -> list[str]:
    """Files of datasets that the manifest at ``path`` lists and that ``moves`` do not replace
    (a domain an earlier run had and this one has not): left in place they would outlive their
    manifest and could end up in a blend."""
    try:
        previous = [d["prefix"] for d in load_manifest(path, verify=False)["datasets"]]
    except (OSError, ValueError, KeyError, TypeError):  # absent, or not a manifest
        return []
    produced = {os.path.abspath(final) for _, final in moves}
    return [p + ext for p in previous for ext in (".idx", ".bin")
            if os.path.abspath(p + ext) not in produced]


# ----------------------------------------------------------------------------------------------
# Writing: staging directory and the commit.
# ----------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_staging(data_dir: str) -> None:
    """Remove staging directories left by killed runs (their process no longer exists)."""
    directory = manifest_dir(data_dir)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            pid = name[len(STAGING):].split("-")[0]
            if name.startswith(STAGING) and pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def make_staging(data_dir: str) -> str:
    """A fresh private directory for this process's temporary files, on the same file system as
    ``data_dir`` (so that moving a file out of it is one atomic rename)."""
    remove_dead_staging(data_dir)
    os.makedirs(manifest_dir(data_dir), exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{STAGING}{os.getpid()}-", dir=manifest_dir(data_dir))


def remove_staging(staging: str) -> None:
    """Delete a staging directory, and the manifest directory if that leaves it empty."""
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(staging))


def _fault_hook() -> Optional[tuple[int, int]]:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    step, name = spec.split(":")
    return int(step), int(getattr(signal, name))


@contextlib.contextmanager
def _signals_held():
    """SIGTERM/SIGINT arriving inside are recorded and raised again on exit (when called from
    the main thread, where Python runs signal handlers; a blocked mask would not do: another
    thread, e.g. a BLAS pool, takes a process-directed signal)."""
    received: list = []
    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in received:
            signal.raise_signal(signum)


def commit(moves: list[tuple[str, str]], removals: list[str], manifest: Optional[dict],
           path: str, staging: str) -> None:
    """Move staged files to their final names, delete ``removals``, then write the manifest
    ``path`` (one rename, the last step; with ``manifest`` None, delete any manifest there).

    ``moves`` are ``(staged, final)`` pairs in order; an ``.idx`` must come after its ``.bin``
    (an old ``.idx`` is deleted before its new ``.bin`` arrives, so the old ``.idx`` never
    stands beside the new ``.bin``)."""
    staged_manifest = os.path.join(staging, os.path.basename(path))
    if manifest is not None:
        with open(staged_manifest, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
    steps: list = []
    for staged, final in moves:
        if final.endswith(".bin"):
            steps.append((os.remove, (final[:-4] + ".idx",)))
        steps.append((os.replace, (staged, final)))
    steps += [(os.remove, (p,)) for p in removals]
    if manifest is not None:
        steps.append((os.replace, (staged_manifest, path)))
    else:
        steps.append((os.remove, (path,)))
    fault = _fault_hook()
    with _signals_held():
        for number, (step, step_args) in enumerate(steps, 1):
            if fault is not None and fault[0] == number:
                os.kill(os.getpid(), fault[1])
            try:
                step(*step_args)
            except FileNotFoundError:
                if step is not os.remove:
                    raise
        remove_staging(staging)
