"""EMO's training objectives against a float64 re-implementation of the official code (github DRSY/EMO,
commit 14da9d5), values and gradients, with and without masked positions, at TP 1, 2, 4.

``official_objective`` below follows the official files line by line (full vocabulary, one-hot
smoothed by 1e-15, cost rows normalised, ``q - sg(q onehot)`` in the post-fix variants, ignored
labels giving ``mle = 0``, the masked token mean); it shares no code with the package:

* ``lm``: language_modeling/gpt2.py, mode ``emo``;
* ``lm_adaptive``: the same file, mode ``adaptive_emo`` (cost: the current head);
* ``continual``: continual_finetuning/emo_llama.py, ``EMOLlamaForCausalLM`` (ratio clipped at 3);
* ``continual_emo2``: the same file, ``EMOLlama2ForCausalLM``.
``batch_ratio`` (this project's earlier form, a documented departure) is checked against its own
formula: one detached ratio sum(mle) / sum(emo) over the micro-batch's counted tokens.
"""

import pytest
import torch

from megatron_mile.losses import LossConfig, get_loss
from megatron_mile.losses.emo import EMO, cost_source
from tests.test_losses import _inputs, _layout, _shard

WORLD_SIZE = 4
OFFICIAL = ("lm", "lm_adaptive", "continual", "continual_emo2")


def official_objective(variant, full_logits, target, mask, cost_embedding):
    """(objective, per-token loss * mask, grad wrt the logits) in float64, as the official code computes."""
    logits = full_logits.detach().double().reshape(-1, full_logits.size(-1)).requires_grad_(True)
    labels = torch.where(mask.reshape(-1) > 0, target.reshape(-1), torch.full_like(target.reshape(-1), -100))
    mask = (labels != -100).double()
    mle_loss = torch.nn.CrossEntropyLoss(reduction="none")(logits, labels)
    labels_tmp = labels.clone()
    labels_tmp[labels_tmp == -100] = 0
    one_hot = torch.nn.functional.one_hot(labels_tmp, num_classes=logits.size(-1)).double()
    stable_onehot = (one_hot + 1e-15) / torch.linalg.vector_norm(one_hot + 1e-15, ord=1, dim=-1, keepdim=True)
    embedding = cost_embedding.double()
    embedding = embedding / torch.linalg.vector_norm(embedding, ord=2, dim=1, keepdim=True)
    p_repr = stable_onehot @ embedding
    q_grad = torch.log_softmax(logits, dim=-1).exp()
    if variant in ("lm", "batch_ratio"):
        q_final = q_grad
    else:
        q_final = q_grad - (q_grad * one_hot).detach()
    emo_loss = 1 - torch.sum(p_repr * (q_final @ embedding), dim=-1)
    if variant in ("lm", "lm_adaptive"):
        loss = (mle_loss + (mle_loss / (emo_loss + 1e-10)).detach() * emo_loss) * 0.5
    elif variant == "continual":
        loss = (torch.min((mle_loss / (emo_loss + 1e-10)).detach(), torch.ones_like(mle_loss) * 3.0) * emo_loss
                + mle_loss) * 0.5
    elif variant == "continual_emo2":
        loss = (emo_loss / (mle_loss + 1e-10)).detach() * mle_loss + emo_loss
    else:  # batch_ratio, the project's departure
        ratio = (mle_loss * mask).sum().detach() / (emo_loss * mask).sum().detach()
        loss = 0.5 * (mle_loss + ratio * emo_loss)
    objective = (loss * mask).sum() / (1e-15 + mask.sum())
    (grad,) = torch.autograd.grad(objective, logits)
    ratio_clipped = (mle_loss / (emo_loss + 1e-10)).detach() > 3.0
    return (objective.detach(), (loss * mask).detach().view(target.shape), grad.view(full_logits.shape),
            ratio_clipped.view(target.shape))


def body_matches_official(variant, masked, dtype, seed, true_vocab=96):
    """The fast path on a vocabulary padded from ``true_vocab`` to 96 (padding rows hold arbitrary
    logits and cost rows) against the official formulas on the true vocabulary."""
    rank, world = _layout()
    vocab = 96
    logits, target, mask, _ = _inputs(seed, 6, 3, vocab)
    target = target % true_vocab
    if not masked:
        mask = torch.ones_like(mask)
    logits[:2].scatter_add_(-1, target[:2].unsqueeze(-1), torch.full((2, 3, 1), 8.0, dtype=logits.dtype))  # confident
    logits = logits.to(dtype).double()
    cost = torch.randn(vocab, 16, generator=torch.Generator().manual_seed(seed + 1))
    shard = _shard(logits, rank, world).to(dtype).clone().requires_grad_(True)
    cost_shard = cost[rank * vocab // world:(rank + 1) * vocab // world]
    config = LossConfig(loss="emo", params=dict(emo_variant=variant), vocab_size=true_vocab)
    out = get_loss("emo").language_model_loss(config, shard * 1, target, tp_group=None, loss_mask=mask,
                                              dp_group=None, output_weight=cost_shard)
    objective = (out.weighted_ce * mask).sum() / mask.sum()
    objective.backward()
    ref_objective, ref_loss, ref_grad, clipped = official_objective(variant, logits[..., :true_vocab], target, mask,
                                                                    cost[:true_vocab])
    ref_grad = torch.cat([ref_grad, torch.zeros(*ref_grad.shape[:-1], vocab - true_vocab, dtype=ref_grad.dtype)], -1)
    tol = 2e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.weighted_ce.double() * mask, ref_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(objective.double(), ref_objective, rtol=tol, atol=tol)
    grad_tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(shard.grad.double(), _shard(ref_grad, rank, world), rtol=grad_tol, atol=grad_tol)
    counted = mask > 0
    return bool(clipped[counted].any()), bool((~clipped[counted]).any())


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("variant", OFFICIAL + ("batch_ratio",))
def test_matches_official_formulas(dist_pool, tp, variant, masked):
    results = dist_pool.run(body_matches_official, variant, masked, torch.float32, 17 + tp, tp=tp)
    if variant == "continual":  # the inputs exercise both sides of the clip at 3
        assert results[0] == (True, True)


@pytest.mark.parametrize("tp,true_vocab", [(1, 90), (2, 90), (4, 90), (4, 70)])  # (4, 70): a slice all padding
def test_padding_rows_change_nothing(dist_pool, tp, true_vocab):
    dist_pool.run(body_matches_official, "continual", True, torch.float32, 23, true_vocab, tp=tp)


def test_bf16_matches_official_formulas(dist_pool):
    dist_pool.run(body_matches_official, "lm", True, torch.bfloat16, 29, tp=2)


def test_masked_positions_change_nothing():
    """Whatever the logits and targets at masked positions, the counted tokens' losses (and so every
    ratio) are the same; the masked ones are 0."""
    logits, target, mask, _ = _inputs(8, 5, 2, 40)
    cost = torch.randn(40, 6, generator=torch.Generator().manual_seed(8))
    other_logits = torch.where(mask.unsqueeze(-1) > 0, logits, logits * 5 + 3)
    other_target = torch.where(mask > 0, target, (target + 7) % 40)
    for variant in OFFICIAL + ("batch_ratio",):
        config = LossConfig(loss="emo", params=dict(emo_variant=variant))
        a, b = (get_loss("emo").language_model_loss(config, z.float().clone(), y, tp_group=None, loss_mask=mask,
                                                    dp_group=None, output_weight=cost).weighted_ce
                for z, y in ((logits, target), (other_logits, other_target)))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert (a[mask == 0] == 0).all()


def test_cost_sources():
    """auto follows the variant; the frozen copy is a copy (training the head does not move it)."""
    def params(**kw):
        return LossConfig(loss="emo", params=kw).params

    assert cost_source(params()) == "initial"
    assert cost_source(params(emo_variant="lm_adaptive")) == "current"
    assert cost_source(params(emo_variant="continual", emo_cost_checkpoint="ckpt")) == "checkpoint"
    with pytest.raises(ValueError, match="needs --emo-cost-checkpoint"):
        LossConfig(loss="emo", params=dict(emo_cost="checkpoint"))
    with pytest.raises(ValueError, match="read only with --emo-cost checkpoint"):
        LossConfig(loss="emo", params=dict(emo_cost="current", emo_cost_checkpoint="ckpt"))

    class Model:
        weight = torch.randn(10, 4)
        frozen_output_weight = None

        def output_weight(self):
            return self.weight

    model = Model()
    EMO().prepare(LossConfig(loss="emo"), model)
    assert torch.equal(model.frozen_output_weight, Model.weight)
    Model.weight.add_(1.0)
    assert not torch.equal(model.frozen_output_weight, Model.weight)
    current = Model()
    EMO().prepare(LossConfig(loss="emo", params=dict(emo_variant="lm_adaptive")), current)
    assert current.frozen_output_weight is None
