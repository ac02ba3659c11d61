"""The GPT model: megatron-core's ``GPTModel`` with the token-weighted loss, and its layer specs.

Only the loss changes. :class:`MileGPTModel` overrides ``compute_language_model_loss`` (the hook
``GPTModel._postprocess`` calls with the labels and the vocabulary-parallel logits), so every layer
spec, pipeline schedule and parallel layout megatron-core supports keeps working. The hook returns
what megatron's returns, the per-token loss ``[b, s]`` that carries the gradient (here
``w * ce``), and leaves the detached per-token weight, cross entropy and entropy in
``model.token_statistics`` for the training loop's loss function (which runs right after the
forward pass of the same micro-batch, on the last pipeline stage).

With the output layer fused into the loss (``--fused-output-loss``), ``_postprocess`` is overridden
once: a loss computation skips the logits and returns the same per-token loss and statistics from
the hidden states (:meth:`MileGPTModel.fused_output_layer_loss`); multi-token prediction, inference
and logits requests (no labels) take megatron's path unchanged.

Layer specs (:func:`gpt_layer_spec`): transformer-engine's spec when it is requested (default on
GPU when TE is importable), megatron's local spec otherwise. In the local spec, core attention is
:class:`SDPACoreAttention` (torch's ``scaled_dot_product_attention``: flash / cuDNN /
memory-efficient kernels on GPU, no ``[b, heads, s, s]`` scores in memory) for
``--attention-backend auto|flash|fused``, swapped in through the spec's ``core_attention``
submodule, and megatron's ``DotProductAttention`` (which materialises the scores and the mask)
for ``unfused|local``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import ModuleSpec, TransformerConfig
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from megatron_mile.losses import LossConfig, get_loss, loss_config_from_args
from megatron_mile.losses.linear_cross_entropy import vocab_parallel_linear_weighted_cross_entropy

__all__ = [
    "MileGPTModel",
    "SDPACoreAttention",
    "TokenStatistics",
    "gpt_layer_spec",
    "initialize_layout_invariant_",
    "padded_vocab_size",
]


class SDPACoreAttention(MegatronModule):
    """Core attention with ``torch.nn.functional.scaled_dot_product_attention`` (portable: CPU or GPU).

    A drop-in for megatron's ``DotProductAttention`` in ``SelfAttentionSubmodules.core_attention``:
    same constructor arguments, same tensors in and out (queries ``[sq, b, np, hn]``, keys/values
    ``[sk, b, ng, hn]`` with ``np`` heads and ``ng`` query groups on this TP rank; output
    ``[sq, b, np * hn]``). Attention dropout runs in the tensor-parallel RNG stream, as megatron's.
    The constructor's parameters are ``DotProductAttention``'s, in its order, in megatron-core
    0.16.1 through 0.19.x (tests/test_platform.py compares them with the installed release).
    """

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str = "self", attention_dropout: Optional[float] = None,
                 softmax_scale: Optional[float] = None, cp_comm_type: Optional[str] = None,
                 pg_collection=None):
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            raise ValueError("SDPACoreAttention does not support context parallelism")
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPACoreAttention supports neither packed sequences nor attention bias")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        sq, b, n_heads, head_dim = query.shape
        n_groups = key.shape[2]
        # [s, b, h, d] -> [b, h, s, d]; repeat each key/value group for its queries (GQA).
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        if n_groups != n_heads:
            k = k.repeat_interleave(n_heads // n_groups, dim=1)
            v = v.repeat_interleave(n_heads // n_groups, dim=1)
        scale = self.softmax_scale if self.softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        if attention_mask is not None:
            mask_kwargs = dict(attn_mask=~attention_mask)  # megatron: True = masked out
        else:
            mask_kwargs = dict(is_causal=mask_type == AttnMaskType.causal)
        dropout_p = self.dropout_p if self.training else 0.0
        if dropout_p > 0:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale, **mask_kwargs)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=scale, **mask_kwargs)
        return out.permute(2, 0, 1, 3).reshape(sq, b, n_heads * head_dim)


SDPA_ATTENTION_BACKENDS = ("auto", "flash", "fused")
"""``--attention-backend`` values that run :class:`SDPACoreAttention` in the local spec."""


def gpt_layer_spec(transformer_impl: str, normalization: str, sdpa_attention: bool) -> ModuleSpec:
    """The transformer-layer spec.

    ``transformer_impl``: 'transformer_engine' (TE's fused layers, GPU; TE picks its attention
    kernel from ``config.attention_backend``) or 'local' (megatron-core modules);
    ``sdpa_attention`` swaps the local spec's core attention for :class:`SDPACoreAttention`."""
    if transformer_impl == "transformer_engine":
        # TE's fused LayerNormLinear reads the normalisation type from the config.
        return get_gpt_layer_with_transformer_engine_spec()
    spec = get_gpt_layer_local_spec(normalization=normalization)
    if sdpa_attention:
        spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec


@dataclass
class TokenStatistics:
    """Detached per-token terms of the last loss computation, each ``[b, s]`` float32."""

    weight: torch.Tensor
    """Loss weight ``w`` (1 for cross entropy)."""
    cross_entropy: torch.Tensor
    """Plain cross entropy ``-log p_target``."""
    entropy: torch.Tensor
    """Entropy of the predicted distribution over the (padded) vocabulary."""


class MileGPTModel(GPTModel):
    """megatron-core's GPT with a language-model loss from the loss registry (cross entropy, MiLe,
    focal, DFT, ESLM, EMO; :mod:`megatron_mile.losses.registry`).

    Takes ``GPTModel``'s arguments plus ``loss_config``. With ``LossConfig(loss='cross_entropy')``
    the loss and its gradient are megatron's vocabulary-parallel cross entropy. ``forward`` takes
    megatron's ``loss_mask`` keyword ``[b, s]`` and hands it to the loss (ESLM's quantile and EMO's
    ratio count only the masked-in tokens; without it every position counts)."""

    def __init__(self, *args, loss_config: LossConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_config = loss_config
        self.token_statistics: Optional[TokenStatistics] = None
        # Cost rows frozen by the loss (EMO's initial or checkpoint cost), this rank's [V/tp, h].
        self.frozen_output_weight: Optional[torch.Tensor] = None
        self._loss_mask: Optional[torch.Tensor] = None

    def forward(self, *args, loss_mask: Optional[torch.Tensor] = None, **kwargs):
        self._loss_mask = loss_mask
        try:
            return super().forward(*args, loss_mask=loss_mask, **kwargs)
        finally:
            self._loss_mask = None

    def prepare_loss(self) -> None:
        """Let the loss take what it needs from the freshly initialised model (before a checkpoint is
        loaded); on the chunk that computes the loss only."""
        if self.post_process:
            get_loss(self.loss_config.loss).prepare(self.loss_config, self)

    def output_weight(self) -> torch.Tensor:
        """This rank's ``[V/tp, h]`` rows of the output layer (the word embeddings when tied)."""
        if self.share_embeddings_and_output_weights:
            return self.shared_embedding_or_output_weight()
        return self.output_layer.weight

    def _cost_weight(self, device) -> torch.Tensor:
        if self.frozen_output_weight is None:
            return self.output_weight()
        if self.frozen_output_weight.device != device:
            self.frozen_output_weight = self.frozen_output_weight.to(device)
        return self.frozen_output_weight

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Per-token loss as ``[b, s]`` (``w * ce`` for the weighted cross entropies) from labels
        ``[b, s]`` and logits ``[s, b, V/tp]``; the detached terms go to ``self.token_statistics``."""
        labels = labels.transpose(0, 1).contiguous()  # [b, s] -> [s, b], the logits' layout
        loss_mask = None if self._loss_mask is None else self._loss_mask.transpose(0, 1).contiguous()
        loss = get_loss(self.loss_config.loss)
        terms = loss.language_model_loss(self.loss_config, logits, labels, tp_group=self.pg_collection.tp,
                                         loss_mask=loss_mask, dp_group=self.pg_collection.dp_cp,
                                         output_weight=self._cost_weight(logits.device))
        self.token_statistics = TokenStatistics(
            weight=terms.weight.detach().transpose(0, 1),
            cross_entropy=terms.ce.detach().transpose(0, 1),
            entropy=terms.entropy.detach().transpose(0, 1),
        )
        return terms.weighted_ce.transpose(0, 1).contiguous()

    @property
    def fuses_output_layer_and_loss(self) -> bool:
        """Whether the output layer and the loss run as one op (``--fused-output-loss``): megatron-core's
        ``cross_entropy_loss_fusion`` with ``cross_entropy_fusion_impl='linear'``, the fields
        Megatron-LM's development branch reads for its own fused linear cross entropy."""
        return bool(self.config.cross_entropy_loss_fusion) and self.config.cross_entropy_fusion_impl == "linear"

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, **kwargs):
        """megatron's post-processing, except for a loss with the fused output layer: labels given, no
        multi-token prediction and no inference context; those keep megatron's path unchanged."""
        if not (self.fuses_output_layer_and_loss and self.post_process and labels is not None
                and self.config.mtp_num_layers is None and kwargs.get("inference_context") is None):
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args, **kwargs)
        return self.fused_output_layer_loss(labels, hidden_states)

    def fused_output_layer_loss(self, labels: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """What ``compute_language_model_loss(labels, output_layer(hidden_states))`` returns, from the
        final hidden states ``[s, b, h]`` without the logits (:mod:`megatron_mile.losses.linear_cross_entropy`)."""
        mask = None if self._loss_mask is None else self._loss_mask.transpose(0, 1).contiguous()
        terms = vocab_parallel_linear_weighted_cross_entropy(
            hidden_states, self.output_weight(), labels.transpose(0, 1).contiguous(), self.loss_config,
            tp_group=self.pg_collection.tp, sequence_parallel=self.output_layer.sequence_parallel,
            loss_mask=mask, dp_group=self.pg_collection.dp_cp)
        self.token_statistics = TokenStatistics(*(t.detach().transpose(0, 1) for t in terms[1:]))
        return terms.weighted_ce.transpose(0, 1).contiguous()


def padded_vocab_size(vocab_size: int, divisible_by: int, tp_size: int) -> int:
    """Megatron-LM's padding: round the vocabulary up to a multiple of ``divisible_by * tp_size``.

    The padded rows are ordinary output rows (they take part in the softmax, and so in the
    entropy MiLe weights by), never targets."""
    multiple = divisible_by * tp_size
    return int(math.ceil(vocab_size / multiple) * multiple)


_OUTPUT_PROJECTIONS = ("linear_proj.weight", "linear_fc2.weight")
_EMBEDDINGS = ("embedding.word_embeddings.weight", "embedding.position_embeddings.weight")


def _global_parameter_name(model: GPTModel, local_name: str) -> str:
    """``decoder.layers.<i>.`` with the layer's index in the whole model instead of in this chunk."""
    parts = local_name.split(".")
    if parts[:2] == ["decoder", "layers"]:
        parts[2] = str(model.decoder.layers[int(parts[2])].layer_number - 1)
    return ".".join(parts)


@torch.no_grad()
def initialize_layout_invariant_(model_chunks: Iterable[GPTModel], config: TransformerConfig, seed: int) -> None:
    """Redraw every weight matrix so that the initial model does not depend on the TP/PP/VPP layout.

    megatron's CPU initialisation builds each full matrix and keeps this rank's slice, so it is
    TP-invariant, but the stages of a pipeline draw from the CPU generator in different orders,
    which makes PP=2 a different model from PP=1. Here each matrix is drawn (with megatron's own
    init method for it) from a generator seeded by ``seed`` and its global parameter name, then
    sliced exactly as megatron's CPU init slices (``partition_dim`` and ``partition_stride``).
    Vectors (norm weights = 1, biases = 0) are deterministic already and stay as built.
    """
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    for model in model_chunks:
        for local_name, param in model.named_parameters():
            if param.dim() < 2:
                continue
            name = _global_parameter_name(model, local_name)
            if name == "output_layer.weight" and model.share_embeddings_and_output_weights:
                name = "embedding.word_embeddings.weight"  # last stage's copy of the tied embedding
            if name.endswith(_OUTPUT_PROJECTIONS):
                init = config.output_layer_init_method
            elif name in _EMBEDDINGS:
                init = config.embedding_init_method
            else:
                init = config.init_method
            sharded = getattr(param, "tensor_model_parallel", False) and tp_size > 1
            shape = list(param.shape)
            if sharded:
                shape[param.partition_dim] *= tp_size
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
                master = torch.empty(shape, dtype=torch.float32)
                init(master)
            if sharded:
                stride = getattr(param, "partition_stride", 1)
                chunk = shape[param.partition_dim] // tp_size // stride
                pieces = torch.split(master, chunk, dim=param.partition_dim)
                master = torch.cat(pieces[tp_rank::tp_size], dim=param.partition_dim)
            param.copy_(master)


def gpt_model_from_args(args, config: TransformerConfig, pre_process: bool = True, post_process: bool = True,
                        vp_stage: Optional[int] = None) -> MileGPTModel:
    """The model provider: one :class:`MileGPTModel` (chunk) for the training flags ``args``
    (``megatron_mile.training.arguments``); ``args.padded_vocab_size`` must be set."""
    spec = gpt_layer_spec(args.transformer_impl, args.normalization,
                          sdpa_attention=args.attention_backend in SDPA_ATTENTION_BACKENDS)
    return MileGPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
        vp_stage=vp_stage,
        loss_config=loss_config_from_args(args),
    )
