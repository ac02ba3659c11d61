# shellcheck shell=bash
# Turns the variables of a launcher and a model config into mile-pretrain's flags.
#
# Sourced by examples/pretrain_mile_{single_node,multi_node}.sh and examples/pretrain_mile.slurm
# after a model config (examples/configs/<CONFIG>.sh). Every variable below has a default that an
# environment variable of the same name overrides; the defaults are the MiLe paper's training
# settings (facts: AdamW, lr 3e-4, weight decay 0.1, cosine, seq 1024, vocab 32000) plus the
# assumptions marked "assumed" (not stated by the paper). The objective is mile-pretrain's default
# (--mile-normalization global) unless MILE_NORMALIZATION is set: the paper configurations set it to
# microbatch, the authors' code, so that LOSS=mile means one objective per configuration.
#
# Output: the Megatron-style arrays MODEL_ARGS, TRAINING_ARGS, LOSS_ARGS, MODEL_PARALLEL_ARGS,
# DATA_ARGS, EVAL_AND_LOGGING_ARGS, and PRETRAIN_ARGS (all of them, in that order); run_cmd.

# shellcheck source-path=SCRIPTDIR source=run_cmd.sh
source "$(dirname "${BASH_SOURCE[0]}")/run_cmd.sh"

# --- Loss: cross_entropy | focal | mile | emo --------------------------------------------------
: "${LOSS:=mile}"
: "${MILE_GAMMA:=1.0}"               # w = (sigma + H)^gamma; the paper's default gamma = 1
: "${MILE_SIGMA:=1.0}"
: "${FOCAL_GAMMA:=1.0}"              # assumed: w = (1 - p_y)^gamma with gamma = 1
: "${MILE_NORMALIZATION:=}"          # empty: mile-pretrain's default (global); or microbatch

# --- Shared model settings (LLaMA architecture of the paper) -----------------------------------
: "${SEQ_LENGTH:=1024}"
: "${VOCAB_SIZE:=32000}"             # only used with DATA_PATH=MOCK (NullTokenizer)
: "${INIT_METHOD_STD:=0.02}"         # assumed

# --- Optimisation ------------------------------------------------------------------------------
: "${LR:=3e-4}"
: "${MIN_LR:=3e-5}"                  # assumed: 10% of the peak
: "${LR_WARMUP_ITERS:=2000}"         # assumed
: "${WEIGHT_DECAY:=0.1}"
: "${ADAM_BETA1:=0.9}"               # assumed (LLaMA)
: "${ADAM_BETA2:=0.95}"              # assumed (LLaMA)
: "${CLIP_GRAD:=1.0}"                # assumed (LLaMA)
: "${BF16:=1}"                       # 1: --bf16 (GPU); 0: fp32
: "${SEED:=1234}"

# --- Parallel layout (the model config sets TP/PP/MICRO_BATCH_SIZE for 8 x 80 GB nodes) ---------
: "${TP:=1}"
: "${PP:=1}"
: "${VPP_LAYERS:=}"                  # layers per virtual pipeline stage (interleaved 1F1B); empty: off
: "${SEQUENCE_PARALLEL:=0}"          # 1: --sequence-parallel (needs TP > 1 and transformer-engine)
: "${DISTRIBUTED_OPTIMIZER:=0}"      # 1: shard optimizer state over data-parallel ranks
: "${TRANSFORMER_IMPL:=}"            # empty: transformer_engine when importable on GPU, else local

# --- Data: DATA_PATH is MOCK, one dataset prefix, or a blend "w1 prefix1 w2 prefix2 ..." --------
: "${DATA_PATH:=MOCK}"
: "${TOKENIZER_MODEL:=}"             # sentencepiece .model (required unless DATA_PATH=MOCK)
: "${SPLIT:=969,30,1}"
: "${DATA_CACHE_PATH:=}"
: "${NUM_WORKERS:=2}"

# --- Evaluation, logging, checkpoints ----------------------------------------------------------
: "${RUN_NAME:=${CONFIG:-run}_${LOSS}}"
: "${CHECKPOINT_PATH:=checkpoints/${RUN_NAME}}"
: "${TENSORBOARD_LOGS_PATH:=tensorboard/${RUN_NAME}}"
: "${LOG_JSON:=logs/${RUN_NAME}.jsonl}"
: "${LOG_INTERVAL:=10}"
: "${EVAL_INTERVAL:=1000}"
: "${EVAL_ITERS:=5}"                 # global batches per validation set (the blend and each domain)
: "${SAVE_INTERVAL:=2000}"

MODEL_ARGS=(
    --num-layers "${NUM_LAYERS}"
    --hidden-size "${HIDDEN_SIZE}"
    --ffn-hidden-size "${FFN_HIDDEN_SIZE}"
    --num-attention-heads "${NUM_ATTENTION_HEADS}"
    --seq-length "${SEQ_LENGTH}"
    --max-position-embeddings "${SEQ_LENGTH}"
    --position-embedding-type rope
    --normalization RMSNorm
    --swiglu
    --untie-embeddings-and-output-weights
    --disable-bias-linear
    --hidden-dropout 0.0
    --attention-dropout 0.0
    --init-method-std "${INIT_METHOD_STD}"
)
if [[ -n "${TRANSFORMER_IMPL}" ]]; then
    MODEL_ARGS+=(--transformer-impl "${TRANSFORMER_IMPL}")
fi

TRAINING_ARGS=(
    --micro-batch-size "${MICRO_BATCH_SIZE}"
    --global-batch-size "${GLOBAL_BATCH_SIZE}"
    --train-iters "${TRAIN_ITERS}"
    --lr "${LR}"
    --min-lr "${MIN_LR}"
    --lr-decay-style cosine
    --lr-warmup-iters "${LR_WARMUP_ITERS}"
    --weight-decay "${WEIGHT_DECAY}"
    --adam-beta1 "${ADAM_BETA1}"
    --adam-beta2 "${ADAM_BETA2}"
    --clip-grad "${CLIP_GRAD}"
    --seed "${SEED}"
)
if [[ "${BF16}" == 1 ]]; then
    TRAINING_ARGS+=(--bf16)
else
    TRAINING_ARGS+=(--fp32)  # bf16 is the default on GPU
fi

LOSS_ARGS=(--loss "${LOSS}")
case "${LOSS}" in
    mile) LOSS_ARGS+=(--mile-gamma "${MILE_GAMMA}" --mile-sigma "${MILE_SIGMA}") ;;
    focal) LOSS_ARGS+=(--focal-gamma "${FOCAL_GAMMA}") ;;
    cross_entropy | emo) ;;
    *) echo "LOSS must be cross_entropy, focal, mile or emo, got '${LOSS}'" >&2; exit 2 ;;
esac
if [[ -n "${MILE_NORMALIZATION}" && ( "${LOSS}" == mile || "${LOSS}" == focal ) ]]; then
    LOSS_ARGS+=(--mile-normalization "${MILE_NORMALIZATION}")
fi

MODEL_PARALLEL_ARGS=(
    --tensor-model-parallel-size "${TP}"
    --pipeline-model-parallel-size "${PP}"
)
if [[ -n "${VPP_LAYERS}" ]]; then
    MODEL_PARALLEL_ARGS+=(--num-layers-per-virtual-pipeline-stage "${VPP_LAYERS}")
fi
if [[ "${SEQUENCE_PARALLEL}" == 1 ]]; then
    MODEL_PARALLEL_ARGS+=(--sequence-parallel)
    if [[ -z "${TRANSFORMER_IMPL}" ]]; then
        MODEL_PARALLEL_ARGS+=(--transformer-impl transformer_engine)
    fi
fi
if [[ "${DISTRIBUTED_OPTIMIZER}" == 1 ]]; then
    MODEL_PARALLEL_ARGS+=(--use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather)
fi

if [[ "${DATA_PATH}" == MOCK ]]; then
    DATA_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size "${VOCAB_SIZE}")
else
    if [[ -z "${TOKENIZER_MODEL}" ]]; then
        echo "TOKENIZER_MODEL (a sentencepiece .model) is required with DATA_PATH=${DATA_PATH}" >&2
        exit 2
    fi
    read -r -a DATA_PATH_WORDS <<< "${DATA_PATH}"
    DATA_ARGS=(
        --data-path "${DATA_PATH_WORDS[@]}"
        --split "${SPLIT}"
        --tokenizer-type SentencePieceTokenizer
        --tokenizer-model "${TOKENIZER_MODEL}"
    )
fi
DATA_ARGS+=(--num-workers "${NUM_WORKERS}")
if [[ -n "${DATA_CACHE_PATH}" ]]; then
    DATA_ARGS+=(--data-cache-path "${DATA_CACHE_PATH}")
fi

EVAL_AND_LOGGING_ARGS=(
    --log-interval "${LOG_INTERVAL}"
    --eval-interval "${EVAL_INTERVAL}"
    --eval-iters "${EVAL_ITERS}"
    --save "${CHECKPOINT_PATH}"
    --save-interval "${SAVE_INTERVAL}"
    --tensorboard-dir "${TENSORBOARD_LOGS_PATH}"
    --log-json "${LOG_JSON}"
)
# Resume when a checkpoint is there. (--load on a directory without one starts from scratch, as in
# Megatron-LM, docs/training.md; only a directory that does not exist yet adds a WARNING line.)
if [[ -f "${CHECKPOINT_PATH}/latest_checkpointed_iteration.txt" ]]; then
    EVAL_AND_LOGGING_ARGS+=(--load "${CHECKPOINT_PATH}")
fi

# shellcheck disable=SC2034  # used by the launcher that sources this file
PRETRAIN_ARGS=(
    "${MODEL_ARGS[@]}"
    "${TRAINING_ARGS[@]}"
    "${LOSS_ARGS[@]}"
    "${MODEL_PARALLEL_ARGS[@]}"
    "${DATA_ARGS[@]}"
    "${EVAL_AND_LOGGING_ARGS[@]}"
)
