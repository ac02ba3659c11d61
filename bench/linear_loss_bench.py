"""Output layer + loss, forward and backward: megatron-core's output layer and
``vocab_parallel_cross_entropy`` vs the fused ``vocab_parallel_linear_weighted_cross_entropy``.

    python bench/linear_loss_bench.py                  # CPU, fp32: writes bench/results/linear_loss_bench.json
    python bench/linear_loss_bench.py --device cuda    # one GPU, bf16, the two shapes below:
                                                       #   writes bench/results/linear_loss_bench_gpu.json

Paths, all on the same inputs (hidden ``[tokens, 1, h]``, output weight ``[V, h]``), TP 1:

* ``megatron``: the logits from megatron's output-layer matmul
  (``linear_with_grad_accumulation_and_async_allreduce``, what ``ColumnParallelLinear`` runs), then
  ``tensor_parallel.vocab_parallel_cross_entropy`` (what ``GPTModel`` computes without the fusion);
* ``unfused_mile``: the same logits, then our vocab-parallel MiLe loss;
* ``fused_ce`` / ``fused_mile``: ``vocab_parallel_linear_weighted_cross_entropy``, no logits.

Time: the median of interleaved repetitions (megatron, unfused_mile, fused_ce, fused_mile, megatron,
...) of forward + ``torch.autograd.grad`` for the hidden states and the weight. Peak extra memory:
the rise of the peak over the fwd+bwd (CPU: the process's peak RSS, VmHWM reset through
/proc/self/clear_refs; CUDA: ``max_memory_allocated`` minus what was allocated before) minus the
two gradients every path must return (dX, dW), i.e. what the loss computation needs on top.
Defaults: CPU 2048 tokens x hidden 1024 x vocab 32000 (fp32); CUDA bf16 at 8192 x 4096 x 128256 and
8192 x 1024 x 32000.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from loss_bench import _cpu_name, _interleaved, _peak_rss_reset, _rss_kib  # noqa: E402

from megatron_mile.analysis._io import write_json  # noqa: E402
from megatron_mile.training.distributed import free_port  # noqa: E402

PATHS = ("megatron", "unfused_mile", "fused_ce", "fused_mile")
GPU_SHAPES = ((8192, 4096, 128256), (8192, 1024, 32000))


def _path_fn(name):
    """``fn(hidden, weight, target) -> per-token loss [tokens, 1]`` for one path."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
    from megatron.core.tensor_parallel.layers import linear_with_grad_accumulation_and_async_allreduce

    from megatron_mile.losses import (
        LossConfig,
        vocab_parallel_linear_weighted_cross_entropy,
        vocab_parallel_weighted_cross_entropy,
    )

    def output_layer(hidden, weight):
        return linear_with_grad_accumulation_and_async_allreduce(
            hidden, weight, None, gradient_accumulation_fusion=False, allreduce_dgrad=False, sequence_parallel=False)

    mile, ce = LossConfig(loss="mile"), LossConfig(loss="cross_entropy")
    return {
        "megatron": lambda x, w, y: vocab_parallel_cross_entropy(output_layer(x, w), y),
        "unfused_mile": lambda x, w, y: vocab_parallel_weighted_cross_entropy(output_layer(x, w), y, mile).weighted_ce,
        "fused_ce": lambda x, w, y: vocab_parallel_linear_weighted_cross_entropy(x, w, y, ce).weighted_ce,
        "fused_mile": lambda x, w, y: vocab_parallel_linear_weighted_cross_entropy(x, w, y, mile).weighted_ce,
    }[name]


def measure(tokens, hidden_size, vocab, dtype_name, reps, device, seed=0):
    """``{times: {path: [s]}, peak_extra_bytes: {path: bytes}}`` for one shape."""
    dtype = dict(fp32=torch.float32, bf16=torch.bfloat16)[dtype_name]
    cuda = device == "cuda"
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(tokens, 1, hidden_size, device=device, generator=gen).to(dtype)
    weight = (torch.randn(vocab, hidden_size, device=device, generator=gen) / hidden_size ** 0.5 * 2).to(dtype)
    target = torch.randint(0, vocab, (tokens, 1), device=device, generator=gen)
    upstream = torch.ones(tokens, 1, device=device)
    gradient_bytes = (hidden.numel() + weight.numel()) * hidden.element_size()
    fns = {name: _path_fn(name) for name in PATHS}

    def once(name, measure_memory=False):
        x, w = hidden.detach().requires_grad_(True), weight.detach().requires_grad_(True)
        if cuda:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        elif measure_memory:
            before = _rss_kib("VmRSS") * 1024
            _peak_rss_reset()
        t0 = time.perf_counter()
        out = fns[name](x, w, target)
        grads = torch.autograd.grad(out, (x, w), upstream)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        del grads, out
        if cuda:
            peak = torch.cuda.max_memory_allocated() - before
        else:
            peak = _rss_kib("VmHWM") * 1024 - before if measure_memory else None
        return elapsed, None if peak is None else peak - gradient_bytes

    runs = _interleaved(PATHS, reps, once)
    times = {name: [elapsed for elapsed, _ in calls] for name, calls in runs.items()}
    if cuda:
        peak = {name: max(extra for _, extra in calls) for name, calls in runs.items()}
    else:
        peak = {name: once(name, measure_memory=True)[1] for name in PATHS}
    return dict(times=times, peak_extra_bytes=peak, gradient_bytes=gradient_bytes)


def _row(result, **fields):
    row = dict(fields, gradient_bytes=result["gradient_bytes"])
    base_time = statistics.median(result["times"]["megatron"])
    base_mem = max(result["peak_extra_bytes"]["megatron"], 1)
    for name in PATHS:
        times = result["times"][name]
        row[name] = dict(median_ms=statistics.median(times) * 1e3, min_ms=min(times) * 1e3, max_ms=max(times) * 1e3,
                         peak_extra_mib=result["peak_extra_bytes"][name] / 2**20,
                         time_ratio_to_megatron=statistics.median(times) / base_time,
                         memory_ratio_to_megatron=max(result["peak_extra_bytes"][name], 0) / base_mem)
    return row


TABLE_HEADER = ("| device | dtype | tokens x h x V | path | median ms | vs megatron | peak extra MiB | vs megatron |\n"
                "|---|---|---|---|---|---|---|---|")


def _table_rows(row):
    shape = f"{row['tokens']} x {row['hidden']} x {row['vocab']}"
    return "\n".join(
        f"| {row['device']} | {row['dtype']} | {shape} | {name} | {row[name]['median_ms']:.1f} | "
        f"{row[name]['time_ratio_to_megatron']:.2f}x | {row[name]['peak_extra_mib']:.0f} | "
        f"{row[name]['memory_ratio_to_megatron']:.3f} |" for name in PATHS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", type=int, nargs=3, action="append", metavar=("TOKENS", "HIDDEN", "VOCAB"),
                        help="Repeatable. Default: 2048 1024 32000 on CPU; on CUDA the two shapes of the module doc.")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="Default: fp32 on CPU, bf16 on CUDA.")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's).")
    parser.add_argument("--output", default=None, help="Default: bench/results/linear_loss_bench[_gpu].json.")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    shapes = args.shape or (GPU_SHAPES if cuda else [(2048, 1024, 32000)])
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         "linear_loss_bench_gpu.json" if cuda else "linear_loss_bench.json")
    print(TABLE_HEADER, flush=True)
    rows = []
    from megatron.core import parallel_state as ps

    # megatron's cross entropy reads its TP group: one rank (gloo on CPU, NCCL on CUDA), TP 1.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    torch.distributed.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    ps.initialize_model_parallel(tensor_model_parallel_size=1)
    try:
        for tokens, hidden_size, vocab in shapes:
            result = measure(tokens, hidden_size, vocab, dtype, args.reps, args.device)
            rows.append(_row(result, device=args.device, dtype=dtype, tokens=tokens, hidden=hidden_size, vocab=vocab,
                             reps=args.reps))
            print(_table_rows(rows[-1]), flush=True)
    finally:
        ps.destroy_model_parallel()
        torch.distributed.destroy_process_group()
    write_json(output, dict(
        benchmark="linear_loss_bench", torch=torch.__version__,
        device=torch.cuda.get_device_name() if cuda else _cpu_name(), nproc=os.cpu_count(),
        threads=torch.get_num_threads(),
        note="time = median fwd+bwd (grads of hidden and weight) over interleaved repetitions; peak extra = "
             "rise of the peak over the fwd+bwd minus the dX and dW every path returns; ratios vs 'megatron'",
        rows=rows,
    ))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
