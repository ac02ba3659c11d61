"""GPT pretraining on megatron-core with token-difficulty-aware losses: the training loop, top to bottom.

Launch (flags are Megatron-LM's, plus ``--loss {cross_entropy,mile,focal,dft,eslm,emo}`` and friends)::

    torchrun --nproc-per-node 8 -m megatron_mile.pretrain_gpt \\
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --loss mile ...
    python -m megatron_mile.pretrain_gpt ...          # one process (CPU or one GPU)

Steps of :func:`pretrain`: flags -> process groups -> seeds -> model chunks wrapped in DDP ->
optimizer and LR schedule -> resume -> datasets -> loop {forward/backward through megatron's
pipeline schedule, optimizer step, log, validate, checkpoint}.

The loss. :class:`megatron_mile.model.MileGPTModel` returns the per-token weighted loss ``w * ce``
and keeps the detached ``w``, ``ce`` and entropy. :func:`loss_func` turns a micro-batch into the
numerator ``sum(mask * w * ce)`` (which carries the gradient) and a denominator ``sum(mask * w)``
with ``--mile-normalization global`` (the default); with ``microbatch`` the numerator is the MiLe
authors' loss of the micro-batch and the denominator 1 (``losses/reduction.py``). megatron-core's
per-token-loss path (``calculate_per_token_loss``) backpropagates the numerators unscaled and,
once per step, divides all gradients by the denominator summed over micro-batches and
data-parallel ranks (``finalize_model_grads``). Its own denominator is an integer token count, so
:class:`LossDenominator` sums the float denominators and hands them to ``finalize_model_grads``
instead. The objective of a step is therefore ``sum(mask*w*ce) / sum(mask*w)`` over the whole global
batch; for ``--loss cross_entropy`` (w = 1) it is exactly megatron's per-token cross entropy.

Without CUDA the same code runs on CPU with gloo: ``megatron_mile.platform`` documents the few
adaptations (applied here via ``adapt_megatron_to_cpu`` and ``cuda_to_cpu``).
"""

from __future__ import annotations

if __name__ == "__main__":  # answer --help and flag errors before megatron-core is imported
    from megatron_mile.training.arguments import main as _parse_then_train

    _parse_then_train()
    raise SystemExit(0)

import argparse
import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module
from megatron.core.utils import unwrap_model

from megatron_mile import platform
from megatron_mile.data.tokenizers import build_tokenizer
from megatron_mile.losses.reduction import microbatch_loss_terms, reduce_weighted_loss
from megatron_mile.model import gpt_model_from_args, initialize_layout_invariant_, padded_vocab_size
from megatron_mile.training import checkpointing
from megatron_mile.training.arguments import (
    ConfigError,
    cuda_available,
    global_batch_size_at,
    parse_args,
    resolve_precision,
    save_iterations,
    should_save,
    transformer_config_from_args,
    validate_runtime,
    virtual_pipeline_size,
)
from megatron_mile.training.data import build_datasets, micro_batches
from megatron_mile.training.distributed import destroy_distributed, initialize_distributed, launch_world_size
from megatron_mile.training.exit_conditions import ExitSignalHandler, exit_reason
from megatron_mile.training.logger import TrainingLogger

# Order of the per-micro-batch statistics loss_func reports (summed over micro-batches and DP ranks).
STATS = ("numerator", "denominator", "num_tokens", "ce_sum", "entropy_sum", "weight_sum")


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns (on every rank)."""

    train: List[dict] = field(default_factory=list)
    """Per iteration: iteration, lm_loss (plain CE), loss (the objective), entropy, mean_weight, lr,
    grad_norm, tokens_per_s, consumed_samples, iteration_time_s, skipped, max_memory_allocated_gib (CUDA)."""
    valid: List[dict] = field(default_factory=list)
    """Per validation and validation set: iteration, dataset, lm_loss, loss, entropy, mean_weight."""
    checkpoints: List[int] = field(default_factory=list)
    """Iterations saved by this run."""


def main(argv: Union[argparse.Namespace, Sequence[str], None] = None) -> None:
    """Train from parsed flags or command-line strings; a configuration error prints one line and
    exits with status 2. (``mile-pretrain`` is :func:`megatron_mile.training.arguments.main`, which
    parses before importing this module.)"""
    try:
        pretrain(argv if isinstance(argv, argparse.Namespace) else parse_args(argv))
    except (ConfigError, checkpointing.ResumeMismatch) as exc:
        print(f"mile-pretrain: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except checkpointing.CheckpointError as exc:
        print(f"mile-pretrain: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C without --exit-signal-handler: one line, no traceback
        print("mile-pretrain: interrupted (SIGINT); nothing saved since the last checkpoint "
              "(--exit-signal-handler finishes the iteration and saves)", file=sys.stderr)
        sys.exit(130)


def pretrain(args: Union[argparse.Namespace, Sequence[str]]) -> PretrainResult:
    """Train as the flags say. ``args``: parsed flags or a list of command-line strings.

    Works under torchrun, as a single process, or inside processes that already have a default
    process group (and megatron parallel_state with the same layout), as in the tests."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(list(args))

    # 1. Everything that can be wrong with the launch, before any collective.
    validate_runtime(args, launch_world_size())
    args.bf16 = resolve_precision(args, cuda_available()) == "bf16"  # bf16 by default on GPU
    tokenizer = build_tokenizer(args.tokenizer_type, tokenizer_model=args.tokenizer_model,
                                vocab_file=args.vocab_file, merge_file=args.merge_file, vocab_size=args.vocab_size)
    args.padded_vocab_size = padded_vocab_size(tokenizer.vocab_size, args.make_vocab_size_divisible_by,
                                               args.tensor_model_parallel_size)
    args.tokenizer_vocab_size = tokenizer.vocab_size  # EMO leaves the padding rows out (LossConfig.vocab_size)
    if args.load is not None:  # a checkpoint's padded vocabulary wins when it fits this TP size
        args.padded_vocab_size = checkpointing.padded_vocab_size_for_resume(args, tokenizer.vocab_size,
                                                                            args.padded_vocab_size)

    # 2. Process groups and the CPU adaptations.
    created = initialize_distributed(args)
    try:
        platform.adapt_megatron_to_cpu()
        with ExitSignalHandler(args.exit_signal_handler) as signals:
            return _train(args, tokenizer, signals)
    finally:
        destroy_distributed(created)


def _train(args: argparse.Namespace, tokenizer, signals: ExitSignalHandler) -> PretrainResult:
    start_time = time.time()  # for --exit-duration-in-mins
    logger = TrainingLogger(args, is_writer=dist.get_rank() == 0)
    logger.print(f"> megatron-mile: world {dist.get_world_size()} = TP {args.tensor_model_parallel_size} x "
                 f"PP {args.pipeline_model_parallel_size} x DP {args.data_parallel_size}"
                 f"{' x VPP ' + str(virtual_pipeline_size(args)) if virtual_pipeline_size(args) else ''}, "
                 f"{'CPU/gloo' if platform.on_cpu() else 'CUDA'}, {args.transformer_impl} layers, "
                 f"{'bf16' if args.bf16 else 'fp32'}, "
                 f"loss {args.loss}, vocab {tokenizer.vocab_size} (padded {args.padded_vocab_size})")

    # 3. Seeds, then the model: one chunk per virtual pipeline stage, each wrapped in megatron's DDP.
    set_random_seeds(args.seed)
    config = transformer_config_from_args(args)
    model = build_model(args, config)

    # 4. Optimizer and learning-rate schedule; the hooks megatron's schedules call.
    optimizer, scheduler = build_optimizer_and_scheduler(args, model)
    denominator = connect_schedule_hooks(args, config, model, optimizer)

    # 5. Resume.
    iteration, consumed_samples = 0, 0
    if args.load is not None:
        # As Megatron-LM: no checkpoint there (yet) means a fresh start; a broken one raises.
        found = checkpointing.find_checkpoint(args.load)
        if found.iteration is None:
            logger.print(found.message)
        else:
            loaded = checkpointing.load_checkpoint(args.load, model, optimizer, scheduler, args)
            iteration, consumed_samples = loaded.iteration, loaded.consumed_samples
            logger.print(f"> resumed from {args.load} at iteration {iteration} ({consumed_samples} samples)")

    # 6. Data: this rank's micro-batches, continuing after the consumed samples.
    datasets = build_datasets(args, tokenizer)
    train_batches = micro_batches(datasets.train, consumed_samples, args.micro_batch_size, args.num_workers)
    step_fn = partial(forward_step, denominator, args.mile_normalization)
    forward_backward = get_forward_backward_func()

    # 7. The loop.
    result = PretrainResult()
    extra_saves = save_iterations(args)
    last_checkpoint = None
    logger.print(f"> training {args.train_iters - iteration} iterations of {args.global_batch_size} x "
                 f"{args.seq_length} tokens ({args.num_microbatches} micro-batches of {args.micro_batch_size} "
                 f"per DP rank{', after the --rampup-batch-size ramp' if args.rampup_batch_size else ''})")
    while iteration < args.train_iters:
        start = time.perf_counter()
        batch_size = global_batch_size_at(args, consumed_samples)  # constant without --rampup-batch-size
        stats, grad_norm, lr, update_ok = train_step(
            args, model, optimizer, scheduler, denominator, forward_backward, step_fn, train_batches,
            num_microbatches=batch_size // (args.micro_batch_size * args.data_parallel_size),
            # The schedule counts samples with --train-samples (Megatron-LM), else iterations.
            schedule_increment=batch_size if args.train_samples is not None else 1)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        iteration += 1
        consumed_samples += batch_size
        tokens = batch_size * args.seq_length
        metrics = {"iteration": iteration, "consumed_samples": consumed_samples, **stats,
                   "lr": lr, "grad_norm": None if grad_norm is None else float(grad_norm),
                   "tokens": tokens, "tokens_per_s": tokens / elapsed, "iteration_time_s": elapsed,
                   "skipped": not update_ok, "global_batch_size": batch_size,
                   "loss_scale": float(optimizer.get_loss_scale()) if args.fp16 else None,
                   # This rank's peak since the start (the logging rank: first pipeline stage).
                   "max_memory_allocated_gib":
                       torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
        result.train.append(metrics)
        logger.training_iteration(metrics)

        if args.eval_iters > 0 and (iteration % args.eval_interval == 0 or iteration == args.train_iters):
            valid = evaluate(args, model, datasets.valid, forward_backward, progress=logger.validation_progress)
            logger.validation(iteration, valid)
            result.valid.extend({"iteration": iteration, "dataset": k, **v} for k, v in valid.items())

        exiting = exit_reason(args, iteration, signals, start_time)  # the same on every rank
        if should_save(args, iteration, extra_saves) or (exiting and args.save):
            with parameters_gathered(args, model):
                path = checkpointing.save_checkpoint(args.save, iteration, model, optimizer, scheduler, args,
                                                     consumed_samples)
            result.checkpoints.append(iteration)
            last_checkpoint = path
            logger.print(f"> saved checkpoint {path}")
        if exiting:
            saved = f"checkpoint {last_checkpoint}" if args.save else "nothing saved (no --save)"
            logger.print(f"> exiting at iteration {iteration} ({exiting}); {saved}")
            break

    logger.summary(result.train, result.valid, last_checkpoint)
    logger.close()
    return result


@contextlib.contextmanager
def parameters_gathered(args: argparse.Namespace, model):
    """With ``--overlap-param-gather`` the distributed optimizer's all-gather of the updated
    parameters waits in the next forward's pre-hooks, so between a step and that forward the other
    data-parallel ranks' shards are stale. Gather now (as Megatron-LM does around a save) and put the
    hooks back afterwards."""
    overlapping = args.use_distributed_optimizer and args.overlap_param_gather
    if overlapping:
        for chunk in model:
            chunk.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        if overlapping:
            for chunk in model:
                chunk.enable_forward_pre_hook()


def set_random_seeds(seed: int) -> None:
    """Megatron-LM's seeding: one seed per pipeline stage for Python, NumPy and torch (the
    data-parallel stream), and megatron's tracked streams (tensor-parallel dropout, init)."""
    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def build_model(args: argparse.Namespace, config) -> List[DistributedDataParallel]:
    """This rank's model chunks (several with the interleaved schedule), on the device, in DDP."""
    vpp = virtual_pipeline_size(args)
    chunks = []
    # Tied embeddings on the last stage are synchronised with a `.cuda()` copy at construction.
    with platform.cuda_to_cpu():
        for vp_stage in range(vpp) if vpp else [None]:
            chunks.append(gpt_model_from_args(
                args, config,
                pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                vp_stage=vp_stage,
            ))
    if args.use_cpu_initialization:
        initialize_layout_invariant_(chunks, config, args.seed)
    for chunk in chunks:
        chunk.prepare_loss()  # e.g. EMO's frozen cost rows, before any checkpoint is loaded
    if torch.cuda.is_available():
        for chunk in chunks:
            chunk.cuda(torch.cuda.current_device())
    if args.bf16 or args.fp16:
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,  # as Megatron-LM does for bf16 (no-op for fp32)
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
        use_distributed_optimizer=args.use_distributed_optimizer,
        # As Megatron-LM: with dynamic fp16 loss scaling an overflow is the scaler's signal, not an error.
        check_for_nan_in_grad=not (args.fp16 and args.loss_scale is None),
    )
    return [
        # Only the first chunk gets buckets that overlap with backward (Megatron-LM's choice).
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk, disable_bucketing=i > 0)
        for i, chunk in enumerate(chunks)
    ]


def build_optimizer_and_scheduler(args: argparse.Namespace, model):
    """megatron's optimizer (AdamW with fp32 master weights for bf16; no weight decay on biases
    and norms) and its LR/WD scheduler (:func:`build_scheduler`)."""
    optimizer_config = OptimizerConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_eps=args.adam_eps,
        sgd_momentum=args.sgd_momentum,
        bf16=args.bf16,
        fp16=args.fp16,
        params_dtype=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32,
        # fp16: static scale with --loss-scale, else megatron's dynamic scaler with these settings.
        loss_scale=args.loss_scale,
        initial_loss_scale=args.initial_loss_scale,
        min_loss_scale=args.min_loss_scale,
        loss_scale_window=args.loss_scale_window,
        hysteresis=args.hysteresis,
        clip_grad=args.clip_grad,
        use_distributed_optimizer=args.use_distributed_optimizer,
        overlap_param_gather=args.overlap_param_gather,
    )
    with platform.cuda_to_cpu():  # the loss-scale tensor is created on "cuda"
        optimizer = get_megatron_optimizer(optimizer_config, model)
    select_adam_implementation(optimizer, args.adam_impl)
    return optimizer, build_scheduler(args, optimizer)


def select_adam_implementation(optimizer, impl: str) -> None:
    """``--adam-impl``: which kernel torch's AdamW runs when megatron-core fell back to it (no
    transformer-engine or apex FusedAdam). megatron-core builds ``torch.optim.AdamW`` with torch's
    defaults (foreach on CUDA); the implementation is a per-group option that torch reads at every
    step, so it is set on the groups: ``fused`` one kernel for all parameters (CUDA, and CPU in
    torch >= 2.4), ``foreach`` multi-tensor kernels, ``for-loop`` one parameter at a time. ``auto``
    is fused on CUDA and torch's default on CPU."""
    if impl == "auto":
        if not torch.cuda.is_available():
            return
        impl = "fused"
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_optimizer = getattr(inner, "optimizer", None)
        if not isinstance(torch_optimizer, (torch.optim.AdamW, torch.optim.Adam)):
            continue  # a fused Adam from transformer-engine / apex, or SGD
        for group in torch_optimizer.param_groups:
            group["fused"] = impl == "fused"
            group["foreach"] = impl == "foreach"


def build_scheduler(args: argparse.Namespace, optimizer) -> OptimizerParamScheduler:
    """megatron's LR/WD scheduler (it only touches ``optimizer.param_groups``), counted in
    iterations, or in samples with ``--train-samples`` as Megatron-LM counts it then."""
    unit = "samples" if args.train_samples is not None else "iters"
    total, warmup, decay, wsd_decay = (getattr(args, name.format(unit)) for name in (
        "train_{}", "lr_warmup_{}", "lr_decay_{}", "lr_wsd_decay_{}"))
    return OptimizerParamScheduler(
        optimizer,
        init_lr=args.lr_warmup_init,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=warmup,
        # validate_args ensures warmup < decay when training; with --train-iters 0 the schedule is
        # never stepped, but megatron still asserts it.
        lr_decay_steps=decay if total > 0 else max(decay, warmup + 1),
        lr_decay_style=args.lr_decay_style,
        start_wd=args.start_weight_decay,
        end_wd=args.end_weight_decay,
        wd_incr_steps=max(1, total),
        wd_incr_style=args.weight_decay_incr_style,
        wsd_decay_steps=wsd_decay,
        lr_wsd_decay_style=args.lr_wsd_decay_style,
    )


class LossDenominator:
    """The objective's denominator, summed over the micro-batches of one global batch.

    :func:`loss_func` adds each micro-batch's ``sum(mask * w)`` (or token count) on the last
    pipeline stage; megatron's schedule then calls :meth:`finalize_model_grads`, which broadcasts
    it over the pipeline, sums it over data-parallel ranks and divides every gradient by it."""

    def __init__(self):
        self.total = self._zero()

    @staticmethod
    def _zero() -> torch.Tensor:
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        return torch.zeros((), dtype=torch.float32, device=device)

    def reset(self) -> None:
        self.total = self._zero()

    def add(self, value: torch.Tensor) -> None:
        self.total += value.detach().float()

    def finalize_model_grads(self, model, num_tokens=None, **kwargs) -> None:
        # megatron passes its integer token count; divide by the float weight sum instead.
        finalize_model_grads(model, self.total if num_tokens is not None else None, **kwargs)


def forward_step(denominator: LossDenominator, normalization: str, data_iterator, model):
    """One micro-batch through one model chunk (megatron's ``forward_step_func`` contract)."""
    chunk = unwrap_model(model)
    batch = next(data_iterator) if data_iterator is not None else None
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    tokens = position_ids = labels = loss_mask = None
    if batch is not None:
        tokens = batch["tokens"].to(device, non_blocking=True)
        position_ids = batch["position_ids"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        loss_mask = batch["loss_mask"].to(device, non_blocking=True)
    output = model(tokens if chunk.pre_process else None, position_ids if chunk.pre_process else None, None,
                   labels=labels if chunk.post_process else None,
                   loss_mask=loss_mask if chunk.post_process else None)  # ESLM's quantile, EMO's ratios
    return output, partial(loss_func, denominator, normalization, chunk, loss_mask)


def loss_func(denominator: LossDenominator, normalization: str, chunk, loss_mask: torch.Tensor,
              output_tensor: torch.Tensor):
    """(numerator with gradient, token count, statistics) for one micro-batch (last stage only)."""
    stats = chunk.token_statistics
    if normalization == "microbatch":
        terms = microbatch_loss_terms(output_tensor.float(), stats.weight, loss_mask, chunk.loss_config.loss,
                                      ce=stats.cross_entropy, entropy=stats.entropy)
    else:
        terms = reduce_weighted_loss(output_tensor.float(), stats.weight, loss_mask, ce=stats.cross_entropy,
                                     entropy=stats.entropy)
    denominator.add(terms.denominator)
    report = torch.stack([terms.numerator.detach(), terms.denominator, terms.num_tokens, terms.ce_sum,
                          terms.entropy_sum, terms.weight_sum]).float()
    return terms.numerator, terms.num_tokens.to(torch.int), {"stats": report}


def train_step(args, model, optimizer, scheduler, denominator, forward_backward, step_fn, batches,
               num_microbatches: Optional[int] = None, schedule_increment: int = 1):
    """One optimizer step over one global batch of ``num_microbatches`` micro-batches per DP rank
    (default ``args.num_microbatches``; fewer during a batch-size ramp-up); the LR schedule then
    advances by ``schedule_increment``. Returns (statistics, grad norm, lr used, ok)."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    denominator.reset()
    with platform.cuda_to_cpu():  # the schedules allocate their token counter on "cuda"
        reports = forward_backward(
            forward_step_func=step_fn,
            data_iterator=_per_chunk_data(model, batches),
            model=model,
            num_microbatches=num_microbatches or args.num_microbatches,
            seq_length=args.seq_length,
            micro_batch_size=args.micro_batch_size,
            forward_only=False,
        )
    lr = optimizer.param_groups[0]["lr"]
    with platform.cuda_to_cpu():  # clipping buffers and grad-type checks name "cuda"
        update_ok, grad_norm, _ = optimizer.step()
    if update_ok:
        scheduler.step(increment=schedule_increment)
    return _reduce_reports(reports), grad_norm, lr, update_ok


@torch.no_grad()
def evaluate(args, model, valid_sets: Dict[str, object], forward_backward, progress=None) -> Dict[str, dict]:
    """Validation statistics per validation set, each over its first ``--eval-iters`` global
    batches (the same batches at every validation, so the curves are comparable).
    ``progress(dataset, done, total)`` is called before the first batch and after each."""
    step_fn = partial(forward_step, LossDenominator(), args.mile_normalization)  # no gradients to scale
    for chunk in model:
        chunk.eval()
    results = {}
    for name, dataset in valid_sets.items():
        batches = micro_batches(dataset, 0, args.micro_batch_size, num_workers=0)
        totals = []
        for done in range(args.eval_iters):
            if progress is not None:
                progress(name, done, args.eval_iters)
            with platform.cuda_to_cpu():
                reports = forward_backward(
                    forward_step_func=step_fn, data_iterator=_per_chunk_data(model, batches), model=model,
                    num_microbatches=args.num_microbatches, seq_length=args.seq_length,
                    micro_batch_size=args.micro_batch_size, forward_only=True)
            totals.append(_reduce_reports(reports))
        if progress is not None:
            progress(name, args.eval_iters, args.eval_iters)
        results[name] = {k: sum(t[k] for t in totals) / len(totals) for k in totals[0]}
    for chunk in model:
        chunk.train()
    return results


def _reduce_reports(reports: List[dict]) -> Dict[str, float]:
    """Sum the micro-batch statistics over micro-batches and DP ranks, share them with every
    pipeline stage (only the last one has them) and form the logged quantities."""
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    totals = torch.zeros(len(STATS), dtype=torch.float32, device=device)
    for report in reports:
        totals += report["stats"]
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    dist.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
    s = dict(zip(STATS, totals.tolist()))
    tokens = max(s["num_tokens"], 1.0)
    return {
        "lm_loss": s["ce_sum"] / tokens,
        "loss": s["numerator"] / s["denominator"] if s["denominator"] > 0 else math.nan,
        "entropy": s["entropy_sum"] / tokens,
        "mean_weight": s["weight_sum"] / tokens,
    }


def connect_schedule_hooks(args, config, model, optimizer) -> "LossDenominator":
    """Set the hooks megatron's schedules call (loss scaling, gradient finalisation with the
    weighted-loss denominator, DDP no-sync / overlap); returns the denominator the loss feeds."""
    denominator = LossDenominator()
    config.grad_scale_func = optimizer.scale_loss
    config.finalize_model_grads_func = denominator.finalize_model_grads
    config.no_sync_func = _per_chunk([m.no_sync for m in model])
    if args.overlap_grad_reduce:
        config.grad_sync_func = _per_chunk([m.start_grad_sync for m in model])
    if args.overlap_param_gather:
        config.param_sync_func = _per_chunk([m.start_param_sync for m in model])
    return denominator


def _per_chunk(items: list):
    """megatron takes a single hook for one chunk and a list for several."""
    return items[0] if len(items) == 1 else items


def _per_chunk_data(model, batches):
    """The data iterator for each chunk: only the chunk holding the first or last stage reads
    (with pipelining, at most one chunk per rank does)."""
    if len(model) == 1:
        return batches
    return [batches if (unwrap_model(m).pre_process or unwrap_model(m).post_process) else None for m in model]

