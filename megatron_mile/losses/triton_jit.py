"""The Triton kernels of :mod:`megatron_mile.losses.triton_kernels` (imported by it on first use;
see there for what they compute)."""

import triton
import triton.language as tl


@triton.jit
def row_statistics_kernel(logits_ptr, row_stride, width, max_ptr, sum_exp_ptr, sum_shifted_ptr,
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
def softmax_minus_onehot_kernel(logits_ptr, row_stride, width, log_normalizer_ptr, coefficient_ptr,
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
