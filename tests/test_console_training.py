"""What mile-pretrain tells its user: fast --help and one-line errors, one line for megatron-core's
missing fused paths, validation progress, the end-of-run summary, TensorBoard and W&B scalars."""

import contextlib
import glob
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

from megatron_mile.training import logger as logger_module
from megatron_mile.training.arguments import ConfigError, parse_args, validate_runtime

WORLD_SIZE = 1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ("--num-layers 2 --hidden-size 32 --num-attention-heads 2 --seq-length 16 --micro-batch-size 2 "
        "--global-batch-size 2 --lr 1e-3 --train-iters 3 --mock-data --vocab-size 127 --log-interval 1 "
        "--num-workers 0").split()


def _python(*args, env=None, timeout=300):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
    return proc, time.perf_counter() - start


MODULE = ["-m", "megatron_mile.pretrain_gpt"]
CONSOLE_SCRIPT = ["-c", "from megatron_mile.training.arguments import main; main()"]  # mile-pretrain


@pytest.mark.parametrize("entry, argv, code", [(MODULE, ["--help"], 0), (CONSOLE_SCRIPT, ["--help"], 0),
                                               (MODULE, TINY + ["--no-such-flag"], 2),
                                               (CONSOLE_SCRIPT, TINY + ["--num-experts", "8"], 2)])
def test_help_and_flag_errors_answer_before_megatron_core_is_imported(entry, argv, code):
    """`python -m megatron_mile.pretrain_gpt` and the `mile-pretrain` entry point: --help, an unknown
    flag and a rejected Megatron-LM flag answer without importing megatron-core (what took 24 s
    under load), each error in one line."""
    proc, seconds = _python("-X", "importtime", *entry, *argv)
    imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert proc.returncode == code, proc.stderr[-2000:]
    assert not [m for m in imported if m.startswith("megatron.core")], argv
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    if code == 0:
        assert "--attention-backend" in proc.stdout and "docs/training.md" in proc.stdout
    else:
        assert len(errors) == 1 and errors[0].startswith("mile-pretrain: error: "), errors
    # Wall time depends on the machine's load (the import log adds some); on an idle machine:
    if os.getloadavg()[0] < (os.cpu_count() or 1) / 2:
        assert seconds < 3, (argv, seconds)


def test_fused_path_warnings_become_one_line():
    code = ("from megatron_mile.training.logger import fused_path_notice\n"
            "with fused_path_notice():\n    import megatron_mile.pretrain_gpt\n")
    proc, _ = _python("-W", "default", "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if "Falling back" not in subprocess.run(
            [sys.executable, "-W", "default", "-c", "import megatron_mile.pretrain_gpt"],
            capture_output=True, text=True).stderr:
        pytest.skip("transformer-engine or apex is installed: megatron-core has nothing to warn about")
    assert "not installed" not in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("> transformer-engine / apex not installed, so megatron-core "
                                                   "uses unfused paths: ")
    assert "Torch optimizers" in lines[0] and "Torch Norm" in lines[0]


def test_validation_progress_at_most_every_10_seconds(monkeypatch):
    clock = iter([0.0, 3.0, 9.9, 10.5, 12.0, 20.4, 21.0, 50.0])
    monkeypatch.setattr(logger_module.time, "monotonic", lambda: next(clock))
    log = logger_module.TrainingLogger(parse_args(TINY), is_writer=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for done in range(8):  # called before the first batch and after each (evaluate)
            log.validation_progress("all", done, 7)
    # Silences: 0 -> 10.5 (a line), 10.5 -> 21.0 (a line), 21.0 -> 50.0 (a line); none longer than 10 s
    # between a line and the next batch that ends.
    assert out.getvalue().splitlines() == [" validation all: 3/7 batches", " validation all: 6/7 batches",
                                           " validation all: 7/7 batches"]


def _train_and_capture(argv, progress_s):
    from megatron_mile.pretrain_gpt import pretrain
    from megatron_mile.training import logger

    logger.VALIDATION_PROGRESS_S = progress_s
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = pretrain(argv)
    return out.getvalue(), result.train, result.valid, result.checkpoints


def test_summary_and_progress_of_a_run(dist_pool, tmp_path):
    log_json = tmp_path / "log.jsonl"
    argv = TINY + ["--eval-iters", "3", "--eval-interval", "2", "--save", str(tmp_path / "ckpt"),
                   "--save-interval", "2", "--log-json", str(log_json)]
    stdout, train, valid, checkpoints = dist_pool.run(_train_and_capture, argv, 0.0)[0]
    lines = stdout.splitlines()
    for k in (1, 2, 3):  # progress every batch with a 0 s interval
        assert f" validation all: {k}/3 batches" in lines
    summary = [line for line in lines if line.startswith("> summary: ")]
    assert len(summary) == 1 and summary[0] == lines[-1]
    last_valid = [v for v in valid if v["iteration"] == 3]
    assert summary[0].startswith("> summary: 3 iterations (3 in this run) in ")
    assert f"last lm loss: {train[-1]['lm_loss']:.4f} (objective {train[-1]['loss']:.4f})" in summary[0]
    assert f"last validation lm loss: all {last_valid[0]['lm_loss']:.4f}" in summary[0]
    assert summary[0].endswith(f"last checkpoint: {tmp_path / 'ckpt' / 'iter_0000003'}") and checkpoints == [2, 3]
    record = [json.loads(x) for x in log_json.read_text().splitlines()][-1]
    tokens = sum(m["tokens"] for m in train)
    assert record["split"] == "summary" and record["iterations"] == 3
    assert abs(record["tokens_per_s"] - tokens / sum(m["iteration_time_s"] for m in train)) < 1e-6
    assert record["valid"] == {"all": last_valid[0]["lm_loss"]}


def test_a_missing_metrics_package_stops_at_start_up(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "tensorboard")
                        else real(name, *a))
    for flags, message in ((["--wandb-project", "p"], "--wandb-project needs the wandb package: pip install "
                                                        "'megatron-mile[wandb]' (or pip install wandb)"),
                           (["--tensorboard-dir", "tb"], "--tensorboard-dir needs the tensorboard package: pip "
                                                         "install 'megatron-mile[tensorboard]'")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                           .replace(")", r"\)")):
            validate_runtime(parse_args(TINY + flags), world_size=1)


class _FakeWandb:
    """Records what the logger hands to W&B (the real one runs offline in the test below)."""

    def __init__(self):
        self.init_kwargs, self.logged, self.finished = None, [], False

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


def _train_with_fake_wandb(argv):
    import importlib.util

    fake = _FakeWandb()
    fake.__spec__ = importlib.util.find_spec("wandb")
    sys.modules["wandb"] = fake
    try:
        from megatron_mile.pretrain_gpt import pretrain

        pretrain(argv)
    finally:
        del sys.modules["wandb"]
    return fake.init_kwargs, fake.logged, fake.finished


def test_wandb_and_tensorboard_get_the_same_scalars(dist_pool, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")  # validate_runtime checks that it is installed; the fake records the calls
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = TINY + ["--eval-iters", "1", "--eval-interval", "2", "--tensorboard-dir", str(tmp_path / "tb"),
                   "--wandb-project", "proj", "--wandb-exp-name", "run1", "--save", str(tmp_path / "ckpt")]
    init, logged, finished = dist_pool.run(_train_with_fake_wandb, argv)[0]
    assert finished and init["project"] == "proj" and init["name"] == "run1"
    assert init["dir"] == str(tmp_path / "ckpt" / "wandb")  # Megatron-LM's default: <--save>/wandb
    wandb_scalars = {(key, step): value for step, values in logged for key, value in values.items()}
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tb_scalars = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert set(wandb_scalars) == set(tb_scalars)
    assert {k for k, _ in tb_scalars} >= {"train/lm_loss", "train/loss", "train/lr", "train/grad_norm",
                                          "valid/all/lm_loss"}
    for key, value in wandb_scalars.items():
        assert abs(value - tb_scalars[key]) <= 1e-6 * max(1.0, abs(value)), key  # TensorBoard stores float32


def test_wandb_offline_run(tmp_path):
    """The real package, offline (no network): the run completes and W&B writes its offline run."""
    pytest.importorskip("wandb")
    proc, _ = _python("-m", "megatron_mile.pretrain_gpt", *TINY, "--eval-iters", "0", "--wandb-project", "p",
                      "--wandb-save-dir", str(tmp_path / "w"),
                      env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert glob.glob(str(tmp_path / "w" / "wandb" / "offline-run-*" / "run-*.wandb"))


def test_eval_downstream_takes_a_moved_tokenizer(dist_pool, tmp_path):
    """args.json stores the tokenizer's absolute path; when the file has moved, eval_downstream
    says so and --tokenizer-model points it to the new place."""
    from megatron_mile.data.small_tokenizers import train_small_sentencepiece

    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": f"the token {i % 7} follows the token {i % 5} in line {i}"}) + "\n"
                            for i in range(400)))
    model = train_small_sentencepiece(str(text), str(tmp_path / "sp"), vocab_size=300)
    # A relative path on the command line (the pool's workers share this process's directory),
    # absolute in args.json.
    argv = TINY + ["--eval-iters", "0", "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                   os.path.relpath(model), "--save", str(tmp_path / "ckpt")]
    argv.remove("--vocab-size")
    argv.remove("127")
    dist_pool.run(_train_and_capture, argv, 10.0)
    moved = tmp_path / "elsewhere.model"
    os.rename(model, moved)
    task = tmp_path / "task.jsonl"
    task.write_text('{"context": "the token", "choices": [" 1", " 2"], "label": 0}\n')
    # In subprocesses: the tool creates a process group, which must not outlive it in this one.
    common = [os.path.join(ROOT, "tools", "eval_downstream.py"), "--load", str(tmp_path / "ckpt"), "--task",
              f"t={task}", "--output", str(tmp_path / "r.json")]
    env = {"CUDA_VISIBLE_DEVICES": ""}
    proc, _ = _python(*common, env=env)
    assert proc.returncode != 0 and re.search(f"cannot load .*{re.escape(model)}.*--tokenizer-model", proc.stderr)
    proc, _ = _python(*common, "--tokenizer-model", str(moved), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "r.json").read_text())["tasks"]["t"]
