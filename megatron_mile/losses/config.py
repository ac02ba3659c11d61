"""Configuration of the token-weighted language-model losses."""

from dataclasses import dataclass

LOSS_TYPES = ("cross_entropy", "mile", "focal", "emo")
NORMALIZATIONS = ("global", "microbatch")
KERNELS = ("auto", "torch", "triton")


@dataclass
class LossConfig:
    """Which per-token weighting the language-model loss uses, and how it is normalised."""

    loss: str = "mile"
    """'cross_entropy' (weight 1), 'mile' (weight (sigma + H)^gamma, H the predicted entropy),
    'focal' (weight (1 - p_target)^gamma) or 'emo' (earth mover distance to the target with
    maximum likelihood, weight 1; needs the output weights: ``losses/emo.py``)."""

    mile_gamma: float = 1.0
    """MiLe exponent gamma. 0 gives plain cross entropy; the paper's default is 1."""

    mile_sigma: float = 1.0
    """MiLe offset sigma (> 0 keeps the weight positive when the entropy is 0)."""

    focal_gamma: float = 1.0
    """Focal-loss exponent gamma."""

    normalization: str = "global"
    """'global': loss = sum(mask * w * ce) / sum(mask * w) over the whole global batch (all
    micro-batches and data-parallel ranks). 'microbatch': the authors' code, alpha = 1 / mean(w) per
    micro-batch over all positions, averaged over data-parallel ranks, then the per-token mean of
    alpha * w * ce."""

    check_inputs: bool = True
    """Validate target range, shapes and dtypes before any collective (one min/max per call)."""

    kernel: str = "auto"
    """How the logits are swept: 'triton' (one read forward, one read and write backward; see
    ``losses/triton_kernels.py``), 'torch' (chunked ATen ops) or 'auto' (triton for CUDA tensors
    when triton is importable, torch otherwise). Both give the same values."""

    def __post_init__(self):
        if self.loss not in LOSS_TYPES:
            raise ValueError(f"loss must be one of {LOSS_TYPES}, got {self.loss!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.mile_sigma < 0:
            raise ValueError(f"mile_sigma must be >= 0, got {self.mile_sigma}")
        if self.loss == "mile" and self.mile_sigma == 0 and self.mile_gamma < 0:
            raise ValueError("mile_gamma < 0 with mile_sigma = 0 gives an infinite weight at zero entropy")
