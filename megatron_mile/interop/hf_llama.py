"""megatron-core GPT checkpoints <-> Hugging Face ``transformers`` ``LlamaForCausalLM``, weights exact.

Export (:func:`export_checkpoint`, ``mile-export-hf``): the checkpoint is rebuilt as one TP=1/PP=1
model by :func:`megatron_mile.training.checkpointing.load_model_for_eval` (``dist_checkpointing``
reassembles any TP / PP / virtual-pipeline layout), its parameters are renamed and split as below,
the padded vocabulary rows are dropped, and a ``LlamaForCausalLM`` directory is written: config.json,
model.safetensors, generation_config.json and the tokenizer. Import (:func:`import_checkpoint`,
``mile-import-hf``) is the reverse: a ``LlamaForCausalLM`` directory becomes a weights-only
checkpoint at iteration 0 with ``args.json``, which ``mile-pretrain --load`` continues.

Parameters (megatron-core 0.16 names at TP=1, layer L; ``n`` heads, ``g`` query groups, head size
``d``, FFN size ``f``, vocabulary ``V`` padded to ``V_pad``)::

    embedding.word_embeddings.weight [V_pad, h]    model.embed_tokens.weight [V, h]
    decoder.layers.L.input_layernorm.weight        model.layers.L.input_layernorm.weight
      (TE spec: self_attention.linear_qkv.layer_norm_weight)
    decoder.layers.L.self_attention.linear_qkv.weight [g * (n/g + 2) * d, h]
      per query group: its n/g query heads, then its key head, then its value head
                                                   self_attn.q_proj [n*d, h], k_proj, v_proj [g*d, h]
    decoder.layers.L.self_attention.linear_proj.weight   self_attn.o_proj.weight
    decoder.layers.L.pre_mlp_layernorm.weight      model.layers.L.post_attention_layernorm.weight
      (TE spec: mlp.linear_fc1.layer_norm_weight)
    decoder.layers.L.mlp.linear_fc1.weight [2f, h] = [gate; up]   mlp.gate_proj, mlp.up_proj [f, h]
    decoder.layers.L.mlp.linear_fc2.weight         mlp.down_proj.weight
    decoder.final_layernorm.weight                 model.norm.weight
    output_layer.weight [V_pad, h] (untied only)   lm_head.weight [V, h] (tied: the embedding)

The rest of the computation is the same in both: RMSNorm in float32, ``silu(gate) * up``, rotary
embeddings on every head dimension in the rotate-half convention (megatron's default,
``rotary_interleaved=False``) with ``inv_freq = base^(-2i/d)``, softmax scale ``1/sqrt(d)``,
query head ``i`` attending with key/value group ``i // (n/g)``.

Padded vocabulary rows. megatron pads the vocabulary to a multiple of
``--make-vocab-size-divisible-by`` x TP; those rows are never targets but take part in its softmax.
The export keeps the tokenizer's ``V`` rows only (logits of real tokens are unchanged; log-probabilities
equal megatron's exactly when there is no padding, else they leave out the padded rows' probability
mass). The import pads as Megatron-LM's checkpoint converter does, replicating the last row.

Refused with one line naming the problem: GPT-2-style checkpoints (LayerNorm, GELU, learned
positions, biases), partial rotary, Hugging Face models other than ``LlamaForCausalLM``, rope
scaling other than the default, attention or MLP biases, activations other than SiLU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

__all__ = [
    "InteropError",
    "LlamaShape",
    "export_checkpoint",
    "hf_to_megatron_weights",
    "import_checkpoint",
    "llama_config_from_args",
    "megatron_to_hf_weights",
    "unsupported_for_llama",
]

# Texts every exported tokenizer must encode exactly as the training tokenizer does (whitespace
# runs, digits, non-ASCII and NFKC-sensitive characters, byte fallback).
PROBE_TEXTS = (
    "Hello world",
    "  two leading spaces, inner   runs and a trailing one ",
    "digits 12345 and 3.14159, punctuation!? (brackets) [x] {y} <z>",
    "tab\tand\nnewline\r\nlines",
    "ünïcödé ﬁ Ⅻ ① — “quotes” ‘single’ …",
    "日本語のテキスト, 中文, русский, ελληνικά",
    "emoji 😀 and ▁ metaspace",
)

# The transformer-engine spec fuses the layer norms into the next linear layer; the local spec
# keeps them apart (megatron maps the one to the other in checkpoints the same way).
_TE_NORM_NAMES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
_HF_ARCHITECTURE = "LlamaForCausalLM"


class InteropError(ValueError):
    """A model, checkpoint or directory that cannot be converted faithfully (the message names it)."""


def _require_transformers_5() -> None:
    """transformers 4 spells the rotary base ``rope_theta`` and the dtype ``torch_dtype``: a silent
    default there would give another model, so refuse instead."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        raise InteropError(f"needs transformers >= 5 (installed: {transformers.__version__}); "
                           f"pip install -U 'transformers>=5'")


@dataclass
class LlamaShape:
    """What the weight mapping needs to know about the model."""

    num_layers: int
    """Transformer layers."""
    num_attention_heads: int
    """Query heads ``n``."""
    num_query_groups: int
    """Key/value heads ``g`` (``n`` without grouped-query attention)."""
    head_dim: int
    """Size ``d`` of one head (megatron's ``kv_channels``)."""
    tied_embeddings: bool
    """Whether the output layer is the input embedding."""

    @classmethod
    def from_training_args(cls, args: argparse.Namespace) -> "LlamaShape":
        return cls(args.num_layers, args.num_attention_heads, args.num_query_groups,
                   args.kv_channels or args.hidden_size // args.num_attention_heads,
                   not args.untie_embeddings_and_output_weights)

    @classmethod
    def from_hf_config(cls, config) -> "LlamaShape":
        return cls(config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
                   config.head_dim, bool(config.tie_word_embeddings))


# ------------------------------------------------------------------------------------------ weights
def _split_qkv(qkv: torch.Tensor, shape: LlamaShape):
    per_group = shape.num_attention_heads // shape.num_query_groups
    grouped = qkv.reshape(shape.num_query_groups, per_group + 2, shape.head_dim, -1)
    hidden = qkv.shape[-1]
    return (grouped[:, :per_group].reshape(-1, hidden).clone(),
            grouped[:, per_group].reshape(-1, hidden).clone(),
            grouped[:, per_group + 1].reshape(-1, hidden).clone())


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: LlamaShape) -> torch.Tensor:
    g, d, hidden = shape.num_query_groups, shape.head_dim, q.shape[-1]
    per_group = shape.num_attention_heads // g
    return torch.cat([q.reshape(g, per_group, d, hidden), k.reshape(g, 1, d, hidden),
                      v.reshape(g, 1, d, hidden)], dim=1).reshape(-1, hidden)


def _layer_names(i: int) -> Dict[str, str]:
    """megatron (local spec) name -> transformers name for the one-to-one parameters of layer ``i``."""
    m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
    return {m + "input_layernorm.weight": h + "input_layernorm.weight",
            m + "self_attention.linear_proj.weight": h + "self_attn.o_proj.weight",
            m + "pre_mlp_layernorm.weight": h + "post_attention_layernorm.weight",
            m + "mlp.linear_fc2.weight": h + "mlp.down_proj.weight"}


def _local_spec_names(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The state with transformer-engine names turned into the local spec's, TE's ``_extra_state``
    (FP8 metadata, no weights) dropped."""
    out = {}
    for name, value in state.items():
        if name.endswith("_extra_state"):
            continue
        for te_name, local_name in _TE_NORM_NAMES.items():
            if name.endswith(te_name):
                name = name[:-len(te_name)] + local_name
        out[name] = value
    return out


def megatron_to_hf_weights(state: Dict[str, torch.Tensor], shape: LlamaShape,
                           vocab_size: int) -> Dict[str, torch.Tensor]:
    """``LlamaForCausalLM`` state dict from a TP=1 megatron-core GPT state dict (local or TE spec);
    the embedding and output rows beyond ``vocab_size`` (megatron's padding) are dropped."""
    state = _local_spec_names(state)
    hf = {}

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise InteropError(f"the checkpoint has no parameter {name}")
        return state.pop(name)

    embedding = take("embedding.word_embeddings.weight")
    if embedding.shape[0] < vocab_size:
        raise InteropError(f"the embedding has {embedding.shape[0]} rows, fewer than the tokenizer's "
                           f"{vocab_size} tokens")
    hf["model.embed_tokens.weight"] = embedding[:vocab_size].clone()
    for i in range(shape.num_layers):
        for m_name, h_name in _layer_names(i).items():
            hf[h_name] = take(m_name)
        prefix = f"model.layers.{i}."
        q, k, v = _split_qkv(take(f"decoder.layers.{i}.self_attention.linear_qkv.weight"), shape)
        hf[prefix + "self_attn.q_proj.weight"], hf[prefix + "self_attn.k_proj.weight"] = q, k
        hf[prefix + "self_attn.v_proj.weight"] = v
        gate, up = take(f"decoder.layers.{i}.mlp.linear_fc1.weight").chunk(2, dim=0)
        hf[prefix + "mlp.gate_proj.weight"], hf[prefix + "mlp.up_proj.weight"] = gate.clone(), up.clone()
    hf["model.norm.weight"] = take("decoder.final_layernorm.weight")
    if shape.tied_embeddings:
        hf["lm_head.weight"] = hf["model.embed_tokens.weight"]
    else:
        hf["lm_head.weight"] = take("output_layer.weight")[:vocab_size].clone()
    if state:  # biases, q/k norms, ...: parameters LLaMA has no place for
        raise InteropError(f"parameters with no LlamaForCausalLM counterpart: {', '.join(sorted(state)[:6])}")
    return hf


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Megatron-LM's converter: extra vocabulary rows replicate the last one."""
    if rows < weight.shape[0]:
        raise InteropError(f"{weight.shape[0]} vocabulary rows do not fit the padded vocabulary of {rows}")
    return torch.cat([weight, weight[-1:].expand(rows - weight.shape[0], -1)]) if rows > weight.shape[0] else weight


def hf_to_megatron_weights(state: Dict[str, torch.Tensor], shape: LlamaShape,
                           padded_vocab_size: int) -> Dict[str, torch.Tensor]:
    """megatron-core GPT state dict (TP=1, local spec) from a ``LlamaForCausalLM`` state dict, the
    vocabulary padded to ``padded_vocab_size`` rows."""
    state = dict(state)

    def take(name: str) -> torch.Tensor:
        if name not in state:
            raise InteropError(f"the Hugging Face model has no parameter {name}")
        return state.pop(name)

    out = {"embedding.word_embeddings.weight": _pad_rows(take("model.embed_tokens.weight"), padded_vocab_size)}
    for i in range(shape.num_layers):
        for m_name, h_name in _layer_names(i).items():
            out[m_name] = take(h_name)
        prefix = f"model.layers.{i}."
        out[f"decoder.layers.{i}.self_attention.linear_qkv.weight"] = _fuse_qkv(
            take(prefix + "self_attn.q_proj.weight"), take(prefix + "self_attn.k_proj.weight"),
            take(prefix + "self_attn.v_proj.weight"), shape)
        out[f"decoder.layers.{i}.mlp.linear_fc1.weight"] = torch.cat(
            [take(prefix + "mlp.gate_proj.weight"), take(prefix + "mlp.up_proj.weight")])
    out["decoder.final_layernorm.weight"] = take("model.norm.weight")
    lm_head = state.pop("lm_head.weight", None)
    if not shape.tied_embeddings:
        if lm_head is None:
            raise InteropError("the Hugging Face model has untied embeddings but no lm_head.weight")
        out["output_layer.weight"] = _pad_rows(lm_head, padded_vocab_size)
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}  # a buffer, not a weight
    if state:
        raise InteropError(f"parameters with no megatron counterpart: {', '.join(sorted(state)[:6])}")
    return out


# ------------------------------------------------------------------------------------------ configs
def unsupported_for_llama(args: argparse.Namespace) -> List[str]:
    """What keeps a checkpoint's model (its training flags) from being a ``LlamaForCausalLM``."""
    problems = []
    if args.normalization != "RMSNorm":
        problems.append(f"normalization {args.normalization} (LLaMA: RMSNorm)")
    if not args.swiglu:
        problems.append("a GELU MLP (LLaMA: --swiglu)")
    if args.position_embedding_type != "rope":
        problems.append(f"position embeddings {args.position_embedding_type} (LLaMA: rope)")
    if not args.disable_bias_linear:
        problems.append("biases in the linear layers (LLaMA: --disable-bias-linear)")
    if args.position_embedding_type == "rope" and args.rotary_percent != 1.0:
        problems.append(f"--rotary-percent {args.rotary_percent} (transformers' LLaMA rotates every head dimension)")
    return problems


def llama_config_from_args(args: argparse.Namespace, vocab_size: int, bos_token_id: Optional[int],
                           eos_token_id: Optional[int], dtype: torch.dtype):
    """The ``LlamaConfig`` of a megatron model trained with ``args`` (its training flags)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        architectures=[_HF_ARCHITECTURE],
        vocab_size=vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.ffn_hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_query_groups,
        head_dim=args.kv_channels or args.hidden_size // args.num_attention_heads,
        hidden_act="silu",
        max_position_embeddings=args.max_position_embeddings,
        initializer_range=args.init_method_std,
        rms_norm_eps=args.norm_epsilon,
        tie_word_embeddings=not args.untie_embeddings_and_output_weights,
        rope_parameters={"rope_type": "default", "rope_theta": float(args.rotary_base)},
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        dtype=dtype,
    )


def _rope_type(raw: dict) -> Optional[str]:
    """The rope scaling a config.json asks for (None: plain rotary), in transformers 4 or 5 form."""
    for key in ("rope_scaling", "rope_parameters"):
        params = raw.get(key)
        if isinstance(params, dict):
            kind = params.get("rope_type", params.get("type"))
            if kind not in (None, "default"):
                return str(kind)
    return None


def unsupported_hf_config(raw: dict) -> List[str]:
    """What keeps a config.json from being imported as a megatron LLaMA (its raw JSON)."""
    problems = []
    architectures = raw.get("architectures") or []
    if raw.get("model_type") != "llama" or any(a != _HF_ARCHITECTURE for a in architectures):
        problems.append(f"model_type {raw.get('model_type')!r} / architectures {architectures} "
                        f"(supported: llama / {_HF_ARCHITECTURE})")
    if _rope_type(raw):
        problems.append(f"rope scaling {_rope_type(raw)!r} (supported: none)")
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            problems.append(f"{key}=true (megatron LLaMA: no biases)")
    if raw.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {raw.get('hidden_act')!r} (LLaMA: silu)")
    return problems


# ------------------------------------------------------------------------------------------ tokenizer
def _save_sentencepiece(model_file: str, output: str) -> None:
    """``tokenizer.model`` (the sentencepiece model itself) and a ``tokenizer.json`` built by
    transformers from the model's own settings (its normaliser, whitespace handling, byte
    fallback), so that ``AutoTokenizer`` encodes as sentencepiece does. transformers' LLaMA
    tokenizer class would re-derive LLaMA's own normalisation instead, which differs for models
    trained with sentencepiece's defaults (NFKC, whitespace runs collapsed)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    shutil.copyfile(model_file, os.path.join(output, "tokenizer.model"))
    proto = import_protobuf().ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    if proto.trainer_spec.model_type == 1:  # unigram: pieces with their scores
        vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    if backend is None:
        raise InteropError(f"{model_file}: sentencepiece model type {proto.trainer_spec.model_type} "
                           f"cannot be converted (supported: bpe, unigram)")
    ids = (proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id, proto.trainer_spec.pad_id)
    names = ("unk_token", "bos_token", "eos_token", "pad_token")
    specials = {name: proto.pieces[i].piece for name, i in zip(names, ids) if 0 <= i < len(proto.pieces)}
    PreTrainedTokenizerFast(tokenizer_object=backend, **specials).save_pretrained(output)


def _save_tokenizer(args: argparse.Namespace, tokenizer, output: str) -> tuple:
    """Write the training tokenizer into ``output``; returns what was written (for the log) and
    the written tokenizer's BOS id (None if it has none)."""
    kind = args.tokenizer_type
    if kind == "NullTokenizer":
        return "no tokenizer (NullTokenizer: the token ids are the text)", None
    if kind == "SentencePieceTokenizer":
        _save_sentencepiece(args.tokenizer_model, output)
    elif kind == "HuggingFaceTokenizer":
        path = args.tokenizer_model
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        json_file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        shutil.copyfile(json_file, os.path.join(output, "tokenizer.json"))
        copied = [name for name in ("tokenizer_config.json", "special_tokens_map.json")
                  if os.path.isfile(os.path.join(directory, name))]
        for name in copied:
            shutil.copyfile(os.path.join(directory, name), os.path.join(output, name))
        if "tokenizer_config.json" not in copied:
            _save_rust_tokenizer(tokenizer, output)
    elif kind == "GPT2BPETokenizer":
        _save_rust_tokenizer(tokenizer, output)
    else:
        raise InteropError(f"tokenizer type {kind} cannot be exported")
    return f"tokenizer from {kind}", _check_tokenizer(tokenizer, output)


def _save_rust_tokenizer(tokenizer, output: str) -> None:
    from transformers import PreTrainedTokenizerFast

    eos = tokenizer._tok.id_to_token(tokenizer.eod) if tokenizer.eod is not None else None
    PreTrainedTokenizerFast(tokenizer_object=tokenizer._tok, eos_token=eos).save_pretrained(output)


def _check_tokenizer(tokenizer, output: str) -> Optional[int]:
    """The written tokenizer, loaded by ``AutoTokenizer``, encodes :data:`PROBE_TEXTS` exactly as
    the training tokenizer (no special tokens added: training added none). Returns its BOS id."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(output, local_files_only=True)
    for text in PROBE_TEXTS:
        expected, got = tokenizer.tokenize(text), hf(text, add_special_tokens=False)["input_ids"]
        if expected != got:
            raise InteropError(f"the exported tokenizer encodes {text!r} as {got[:12]}..., the training tokenizer "
                               f"as {expected[:12]}...")
    if len(hf) != tokenizer.vocab_size:
        raise InteropError(f"the exported tokenizer has {len(hf)} tokens, the training tokenizer "
                           f"{tokenizer.vocab_size}")
    return hf.bos_token_id


# ------------------------------------------------------------------------------------------ export
def _fresh_output(output: str) -> None:
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise InteropError(f"--output {output} exists and is not an empty directory; choose a new one")


def export_checkpoint(load: str, output: str, iteration: Optional[int] = None) -> str:
    """Write ``output`` (a ``LlamaForCausalLM`` directory) from the checkpoint in ``load`` (a
    ``--save`` directory, latest or ``iteration``, or one ``iter_N``). Collective when a process
    group exists (every rank loads; rank 0 writes). Written under ``<output>.tmp`` and renamed when
    complete. Returns ``output``."""
    import torch.distributed as dist
    from transformers import GenerationConfig, LlamaForCausalLM

    from megatron_mile.data.tokenizers import build_tokenizer
    from megatron_mile.training.checkpointing import load_args, load_model_for_eval

    _require_transformers_5()
    try:
        args, path = load_args(load, iteration)
    except (OSError, ValueError) as exc:
        raise InteropError(f"--load {load}: no checkpoint ({exc})") from None
    problems = unsupported_for_llama(args)
    if problems:
        raise InteropError(f"{path} is not a LLaMA-style model, unsupported: {'; '.join(problems)} "
                           f"(GPT-2-style export is not implemented)")
    _fresh_output(output)
    tokenizer = build_tokenizer(args.tokenizer_type, tokenizer_model=args.tokenizer_model,
                                vocab_file=args.vocab_file, merge_file=args.merge_file, vocab_size=args.vocab_size)

    model, args = load_model_for_eval(load, iteration, device="cpu")
    dtype = next(model.parameters()).dtype
    weights = megatron_to_hf_weights(model.state_dict(), LlamaShape.from_training_args(args), tokenizer.vocab_size)
    del model
    if dist.is_initialized() and dist.get_rank() != 0:
        return output
    tmp = output.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left over from a crashed export
    os.makedirs(tmp)
    try:
        note, bos = _save_tokenizer(args, tokenizer, tmp)
        config = llama_config_from_args(args, tokenizer.vocab_size, bos, tokenizer.eod, dtype)
        with torch.device("meta"):
            hf_model = LlamaForCausalLM(config)
        hf_model.load_state_dict(weights, strict=True, assign=True)
        if config.tie_word_embeddings:
            hf_model.lm_head.weight = hf_model.model.embed_tokens.weight
        hf_model.save_pretrained(tmp)
        GenerationConfig(bos_token_id=bos, eos_token_id=tokenizer.eod).save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(output):
        os.rmdir(output)  # empty (checked above)
    os.rename(tmp, output)
    print(f"> exported {path} ({args.num_layers} layers, vocabulary {tokenizer.vocab_size} of "
          f"{args.padded_vocab_size} padded, {str(dtype).replace('torch.', '')}) to {output}: "
          f"LlamaForCausalLM, {note}", flush=True)
    return output


# ------------------------------------------------------------------------------------------ import
def _hf_tokenizer_flags(hf_dir: str, tokenizer_dir: str) -> List[str]:
    """Copy the model's tokenizer into ``tokenizer_dir``; the training flags that read it."""
    if os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
        os.makedirs(tokenizer_dir)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if os.path.isfile(os.path.join(hf_dir, name)):
                shutil.copyfile(os.path.join(hf_dir, name), os.path.join(tokenizer_dir, name))
        return ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer_dir]
    if os.path.isfile(os.path.join(hf_dir, "tokenizer.model")):
        os.makedirs(tokenizer_dir)
        shutil.copyfile(os.path.join(hf_dir, "tokenizer.model"), os.path.join(tokenizer_dir, "tokenizer.model"))
        return ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                os.path.join(tokenizer_dir, "tokenizer.model")]
    raise InteropError(f"{hf_dir} has neither tokenizer.json nor tokenizer.model; training needs the tokenizer")


def _training_flags(config, tensor_model_parallel_size: int, make_vocab_size_divisible_by: int,
                    seq_length: int) -> List[str]:
    """``mile-pretrain`` model flags for a ``LlamaConfig``."""
    theta = float(config.rope_parameters["rope_theta"])
    if theta != int(theta):
        raise InteropError(f"rope_theta {theta} is not an integer (megatron's --rotary-base is)")
    flags = ["--num-layers", config.num_hidden_layers, "--hidden-size", config.hidden_size,
             "--ffn-hidden-size", config.intermediate_size, "--num-attention-heads", config.num_attention_heads,
             "--kv-channels", config.head_dim, "--seq-length", seq_length,
             "--max-position-embeddings", config.max_position_embeddings,
             "--normalization", "RMSNorm", "--norm-epsilon", config.rms_norm_eps, "--swiglu",
             "--position-embedding-type", "rope", "--rotary-base", int(theta), "--disable-bias-linear",
             "--init-method-std", config.initializer_range, "--hidden-dropout", 0,
             "--attention-dropout", config.attention_dropout,
             "--make-vocab-size-divisible-by", make_vocab_size_divisible_by,
             "--tensor-model-parallel-size", tensor_model_parallel_size,
             # Only the model and tokenizer flags matter in args.json (--use-checkpoint-args).
             "--mock-data", "--micro-batch-size", 1, "--train-iters", 0, "--lr", 0]
    if config.num_key_value_heads != config.num_attention_heads:
        flags += ["--group-query-attention", "--num-query-groups", config.num_key_value_heads]
    if not config.tie_word_embeddings:
        flags.append("--untie-embeddings-and-output-weights")
    return [str(f) for f in flags]


def import_checkpoint(hf_dir: str, save: str, tensor_model_parallel_size: int = 1,
                      make_vocab_size_divisible_by: int = 128, seq_length: Optional[int] = None) -> str:
    """Write a weights-only checkpoint (iteration 0, float32) of the ``LlamaForCausalLM`` in
    ``hf_dir`` into the empty or new directory ``save``, with ``args.json`` and the tokenizer
    (``save/tokenizer``). The vocabulary is padded as training at ``tensor_model_parallel_size``
    with ``make_vocab_size_divisible_by`` pads it. Collective when a process group exists.
    Returns the checkpoint path."""
    import torch.distributed as dist
    from megatron.core import tensor_parallel
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_mile import platform
    from megatron_mile.data.tokenizers import build_tokenizer
    from megatron_mile.model import gpt_model_from_args, padded_vocab_size
    from megatron_mile.training import checkpointing
    from megatron_mile.training.arguments import ConfigError, parse_args, transformer_config_from_args

    _require_transformers_5()
    config_file = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_file):
        raise InteropError(f"--hf {hf_dir}: no config.json there")
    with open(config_file) as f:
        raw = json.load(f)
    problems = unsupported_hf_config(raw)
    if problems:
        raise InteropError(f"{hf_dir} cannot be imported: {'; '.join(problems)}")
    if os.path.exists(save) and (not os.path.isdir(save) or os.listdir(save)):
        raise InteropError(f"--save {save} exists and is not an empty directory; choose a new one")
    config = LlamaConfig.from_pretrained(hf_dir, local_files_only=True)

    tokenizer_dir = os.path.join(os.path.abspath(save), "tokenizer")
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if dist.is_initialized():
        dist.barrier()  # every rank has checked --save before rank 0 writes into it
    existed = os.path.isdir(save)
    try:
        if rank0:
            flags = _hf_tokenizer_flags(hf_dir, tokenizer_dir)
        if dist.is_initialized():
            shared = [flags if rank0 else None]
            dist.broadcast_object_list(shared, src=0)
            flags = shared[0]
        flags += _training_flags(config, tensor_model_parallel_size, make_vocab_size_divisible_by,
                                 seq_length or config.max_position_embeddings)
        try:
            args = parse_args(flags)
        except ConfigError as exc:
            raise InteropError(f"{hf_dir}: {exc}") from None
        tokenizer = build_tokenizer(args.tokenizer_type, tokenizer_model=args.tokenizer_model)
        args.padded_vocab_size = padded_vocab_size(tokenizer.vocab_size, make_vocab_size_divisible_by,
                                                   tensor_model_parallel_size)
        if tokenizer.vocab_size > config.vocab_size:
            raise InteropError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model only {config.vocab_size} "
                               f"embedding rows")
        if config.vocab_size > args.padded_vocab_size:
            raise InteropError(f"the model has {config.vocab_size} embedding rows, more than the padded vocabulary "
                               f"({args.padded_vocab_size}) of its tokenizer's {tokenizer.vocab_size} tokens; raise "
                               f"--make-vocab-size-divisible-by")
        args.transformer_impl = "local"  # the checkpoint does not depend on it (megatron maps TE names)

        hf_model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True)
        weights = hf_to_megatron_weights(hf_model.state_dict(), LlamaShape.from_hf_config(config),
                                         args.padded_vocab_size)
        del hf_model

        checkpointing._init_single_process()
        platform.adapt_megatron_to_cpu()
        tensor_parallel.model_parallel_cuda_manual_seed(args.seed)
        build_args = argparse.Namespace(**vars(args))
        build_args.tensor_model_parallel_size = 1
        model_config = transformer_config_from_args(build_args)
        model_config.perform_initialization = False  # every weight comes from the Hugging Face model
        model = gpt_model_from_args(build_args, model_config)
        model.load_state_dict(weights, strict=True)
        # Weights only: no optimizer state, which load_checkpoint recognises (as Megatron-LM's
        # converted "release" checkpoints: the optimizer and RNG start afresh).
        path = checkpointing.save_checkpoint(save, 0, [model], None, None, args, consumed_samples=0)
    except BaseException:
        if rank0:  # --save was new or empty: leave it so (a fixed re-run must not find it used)
            shutil.rmtree(save, ignore_errors=True)
            if existed:
                os.makedirs(save)
        raise
    if rank0:
        print(f"> imported {hf_dir} ({config.num_hidden_layers} layers, vocabulary {tokenizer.vocab_size} padded "
              f"to {args.padded_vocab_size} for TP {tensor_model_parallel_size}) into {path}", flush=True)
    return path
