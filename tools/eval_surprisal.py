#!/usr/bin/env python
"""Thin wrapper: `python tools/eval_surprisal.py --help` (code in megatron_mile.evaluation.surprisal_evaluator)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_mile.evaluation.surprisal_evaluator import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
