#!/bin/bash
# The GPU checks and benchmarks of one node, in one go (run it in the container of docker/ or any
# CUDA environment with megatron-mile importable):
#
#   bash bench/gpu_checks.sh                       # writes into bench/results/
#   RESULTS_DIR=/tmp/gpu SKIP_TESTS=1 bash bench/gpu_checks.sh
#
# 1. the environment (GPU, driver, torch, megatron-core, transformer-engine) -> gpu_env.txt
# 2. loss alone, megatron-core's vocab_parallel_cross_entropy vs MiLe / focal -> loss_bench_gpu.json
# 3. training steps of the paper's 468M LLaMA, megatron CE / --loss cross_entropy / --loss mile
#    cycled in one run: tokens/s, MFU, peak memory -> train_gpu.json
# 4. the `gpu`-marked tests (NCCL, bf16, transformer-engine spec, launch script, distributed
#    optimizer checkpoint resume) -> pytest_gpu.log
# Every step runs even when an earlier one fails; the exit status is non-zero if any failed.
set -uo pipefail

RESULTS_DIR=${RESULTS_DIR:-bench/results}
SKIP_TESTS=${SKIP_TESTS:-0}           # 1: benchmarks only
STEP_TIMEOUT=${STEP_TIMEOUT:-900}     # seconds per step
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-8}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-64}
TRAIN_STEPS=${TRAIN_STEPS:-8}         # measured steps per loss after one warm-up round
PYTEST_ARGS=${PYTEST_ARGS:-}          # e.g. "-n 4" with pytest-xdist: the tests share the GPU

mkdir -p "${RESULTS_DIR}"
export PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME COMMAND...: run with a time limit, record a failure, go on
    local name=$1
    shift
    echo "=== ${name}: $*"
    local start=${SECONDS}
    timeout "${STEP_TIMEOUT}" "$@"
    local rc=$?
    echo "=== ${name}: exit ${rc} after $((SECONDS - start)) s"
    if [[ ${rc} -ne 0 ]]; then
        failed+=("${name}")
    fi
}

step environment bash -c "set -e; nvidia-smi; python3 - > '${RESULTS_DIR}/gpu_env.txt' <<'EOF'
import importlib.metadata as md, sys, torch
print('python', sys.version.split()[0])
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', '.'.join(map(str, torch.cuda.nccl.version())))
print('gpu', torch.cuda.get_device_name(), torch.cuda.device_count(), 'x')
for name in ('megatron-core', 'transformer-engine', 'transformer_engine', 'apex'):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, 'not installed')
EOF
cat '${RESULTS_DIR}/gpu_env.txt'"

step loss_bench python3 bench/loss_bench.py --device cuda --tokens 8192 --vocab 32000 128256 --reps 20 \
    --output "${RESULTS_DIR}/loss_bench_gpu.json"

step train_bench python3 bench/train_bench.py --steps "${TRAIN_STEPS}" --loss-repeats 10 \
    --out "${RESULTS_DIR}/train_gpu.json" \
    --num-layers 24 --hidden-size 1024 --ffn-hidden-size 4096 --num-attention-heads 16 \
    --seq-length 1024 --max-position-embeddings 1024 --vocab-size 31999 --bf16 \
    --micro-batch-size "${MICRO_BATCH_SIZE}" --global-batch-size "${GLOBAL_BATCH_SIZE}"

if [[ "${SKIP_TESTS}" != 1 ]]; then
    step gpu_tests bash -c "set -o pipefail; python3 -m pytest tests/test_gpu.py -m gpu -v -rs ${PYTEST_ARGS} 2>&1 \
        | tee '${RESULTS_DIR}/pytest_gpu.log'"
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"
