"""Progress output of the training loop: Megatron-style console lines, JSON lines, TensorBoard.

Console, as Megatron-LM prints it (one line per ``--log-interval``, values averaged over the
iterations since the previous line)::

     iteration       20/     200 | consumed samples:          160 | elapsed time per iteration (ms): 212.3 |
     tokens per second: 2411 | ETA: 0:00:38 | learning rate: 9.000000E-04 | global batch size:     8 |
     lm loss: 5.812345E+00 | loss: 5.790000E+00 | entropy: 5.01E+00 | mean weight: 6.01E+00 |
     grad norm: 0.812 | number of skipped iterations:   0 | number of nan iterations:   0 |

(one line in reality), and after each validation one line per validation set (the blend and each
of its datasets). ``--log-json`` gets one object per logged iteration (``"split": "train"``) and
per validation set (``"split": "valid"``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import warnings
from typing import Dict, List


def _mean(values: List[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


class TrainingLogger:
    """Accumulates per-iteration metrics and writes them out every ``log_interval`` iterations.

    Only the writing rank (global rank 0) prints and writes files; every rank keeps the history."""

    def __init__(self, args, is_writer: bool):
        self.args = args
        self.is_writer = is_writer
        self.window: List[Dict[str, float]] = []
        self.json_file = None
        self.tensorboard = None
        if is_writer and args.log_json:
            os.makedirs(os.path.dirname(os.path.abspath(args.log_json)), exist_ok=True)
            self.json_file = open(args.log_json, "a", buffering=1)
        if is_writer and args.tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(log_dir=args.tensorboard_dir)
            except ImportError:
                warnings.warn("--tensorboard-dir given but the tensorboard package is not installed; "
                              "skipping TensorBoard output (pip install tensorboard)")

    def print(self, text: str) -> None:
        if self.is_writer:
            print(text, flush=True)

    def _json(self, record: dict) -> None:
        if self.json_file is not None:
            self.json_file.write(json.dumps(record) + "\n")

    def training_iteration(self, metrics: Dict[str, float]) -> None:
        """Record one iteration; print and write when it closes a log interval."""
        self.window.append(metrics)
        iteration = metrics["iteration"]
        if self.tensorboard is not None and iteration % self.args.tensorboard_log_interval == 0:
            for key in ("lm_loss", "loss", "entropy", "mean_weight", "lr", "grad_norm", "tokens_per_s"):
                if metrics.get(key) is not None:
                    self.tensorboard.add_scalar(f"train/{key}", metrics[key], iteration)
        if iteration % self.args.log_interval and iteration != self.args.train_iters:
            return
        window, self.window = self.window, []
        finite = [m for m in window if math.isfinite(m["loss"])]
        seconds = sum(m["iteration_time_s"] for m in window)
        tokens = sum(m["tokens"] for m in window)
        avg_time = seconds / len(window)
        remaining = self.args.train_iters - iteration
        record = {
            "split": "train",
            "iteration": iteration,
            "consumed_samples": metrics["consumed_samples"],
            "lm_loss": _mean([m["lm_loss"] for m in finite]),
            "loss": _mean([m["loss"] for m in finite]),
            "entropy": _mean([m["entropy"] for m in finite]),
            "mean_weight": _mean([m["mean_weight"] for m in finite]),
            "lr": metrics["lr"],
            "grad_norm": metrics["grad_norm"],
            "tokens_per_s": tokens / seconds if seconds > 0 else float("nan"),
            "iteration_time_s": avg_time,
        }
        if metrics.get("max_memory_allocated_gib") is not None:
            record["max_memory_allocated_gib"] = metrics["max_memory_allocated_gib"]
        self._json(record)
        skipped = sum(1 for m in window if m["skipped"])
        nans = len(window) - len(finite)
        eta = datetime.timedelta(seconds=round(avg_time * remaining))
        grad_norm = "nan" if record["grad_norm"] is None else f"{record['grad_norm']:.3f}"
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.print(
            f" [{stamp}] iteration {iteration:8d}/{self.args.train_iters:8d} |"
            f" consumed samples: {metrics['consumed_samples']:12d} |"
            f" elapsed time per iteration (ms): {avg_time * 1000:.1f} |"
            f" tokens per second: {record['tokens_per_s']:.0f} | ETA: {eta} |"
            f" learning rate: {record['lr']:.6E} | global batch size: {self.args.global_batch_size:5d} |"
            f" lm loss: {record['lm_loss']:.6E} | loss: {record['loss']:.6E} |"
            f" entropy: {record['entropy']:.4E} | mean weight: {record['mean_weight']:.4E} |"
            f" grad norm: {grad_norm} | number of skipped iterations: {skipped:3d} |"
            f" number of nan iterations: {nans:3d} |"
            + (f" max memory allocated (GiB): {record['max_memory_allocated_gib']:.1f} |"
               if "max_memory_allocated_gib" in record else "")
        )

    def validation(self, iteration: int, results: Dict[str, Dict[str, float]]) -> None:
        """One line per validation set (``results[name]`` has lm_loss, loss, entropy, mean_weight)."""
        lines = []
        for name, r in results.items():
            ppl = math.exp(min(20.0, r["lm_loss"]))
            lines.append(f" validation loss at iteration {iteration} [{name}] | lm loss value: {r['lm_loss']:.6E} |"
                         f" lm loss PPL: {ppl:.6E} | loss value: {r['loss']:.6E} |")
            self._json({"split": "valid", "iteration": iteration, "dataset": name, **r})
            if self.tensorboard is not None:
                self.tensorboard.add_scalar(f"valid/{name}/lm_loss", r["lm_loss"], iteration)
        if lines:
            width = max(len(line) for line in lines) + 1
            self.print("-" * width + "\n" + "\n".join(lines) + "\n" + "-" * width)

    def close(self) -> None:
        if self.json_file is not None:
            self.json_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        sys.stdout.flush()
