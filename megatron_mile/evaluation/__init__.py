"""Evaluating checkpoints: per-token surprisal and entropy on held-out data (any TP/PP layout)."""
