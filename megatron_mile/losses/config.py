"""Configuration of the language-model loss: which registered loss, its parameters, how it is normalised."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from megatron_mile.losses.registry import LOSS_NAMES, NORMALIZATIONS, get_loss

LOSS_TYPES = LOSS_NAMES
KERNELS = ("auto", "torch", "triton")


@dataclass
class LossConfig:
    """Which loss the language model trains with, and how the per-token losses are combined."""

    loss: str = "mile"
    """A registered loss (:data:`megatron_mile.losses.registry.LOSS_NAMES`): 'cross_entropy', 'mile'
    (weight (sigma + H)^gamma), 'focal' ((1 - p_target)^gamma), 'dft' (p_target), 'eslm' (1 for the
    tokens at or above the batch's value-at-risk quantile, 0 otherwise) or 'emo' (earth mover
    distance with maximum likelihood; not a weighted cross entropy)."""

    params: Dict[str, Any] = field(default_factory=dict)
    """This loss's parameters by name (``{'mile_gamma': 1.0, ...}``, see its ``LossParam`` list);
    missing ones take their defaults, unknown or out-of-range ones raise ``ValueError``. After
    construction it holds every parameter."""

    normalization: str = "global"
    """'global': loss = sum(mask * w * ce) / sum(mask * w) over the whole global batch (all
    micro-batches and data-parallel ranks). 'microbatch': the MiLe authors' code, alpha = 1 / mean(w)
    per micro-batch over all positions, averaged over data-parallel ranks, then the per-token mean of
    alpha * w * ce."""

    check_inputs: bool = True
    """Validate target range, shapes and dtypes before any collective (one min/max per call)."""

    vocab_size: Optional[int] = None
    """The tokenizer's vocabulary size, when the logits have more rows (megatron pads the vocabulary to
    a multiple of ``--make-vocab-size-divisible-by x TP``). EMO leaves the padding rows out of its
    distribution and cost, as the official code (no padding) does; the weighted cross entropies keep
    megatron's convention (padding rows are ordinary softmax rows). None: every row counts."""

    kernel: str = "auto"
    """How the logits are swept: 'triton' (one read forward, one read and write backward; see
    ``losses/triton_kernels.py``), 'torch' (chunked ATen ops) or 'auto' (triton for CUDA tensors
    when triton is importable, torch otherwise). Both give the same values."""

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        self.params = get_loss(self.loss).resolve(self.params)
