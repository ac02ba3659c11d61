"""Triton kernels for the GPU path of :mod:`megatron_mile.losses.vocab_parallel`.

The torch path runs a handful of separate elementwise kernels per chunk of tokens; on a GPU each
of them is a full trip through memory, so it takes several times the time of reading the logits
once. Here one program handles one token row of this rank's vocabulary slice:

* :func:`row_statistics` (forward): one read of the row, online in blocks of the vocabulary, in
  float32: ``m = max z``, ``s = sum exp(z - m)``, ``a = sum (z - m) exp(z - m)``. The logits are
  left untouched (the backward recomputes the softmax from them).
* :func:`softmax_minus_onehot_` (backward): one read and one in-place write of the row,
  ``grad = c * (exp(z - log Z) - onehot(y))`` with ``c = upstream * weight`` and ``log Z`` the
  global log-normaliser.

The collectives, the per-token terms and the weights stay in the torch code, shared with the
torch path. ``TRITON_INTERPRET=1`` runs these kernels on CPU tensors (slowly), which is how the
CPU test suite checks them against the float64 reference.

Triton is imported on first use (:func:`have_triton`), not with this module, so that importing the
losses (``--help``, CPU runs) does not pay for it.
"""

import functools
import importlib
import os

import torch

# Vocabulary elements per block of a row's loop, and warps per program (one program per row).
MAX_BLOCK = 4096
NUM_WARPS = 8


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def have_triton() -> bool:
    """Whether triton imports (a missing or broken install leaves the torch path)."""
    return _kernels() is not None


def usable_for(tensor: torch.Tensor) -> bool:
    """Whether these kernels can run on ``tensor``: CUDA with triton, or triton's interpreter."""
    return (tensor.is_cuda or interpreting()) and have_triton()


def _block(width: int) -> int:
    return min(MAX_BLOCK, 1 << max(0, width - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _kernels():
    """The kernel module (:mod:`megatron_mile.losses.triton_jit`), or None without a working triton."""
    try:
        return importlib.import_module("megatron_mile.losses.triton_jit")
    except Exception:  # noqa: BLE001 - missing or broken triton: the torch path serves (CPUs, no triton)
        return None


def row_statistics(logits_2d: torch.Tensor):
    """``(m, s, a)`` per row of ``logits_2d`` [rows, width] (unit stride along the row), float32."""
    n_rows, width = logits_2d.shape
    out = [torch.empty(n_rows, dtype=torch.float32, device=logits_2d.device) for _ in range(3)]
    if n_rows:
        _kernels().row_statistics_kernel[(n_rows,)](logits_2d, logits_2d.stride(0), width, *out,
                                                    BLOCK=_block(width), num_warps=NUM_WARPS)
    return tuple(out)


def softmax_minus_onehot_(logits_2d: torch.Tensor, log_normalizer: torch.Tensor, coefficient: torch.Tensor,
                          target_col: torch.Tensor) -> torch.Tensor:
    """Overwrite ``logits_2d`` with ``coefficient * (softmax - onehot(target_col))`` row by row:
    the softmax is ``exp(z - log_normalizer)``; ``target_col`` is int32, -1 where the target lies
    outside this slice."""
    n_rows, width = logits_2d.shape
    if n_rows:
        _kernels().softmax_minus_onehot_kernel[(n_rows,)](logits_2d, logits_2d.stride(0), width,
                                                          log_normalizer, coefficient, target_col,
                                                          BLOCK=_block(width), num_warps=NUM_WARPS)
    return logits_2d
