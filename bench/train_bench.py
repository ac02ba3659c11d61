"""Step time of ``--loss mile`` vs ``--loss cross_entropy``, side by side in one run.

One model, one optimizer, one data stream; the steps cycle through the losses (ABCABC...), so
machine noise (other jobs, thermal drift) hits every arm alike. Arms:

* ``megatron_ce``: megatron-core's own ``GPTModel.compute_language_model_loss`` (what a Megatron
  user runs today),
* ``cross_entropy``: ``--loss cross_entropy`` through this project's kernel (weight 1),
* ``mile``: ``--loss mile`` (gamma 1, sigma 1, global normalisation).

Besides whole training steps it times the loss alone (forward + backward on logits of the
step's shape), which shows what the step-time difference is made of.

On a shared machine other jobs only ever add time, so the headline overhead uses each arm's
fastest step (``step_ms_min``); the median of the per-round ratios (adjacent steps) and the
medians are recorded too, with the load average before and after.

Per arm it also records tokens/s (global batch tokens / median step), model FLOPs utilisation
(MFU = tokens/s x (6 N + 12 L h s) / peak, N the parameters without the input embedding,
L layers, h hidden size, s sequence length: the PaLM convention, attention counted unmasked) and,
on CUDA, the peak memory allocated during that arm's steps. The peak defaults to the card's dense
bf16 rate for known cards (``--peak-tflops`` overrides); MFU is left out without one.

    python bench/train_bench.py                         # CPU default shape, writes bench/results/train_cpu.json
    torchrun --nproc-per-node 8 bench/train_bench.py --out bench/results/train_gpu.json \\
        --tensor-model-parallel-size 2 --bf16 ...       # any mile-pretrain flag overrides the defaults
"""

from __future__ import annotations

import argparse
import os
import platform as host
import statistics
import sys
import time
from functools import partial

import torch
import torch.distributed as dist

# A LLaMA-style shape with the paper's vocabulary; small enough for a 2-core CPU.
DEFAULTS = ("--mock-data --vocab-size 31999 --model-style llama --num-layers 4 --hidden-size 512 "
            "--num-attention-heads 8 --seq-length 512 --micro-batch-size 2 --global-batch-size 2 "
            "--lr 3e-4 --train-iters 1000 --eval-iters 0 --num-workers 0 --hidden-dropout 0 "
            "--attention-dropout 0 --log-interval 1000000").split()
ARMS = ("megatron_ce", "cross_entropy", "mile")

# Dense bf16 tensor-core peak by datasheet, TFLOP/s, matched against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}


def _device():
    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def default_peak_tflops():
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((tflops for card, tflops in PEAK_BF16_TFLOPS.items() if card in name), None)


def model_flops_per_token(args, model) -> float:
    """6 N + 12 L h s: N counts every parameter but the input embedding, summed over the
    model-parallel ranks (each holds its own shard)."""
    from megatron.core import parallel_state

    local = 0
    for chunk in model:
        for name, param in chunk.named_parameters():
            if "embedding.word_embeddings" not in name:
                local += param.numel()
    total = torch.tensor([local], dtype=torch.float64, device=_device())
    # One copy per data-parallel replica: sum over the model-parallel group only.
    dist.all_reduce(total, group=parallel_state.get_model_parallel_group())
    return 6 * total.item() + 12 * args.num_layers * args.hidden_size * args.seq_length


def _stock_megatron_loss(chunk):
    """The unmodified megatron-core hook, reporting weight 1 and its CE for loss_func."""
    from megatron.core.models.gpt import GPTModel

    from megatron_mile.model import TokenStatistics

    def hook(labels, logits):
        loss = GPTModel.compute_language_model_loss(chunk, labels, logits)
        chunk.token_statistics = TokenStatistics(torch.ones_like(loss), loss.detach(), torch.zeros_like(loss))
        return loss
    return hook


def use_arm(model, arm: str) -> None:
    from megatron.core.utils import unwrap_model

    from megatron_mile.losses import LossConfig

    for chunk in unwrap_model(model):
        chunk.__dict__.pop("compute_language_model_loss", None)
        if arm == "megatron_ce":
            chunk.compute_language_model_loss = _stock_megatron_loss(chunk)
        else:
            chunk.loss_config = LossConfig(loss=arm)


def time_loss_only(args, repeats: int) -> dict:
    """Forward + backward of each arm's loss on [s, b, V/tp] logits, in ms (median)."""
    from megatron.core import tensor_parallel

    from megatron_mile.losses import LossConfig, vocab_parallel_weighted_cross_entropy

    tp = args.tensor_model_parallel_size
    device = _device()
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    shape = (args.seq_length, args.micro_batch_size, args.padded_vocab_size // tp)
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=gen).to(device, dtype)
    target = torch.randint(0, args.padded_vocab_size, shape[:2], generator=gen).to(device)
    fns = {
        "megatron_ce": lambda z: tensor_parallel.vocab_parallel_cross_entropy(z, target),
        "cross_entropy": lambda z: vocab_parallel_weighted_cross_entropy(z, target, LossConfig(loss="cross_entropy")).weighted_ce,
        "mile": lambda z: vocab_parallel_weighted_cross_entropy(z, target, LossConfig(loss="mile")).weighted_ce,
    }
    times = {arm: [] for arm in ARMS}
    for i in range(repeats + 1):
        for arm in ARMS:
            z = base.clone().requires_grad_(True)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fns[arm](z * 1.0).sum().backward()  # `* 1.0`: the losses may overwrite their input
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i:  # the first round warms up
                times[arm].append((time.perf_counter() - start) * 1e3)
    return {arm: statistics.median(t) for arm, t in times.items()}


def core_attention_name(model) -> str:
    """The class that runs core attention in this model (SDPA or megatron's)."""
    for module in model[0].modules():
        if hasattr(module, "core_attention"):
            return type(module.core_attention).__name__
    return "none"


def adam_kernel(optimizer) -> str:
    """Which torch AdamW kernel the optimizer's groups ask for (or the fused Adam's class)."""
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        opt = getattr(inner, "optimizer", None)
        if isinstance(opt, torch.optim.Optimizer):
            group = opt.param_groups[0]
            if not isinstance(opt, (torch.optim.AdamW, torch.optim.Adam)):
                return type(opt).__name__
            if group.get("fused"):
                return "fused"
            return {True: "foreach", False: "for-loop", None: "torch default"}[group.get("foreach")]
    return "unknown"


def profile_step(args, model, optimizer, scheduler, denominator, forward_backward, step_fn, batches, train_step,
                 top: int) -> list:
    """One --loss mile training step under torch.profiler: the ``top`` kernels (CUDA) or operators
    (CPU) by self time, each with its share of the total self time."""
    from torch.profiler import ProfilerActivity, profile

    use_arm(model, "mile")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        train_step(args, model, optimizer, scheduler, denominator, forward_backward, step_fn, batches)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    on_gpu = torch.cuda.is_available()
    rows = []
    for event in prof.key_averages():
        self_us = getattr(event, "self_device_time_total", 0) if on_gpu else event.self_cpu_time_total
        if self_us > 0:
            rows.append((event.key, self_us, event.count))
    total = sum(us for _, us, _ in rows) or 1.0
    rows.sort(key=lambda r: -r[1])
    return [{"name": name, "self_ms": us / 1e3, "calls": calls, "share_pct": 100 * us / total}
            for name, us, calls in rows[:top]]


def main(argv=None) -> None:
    from megatron_mile import platform
    from megatron_mile.analysis._io import write_json
    from megatron_mile.data.tokenizers import build_tokenizer
    from megatron_mile.model import padded_vocab_size
    from megatron_mile.pretrain_gpt import (
        connect_schedule_hooks,
        build_model,
        build_optimizer_and_scheduler,
        forward_step,
        set_random_seeds,
        train_step,
    )
    from megatron_mile.training.arguments import parse_args, transformer_config_from_args, validate_runtime
    from megatron_mile.training.data import build_datasets, micro_batches
    from megatron_mile.training.distributed import destroy_distributed, initialize_distributed, launch_world_size
    from megatron.core.pipeline_parallel import get_forward_backward_func

    bench = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--steps", type=int, default=6, help="Measured steps per arm (after one warm-up round).")
    bench.add_argument("--loss-repeats", type=int, default=10, help="Repeats of the loss-only timing.")
    bench.add_argument("--threads", type=int, default=None,
                       help="torch.set_num_threads for this run (1 gives steadier CPU numbers on a shared machine).")
    bench.add_argument("--peak-tflops", type=float, default=None,
                       help="Peak dense FLOP/s of one device in TFLOP/s for MFU (default: the card's bf16 rate "
                            "when known).")
    bench.add_argument("--out", default=None, help="Result JSON (default bench/results/train_<cpu|gpu>.json).")
    bench.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="Which losses to cycle through.")
    bench.add_argument("--profile-top", type=int, default=0,
                       help="After timing, profile one --loss mile step with torch.profiler and record the N "
                            "kernels (GPU) or operators (CPU) with the most self time, with their shares.")
    own, rest = bench.parse_known_args(argv)
    if own.threads:
        torch.set_num_threads(own.threads)

    args = parse_args(DEFAULTS + ["--loss", "mile"] + rest)
    validate_runtime(args, launch_world_size())
    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_file, args.merge_file,
                                args.vocab_size)
    args.padded_vocab_size = padded_vocab_size(tokenizer.vocab_size, args.make_vocab_size_divisible_by,
                                               args.tensor_model_parallel_size)
    created = initialize_distributed(args)
    platform.adapt_megatron_to_cpu()
    set_random_seeds(args.seed)
    config = transformer_config_from_args(args)
    model = build_model(args, config)
    optimizer, scheduler = build_optimizer_and_scheduler(args, model)
    denominator = connect_schedule_hooks(args, config, model, optimizer)
    batches = micro_batches(build_datasets(args, tokenizer).train, 0, args.micro_batch_size, 0)
    step_fn = partial(forward_step, denominator, args.mile_normalization)
    forward_backward = get_forward_backward_func()

    flops_per_token = model_flops_per_token(args, model)
    load_before = os.getloadavg()
    arms = [arm for arm in ARMS if arm in own.arms]
    step_ms = {arm: [] for arm in arms}
    peak_bytes = {arm: 0 for arm in arms}
    for round_index in range(own.steps + 1):
        for arm in arms:
            use_arm(model, arm)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            dist.barrier()
            start = time.perf_counter()
            train_step(args, model, optimizer, scheduler, denominator, forward_backward, step_fn, batches)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                peak_bytes[arm] = max(peak_bytes[arm], torch.cuda.max_memory_allocated())
            if round_index:  # round 0 warms up
                step_ms[arm].append((time.perf_counter() - start) * 1e3)
    loss_ms = time_loss_only(args, own.loss_repeats) if own.loss_repeats else None
    top_kernels = profile_step(args, model, optimizer, scheduler, denominator, forward_backward, step_fn, batches,
                               train_step, own.profile_top) if own.profile_top else None
    peak_tflops = own.peak_tflops or default_peak_tflops()
    # The largest peak over the ranks (pipeline stage 0 holds the most activations).
    peak_all = torch.tensor([peak_bytes[arm] for arm in arms], dtype=torch.float64, device=_device())
    dist.all_reduce(peak_all, op=dist.ReduceOp.MAX)

    if dist.get_rank() == 0:
        median = {arm: statistics.median(t) for arm, t in step_ms.items()}
        fastest = {arm: min(t) for arm, t in step_ms.items()}
        paired = {ref: 100 * (statistics.median(m / r for m, r in zip(step_ms["mile"], step_ms[ref])) - 1)
                  for ref in ("cross_entropy", "megatron_ce") if "mile" in arms and ref in arms}
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
        tokens_per_step = args.global_batch_size * args.seq_length
        tokens_per_s = {arm: tokens_per_step / (median[arm] / 1e3) for arm in arms}
        world = dist.get_world_size()
        mfu = ({arm: tokens_per_s[arm] * flops_per_token / (world * peak_tflops * 1e12) for arm in arms}
               if peak_tflops else None)
        peak_gib = ({arm: peak_all[i].item() / 2**30 for i, arm in enumerate(arms)}
                    if torch.cuda.is_available() else None)

        def overhead(ref):
            return 100 * (fastest["mile"] / fastest[ref] - 1) if "mile" in arms and ref in arms else None

        def loss_share(ref):
            if loss_ms is None or "mile" not in arms or ref not in arms:
                return None
            return 100 * (loss_ms["mile"] - loss_ms[ref]) / median[ref]
        result = {
            "benchmark": "train_step_mile_vs_cross_entropy",
            "device": device,
            "host": host.node(),
            "torch": torch.__version__,
            "world_size": dist.get_world_size(),
            "torch_threads": torch.get_num_threads(),
            "flags": DEFAULTS + rest,
            # What the throughput levers resolved to (issue 14: before/after in one run).
            "levers": {"attention_backend": args.attention_backend, "transformer_impl": args.transformer_impl,
                       "core_attention": core_attention_name(model), "adam_impl": args.adam_impl,
                       "adam_kernel": adam_kernel(optimizer), "recompute_granularity": args.recompute_granularity,
                       "micro_batch_size": args.micro_batch_size},
            "profile_top_kernels": top_kernels,
            "tokens_per_step": tokens_per_step,
            "padded_vocab_size": args.padded_vocab_size,
            "model_flops_per_token": flops_per_token,
            "peak_tflops_per_device": peak_tflops,
            "tokens_per_s_median_step": tokens_per_s,
            "mfu_median_step": mfu,
            "peak_memory_allocated_gib": peak_gib,
            "load_average_before_after": [load_before, os.getloadavg()],
            "step_ms_min": fastest,
            "step_ms_median": median,
            "step_ms_all": step_ms,
            "loss_only_fwd_bwd_ms_median": loss_ms,
            "mile_overhead_vs_cross_entropy_pct": overhead("cross_entropy"),
            "mile_overhead_vs_megatron_ce_pct": overhead("megatron_ce"),
            "mile_overhead_paired_median_pct": paired,
            "loss_only_mile_minus_cross_entropy_pct_of_step": loss_share("cross_entropy"),
            "loss_only_mile_minus_megatron_ce_pct_of_step": loss_share("megatron_ce"),
        }
        out = own.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                      f"train_{'gpu' if torch.cuda.is_available() else 'cpu'}.json")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        write_json(out, result)
        print("| loss | step ms (min) | step ms (median) | tokens/s | MFU | peak GiB | loss alone fwd+bwd ms |\n"
              "|---|---|---|---|---|---|---|")
        for arm in arms:
            mfu_text = f"{100 * mfu[arm]:.1f}%" if mfu else "-"
            peak_text = f"{peak_gib[arm]:.1f}" if peak_gib else "-"
            loss_text = f"{loss_ms[arm]:.1f}" if loss_ms else "-"
            print(f"| {arm} | {fastest[arm]:.1f} | {median[arm]:.1f} | {tokens_per_s[arm]:.0f} | {mfu_text} | "
                  f"{peak_text} | {loss_text} |")
        print("levers: " + ", ".join(f"{k} {v}" for k, v in result["levers"].items()))
        if set(ARMS) <= set(arms) and loss_ms:
            print(f"MiLe step-time overhead (fastest steps): {result['mile_overhead_vs_cross_entropy_pct']:+.2f}% "
                  f"vs --loss cross_entropy, {result['mile_overhead_vs_megatron_ce_pct']:+.2f}% vs megatron-core's "
                  f"CE; paired per-round median {paired['cross_entropy']:+.2f}% / {paired['megatron_ce']:+.2f}%; "
                  f"loss alone: {result['loss_only_mile_minus_cross_entropy_pct_of_step']:+.2f}% / "
                  f"{result['loss_only_mile_minus_megatron_ce_pct_of_step']:+.2f}% of a step")
        for row in top_kernels or []:
            print(f"  {row['share_pct']:5.1f}%  {row['self_ms']:9.2f} ms  {row['name'][:100]}")
        print(f"wrote {out}")
    destroy_distributed(created)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
