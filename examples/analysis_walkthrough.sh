#!/bin/bash
# What MiLe changes, on CPU in minutes (docs/analysis.md): train two tiny models, cross entropy and
# MiLe, on the real-text corpus of the README demo with dense early checkpoints, evaluate every
# checkpoint on held-out text, and write the frequency-bucket table, the learning curves by bucket,
# the age-of-acquisition scatter and a zero-shot cloze accuracy per run.
#
#   bash examples/analysis_walkthrough.sh                          # everything under $WORK
#   FIGURES=docs/figures bash examples/analysis_walkthrough.sh     # refresh the checked-in figures
#   SEEDS="1 2" bash examples/analysis_walkthrough.sh              # + cross-run variability
#   DRY_RUN=1 bash examples/analysis_walkthrough.sh                # print the commands only
#
# Steps already done (corpus, tokenizer, datasets, finished runs) are skipped on a re-run; delete
# $WORK to start over. Every variable below can be overridden from the environment.
set -euo pipefail
DRY_RUN=${DRY_RUN:-0}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=configs/run_cmd.sh
source "${REPO}/examples/configs/run_cmd.sh"
# shellcheck source-path=SCRIPTDIR source=configs/real_text_data.sh
source "${REPO}/examples/configs/real_text_data.sh"

: "${WORK:=/tmp/mile_analysis_walkthrough}"
: "${FIGURES:=${WORK}/figures}"
: "${PYTHON:=python}"
# Data: ~4 MB of the standard library's and the required dependencies' docs, licenses and code,
# one pseudo-domain per source (five at 4 MB), no document repeated (so
# the held-out documents are never trained on); a 2048-piece BPE so that the rare tail is populated.
: "${CORPUS_MB:=4}"
: "${VOCAB:=2048}"
: "${SPLIT:=80,20,0}"
# Model and training: a 2-layer LLaMA-style model, 256 steps of 16 x 128 tokens.
: "${LAYERS:=2}"
: "${HIDDEN:=128}"
: "${HEADS:=4}"
: "${SEQ_LENGTH:=128}"
: "${MICRO_BATCH:=16}"
: "${TRAIN_ITERS:=256}"
: "${LR:=3e-3}"
: "${MIN_LR:=3e-4}"
: "${LOSSES:=cross_entropy mile}"
: "${SEEDS:=1}"
# Checkpoints at ceil(2^(k/2)) = 1, 2, 3, 4, 6, 8, 12, 16, 23, 32, 46, 64, 91, 128, 182, 256 (learning
# curves need dense early checkpoints) and every SAVE_INTERVAL steps (the last ones give the final
# surprisal and the within-run variability): 20 checkpoints per run.
: "${SAVES_PER_DOUBLING:=2}"
: "${SAVE_INTERVAL:=32}"
# Evaluation: windows of SEQ_LENGTH + 1 held-out tokens per domain, every position.
: "${EVAL_SEQUENCES:=24}"
: "${BUCKETS:=log}"
# Downstream: a 4-way continuation cloze of this many items from the held-out documents.
: "${CLOZE_ITEMS:=400}"

STORE="${WORK}/surprisal"
REPORT="${WORK}/report"
cd "${REPO}"
if [[ "${DRY_RUN}" != 1 ]]; then
    mkdir -p "${WORK}/data" "${REPORT}" "${FIGURES}"
fi

short_name() {  # cross_entropy -> ce
    case "$1" in
        cross_entropy) echo ce ;;
        *) echo "$1" ;;
    esac
}

# 1-2. Real text, a tokenizer for it, one indexed dataset per domain (as for the Pile's pile_set_name).
prepare_real_text_data

# 3. Training-frequency counts: the documents of the training split only.
run_cmd "${PYTHON}" tools/token_frequency.py --data-path "${DATASETS[@]}" --split "${SPLIT}" --split-name train \
    --preprocess-stats "${DATA_MANIFEST}" --output "${WORK}/frequency/train"

# 4. Train each loss x seed with checkpoints on an exponential schedule.
RUNS=()
STORE_RUNS=()
declare -A SEED_GROUP=()
for loss in ${LOSSES}; do
    for seed in ${SEEDS}; do
        name="$(short_name "${loss}")-s${seed}"
        save="${WORK}/checkpoints/${name}"
        RUNS+=("${name}")
        STORE_RUNS+=(--checkpoints "${name}=${save}")
        SEED_GROUP[$(short_name "${loss}")]+="${SEED_GROUP[$(short_name "${loss}")]:+,}${name}"
        if [[ "$(cat "${save}/latest_checkpointed_iteration.txt" 2>/dev/null)" == "${TRAIN_ITERS}" ]]; then
            echo "# ${name}: already trained (${save})"
            continue
        fi
        run_cmd "${PYTHON}" -m megatron_mile.pretrain_gpt \
            --model-style llama --num-layers "${LAYERS}" --hidden-size "${HIDDEN}" \
            --num-attention-heads "${HEADS}" --seq-length "${SEQ_LENGTH}" \
            --hidden-dropout 0 --attention-dropout 0 \
            --micro-batch-size "${MICRO_BATCH}" --global-batch-size "${MICRO_BATCH}" \
            --train-iters "${TRAIN_ITERS}" --lr "${LR}" --min-lr "${MIN_LR}" \
            --lr-decay-style cosine --lr-warmup-iters 16 --weight-decay 0.1 --adam-beta2 0.95 \
            --seed "${seed}" --loss "${loss}" \
            --data-path "${DATASETS[@]}" --split "${SPLIT}" --data-cache-path "${WORK}/cache" \
            --tokenizer-type SentencePieceTokenizer --tokenizer-model "${TOKENIZER_MODEL}" --num-workers 0 \
            --eval-iters 0 --log-interval 32 \
            --save "${save}" --save-interval "${SAVE_INTERVAL}" \
            --save-schedule exp --save-exp-per-doubling "${SAVES_PER_DOUBLING}"
    done
done

# 5. Surprisal and entropy of every checkpoint on the held-out documents of each domain (a fresh
#    store: a re-run may have retrained the models).
run_cmd rm -rf "${STORE}"
run_cmd "${PYTHON}" tools/eval_surprisal.py "${STORE_RUNS[@]}" --output "${STORE}" \
    --data-path "${DATASETS[@]}" --split "${SPLIT}" --split-name valid \
    --num-sequences "${EVAL_SEQUENCES}" --micro-batch-size 8

# 6. The frequency-bucket table and the learning curves.
run_cmd "${PYTHON}" tools/bucket_report.py --store "${STORE}" --frequency "${WORK}/frequency/train" \
    --runs "${RUNS[@]}" --buckets "${BUCKETS}" --output-prefix "${REPORT}/buckets" \
    --title "Held-out surprisal at the last checkpoint"
GROUPS_ARGS=()
for group in "${!SEED_GROUP[@]}"; do
    if [[ "${SEED_GROUP[${group}]}" == *,* ]]; then
        GROUPS_ARGS+=(--seed-group "${group}=${SEED_GROUP[${group}]}")
    fi
done
run_cmd "${PYTHON}" tools/learning_curves.py --store "${STORE}" --frequency "${WORK}/frequency/train" \
    --runs "${RUNS[@]}" "${GROUPS_ARGS[@]}" --buckets "${BUCKETS}" --output-prefix "${REPORT}/curves" \
    --per-token-dir "${REPORT}/per_token"

# 7. Downstream: the cloze, scored zero-shot (log-likelihood) by every run's last checkpoint.
run_cmd "${PYTHON}" tools/make_choice_task.py --data-path "${DATASETS[@]}" --split "${SPLIT}" --split-name valid \
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "${TOKENIZER_MODEL}" --num-items "${CLOZE_ITEMS}" \
    --output "${REPORT}/cloze.jsonl"
for name in "${RUNS[@]}"; do
    run_cmd "${PYTHON}" tools/eval_downstream.py --load "${WORK}/checkpoints/${name}" \
        --task "cloze=${REPORT}/cloze.jsonl" --output "${REPORT}/downstream_${name}.json"
done

# 8. The figures.
for png in buckets.png curves_curves.png curves_aoa.png; do
    run_cmd cp "${REPORT}/${png}" "${FIGURES}/analysis_${png}"
done
echo "# tables: ${REPORT}/buckets.md ${REPORT}/curves.md; downstream: ${REPORT}/downstream_*.json; figures: ${FIGURES}"
