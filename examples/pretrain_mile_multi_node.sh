#!/bin/bash
# Pretrain with MiLe loss on several nodes: run this script once on every node (torchrun).
#
# Static rendezvous (node 0 is the master; give each node its NODE_RANK):
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 bash examples/pretrain_mile_multi_node.sh   # on node0
#   NNODES=4 NODE_RANK=1 MASTER_ADDR=node0 bash examples/pretrain_mile_multi_node.sh   # on node1 ...
# c10d rendezvous (no node ranks; every node gets the same endpoint and id):
#   NNODES=4 RDZV_ENDPOINT=node0:29500 RDZV_ID=run42 bash examples/pretrain_mile_multi_node.sh
#   DRY_RUN=1 ... prints the command, runs nothing.
#
# CONFIG picks examples/configs/<CONFIG>.sh; every variable there and in
# examples/configs/common.sh can be overridden from the environment. Extra arguments go to
# mile-pretrain last. World size = NNODES x GPUS_PER_NODE; DP = world size / (TP x PP).
# On InfiniBand clusters see docker/README.md for the NCCL variables.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

CONFIG=${CONFIG:-llama_6.7b}          # llama_468m | llama_1.2b | llama_6.7b | tiny
LOSS=${LOSS:-mile}                    # cross_entropy | focal | mile
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${NNODES:-2}
NODE_RANK=${NODE_RANK:-0}             # static rendezvous only
MASTER_ADDR=${MASTER_ADDR:-localhost} # static rendezvous only: address of node rank 0
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-}      # host:port; set it to use the c10d rendezvous instead
RDZV_ID=${RDZV_ID:-mile}              # the same on every node of one job
DATA_PATH=${DATA_PATH:-MOCK}          # MOCK, a dataset prefix, or "w1 prefix1 w2 prefix2 ..."
TOKENIZER_MODEL=${TOKENIZER_MODEL:-}  # sentencepiece .model (needed unless DATA_PATH=MOCK)
DRY_RUN=${DRY_RUN:-0}                 # 1: print the final command and exit
EXAMPLES_DIR=${EXAMPLES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}

export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}

if [[ ! -f "${EXAMPLES_DIR}/configs/${CONFIG}.sh" ]]; then
    echo "unknown CONFIG=${CONFIG}: no ${EXAMPLES_DIR}/configs/${CONFIG}.sh" >&2
    exit 2
fi
# shellcheck source=configs/llama_6.7b.sh
source "${EXAMPLES_DIR}/configs/${CONFIG}.sh"
# shellcheck source=configs/common.sh
source "${EXAMPLES_DIR}/configs/common.sh"

DISTRIBUTED_ARGS=(
    --nproc-per-node "${GPUS_PER_NODE}"
    --nnodes "${NNODES}"
)
if [[ -n "${RDZV_ENDPOINT}" ]]; then
    DISTRIBUTED_ARGS+=(--rdzv-backend c10d --rdzv-endpoint "${RDZV_ENDPOINT}" --rdzv-id "${RDZV_ID}")
else
    DISTRIBUTED_ARGS+=(--node-rank "${NODE_RANK}" --master-addr "${MASTER_ADDR}" --master-port "${MASTER_PORT}")
fi

run_cmd torchrun "${DISTRIBUTED_ARGS[@]}" -m megatron_mile.pretrain_gpt "${PRETRAIN_ARGS[@]}" "$@"
