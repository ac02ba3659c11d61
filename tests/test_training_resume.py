"""Resuming never continues silently wrong: vocabulary padding across TP sizes, the learning-rate
schedule, preemption (SIGTERM / SIGINT / a wall-clock budget) and unreadable checkpoints.

References: the uninterrupted run (same layout or the layout that saved), the cosine schedule
written out here, and the files on disk."""

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from megatron_mile.pretrain_gpt import main, pretrain

WORLD_SIZE = 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMON = ("--hidden-size 64 --num-attention-heads 4 --micro-batch-size 2 --global-batch-size 8 "
          "--lr-warmup-iters 1 --lr-decay-style cosine --use-cpu-initialization --seed 7 --log-interval 1000 "
          "--eval-iters 0 --num-workers 0 --mock-data --num-layers 4 --seq-length 32 --lr 1e-3").split()
NO_DROPOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]
TP2 = ["--tensor-model-parallel-size", "2"]
TP2PP2 = TP2 + ["--pipeline-model-parallel-size", "2"]


def _train(argv):
    result = pretrain(argv)
    return [(m["iteration"], m["loss"], m["lm_loss"], m["lr"]) for m in result.train], result.checkpoints


def _main(argv):
    """The console entry point: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def run(pool, flags, tp=1, pp=1):
    per_rank = pool.run(_train, COMMON + flags, tp=tp, pp=pp)
    assert all(r[0] == per_rank[0][0] for r in per_rank), "ranks disagree"
    return per_rank[0]


def run_main(pool, flags, tp=1, pp=1):
    per_rank = pool.run(_main, COMMON + flags, tp=tp, pp=pp)
    assert len({code for code, _ in per_rank}) == 1, per_rank  # every rank stops alike
    return per_rank[0]


def _match(resumed, full, tol):
    assert [m[0] for m in resumed] == [m[0] for m in full[-len(resumed):]]
    for a, b in zip(resumed, full[-len(resumed):]):
        assert math.isclose(a[1], b[1], rel_tol=tol) and math.isclose(a[2], b[2], rel_tol=tol), (a, b)


# --------------------------------------------------------------------------- 1. vocabulary padding
VOCAB = ["--vocab-size", "512", "--make-vocab-size-divisible-by", "128", *NO_DROPOUT, "--train-iters", "4"]


@pytest.mark.parametrize("saved_tp,resumed_tp", [(1, 2), (2, 1)])
def test_resume_into_another_tp_size_keeps_the_padded_vocabulary(dist_pool, tmp_path, saved_tp, resumed_tp):
    """512 tokens pad to 640 rows at TP1 and 768 at TP2; the resumed run keeps the checkpoint's rows
    (they divide by the new TP size) and continues the uninterrupted run of the saving layout."""
    tp_flags = {1: [], 2: TP2}
    full, _ = run(dist_pool, VOCAB + tp_flags[saved_tp], tp=saved_tp)
    save = str(tmp_path / "ckpt")
    run(dist_pool, VOCAB + tp_flags[saved_tp] + ["--save", save, "--save-iters", "2", "--exit-interval", "2"],
        tp=saved_tp)
    assert json.load(open(os.path.join(save, "iter_0000002", "args.json")))["padded_vocab_size"] == \
        {1: 640, 2: 768}[saved_tp]
    resumed, _ = run(dist_pool, VOCAB + tp_flags[resumed_tp] + ["--load", save], tp=resumed_tp)
    assert [m[0] for m in resumed] == [3, 4]
    _match(resumed, full, 1e-4)


def test_padded_vocabulary_that_does_not_split_stops_with_the_way_out(dist_pool, tmp_path):
    """255 tokens (NullTokenizer: 254 + EOD) padded to a multiple of 1 at TP1: 255 rows cannot split
    over TP2."""
    save = str(tmp_path / "ckpt")
    flags = ["--vocab-size", "254", "--make-vocab-size-divisible-by", "1", "--train-iters", "2"]
    run(dist_pool, flags + ["--save", save, "--save-iters", "1", "--exit-interval", "1"])
    code, err = run_main(dist_pool, flags + TP2 + ["--load", save], tp=2)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "255 rows" in line and "--tensor-model-parallel-size 2" in line and "divides 255" in line, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- 2. learning-rate schedule
def _cosine_lr(step, peak, warmup, decay):
    """megatron's warmup + cosine schedule at ``step`` (steps taken before this iteration), min lr 0."""
    if step < warmup:
        return peak * step / warmup
    if step > decay:
        return 0.0
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (decay - warmup)))


def test_resume_with_another_schedule(dist_pool, tmp_path):
    """Megatron-LM's three cases when --train-iters (hence the decay length) grows on resume."""
    save = str(tmp_path / "ckpt")
    flags = [*NO_DROPOUT, "--vocab-size", "255"]
    first, _ = run(dist_pool, flags + ["--train-iters", "4", "--save", save])
    assert [m[3] for m in first] == pytest.approx([_cosine_lr(s, 1e-3, 1, 4) for s in range(4)], abs=1e-12)

    # Neither flag: one line listing every mismatch, before the first step.
    code, err = run_main(dist_pool, flags + ["--train-iters", "6", "--lr", "2e-3", "--load", save])
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert "lr_decay_steps 4 in the checkpoint vs 6" in line and "max_lr 0.001 in the checkpoint vs 0.002" in line
    assert "--override-opt_param-scheduler" in line and "--use-checkpoint-opt_param-scheduler" in line
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "4"

    # The flags win: iterations 5 and 6 follow the 6-iteration cosine (no longer lr 0).
    overridden, _ = run(dist_pool, flags + ["--train-iters", "6", "--load", save, "--override-opt_param-scheduler",
                                            "--no-save-final"])
    assert [m[0] for m in overridden] == [5, 6]
    assert [m[3] for m in overridden] == pytest.approx([_cosine_lr(s, 1e-3, 1, 6) for s in (4, 5)], abs=1e-12)
    assert overridden[0][3] > 1e-4

    # The checkpoint wins: its 4-iteration schedule has ended, so lr 0 (asked for explicitly).
    kept, _ = run(dist_pool, flags + ["--train-iters", "6", "--load", save, "--use-checkpoint-opt_param-scheduler",
                                      "--no-save-final"])
    assert [m[3] for m in kept] == [0.0, 0.0]


# --------------------------------------------------------------------------- 3. preemption
PREEMPT = [*TP2PP2, "--vocab-size", "255", "--model-style", "llama", "--train-iters", "16"]


def _launch(flags, world, logs):
    """Start ``world`` ranks of ``python -m megatron_mile.pretrain_gpt`` as a launcher would; rank
    0's stdout is a pipe, the rest goes to files under ``logs``."""
    from megatron_mile.training.distributed import free_port

    port = str(free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
        stdout = subprocess.PIPE if rank == 0 else open(os.path.join(logs, f"rank{rank}.out"), "w")
        stderr = open(os.path.join(logs, f"rank{rank}.err"), "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "megatron_mile.pretrain_gpt", *COMMON, *flags],
                                      cwd=REPO, env=env, stdout=stdout, stderr=stderr, text=True))
    return procs


def _stop_all(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _wait_for(proc, text, timeout=300):
    """Read ``proc``'s stdout until a line contains ``text``; returns the lines read."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"never printed {text!r}:\n{''.join(lines)}")


def test_sigterm_saves_at_the_iteration_reached_and_resume_continues(dist_pool, tmp_path):
    """TP2 x PP2 in four processes; SIGTERM reaches one rank (not the logging one) mid-run: every rank
    finishes the iteration, the checkpoint is written there, all exit 0 with one line saying where;
    --load continues exactly as the uninterrupted run."""
    save = str(tmp_path / "ckpt")
    procs = _launch(PREEMPT + ["--log-interval", "1", "--save", save, "--exit-signal-handler"], 4, str(tmp_path))
    try:
        lines = _wait_for(procs[0], "iteration        2/")
        procs[3].send_signal(signal.SIGTERM)
        out, _ = procs[0].communicate(timeout=300)
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        _stop_all(procs)
    out = "".join(lines) + out
    assert codes == [0, 0, 0, 0], (codes, out[-2000:], open(tmp_path / "rank3.err").read()[-3000:])
    reached = int(open(os.path.join(save, "latest_checkpointed_iteration.txt")).read())
    assert 2 <= reached < 16
    exit_lines = [line for line in out.splitlines() if "exiting at iteration" in line]
    assert exit_lines == [f"> exiting at iteration {reached} (received SIGTERM (--exit-signal-handler)); "
                          f"checkpoint {os.path.join(save, f'iter_{reached:07d}')}"], out[-2000:]
    assert sorted(os.listdir(save)) == [f"iter_{reached:07d}", "latest_checkpointed_iteration.txt"]

    # A save killed half-way (SIGTERM without the flag) leaves iter_*.tmp: ignored, then removed.
    os.makedirs(os.path.join(save, "iter_0000099.tmp"))
    open(os.path.join(save, "iter_0000099.tmp", "common.pt"), "w").close()
    full, _ = run(dist_pool, PREEMPT, tp=2, pp=2)
    resumed, saved = run(dist_pool, PREEMPT + ["--load", save, "--save", save], tp=2, pp=2)
    assert [m[0] for m in resumed] == list(range(reached + 1, 17)) and saved == [16]
    _match(resumed, full, 1e-5)
    assert not os.path.exists(os.path.join(save, "iter_0000099.tmp"))


def test_sigint_without_the_flag_prints_one_line(tmp_path):
    """Ctrl-C without --exit-signal-handler: exit 130, one line, no traceback, nothing half-written
    left behind as a checkpoint."""
    save = str(tmp_path / "ckpt")
    (proc,) = _launch(["--vocab-size", "255", "--train-iters", "2000", "--log-interval", "1", "--save", save,
                       "--save-interval", "1000"], 1, str(tmp_path))
    try:
        _wait_for(proc, "iteration        1/")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        _stop_all([proc])
    err = open(tmp_path / "rank0.err").read()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("mile-pretrain: interrupted (SIGINT)")


def test_exit_duration_saves_and_stops(dist_pool, tmp_path):
    """--exit-duration-in-mins 0: the budget is spent after the first iteration; checkpoint there."""
    save = str(tmp_path / "ckpt")
    metrics, saved = run(dist_pool, ["--vocab-size", "255", "--train-iters", "5", "--save", save,
                                     "--exit-duration-in-mins", "0"])
    assert [m[0] for m in metrics] == [1] and saved == [1]
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "1"


def test_slurm_example_asks_for_the_signal_and_passes_the_flag(tmp_path):
    """The SLURM script requests SIGTERM ahead of the time limit and both launchers pass
    --exit-signal-handler to every rank (its dry-run command, parsed by the real parser)."""
    import re

    from tests.test_examples import SLURM, dry_run_pretrain, parse_pretrain

    (margin,) = re.findall(r"^#SBATCH --signal=TERM@(\d+)$", SLURM.read_text(), flags=re.M)
    assert int(margin) >= 60
    env = {"SLURM_SUBMIT_DIR": REPO, "CONFIG": "tiny", "GPUS_PER_NODE": "2"}
    for launcher in ("torchrun", "srun"):
        _, argv = dry_run_pretrain(SLURM, **env, LAUNCHER=launcher)
        assert parse_pretrain(argv, 2).exit_signal_handler, launcher


# --------------------------------------------------------------------------- 6. unreadable checkpoints
UNREADABLE = ["--vocab-size", "255", "--train-iters", "2"]


@pytest.fixture(scope="module")
def complete_checkpoint(dist_pool, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("complete") / "ckpt")
    run(dist_pool, UNREADABLE + ["--save", save, "--save-iters", "1"])
    return save


@pytest.mark.parametrize("victim", ["__0_0.distcp", "common.pt", ".metadata", "args.json"])
def test_truncated_checkpoint_names_directory_iteration_and_file(dist_pool, complete_checkpoint, tmp_path, victim):
    """The latest checkpoint (iteration 2) has a truncated file: stop naming it, never fall back to
    iteration 1."""
    save = str(tmp_path / "ckpt")
    shutil.copytree(complete_checkpoint, save)
    flags = UNREADABLE
    path = os.path.join(save, "iter_0000002", victim)
    if not os.path.exists(path):
        pytest.skip(f"this megatron-core writes no {victim} (0.19 keeps the common state in the shards)")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    code, err = run_main(dist_pool, flags + ["--train-iters", "3", "--load", save])
    assert code == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert f"--load {save}" in line and "iteration 2" in line and path in line, line
