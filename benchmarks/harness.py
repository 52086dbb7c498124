"""What the benchmarks in this folder share beyond ``attnkit.bench``: the repository path and git.

The measuring machinery (BENCHMARKING.md: the matmul probe that gates each round and notices other
processes, round-robin timing, /proc readings for peak memory) lives in ``attnkit.bench.measure``, where
``attnkit bench`` uses it too; it is re-exported here for the scripts that import it from ``harness``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from attnkit.bench.measure import (GATE_FRACTION, PROBE_N, TICK, Probe, Rounds, cpu_ticks, interleaved,
                                   malloc_trim, read_status, reset_hwm, timed)

REPO = Path(__file__).resolve().parents[1]

__all__ = ["REPO", "git", "GATE_FRACTION", "PROBE_N", "TICK", "Probe", "Rounds", "cpu_ticks", "interleaved",
           "malloc_trim", "read_status", "reset_hwm", "timed"]


def git(*args: str) -> str:
    """``git args...`` in the repository; "" when git is unavailable."""
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
