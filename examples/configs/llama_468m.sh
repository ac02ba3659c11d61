# shellcheck shell=bash
# LLaMA 468M of the MiLe paper: 24 layers, hidden 1024, 16 heads, FFN 4096 (SwiGLU), vocab 32000,
# seq 1024, untied embeddings. Parameters: 24 x 16.8M + 2 x 32000 x 1024 = 468M.
#
# Layout on 8 x 80 GB GPUs per node: TP=1, PP=1, DP=8 (x nodes).
#   Weights + fp32 grads + fp32 master + Adam = 18 B/param = 8.4 GB per GPU; activations at
#   micro-batch 16 (bf16, fused attention, no recompute) ~ 34*s*h B/layer/sample = 14 GB, logits
#   16 x 1024 x 32000 bf16 = 1 GB. ~25 GB: plenty of room, no model parallelism needed.
#
# Batch and budget (assumed, the paper does not state them): global batch 1024 x 1024 tokens = 1M
# tokens per step, 100k steps = 105B tokens.
: "${NUM_LAYERS:=24}"
: "${HIDDEN_SIZE:=1024}"
: "${FFN_HIDDEN_SIZE:=4096}"
: "${NUM_ATTENTION_HEADS:=16}"
: "${TP:=1}"
: "${PP:=1}"
: "${MICRO_BATCH_SIZE:=16}"
: "${GLOBAL_BATCH_SIZE:=1024}"
: "${TRAIN_ITERS:=100000}"
# The paper's objective: the authors' code normalises per micro-batch (alpha = 1/mean(w));
# mile-pretrain's default is the exact weighted mean over the global batch (global).
: "${MILE_NORMALIZATION:=microbatch}"
