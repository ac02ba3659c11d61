#!/bin/bash
# The Pile -> one Megatron indexed dataset per domain, for train (30 shards merged), val and test.
#
#   PILE_DIR=/data/pile OUTPUT_DIR=/data/pile_mile bash examples/pile/preprocess_pile.sh
#   DRY_RUN=1 bash examples/pile/preprocess_pile.sh            # print the commands, run nothing
#   # on a cluster: the tokenizer, then one shard per SLURM array task, then the merge
#   STAGES=tokenizer bash examples/pile/preprocess_pile.sh
#   sbatch --array=0-31 --cpus-per-task=32 --wrap "STAGES=preprocess bash examples/pile/preprocess_pile.sh"
#   STAGES=merge bash examples/pile/preprocess_pile.sh
#
# Stages (STAGES, in this order):
#   tokenizer   train a 32000-piece sentencepiece BPE model on a sample of the first train shards,
#               unless TOKENIZER_MODEL exists (e.g. point it at LLaMA's tokenizer.model instead)
#   preprocess  mile-preprocess each of SHARDS (00..29, val, test) split by meta.pile_set_name:
#               OUTPUT_DIR/shards/pile_NN_<domain>_text_document.{bin,idx} and the manifest
#               OUTPUT_DIR/shards/mile-manifests/pile_NN.json; likewise pile_{val,test} in
#               OUTPUT_DIR; a shard whose manifest exists is skipped (restartable)
#   merge       mile-merge-datasets the 30 train shards per domain:
#               OUTPUT_DIR/pile_train_<domain>_text_document.{bin,idx} and
#               OUTPUT_DIR/mile-manifests/pile_train.json (OUTPUT_DIR/shards can be deleted afterwards)
# Next: examples/pile/blend_pile.sh, then examples/pile/pretrain_pile.sh.
set -euo pipefail

PILE_DIR=${PILE_DIR:-/data/pile}                  # 00.jsonl.zst .. 29.jsonl.zst, val.jsonl.zst, test.jsonl.zst
OUTPUT_DIR=${OUTPUT_DIR:-/data/pile_mile}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-${OUTPUT_DIR}/tokenizer/pile_bpe32k.model}
TOKENIZER_SAMPLE_SHARDS=${TOKENIZER_SAMPLE_SHARDS:-"00 01 02 03"}
TOKENIZER_SAMPLE_BYTES=${TOKENIZER_SAMPLE_BYTES:-1e9}
SHARDS=${SHARDS:-"$(seq -s ' ' -w 0 29) val test"}
STAGES=${STAGES:-"tokenizer preprocess merge"}
WORKERS=${WORKERS:-$(nproc)}                       # tokenisation processes per shard
LOG_INTERVAL=${LOG_INTERVAL:-100000}
DRY_RUN=${DRY_RUN:-0}                             # 1: print the commands and exit
EXAMPLES_DIR=${EXAMPLES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# shellcheck source-path=SCRIPTDIR source=../configs/run_cmd.sh
source "${EXAMPLES_DIR}/configs/run_cmd.sh"

read -r -a SHARD_LIST <<< "${SHARDS}"
if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then      # one shard per array task
    SHARD_LIST=("${SHARD_LIST[${SLURM_ARRAY_TASK_ID}]}")
fi

has_stage() { [[ " ${STAGES} " == *" $1 "* ]]; }
manifest_of() { echo "$(dirname "$1")/mile-manifests/$(basename "$1").json"; }  # of an output prefix

if has_stage tokenizer; then
    if [[ -f "${TOKENIZER_MODEL}" ]]; then
        echo "tokenizer: ${TOKENIZER_MODEL} exists, not training one" >&2
    else
        read -r -a SAMPLE <<< "${TOKENIZER_SAMPLE_SHARDS}"
        SAMPLE_FILES=()
        for shard in "${SAMPLE[@]}"; do
            SAMPLE_FILES+=("${PILE_DIR}/${shard}.jsonl.zst")
        done
        [[ "${DRY_RUN}" == 1 ]] || mkdir -p "$(dirname "${TOKENIZER_MODEL}")"
        run_cmd mile-train-tokenizer \
            --input "${SAMPLE_FILES[@]}" \
            --model-prefix "${TOKENIZER_MODEL%.model}" \
            --vocab-size 32000 \
            --model-type bpe \
            --sample-bytes "${TOKENIZER_SAMPLE_BYTES}"
    fi
fi

if has_stage preprocess; then
    for shard in "${SHARD_LIST[@]}"; do
        case "${shard}" in
            val|test) prefix="${OUTPUT_DIR}/pile_${shard}" ;;
            *) prefix="${OUTPUT_DIR}/shards/pile_${shard}" ;;
        esac
        if [[ -f "$(manifest_of "${prefix}")" ]]; then
            echo "preprocess: $(manifest_of "${prefix}") exists, skipping shard ${shard}" >&2
            continue
        fi
        [[ "${DRY_RUN}" == 1 ]] || mkdir -p "$(dirname "${prefix}")"
        run_cmd mile-preprocess \
            --input "${PILE_DIR}/${shard}.jsonl.zst" \
            --output-prefix "${prefix}" \
            --json-keys text \
            --split-by meta.pile_set_name \
            --tokenizer-type SentencePieceTokenizer \
            --tokenizer-model "${TOKENIZER_MODEL}" \
            --append-eod \
            --workers "${WORKERS}" \
            --log-interval "${LOG_INTERVAL}"
    done
fi

if has_stage merge; then
    TRAIN_STATS=()
    for shard in $(seq -w 0 29); do
        TRAIN_STATS+=("$(manifest_of "${OUTPUT_DIR}/shards/pile_${shard}")")
    done
    if [[ "${DRY_RUN}" != 1 ]]; then
        for stats in "${TRAIN_STATS[@]}"; do
            if [[ ! -f "${stats}" ]]; then
                echo "merge: ${stats} is missing (run STAGES=preprocess for every train shard first)" >&2
                exit 1
            fi
        done
    fi
    run_cmd mile-merge-datasets --input "${TRAIN_STATS[@]}" --output-prefix "${OUTPUT_DIR}/pile_train"
fi
