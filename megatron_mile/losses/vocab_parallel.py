"""Vocabulary-parallel cross entropy, predicted entropy and token weights in one pass over the logits.

Conventions are those of ``megatron.core.tensor_parallel.vocab_parallel_cross_entropy``: logits
``[s, b, V/tp]`` hold this rank's contiguous vocabulary slice, targets ``[s, b]`` are global token
ids, and the logits buffer is consumed (overwritten) to hold intermediate results and, in the
backward, the gradient, so nothing of full size is allocated besides it.

Per token, with ``z`` the logits, ``m`` this rank's max, ``M`` the global max:

* forward, one sweep over this rank's slice in L2-sized chunks of tokens, maths in float32:
  ``s_r = sum exp(z - m_r)``, ``a_r = sum (z - m_r) exp(z - m_r)``; the slice's softmax
  ``exp(z - m_r) / s_r`` overwrites the logits (in their dtype) and is reused by the backward;
* collective 1 (MAX): ``M = max_r m_r``; rescale ``s_r, a_r`` to ``M``;
* collective 2 (SUM of the stacked ``[S, A, z_y - M]``);
* ``ce = log S - (z_y - M)``, ``H = log S - A / S``, ``p_y = exp(-ce)``; the weight comes from the
  registered loss (:func:`megatron_mile.losses.registry.token_weight`, from these statistics);
* backward: ``d(w * ce)/dz = g * w * (softmax(z) - onehot(y))``, one in-place multiply per row.

Memory: besides the logits buffer (which megatron's CE also consumes), a few ``[tokens]`` vectors
and one float32 scratch chunk of ``chunk_tokens x V/tp``.

On CUDA the sweep and the backward run as Triton kernels instead (``LossConfig.kernel``,
:mod:`megatron_mile.losses.triton_kernels`): the same statistics from one read of the logits,
which stay untouched until the backward writes the gradient over them; collectives and
per-token terms are shared.

The maths lives in :class:`VocabParallelWeightedCrossEntropy` (static steps, no collectives); the
autograd Function sequences the steps and owns the two collectives, as megatron-core does.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist

from megatron_mile.losses import triton_kernels
from megatron_mile.losses.config import LossConfig
from megatron_mile.losses.registry import TokenStats, token_weight

# Elements per chunk of tokens. CPU: 512K floats = 2 MiB of scratch (16 tokens of a 32k vocabulary),
# small enough to stay in cache between the chunk's passes, large enough to amortise the per-op
# overhead (bench/loss_bench.py; 4-32 tokens of 32k are within 10%). GPU: the passes are separate
# kernels anyway, so chunks only bound the float32 scratch (128 MiB) and the launch count.
CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 25}


def default_chunk_tokens(vocab_partition_size: int, device: torch.device) -> int:
    elements = CHUNK_ELEMENTS["cpu"] if device.type == "cpu" else CHUNK_ELEMENTS["cuda"]
    return max(1, elements // max(1, vocab_partition_size))


_ROW_THREADS: Optional[ThreadPoolExecutor] = None


def _without_grad(fn, *args):
    with torch.no_grad():  # grad mode is per thread; the autograd Function's body runs without it
        return fn(*args)


def _for_row_ranges(sweep: Callable[[int, int], None], n_rows: int, chunk_tokens: int, device) -> None:
    """Run ``sweep(start, stop)`` over the rows. On CPU with T > 1 intra-op threads, T Python threads
    each take a contiguous share and run single-threaded ops on it: the chunked sweep issues
    hundreds of small ops, and an OpenMP fork-join per op stalls whenever a core is busy elsewhere
    (measured 2-5x slower than one thread on a loaded 2-core machine)."""
    global _ROW_THREADS
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads <= 1 or n_rows < 2 * chunk_tokens:
        sweep(0, n_rows)
        return
    if _ROW_THREADS is None or _ROW_THREADS._max_workers != threads:
        _ROW_THREADS = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mile-loss")
    share = -(-n_rows // threads // chunk_tokens) * chunk_tokens  # whole chunks per thread
    # Ops called from the pool's threads stay single-threaded: their intra-op thread count is
    # fixed from the global setting at their first op, which is 1 while this runs.
    torch.set_num_threads(1)
    try:
        futures = [_ROW_THREADS.submit(_without_grad, sweep, lo, min(lo + share, n_rows))
                   for lo in range(0, n_rows, share)]
        for future in futures:
            future.result()
    finally:
        torch.set_num_threads(threads)


def _tp_group(tp_group=None):
    """The tensor-parallel group to use: the given one, megatron's, or None (single process)."""
    if tp_group is not None:
        return tp_group
    if dist.is_available() and dist.is_initialized():
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            return parallel_state.get_tensor_model_parallel_group()
    return None


def _group_rank_size(group) -> Tuple[int, int]:
    """This rank's index and the size of ``group``: any object with ``rank()`` and ``size()`` (a torch
    ``ProcessGroup``, as megatron-core's cross entropy takes it), or None for one process."""
    if group is None:
        return 0, 1
    return group.rank(), group.size()


class WeightedCrossEntropy(NamedTuple):
    """Per-token outputs, each ``[s, b]`` float32. Only ``weighted_ce`` carries a gradient."""

    weighted_ce: torch.Tensor
    weight: torch.Tensor
    ce: torch.Tensor
    entropy: torch.Tensor


class VocabParallelWeightedCrossEntropy:
    """The steps of the computation, free of collectives so they can be tested and reused."""

    @staticmethod
    def check_inputs(logits: torch.Tensor, target: torch.Tensor, vocab_size: int) -> None:
        """Cheap validation, identical on every rank, so a bad call raises before any collective."""
        if not logits.is_floating_point():
            raise TypeError(f"vocab_parallel_logits must be floating point, got {logits.dtype}")
        if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"target must hold integer token ids, got {target.dtype}")
        if logits.shape[:-1] != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree: expected "
                f"logits [s, b, V/tp] and target [s, b]"
            )
        if not target.numel():
            return
        if target.is_cuda:  # a host-side check would synchronise the stream on every call
            torch._assert_async(((target >= 0) & (target < vocab_size)).all(),
                                f"target ids must lie in [0, {vocab_size})")
            return
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"target ids must lie in [0, {vocab_size}), found min {lo} max {hi}")

    @staticmethod
    def owned_targets(target_1d: torch.Tensor, vocab_start: int, width: int):
        """``(rows, cols)``: the rows whose target lies in this rank's slice, and its column there."""
        owned = (target_1d >= vocab_start) & (target_1d < vocab_start + width)
        rows = owned.nonzero().squeeze(-1)
        return rows, target_1d[rows] - vocab_start

    @staticmethod
    def target_columns(target_1d: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                       dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """Per row, the target's column in this slice, -1 where another rank owns it."""
        column = torch.full_like(target_1d, -1, dtype=dtype)
        column[rows] = cols.to(dtype)
        return column

    @staticmethod
    def local_statistics(logits_2d: torch.Tensor, chunk_tokens: int,
                         row_reduction: Optional[Callable[[slice, torch.Tensor], torch.Tensor]] = None):
        """Per row of this rank's slice: ``m = max z``, ``s = sum e``, ``a = sum (z - m) e`` with
        ``e = exp(z - m)``, in float32. The logits are overwritten (in their dtype) with this
        slice's softmax ``e / s``, which the backward rescales into the gradient (no second exp).

        Each chunk runs ATen's fused softmax on ``t = z - m`` (faster than a separate exp and sum);
        since ``max t = 0`` the largest probability is exactly ``1 / s``, and ``a / s = sum(p t)``.

        ``row_reduction(rows, p)``, if given, is called in the same pass with each chunk's rows
        (a slice) and their float32 slice softmax ``p = e / s`` ``[chunk, V/tp]``, and returns one
        value per row (EMO's ``sum p c``); the results are returned as a fourth vector."""
        n_rows, width = logits_2d.shape
        f32 = dict(dtype=torch.float32, device=logits_2d.device)
        local_max, sum_exp, sum_shifted_exp = (torch.empty(n_rows, **f32) for _ in range(3))
        reduced = torch.empty(n_rows, **f32) if row_reduction is not None else None
        is_f32 = logits_2d.dtype == torch.float32
        softmax_out = torch.ops.aten._softmax.out

        def sweep(begin: int, end: int) -> None:
            shifted = torch.empty(min(chunk_tokens, end - begin), width, **f32)
            prob_buf = None if is_f32 else torch.empty_like(shifted)
            for start in range(begin, end, chunk_tokens):
                rows = slice(start, min(start + chunk_tokens, end))
                z = logits_2d[rows]
                t = shifted[: z.shape[0]]
                m = local_max[rows]
                if is_f32:
                    torch.amax(z, dim=-1, out=m)
                    torch.sub(z, m.unsqueeze(-1), out=t)
                    p = softmax_out(t, -1, False, out=z)
                else:  # 16-bit logits: maths in a small float32 buffer, probabilities rounded once
                    t.copy_(z)
                    torch.amax(t, dim=-1, out=m)
                    t.sub_(m.unsqueeze(-1))
                    p = softmax_out(t, -1, False, out=prob_buf[: z.shape[0]])
                    z.copy_(p)
                if reduced is not None:
                    reduced[rows] = row_reduction(rows, p)
                s = torch.amax(p, dim=-1, out=sum_exp[rows]).reciprocal_()
                torch.sum(t.mul_(p), dim=-1, out=sum_shifted_exp[rows]).mul_(s)

        _for_row_ranges(sweep, n_rows, chunk_tokens, logits_2d.device)
        if reduced is not None:
            return local_max, sum_exp, sum_shifted_exp, reduced
        return local_max, sum_exp, sum_shifted_exp

    @staticmethod
    def rescale_to_global_max(local_max, global_max, sum_exp, sum_shifted_exp):
        """Express ``s`` and ``a`` relative to the global max ``M`` (in place):
        ``s' = s c``, ``a' = c (a + (m - M) s)`` with ``c = exp(m - M)``."""
        delta = local_max - global_max
        factor = torch.exp(delta)
        sum_shifted_exp.addcmul_(delta, sum_exp).mul_(factor)
        sum_exp.mul_(factor)

    @staticmethod
    def token_terms(sum_exp, sum_shifted_exp, target_shifted):
        """``ce = log S - (z_y - M)``, ``H = log S - A / S``, ``p_y = exp(-ce)``."""
        log_sum = torch.log(sum_exp)
        ce = log_sum - target_shifted
        entropy = (log_sum - sum_shifted_exp / sum_exp).clamp_min_(0.0)
        return ce, entropy, torch.exp(-ce)

    @staticmethod
    def write_gradient(exp_2d, row_scale, rows, cols, target_grad, chunk_tokens):
        """Turn the buffer holding this slice's softmax into the gradient ``row_scale * p``, with
        the target entries set to ``target_grad`` (computed exactly in float32)."""
        if exp_2d.dtype == torch.float32:
            exp_2d.mul_(row_scale.unsqueeze(-1))  # one pass, one parallel region
        else:  # multiply in float32, round once
            n_rows, width = exp_2d.shape

            def sweep(begin: int, end: int) -> None:
                buf = torch.empty(min(chunk_tokens, end - begin), width, dtype=torch.float32, device=exp_2d.device)
                for start in range(begin, end, chunk_tokens):
                    sl = slice(start, min(start + chunk_tokens, end))
                    e = exp_2d[sl]
                    t = buf[: e.shape[0]]
                    t.copy_(e)
                    e.copy_(t.mul_(row_scale[sl].unsqueeze(-1)))

            _for_row_ranges(sweep, n_rows, chunk_tokens, exp_2d.device)
        exp_2d[rows, cols] = target_grad.to(exp_2d.dtype)
        return exp_2d


def combine_over_tensor_parallel_ranks(local_max, sum_exp, sum_shifted_exp, rows, target_logit, tp_group,
                                       world: int, extra_row_sums: Tuple[torch.Tensor, ...] = ()):
    """The two collectives: MAX of the slices' maxima ``M``, then one SUM of the stacked
    ``[S, A, z_y - M, *extra]`` after rescaling each slice's ``s, a`` to ``M`` (in place).

    ``rows`` / ``target_logit``: the rows whose target this rank owns and their target logits.
    ``extra_row_sums``: further per-row sums of ``exp(z - m) * f(z)`` a loss needs (EMO), rescaled
    to ``M`` in place and summed in the same collective.
    Returns ``(M, s', S, A, z_y - M, extra)``; ``s'`` is this slice's rescaled sum (its share of ``S``)."""
    if world > 1:
        global_max = local_max.clone()
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=tp_group)
        if extra_row_sums:
            factor = torch.exp(local_max - global_max)
            for extra in extra_row_sums:
                extra.mul_(factor)
        VocabParallelWeightedCrossEntropy.rescale_to_global_max(local_max, global_max, sum_exp, sum_shifted_exp)
    else:
        global_max = local_max
    local_sum_exp = sum_exp
    target_shifted = torch.zeros_like(sum_exp)
    target_shifted[rows] = target_logit - global_max[rows]
    extra = tuple(extra_row_sums)
    if world > 1:
        stacked = torch.stack((sum_exp, sum_shifted_exp, target_shifted, *extra))
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=tp_group)
        sum_exp, sum_shifted_exp, target_shifted, *extra = stacked.unbind(0)
    return global_max, local_sum_exp, sum_exp, sum_shifted_exp, target_shifted, tuple(extra)


def _use_triton(kernel: str, logits: torch.Tensor) -> bool:
    if kernel == "torch":
        return False
    if kernel == "auto":
        return logits.is_cuda and triton_kernels.have_triton()
    if not triton_kernels.usable_for(logits):
        raise RuntimeError("LossConfig.kernel='triton' needs triton and a CUDA tensor "
                           "(or TRITON_INTERPRET=1 for CPU tensors)")
    return True


class _VocabParallelWeightedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, config: LossConfig, tp_group, chunk_tokens, loss_mask,
                dp_group):
        steps = VocabParallelWeightedCrossEntropy
        use_triton = _use_triton(config.kernel, vocab_parallel_logits)
        rank, world = _group_rank_size(tp_group)
        width = vocab_parallel_logits.size(-1)
        if config.check_inputs:
            steps.check_inputs(vocab_parallel_logits, target, width * world)
        vocab_start = rank * width

        buffer = vocab_parallel_logits.contiguous()  # the same tensor unless it was strided
        logits_2d = buffer.view(-1, width)
        target_1d = target.reshape(-1).long()
        rows, cols = steps.owned_targets(target_1d, vocab_start, width)
        target_logit = logits_2d[rows, cols].float()  # read before the buffer is overwritten

        if use_triton:  # the logits stay as they are
            local_max, sum_exp, sum_shifted_exp = triton_kernels.row_statistics(logits_2d)
        else:  # the logits now hold the slice's softmax
            local_max, sum_exp, sum_shifted_exp = steps.local_statistics(logits_2d, chunk_tokens)

        global_max, local_sum_exp, sum_exp, sum_shifted_exp, target_shifted, _ = combine_over_tensor_parallel_ranks(
            local_max, sum_exp, sum_shifted_exp, rows, target_logit, tp_group, world)

        ce, entropy, p_target = steps.token_terms(sum_exp, sum_shifted_exp, target_shifted)
        mask_1d = None if loss_mask is None else loss_mask.reshape(-1)
        weight = token_weight(config, TokenStats(ce, entropy, p_target), mask_1d, dp_group)
        ctx.use_triton, ctx.chunk_tokens = use_triton, chunk_tokens
        if use_triton:  # the backward recomputes softmax = exp(z - M - log S) from the logits
            target_col = steps.target_columns(target_1d, rows, cols, torch.int32)
            ctx.save_for_backward(buffer, weight, global_max + torch.log(sum_exp), target_col)
        else:
            # d(w ce)/dz = w (softmax - onehot); the buffer holds the slice's softmax e / s, and the
            # full softmax is (e / s) * (s exp(m - M) / S): the slice's share of the probability mass.
            row_scale = weight if world == 1 else weight * local_sum_exp / sum_exp
            target_grad = (p_target[rows] - 1.0) * weight[rows]
            ctx.save_for_backward(buffer, row_scale, rows, cols, target_grad)
        shape = target.shape
        outputs = (ce * weight).view(shape), weight.view(shape), ce.view(shape), entropy.view(shape)
        ctx.mark_non_differentiable(*outputs[1:])
        return outputs

    @staticmethod
    def backward(ctx, grad_weighted_ce, *unused_grads):
        grad = grad_weighted_ce.reshape(-1).float()
        if ctx.use_triton:
            buffer, weight, log_normalizer, target_col = ctx.saved_tensors
            triton_kernels.softmax_minus_onehot_(buffer.view(-1, buffer.size(-1)), log_normalizer,
                                                 weight * grad, target_col)
            return buffer, None, None, None, None, None, None
        buffer, row_scale, rows, cols, target_grad = ctx.saved_tensors
        VocabParallelWeightedCrossEntropy.write_gradient(
            buffer.view(-1, buffer.size(-1)), row_scale * grad, rows, cols, target_grad * grad[rows],
            ctx.chunk_tokens,
        )
        return buffer, None, None, None, None, None, None


def vocab_parallel_weighted_cross_entropy(
    vocab_parallel_logits: torch.Tensor,
    target: torch.Tensor,
    config: LossConfig,
    tp_group: Optional[dist.ProcessGroup] = None,
    chunk_tokens: Optional[int] = None,
    loss_mask: Optional[torch.Tensor] = None,
    dp_group: Optional[dist.ProcessGroup] = None,
) -> WeightedCrossEntropy:
    """Weighted cross entropy with the weight of the registered loss ``config.loss``, plus its ingredients.

    Args:
        vocab_parallel_logits: ``[s, b, V/tp]`` logits of this rank's vocabulary slice (consumed).
        target: ``[s, b]`` global token ids.
        config: which loss (any registered weighted cross entropy) and its parameters.
        tp_group: tensor-parallel group (anything with ``rank()`` and ``size()`` that the collectives
            accept); defaults to megatron's.
        chunk_tokens: tokens per chunk of the sweep (a speed knob, not a semantic one); default
            from :data:`CHUNK_ELEMENTS`.
        loss_mask: ``[s, b]``, 1 where the token counts; only weights that depend on the batch use it
            (ESLM's quantile); None: every position counts.
        dp_group: data-parallel group for such weights (ESLM: the quantile over all its ranks).

    Returns:
        :class:`WeightedCrossEntropy` ``(weighted_ce, weight, ce, entropy)``, float32 ``[s, b]``.
    """
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(vocab_parallel_logits.size(-1), vocab_parallel_logits.device)
    return WeightedCrossEntropy(
        *_VocabParallelWeightedCrossEntropy.apply(
            vocab_parallel_logits, target, config, _tp_group(tp_group), chunk_tokens, loss_mask, dp_group
        )
    )


def vocab_parallel_cross_entropy_with_entropy(vocab_parallel_logits, target, tp_group=None):
    """``(ce, entropy)``: ``ce`` equals megatron's vocab_parallel_cross_entropy (value and
    gradient); ``entropy`` of softmax over the full vocabulary, float32, no gradient."""
    out = vocab_parallel_weighted_cross_entropy(
        vocab_parallel_logits, target, LossConfig(loss="cross_entropy"), tp_group
    )
    return out.weighted_ce, out.entropy


def vocab_parallel_mile_cross_entropy(vocab_parallel_logits, target, gamma=1.0, sigma=1.0, tp_group=None):
    """MiLe: ``(weighted_ce, weight)`` with ``weight = (sigma + entropy)^gamma`` (no gradient)."""
    config = LossConfig(loss="mile", params=dict(mile_gamma=gamma, mile_sigma=sigma))
    out = vocab_parallel_weighted_cross_entropy(vocab_parallel_logits, target, config, tp_group)
    return out.weighted_ce, out.weight


def vocab_parallel_focal_cross_entropy(vocab_parallel_logits, target, gamma=1.0, tp_group=None):
    """Focal: ``(weighted_ce, weight)`` with ``weight = (1 - p_target)^gamma`` (``p_target`` detached)."""
    out = vocab_parallel_weighted_cross_entropy(
        vocab_parallel_logits, target, LossConfig(loss="focal", params=dict(focal_gamma=gamma)), tp_group
    )
    return out.weighted_ce, out.weight
