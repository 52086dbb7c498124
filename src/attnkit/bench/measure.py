"""Measuring on noisy machines (BENCHMARKING.md): a matmul probe that gates each round and notices other
processes, round-robin timing with per-round ratios, and peak memory read from /proc in a fresh process.

    >>> probe = Probe(target_s=0.25, max_wait_s=5, total_wait_s=15)
    >>> a, b = Timed(), Timed()
    >>> round_robin(probe, {"a": call_a, "b": call_b}, {"a": 5, "b": 5}, {"a": a, "b": b})
    >>> a.summarize(); a.ratio_to(b)          # median, min, max over rounds of b's time / a's time
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PROBE_N = 2048  # the probe is a PROBE_N x PROBE_N float32 torch.mm
GATE_FRACTION = 0.85  # a round waits while the probe is below this share of the best probe seen
SLOW_S = 2.0  # calls slower than this get 3 timed repeats and 1 warm-up call (BENCHMARKING.md: n >= 3)
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --------------------------------------------------------------------------------------------------
# /proc readings


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
    """Reset VmHWM to the current RSS (Linux); False where that is not possible."""
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


def mem_available() -> int | None:
    """MemAvailable in bytes, or None off Linux."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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


# --------------------------------------------------------------------------------------------------
# The probe


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

    def summary(self) -> dict:
        """What the run's probes saw, for the report and the JSON."""
        return {"best_gflops": self.best or max(self.history), "median_gflops": statistics.median(self.history),
                "min_gflops": min(self.history), "all_gflops": self.history, "foreign_cores": self.foreign,
                "below_gate_rounds": self.timeouts, "waited_s": self.waited_s, "redone_rounds": self.retries,
                "reps": self.reps}


# --------------------------------------------------------------------------------------------------
# Timing


def timed(call: Callable[[], object]) -> float:
    """Seconds one call takes."""
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def warm_up(call: Callable[[], object], count: int, slow_s: float = SLOW_S) -> list[float]:
    """The first calls, discarded from the figures: ``count`` of them, or one if it takes >= ``slow_s``.
    The last one estimates what a call costs."""
    times = [timed(call)]
    while len(times) < count and times[-1] < slow_s:
        times.append(timed(call))
    return times


def repeats(estimate_s: float, rounds: int, slow_s: float = SLOW_S) -> int:
    """Timed repeats for a call of this cost: ``rounds``, at most 3 for a slow call."""
    return min(rounds, 3) if estimate_s >= slow_s else rounds


@dataclass(kw_only=True)
class Timed:
    """One contender's timed calls, each with its round, the round's probe and the CPU others took."""

    warmup_s: list[float] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    probes_gflops: list[float] = field(default_factory=list)  # per round; negative = ran below the gate
    foreign_cores: list[float] = field(default_factory=list)  # cores other processes used (probe or round)
    contended_rounds: int = 0  # rounds kept although other processes ran during them (retries spent)
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    spread_pct: float | None = None  # (max - min) / median

    def summarize(self) -> float:
        """Fill median/min/max/spread from the timed calls; returns the median in seconds."""
        med = statistics.median(self.times_s)
        self.median_ms, self.min_ms, self.max_ms = med * 1e3, min(self.times_s) * 1e3, max(self.times_s) * 1e3
        self.spread_pct = (max(self.times_s) - min(self.times_s)) / med * 100
        return med

    def ratio_to(self, peer: Timed) -> tuple[float, float, float] | None:
        """(median, min, max) over the rounds both ran in of ``peer time / this time``: > 1 = faster."""
        peer_t = dict(zip(peer.rounds, peer.times_s))
        ratios = [peer_t[rd] / t for rd, t in zip(self.rounds, self.times_s) if rd in peer_t]
        return (statistics.median(ratios), min(ratios), max(ratios)) if ratios else None

    def probe_median(self) -> float | None:
        """Median probe GFLOP/s of the rounds (a negative entry marks a round below the gate)."""
        p = [abs(x) for x in self.probes_gflops]
        return statistics.median(p) if p else None

    def probe_cell(self) -> str:
        """Median probe GFLOP/s of the rounds; '*' when a round ran below the gate, '!' when one was kept
        although other processes (or steal) took CPU during it."""
        p = self.probe_median()
        if p is None:
            return ""
        return (f"{p:.0f}" + ("*" if any(x < 0 for x in self.probes_gflops) else "")
                + ("!" if self.contended_rounds else ""))


def round_robin(probe: Probe, calls: dict[str, Callable[[], object]], reps: dict[str, int],
                into: dict[str, Timed], log: Callable[[str], None] = lambda msg: None,
                deadline: float | None = None) -> None:
    """Time every call once per round, each round gated on ``probe``, the order rotating from round to
    round so that no contender always runs first; a call with fewer ``reps`` joins only the first rounds.
    A round that other processes disturbed is redone within the probe's retry budget. After
    ``deadline`` (a ``time.perf_counter()`` value) no new round starts, once one is done."""
    order = list(calls)
    rnd, retries = 0, 0
    while rnd < max(reps.values(), default=0) and not (rnd and deadline is not None and time.perf_counter() > deadline):
        gflops, foreign, passed = probe.gate()
        active = [name for name in order if reps[name] > rnd]
        shift = rnd % len(active)
        times, f_ticks, dirty = {}, 0, False
        for name in active[shift:] + active[:shift]:
            c0 = cpu_ticks()
            times[name] = timed(calls[name])
            c1 = cpu_ticks()
            if c0 and c1:
                ft = (c1[0] - c0[0]) - (c1[1] - c0[1])
                f_ticks += ft
                dirty |= ft >= 2 and ft / TICK / times[name] >= Probe.FOREIGN_MAX
        round_s = sum(times.values())
        busy = f_ticks / TICK / round_s
        contended = dirty or busy >= Probe.FOREIGN_MAX
        if contended and probe.may_retry(retries, round_s):
            retries += 1
            log(f"    round {rnd}: other processes or steal took {busy:.2f} cores; redoing it")
            continue
        for name, t in times.items():
            r = into[name]
            r.times_s.append(t)
            r.rounds.append(rnd)
            r.probes_gflops.append(round(gflops, 1) if passed else -round(gflops, 1))
            r.foreign_cores.append(round(max(foreign, busy), 2))
            r.contended_rounds += contended
        rnd, retries = rnd + 1, 0


def interleaved(probe: Probe, calls: dict[str, Callable[[], object]], rounds: int,
                log: Callable[[str], None] = lambda msg: None) -> dict[str, Timed]:
    """``round_robin`` with ``rounds`` rounds for every call; each call's Timed, summarized. A speed-up is
    ``out["ours"].ratio_to(out["reference"])``."""
    out = {name: Timed() for name in calls}
    round_robin(probe, calls, dict.fromkeys(calls, rounds), out, log)
    for t in out.values():
        t.summarize()
    return out


# --------------------------------------------------------------------------------------------------
# Peak memory of one call, in a fresh process


def call_peak(call: Callable[[], object], warm: bool) -> dict:
    """The high-water mark of one call above the RSS just before it (VmHWM after ``clear_refs``; the
    whole process's ``ru_maxrss`` where that is not possible). Run it in a process of its own."""
    if warm:
        call()
    gc.collect()
    malloc_trim()
    baseline = read_status("VmRSS")
    method = "VmHWM" if reset_hwm() and baseline is not None else "ru_maxrss"
    call()
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    hwm = read_status("VmHWM") if method == "VmHWM" else ru
    return {"ok": True, "method": method, "baseline_kb": baseline, "hwm_kb": hwm, "ru_maxrss_kb": ru,
            "call_peak_kb": None if baseline is None else hwm - baseline, "threads": torch.get_num_threads()}


def _child(measure: Callable[[dict], dict], spec: dict, conn) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent stops the run (and kills this daemon
    # process); a KeyboardInterrupt here would only add a child's traceback to the parent's one line
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            conn.send(measure(spec))
        except Exception as e:  # noqa: BLE001 - reported in the row, not raised
            conn.send({"ok": False, "error": f"{type(e).__name__}: {e}"[:300]})
    finally:
        conn.close()


class MemoryServer:
    """Runs ``measure(spec) -> dict`` in processes forked from a server that has imported ``preload`` but
    run nothing, so no OpenMP pool crosses a fork and no process pays the torch import again.
    ``measure`` must be a module-level function (it is passed by name)."""

    def __init__(self, preload: list[str]):
        import multiprocessing as mp

        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(preload)

    def run(self, measure: Callable[[dict], dict], spec: dict, timeout_s: float) -> dict:
        recv, send = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_child, args=(measure, spec, send), daemon=True)
        p.start()
        send.close()
        try:
            res = recv.recv() if recv.poll(timeout_s) else {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
        except EOFError:
            res = {"ok": False, "error": "the process died (out of memory?)"}
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
        return res
