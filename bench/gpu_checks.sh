#!/bin/bash
# The GPU checks and benchmarks of one node, in one go (run it in the container of docker/ or any
# CUDA environment with megatron-mile importable):
#
#   bash bench/gpu_checks.sh                       # writes into bench/results/
#   RESULTS_DIR=/tmp/gpu STEPS="loss_bench train_bench" bash bench/gpu_checks.sh
#
# 1. the environment (GPU, driver, torch, megatron-core, transformer-engine) -> gpu_env.txt
# 2. loss alone, megatron-core's vocab_parallel_cross_entropy vs MiLe / focal -> loss_bench_gpu.json
# 2b. output layer + loss: megatron's vs the fused one (--fused-output-loss, no logits), bf16,
#    8192 x 4096 x 128256 and 8192 x 1024 x 32000 -> linear_loss_bench_gpu.json
# 3. training steps of the paper's 468M LLaMA, megatron CE / --loss cross_entropy / --loss mile
#    cycled in one run: tokens/s, MFU, peak memory, the top kernels of one MiLe step -> train_gpu.json
#    (the defaults: SDPA core attention, fused AdamW without transformer-engine / apex)
# 3b. the same before the throughput levers (megatron's unfused attention, foreach AdamW)
#    -> train_gpu_before.json; and with selective recompute at micro-batch 16 -> train_gpu_recompute.json
# 3c. MiLe steps of the same model with --fused-output-loss -> train_gpu_fused.json (tokens/s, peak
#    memory; compare with the mile arm of train_gpu.json)
# 4. pretrain: the launcher (examples/pretrain_mile_single_node.sh) training the 468M model on one
#    GPU with CE, then MiLe, PRETRAIN_ITERS iterations -> pretrain_<loss>.jsonl (tokens/s, memory)
# 5. the `gpu`-marked tests (NCCL, bf16, transformer-engine spec, launch script, distributed
#    optimizer checkpoint resume) -> pytest_gpu.log
# Every step runs even when an earlier one fails; the exit status is non-zero if any failed.
set -uo pipefail

RESULTS_DIR=${RESULTS_DIR:-bench/results}
# which steps to run
STEPS=${STEPS:-environment loss_bench linear_loss_bench train_bench train_before train_recompute train_fused pretrain gpu_tests}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}     # seconds per step
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-8}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-64}
TRAIN_STEPS=${TRAIN_STEPS:-8}         # measured steps per loss after one warm-up round
PRETRAIN_ITERS=${PRETRAIN_ITERS:-30}  # iterations of each launcher run
PYTEST_ARGS=${PYTEST_ARGS:-}          # e.g. "-n 4" with pytest-xdist: the tests share the GPU

mkdir -p "${RESULTS_DIR}"
export PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME COMMAND...: run with a time limit, record a failure, go on
    local name=$1
    shift
    if [[ " ${STEPS} " != *" ${name} "* ]]; then
        return
    fi
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

step linear_loss_bench python3 bench/linear_loss_bench.py --device cuda --reps 10 \
    --output "${RESULTS_DIR}/linear_loss_bench_gpu.json"

MODEL_468M=(--num-layers 24 --hidden-size 1024 --ffn-hidden-size 4096 --num-attention-heads 16
    --seq-length 1024 --max-position-embeddings 1024 --vocab-size 31999 --bf16)
step train_bench python3 bench/train_bench.py --steps "${TRAIN_STEPS}" --loss-repeats 10 --profile-top 15 \
    --out "${RESULTS_DIR}/train_gpu.json" "${MODEL_468M[@]}" \
    --micro-batch-size "${MICRO_BATCH_SIZE}" --global-batch-size "${GLOBAL_BATCH_SIZE}"

# Before the levers of the throughput issue, same shape (CE and MiLe only, fewer steps).
step train_before python3 bench/train_bench.py --steps 4 --loss-repeats 0 --profile-top 15 \
    --arms cross_entropy mile --out "${RESULTS_DIR}/train_gpu_before.json" "${MODEL_468M[@]}" \
    --micro-batch-size "${MICRO_BATCH_SIZE}" --global-batch-size "${GLOBAL_BATCH_SIZE}" \
    --attention-backend unfused --adam-impl foreach

# Selective recompute (core attention) to fit twice the micro-batch: does it pay?
step train_recompute python3 bench/train_bench.py --steps 4 --loss-repeats 0 \
    --arms cross_entropy mile --out "${RESULTS_DIR}/train_gpu_recompute.json" "${MODEL_468M[@]}" \
    --micro-batch-size $((2 * MICRO_BATCH_SIZE)) --global-batch-size "${GLOBAL_BATCH_SIZE}" \
    --recompute-activations

# MiLe with the output layer fused into the loss (no [tokens, vocab] logits).
step train_fused python3 bench/train_bench.py --steps 4 --loss-repeats 0 --arms mile --fused-output-loss \
    --out "${RESULTS_DIR}/train_gpu_fused.json" "${MODEL_468M[@]}" \
    --micro-batch-size "${MICRO_BATCH_SIZE}" --global-batch-size "${GLOBAL_BATCH_SIZE}"

# The 468M model through the launcher, CE then MiLe (checkpoints into a scratch directory).
step pretrain bash -c "set -euo pipefail
    work=\$(mktemp -d)
    for loss in cross_entropy mile; do
        rm -f '${RESULTS_DIR}'/pretrain_\${loss}.jsonl
        CONFIG=llama_468m LOSS=\${loss} GPUS_PER_NODE=1 MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE} \\
            GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE} TRAIN_ITERS=${PRETRAIN_ITERS} LR_WARMUP_ITERS=5 EVAL_ITERS=0 \\
            LOG_INTERVAL=5 SAVE_INTERVAL=1000000 CHECKPOINT_PATH=\${work}/\${loss} \\
            TENSORBOARD_LOGS_PATH=\${work}/tb_\${loss} LOG_JSON='${RESULTS_DIR}'/pretrain_\${loss}.jsonl \\
            bash examples/pretrain_mile_single_node.sh --no-save-final
    done
    rm -rf \${work}"

step gpu_tests bash -c "set -o pipefail; python3 -m pytest tests/test_gpu.py -m gpu -v -rs ${PYTEST_ARGS} 2>&1 \
    | tee '${RESULTS_DIR}/pytest_gpu.log'"

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"
