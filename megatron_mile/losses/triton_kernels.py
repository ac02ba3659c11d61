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
"""

import os

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # noqa: BLE001 - missing or broken triton: the torch path serves (CPUs, no triton)
    HAVE_TRITON = False

# Vocabulary elements per block of a row's loop, and warps per program (one program per row).
MAX_BLOCK = 4096
NUM_WARPS = 8


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def usable_for(tensor: torch.Tensor) -> bool:
    """Whether these kernels can run on ``tensor``: CUDA with triton, or triton's interpreter."""
    return HAVE_TRITON and (tensor.is_cuda or interpreting())


def _block(width: int) -> int:
    return min(MAX_BLOCK, triton.next_power_of_2(width))


if HAVE_TRITON:

    @triton.jit
    def _row_statistics_kernel(logits_ptr, row_stride, width, max_ptr, sum_exp_ptr, sum_shifted_ptr,
                               BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * row_stride
        cols = tl.arange(0, BLOCK)
        # Running max, sum of exp and sum of (z - m) exp, each relative to the running max.
        m = -float("inf")
        s = 0.0
        a = 0.0
        for start in range(0, width, BLOCK):
            valid = start + cols < width
            z = tl.load(base + start + cols, mask=valid, other=-float("inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(z, axis=0))
            # Rebase the sums to m_new: s' = c s, a' = c (a + (m - m_new) s), c = exp(m - m_new).
            # On the first block m = -inf and s = a = 0: keep the products finite.
            shift = tl.where(s > 0, m - m_new, 0.0)
            c = tl.exp(shift)
            t = tl.where(valid, z - m_new, 0.0)
            e = tl.where(valid, tl.exp(t), 0.0)
            a = c * (a + shift * s) + tl.sum(t * e, axis=0)
            s = c * s + tl.sum(e, axis=0)
            m = m_new
        tl.store(max_ptr + row, m)
        tl.store(sum_exp_ptr + row, s)
        tl.store(sum_shifted_ptr + row, a)

    @triton.jit
    def _softmax_minus_onehot_kernel(logits_ptr, row_stride, width, log_normalizer_ptr, coefficient_ptr,
                                     target_col_ptr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * row_stride
        cols = tl.arange(0, BLOCK)
        log_z = tl.load(log_normalizer_ptr + row)
        coefficient = tl.load(coefficient_ptr + row)
        target_col = tl.load(target_col_ptr + row)  # -1 when another rank owns the target
        for start in range(0, width, BLOCK):
            valid = start + cols < width
            z = tl.load(base + start + cols, mask=valid, other=0.0).to(tl.float32)
            grad = coefficient * tl.exp(z - log_z)
            grad = tl.where(start + cols == target_col, grad - coefficient, grad)
            tl.store(base + start + cols, grad.to(logits_ptr.dtype.element_ty), mask=valid)


def row_statistics(logits_2d: torch.Tensor):
    """``(m, s, a)`` per row of ``logits_2d`` [rows, width] (unit stride along the row), float32."""
    n_rows, width = logits_2d.shape
    out = [torch.empty(n_rows, dtype=torch.float32, device=logits_2d.device) for _ in range(3)]
    if n_rows:
        _row_statistics_kernel[(n_rows,)](logits_2d, logits_2d.stride(0), width, *out,
                                          BLOCK=_block(width), num_warps=NUM_WARPS)
    return tuple(out)


def softmax_minus_onehot_(logits_2d: torch.Tensor, log_normalizer: torch.Tensor, coefficient: torch.Tensor,
                          target_col: torch.Tensor) -> torch.Tensor:
    """Overwrite ``logits_2d`` with ``coefficient * (softmax - onehot(target_col))`` row by row:
    the softmax is ``exp(z - log_normalizer)``; ``target_col`` is int32, -1 where the target lies
    outside this slice."""
    n_rows, width = logits_2d.shape
    if n_rows:
        _softmax_minus_onehot_kernel[(n_rows,)](logits_2d, logits_2d.stride(0), width, log_normalizer,
                                                coefficient, target_col, BLOCK=_block(width),
                                                num_warps=NUM_WARPS)
    return logits_2d
