#!/usr/bin/env python
"""Megatron-LM-compatible entry point: ``python tools/preprocess_data.py --input ... --output-prefix ...``.

Thin wrapper around :func:`megatron_mile.data.preprocess.main` (also ``mile-preprocess``).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))

from megatron_mile.data.preprocess import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
