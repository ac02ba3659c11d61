#!/usr/bin/env python
"""Thin wrapper: `python tools/token_frequency.py --help` (code in megatron_mile.analysis.frequency)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_mile.analysis.frequency import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
