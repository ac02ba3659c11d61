#!/bin/bash
# Pretrain on the preprocessed Pile blend (after preprocess_pile.sh and blend_pile.sh).
#
#   CONFIG=llama_468m LOSS=mile OUTPUT_DIR=/data/pile_mile bash examples/pile/pretrain_pile.sh
#   LAUNCH=slurm CONFIG=llama_6.7b bash examples/pile/pretrain_pile.sh    # submits with sbatch
#   DRY_RUN=1 bash examples/pile/pretrain_pile.sh                         # print the command
#
# Sets DATA_PATH (the blend in BLEND_FILE) and TOKENIZER_MODEL, then hands over to a launcher:
#   LAUNCH=single_node  examples/pretrain_mile_single_node.sh
#   LAUNCH=multi_node   examples/pretrain_mile_multi_node.sh (run on every node, see that script)
#   LAUNCH=slurm        sbatch examples/pretrain_mile.slurm (with DRY_RUN=1: its srun command)
# Every variable of the launchers and of examples/configs/ applies (CONFIG, LOSS, TP, NNODES, ...).
# Validation: each domain's --split share of its training data gives a per-domain validation loss.
# Extra arguments go to mile-pretrain.
set -euo pipefail

OUTPUT_DIR=${OUTPUT_DIR:-/data/pile_mile}
BLEND_FILE=${BLEND_FILE:-${OUTPUT_DIR}/pile_train_blend.txt}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-${OUTPUT_DIR}/tokenizer/pile_bpe32k.model}
SPLIT=${SPLIT:-995,5,0}                           # train/valid/test share of each domain
LAUNCH=${LAUNCH:-single_node}                     # single_node | multi_node | slurm
CONFIG=${CONFIG:-llama_468m}
LOSS=${LOSS:-mile}
DRY_RUN=${DRY_RUN:-0}                             # 1: print the final command and exit
EXAMPLES_DIR=${EXAMPLES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

if [[ ! -f "${BLEND_FILE}" ]]; then
    echo "no ${BLEND_FILE}: run examples/pile/blend_pile.sh first" >&2
    exit 1
fi
DATA_PATH=$(< "${BLEND_FILE}")
export DATA_PATH TOKENIZER_MODEL SPLIT CONFIG LOSS DRY_RUN EXAMPLES_DIR

case "${LAUNCH}" in
    single_node|multi_node)
        exec bash "${EXAMPLES_DIR}/pretrain_mile_${LAUNCH}.sh" "$@"
        ;;
    slurm)
        export MILE_HOME=${MILE_HOME:-$(dirname "${EXAMPLES_DIR}")}
        if [[ "${DRY_RUN}" == 1 ]]; then
            exec bash "${EXAMPLES_DIR}/pretrain_mile.slurm" "$@"
        fi
        exec sbatch --export=ALL "${EXAMPLES_DIR}/pretrain_mile.slurm" "$@"
        ;;
    *)
        echo "LAUNCH must be single_node, multi_node or slurm, got '${LAUNCH}'" >&2
        exit 2
        ;;
esac
