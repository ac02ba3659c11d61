#!/bin/bash
# The MiLe paper's claim tested at small scale (docs/replication.md): cross entropy, focal (gamma 1)
# and MiLe (gamma 0.5, 1, 2; sigma 1), each with the same seeds; a seed fixes the initialisation
# and the data order, so every loss sees the same batches in the same order for a given seed. Then
# held-out surprisal by frequency bucket (the paper's 5/15/80% token-mass buckets and log buckets)
# and by domain, a zero-shot cloze, and for every loss its paired difference from cross entropy
# with a 95% bootstrap interval over seeds and evaluation units, cross entropy's own seed-to-seed
# spread, and a plain statement of what is outside the noise
# (python -m megatron_mile.analysis.replication).
#
#   bash examples/replicate_small.sh                    # CPU: the real-text corpus of the demo
#   PRESET=gpu PILE_DIR=/data/pile_mile bash examples/replicate_small.sh   # one GPU, ~125M, the Pile
#   DRY_RUN=1 bash examples/replicate_small.sh          # print the commands only
#
# Runs already trained to TRAIN_ITERS are skipped on a re-run; delete $WORK to start over. Every
# variable below can be overridden from the environment.
set -euo pipefail
DRY_RUN=${DRY_RUN:-0}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=configs/run_cmd.sh
source "${REPO}/examples/configs/run_cmd.sh"
# shellcheck source-path=SCRIPTDIR source=configs/real_text_data.sh
source "${REPO}/examples/configs/real_text_data.sh"

# --- the study ---------------------------------------------------------------------------------
: "${PRESET:=cpu}"          # cpu: the default study, sized for 2 CPU cores; gpu: ~125M on the Pile
: "${SEEDS:=1 2 3}"
# LABEL:LOSS[:GAMMA[:SIGMA]]; the first is the baseline every other loss is compared with.
: "${VARIANTS:=ce:cross_entropy focal1:focal:1 mile0.5:mile:0.5:1 mile1:mile:1:1 mile2:mile:2:1}"
: "${PYTHON:=python}"
: "${BOOTSTRAP_RESAMPLES:=2000}"
: "${CLOZE_ITEMS:=400}"

if [[ "${PRESET}" == cpu ]]; then
    # The demo's real text (~4 MB of the standard library's and the required dependencies' docs,
    # licenses and code, five pseudo-domains at this size), a
    # 2048-piece BPE, a 4 x 192 LLaMA-style model (the largest for which the 15 runs and their
    # evaluation fit 40 minutes on 2 CPU cores with a margin: 21 min measured, docs/replication.md): 256 steps
    # of 16 x 128 tokens per run.
    : "${WORK:=/tmp/mile_replicate_small}"
    : "${CORPUS_MB:=4}"
    : "${VOCAB:=2048}"
    : "${SPLIT:=80,20,0}"
    : "${LAYERS:=4}"
    : "${HIDDEN:=192}"
    : "${FFN:=768}"
    : "${HEADS:=4}"
    : "${SEQ_LENGTH:=128}"
    : "${MICRO_BATCH:=16}"
    : "${GLOBAL_BATCH:=16}"
    : "${TRAIN_ITERS:=256}"
    : "${WARMUP_ITERS:=16}"
    : "${LR:=3e-3}"
    : "${MIN_LR:=3e-4}"
    : "${EVAL_SEQUENCES:=24}"     # held-out windows of SEQ_LENGTH + 1 tokens per domain
    : "${PRECISION:=--fp32}"
elif [[ "${PRESET}" == gpu ]]; then
    # examples/pile's output (preprocess_pile.sh, blend_pile.sh): the per-domain Pile datasets,
    # their blend and the 32k BPE. A ~125M LLaMA-style model (12 x 768, 12 heads, FFN 2048, untied
    # embeddings: 134M parameters), 7630 steps of 256 x 1024 tokens = 2.0B tokens per run.
    : "${WORK:=/data/mile_replicate_125m}"
    : "${PILE_DIR:=/data/pile_mile}"
    : "${VOCAB:=32000}"
    : "${SPLIT:=995,5,0}"
    : "${LAYERS:=12}"
    : "${HIDDEN:=768}"
    : "${FFN:=2048}"
    : "${HEADS:=12}"
    : "${SEQ_LENGTH:=1024}"
    : "${MICRO_BATCH:=32}"
    : "${GLOBAL_BATCH:=256}"
    : "${TRAIN_ITERS:=7630}"
    : "${WARMUP_ITERS:=150}"
    : "${LR:=6e-4}"
    : "${MIN_LR:=6e-5}"
    : "${EVAL_SEQUENCES:=64}"
    : "${PRECISION:=--bf16}"
else
    echo "PRESET must be cpu or gpu, got '${PRESET}'" >&2
    exit 2
fi

CHECKPOINTS="${WORK}/checkpoints"
STORE="${WORK}/surprisal"
REPORT="${WORK}/report"
cd "${REPO}"
if [[ "${DRY_RUN}" != 1 ]]; then
    mkdir -p "${WORK}/data" "${REPORT}"
fi

# --- 1. data -------------------------------------------------------------------------------------
if [[ "${PRESET}" == cpu ]]; then
    prepare_real_text_data
    TRAIN_DATA=("${DATASETS[@]}")
else
    DATA_MANIFEST="${PILE_DIR}/mile-manifests/pile_train.json"
    TOKENIZER_MODEL="${PILE_DIR}/tokenizer/pile_bpe32k.model"
    BLEND_FILE="${PILE_DIR}/pile_train_blend.txt"
    if [[ ! -f "${BLEND_FILE}" ]]; then
        echo "no ${BLEND_FILE}: run examples/pile/preprocess_pile.sh and blend_pile.sh first" >&2
        exit 1
    fi
    read -r -a TRAIN_DATA < "${BLEND_FILE}"  # weight prefix weight prefix ...
    DATASETS=()
    for word in "${TRAIN_DATA[@]}"; do
        if [[ ! "${word}" =~ ^[0-9.eE+-]+$ ]]; then
            DATASETS+=("${word}")
        fi
    done
fi

# --- 2. training-token frequencies: the documents of the training split only ---------------------
run_cmd "${PYTHON}" tools/token_frequency.py --data-path "${TRAIN_DATA[@]}" --split "${SPLIT}" --split-name train \
    --preprocess-stats "${DATA_MANIFEST}" --output "${WORK}/frequency/train"

# --- 3. every loss with every seed ---------------------------------------------------------------
LABELS=()
STORE_RUNS=()
for seed in ${SEEDS}; do
    for variant in ${VARIANTS}; do
        IFS=: read -r label loss gamma sigma <<< "${variant}"
        case "${loss}" in
            cross_entropy) loss_flags=() ;;
            focal) loss_flags=(--focal-gamma "${gamma:?${variant}: focal needs a gamma}") ;;
            mile) loss_flags=(--mile-gamma "${gamma:?${variant}: mile needs a gamma}" --mile-sigma "${sigma:-1}") ;;
            *) echo "VARIANTS: ${variant}: loss must be cross_entropy, focal or mile" >&2; exit 2 ;;
        esac
        if [[ "${seed}" == "${SEEDS%% *}" ]]; then
            LABELS+=("${label}")
        fi
        name="${label}-s${seed}"
        save="${CHECKPOINTS}/${name}"
        STORE_RUNS+=(--checkpoints "${name}=${save}")
        if [[ "$(cat "${save}/latest_checkpointed_iteration.txt" 2>/dev/null)" == "${TRAIN_ITERS}" ]]; then
            echo "# ${name}: already trained (${save})"
            continue
        fi
        run_cmd "${PYTHON}" -m megatron_mile.pretrain_gpt \
            --model-style llama --num-layers "${LAYERS}" --hidden-size "${HIDDEN}" \
            --ffn-hidden-size "${FFN}" --num-attention-heads "${HEADS}" --seq-length "${SEQ_LENGTH}" \
            --max-position-embeddings "${SEQ_LENGTH}" --hidden-dropout 0 --attention-dropout 0 \
            --micro-batch-size "${MICRO_BATCH}" --global-batch-size "${GLOBAL_BATCH}" \
            --train-iters "${TRAIN_ITERS}" --lr "${LR}" --min-lr "${MIN_LR}" \
            --lr-decay-style cosine --lr-warmup-iters "${WARMUP_ITERS}" --weight-decay 0.1 --adam-beta2 0.95 \
            --clip-grad 1.0 "${PRECISION}" --seed "${seed}" --loss "${loss}" "${loss_flags[@]}" \
            --data-path "${TRAIN_DATA[@]}" --split "${SPLIT}" --data-cache-path "${WORK}/cache" \
            --tokenizer-type SentencePieceTokenizer --tokenizer-model "${TOKENIZER_MODEL}" --num-workers 0 \
            --eval-iters 0 --log-interval 32 --save "${save}" --save-interval "${TRAIN_ITERS}"
    done
done

# --- 4. held-out surprisal of every run's last checkpoint (a fresh store) ------------------------
run_cmd rm -rf "${STORE}"
run_cmd "${PYTHON}" tools/eval_surprisal.py "${STORE_RUNS[@]}" --iterations "${TRAIN_ITERS}" --output "${STORE}" \
    --data-path "${DATASETS[@]}" --split "${SPLIT}" --split-name valid \
    --num-sequences "${EVAL_SEQUENCES}" --micro-batch-size 8

# --- 5. the cloze, scored zero-shot by every run -------------------------------------------------
run_cmd "${PYTHON}" tools/make_choice_task.py --data-path "${DATASETS[@]}" --split "${SPLIT}" --split-name valid \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "${TOKENIZER_MODEL}" --num-items "${CLOZE_ITEMS}" \
    --output "${REPORT}/cloze.jsonl"
for seed in ${SEEDS}; do
    for label in "${LABELS[@]}"; do
        run_cmd "${PYTHON}" tools/eval_downstream.py --load "${CHECKPOINTS}/${label}-s${seed}" \
            --task "cloze=${REPORT}/cloze.jsonl" --output "${REPORT}/downstream_${label}-s${seed}.json"
    done
done

# --- 6. tables and the statistics ----------------------------------------------------------------
RUN_NAMES=()
for label in "${LABELS[@]}"; do
    for seed in ${SEEDS}; do
        RUN_NAMES+=("${label}-s${seed}")
    done
done
for buckets in paper log; do
    run_cmd "${PYTHON}" tools/bucket_report.py --store "${STORE}" --frequency "${WORK}/frequency/train" \
        --runs "${RUN_NAMES[@]}" --buckets "${buckets}" --output-prefix "${REPORT}/buckets_${buckets}" \
        --title "Held-out surprisal, ${buckets} buckets"
done
read -r -a SEED_LIST <<< "${SEEDS}"
run_cmd "${PYTHON}" -m megatron_mile.analysis.replication --store "${STORE}" --frequency "${WORK}/frequency/train" \
    --baseline "${LABELS[0]}" --variants "${LABELS[@]:1}" --seeds "${SEED_LIST[@]}" --cloze-dir "${REPORT}" \
    --bootstrap-resamples "${BOOTSTRAP_RESAMPLES}" --output-prefix "${REPORT}/replication"
echo "# tables: ${REPORT}/replication.md ${REPORT}/buckets_paper.md ${REPORT}/buckets_log.md"
