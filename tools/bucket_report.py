#!/usr/bin/env python
"""Thin wrapper: `python tools/bucket_report.py --help` (code in megatron_mile.analysis.report)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_mile.analysis.report import bucket_report_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(bucket_report_main())
