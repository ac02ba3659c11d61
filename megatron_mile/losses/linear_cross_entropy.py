"""The output layer and the token-weighted loss in one op: no ``[tokens, V/tp]`` logits.

``vocab_parallel_linear_weighted_cross_entropy(hidden, output_weight, target, config)`` returns
what :func:`~megatron_mile.losses.vocab_parallel.vocab_parallel_weighted_cross_entropy` returns
for ``logits = hidden @ output_weight.T`` (megatron's ``ColumnParallelLinear`` output layer),
with the same gradients for ``hidden`` and ``output_weight``, but the logits only ever exist one
block of ``chunk_tokens x chunk_vocab`` at a time.

Per rank (``output_weight`` holds this rank's ``V/tp`` rows, as the output layer does):

* the hidden states enter as megatron's output layer takes them: all-gathered along the sequence
  under sequence parallelism (reduce-scatter of the gradient), otherwise copied into the
  tensor-parallel region (all-reduce of the gradient);
* forward, block by block (vocabulary chunks outside, token chunks inside): ``z = x W_c^T`` in
  the input dtype, then the per-row ``m = max z``, ``s = sum exp(z - m)``, ``a = sum (z - m)
  exp(z - m)`` of the block, merged into the rank's running statistics with the same rebasing
  as the cross-rank merge; the target's logit is read from the block that holds it;
* collective 1 (MAX) and collective 2 (SUM of the stacked ``[S, A, z_y - M]``), the per-token
  terms and the weight: the steps of :class:`VocabParallelWeightedCrossEntropy`;
* backward, block by block: ``z`` is recomputed, turned into ``g w (softmax(z) - onehot(y))`` in
  place, and multiplied into ``dX`` (float32 accumulator) and the block's ``dW`` rows (float32
  accumulator of one vocabulary chunk, written once).

The per-block statistics and gradient are the loss kernels' own: chunked ATen ops on CPU,
the Triton kernels of :mod:`megatron_mile.losses.triton_kernels` on CUDA (``LossConfig.kernel``);
matrix products are torch's (cuBLAS / oneDNN). Extra memory beside the gradients returned: one
block in the input dtype (plus its float32 scratch on the torch path) and a few ``[tokens]``
vectors; for 16-bit inputs also the ``[tokens, h]`` float32 ``dX`` accumulator and one
``[chunk_vocab, h]`` float32 ``dW`` accumulator (float32 inputs accumulate in the gradients).

The plain reference, :func:`reference_linear_weighted_cross_entropy`, multiplies out the full
logits in float64 and hands them to :mod:`megatron_mile.losses.reference`.
"""

from typing import Optional, Tuple

import torch
import torch.distributed as dist

from megatron_mile.losses import triton_kernels
from megatron_mile.losses.config import LossConfig
from megatron_mile.losses.registry import TokenStats, get_loss, token_weight
from megatron_mile.losses.vocab_parallel import (
    VocabParallelWeightedCrossEntropy,
    WeightedCrossEntropy,
    _group_rank_size,
    _tp_group,
    _use_triton,
    combine_over_tensor_parallel_ranks,
    default_chunk_tokens,
)

# Logit elements per block, and the widest vocabulary chunk. CPU: 2M floats (8 MiB of fp32 block),
# 1024 tokens x 2048 vocabulary, the fastest of the shapes tried for the backward's three products
# (512-2048 tokens x 1K-32K vocabulary, 2 cores); GPU: 64M elements (128 MiB in bf16), 1024 tokens x
# 64K vocabulary, large enough for cuBLAS.
BLOCK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 26}
MAX_CHUNK_VOCAB = {"cpu": 2048, "cuda": 1 << 16}


def default_chunks(n_tokens: int, vocab_partition_size: int, device: torch.device) -> Tuple[int, int]:
    """``(chunk_tokens, chunk_vocab)`` for a ``[n_tokens, vocab_partition_size]`` logits slice."""
    kind = "cpu" if device.type == "cpu" else "cuda"
    chunk_vocab = max(1, min(vocab_partition_size, MAX_CHUNK_VOCAB[kind]))
    chunk_tokens = max(1, min(max(n_tokens, 1), BLOCK_ELEMENTS[kind] // chunk_vocab))
    return chunk_tokens, chunk_vocab


class LinearCrossEntropySteps:
    """The block steps (no collectives): statistics of a logits block, their merge, its gradient."""

    @staticmethod
    def check_inputs(hidden: torch.Tensor, output_weight: torch.Tensor, target: torch.Tensor, world: int,
                     sequence_parallel: bool) -> None:
        """Shapes and dtypes, then the target range (identical on every rank, before any collective)."""
        if hidden.dim() != 3:
            raise ValueError(f"hidden must be [s, b, h], got shape {tuple(hidden.shape)}")
        if output_weight.dim() != 2 or output_weight.size(1) != hidden.size(-1):
            raise ValueError(f"output_weight {tuple(output_weight.shape)} must be this rank's [V/tp, h] rows "
                             f"of the output layer, h = {hidden.size(-1)} as in hidden")
        if hidden.dtype != output_weight.dtype:
            raise TypeError(f"hidden ({hidden.dtype}) and output_weight ({output_weight.dtype}) must share a dtype")
        seq_factor = world if sequence_parallel else 1
        if (hidden.size(0) * seq_factor, hidden.size(1)) != tuple(target.shape):
            shard = f" (x tp {world}: sequence parallel)" if sequence_parallel else ""
            raise ValueError(f"hidden {tuple(hidden.shape)}{shard} and target {tuple(target.shape)} disagree: "
                             f"expected hidden [s, b, h] and target [s, b]")
        # The logits' own checks, on a zero-storage stand-in of their shape [s, b, V/tp].
        logits_shape = hidden.new_zeros(()).expand(*target.shape, output_weight.size(0))
        VocabParallelWeightedCrossEntropy.check_inputs(logits_shape, target, output_weight.size(0) * world)

    @staticmethod
    def block_statistics(block: torch.Tensor, use_triton: bool):
        """``(m, s, a)`` per row of a logits block, float32; the block is scratch afterwards."""
        if use_triton:
            return triton_kernels.row_statistics(block)
        return VocabParallelWeightedCrossEntropy.local_statistics(block, default_chunk_tokens(block.size(1), block.device))

    @staticmethod
    def merge_statistics(running, block_stats) -> None:
        """Add a block's ``(m, s, a)`` to the running ones of the same rows (in place), both
        rebased to their common max as the cross-rank merge does."""
        run_max, run_sum, run_shifted = running
        block_max, block_sum, block_shifted = block_stats
        new_max = torch.maximum(run_max, block_max)
        VocabParallelWeightedCrossEntropy.rescale_to_global_max(run_max, new_max, run_sum, run_shifted)
        VocabParallelWeightedCrossEntropy.rescale_to_global_max(block_max, new_max, block_sum, block_shifted)
        run_sum.add_(block_sum)
        run_shifted.add_(block_shifted)
        run_max.copy_(new_max)

    @staticmethod
    def block_gradient_(block: torch.Tensor, log_normalizer: torch.Tensor, coefficient: torch.Tensor,
                        target_col: torch.Tensor, use_triton: bool) -> torch.Tensor:
        """``coefficient * (exp(z - log_normalizer) - onehot(target_col))`` over the block, in the
        block's dtype (float32 maths); ``target_col`` is -1 where the target is elsewhere."""
        if use_triton:
            return triton_kernels.softmax_minus_onehot_(block, log_normalizer, coefficient,
                                                        target_col.to(torch.int32))
        grad = block.float().sub_(log_normalizer.unsqueeze(-1)).exp_().mul_(coefficient.unsqueeze(-1))
        rows = (target_col >= 0).nonzero().squeeze(-1)
        grad[rows, target_col[rows]] -= coefficient[rows]
        return grad if grad.dtype == block.dtype else block.copy_(grad)


def _block_buffer(hidden_2d: torch.Tensor, chunk_tokens: int, chunk_vocab: int):
    """``block(t0, t1, v0, v1)``: a contiguous ``[t1 - t0, v1 - v0]`` view of one reused buffer, so a
    block never outlives the next one."""
    buffer = torch.empty(chunk_tokens * chunk_vocab, dtype=hidden_2d.dtype, device=hidden_2d.device)
    return lambda t0, t1, v0, v1: buffer[: (t1 - t0) * (v1 - v0)].view(t1 - t0, v1 - v0)


def _block_target_columns(target_col: torch.Tensor, vocab_begin: int, vocab_end: int) -> torch.Tensor:
    """Per row, the target's column within the vocabulary chunk ``[begin, end)``, -1 elsewhere."""
    inside = (target_col >= vocab_begin) & (target_col < vocab_end)
    return torch.where(inside, target_col - vocab_begin, -1)


class _VocabParallelLinearWeightedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_2d, output_weight, target_1d, config: LossConfig, tp_group, chunk_tokens, chunk_vocab,
                loss_mask_1d, dp_group):
        steps = VocabParallelWeightedCrossEntropy
        block_steps = LinearCrossEntropySteps
        rank, world = _group_rank_size(tp_group)
        n_tokens, width = hidden_2d.size(0), output_weight.size(0)
        use_triton = _use_triton(config.kernel, hidden_2d)
        target_1d = target_1d.long()
        rows, cols = steps.owned_targets(target_1d, rank * width, width)
        target_col = steps.target_columns(target_1d, rows, cols)  # in this rank's slice

        f32 = dict(dtype=torch.float32, device=hidden_2d.device)
        local_max, sum_exp, sum_shifted_exp = (torch.empty(n_tokens, **f32) for _ in range(3))
        target_logit = torch.zeros(n_tokens, **f32)
        block_view = _block_buffer(hidden_2d, min(chunk_tokens, n_tokens), min(chunk_vocab, width))
        for v0 in range(0, width, chunk_vocab):
            v1 = min(v0 + chunk_vocab, width)
            weight_chunk = output_weight[v0:v1]
            for t0 in range(0, n_tokens, chunk_tokens):
                t1 = min(t0 + chunk_tokens, n_tokens)
                block = torch.matmul(hidden_2d[t0:t1], weight_chunk.T, out=block_view(t0, t1, v0, v1))
                in_block = _block_target_columns(target_col[t0:t1], v0, v1)
                owned = (in_block >= 0).nonzero().squeeze(-1)
                target_logit[t0 + owned] = block[owned, in_block[owned]].float()  # before the sweep
                block_stats = block_steps.block_statistics(block, use_triton)
                running = (local_max[t0:t1], sum_exp[t0:t1], sum_shifted_exp[t0:t1])
                if v0 == 0:
                    for run, new in zip(running, block_stats):
                        run.copy_(new)
                else:
                    block_steps.merge_statistics(running, block_stats)

        global_max, _, sum_exp, sum_shifted_exp, target_shifted, _ = combine_over_tensor_parallel_ranks(
            local_max, sum_exp, sum_shifted_exp, rows, target_logit[rows], tp_group, world)

        ce, entropy, p_target = steps.token_terms(sum_exp, sum_shifted_exp, target_shifted)
        weight = token_weight(config, TokenStats(ce, entropy, p_target), loss_mask_1d, dp_group)
        ctx.save_for_backward(hidden_2d, output_weight, target_col, global_max + torch.log(sum_exp), weight)
        ctx.use_triton, ctx.chunk_tokens, ctx.chunk_vocab = use_triton, chunk_tokens, chunk_vocab
        outputs = ce * weight, weight, ce, entropy
        ctx.mark_non_differentiable(*outputs[1:])
        return outputs

    @staticmethod
    def backward(ctx, grad_weighted_ce, *unused_grads):
        hidden_2d, output_weight, target_col, log_normalizer, weight = ctx.saved_tensors
        coefficient = grad_weighted_ce.float() * weight  # d(w ce)/dz = g w (softmax - onehot)
        n_tokens, width = hidden_2d.size(0), output_weight.size(0)
        fp32 = hidden_2d.dtype == torch.float32
        grad_hidden = torch.zeros(n_tokens, hidden_2d.size(1), dtype=torch.float32, device=hidden_2d.device)
        grad_weight = torch.empty_like(output_weight)  # fp32: accumulated in place, chunk by chunk
        grad_weight_chunk = None if fp32 else torch.empty(min(ctx.chunk_vocab, width), output_weight.size(1),
                                                          dtype=torch.float32, device=output_weight.device)
        block_view = _block_buffer(hidden_2d, min(ctx.chunk_tokens, n_tokens), min(ctx.chunk_vocab, width))
        for v0 in range(0, width, ctx.chunk_vocab):
            v1 = min(v0 + ctx.chunk_vocab, width)
            weight_chunk = output_weight[v0:v1]
            grad_weight_acc = grad_weight[v0:v1] if fp32 else grad_weight_chunk[: v1 - v0]
            grad_weight_acc.zero_()
            for t0 in range(0, n_tokens, ctx.chunk_tokens):
                t1 = min(t0 + ctx.chunk_tokens, n_tokens)
                x = hidden_2d[t0:t1]
                block = LinearCrossEntropySteps.block_gradient_(
                    torch.matmul(x, weight_chunk.T, out=block_view(t0, t1, v0, v1)), log_normalizer[t0:t1],
                    coefficient[t0:t1],
                    _block_target_columns(target_col[t0:t1], v0, v1), ctx.use_triton,
                )
                if fp32:  # accumulate straight into the outputs
                    grad_hidden[t0:t1].addmm_(block, weight_chunk)
                    grad_weight_acc.addmm_(block.T, x)
                else:  # 16-bit products, float32 sums
                    grad_hidden[t0:t1] += block @ weight_chunk
                    grad_weight_acc += block.T @ x
            if not fp32:
                grad_weight[v0:v1].copy_(grad_weight_acc)
        return grad_hidden.to(hidden_2d.dtype), grad_weight, None, None, None, None, None, None, None


def _output_layer_input(hidden: torch.Tensor, tp_group, sequence_parallel: bool) -> torch.Tensor:
    """The hidden states as megatron's column-parallel output layer uses them: all-gathered along
    the sequence under sequence parallelism, else copied into the tensor-parallel region (the
    backward all-reduces the partial gradients of the vocabulary slices)."""
    _, world = _group_rank_size(tp_group)
    if world == 1:
        return hidden
    from megatron.core.tensor_parallel.mappings import (
        copy_to_tensor_model_parallel_region,
        gather_from_sequence_parallel_region,
    )

    if sequence_parallel:
        return gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True, group=tp_group)
    return copy_to_tensor_model_parallel_region(hidden, group=tp_group)


def vocab_parallel_linear_weighted_cross_entropy(
    hidden: torch.Tensor,
    output_weight: torch.Tensor,
    target: torch.Tensor,
    config: LossConfig,
    tp_group: Optional[dist.ProcessGroup] = None,
    sequence_parallel: bool = False,
    chunk_tokens: Optional[int] = None,
    chunk_vocab: Optional[int] = None,
    loss_mask: Optional[torch.Tensor] = None,
    dp_group: Optional[dist.ProcessGroup] = None,
) -> WeightedCrossEntropy:
    """Output layer + weighted cross entropy without the logits (see the module docstring).

    Args:
        hidden: ``[s, b, h]`` final hidden states (this rank's ``s / tp`` sequence shard under
            sequence parallelism).
        output_weight: ``[V/tp, h]`` this rank's rows of the output layer (or tied embedding).
        target: ``[s, b]`` global token ids (the whole sequence).
        config: which loss (any registered weighted cross entropy) and its parameters
            (``config.kernel`` picks the block kernels).
        tp_group: tensor-parallel group; defaults to megatron's.
        sequence_parallel: whether ``hidden`` is sequence-sharded (megatron's output layer gathers it).
        chunk_tokens, chunk_vocab: block shape (speed and memory knobs, not semantic); default
            from :data:`BLOCK_ELEMENTS` and :data:`MAX_CHUNK_VOCAB`.
        loss_mask, dp_group: for weights that depend on the batch (as
            :func:`~megatron_mile.losses.vocab_parallel.vocab_parallel_weighted_cross_entropy`).

    Returns:
        :class:`WeightedCrossEntropy` ``(weighted_ce, weight, ce, entropy)``, float32 ``[s, b]``;
        ``weighted_ce`` is differentiable in ``hidden`` and ``output_weight``.
    """
    if not get_loss(config.loss).weighted_cross_entropy:
        raise ValueError(f"loss {config.loss!r} is not a weighted cross entropy, so it cannot be fused with the "
                         f"output layer: train it without --cross-entropy-fusion-impl linear")
    group = _tp_group(tp_group)
    _, world = _group_rank_size(group)
    if config.check_inputs:
        LinearCrossEntropySteps.check_inputs(hidden, output_weight, target, world, sequence_parallel)
    full_hidden = _output_layer_input(hidden, group, sequence_parallel)
    hidden_2d = full_hidden.reshape(-1, full_hidden.size(-1))
    default_tokens, default_vocab = default_chunks(hidden_2d.size(0), output_weight.size(0), hidden.device)
    terms = _VocabParallelLinearWeightedCrossEntropy.apply(
        hidden_2d, output_weight, target.reshape(-1), config, group,
        chunk_tokens or default_tokens, chunk_vocab or default_vocab,
        None if loss_mask is None else loss_mask.reshape(-1), dp_group,
    )
    return WeightedCrossEntropy(*(t.view(target.shape) for t in terms))


def reference_linear_weighted_cross_entropy(hidden, output_weight, target, config: LossConfig, tp_group=None,
                                            sequence_parallel=False, loss_mask=None, dp_group=None,
                                            dtype=torch.float64) -> WeightedCrossEntropy:
    """Plain reference: this rank's whole logits slice in ``dtype`` (differentiable in ``hidden`` and
    ``output_weight``), then :func:`megatron_mile.losses.reference.reference_weighted_cross_entropy`
    (full-vocabulary log-softmax)."""
    from megatron_mile.losses import reference

    group = _tp_group(tp_group)
    full_hidden = _output_layer_input(hidden, group, sequence_parallel)
    logits = full_hidden.to(dtype) @ output_weight.to(dtype).T
    ce, entropy, _ = reference.reference_terms(logits, target, group, dtype)
    weighted_ce, weight = reference.reference_weighted_cross_entropy(logits, target, config, group, dtype,
                                                                     loss_mask, dp_group)
    return WeightedCrossEntropy(weighted_ce, weight, ce.detach(), entropy)
