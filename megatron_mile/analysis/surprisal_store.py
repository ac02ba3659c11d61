"""On-disk store of per-token surprisal and entropy for many checkpoints of many runs.

The evaluated tokens are fixed once (which sequences, which positions), so each checkpoint adds
only its numbers: one ``[2, N]`` array (row 0 surprisal ``-log2 p(token | context)``, row 1 the
entropy of the predicted distribution, both in bits), float16 by default (3 significant digits,
ample for surprisal of 0-20 bits; the last bit of float16 at 16 bits is 0.016). Layout::

    <store>/manifest.json             what was evaluated, the runs, their checkpoints
    <store>/tokens.npy                int32 [N]  the evaluated (target) token ids
    <store>/positions.npy             int32 [N]  context length before each target (1..seq_length)
    <store>/window.npy                int32 [N]  the window (sequence) each target comes from
    <store>/windows.npy               int64 [W, 2] (dataset index, first token's offset in it)
    <store>/runs/<run>/iter_0000100.npy   float16/32 [2, N]

Every file is written under a temporary name and renamed; the manifest is updated under a lock
(``manifest.lock``), so several evaluations (one per run) can fill one store at the same time.

All checkpoints of a run must be the same model (same architecture and vocabulary, see
:data:`MODEL_SIGNATURE_KEYS`); every run of a store must share the tokenizer's vocabulary, since
they are compared token by token.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from megatron_mile.analysis._io import save_npy, write_json

__all__ = [
    "MODEL_SIGNATURE_KEYS",
    "ModelMismatchError",
    "RunSurprisal",
    "SurprisalStore",
    "model_signature",
]

FORMAT = "megatron-mile-surprisal"
VERSION = 1
MANIFEST = "manifest.json"

# Training flags that define the model a checkpoint holds; two checkpoints of one run must agree on
# all of them. Flags that only change training (lr, loss, seed...) are deliberately absent.
MODEL_SIGNATURE_KEYS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
    "kv_channels", "max_position_embeddings", "position_embedding_type", "normalization", "swiglu",
    "untie_embeddings_and_output_weights", "padded_vocab_size", "tokenizer_type", "tokenizer_model",
    "vocab_file", "vocab_size",
)
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class ModelMismatchError(ValueError):
    """Checkpoints that cannot be compared: different models within a run, or different vocabularies."""


def model_signature(args, tokenizer_vocab_size: Optional[int] = None) -> dict:
    """The subset of a checkpoint's training flags (``argparse.Namespace`` or dict) that defines
    the model (:data:`MODEL_SIGNATURE_KEYS`), plus the tokenizer's vocabulary size if given."""
    flags = args if isinstance(args, dict) else vars(args)
    signature = {k: flags[k] for k in MODEL_SIGNATURE_KEYS if k in flags}
    if tokenizer_vocab_size is not None:
        signature["tokenizer_vocab_size"] = int(tokenizer_vocab_size)
    return signature


def _signature_diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive advisory lock on ``path`` (POSIX; a no-op where fcntl is missing)."""
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class RunSurprisal:
    """The surprisal of one run's checkpoints, ready for learning-curve analysis."""

    run: str
    steps: np.ndarray
    """``[C]`` training iterations of the checkpoints, ascending."""
    surprisal: np.ndarray
    """``[C, N]`` float32 bits."""
    entropy: np.ndarray
    """``[C, N]`` float32 bits."""
    info: dict
    """The run's manifest entry (model signature, loss, seed, checkpoint dir)."""


class SurprisalStore:
    """A directory written by the checkpoint evaluation (see the module docstring)."""

    def __init__(self, root: str):
        self.root = root
        path = os.path.join(root, MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{root}: not a surprisal store (no {MANIFEST})")
        self.manifest = self._read_manifest()
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} manifest")

    # ---- creation
    @classmethod
    def create(cls, root: str, tokens: np.ndarray, positions: np.ndarray, window: np.ndarray,
               windows: np.ndarray, datasets: Sequence[dict], vocab_size: int, seq_length: int,
               dtype: str = "float16", extra: Optional[dict] = None) -> "SurprisalStore":
        """Write the evaluated tokens once and an empty manifest. ``datasets``: one dict per dataset
        (at least ``label`` and ``prefix``); ``windows[:, 0]`` indexes it."""
        tokens = np.asarray(tokens, np.int32)
        n = tokens.size
        for name, arr in (("positions", positions), ("window", window)):
            if np.asarray(arr).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {np.asarray(arr).shape}")
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {dtype}")
        if n and int(tokens.max()) >= vocab_size:
            raise ModelMismatchError(f"token id {int(tokens.max())} >= vocabulary size {vocab_size}")
        os.makedirs(os.path.join(root, "runs"), exist_ok=True)
        save_npy(os.path.join(root, "tokens.npy"), tokens)
        save_npy(os.path.join(root, "positions.npy"), np.asarray(positions, np.int32))
        save_npy(os.path.join(root, "window.npy"), np.asarray(window, np.int32))
        save_npy(os.path.join(root, "windows.npy"), np.asarray(windows, np.int64).reshape(-1, 2))
        manifest = {
            "format": FORMAT, "version": VERSION, "num_tokens": int(n), "num_windows": int(len(windows)),
            "vocab_size": int(vocab_size), "seq_length": int(seq_length), "dtype": dtype,
            "datasets": list(datasets), "runs": {}, **(extra or {}),
        }
        with _locked(os.path.join(root, "manifest.lock")):
            write_json(os.path.join(root, MANIFEST), manifest)
        return cls(root)

    # ---- reading
    def _read_manifest(self) -> dict:
        with open(os.path.join(self.root, MANIFEST), encoding="utf-8") as f:
            return json.load(f)

    def _array(self, name: str) -> np.ndarray:
        return np.load(os.path.join(self.root, name + ".npy"), mmap_mode="r", allow_pickle=False)

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def tokens(self) -> np.ndarray:
        return self._array("tokens")

    @property
    def positions(self) -> np.ndarray:
        return self._array("positions")

    @property
    def dataset_of_token(self) -> np.ndarray:
        """``[N]`` index into :attr:`dataset_labels` of each evaluated token."""
        windows = self._array("windows")
        return np.asarray(windows[:, 0])[np.asarray(self._array("window"))]

    @property
    def dataset_labels(self) -> List[str]:
        return [d["label"] for d in self.manifest["datasets"]]

    def runs(self) -> List[str]:
        return list(self.manifest["runs"])

    def iterations(self, run: str) -> List[int]:
        return sorted(c["iteration"] for c in self._run_entry(run)["checkpoints"])

    def _run_entry(self, run: str) -> dict:
        runs = self.manifest["runs"]
        if run not in runs:
            raise KeyError(f"run {run!r} not in {self.root} (runs: {', '.join(runs) or 'none'})")
        return runs[run]

    def checkpoint_array(self, run: str, iteration: int) -> np.ndarray:
        """``[2, N]`` (surprisal, entropy) in bits of one checkpoint, as stored (memory-mapped)."""
        for c in self._run_entry(run)["checkpoints"]:
            if c["iteration"] == iteration:
                return np.load(os.path.join(self.root, c["file"]), mmap_mode="r", allow_pickle=False)
        raise KeyError(f"run {run!r} has no checkpoint at iteration {iteration} (has {self.iterations(run)})")

    def load_run(self, run: str, iterations: Optional[Sequence[int]] = None) -> RunSurprisal:
        """All (or the given) checkpoints of ``run`` as ``[C, N]`` float32 arrays."""
        its = sorted(iterations) if iterations is not None else self.iterations(run)
        if not its:
            raise ValueError(f"run {run!r} has no evaluated checkpoints")
        surprisal = np.empty((len(its), self.num_tokens), np.float32)
        entropy = np.empty_like(surprisal)
        for i, it in enumerate(its):
            arr = self.checkpoint_array(run, it)
            surprisal[i], entropy[i] = arr[0], arr[1]
        return RunSurprisal(run=run, steps=np.asarray(its, np.int64), surprisal=surprisal, entropy=entropy,
                            info={k: v for k, v in self._run_entry(run).items() if k != "checkpoints"})

    # ---- writing
    def check_model(self, run: str, signature: dict) -> None:
        """Raise :class:`ModelMismatchError` if a checkpoint with ``signature`` cannot join ``run``
        (a different model than its earlier checkpoints) or this store (another vocabulary)."""
        manifest = self._read_manifest()
        entry = manifest["runs"].get(run)
        if entry is not None and entry["model"] != signature:
            raise ModelMismatchError(
                f"run {run!r}: checkpoint is a different model from the run's earlier checkpoints "
                f"({_signature_diff(entry['model'], signature)}); give it another run name")
        vocab = signature.get("tokenizer_vocab_size")
        if vocab is not None and vocab != manifest["vocab_size"]:
            raise ModelMismatchError(
                f"run {run!r}: the model's tokenizer has {vocab} tokens, the evaluation data was "
                f"prepared for a vocabulary of {manifest['vocab_size']}")
        padded = signature.get("padded_vocab_size")
        if padded is not None and padded < manifest["vocab_size"]:
            raise ModelMismatchError(
                f"run {run!r}: the model's output vocabulary ({padded}) is smaller than the "
                f"evaluation data's vocabulary ({manifest['vocab_size']})")
        for other, e in manifest["runs"].items():
            # Paths may differ between runs (relative to another directory); the vocabulary may not.
            for key in ("tokenizer_type", "tokenizer_vocab_size"):
                if other != run and key in e["model"] and key in signature and e["model"][key] != signature[key]:
                    raise ModelMismatchError(
                        f"run {run!r} and run {other!r} use different tokenizers ({key}: "
                        f"{signature[key]!r} vs {e['model'][key]!r}); their surprisals are not comparable")

    def add_checkpoint(self, run: str, iteration: int, surprisal_bits: np.ndarray, entropy_bits: np.ndarray,
                       signature: dict, run_info: Optional[dict] = None) -> str:
        """Store one checkpoint's ``[N]`` surprisal and entropy (bits); returns the file written."""
        if not _RUN_NAME.match(run):
            raise ValueError(f"run name {run!r}: use letters, digits and _ . + -")
        n = self.num_tokens
        surprisal_bits, entropy_bits = np.asarray(surprisal_bits), np.asarray(entropy_bits)
        if surprisal_bits.shape != (n,) or entropy_bits.shape != (n,):
            raise ValueError(f"expected arrays of shape ({n},), got {surprisal_bits.shape} / {entropy_bits.shape}")
        for name, arr in (("surprisal", surprisal_bits), ("entropy", entropy_bits)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"run {run!r} iteration {iteration}: non-finite {name} "
                                 f"({int((~np.isfinite(arr)).sum())} tokens); the checkpoint is broken")
        self.check_model(run, signature)
        rel = os.path.join("runs", run, f"iter_{int(iteration):07d}.npy")
        os.makedirs(os.path.join(self.root, "runs", run), exist_ok=True)
        save_npy(os.path.join(self.root, rel),
                 np.stack([surprisal_bits, entropy_bits]).astype(self.manifest["dtype"]))
        with _locked(os.path.join(self.root, "manifest.lock")):
            manifest = self._read_manifest()
            entry = manifest["runs"].setdefault(run, {"model": signature, "checkpoints": []})
            if entry["model"] != signature:  # another process added a different model meanwhile
                raise ModelMismatchError(f"run {run!r}: {_signature_diff(entry['model'], signature)}")
            entry.update(run_info or {})
            entry["checkpoints"] = [c for c in entry["checkpoints"] if c["iteration"] != int(iteration)]
            entry["checkpoints"].append({
                "iteration": int(iteration), "file": rel,
                "mean_surprisal_bits": float(np.mean(surprisal_bits, dtype=np.float64)),
                "mean_entropy_bits": float(np.mean(entropy_bits, dtype=np.float64)),
            })
            entry["checkpoints"].sort(key=lambda c: c["iteration"])
            write_json(os.path.join(self.root, MANIFEST), manifest)
            self.manifest = manifest
        return rel

    def summary(self) -> Dict[str, dict]:
        """``{run: {iteration: mean surprisal bits}}`` from the manifest."""
        return {run: {c["iteration"]: c["mean_surprisal_bits"] for c in e["checkpoints"]}
                for run, e in self.manifest["runs"].items()}
