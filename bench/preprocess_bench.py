"""Benchmark mile-preprocess against the tokenizer's own encode speed (and Megatron-LM's tool).

For each worker count N (default 1 and 2), interleaved over ``--repeats`` rounds:

* ``limit``: N processes, each encoding its share of the corpus's documents with the
  sentencepiece model directly (texts preloaded, only ``encode`` timed; the faster of the two
  encode APIs), tokens / wall time from a common start barrier. No tool can beat this on the
  same cores: it is the tokenizer's own speed.
* ``mile``: ``tools/preprocess_data.py --workers N --append-eod`` as a user runs it, wall time
  from process start to exit (imports and start-up included), peak RSS per process.
* ``megatron`` (with ``--megatron-lm``): Megatron-LM's ``tools/preprocess_data.py`` the same way,
  and whether its outputs are byte-identical to ours.

Then one run of ours on a 4x larger input (the corpus concatenated 4 times) for peak RSS.
Results (raw numbers, medians, ratios) go to ``--output`` as JSON.

``--long-document-mb 50``: peak RSS per process on one line holding one document of that size
(the corpus's texts joined by spaces), as shipped (very long texts encoded in exact pieces) and
with whole-document encoding (the tool with the pieces switched off), and whether both wrote the
same bytes. With ``--long-document-only`` nothing else runs; results go to
``bench/results/preprocess_long_document.json`` unless ``--output`` says otherwise.

    python bench/preprocess_bench.py --min-mb 64 --repeats 3 \
        --megatron-lm /tmp/mlm --megatron-pythonpath /tmp/stubs
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _load_texts(path: str) -> list[str]:
    with open(path, "rb") as f:
        return [json.loads(line)["text"] for line in f]


# ------------------------------------------------------------------------------------------
# The limit: sentencepiece's own encode speed on N processes.
# ------------------------------------------------------------------------------------------


def _encode_share(model, corpus, rank, world, api, barrier, queue):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    texts = _load_texts(corpus)[rank::world]
    barrier.wait()
    start = time.perf_counter()
    cpu_start = time.process_time()
    tokens = 0
    if api == "numpy":
        for t in texts:
            tokens += sp.encode(t, return_type="numpy").size
    else:
        for t in texts:
            tokens += len(sp.encode_as_ids(t))
    queue.put((tokens, start, time.perf_counter(), time.process_time() - cpu_start))


def measure_limit(model: str, corpus: str, workers: int, api: str) -> dict:
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_encode_share,
                         args=(model, corpus, r, workers, api, barrier, queue))
             for r in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    tokens = sum(r[0] for r in results)
    wall = max(r[2] for r in results) - min(r[1] for r in results)
    cpu = sum(r[3] for r in results)
    return {"api": api, "tokens": tokens, "seconds": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 1), "cpu_seconds": round(cpu, 3),
            "tokens_per_cpu_s": round(tokens / cpu, 1)}


# ------------------------------------------------------------------------------------------
# Running a tool: wall time, peak RSS per process (polled) and of the largest (rusage).
# ------------------------------------------------------------------------------------------


def _peak_rss(pid: int) -> int:
    """The process's RSS high-water mark (VmHWM), in bytes; 0 once it is gone.

    Not wait4's ru_maxrss: that counts the benchmark's own memory, inherited by the forked
    child before it execs the tool.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_tool(cmd: list[str], env: dict | None = None) -> dict:
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peaks: dict[int, int] = {}
    done = threading.Event()

    def poll():
        # Per-process peak RSS (main vs workers), from the kernel's high-water mark.
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                # Before exec the child still shares the benchmark's memory: skip until the
                # tool's own command line shows.
                if root.cmdline()[1:2] == cmd[1:2]:
                    for p in [root] + root.children(recursive=True):
                        peaks[p.pid] = max(peaks.get(p.pid, 0), _peak_rss(p.pid))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stderr_chunks = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()),
                              daemon=True)
    reader.start()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    poller.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n"
                           f"{b''.join(stderr_chunks).decode()[-3000:]}")
    main_peak = peaks.get(proc.pid, 0)
    others = sorted((v for k, v in peaks.items() if k != proc.pid), reverse=True)
    return {
        "seconds": round(wall, 3),
        # user + system CPU of the tool and all its (joined) worker processes: insensitive to
        # other load on the machine, unlike wall time.
        "cpu_seconds": round(rusage.ru_utime + rusage.ru_stime, 3),
        # VmHWM read every 20 ms until each process exits.
        "peak_rss_mb_largest_process": round(max([main_peak] + others) / 2**20, 1),
        "peak_rss_mb_main": round(main_peak / 2**20, 1),
        "peak_rss_mb_workers": [round(v / 2**20, 1) for v in others],
    }


def mile_cmd(corpus, prefix, model, workers, whole_documents=False):
    tool = [os.path.join(REPO, "tools", "preprocess_data.py")]
    if whole_documents:  # the same tool with the exact pieces switched off
        tool = ["-c", "import sys; from megatron_mile.data.tokenizers import MileTokenizer; "
                      "MileTokenizer.long_text_chars = 1 << 62; "
                      "from megatron_mile.data.preprocess import main; sys.exit(main())"]
    return [sys.executable, *tool, "--input", corpus,
            "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", model, "--append-eod", "--workers", str(workers), "--quiet"]


def _manifest_totals(prefix: str) -> dict:
    path = os.path.join(os.path.dirname(prefix), "mile-manifests", os.path.basename(prefix) + ".json")
    with open(path) as f:
        return json.load(f)["totals"]


def write_long_document(corpus: str, path: str, megabytes: float) -> int:
    """One jsonl line: a document of ``megabytes`` MB, the corpus's texts joined by spaces."""
    texts = _load_texts(corpus)
    target = int(megabytes * 2**20)
    parts, size, i = [], 0, 0
    while size < target:
        parts.append(texts[i % len(texts)])
        size += len(parts[-1].encode()) + 1
        i += 1
    text = " ".join(parts)
    with open(path, "w") as f:
        f.write(json.dumps({"text": text}) + "\n")
    return len(text.encode())


def measure_long_document(corpus: str, model: str, workdir: str, megabytes: float,
                          workers: list[int]) -> dict:
    path = os.path.join(workdir, f"long_document_{megabytes:g}mb.jsonl")
    text_bytes = write_long_document(corpus, path, megabytes)
    runs = {}
    for w in workers:
        for mode in ("pieces", "whole"):
            out = os.path.join(workdir, f"long_{mode}_w{w}")
            run = run_tool(mile_cmd(path, out, model, w, whole_documents=mode == "whole"))
            run["tokens"] = _manifest_totals(out)["tokens"]
            runs[f"{mode}_w{w}"] = run
        same = _same_files(os.path.join(workdir, f"long_pieces_w{w}_text_document"),
                           os.path.join(workdir, f"long_whole_w{w}_text_document"))
        runs[f"identical_w{w}"] = same
        print(f"[bench] long document {megabytes:g} MB, workers {w}: peak RSS largest process "
              f"{runs[f'pieces_w{w}']['peak_rss_mb_largest_process']} MB in pieces, "
              f"{runs[f'whole_w{w}']['peak_rss_mb_largest_process']} MB whole; identical: {same}",
              file=sys.stderr, flush=True)
    os.remove(path)
    return {"document_bytes": text_bytes, "runs": runs}


def megatron_cmd(mlm, corpus, prefix, model, workers):
    return [sys.executable, os.path.join(mlm, "tools", "preprocess_data.py"), "--input", corpus,
            "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", model, "--append-eod", "--workers", str(workers),
            "--log-interval", "100000000"]


def _same_files(a: str, b: str) -> bool:
    for ext in (".bin", ".idx"):
        if not os.path.exists(a + ext) or not os.path.exists(b + ext):
            return False
        if os.path.getsize(a + ext) != os.path.getsize(b + ext):
            return False
        with open(a + ext, "rb") as fa, open(b + ext, "rb") as fb:
            while True:
                x, y = fa.read(1 << 24), fb.read(1 << 24)
                if x != y:
                    return False
                if not x:
                    break
    return True


def _wait_for_quiet(max_load: float, max_wait: float) -> None:
    """Wait (up to ``max_wait`` s) until the 1-minute load average drops below ``max_load``.

    Shared machines: other jobs' load makes wall-clock figures meaningless; each round's limit
    and tool runs are measured back to back, after this, so they see similar load.
    """
    deadline = time.time() + max_wait
    while max_load > 0 and os.getloadavg()[0] > max_load and time.time() < deadline:
        time.sleep(5)


def _median(xs):
    return round(statistics.median(xs), 1) if xs else None


def _best(xs, key):
    return max(x[key] for x in xs)


def summarize(raw: dict, identical: dict) -> dict:
    """Per worker count: medians, best-of and paired ratios against the limit, CPU efficiency.

    On a shared machine other jobs inflate wall times at random. Three views:
    ``*_over_limit`` compares medians; ``*_over_limit_best`` compares the best (least disturbed)
    run of each; ``*_cpu_efficiency`` compares tokens per CPU-second, which other load barely
    affects (tool CPU includes start-up, imports, reading, JSON and writing).
    """
    summary = {}
    for w, r in raw.items():
        limits = r["limit_numpy"] + r["limit_list"]
        limit = max(_median([x["tokens_per_s"] for x in r["limit_numpy"]]),
                    _median([x["tokens_per_s"] for x in r["limit_list"]]))
        limit_best = _best(limits, "tokens_per_s")
        limit_cpu = max(_median([x["tokens_per_cpu_s"] for x in r["limit_numpy"]]),
                        _median([x["tokens_per_cpu_s"] for x in r["limit_list"]]))
        s = {"limit_tokens_per_s": limit, "limit_tokens_per_s_best": limit_best}
        tools = [("mile", r["mile"]), ("megatron", r.get("megatron", []))]
        for name, runs in tools:
            if not runs:
                continue
            med = _median([x["tokens_per_s"] for x in runs])
            # Paired per round: the limit and the tool ran back to back under similar load.
            paired = [m["tokens_per_s"] / max(a["tokens_per_s"], b["tokens_per_s"])
                      for m, a, b in zip(runs, r["limit_numpy"], r["limit_list"])]
            s.update({
                f"{name}_tokens_per_s": med,
                f"{name}_tokens_per_s_best": _best(runs, "tokens_per_s"),
                f"{name}_over_limit": round(med / limit, 3),
                f"{name}_over_limit_best": round(_best(runs, "tokens_per_s") / limit_best, 3),
                f"{name}_over_limit_paired_median": round(statistics.median(paired), 3),
                f"{name}_cpu_efficiency": round(
                    _median([x["tokens_per_cpu_s"] for x in runs]) / limit_cpu, 3),
                f"{name}_peak_rss_mb_largest_process": max(x["peak_rss_mb_largest_process"]
                                                           for x in runs),
            })
        if identical.get(w) is not None:
            s["byte_identical_to_megatron"] = identical[w]
        summary[w] = s
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/mile_bench")
    ap.add_argument("--corpus", default=None, help="jsonl to use (default: made from installed text)")
    ap.add_argument("--min-mb", type=float, default=64)
    ap.add_argument("--tokenizer-model", default=None,
                    help="sentencepiece model (default: train BPE 32k on a 16 MB sample)")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--megatron-lm", default=None, help="Megatron-LM checkout to run side by side")
    ap.add_argument("--megatron-pythonpath", default="",
                    help="extra PYTHONPATH entries for Megatron-LM's tool (e.g. import stubs)")
    ap.add_argument("--max-load", type=float, default=0.0,
                    help="before each round wait for the 1-min load average to drop below this")
    ap.add_argument("--max-wait", type=float, default=300.0)
    ap.add_argument("--scale", type=int, default=4, help="RSS check on this many copies (0: skip)")
    ap.add_argument("--long-document-mb", type=float, default=0,
                    help="peak RSS on one document of this many MB (0: skip)")
    ap.add_argument("--long-document-only", action="store_true",
                    help="only the --long-document-mb measurement")
    ap.add_argument("--output", default=None,
                    help="results JSON (default bench/results/preprocess.json, or "
                         "preprocess_long_document.json with --long-document-only)")
    ap.add_argument("--summarize", default=None,
                    help="only recompute the summary of an existing results JSON, in place")
    args = ap.parse_args(argv)
    if args.output is None:
        name = "preprocess_long_document.json" if args.long_document_only else "preprocess.json"
        args.output = os.path.join(REPO, "bench", "results", name)
    if args.summarize:
        with open(args.summarize) as f:
            result = json.load(f)
        result["summary"] = summarize(result["raw"], {
            w: s.get("byte_identical_to_megatron") for w, s in result["summary"].items()})
        with open(args.summarize, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(json.dumps(result["summary"], indent=2))
        return 0

    from megatron_mile.data.corpus import write_text_corpus
    from megatron_mile.data.train_tokenizer import TokenizerTrainConfig, train_sentencepiece

    os.makedirs(args.workdir, exist_ok=True)
    result: dict = {
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_start": os.getloadavg()},
        "settings": {"repeats": args.repeats, "workers": args.workers, "append_eod": True,
                     "max_load": args.max_load},
    }
    corpus = args.corpus
    if corpus is None:
        corpus = os.path.join(args.workdir, f"corpus_{int(args.min_mb)}mb.jsonl")
        stats_file = corpus + ".stats.json"
        if not os.path.exists(corpus) or not os.path.exists(stats_file):
            with open(stats_file, "w") as f:
                json.dump(write_text_corpus(corpus, int(args.min_mb * 2**20)).to_dict(), f)
        with open(stats_file) as f:
            result["corpus_stats"] = json.load(f)
    texts = _load_texts(corpus)
    result["corpus"] = {"path": corpus, "bytes": os.path.getsize(corpus), "documents": len(texts),
                        "text_bytes": sum(len(t.encode()) for t in texts)}
    del texts
    model = args.tokenizer_model
    if model is None:
        prefix = os.path.join(args.workdir, f"sp_bpe_{args.vocab_size}")
        model = prefix + ".model"
        if not os.path.exists(model):
            t0 = time.perf_counter()
            train_sentencepiece(TokenizerTrainConfig(
                inputs=[corpus], model_prefix=prefix, vocab_size=args.vocab_size,
                sample_bytes=16 * 2**20, input_sentence_size=500_000))
            with open(prefix + ".seconds", "w") as f:
                f.write(f"{time.perf_counter() - t0:.1f}")
        if os.path.exists(prefix + ".seconds"):
            with open(prefix + ".seconds") as f:
                result["tokenizer_training_seconds"] = float(f.read())
    result["tokenizer"] = {"model": model, "type": "SentencePieceTokenizer (BPE)",
                           "vocab_size": args.vocab_size}
    if args.long_document_mb:
        result["long_document"] = measure_long_document(corpus, model, args.workdir,
                                                        args.long_document_mb, args.workers)
    if args.long_document_only:
        result["machine"]["loadavg_end"] = os.getloadavg()
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(json.dumps(result["long_document"], indent=2))
        return 0

    mlm_env = None
    if args.megatron_lm:
        mlm_env = dict(os.environ)
        mlm_env["PYTHONPATH"] = os.pathsep.join(
            p for p in [args.megatron_lm, args.megatron_pythonpath,
                        mlm_env.get("PYTHONPATH", "")] if p)

    raw: dict = {str(w): {"limit_numpy": [], "limit_list": [], "mile": [], "megatron": []}
                 for w in args.workers}
    tokens = None
    identical = {}
    for rep in range(args.repeats):
        for w in args.workers:
            r = raw[str(w)]
            _wait_for_quiet(args.max_load, args.max_wait)
            r.setdefault("loadavg_before", []).append(round(os.getloadavg()[0], 2))
            # Interleaved so that background load hits all measurements alike.
            r["limit_numpy"].append(measure_limit(model, corpus, w, "numpy"))
            r["limit_list"].append(measure_limit(model, corpus, w, "list"))
            out = os.path.join(args.workdir, f"mile_w{w}")
            run = run_tool(mile_cmd(corpus, out, model, w))
            tokens = _manifest_totals(out)["tokens"]
            run["tokens"] = tokens
            run["tokens_per_s"] = round(tokens / run["seconds"], 1)
            run["tokens_per_cpu_s"] = round(tokens / run["cpu_seconds"], 1)
            r["mile"].append(run)
            if args.megatron_lm:
                mout = os.path.join(args.workdir, f"megatron_w{w}")
                mrun = run_tool(megatron_cmd(args.megatron_lm, corpus, mout, model, w), mlm_env)
                mrun["tokens_per_s"] = round(tokens / mrun["seconds"], 1)
                mrun["tokens_per_cpu_s"] = round(tokens / mrun["cpu_seconds"], 1)
                r["megatron"].append(mrun)
                identical[str(w)] = _same_files(out + "_text_document", mout + "_text_document")
            print(f"[bench] round {rep + 1} workers {w}: limit "
                  f"{r['limit_numpy'][-1]['tokens_per_s'] / 1e6:.3f}/"
                  f"{r['limit_list'][-1]['tokens_per_s'] / 1e6:.3f} M tok/s, mile "
                  f"{run['tokens_per_s'] / 1e6:.3f} M tok/s"
                  + (f", megatron {r['megatron'][-1]['tokens_per_s'] / 1e6:.3f}"
                     if args.megatron_lm else ""), file=sys.stderr, flush=True)

    summary = summarize(raw, identical)
    result["tokens"] = tokens
    result["summary"] = summary
    result["raw"] = raw

    if args.scale:
        big = os.path.join(args.workdir, f"corpus_x{args.scale}.jsonl")
        if not os.path.exists(big) or os.path.getsize(big) != args.scale * os.path.getsize(corpus):
            with open(big, "wb") as out_f:
                for _ in range(args.scale):
                    with open(corpus, "rb") as in_f:
                        while chunk := in_f.read(1 << 24):
                            out_f.write(chunk)
        scaled = {}
        for w in args.workers:
            out = os.path.join(args.workdir, f"mile_x{args.scale}_w{w}")
            run = run_tool(mile_cmd(big, out, model, w))
            run["tokens"] = _manifest_totals(out)["tokens"]
            run["tokens_per_s"] = round(run["tokens"] / run["seconds"], 1)
            scaled[str(w)] = run
            os.remove(out + "_text_document.bin")
        result["scaled_input"] = {"copies": args.scale, "bytes": os.path.getsize(big),
                                  "runs": scaled}
        os.remove(big)
    result["machine"]["loadavg_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
