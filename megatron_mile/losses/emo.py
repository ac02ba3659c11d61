"""EMO (Ren et al., arXiv 2310.04691): earth mover distance to the one-hot target, vocabulary-parallel,
and its official training objectives (github DRSY/EMO, commit 14da9d5).

With the transport cost ``C(v, y) = 1 - cos(e_v, e_y)`` over the rows ``e`` of a cost matrix (the
output layer, detached, or a frozen copy of one), all of the predicted mass must move to the
target, so the distance is the expected cost

    EMO_t = sum_v q_v C(v, y) = 1 - sum_v q_v c_v,     c_v = ê_v . ê_y   (ê: unit rows),

linear in the predicted distribution ``q``. Per token, with this rank's vocabulary slice of the
logits ``[s, b, V/tp]`` and of the cost rows ``[V/tp, h]`` (megatron's layouts):

* collective 1 (SUM, ``[tokens, h]``): the target's unit row ``ê_y`` reaches every rank (its owner
  contributes it, the others zeros); every ``c_v`` of the slice needs it;
* the shared sweep of :class:`~megatron_mile.losses.vocab_parallel.VocabParallelWeightedCrossEntropy`
  (``m``, ``s``, ``a``; the logits become the slice's softmax ``p``), with one extra per-row
  reduction in the same pass, ``r = sum p c`` (one ``[chunk, V/tp]`` matrix product per chunk of
  tokens, never kept whole); ``u = s r = sum e c``;
* collective 2 (MAX of ``m``), then collective 3 (SUM of the stacked ``[s, a, z_y - M, u]``
  rescaled to the global max ``M``);
* ``ce = log S - (z_y - M)``, ``H = log S - A / S``, ``EMO = 1 - U / S``;
* backward, per chunk with ``c`` recomputed: ``dce/dz = q - onehot(y)``, ``dEMO/dz = -q (c - U / S)``
  with ``q = p s exp(m - M) / S``, written over the logits buffer (consumed, as megatron's CE does).

Training objectives (``--emo-variant``; per token ``t``, ``mle = ce``, ``sg`` = detached, masked
positions (``loss_mask`` = 0) get 0 and enter no ratio; the objective is the masked token mean):

* ``lm`` (default): ``0.5 (mle + sg(mle / (emo + 1e-10)) emo)``;
  ``language_modeling/gpt2.py``, mode ``emo``;
* ``lm_adaptive``: the same with ``emo' = emo + sg(q_y)`` and the current head as cost;
  ``language_modeling/gpt2.py``, mode ``adaptive_emo``;
* ``continual``: ``0.5 (min(sg(mle / (emo' + 1e-10)), 3) emo' + mle)``;
  ``continual_finetuning/emo_llama.py``, ``EMOLlamaForCausalLM``;
* ``continual_emo2``: ``sg(emo' / (mle + 1e-10)) mle + emo'``;
  ``continual_finetuning/emo_llama.py``, ``EMOLlama2ForCausalLM``;
* ``batch_ratio``: ``0.5 (mle + r emo)`` with ``r = sg(sum mle / sum emo)`` over the micro-batch's
  counted tokens; no official file: this project's earlier form, a departure.

``emo' = emo + sg(q_y)``: the official code subtracts the target's own probability, detached, from
``q`` before the product (``q - sg(q * onehot)``), which adds ``q_y c_yy = q_y`` to the value and
nothing to the gradient. The official one-hot is smoothed by 1e-15 per entry (``stable_onehot``),
which moves the value by at most ~1e-15 V; it is left out here.

The cost (``--emo-cost``): ``current`` (the output layer being trained, detached; the adaptive
variant), ``initial`` (a frozen copy of the output layer as initialised, taken before any
checkpoint is loaded, so a resumed run takes the same copy), ``checkpoint`` (a frozen copy of the
output layer of a megatron-mile checkpoint, ``--emo-cost-checkpoint``: the official from-scratch
and continual runs take a pretrained model's head, GPT-2 large and Llama-2-13B). ``auto``: current
for ``lm_adaptive`` and ``batch_ratio``, otherwise ``checkpoint`` when ``--emo-cost-checkpoint`` is
given, else ``initial``.

The plain reference is ``reference.reference_emo``.
"""

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_mile.losses.registry import Loss, LossParam
from megatron_mile.losses.vocab_parallel import (
    VocabParallelWeightedCrossEntropy,
    WeightedCrossEntropy,
    _group_rank_size,
    _tp_group,
    combine_over_tensor_parallel_ranks,
    default_chunk_tokens,
)

VARIANTS = ("lm", "lm_adaptive", "continual", "continual_emo2", "batch_ratio")
COST_SOURCES = ("auto", "current", "initial", "checkpoint")
RATIO_EPS = 1e-10  # the official code's guard in every ratio
CONTINUAL_RATIO_CLIP = 3.0  # continual_finetuning/emo_llama.py: min(mle / emo, 3)


class EmoTerms(NamedTuple):
    """Per-token outputs, each ``[s, b]`` float32. ``ce`` and ``emo`` carry gradients."""

    ce: torch.Tensor
    emo: torch.Tensor
    entropy: torch.Tensor


def _unit_rows(weight: torch.Tensor) -> torch.Tensor:
    return F.normalize(weight.detach().float(), dim=-1)


class _VocabParallelEMO(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, output_weight, tp_group, chunk_tokens, vocab_size):
        steps = VocabParallelWeightedCrossEntropy
        rank, world = _group_rank_size(tp_group)
        width = vocab_parallel_logits.size(-1)
        vocab_size = width * world if vocab_size is None else vocab_size
        steps.check_inputs(vocab_parallel_logits, target, vocab_size)
        if output_weight.dim() != 2 or output_weight.size(0) != width:
            raise ValueError(f"output_weight {tuple(output_weight.shape)} must be this rank's [V/tp = {width}, h] "
                             f"slice of the output layer")
        buffer = vocab_parallel_logits.contiguous()
        logits_2d = buffer.view(-1, width)
        target_1d = target.reshape(-1).long()
        unit = _unit_rows(output_weight).to(logits_2d.device)
        first_padded = max(0, vocab_size - rank * width)
        if first_padded < width:  # padding rows: no probability (exp(min - M) = 0), so no cost and no gradient
            logits_2d[:, first_padded:] = torch.finfo(logits_2d.dtype).min

        rows, cols = steps.owned_targets(target_1d, rank * width, width)
        target_unit = torch.zeros(target_1d.numel(), unit.size(1), dtype=torch.float32, device=unit.device)
        target_unit[rows] = unit[cols]
        if world > 1:
            dist.all_reduce(target_unit, op=dist.ReduceOp.SUM, group=tp_group)
        target_logit = logits_2d[rows, cols].float()  # read before the sweep overwrites the logits

        def similarity_sum(chunk: slice, p: torch.Tensor) -> torch.Tensor:  # sum_v p_v c_v per row
            return torch.linalg.vecdot(p, target_unit[chunk] @ unit.T)

        local_max, sum_exp, sum_shifted_exp, sum_p_similarity = steps.local_statistics(
            logits_2d, chunk_tokens, similarity_sum)
        sum_exp_similarity = sum_p_similarity * sum_exp
        global_max, local_sum_exp, sum_exp, sum_shifted_exp, target_shifted, (sum_exp_similarity,) = \
            combine_over_tensor_parallel_ranks(local_max, sum_exp, sum_shifted_exp, rows, target_logit, tp_group,
                                               world, extra_row_sums=(sum_exp_similarity,))

        ce, entropy, _ = steps.token_terms(sum_exp, sum_shifted_exp, target_shifted)
        expected_similarity = sum_exp_similarity / sum_exp
        emo = 1.0 - expected_similarity
        slice_share = local_sum_exp / sum_exp  # q = p * slice_share: this slice's share of the mass

        ctx.save_for_backward(buffer, unit, target_unit, slice_share, expected_similarity,
                              steps.target_columns(target_1d, rows, cols))
        ctx.chunk_tokens = chunk_tokens
        shape = target.shape
        ctx.mark_non_differentiable(entropy)
        return ce.view(shape), emo.view(shape), entropy.view(shape)

    @staticmethod
    def backward(ctx, grad_ce, grad_emo, unused_grad_entropy):
        buffer, unit, target_unit, slice_share, expected_similarity, target_col = ctx.saved_tensors
        logits_2d = buffer.view(-1, buffer.size(-1))
        grad_ce = grad_ce.reshape(-1).float()
        grad_emo = grad_emo.reshape(-1).float()
        n_rows = logits_2d.size(0)
        for start in range(0, n_rows, ctx.chunk_tokens):
            sl = slice(start, min(start + ctx.chunk_tokens, n_rows))
            q = logits_2d[sl].float().mul_(slice_share[sl].unsqueeze(-1))  # the buffer holds the slice's softmax
            # d/dz [g_ce ce + g_emo EMO] = q (g_ce - g_emo (c - U / S)) - g_ce onehot
            similarity = target_unit[sl] @ unit.T
            coefficient = similarity.sub_(expected_similarity[sl].unsqueeze(-1)).mul_(-grad_emo[sl].unsqueeze(-1))
            grad = q.mul_(coefficient.add_(grad_ce[sl].unsqueeze(-1)))
            local_rows = (target_col[sl] >= 0).nonzero().squeeze(-1)
            grad[local_rows, target_col[sl][local_rows]] -= grad_ce[sl][local_rows]
            logits_2d[sl] = grad.to(logits_2d.dtype)
        return buffer, None, None, None, None, None


def vocab_parallel_emo(
    vocab_parallel_logits: torch.Tensor,
    target: torch.Tensor,
    output_weight: torch.Tensor,
    tp_group: Optional[dist.ProcessGroup] = None,
    chunk_tokens: Optional[int] = None,
    vocab_size: Optional[int] = None,
) -> EmoTerms:
    """Cross entropy, EMO and predicted entropy per token, never gathering the vocabulary.

    Args:
        vocab_parallel_logits: ``[s, b, V/tp]`` logits of this rank's vocabulary slice (consumed).
        target: ``[s, b]`` global token ids.
        output_weight: ``[V/tp, h]`` this rank's rows of the cost matrix (the output layer, its tied
            embedding, or a frozen copy); only their directions are used, and no gradient flows into them.
        tp_group: tensor-parallel group (anything with ``rank()`` and ``size()`` that the collectives
            accept); defaults to megatron's.
        chunk_tokens: tokens per chunk (bounds the ``[chunk, V/tp]`` float32 scratch).
        vocab_size: the tokenizer's vocabulary; the rows at or above it (megatron's padding) take no
            part: no probability, no cost, zero gradient, as in the official code, which has no
            padding. None: every row counts.

    Returns:
        :class:`EmoTerms` ``(ce, emo, entropy)``, float32 ``[s, b]``; ``ce`` and ``emo`` differentiable;
        ``emo = 1 - sum_v q_v cos(e_v, e_y)``.
    """
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(vocab_parallel_logits.size(-1), vocab_parallel_logits.device)
    return EmoTerms(*_VocabParallelEMO.apply(vocab_parallel_logits, target, output_weight, _tp_group(tp_group),
                                             chunk_tokens, vocab_size))


def emo_training_loss(variant: str, ce: torch.Tensor, emo: torch.Tensor,
                      loss_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The per-token loss of ``variant`` (module docstring) from ``ce`` and ``emo`` (as
    :func:`vocab_parallel_emo` returns them); 0 where ``loss_mask`` is 0 (None: every position counts)."""
    if variant not in VARIANTS:
        raise ValueError(f"EMO variant must be one of {VARIANTS}, got {variant!r}")
    counted = torch.ones_like(ce) if loss_mask is None else (loss_mask > 0).to(ce.dtype)
    mle = ce * counted  # the official code's ignored labels give mle = 0, and so a ratio of 0
    if variant == "batch_ratio":
        ratio = (mle.detach().sum() / (emo.detach() * counted).sum().clamp_min(torch.finfo(torch.float32).tiny))
        return 0.5 * (mle + ratio * emo * counted)
    if variant != "lm":
        emo = emo + torch.exp(-ce.detach())  # q - sg(q onehot): + sg(q_y) c_yy, c_yy = 1
    if variant == "continual_emo2":
        return ((emo.detach() / (mle.detach() + RATIO_EPS)) * mle + emo) * counted
    ratio = mle.detach() / (emo.detach() + RATIO_EPS)
    if variant == "continual":
        ratio = ratio.clamp_max(CONTINUAL_RATIO_CLIP)
    return 0.5 * (mle + ratio * emo) * counted


def cost_source(values) -> str:
    """Where the cost rows come from for these EMO parameters: 'current', 'initial' or 'checkpoint'."""
    if values["emo_cost"] != "auto":
        return values["emo_cost"]
    if values["emo_variant"] in ("lm_adaptive", "batch_ratio"):
        return "current"
    return "checkpoint" if values["emo_cost_checkpoint"] else "initial"


class EMO(Loss):
    name = "emo"
    summary = "EMO, earth mover distance to the target combined with maximum likelihood (--emo-variant)"
    paper = "arXiv 2310.04691"
    weighted_cross_entropy = False
    params = (
        LossParam("emo_variant", "lm", "EMO objective, as in the official code (github DRSY/EMO): lm "
                  "(language_modeling/gpt2.py, training from scratch), lm_adaptive, continual (ratio clipped at 3), "
                  "continual_emo2 (continual_finetuning/emo_llama.py), batch_ratio (this project's earlier "
                  "per-micro-batch ratio, a departure).", choices=VARIANTS),
        LossParam("emo_cost", "auto", "EMO cost rows: the current output layer, a frozen copy of it as initialised, "
                  "or a frozen copy from --emo-cost-checkpoint; auto: the variant's (see README).",
                  choices=COST_SOURCES),
        LossParam("emo_cost_checkpoint", "", "A megatron-mile checkpoint (a --save directory or one iter_N) whose "
                  "output layer is the frozen EMO cost (same padded vocabulary)."),
    )

    def check(self, values):
        source = cost_source(values)
        if source == "checkpoint" and not values["emo_cost_checkpoint"]:
            raise ValueError("--emo-cost checkpoint needs --emo-cost-checkpoint DIR (a --save directory or iter_N)")
        if values["emo_cost_checkpoint"] and source != "checkpoint":
            raise ValueError(f"--emo-cost-checkpoint is read only with --emo-cost checkpoint or auto; the cost here "
                             f"is {source!r}")

    def prepare(self, config, model) -> None:
        """Take the frozen cost rows (``model.frozen_output_weight``) when the cost source asks for them;
        called once the model is built and initialised, before any checkpoint is loaded."""
        source = cost_source(config.params)
        if source == "initial":
            model.frozen_output_weight = model.output_weight().detach().float().clone()
        elif source == "checkpoint":
            model.frozen_output_weight = load_output_weight(config.params["emo_cost_checkpoint"], model)

    def language_model_loss(self, config, logits, labels, *, tp_group, loss_mask, dp_group, output_weight):
        terms = vocab_parallel_emo(logits, labels, output_weight, tp_group=tp_group, vocab_size=config.vocab_size)
        ce = terms.ce.detach()
        loss = emo_training_loss(config.params["emo_variant"], terms.ce, terms.emo, loss_mask)
        return WeightedCrossEntropy(loss, torch.ones_like(ce), ce, terms.entropy)


def load_output_weight(checkpoint_dir: str, model) -> torch.Tensor:
    """This rank's ``[V/tp, h]`` rows of the output layer stored in a megatron-mile checkpoint (its
    ``output_layer.weight``, or its word embeddings when they were tied), float32. Read by this rank
    alone (no collective, whatever the layout that saved it): the whole ``[V, h]`` matrix, then this
    rank's rows."""
    import torch.distributed.checkpoint as dcp

    from megatron_mile.training.checkpointing import load_args

    _, path = load_args(checkpoint_dir)
    local = model.output_weight()
    tp_rank, tp_size = model.pg_collection.tp.rank(), model.pg_collection.tp.size()
    reader = dcp.FileSystemReader(path)
    stored = reader.read_metadata().state_dict_metadata
    key = "output_layer.weight" if "output_layer.weight" in stored else "embedding.word_embeddings.weight"
    shape = tuple(stored[key].size)
    if shape != (local.size(0) * tp_size, local.size(1)):
        raise ValueError(f"--emo-cost-checkpoint {checkpoint_dir}: its {key} is {list(shape)}, this model's output "
                         f"layer is [{local.size(0) * tp_size}, {local.size(1)}] (padded vocabulary, hidden size)")
    full = torch.empty(shape, dtype=stored[key].properties.dtype)
    dcp.load({key: full}, storage_reader=reader, no_dist=True)
    rows = local.size(0)
    return full[tp_rank * rows:(tp_rank + 1) * rows].float().clone()


LOSS = EMO()
