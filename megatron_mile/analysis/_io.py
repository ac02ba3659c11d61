"""Atomic file writes: a killed run leaves the previous file or none, never a truncated one."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np


def _tmp(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def write_json(path: str, obj) -> None:
    """``json.dump`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = _tmp(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    tmp = _tmp(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def save_npy(path: str, array: np.ndarray) -> None:
    """``np.save`` to ``path`` (which must end in ``.npy``) atomically."""
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def ensure_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def finite_or_none(x):
    """JSON has no NaN: undefined statistics are written as null (and shown as "n/a")."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None
