"""Progress output of the training loop: Megatron-style console lines, JSON lines, TensorBoard.

Console, as Megatron-LM prints it (one line per ``--log-interval``, values averaged over the
iterations since the previous line)::

     iteration       20/     200 | consumed samples:          160 | elapsed time per iteration (ms): 212.3 |
     tokens per second: 2411 | ETA: 0:00:38 | learning rate: 9.000000E-04 | global batch size:     8 |
     lm loss: 5.812345E+00 | loss: 5.790000E+00 | entropy: 5.01E+00 | mean weight: 6.01E+00 |
     grad norm: 0.812 | number of skipped iterations:   0 | number of nan iterations:   0 |

(one line in reality), and after each validation one line per validation set (the blend and each
of its datasets). A validation that takes longer prints ``validation <dataset>: k/N batches`` at
least every 10 seconds. The run ends with a summary (iterations, wall time, tokens/s, last training
and validation loss, last checkpoint). ``--log-json`` gets one object per logged iteration
(``"split": "train"``), per validation set (``"split": "valid"``) and the summary
(``"split": "summary"``). TensorBoard (``--tensorboard-dir``) and Weights & Biases
(``--wandb-project``) get the same scalars.

:func:`fused_path_notice` turns megatron-core's import-time "transformer-engine / apex not installed"
warnings into one start-up line naming the fused paths that are unavailable.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from typing import Dict, List, Optional

# megatron-core's import-time notices that a fused implementation is missing, e.g. "Transformer
# Engine and Apex are not installed. Falling back to Torch optimizers."
_FALLBACK_WARNING = re.compile(r"(?:Transformer Engine|Apex)(?: and Apex)? (?:is|are) not installed\. "
                               r"Falling back to (.*?)\.?$", re.S)

VALIDATION_PROGRESS_S = 10.0
"""Longest silence during a validation pass, in seconds."""


class _DropMessages(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


# megatron-core notices that tell a user nothing: the rerun state machine (unused here) starting,
# and the mock dataset's index cache (never saved, by design).
_MEGATRON_NOTICES = {
    "megatron.core.rerun_state_machine": r"Implicit initialization of Rerun State Machine|"
                                         r"RerunStateMachine initialized in mode RerunMode\.DISABLED",
    "megatron.core.datasets.gpt_dataset": r"Unable to save \w*Mock\w* indexes because path_to_cache is None",
}


# Warnings about megatron-core's and torch's own internals, on every run: the default CUDA-graph
# scope of TransformerConfig, and torch.distributed.checkpoint's deprecations on checkpoint load.
_INTERNAL_WARNINGS = (
    (UserWarning, r"full scope is deprecated"),
    (FutureWarning, r"`load_state_dict` is deprecated and will be removed"),
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),
)


def _drop_megatron_notices() -> None:
    """Silence the notices above (what a user can act on stays visible)."""
    for category, message in _INTERNAL_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, pattern in _MEGATRON_NOTICES.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in log.filters):
            log.addFilter(_DropMessages(pattern))


@contextlib.contextmanager
def fused_path_notice():
    """Around the code that imports megatron-core: its warnings that transformer-engine / apex are
    missing become one line naming the unfused paths; every other warning is shown as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        yield
    _drop_megatron_notices()
    fallbacks = []
    for w in caught:
        match = _FALLBACK_WARNING.search(str(w.message))
        if match:
            what = " ".join(match.group(1).split())
            if what.startswith("local implementations of multi_tensor"):
                what = "local multi_tensor_* helpers"
            if what not in fallbacks:
                fallbacks.append(what)
        elif not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if fallbacks and os.environ.get("RANK", "0") == "0":
        print(f"> transformer-engine / apex not installed, so megatron-core uses unfused paths: "
              f"{'; '.join(fallbacks)}", flush=True)


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
        self.wandb = None
        self.started = time.perf_counter()
        self._last_progress = 0.0
        if is_writer and args.log_json:
            os.makedirs(os.path.dirname(os.path.abspath(args.log_json)), exist_ok=True)
            self.json_file = open(args.log_json, "a", buffering=1)
        # validate_runtime has checked that the packages are there (extras [tensorboard], [wandb]).
        if is_writer and args.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=args.tensorboard_dir)
        if is_writer and getattr(args, "wandb_project", None):
            import wandb

            save_dir = args.wandb_save_dir or os.path.join(args.save or ".", "wandb")
            os.makedirs(save_dir, exist_ok=True)
            config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))}
            self.wandb = wandb.init(project=args.wandb_project, name=args.wandb_exp_name, dir=save_dir,
                                    entity=args.wandb_entity, config=config)

    def _scalars(self, values: Dict[str, Optional[float]], step: int) -> None:
        """The same scalars to TensorBoard and W&B."""
        values = {k: v for k, v in values.items() if v is not None}
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None and values:
            self.wandb.log(values, step=step)

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
        if iteration % self.args.tensorboard_log_interval == 0:
            self._scalars({f"train/{key}": metrics.get(key) for key in (
                "lm_loss", "loss", "entropy", "mean_weight", "lr", "grad_norm", "tokens_per_s",
                "global_batch_size", "loss_scale")}, iteration)
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
            f" learning rate: {record['lr']:.6E} |"
            f" global batch size: {metrics.get('global_batch_size') or self.args.global_batch_size:5d} |"
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
            self._scalars({f"valid/{name}/lm_loss": r["lm_loss"], f"valid/{name}/loss": r["loss"]}, iteration)
        if lines:
            width = max(len(line) for line in lines) + 1
            self.print("-" * width + "\n" + "\n".join(lines) + "\n" + "-" * width)

    def validation_progress(self, dataset: str, done: int, total: int) -> None:
        """Called after each validation batch: a line when :data:`VALIDATION_PROGRESS_S` seconds
        have passed since the last line (or since the pass started, ``done == 0``)."""
        now = time.monotonic()
        if done == 0:
            self._last_progress = now
        elif now - self._last_progress >= VALIDATION_PROGRESS_S:
            self._last_progress = now
            self.print(f" validation {dataset}: {done}/{total} batches")

    def summary(self, train: List[dict], valid: List[dict], last_checkpoint: Optional[str]) -> dict:
        """The end-of-run lines: iterations, wall time, tokens/s, last losses, last checkpoint."""
        wall = time.perf_counter() - self.started
        train_time = sum(m["iteration_time_s"] for m in train)
        tokens = sum(m["tokens"] for m in train)
        record = {
            "split": "summary",
            "iterations": train[-1]["iteration"] if train else 0,
            "iterations_this_run": len(train),
            "wall_time_s": wall,
            "tokens_per_s": tokens / train_time if train_time > 0 else None,
            "train_lm_loss": train[-1]["lm_loss"] if train else None,
            "train_loss": train[-1]["loss"] if train else None,
            "valid": {v["dataset"]: v["lm_loss"] for v in valid if v["iteration"] == valid[-1]["iteration"]}
            if valid else {},
            "last_checkpoint": last_checkpoint,
        }
        self._json(record)

        def fmt(x):
            return "n/a" if x is None else f"{x:.4f}"

        valid_text = ", ".join(f"{k} {v:.4f}" for k, v in record["valid"].items()) or "n/a"
        speed = "n/a" if record["tokens_per_s"] is None else f"{record['tokens_per_s']:.0f}"
        self.print(
            f"> summary: {record['iterations']} iterations ({record['iterations_this_run']} in this run) in "
            f"{datetime.timedelta(seconds=round(wall))} wall time | tokens/s: {speed} | "
            f"last lm loss: {fmt(record['train_lm_loss'])} (objective {fmt(record['train_loss'])}) | "
            f"last validation lm loss: {valid_text} | last checkpoint: {last_checkpoint or 'none'}")
        return record

    def close(self) -> None:
        if self.json_file is not None:
            self.json_file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
        sys.stdout.flush()
