#!/bin/bash
# Pretrain a LLaMA-style GPT with MiLe (or focal / cross-entropy) loss on one node: torchrun, N GPUs.
#
#   bash examples/pretrain_mile_single_node.sh [extra mile-pretrain flags]
#   CONFIG=llama_1.2b LOSS=cross_entropy GPUS_PER_NODE=8 bash examples/pretrain_mile_single_node.sh
#   DRY_RUN=1 bash examples/pretrain_mile_single_node.sh      # print the command, run nothing
#
# CONFIG picks examples/configs/<CONFIG>.sh (model shape, batch, schedule, TP/PP for 8 x 80 GB);
# any variable there or in examples/configs/common.sh can be overridden from the environment
# (TP=2 PP=2 MICRO_BATCH_SIZE=4 TRAIN_ITERS=500 ...). Extra arguments go to mile-pretrain last,
# so they win over the generated flags. Data parallel size = GPUS_PER_NODE / (TP x PP).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

CONFIG=${CONFIG:-llama_468m}          # llama_468m | llama_1.2b | llama_6.7b | tiny
LOSS=${LOSS:-mile}                    # cross_entropy | focal | mile
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_PORT=${MASTER_PORT:-29500}
DATA_PATH=${DATA_PATH:-MOCK}          # MOCK, a dataset prefix, or "w1 prefix1 w2 prefix2 ..."
TOKENIZER_MODEL=${TOKENIZER_MODEL:-}  # sentencepiece .model (needed unless DATA_PATH=MOCK)
DRY_RUN=${DRY_RUN:-0}                 # 1: print the final command and exit
EXAMPLES_DIR=${EXAMPLES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}

# Needed by megatron-core for sequence parallelism / TP communication overlap.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}

if [[ ! -f "${EXAMPLES_DIR}/configs/${CONFIG}.sh" ]]; then
    echo "unknown CONFIG=${CONFIG}: no ${EXAMPLES_DIR}/configs/${CONFIG}.sh" >&2
    exit 2
fi
# shellcheck source=configs/llama_468m.sh
source "${EXAMPLES_DIR}/configs/${CONFIG}.sh"
# shellcheck source=configs/common.sh
source "${EXAMPLES_DIR}/configs/common.sh"

DISTRIBUTED_ARGS=(
    --nproc-per-node "${GPUS_PER_NODE}"
    --nnodes 1
    --master-addr localhost
    --master-port "${MASTER_PORT}"
)

run_cmd torchrun "${DISTRIBUTED_ARGS[@]}" -m megatron_mile.pretrain_gpt "${PRETRAIN_ARGS[@]}" "$@"
