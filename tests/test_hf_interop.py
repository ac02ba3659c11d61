"""Hugging Face interop (megatron_mile.interop.hf_llama): megatron checkpoints <-> LlamaForCausalLM.

The references are independent implementations: transformers' own ``LlamaForCausalLM`` forward
(fp32) against megatron-core's ``GPTModel`` forward, sentencepiece's encodings against the exported
tokenizer, and log-likelihoods computed here from the exported model the way lm-evaluation-harness's
``HFLM`` computes them against the project's lm-eval adapter on the megatron checkpoint.
Checkpoints are trained with ``mile-pretrain`` in the module's gloo pool (4 ranks).
"""

import json
import math
import os
import shutil

import pytest
import torch

from megatron_mile.pretrain_gpt import pretrain

WORLD_SIZE = 4

# A LLaMA-style model spelled out flag by flag (--model-style llama would always untie the embeddings).
LLAMA = ("--normalization RMSNorm --swiglu --position-embedding-type rope --disable-bias-linear "
         "--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --rotary-base 5000 "
         "--norm-epsilon 1e-6 --init-method-std 0.2 --hidden-dropout 0 --attention-dropout 0").split()
TRAIN = ("--mock-data --micro-batch-size 2 --global-batch-size 8 --train-iters 2 --lr 1e-3 --seed 3 "
         "--use-cpu-initialization --eval-iters 0 --num-workers 0 --log-interval 1000").split()
UNTIED, GQA = ["--untie-embeddings-and-output-weights"], ["--group-query-attention", "--num-query-groups", "2"]
TP2PP2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]
PAD = ["--make-vocab-size-divisible-by", "96"]  # 512 tokens -> 576 rows at TP1 and TP2: 64 padded rows

# name: (training flags, pool layout)
CHECKPOINTS = {
    "TP1-untied-GQA": (UNTIED + GQA + PAD, dict(tp=1, pp=1)),
    "TP2xPP2-tied-MHA": (TP2PP2 + PAD, dict(tp=2, pp=2)),
    "TP2xPP2-untied-GQA": (TP2PP2 + UNTIED + GQA, dict(tp=2, pp=2)),  # 512 = padded: nothing dropped
    "PP2xVPP2-tied-GQA": (["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"]
                          + GQA + PAD, dict(tp=1, pp=2, vpp=2)),
}
VOCAB = 512


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """Real English documents and a 512-piece sentencepiece model trained on them."""
    from megatron_mile.data import train_tokenizer
    from megatron_mile.data.corpus import write_text_corpus

    root = tmp_path_factory.mktemp("text")
    corpus = str(root / "corpus.jsonl")
    write_text_corpus(corpus, min_bytes=2**18, seed=0)
    train_tokenizer.main(["--input", corpus, "--model-prefix", str(root / "tok"), "--vocab-size", str(VOCAB)])
    with open(corpus) as f:
        documents = [json.loads(line)["text"] for line in f]
    return str(root / "tok.model"), documents


@pytest.fixture(scope="module")
def checkpoints(dist_pool, text, tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    tokenizer = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", text[0]]
    dirs = {}
    for name, (flags, layout) in CHECKPOINTS.items():
        dirs[name] = str(root / name)
        dist_pool.run(pretrain, LLAMA + TRAIN + tokenizer + flags + ["--save", dirs[name]], **layout)
    return dirs


# ---------------------------------------------------------------------------------- export
def _export_and_compare_logits(checkpoint, output, through_cli):
    """Every rank: export (rank 0 writes) and rebuild the megatron model; rank 0: both models'
    logits on the same tokens."""
    import torch.distributed as dist
    from transformers import LlamaForCausalLM

    from megatron_mile.interop.cli import export_main
    from megatron_mile.interop.hf_llama import export_checkpoint
    from megatron_mile.training.checkpointing import load_model_for_eval

    if through_cli:
        export_main(["--load", checkpoint, "--output", output])
    else:
        export_checkpoint(checkpoint, output)
    model, args = load_model_for_eval(checkpoint)
    if dist.get_rank() != 0:
        return None
    hf = LlamaForCausalLM.from_pretrained(output, dtype=torch.float32, local_files_only=True).eval()
    tokens = torch.randint(0, VOCAB, (2, args.seq_length), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens, torch.arange(args.seq_length).expand(2, -1), None)
        theirs = hf(input_ids=tokens).logits
    return dict(padded=ours.shape[-1], vocab=theirs.shape[-1], diff=float((ours[..., :VOCAB] - theirs).abs().max()),
                scale=float(ours.std()), tied=hf.config.tie_word_embeddings, groups=hf.config.num_key_value_heads,
                files=sorted(os.listdir(output)), saved_tp=args.tensor_model_parallel_size)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_exported_logits_equal_megatron(dist_pool, checkpoints, tmp_path, name):
    """transformers' LlamaForCausalLM on the exported directory gives megatron's logits (1e-4), for
    checkpoints saved at TP1, TP2 x PP2 and PP2 x VPP2, tied and untied, with and without GQA; the
    padded vocabulary rows are dropped."""
    flags = CHECKPOINTS[name][0]
    result = dist_pool.run(_export_and_compare_logits, checkpoints[name], str(tmp_path / "hf"),
                           name == "TP2xPP2-tied-MHA", tp=1, pp=1)[0]
    print(name, "max |logit difference|", result["diff"], "logit std", result["scale"])
    assert result["vocab"] == VOCAB and result["padded"] == (576 if flags[-1] == "96" else VOCAB)
    assert result["diff"] <= 1e-4 and result["scale"] > 0.5, result
    assert result["tied"] == ("--untie-embeddings-and-output-weights" not in flags)
    assert result["groups"] == (2 if "--group-query-attention" in flags else 4)
    assert result["saved_tp"] == (2 if "--tensor-model-parallel-size" in flags else 1)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer.model",
            "tokenizer_config.json"} <= set(result["files"])
    assert not os.path.exists(str(tmp_path / "hf") + ".tmp")


def test_exported_tokenizer_encodes_as_sentencepiece(dist_pool, checkpoints, text, tmp_path):
    """AutoTokenizer on the export encodes real documents (whitespace runs, non-ASCII) exactly as
    sentencepiece, adding no special token, and knows the sentencepiece model's eos."""
    import sentencepiece
    from transformers import AutoTokenizer

    output = str(tmp_path / "hf")
    dist_pool.run(_export_and_compare_logits, checkpoints["TP1-untied-GQA"], output, False, tp=1, pp=1)
    sp = sentencepiece.SentencePieceProcessor(model_file=text[0])
    hf = AutoTokenizer.from_pretrained(output, local_files_only=True)
    samples = [doc[:400] for doc in text[1][:50]] + ["  double  spaces ", "ﬁ Ⅻ ①", "tab\there\n\nnew"]
    for sample in samples:
        assert hf(sample, add_special_tokens=False)["input_ids"] == sp.encode_as_ids(sample), sample
    assert hf.eos_token_id == sp.eos_id() and len(hf) == sp.get_piece_size()
    with open(os.path.join(output, "generation_config.json")) as f:
        assert json.load(f)["eos_token_id"] == sp.eos_id()


def test_transformer_engine_names_map_like_the_local_spec():
    """A state dict with the transformer-engine spec's names (the layer norms fused into
    linear_qkv / linear_fc1, renamed as megatron-core's own local-spec key map says, plus TE's
    _extra_state) exports to the same weights as the local spec's."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_mile.interop.hf_llama import LlamaShape, megatron_to_hf_weights

    shape = LlamaShape(num_layers=2, num_attention_heads=4, num_query_groups=2, head_dim=4, tied_embeddings=False)
    generator = torch.Generator().manual_seed(0)
    local = {"embedding.word_embeddings.weight": torch.randn(12, 16, generator=generator),
             "decoder.final_layernorm.weight": torch.randn(16, generator=generator),
             "output_layer.weight": torch.randn(12, 16, generator=generator)}
    for i in range(2):
        for name, size in (("input_layernorm.weight", (16,)), ("self_attention.linear_qkv.weight", (32, 16)),
                           ("self_attention.linear_proj.weight", (16, 16)), ("pre_mlp_layernorm.weight", (16,)),
                           ("mlp.linear_fc1.weight", (48, 16)), ("mlp.linear_fc2.weight", (16, 24))):
            local[f"decoder.layers.{i}.{name}"] = torch.randn(*size, generator=generator)
    key_map = get_gpt_layer_local_spec(normalization="RMSNorm").submodules.sharded_state_dict_keys_map
    te = {}
    for name, value in local.items():
        for local_prefix, te_prefix in key_map.items():
            name = name.replace("." + local_prefix, "." + te_prefix)
        te[name] = value
    te.update({f"decoder.layers.{i}.self_attention.linear_qkv._extra_state": None for i in range(2)})
    assert te.keys() != local.keys()
    ours, theirs = megatron_to_hf_weights(local, shape, 10), megatron_to_hf_weights(te, shape, 10)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert ours["model.embed_tokens.weight"].shape == (10, 16)  # the two padded rows dropped


# ---------------------------------------------------------------------------------- import
def _hf_model(directory, tokenizer_model, tied, groups, tokenizer_json):
    """A random tiny LlamaForCausalLM with the sentencepiece tokenizer, as tokenizer.json (converted
    by the export's code) or as tokenizer.model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from megatron_mile.interop.hf_llama import _save_sentencepiece

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=groups, head_dim=16, max_position_embeddings=32,
                         tie_word_embeddings=tied, rms_norm_eps=1e-6, initializer_range=0.2,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, bos_token_id=1,
                         eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(directory)
    if tokenizer_json:
        _save_sentencepiece(tokenizer_model, directory)
        os.remove(os.path.join(directory, "tokenizer.model"))
    else:
        shutil.copyfile(tokenizer_model, os.path.join(directory, "tokenizer.model"))
    return directory


def _import_export(hf_dir, checkpoint, output):
    """Every rank: import (tensor-parallel padding for TP2, 384 x 2 rows), export; rank 0: the
    megatron model's logits against the original model's."""
    import torch.distributed as dist
    from transformers import LlamaForCausalLM

    from megatron_mile.interop.hf_llama import export_checkpoint, import_checkpoint
    from megatron_mile.training.checkpointing import load_model_for_eval

    import_checkpoint(hf_dir, checkpoint, tensor_model_parallel_size=2, make_vocab_size_divisible_by=384)
    export_checkpoint(checkpoint, output)
    model, args = load_model_for_eval(checkpoint)
    if dist.get_rank() != 0:
        return None
    hf = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True).eval()
    tokens = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens, torch.arange(32).expand(2, -1), None)
        theirs = hf(input_ids=tokens).logits
    return dict(padded=ours.shape[-1], diff=float((ours[..., :VOCAB] - theirs).abs().max()), args=vars(args))


@pytest.mark.parametrize("tied,groups,tokenizer_json", [(True, 2, False), (False, 4, True)])
def test_hf_to_megatron_to_hf_is_bit_identical(dist_pool, text, tmp_path, tied, groups, tokenizer_json):
    """Import then export returns every weight bit for bit (the vocabulary padded to 768 rows in
    between), the same model configuration and tokenizer; the imported megatron model gives the
    Hugging Face model's logits; args.json describes the model."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    hf_dir = _hf_model(str(tmp_path / "hf"), text[0], tied, groups, tokenizer_json)
    result = dist_pool.run(_import_export, hf_dir, str(tmp_path / "ckpt"), str(tmp_path / "back"), tp=1, pp=1)[0]
    print("imported: max |logit difference|", result["diff"])
    assert result["padded"] == 768 and result["diff"] <= 1e-4, result
    args = result["args"]
    assert (args["tensor_model_parallel_size"], args["padded_vocab_size"], args["rotary_base"]) == (2, 768, 5000)
    assert args["tokenizer_type"] == ("HuggingFaceTokenizer" if tokenizer_json else "SentencePieceTokenizer")
    assert args["untie_embeddings_and_output_weights"] != tied and args["num_query_groups"] == groups

    before = load_file(os.path.join(hf_dir, "model.safetensors"))
    after = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(before) == sorted(after)
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    with open(os.path.join(hf_dir, "config.json")) as f, open(tmp_path / "back" / "config.json") as g:
        original, exported = json.load(f), json.load(g)
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "tie_word_embeddings",
                "max_position_embeddings", "bos_token_id", "eos_token_id", "architectures"):
        assert original[key] == exported[key], key
    tokenizers = [AutoTokenizer.from_pretrained(d, local_files_only=True) for d in (hf_dir, str(tmp_path / "back"))]
    for sample in text[1][:20]:
        assert tokenizers[0](sample[:300])["input_ids"] == tokenizers[1](sample[:300])["input_ids"]


def _train_one_step(checkpoint, save):
    """One MiLe step at TP2 (DP2) from the imported checkpoint, no model flag given."""
    result = pretrain(["--load", checkpoint, "--save", save, "--mock-data", "--micro-batch-size", "2",
                       "--train-iters", "1", "--lr", "1e-4", "--loss", "mile", "--tensor-model-parallel-size", "2",
                       "--eval-iters", "0", "--num-workers", "0", "--hidden-dropout", "0", "--attention-dropout", "0"])
    return [m["lm_loss"] for m in result.train], [m["iteration"] for m in result.train]


def _largest_change(before, after):
    import torch.distributed as dist

    from megatron_mile.training.checkpointing import load_model_for_eval

    imported = dict(load_model_for_eval(before)[0].named_parameters())
    trained = dict(load_model_for_eval(after)[0].named_parameters())
    if dist.get_rank() != 0:
        return None
    return max(float((trained[k] - imported[k]).abs().max()) for k in imported)


def test_import_then_a_training_step_at_tp2(dist_pool, text, tmp_path):
    """mile-pretrain --load <imported> --loss mile at TP2, with no model flag: the weights-only
    checkpoint loads (fresh optimizer) and one step moves each weight by at most about lr."""
    hf_dir = _hf_model(str(tmp_path / "hf"), text[0], False, 2, False)
    checkpoint, trained = str(tmp_path / "ckpt"), str(tmp_path / "trained")
    dist_pool.run(_import_only, hf_dir, checkpoint, tp=1, pp=1)
    losses, iterations = dist_pool.run(_train_one_step, checkpoint, trained, tp=2, pp=1)[0]
    assert iterations == [1] and math.isfinite(losses[0])
    change = dist_pool.run(_largest_change, checkpoint, trained, tp=1, pp=1)[0]
    assert 0 < change <= 1.5e-4, change  # Adam's first step: lr per weight (the weights themselves: ~0.2)


def _import_only(hf_dir, checkpoint):
    from megatron_mile.interop.hf_llama import import_checkpoint

    import_checkpoint(hf_dir, checkpoint, tensor_model_parallel_size=2)


# ---------------------------------------------------------------------------------- lm-eval
def _hflm_loglikelihood(model, tokenizer, context, continuation, max_length):
    """lm-evaluation-harness's HFLM (0.4.x) for one request: trailing context whitespace moves to
    the continuation, the pair is encoded whole and split at the context's length, the input is
    cut to the last max_length + 1 tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    continuation_ids = whole[len(context_ids):]
    inputs = (whole[:len(context_ids)] + continuation_ids)[-(max_length + 1):][:-1]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([inputs])).logits[0, -len(continuation_ids):]
    logp = torch.log_softmax(logits.double(), dim=-1)
    target = torch.tensor(continuation_ids)
    return float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


def _lm_eval_both(checkpoint, output, tokenizer_model, pairs):
    import torch.distributed as dist
    from transformers import AutoTokenizer, LlamaForCausalLM

    from megatron_mile.data.tokenizers import build_tokenizer
    from megatron_mile.evaluation.downstream import LoglikelihoodScorer
    from megatron_mile.interop.hf_llama import export_checkpoint
    from megatron_mile.training.checkpointing import load_model_for_eval

    export_checkpoint(checkpoint, output)
    model, args = load_model_for_eval(checkpoint)
    if dist.get_rank() != 0:
        return None
    scorer = LoglikelihoodScorer(model, build_tokenizer("SentencePieceTokenizer", tokenizer_model), args.seq_length,
                                 batch_size=3)
    ours = [(s.logprob, s.is_greedy) for s in scorer.score(pairs)]
    hf = LlamaForCausalLM.from_pretrained(output, dtype=torch.float32, local_files_only=True).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(output, local_files_only=True)
    theirs = [_hflm_loglikelihood(hf, hf_tokenizer, c, x, hf.config.max_position_embeddings) for c, x in pairs]
    return ours, theirs


def test_lm_eval_adapter_on_megatron_equals_transformers_on_export(dist_pool, checkpoints, text, tmp_path):
    """Log-likelihoods of a local cloze task: the project's lm-eval adapter scoring the megatron
    checkpoint (TP2 x PP2) and HFLM's computation on the exported model agree to 1e-4."""
    pairs = []
    for doc in text[1][:12]:
        words = doc.split()
        if len(words) >= 30:
            cut = 8 + len(pairs) % 20  # some contexts longer than the 32-token window
            context = " ".join(words[:cut]) + ("  " if len(pairs) % 3 == 0 else "")
            pairs.append((context, " " + " ".join(words[cut:cut + 3])))
    assert len(pairs) >= 8
    ours, theirs = dist_pool.run(_lm_eval_both, checkpoints["TP2xPP2-untied-GQA"], str(tmp_path / "hf"), text[0],
                                 pairs, tp=1, pp=1)[0]
    print("max |log-likelihood difference|", max(abs(a[0] - b[0]) for a, b in zip(ours, theirs)), len(pairs))
    for (a, greedy_a), (b, greedy_b), pair in zip(ours, theirs, pairs):
        assert abs(a - b) <= 1e-4 and greedy_a == greedy_b, (pair, a, b)
    assert len({round(a, 3) for a, _ in ours}) == len(ours)  # distinct requests, distinct scores


# ---------------------------------------------------------------------------------- refusals
def _fake_checkpoint(root, flags):
    """A checkpoint directory whose args.json describes the model of ``flags`` (no weights: the
    refusals come before any weight is read)."""
    from megatron_mile.training.arguments import parse_args

    args = parse_args(flags + "--mock-data --micro-batch-size 1 --train-iters 1 --lr 1e-3 --seq-length 8 "
                              "--num-layers 1 --hidden-size 8 --ffn-hidden-size 16 --num-attention-heads 2".split())
    os.makedirs(root / "iter_0000001")
    with open(root / "iter_0000001" / "args.json", "w") as f:
        json.dump({k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}, f)
    (root / "latest_checkpointed_iteration.txt").write_text("1")
    return str(root)


@pytest.mark.parametrize("flags,expected", [
    ([], ["LayerNorm", "GELU", "learned_absolute", "biases", "GPT-2-style export is not implemented"]),
    (["--model-style", "llama", "--rotary-percent", "0.5"], ["--rotary-percent 0.5"]),
])
def test_export_refuses_what_llama_cannot_express(tmp_path, capsys, flags, expected):
    from megatron_mile.interop.cli import export_main

    checkpoint = _fake_checkpoint(tmp_path / "ckpt", flags)
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--load", checkpoint, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("mile-export-hf: error:") and "\n" not in err
    assert all(text in err for text in expected), err
    assert not os.path.exists(tmp_path / "out")


def test_export_refuses_a_used_output_directory(tmp_path, capsys):
    from megatron_mile.interop.cli import export_main

    checkpoint = _fake_checkpoint(tmp_path / "ckpt", ["--model-style", "llama"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        export_main(["--load", checkpoint, "--output", str(tmp_path / "out")])
    assert "not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("change,expected", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling 'llama3'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}}, "rope scaling 'yarn'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "'mistral'"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "LlamaForSequenceClassification"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
])
def test_import_refuses_what_megatron_llama_cannot_express(tmp_path, capsys, change, expected):
    from megatron_mile.interop.cli import import_main

    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8,
              "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 16, **change}
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        import_main(["--hf", str(tmp_path / "hf"), "--save", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("mile-import-hf: error:") and "\n" not in err
    assert expected in err, err
    assert not os.path.exists(tmp_path / "ckpt")


def test_import_refusal_after_the_tokenizer_copy_leaves_save_unused(tmp_path, text, capsys):
    """A tokenizer with more tokens than the model has embedding rows is found once the tokenizer is
    copied into --save: the refusal leaves --save as it was (empty), so the fixed re-run can use it."""
    from megatron_mile.interop.cli import import_main

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
         "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 300}))
    shutil.copyfile(text[0], tmp_path / "hf" / "tokenizer.model")
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(SystemExit):
        import_main(["--hf", str(tmp_path / "hf"), "--save", str(tmp_path / "ckpt")])
    assert f"the tokenizer has {VOCAB} tokens, the model only 300 embedding rows" in capsys.readouterr().err
    assert os.listdir(tmp_path / "ckpt") == []

