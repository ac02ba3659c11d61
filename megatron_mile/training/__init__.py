"""Training pieces used by :mod:`megatron_mile.pretrain_gpt`: flags, data, checkpoints, logging."""
