"""`python -m mmw2s.bench.peak_rss CMD ...`: run CMD, then print its peak RSS as one JSON line.

A fresh wrapper process, so `getrusage(RUSAGE_CHILDREN)` sees CMD's process tree only: the peak
resident set of the largest single process in it (Linux reports KiB), counted when reaped.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys


def main(argv: list[str]) -> int:
    """Run `argv`, print `{"returncode", "max_rss_mb"}`, and exit with CMD's code."""
    code = subprocess.call(argv)
    kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"returncode": code, "max_rss_mb": round(kib / 1024, 2)}))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
