"""Measuring on noisy 2-core machines (BENCHMARKING.md): the matmul probe that gates each round and
notices other processes, /proc readings for peak memory, and heap trimming before a memory reading.
Shared by the benchmarks in this folder."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

PROBE_N = 2048  # the probe is a PROBE_N x PROBE_N float32 torch.mm
GATE_FRACTION = 0.85  # a round waits while the probe is below this share of the best probe seen

def read_status(key: str) -> int | None:
    """A /proc/self/status field in kB (VmRSS, VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def malloc_trim() -> None:
    """Hand freed heap memory back to the OS, so that RSS before a call does not hide reused pages."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass



TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_ticks() -> tuple[int, int] | None:
    """(busy + steal ticks of the whole machine, ticks of this process) from /proc: over an interval,
    their difference is the CPU time that other processes took, or that the host (steal) withheld."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], int(st[11]) + int(st[12])
    except (OSError, ValueError, IndexError):
        return None


class Probe:
    """A ~target_s torch.mm of 2048x2048 before each round; rounds wait while the machine is slow
    (probe below GATE_FRACTION of the best seen) or busy (other processes took >= FOREIGN_MAX cores
    during the probe: on 2 cores a concurrent test run slows a threaded kernel far more than a matmul)."""

    FOREIGN_MAX = 0.25

    def __init__(self, target_s: float, max_wait_s: float, total_wait_s: float, max_retries: int = 3,
                 retry_budget_s: float = 300.0):
        g = torch.Generator().manual_seed(1)
        self.a = torch.randn(PROBE_N, PROBE_N, generator=g)
        self.b = torch.randn(PROBE_N, PROBE_N, generator=g)
        self.c = torch.empty(PROBE_N, PROBE_N)
        for _ in range(2):
            torch.mm(self.a, self.b, out=self.c)
        t = min(self._time(1) for _ in range(3))
        self.reps = max(1, round(target_s / t))
        self.best = 0.0
        self.max_wait_s, self.wait_left_s = max_wait_s, total_wait_s
        self.history: list[float] = []
        self.foreign: list[float] = []
        self.waited_s = 0.0
        self.timeouts = 0
        self.max_retries, self.retry_left_s, self.retries = max_retries, retry_budget_s, 0

    def may_retry(self, retries_this_round: int, round_s: float) -> bool:
        """Redo a round that other processes disturbed, within the per-round and whole-run budgets."""
        if retries_this_round >= self.max_retries or self.retry_left_s < round_s:
            return False
        self.retry_left_s -= round_s
        self.retries += 1
        return True

    def _time(self, reps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(self.a, self.b, out=self.c)
        return time.perf_counter() - t0

    def measure(self) -> tuple[float, float]:
        """(GFLOP/s, cores used by other processes meanwhile)."""
        c0 = cpu_ticks()
        dt = self._time(self.reps)
        c1 = cpu_ticks()
        foreign = 0.0
        if c0 and c1:
            foreign = max(0.0, ((c1[0] - c0[0]) - (c1[1] - c0[1])) / TICK / dt)
        gflops = 2.0 * PROBE_N ** 3 * self.reps / dt / 1e9
        self.history.append(gflops)
        self.foreign.append(foreign)
        if foreign < self.FOREIGN_MAX:  # a contended probe does not set the reference
            self.best = max(self.best, gflops)
        return gflops, foreign

    def gate(self) -> tuple[float, float, bool]:
        """Probe until fast and quiet, or the waiting budget is spent. Returns (GFLOP/s, foreign cores, passed)."""
        start = time.perf_counter()
        while True:
            g, foreign = self.measure()
            if g >= GATE_FRACTION * self.best and foreign < self.FOREIGN_MAX:
                return g, foreign, True
            waited = time.perf_counter() - start
            if waited >= self.max_wait_s or self.wait_left_s <= 0:
                self.timeouts += 1
                return g, foreign, False
            time.sleep(1.0)
            spent = time.perf_counter() - start - waited
            self.wait_left_s -= spent
            self.waited_s += spent


def timed(call: Callable[[], object]) -> float:
    """Seconds one call takes."""
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def git(*args: str) -> str:
    """``git args...`` in the repository; "" when git is unavailable."""
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@dataclass
class Rounds:
    """Times of several calls measured round-robin, one round after each probe gate."""

    times: dict[str, list[float]] = field(default_factory=dict)
    probes: list[float] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratios(self, slower: str, faster: str) -> list[float]:
        """Per-round speed-ups of ``faster`` over ``slower`` (each pair timed in the same round)."""
        return [a / b for a, b in zip(self.times[slower], self.times[faster])]


def interleaved(probe: "Probe", calls: dict[str, Callable[[], object]], rounds: int) -> Rounds:
    """Time every call once per round, in the given order, each round gated on ``probe``."""
    result = Rounds({name: [] for name in calls})
    for _ in range(rounds):
        result.probes.append(probe.gate()[0])
        for name, call in calls.items():
            result.times[name].append(timed(call))
    return result
