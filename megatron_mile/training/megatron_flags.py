"""How ``mile-pretrain`` treats each flag of Megatron-LM's ``pretrain_gpt.py``.

Facts from Megatron-LM ``core_v0.16.1`` (``megatron/training/arguments.py``,
``add_megatron_arguments``; the matching release of megatron-core 0.16.1). Every flag of it is in
exactly one class:

* **supported**: ``mile-pretrain`` defines it with Megatron-LM's meaning (the parser in
  :mod:`megatron_mile.training.arguments`; not listed here);
* **accepted and ignored** (:data:`IGNORED`): parsed, then one warning line; only flags whose
  absence changes no result here (kernel fusions that do not exist in this code path, logging,
  profiling and I/O-speed switches);
* **rejected** (:data:`REJECTED`): the run stops before anything starts, with one line naming the
  flag and this table (docs/training.md, "Megatron-LM flags").

A flag of neither Megatron-LM nor ``mile-pretrain`` is an ordinary argparse error.
This module imports nothing heavy (the parser must answer ``--help`` before megatron-core loads).
"""

from __future__ import annotations

from typing import Dict, Tuple

MEGATRON_LM_VERSION = "core_v0.16.1"

DOCS_SECTION = "docs/training.md, section 'Megatron-LM flags'"

# Flags that take one value end with " VALUE", several values with " VALUES"; the others are switches.
IGNORED: Dict[str, Tuple[str, ...]] = {
    "kernel-fusion and implementation switches: the local layer spec has no such fused kernel, "
    "or the result is the same either way": (
        "--no-masked-softmax-fusion", "--no-bias-gelu-fusion", "--no-bias-swiglu-fusion",
        "--no-bias-dropout-fusion", "--no-rope-fusion", "--no-persist-layer-norm",
        "--no-gradient-accumulation-fusion", "--disable-jit-fuser", "--cross-entropy-loss-fusion",
        "--cross-entropy-fusion-impl VALUE", "--no-async-tensor-model-parallel-allreduce",
        "--disable-async-tensor-model-parallel-allreduce", "--use-mcore-models",
        "--apply-query-key-layer-scaling", "--attention-softmax-in-fp32",
        "--accumulate-allreduce-grads-in-fp32", "--no-gradient-reduce-div-fusion",
        "--calculate-per-token-loss", "--no-clone-scatter-output-in-embedding",
        "--disable-clone-scatter-output-in-embedding",
    ),
    "communication-overlap and bucketing switches (speed only)": (
        "--tp-comm-overlap", "--no-tp-comm-bulk-wgrad", "--disable-tp-comm-bulk-wgrad",
        "--no-tp-comm-bulk-dgrad", "--disable-tp-comm-bulk-dgrad", "--no-tp-comm-overlap-ag",
        "--disable-tp-comm-overlap-ag", "--no-tp-comm-overlap-rs", "--disable-tp-comm-overlap-rs",
        "--tp-comm-overlap-rs-dgrad", "--no-tp-comm-split-ag", "--disable-tp-comm-split-ag",
        "--no-tp-comm-split-rs", "--disable-tp-comm-split-rs", "--tp-comm-bootstrap-backend VALUE",
        "--tp-comm-overlap-cfg VALUE", "--defer-embedding-wgrad-compute", "--wgrad-deferral-limit VALUE",
        "--delay-wgrad-compute", "--ddp-num-buckets VALUE", "--ddp-bucket-size VALUE",
        "--ddp-pad-buckets-for-high-nccl-busbw", "--no-align-grad-reduce", "--no-align-param-gather",
        "--overlap-param-gather-with-optimizer-step", "--no-overlap-p2p-communication",
        "--overlap-p2p-communication-warmup-flush", "--no-scatter-gather-tensors-in-pipeline",
        "--use-nccl-ub", "--disable-symmetric-registration", "--use-sharp", "--sharp-enabled-group VALUE",
        "--create-all-gather-group", "--nccl-communicator-config-path VALUE",
        "--high-priority-stream-groups VALUES", "--disable-gloo-process-groups",
        "--distributed-timeout-seconds-after-init VALUE", "--local-rank VALUE",
    ),
    "memory housekeeping (garbage collection, cache emptying)": (
        "--manual-gc", "--manual-gc-interval VALUE", "--no-manual-gc-eval", "--disable-manual-gc-eval",
        "--empty-unused-memory-level VALUE",
    ),
    "data-loading speed switches (samples are the same)": (
        "--no-mmap-bin-files", "--no-create-attention-mask-in-dataloader", "--num-dataset-builder-threads VALUE",
        "--dataloader-fast-cache-load", "--dataloader-defer-npy-index-mmap",
    ),
    "checkpoint I/O switches (checkpoints are always torch_dist, written synchronously)": (
        "--use-dist-ckpt", "--async-save", "--ckpt-fully-parallel-save", "--no-ckpt-fully-parallel-save",
        "--disable-ckpt-fully-parallel-save", "--ckpt-fully-parallel-load", "--ckpt-assume-constant-structure",
        "--use-persistent-ckpt-worker", "--auto-detect-ckpt-format",
    ),
    "logging, timing and profiling extras (the console, --log-json, TensorBoard and W&B report "
    "what docs/training.md lists)": (
        "--log-throughput", "--log-params-norm", "--log-progress", "--timing-log-level VALUE",
        "--timing-log-option VALUE", "--tensorboard-queue-size VALUE", "--log-timers-to-tensorboard",
        "--no-log-loss-scale-to-tensorboard", "--disable-log-loss-scale-to-tensorboard",
        "--log-validation-ppl-to-tensorboard", "--log-memory-to-tensorboard", "--log-memory-interval VALUE",
        "--log-device-memory-used", "--log-num-zeros-in-grad", "--log-world-size-to-tensorboard",
        "--no-barrier-with-level-1-timing", "--logging-level VALUE", "--log-energy", "--log-straggler",
        "--straggler-ctrlr-port VALUE", "--straggler-minmax-count VALUE", "--disable-straggler-on-startup",
        "--no-one-logger", "--one-logger-project VALUE", "--one-logger-run-name VALUE", "--one-logger-async",
        "--app-tag-run-name VALUE", "--app-tag-run-version VALUE", "--config-logger-dir VALUE",
        "--log-max-attention-logit", "--profile", "--profile-step-start VALUE", "--profile-step-end VALUE",
        "--use-pytorch-profiler", "--profile-ranks VALUES", "--record-memory-history",
        "--memory-snapshot-path VALUE", "--run-workload-inspector-server",
        "--check-weight-hash-across-dp-replicas-interval VALUE", "--train-sync-interval VALUE",
        "--no-check-for-nan-in-loss-and-grad", "--multiple-validation-sets",
    ),
}

REJECTED: Dict[str, Tuple[str, ...]] = {
    "mixture of experts is not part of this model": (
        "--num-experts", "--moe-layer-freq", "--moe-use-upcycling", "--moe-router-load-balancing-type",
        "--moe-aux-loss-coeff", "--moe-upcycling-granularity", "--moe-pad-experts-for-cuda-graph-inference",
        "--expert-model-parallel-size", "--expert-tensor-parallel-size", "--moe-extended-tp",
        "--overlap-moe-expert-parallel-comm", "--ep-overlap-early-attn-memory-release",
        "--moe-shared-expert-intermediate-size", "--moe-shared-expert-gate", "--moe-shared-expert-overlap",
        "--moe-ffn-hidden-size", "--moe-router-topk", "--moe-enable-routing-replay",
        "--moe-router-padding-for-quantization", "--moe-router-padding-for-fp8", "--moe-router-num-groups",
        "--moe-router-group-topk", "--moe-router-pre-softmax", "--moe-router-topk-scaling-factor",
        "--moe-router-score-function", "--moe-router-dtype", "--moe-router-enable-expert-bias",
        "--moe-router-bias-update-rate", "--moe-router-force-load-balancing", "--moe-grouped-gemm",
        "--moe-use-legacy-grouped-gemm", "--moe-z-loss-coeff", "--moe-input-jitter-eps",
        "--moe-token-dispatcher-type", "--moe-enable-deepep", "--moe-flex-dispatcher-backend",
        "--moe-per-layer-logging", "--moe-expert-capacity-factor", "--moe-pad-expert-input-to-capacity",
        "--moe-token-drop-policy", "--moe-layer-recompute", "--moe-permute-fusion", "--moe-router-fusion",
        "--moe-apply-probs-on-input", "--moe-latent-size", "--moe-deepep-num-sms", "--moe-hybridep-num-sms",
    ),
    "other attention variants and architectures (MLA, MTP, Mamba/hybrid, linear and sparse attention, "
    "heterogeneous layers) are not part of this model": (
        "--multi-latent-attention", "--q-lora-rank", "--kv-lora-rank", "--qk-head-dim", "--qk-pos-emb-head-dim",
        "--v-head-dim", "--rotary-scaling-factor", "--mscale", "--mscale-all-dim", "--cache-mla-latents",
        "--mtp-standalone", "--mtp-num-layers", "--mtp-loss-scaling-factor", "--experimental-attention-variant",
        "--dsa-indexer-n-heads", "--dsa-indexer-head-dim", "--dsa-indexer-topk", "--dsa-indexer-loss-coeff",
        "--dsa-indexer-use-sparse-loss", "--linear-conv-kernel-dim", "--linear-key-head-dim",
        "--linear-value-head-dim", "--linear-num-key-heads", "--linear-num-value-heads", "--linear-attention-freq",
        "--is-hybrid-model", "--mamba-state-dim", "--mamba-head-dim", "--mamba-num-groups", "--mamba-num-heads",
        "--disable-mamba-mem-eff-path", "--hybrid-attention-ratio", "--hybrid-mlp-ratio",
        "--hybrid-override-pattern", "--heterogeneous-layers-config-path",
        "--heterogeneous-layers-config-encoded-json", "--spec", "--enable-experimental", "--yaml-cfg",
        "--encoder-num-layers", "--decoder-num-layers", "--encoder-seq-length", "--decoder-seq-length",
        "--use-legacy-models", "--bert-no-binary-head", "--mrope-section",
    ),
    "model switches this project does not implement (each changes the model)": (
        "--apply-layernorm-1p", "--add-qkv-bias", "--qk-layernorm", "--qk-l2-norm", "--qk-clip",
        "--qk-clip-alpha", "--qk-clip-threshold", "--attention-output-gate", "--softmax-type",
        "--glu-linear-offset", "--activation-func-clamp-value", "--rotary-interleaved",
        "--fp32-residual-connection", "--apply-residual-connection-post-layernorm", "--window-size",
        "--window-attn-skip-freq", "--relative-attention-num-buckets", "--relative-attention-max-distance",
        "--use-rotary-position-embeddings", "--rotary-seq-len-interpolation-factor", "--use-rope-scaling",
        "--rope-scaling-factor", "--no-rope-freq", "--no-position-embedding", "--rope-type", "--openai-gelu",
        "--squared-relu", "--quick-geglu", "--onnx-safe", "--use-fused-weighted-squared-relu",
        "--use-te-activation-func", "--embedding-init-method-std", "--init-method-xavier-uniform",
        "--data-parallel-random-init", "--no-initialization", "--init-model-with-meta-device",
        "--padded-vocab-size", "--vocab-extra-ids", "--disable-bf16-reduced-precision-matmul",
        "--fp16-lm-cross-entropy", "--grad-reduce-in-bf16",
    ),
    "FP8 / FP4 / kitchen quantisation and CUDA graphs need transformer-engine features not wired here": (
        "--fp8-format", "--fp8-recipe", "--fp8-quantizer-factory", "--fp8-margin", "--fp8-interval",
        "--fp8-amax-history-len", "--fp8-amax-compute-algo", "--no-fp8-wgrad", "--disable-fp8-wgrad",
        "--first-last-layers-bf16", "--num-layers-at-start-in-bf16", "--num-layers-at-end-in-bf16",
        "--fp8-param-gather", "--te-precision-config-file", "--keep-fp8-transpose-cache",
        "--reuse-grad-buf-for-mxfp8-param-ag", "--use-kitchen-attention", "--kitchen-attention-backend",
        "--fp4-format", "--fp4-recipe", "--fp4-param-gather", "--fp4-quantizer-factory",
        "--enable-cuda-graph", "--cuda-graph-warmup-steps", "--external-cuda-graph", "--cuda-graph-impl",
        "--cuda-graph-scope", "--te-rng-tracker", "--inference-rng-tracker", "--symmetric-ar-type",
    ),
    "parallelism and sharding modes other than TP x PP (x VPP) x DP with megatron's DDP and "
    "distributed optimizer": (
        "--hierarchical-context-parallel-sizes", "--max-seqlen-per-dp-cp-rank", "--hybrid-context-parallel",
        "--cp-comm-type", "--pipeline-model-parallel-comm-backend", "--decoder-first-pipeline-num-layers",
        "--decoder-last-pipeline-num-layers", "--pipeline-model-parallel-layout", "--model-parallel-size",
        "--num-virtual-stages-per-pipeline-rank", "--microbatch-group-size-per-virtual-pipeline-stage",
        "--account-for-embedding-in-pipeline-split", "--account-for-loss-in-pipeline-split",
        "--use-ring-exchange-p2p", "--use-megatron-fsdp", "--data-parallel-sharding-strategy",
        "--outer-dp-sharding-strategy", "--fsdp-double-buffer", "--fsdp-manual-registration",
        "--suggested-communication-unit-size", "--enable-full-sharding-in-hsdp",
        "--num-distributed-optimizer-instances", "--use-torch-fsdp2", "--torch-fsdp2-no-reshard-after-forward",
        "--ddp-reduce-scatter-with-fp32-accumulation", "--ddp-average-in-collective", "--use-tp-pp-dp-mapping",
        "--fake-process-group", "--lazy-mpu-init", "--cpu-offloading-num-layers",
        "--fine-grained-activation-offloading", "--offload-modules", "--min-offloaded-tensor-size",
        "--optimizer-cpu-offload", "--optimizer-offload-fraction", "--use-torch-optimizer-for-cpu-offload",
        "--overlap-cpu-optimizer-d2h-h2d", "--no-pin-cpu-grads", "--no-pin-cpu-params",
        "--use-precision-aware-optimizer", "--main-grads-dtype", "--main-params-dtype", "--exp-avg-dtype",
        "--exp-avg-sq-dtype", "--dump-param-to-param-group-map", "--deterministic-mode",
        "--batch-invariant-mode",
    ),
    "optimizer and schedule options with no counterpart here (adam and sgd only)": (
        "--decoupled-lr", "--decoupled-min-lr", "--warmup", "--apply-wd-to-qk-layernorm", "--muon-momentum",
        "--muon-no-split-qkv", "--muon-use-nesterov", "--muon-scale-mode", "--muon-fp32-matmul-prec",
        "--muon-num-ns-steps", "--muon-tp-mode", "--muon-extra-scale-factor", "--no-weight-decay-cond-type",
    ),
    "training-loop modes not implemented (checkpoint conversion and retention, non-persistent and "
    "local checkpoints, rerun engine, skipping iterations, deprecated aliases)": (
        "--persistent-save-interval", "--save-wgrads-interval", "--save-dgrads-interval",
        "--save-retain-interval", "--load-main-params-from-ckpt", "--non-persistent-save-interval",
        "--non-persistent-ckpt-type", "--non-persistent-global-ckpt-dir", "--non-persistent-local-ckpt-dir",
        "--non-persistent-local-ckpt-algo", "--pretrained-checkpoint", "--ckpt-step", "--use-checkpoint-args",
        "--use-mp-args-from-checkpoint-args", "--no-use-tokenizer-model-from-checkpoint-args",
        "--disable-use-tokenizer-model-from-checkpoint-args", "--exit-on-missing-checkpoint",
        "--ckpt-convert-format", "--ckpt-convert-save", "--ckpt-convert-update-legacy-dist-opt-format",
        "--no-strict-fsdp-dtensor-load", "--disable-strict-fsdp-dtensor-load", "--dist-ckpt-strictness",
        "--dist-ckpt-save-pre-mcore-014", "--dist-ckpt-optim-fully-reshardable",
        "--distrib-optim-fully-reshardable-mem-efficient", "--replication", "--replication-jump",
        "--replication-factor", "--no-save-optim", "--no-save-rng", "--dist-ckpt-format",
        "--error-injection-rate", "--error-injection-type", "--rerun-mode", "--check-for-spiky-loss",
        "--check-for-large-grads", "--result-rejected-tracker-filename", "--iterations-to-skip",
        "--skip-train", "--test-mode", "--full-validation", "--exit-signal",
        "--exit-signal-handler-for-dataloader", "--decrease-batch-size-if-needed", "--batch-size",
        "--checkpoint-activations", "--phase-transition-iterations", "--adlr-autoresume",
        "--adlr-autoresume-interval", "--enable-ft-package", "--calc-ft-timeouts", "--ft-num-warmup-iters",
        "--inprocess-restart", "--inprocess-max-iterations", "--inprocess-monitor-thread-interval",
        "--inprocess-monitor-process-interval", "--inprocess-progress-watchdog-interval",
        "--inprocess-heartbeat-interval", "--inprocess-soft-timeout", "--inprocess-hard-timeout",
        "--inprocess-heartbeat-timeout", "--inprocess-barrier-timeout", "--inprocess-completion-timeout",
        "--inprocess-last-call-wait", "--inprocess-termination-grace-time", "--inprocess-granularity",
        "--inprocess-active-world-size", "--inprocess-empty-cuda-cache", "--disable-msc",
    ),
    "data options not implemented (per-split argument files, FIM, object storage, masks across "
    "documents, other tokenizers' options)": (
        "--data-args-path", "--per-split-data-args-path", "--per-dataset-sequences-path",
        "--object-storage-cache-path", "--mid-level-dataset-surplus", "--allow-ambiguous-pad-tokens",
        "--reset-attention-mask", "--sample-rate", "--mask-prob", "--short-seq-prob", "--fim-data", "--fim-rate",
        "--fim-spm-rate", "--fim-split-sample", "--fim-fragment-rate", "--fim-no-prefix", "--fim-prefix-token",
        "--fim-middle-token", "--fim-suffix-token", "--fim-pad-token", "--fim-eod-token", "--tokenizer-metadata",
        "--tokenizer-special-tokens", "--legacy-tokenizer", "--tiktoken-pattern", "--tiktoken-num-special-tokens",
        "--tiktoken-special-tokens", "--tokenizer-sentencepiece-legacy", "--tokenizer-hf-use-fast",
        "--tokenizer-hf-include-special-tokens", "--trust-remote-code",
    ),
    "not GPT pretraining (inference, RL, SFT, distillation, vision, retrieval)": (
        "--inference-batch-times-seqlen-threshold", "--max-tokens-to-oom", "--output-bert-embeddings",
        "--bert-embedder-type", "--use-legacy-static-engine", "--inference-max-requests",
        "--inference-max-seq-length", "--inference-max-batch-size", "--inference-dynamic-batching",
        "--inference-dynamic-batching-buffer-size-gb", "--inference-dynamic-batching-paused-buffer-size-gb",
        "--inference-dynamic-batching-block-size", "--inference-dynamic-batching-max-requests",
        "--inference-dynamic-batching-max-tokens", "--inference-dynamic-batching-num-cuda-graphs",
        "--inference-dynamic-batching-track-paused-request-events", "--decode-only-cuda-graphs",
        "--inference-dynamic-batching-unified-memory-level", "--nccl-all-reduce-for-prefill",
        "--enable-chunked-prefill", "--disable-chunked-prefill",
        "--inference-dynamic-batching-cuda-graph-max-tokens",
        "--inference-dynamic-batching-cuda-graph-mixed-prefill-count", "--inference-logging-step-interval",
        "--inference-wandb-logging", "--no-inference-wandb-logging", "--inference-coordinator-port",
        "--flash-decode", "--inference-fuse-tp-communication", "--mlp-chunks-for-prefill",
        "--perform-rl-step", "--rl-prompts-per-eval", "--grpo-prompts-per-step", "--grpo-group-size",
        "--grpo-iterations", "--grpo-clamp-eps-lower", "--grpo-clamp-eps-upper", "--grpo-kl-beta",
        "--grpo-entropy-term-weight", "--grpo-filter-groups-with-same-reward", "--langrl-inference-server-type",
        "--langrl-inference-server-conversation-template", "--langrl-external-server",
        "--no-langrl-external-server", "--langrl-env-config", "--rl-default-temperature", "--rl-default-top-p",
        "--rl-default-top-k", "--rl-offload-optimizer-during-inference", "--rl-offload-kv-cache-during-training",
        "--no-rl-offload-kv-cache-during-training", "--rl-remove-kv-cache-during-training",
        "--no-rl-remove-kv-cache-during-training", "--rl-reset-cuda-graphs", "--no-rl-reset-cuda-graphs",
        "--rl-partial-rollouts", "--no-rl-partial-rollouts", "--rl-inference-logprobs-is-correction",
        "--no-rl-inference-logprobs-is-correction", "--rl-importance-sampling-truncation-coef",
        "--rl-use-sequence-packing", "--no-rl-use-sequence-packing",
        "--rl-sequence-packing-max-sequences-per-bin", "--rl-sequence-packing-algo", "--rl-training-cuda-graphs",
        "--no-rl-training-cuda-graphs", "--rl-inference-tensor-model-parallel-size",
        "--rl-inference-pipeline-model-parallel-size", "--rl-inference-expert-model-parallel-size",
        "--rl-inference-expert-tensor-model-parallel-size", "--rl-inference-model-unified-memory-level",
        "--rl-offload-inference-model-weights-when-idle", "--no-rl-offload-inference-model-weights-when-idle",
        "--refit-method", "--rl-verify-model-weights-swap", "--no-rl-verify-model-weights-swap",
        "--rl-parallel-generation-tasks", "--rl-skip-bos-token", "--no-rl-skip-bos-token", "--sft",
        "--sft-tokenizer-prompt-format", "--ict-head-size", "--biencoder-projection-dim",
        "--biencoder-shared-query-context-model", "--ict-load", "--bert-load", "--titles-data-path",
        "--query-in-block-prob", "--use-one-sent-docs", "--evidence-data-path",
        "--retriever-report-topk-accuracies", "--retriever-score-scaling", "--block-data-path",
        "--embedding-path", "--indexer-batch-size", "--indexer-log-interval", "--num-classes", "--img-h",
        "--img-w", "--num-channels", "--patch-dim", "--classes-fraction", "--data-per-class-fraction",
        "--no-data-sharding", "--head-lr-mult", "--vision-pretraining", "--vision-pretraining-type",
        "--vision-backbone-type", "--swin-backbone-type", "--mask-type", "--mask-factor", "--iter-per-epoch",
        "--dino-local-img-size", "--dino-local-crops-number", "--dino-head-hidden-size",
        "--dino-bottleneck-size", "--dino-freeze-last-layer", "--dino-norm-last-layer",
        "--dino-warmup-teacher-temp", "--dino-teacher-temp", "--dino-warmup-teacher-temp-epochs",
    ),
}


def ignored_flags() -> Dict[str, tuple]:
    """``{flag: (nargs, reason)}`` over :data:`IGNORED`: ``nargs`` 0 for a switch, 1 for one
    value, ``"*"`` for several."""
    out = {}
    for reason, entries in IGNORED.items():
        for entry in entries:
            flag, _, arity = entry.partition(" ")
            out[flag] = ({"": 0, "VALUE": 1, "VALUES": "*"}[arity], reason)
    return out


def rejected_flags() -> Dict[str, str]:
    """``{flag: reason}`` over :data:`REJECTED`."""
    return {flag: reason for reason, flags in REJECTED.items() for flag in flags}
