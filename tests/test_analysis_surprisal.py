"""Checkpoint evaluation: the stored surprisal equals a float64 recomputation from the model's logits,
in one process and in TP/PP layouts; mismatched models and vocabularies are refused with clear errors.

Two tiny models are trained once (mock data, NullTokenizer: 513 token ids, padded to 640) in a pool
of 2 gloo ranks. The reference reads the held-out windows straight from the ``.bin`` with numpy,
runs the model loaded by ``load_model_for_eval`` and takes ``log_softmax`` in float64.
"""

import math
import os

import numpy as np
import pytest

from megatron_mile.analysis.surprisal_store import ModelMismatchError, SurprisalStore

WORLD_SIZE = 2
SEQ = 16
TRAIN_FLAGS = ["--num-layers", "2", "--num-attention-heads", "4", "--seq-length", str(SEQ),
               "--micro-batch-size", "2", "--train-iters", "4", "--lr", "3e-3", "--mock-data",
               "--eval-iters", "0", "--log-interval", "100", "--num-workers", "0", "--save-iters", "1,2",
               "--use-cpu-initialization", "--hidden-dropout", "0", "--attention-dropout", "0"]


# ----------------------------------------------------------------------------- run on the pool's ranks
def _train(save_dir, hidden):
    from megatron_mile.pretrain_gpt import pretrain

    pretrain(TRAIN_FLAGS + ["--hidden-size", str(hidden), "--save", save_dir])


def _evaluate(runs, store, data, **kwargs):
    from megatron_mile.evaluation.surprisal_evaluator import EvalDataConfig, evaluate_checkpoints

    config = EvalDataConfig(**data) if data is not None else None
    evaluate_checkpoints(runs, store, config, storage_dtype="float32", log=lambda *a: None, **kwargs)


def _reference(save_dir, iteration, windows_tokens):
    """float64 surprisal and entropy (bits) of every position, from the model's logits."""
    import torch

    from megatron_mile.training.checkpointing import load_model_for_eval

    model, _ = load_model_for_eval(save_dir, iteration)
    tokens = torch.from_numpy(windows_tokens[:, :-1])
    labels = torch.from_numpy(windows_tokens[:, 1:])
    positions = torch.arange(SEQ).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        logits = model(tokens, positions, None)
    logp = torch.log_softmax(logits.double(), dim=-1)
    surprisal = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1) / math.log(2)
    entropy = -(logp.exp() * logp).sum(-1) / math.log(2)
    return surprisal.numpy(), entropy.numpy()


# ----------------------------------------------------------------------------- fixtures
def _write_heldout(prefix, top_id, seed):
    from megatron_mile.data.indexed import IndexedDatasetWriter

    rng = np.random.default_rng(seed)
    lengths = rng.integers(10, 40, size=30)
    writer = IndexedDatasetWriter(prefix, np.uint16)
    writer.add_documents(rng.integers(0, top_id, size=int(lengths.sum())).astype(np.uint16), lengths)
    writer.finalize()
    return prefix


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dist_pool):
    root = tmp_path_factory.mktemp("surprisal")
    ce, wide = str(root / "ce"), str(root / "wide")
    dist_pool.run(_train, ce, 32)
    dist_pool.run(_train, wide, 48)
    held = {"web": _write_heldout(str(root / "web_text_document"), 513, 0),
            "code": _write_heldout(str(root / "code_text_document"), 513, 1)}
    return root, ce, wide, held


def _data(held, **extra):
    return dict(data_path=[f"{k}={v}" for k, v in held.items()], seq_length=SEQ, num_sequences=6, seed=3, **extra)


def _windows_from_bin(store):
    """The windows' tokens, read with plain numpy from the .bin files (not the package's reader)."""
    out = []
    for d, start in np.asarray(store._array("windows")):
        prefix = store.manifest["datasets"][d]["prefix"]
        tokens = np.fromfile(prefix + ".bin", dtype=np.uint16)
        out.append(tokens[start:start + SEQ + 1].astype(np.int64))
    return np.stack(out)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2)])
def test_surprisal_equals_float64_recomputation(trained, dist_pool, tp, pp):
    root, ce, _, held = trained
    store_dir = str(root / f"store_tp{tp}_pp{pp}")
    dist_pool.run(_evaluate, [("ce", ce)], store_dir, _data(held, positions_per_sequence=5), tp=tp, pp=pp)
    store = SurprisalStore(store_dir)
    assert store.iterations("ce") == [1, 2, 4]
    windows = _windows_from_bin(store)
    window, position = np.asarray(store._array("window")), np.asarray(store.positions)
    np.testing.assert_array_equal(store.tokens, windows[window, position])  # the targets
    assert np.all(np.bincount(window) == 5)
    for it in (1, 4):
        ref_s, ref_h = dist_pool.run(_reference, ce, it, windows)[0]
        got = np.asarray(store.checkpoint_array("ce", it), np.float64)
        np.testing.assert_allclose(got[0], ref_s[window, position - 1], atol=2e-4, rtol=0)
        np.testing.assert_allclose(got[1], ref_h[window, position - 1], atol=2e-4, rtol=0)
    # Two held-out datasets, 6 windows each, labelled per domain.
    assert store.dataset_labels == ["web", "code"]
    assert np.bincount(store.dataset_of_token).tolist() == [30, 30]


def test_different_models_in_one_run_are_refused(trained, dist_pool):
    from megatron_mile.testing import RankError

    root, ce, wide, held = trained
    store_dir = str(root / "store_mismatch")
    dist_pool.run(_evaluate, [("ce", ce)], store_dir, _data(held), iterations=[1])
    with pytest.raises(RankError, match="different model.*hidden_size"):
        dist_pool.run(_evaluate, [("ce", wide)], store_dir, None, iterations=[1])
    # A save directory mixing checkpoints of two models.
    mixed = root / "mixed"
    mixed.mkdir()
    os.symlink(os.path.join(ce, "iter_0000001"), mixed / "iter_0000001")
    os.symlink(os.path.join(wide, "iter_0000002"), mixed / "iter_0000002")
    with pytest.raises(RankError, match="different model"):
        dist_pool.run(_evaluate, [("mixed", str(mixed))], store_dir, None)
    # Another model under its own run name is fine.
    dist_pool.run(_evaluate, [("wide", wide)], store_dir, None, iterations=[1])
    assert SurprisalStore(store_dir).runs() == ["ce", "wide"]


def test_token_ids_beyond_the_model_vocabulary_are_refused(trained, dist_pool):
    from megatron_mile.testing import RankError

    root, ce, _, _ = trained
    big = _write_heldout(str(root / "big_text_document"), 2000, 2)
    with pytest.raises(RankError, match="VocabularyMismatchError.*>= the model's vocabulary size 513"):
        dist_pool.run(_evaluate, [("ce", ce)], str(root / "store_big"), _data({"big": big}), iterations=[1])


def test_store_checks(tmp_path):
    n = 4
    store = SurprisalStore.create(str(tmp_path / "s"), np.arange(n), np.ones(n), np.zeros(n), [[0, 0]],
                                  [{"label": "d", "prefix": "p"}], vocab_size=10, seq_length=4)
    sig = {"hidden_size": 8, "padded_vocab_size": 16, "tokenizer_type": "NullTokenizer", "tokenizer_vocab_size": 10}
    store.add_checkpoint("a", 1, np.ones(n), np.ones(n), sig)
    with pytest.raises(ModelMismatchError, match="hidden_size: 8 vs 16"):
        store.add_checkpoint("a", 2, np.ones(n), np.ones(n), {**sig, "hidden_size": 16})
    with pytest.raises(ModelMismatchError, match="tokenizer has 12 tokens"):
        store.add_checkpoint("b", 1, np.ones(n), np.ones(n), {**sig, "tokenizer_vocab_size": 12})
    with pytest.raises(ValueError, match="non-finite surprisal"):
        store.add_checkpoint("a", 3, np.full(n, np.nan), np.ones(n), sig)
    with pytest.raises(KeyError, match="run 'zz' not in"):
        store.load_run("zz")
    with pytest.raises(ModelMismatchError, match="token id 10 >= vocabulary size 10"):
        SurprisalStore.create(str(tmp_path / "t"), np.array([10]), [1], [0], [[0, 0]], [], 10, 4)
    run = SurprisalStore(str(tmp_path / "s")).load_run("a")
    assert run.steps.tolist() == [1] and run.surprisal.shape == (1, n)
