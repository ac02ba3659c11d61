"""The registry of language-model losses: each loss is one module, built by name.

A loss module (``losses/<name>.py``) defines a :class:`Loss` subclass and an instance named ``LOSS``;
its name is listed once in :data:`LOSS_NAMES`. The class declares

* its flags (:class:`LossParam`: name, default, help, the values it accepts); the training flags
  (:func:`add_loss_arguments`) and the one :class:`~megatron_mile.losses.config.LossConfig` builder
  (:func:`loss_config_from_args`) come from these declarations;
* cross-parameter checks (:meth:`Loss.check`);
* its per-token weight from the shared sweep's statistics (:meth:`Loss.token_weight`), for the
  losses that are ``weight x cross entropy``. The sweep over the logits, its two collectives and
  the Triton kernels are shared (:mod:`megatron_mile.losses.vocab_parallel`); the float64 reference
  (:func:`megatron_mile.losses.reference.reference_weighted_cross_entropy`) applies the same weight
  to statistics from a plain full-vocabulary float64 log-softmax.

A loss that is not a weighted cross entropy (EMO) overrides :meth:`Loss.language_model_loss`, which
the model's loss hook calls for every loss (no per-loss branches there).

The seam for other kernels (a fused output-layer loss, say): compute the per-token statistics
:class:`TokenStats` over the full vocabulary, then ``token_weight(config, stats, loss_mask,
dp_group)`` gives the detached weight; the gradient of ``weight * ce`` is ``weight * (softmax -
onehot)``. Adding a loss: docs/losses.md.

This module imports torch only (no megatron-core, no triton), so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Mapping, NamedTuple, Optional, Tuple

import torch

# One line per loss: the name is the flag value (--loss NAME) and the module megatron_mile.losses.NAME.
LOSS_NAMES = ("cross_entropy", "mile", "focal", "dft", "eslm", "emo")
NORMALIZATIONS = ("global", "microbatch")


class TokenStats(NamedTuple):
    """Per-token statistics of the predicted distribution over the full (padded) vocabulary, each a
    detached float32 tensor of shape ``[tokens]`` (or any shape, the same for all three)."""

    ce: torch.Tensor
    """Cross entropy ``-log p_target``."""
    entropy: torch.Tensor
    """Entropy ``-sum_v p_v log p_v``."""
    p_target: torch.Tensor
    """Probability of the target, ``exp(-ce)``."""


@dataclass(frozen=True)
class LossParam:
    """One parameter of a loss, and its flag ``--name-with-dashes``."""

    name: str
    """Attribute name (``mile_gamma``); the flag is ``--mile-gamma``."""
    default: Any
    """Default value; its type is the parameter's: float, or str (a choice, or free text such as a path)."""
    help: str
    """One line for ``--help``."""
    choices: Optional[Tuple[str, ...]] = None
    """The accepted values of a string parameter."""
    requirement: Optional[str] = None
    """What a float must satisfy besides being finite, in words (``">= 0"``), checked by ``accepts``."""
    accepts: Optional[Callable[[float], bool]] = None
    """The check ``requirement`` describes."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def validate(self, value):
        """The value, converted; ``ValueError`` naming the flag when it is not accepted."""
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"{self.flag} must be one of {', '.join(self.choices)}; got {value!r}")
            return value
        if isinstance(self.default, str):
            return str(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.flag} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{self.flag} must be a finite number, got {value!r}")
        if self.accepts is not None and not self.accepts(number):
            raise ValueError(f"{self.flag} must be {self.requirement}, got {value!r}")
        return number

    def argparse_type(self, text: str):
        try:
            return self.validate(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(" ", 1)[1]) from None  # argparse names the flag


class Loss:
    """A language-model loss. Subclasses set the class attributes and, for a weighted cross
    entropy, :meth:`token_weight`; see the module docstring."""

    name: ClassVar[str]
    """The value of ``--loss``."""
    summary: ClassVar[str]
    """What it computes, in one line (``--help``, README)."""
    paper: ClassVar[str] = ""
    """Where it comes from (arXiv id), for the README."""
    params: ClassVar[Tuple[LossParam, ...]] = ()
    """Its parameters (and flags)."""
    weighted_cross_entropy: ClassVar[bool] = True
    """Whether the per-token loss is ``token_weight * ce`` (so the shared sweep computes it)."""

    def check(self, values: Mapping[str, Any]) -> None:
        """Checks across parameters (each one has passed its own); raise ``ValueError``."""

    def prepare(self, config, model) -> None:
        """Called once per model chunk that computes the loss, after it is built and initialised and
        before any checkpoint is loaded (EMO takes its frozen cost rows here)."""

    def token_weight(self, values: Mapping[str, Any], stats: TokenStats, loss_mask: Optional[torch.Tensor],
                     dp_group) -> torch.Tensor:
        """The per-token weight (float32, the shape of ``stats.ce``, no gradient). ``loss_mask``
        (1 = counted; None = all) and ``dp_group`` are for weights that depend on the batch."""
        raise NotImplementedError

    def language_model_loss(self, config, logits: torch.Tensor, labels: torch.Tensor, *, tp_group,
                            loss_mask: Optional[torch.Tensor], dp_group, output_weight: Optional[torch.Tensor]):
        """Per-token ``(weighted_ce, weight, ce, entropy)`` from vocabulary-parallel logits
        ``[s, b, V/tp]`` (consumed) and labels ``[s, b]``, as
        :class:`~megatron_mile.losses.vocab_parallel.WeightedCrossEntropy`. ``output_weight``: this
        rank's ``[V/tp, h]`` rows of the output layer (losses that need them)."""
        from megatron_mile.losses.vocab_parallel import vocab_parallel_weighted_cross_entropy

        return vocab_parallel_weighted_cross_entropy(logits, labels, config, tp_group=tp_group,
                                                     loss_mask=loss_mask, dp_group=dp_group)

    def resolve(self, values: Mapping[str, Any]) -> Dict[str, Any]:
        """Every parameter, validated, with its default where ``values`` has none."""
        known = {p.name for p in self.params}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"loss {self.name!r} has no parameter {', '.join(unknown)}; its parameters: "
                             f"{', '.join(sorted(known)) or 'none'}")
        resolved = {p.name: p.validate(values.get(p.name, p.default)) for p in self.params}
        self.check(resolved)
        return resolved


def get_loss(name: str) -> Loss:
    """The registered loss called ``name``."""
    if name not in LOSS_NAMES:
        raise ValueError(f"loss must be one of {LOSS_NAMES}, got {name!r}")
    return importlib.import_module(f"megatron_mile.losses.{name}").LOSS


def token_weight(config, stats: TokenStats, loss_mask: Optional[torch.Tensor] = None,
                 dp_group=None) -> torch.Tensor:
    """The per-token weight of ``config.loss`` (a :class:`~megatron_mile.losses.config.LossConfig`)
    from the statistics ``stats``: float32, the shape of ``stats.ce``, no gradient.

    ``loss_mask`` (same shape; 1 = the token counts) and ``dp_group`` (data-parallel group, for the
    losses whose weight depends on the whole batch, such as ESLM's quantile) may be None: then every
    position counts and the batch is this rank's. The loss is ``weight * ce`` per token; its
    gradient with respect to the logits is ``weight * (softmax - onehot(target))``."""
    loss = get_loss(config.loss)
    if not loss.weighted_cross_entropy:
        raise ValueError(f"loss {config.loss!r} is not a weighted cross entropy: it has no per-token weight "
                         f"(compute it with megatron_mile.losses.get_loss({config.loss!r}).language_model_loss)")
    with torch.no_grad():
        return loss.token_weight(config.params, stats, loss_mask, dp_group)


def add_loss_arguments(group) -> None:
    """``--loss``, every registered loss's parameters and ``--mile-normalization``, on an argparse group."""
    losses = [get_loss(name) for name in LOSS_NAMES]
    group.add_argument("--loss", choices=LOSS_NAMES, default="cross_entropy",
                       help="Language-model loss: " + "; ".join(f"{loss.name}: {loss.summary}" for loss in losses))
    for loss in losses:
        for param in loss.params:
            group.add_argument(param.flag, type=param.argparse_type, default=param.default, choices=param.choices,
                               help=f"[{loss.name}] {param.help} (default {param.default})")
    group.add_argument("--mile-normalization", choices=NORMALIZATIONS, default="global",
                       help="'global': sum(w*ce)/sum(w) over the global batch; 'microbatch': the MiLe paper "
                            "code's alpha = 1/mean(w) per micro-batch.")


def loss_config_from_args(args, **overrides):
    """The :class:`~megatron_mile.losses.config.LossConfig` of the training flags ``args`` (the only
    builder: flag validation and the model both use it). Raises ``ValueError`` on a bad value."""
    from megatron_mile.losses.config import LossConfig

    loss = get_loss(args.loss)
    return LossConfig(loss=args.loss, params={p.name: getattr(args, p.name) for p in loss.params},
                      normalization=args.mile_normalization,
                      vocab_size=getattr(args, "tokenizer_vocab_size", None), **overrides)
