#!/usr/bin/env python
"""Megatron-LM-compatible entry point: ``python tools/merge_datasets.py --input DIR --output-prefix P``.

Thin wrapper around :func:`megatron_mile.data.merge.main` (also ``mile-merge-datasets``).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.path.pardir)))

from megatron_mile.data.merge import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
