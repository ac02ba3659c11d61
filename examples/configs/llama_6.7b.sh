# shellcheck shell=bash
# LLaMA 6.7B of the MiLe paper = the LLaMA-7B shape: 32 layers, hidden 4096, 32 heads, FFN 11008
# (SwiGLU), vocab 32000, seq 1024, untied embeddings. 32 x 202M + 2 x 32000 x 4096 = 6.74B.
#
# Layout on 8 x 80 GB GPUs per node: TP=2 (within NVLink), PP=1, DP=4 per node, distributed
# optimizer, sequence parallelism (transformer-engine).
#   Without sharding, 18 B/param x 6.74B = 121 GB does not fit one GPU; TP=2 alone leaves 61 GB of
#   weights/grads/optimizer per GPU plus activations: too tight. TP=2 + distributed optimizer:
#   3.37B params per GPU x (2 bf16 + 4 fp32 grad + 12/DP master+Adam) = 30 GB at DP=4 (less with
#   more nodes); activations at micro-batch 2 with sequence parallelism ~ 34*s*h/TP B/layer/sample
#   = 4.6 GB. ~36 GB. (TP=1 + distributed optimizer over DP=8 also fits, ~55 GB at micro-batch 1.)
#
# Batch and budget (assumed): global batch 1024 x 1024 tokens, 100k steps = 105B tokens.
: "${NUM_LAYERS:=32}"
: "${HIDDEN_SIZE:=4096}"
: "${FFN_HIDDEN_SIZE:=11008}"
: "${NUM_ATTENTION_HEADS:=32}"
: "${TP:=2}"
: "${PP:=1}"
: "${SEQUENCE_PARALLEL:=1}"
: "${DISTRIBUTED_OPTIMIZER:=1}"
: "${MICRO_BATCH_SIZE:=2}"
: "${GLOBAL_BATCH_SIZE:=1024}"
: "${TRAIN_ITERS:=100000}"
# The paper's objective: the authors' code normalises per micro-batch (alpha = 1/mean(w));
# mile-pretrain's default is the exact weighted mean over the global batch (global).
: "${MILE_NORMALIZATION:=microbatch}"
