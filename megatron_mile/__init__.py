"""megatron-mile: token-difficulty-aware losses for megatron-core GPT pretraining."""

__version__ = "0.1.0"
