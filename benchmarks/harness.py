"""What the benchmarks in this folder share beyond ``attnkit.bench``: the repository path and git.

The measuring machinery (BENCHMARKING.md: the matmul probe that gates each round and notices other
processes, round-robin timing, /proc readings for peak memory) lives in ``attnkit.bench.measure``, where
``attnkit bench`` uses it too; the scripts import it from there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    """``git args...`` in the repository; "" when git is unavailable."""
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def log(msg: str) -> None:
    """Progress and diagnostics go to stderr, so stdout holds only the results."""
    print(msg, file=sys.stderr, flush=True)
