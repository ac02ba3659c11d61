"""Forward+backward time and peak extra memory: megatron-core's vocab_parallel_cross_entropy vs
megatron-mile's MiLe and focal losses, side by side in one process on the same inputs.

    python bench/loss_bench.py                       # full grid, writes bench/results/loss_bench.json
    python bench/loss_bench.py --tokens 512 --reps 3 # quick look
    python bench/loss_bench.py --device cuda         # one GPU, writes bench/results/loss_bench_gpu.json

Grid: dtype {fp32, bf16} x threads per rank {1, 2} x TP {1, 2} (gloo ranks). Repetitions are
interleaved (megatron, mile, focal, megatron, ...) so drift hits all three alike. Each rank times its
own shard; a repetition's time is the slowest rank's. Backward uses ``torch.autograd.grad`` so no
leaf-gradient copy is timed. Peak extra memory is the rise of the process's peak RSS (VmHWM, reset
through /proc/self/clear_refs) over the fwd+bwd, beyond the logits that both losses consume.

On CUDA (``--device cuda``) one process (TP 1, a one-rank NCCL group) times each repetition with
CUDA events over the grid dtype x vocabulary size, and the peak extra memory is
``torch.cuda.max_memory_allocated()`` over the fwd+bwd minus what was allocated before it.
"""

import argparse
import os
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from megatron_mile.analysis._io import write_json  # noqa: E402
from megatron_mile.testing import DistributedPool  # noqa: E402

LOSSES = ("megatron_ce", "mile", "focal")
# On CUDA "mile" and "focal" run the Triton kernels (LossConfig.kernel="auto"); "mile_torch" is the
# chunked torch path on the same GPU, for comparison.
CUDA_LOSSES = LOSSES + ("mile_torch",)


def _loss_fn(name, emo_weight=None):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_mile.losses import vocab_parallel_focal_cross_entropy, vocab_parallel_mile_cross_entropy

    if name == "megatron_ce":
        return lambda z, y: vocab_parallel_cross_entropy(z, y)
    if name == "mile":
        return lambda z, y: vocab_parallel_mile_cross_entropy(z, y)[0]
    if name == "emo":  # EMO and CE, both with gradients (what --loss emo differentiates)
        from megatron_mile.losses import vocab_parallel_emo

        return lambda z, y: sum(vocab_parallel_emo(z, y, emo_weight)[:2])
    if name == "mile_torch":
        from megatron_mile.losses import LossConfig, vocab_parallel_weighted_cross_entropy

        config = LossConfig(loss="mile", kernel="torch")
        return lambda z, y: vocab_parallel_weighted_cross_entropy(z, y, config).weighted_ce
    if name == "focal":
        return lambda z, y: vocab_parallel_focal_cross_entropy(z, y)[0]
    from megatron_mile.losses import LossConfig, vocab_parallel_weighted_cross_entropy  # any registered loss

    config = LossConfig(loss=name)
    return lambda z, y: vocab_parallel_weighted_cross_entropy(z, y, config).weighted_ce


def _peak_rss_reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss_kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1))


def _interleaved(names, reps, once):
    """One warm-up call per loss, then ``reps`` rounds calling each in turn (drift hits all alike);
    ``{name: [once(name) of each round]}``."""
    for name in names:
        once(name)
    runs = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            runs[name].append(once(name))
    return runs


def body(tokens, vocab, dtype_name, threads, reps, emo_hidden=None, seed=0, extra_losses=()):
    from megatron.core import parallel_state as ps

    torch.set_num_threads(threads)
    dtype = dict(fp32=torch.float32, bf16=torch.bfloat16)[dtype_name]
    rank, world = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    width = vocab // world
    gen = torch.Generator().manual_seed(seed)
    full = torch.randn(tokens, 1, vocab, generator=gen) * 2
    base = full[..., rank * width:(rank + 1) * width].to(dtype).contiguous()
    del full
    target = torch.randint(0, vocab, (tokens, 1), generator=gen)
    upstream = torch.ones(tokens, 1)
    names = LOSSES + tuple(extra_losses) + (("emo",) if emo_hidden else ())
    emo_weight = torch.randn(width, emo_hidden, generator=gen) if emo_hidden else None
    fns = {name: _loss_fn(name, emo_weight) for name in names}
    group = ps.get_tensor_model_parallel_group()

    def once(name, measure_memory=False):
        z = base.clone().requires_grad_(True)
        torch.distributed.barrier(group=group)
        if measure_memory:
            rss0 = _rss_kib("VmRSS")
            _peak_rss_reset()
        t0 = time.perf_counter()
        out = fns[name](z, target)
        torch.autograd.grad(out, z, upstream)
        elapsed = time.perf_counter() - t0
        peak = (_rss_kib("VmHWM") - rss0) * 1024 if measure_memory else None
        return elapsed, peak

    runs = _interleaved(names, reps, once)
    times = {name: [elapsed for elapsed, _ in calls] for name, calls in runs.items()}
    peak = {name: once(name, measure_memory=True)[1] for name in names}
    return dict(times=times, peak_extra_bytes=peak, logits_bytes=base.numel() * base.element_size())


def cuda_body(tokens, vocab, dtype_name, reps, seed=0):
    """One GPU: the same measurement as :func:`body`, timed with CUDA events."""
    dtype = dict(fp32=torch.float32, bf16=torch.bfloat16)[dtype_name]
    gen = torch.Generator(device="cuda").manual_seed(seed)
    base = (torch.randn(tokens, 1, vocab, device="cuda", generator=gen) * 2).to(dtype)
    target = torch.randint(0, vocab, (tokens, 1), device="cuda", generator=gen)
    upstream = torch.ones(tokens, 1, device="cuda")
    fns = {name: _loss_fn(name) for name in CUDA_LOSSES}

    def once(name):
        z = base.clone().requires_grad_(True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fns[name](z, target)
        torch.autograd.grad(out, z, upstream)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3, torch.cuda.max_memory_allocated() - before

    runs = _interleaved(CUDA_LOSSES, reps, once)
    times = {name: [elapsed for elapsed, _ in calls] for name, calls in runs.items()}
    peak = {name: max(extra for _, extra in calls) for name, calls in runs.items()}
    return dict(times=times, peak_extra_bytes=peak, logits_bytes=base.numel() * base.element_size())


def run_cuda_grid(tokens, vocabs, reps, dtypes):
    """TP 1 on the current GPU: a one-rank NCCL group so that megatron's TP group exists."""
    from megatron.core import parallel_state as ps

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    torch.distributed.init_process_group("nccl", rank=0, world_size=1)
    ps.initialize_model_parallel(tensor_model_parallel_size=1)
    rows = []
    try:
        for vocab in vocabs:
            for dtype in dtypes:
                rows.append(_row(cuda_body(tokens, vocab, dtype, reps), tp=1, dtype=dtype, threads_per_rank=None,
                                 tokens=tokens, vocab=vocab, reps=reps))
                print(_table_row(rows[-1]), flush=True)
    finally:
        ps.destroy_model_parallel()
        torch.distributed.destroy_process_group()
    return rows


def _row(per_rank, **fields):
    """A table row from each rank's {times, peak_extra_bytes, logits_bytes} (a list, or one dict)."""
    per_rank = per_rank if isinstance(per_rank, list) else [per_rank]
    reps = fields["reps"]
    # A repetition takes as long as its slowest rank.
    names = list(per_rank[0]["times"])
    times = {n: [max(r["times"][n][i] for r in per_rank) for i in range(reps)] for n in names}
    med = {n: statistics.median(t) for n, t in times.items()}
    row = dict(fields, logits_bytes_per_rank=per_rank[0]["logits_bytes"])
    for n in names:
        row[n] = dict(
            median_ms=med[n] * 1e3,
            min_ms=min(times[n]) * 1e3,
            max_ms=max(times[n]) * 1e3,
            peak_extra_mib=max(r["peak_extra_bytes"][n] for r in per_rank) / 2**20,
        )
        row[n]["time_ratio_to_megatron"] = med[n] / med["megatron_ce"]
    for n in names:
        base_mem = max(row["megatron_ce"]["peak_extra_mib"], 1.0)
        row[n]["memory_ratio_to_megatron"] = max(row[n]["peak_extra_mib"], 0.0) / base_mem
    return row


def run_grid(tokens, vocab, reps, tps, threads_list, dtypes, emo_hidden=None, extra_losses=()):
    rows = []
    for tp in tps:
        with DistributedPool(tp, threads_per_rank=1) as pool:
            for dtype in dtypes:
                for threads in threads_list:
                    per_rank = pool.run(body, tokens, vocab, dtype, threads, reps, emo_hidden, 0, tuple(extra_losses),
                                        tp=tp)
                    row = _row(per_rank, tp=tp, dtype=dtype, threads_per_rank=threads, tokens=tokens, vocab=vocab,
                               reps=reps, extra_losses=list(extra_losses))
                    rows.append(row)
                    print(_table_row(row), flush=True)
    return rows


def _table_row(row):
    m, mi, fo = row["megatron_ce"], row["mile"], row["focal"]
    return (f"| {row['dtype']} | {row['vocab']} | {row['tp']} | {row['threads_per_rank'] or '-'} | "
            f"{m['median_ms']:.2f} | "
            f"{mi['median_ms']:.2f} ({mi['time_ratio_to_megatron']:.2f}x) | "
            f"{fo['median_ms']:.2f} ({fo['time_ratio_to_megatron']:.2f}x) | "
            f"{m['peak_extra_mib']:.0f} / {mi['peak_extra_mib']:.0f} / {fo['peak_extra_mib']:.0f} |"
            + (f" {row['mile_torch']['median_ms']:.2f} ({row['mile_torch']['time_ratio_to_megatron']:.2f}x)"
               f" {row['mile_torch']['peak_extra_mib']:.0f} |" if "mile_torch" in row else "")
            + (f" EMO {row['emo']['median_ms']:.1f} ({row['emo']['time_ratio_to_megatron']:.2f}x)"
               f" {row['emo']['peak_extra_mib']:.0f} MiB |" if "emo" in row else "")
            + "".join(f" {n} {row[n]['median_ms']:.2f} ({row[n]['time_ratio_to_megatron']:.2f}x)"
                      f" {row[n]['peak_extra_mib']:.0f} MiB |" for n in row.get("extra_losses", ())))


TABLE_HEADER = ("| dtype | vocab | TP | threads/rank | megatron CE ms | MiLe ms (ratio) | focal ms (ratio) | "
                "peak extra MiB (CE / MiLe / focal) |\n|---|---|---|---|---|---|---|---|")


TABLE_HEADER_CUDA = (TABLE_HEADER.split("\n")[0] + " MiLe torch path ms (ratio) MiB |\n"
                     + TABLE_HEADER.split("\n")[1] + "---|")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu: gloo ranks over the TP x threads grid; cuda: one GPU, TP 1.")
    parser.add_argument("--tokens", type=int, default=None, help="Default: 2048 on CPU, 8192 on CUDA.")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000],
                        help="Vocabulary sizes (the CPU grid takes the first).")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--emo-hidden", type=int, default=None,
                        help="CPU grid: also time EMO (ce + emo, vocab_parallel_emo) with output weights of this "
                             "hidden size.")
    parser.add_argument("--losses", nargs="+", default=[],
                        help="CPU grid: also time these registered losses (megatron_mile.losses.LOSS_NAMES: dft, "
                             "eslm, ...) through vocab_parallel_weighted_cross_entropy.")
    parser.add_argument("--output", default=None,
                        help="Default: bench/results/loss_bench.json (CPU) or loss_bench_gpu.json (CUDA).")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    tokens = args.tokens or (8192 if cuda else 2048)
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         "loss_bench_gpu.json" if cuda else "loss_bench.json")
    print(TABLE_HEADER_CUDA if cuda else TABLE_HEADER)
    if cuda:
        rows = run_cuda_grid(tokens, args.vocab, args.reps, args.dtypes)
    else:
        rows = run_grid(tokens, args.vocab[0], args.reps, args.tp, args.threads, args.dtypes, args.emo_hidden,
                        args.losses)
    result = dict(
        benchmark="loss_bench", torch=torch.__version__, cpu=_cpu_name(), nproc=os.cpu_count(),
        device=torch.cuda.get_device_name() if cuda else "cpu",
        note="time = median fwd+bwd over interleaved repetitions; ratio = median / megatron median",
        rows=rows,
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    write_json(output, result)
    print(f"wrote {output}")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        return "unknown"


if __name__ == "__main__":
    main()
