# shellcheck shell=bash
# A few-million-parameter LLaMA-style model for smoke tests of the launch path (CPU or one GPU):
# 2 layers, hidden 128, 4 heads, FFN 512, seq 128, mock data with a 1024-token vocabulary.
: "${NUM_LAYERS:=2}"
: "${HIDDEN_SIZE:=128}"
: "${FFN_HIDDEN_SIZE:=512}"
: "${NUM_ATTENTION_HEADS:=4}"
: "${SEQ_LENGTH:=128}"
: "${VOCAB_SIZE:=1024}"
: "${TP:=1}"
: "${PP:=1}"
: "${MICRO_BATCH_SIZE:=2}"
: "${GLOBAL_BATCH_SIZE:=16}"
: "${TRAIN_ITERS:=20}"
: "${LR_WARMUP_ITERS:=2}"
: "${EVAL_INTERVAL:=10}"
: "${EVAL_ITERS:=1}"
: "${SAVE_INTERVAL:=10}"
: "${LOG_INTERVAL:=1}"
