"""GPU checks: NCCL, bf16 on CUDA, the transformer-engine layer spec, a short real training run.

Marked ``gpu`` and skipped without CUDA (a skip is never counted as a pass): ``pytest -m gpu``
on a GPU node or in the container of docker/. Multi-process cases use up to two GPUs
(TP=2 when there are two, a single-rank NCCL group otherwise).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = Path(__file__).resolve().parents[1]


def _gpus() -> int:
    return min(2, torch.cuda.device_count())


def _has_transformer_engine() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA build of TE
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_entry(rank: int, world: int, port: int, body, args) -> None:
    """One rank: NCCL process group on GPU ``rank``, megatron's parallel_state with TP = world."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
    try:
        body(rank, world, *args)
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def run_nccl(body, *args, world: int | None = None) -> None:
    """``body(rank, world, *args)`` on ``world`` GPUs; an exception on any rank fails the test."""
    world = world or _gpus()
    mp.spawn(_nccl_entry, args=(world, _free_port(), body, args), nprocs=world, join=True)


def float64_reference(full_logits, target, loss, gamma=1.0, sigma=1.0):
    """(weighted_ce, weight, grad of sum(weighted_ce * upstream)) over the full vocabulary, float64."""
    z = full_logits.detach().double().requires_grad_(True)
    logp = torch.log_softmax(z, dim=-1)
    ce = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    p = logp.detach().exp()
    if loss == "mile":
        weight = (sigma + -(p * logp.detach()).sum(-1)) ** gamma
    elif loss == "focal":
        weight = (1 - p.gather(-1, target.unsqueeze(-1)).squeeze(-1)) ** gamma
    else:
        weight = torch.ones_like(ce)
    return weight * ce, weight, z


# --- NCCL ----------------------------------------------------------------------------------------

def body_nccl_mile(rank, world, dtype):
    from megatron_mile.losses import vocab_parallel_mile_cross_entropy

    gen = torch.Generator(device="cuda").manual_seed(1234)  # the same inputs on every rank
    s, b, vocab = 64, 4, 32000
    full = (torch.randn(s, b, vocab, device="cuda", generator=gen) * 4).to(dtype)
    target = torch.randint(0, vocab, (s, b), device="cuda", generator=gen)
    upstream = torch.randn(s, b, device="cuda", generator=gen)
    width = vocab // world
    shard = full[..., rank * width:(rank + 1) * width].clone().requires_grad_(True)

    wce, weight = vocab_parallel_mile_cross_entropy(shard * 1, target, gamma=1.0, sigma=1.0)
    (wce * upstream).sum().backward()
    ref_wce, ref_w, z = float64_reference(full, target, "mile")
    (ref_wce * upstream.double()).sum().backward()

    torch.testing.assert_close(wce.double(), ref_wce.detach(), rtol=5e-5, atol=5e-5)
    torch.testing.assert_close(weight.double(), ref_w, rtol=5e-5, atol=5e-5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(shard.grad.double(), z.grad[..., rank * width:(rank + 1) * width],
                               rtol=tol, atol=tol)

    # The data-parallel side of the objective: one all-reduce of the loss sum over all ranks.
    total = wce.detach().sum()
    dist.all_reduce(total)
    torch.testing.assert_close(total.double(), ref_wce.detach().sum() * world, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nccl_vocab_parallel_mile_matches_float64(dtype):
    run_nccl(body_nccl_mile, dtype)


def body_nccl_microbatch_alpha(rank, world):
    from megatron_mile.losses import microbatch_alpha

    # A different mean weight per rank; alpha is averaged over the data-parallel group.
    weight = torch.full((8, 2), 1.0 + rank, device="cuda")
    alpha = microbatch_alpha(weight, dp_group=dist.group.WORLD)
    want = sum(1.0 / (1.0 + r) for r in range(world)) / world
    assert math.isclose(alpha.item(), want, rel_tol=1e-6), (alpha.item(), want)


def test_nccl_microbatch_alpha_all_reduce():
    run_nccl(body_nccl_microbatch_alpha)


# --- bf16 on CUDA against float64 -----------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["triton", "torch"])
@pytest.mark.parametrize("loss", ["cross_entropy", "focal", "mile"])
def test_bf16_cuda_loss_matches_float64(loss, kernel):
    from megatron_mile.losses import LossConfig, vocab_parallel_weighted_cross_entropy

    gen = torch.Generator(device="cuda").manual_seed(7)
    s, b, vocab = 256, 2, 32000
    logits = (torch.randn(s, b, vocab, device="cuda", generator=gen) * 3).to(torch.bfloat16)
    target = torch.randint(0, vocab, (s, b), device="cuda", generator=gen)
    leaf = logits.clone().requires_grad_(True)
    out = vocab_parallel_weighted_cross_entropy(leaf * 1, target, LossConfig(loss=loss, kernel=kernel), tp_group=None)
    out.weighted_ce.sum().backward()
    ref_wce, ref_w, z = float64_reference(logits, target, loss)  # the same bf16 values, upcast
    ref_wce.sum().backward()

    assert out.weighted_ce.dtype == torch.float32 and leaf.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out.weighted_ce.double(), ref_wce.detach(), rtol=5e-5, atol=5e-5)
    torch.testing.assert_close(out.weight.double(), ref_w, rtol=5e-5, atol=5e-5)
    torch.testing.assert_close(leaf.grad.double(), z.grad, rtol=2e-2, atol=2e-3)


# --- the transformer-engine layer spec -----------------------------------------------------------

def body_te_model(rank, world):
    from megatron_mile.pretrain_gpt import build_model, set_random_seeds
    from megatron_mile.training.arguments import parse_args, transformer_config_from_args, validate_runtime

    args = parse_args([
        "--num-layers", "2", "--hidden-size", "256", "--num-attention-heads", "8", "--ffn-hidden-size", "512",
        "--seq-length", "128", "--model-style", "llama", "--micro-batch-size", "2", "--train-iters", "1",
        "--lr", "1e-4", "--mock-data", "--vocab-size", "1024", "--bf16", "--loss", "mile",
        "--tensor-model-parallel-size", str(world),
    ])
    validate_runtime(args, world)
    assert args.transformer_impl == "transformer_engine" and args.distributed_backend == "nccl"
    args.padded_vocab_size = 1024
    set_random_seeds(args.seed)
    config = transformer_config_from_args(args)
    (model,) = build_model(args, config)
    te_modules = [m for m in model.modules() if type(m).__module__.startswith("transformer_engine")]
    assert te_modules, "the transformer-engine spec built no transformer-engine module"
    assert all(p.dtype == torch.bfloat16 and p.is_cuda for p in model.parameters())

    gen = torch.Generator(device="cuda").manual_seed(0)  # the same tokens on every TP rank
    tokens = torch.randint(0, 1024, (2, 128), device="cuda", generator=gen)
    position_ids = torch.arange(128, device="cuda").unsqueeze(0).expand(2, -1)
    loss = model(tokens, position_ids, None, labels=tokens)
    assert loss.shape == (2, 128) and torch.isfinite(loss).all()
    loss.float().mean().backward()
    assert all(p.main_grad.isfinite().all() for p in model.parameters() if p.requires_grad)


@pytest.mark.skipif(not _has_transformer_engine(), reason="transformer-engine not installed")
def test_transformer_engine_spec_builds_and_runs():
    run_nccl(body_te_model)


# --- a short real training run through the launch script ---------------------------------------

def _run_single_node(tmp_path, loss, train_iters, *extra, **variables):
    """examples/pretrain_mile_single_node.sh with the tiny config on this node's GPUs (TP = #GPUs)."""
    gpus = _gpus()
    env = {**os.environ, "DRY_RUN": "0", "CONFIG": "tiny", "LOSS": loss, "GPUS_PER_NODE": str(gpus),
           "TP": str(gpus), "TRAIN_ITERS": str(train_iters), "EVAL_INTERVAL": "3", "SAVE_INTERVAL": "3",
           "MASTER_PORT": str(_free_port()), **variables}
    proc = subprocess.run(["bash", str(REPO / "examples/pretrain_mile_single_node.sh"), *extra], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    impl = "transformer_engine" if _has_transformer_engine() else "local"
    assert f"CUDA, {impl} layers, bf16, loss {loss}" in proc.stdout + proc.stderr  # bf16: the GPU default
    run_name = variables.get("RUN_NAME", f"tiny_{loss}")
    records = [json.loads(line) for line in (tmp_path / f"logs/{run_name}.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("split") == "train"], tmp_path / "checkpoints" / run_name


@pytest.mark.parametrize("loss", ["cross_entropy", "mile"])
def test_single_node_script_trains(tmp_path, loss):
    train, checkpoints = _run_single_node(tmp_path, loss, 6)
    assert [r["iteration"] for r in train] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["lm_loss"]) for r in train)
    assert train[-1]["lm_loss"] < train[0]["lm_loss"]
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "6"


def test_distributed_optimizer_checkpoint_resumes_like_uninterrupted(tmp_path):
    """dist_checkpointing with the distributed optimizer on GPU: 9 iterations straight vs stop at
    6 (--exit-interval, same schedule) and resume; iterations 7-9 must agree."""
    straight, _ = _run_single_node(tmp_path, "mile", 9, DISTRIBUTED_OPTIMIZER="1", RUN_NAME="straight")
    first, checkpoints = _run_single_node(tmp_path, "mile", 9, "--exit-interval", "6",
                                          DISTRIBUTED_OPTIMIZER="1", RUN_NAME="resumed")
    assert [r["iteration"] for r in first] == list(range(1, 7))
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    resumed, _ = _run_single_node(tmp_path, "mile", 9, DISTRIBUTED_OPTIMIZER="1", RUN_NAME="resumed")
    after = [r for r in resumed if r["iteration"] > 6]
    assert [r["iteration"] for r in after] == [7, 8, 9]
    for got, want in zip(after, straight[6:]):
        # bf16 kernels with atomics are not bitwise deterministic from run to run.
        assert math.isclose(got["lm_loss"], want["lm_loss"], rel_tol=2e-3), (got, want)
        assert math.isclose(got["loss"], want["loss"], rel_tol=2e-3), (got, want)
