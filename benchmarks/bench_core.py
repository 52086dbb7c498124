#!/usr/bin/env python
"""Core kernel benchmark: attnkit's kernels against torch SDPA and FlexAttention, in one process.

    .venv/bin/python benchmarks/bench_core.py [--quick] [--out benchmarks/out]

B=1, H=8, D=64, float32; N in {1024, 4096, 16384}; masks: none ("exact"), causal, causal sliding
window of 512 keys (``window=(511, 0)``); forward and forward+backward. Methodology follows
BENCHMARKING.md: every figure is a ratio against a named peer timed in the same run, round-robin;
each round is gated on a ~0.5 s 2048x2048 ``torch.mm`` probe; warm-up, then median and spread;
achieved GFLOP/s over the visible entries beside the machine's measured matmul rate; peak memory of
each configuration in its own process, forked from a server that has only imported torch (VmHWM after
``clear_refs``, and ``ru_maxrss``).
See benchmarks/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import datetime
import gc
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

# FlexAttention's first call compiles with inductor. Unless the caller names a cache, use a fresh one
# so "compile time" means a cold compile in every run (children inherit the variable, so they reuse it).
_OWN_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _OWN_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="attnkit-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _OWN_INDUCTOR_CACHE
    os.environ["ATTNKIT_BENCH_FRESH_INDUCTOR_CACHE"] = "1"
    atexit.register(shutil.rmtree, _OWN_INDUCTOR_CACHE, True)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import attnkit  # noqa: E402
from attnkit.functional.kernels.tiled import make_plan  # noqa: E402
from attnkit.functional.registry import select_kernel  # noqa: E402
from attnkit.functional.request import AttentionRequest  # noqa: E402
from harness import (GATE_FRACTION, PROBE_N, REPO, TICK, Probe, cpu_ticks, git, malloc_trim,  # noqa: E402
                     read_status, reset_hwm, timed)
B, H, D = 1, 8, 64
DTYPE = torch.float32
WINDOW = 512  # keys visible to a query, itself included: window=(511, 0)
MASKS = ("exact", "causal", "window512")
MODES = ("fwd", "fwdbwd")
KERNELS = ("attnkit:tiled", "attnkit:dense", "attnkit:sdpa", "attnkit:auto", "torch:sdpa", "torch:flex")
ATTNKIT_KW = {"exact": {}, "causal": {"causal": True}, "window512": {"window": (WINDOW - 1, 0)}}
# Time-boxing (the full run should stay near 15 minutes on a 2-core VM):
SLOW_S = 2.0  # calls slower than this get 3 timed repeats and 1 warm-up call (BENCHMARKING.md: n >= 3)
RETIME_MAX_S = 5.0  # above this per call, a kernel that makes the same torch call as one timed here
#                     (auto -> that kernel; attnkit sdpa -> the SDPA peer) is not re-timed
# Configurations that carry a target run first, while the probe's waiting budget is untouched.
FIRST = ((16384, "window512", "fwd"), (4096, "exact", "fwd"))
DENSE_FWDBWD_MAX_N = 2048  # the reference kernel's fwd+bwd beyond this: ~6 s and ~3 GiB per call at 4096


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# What is counted


def visible_entries(n: int, mask: str) -> int:
    """(query, key) pairs that may attend, per (batch, head)."""
    if mask == "exact":
        return n * n
    if mask == "causal":
        return n * (n + 1) // 2
    w = min(WINDOW, n)
    return w * (w + 1) // 2 + (n - w) * WINDOW


def flops(n: int, mask: str, mode: str) -> float:
    """4·B·H·N·visible_per_row·D forward (two matmuls, 2 FLOPs per multiply-add); fwd+bwd ≈ 3.5×."""
    fwd = 4.0 * B * H * visible_entries(n, mask) * D
    return fwd * (3.5 if mode == "fwdbwd" else 1.0)


def peer_of(mask: str) -> str:
    return "torch:sdpa"


def label(kernel: str, mask: str) -> str:
    if kernel == "torch:sdpa":
        return {"exact": "torch sdpa", "causal": "torch sdpa is_causal", "window512": "torch sdpa+bool mask"}[mask]
    if kernel == "torch:flex":
        return "torch flex (compiled)"
    return f"attnkit {kernel.split(':')[1]}"


# --------------------------------------------------------------------------------------------------
# The machine and the probe



def machine_context() -> dict:
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    mem_total = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_total = int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        from importlib.metadata import version
        transformers = version("transformers")
    except Exception:  # noqa: BLE001 - not installed
        transformers = "not installed"
    tiled_src = Path(sys.modules[make_plan.__module__].__file__).read_bytes()
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]
    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "cpu_flags": flags,
        "cpu_simd_flags": [f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "f16c"))],
        "mem_total_mib": mem_total,
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_parallel_info": torch.__config__.parallel_info().splitlines()[:6],
        "transformers": transformers,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "attnkit": attnkit.__version__,
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_src_modified": dirty,
        "tiled_py_sha256": hashlib.sha256(tiled_src).hexdigest()[:12],
        "inductor_cache": "fresh (per run)" if os.environ.get("ATTNKIT_BENCH_FRESH_INDUCTOR_CACHE") else
        os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
    }



# --------------------------------------------------------------------------------------------------
# Contenders


class Skip(Exception):
    """This contender does not run on this configuration (reason in the message)."""


@dataclass
class Inputs:
    n: int
    mode: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    do: torch.Tensor | None
    dense_mask: torch.Tensor | None = None  # for torch sdpa on the window, built once, outside the timing


def make_inputs(n: int, mask: str, mode: str, need_dense_mask: bool) -> Inputs:
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(B, H, n, D, generator=g, dtype=DTYPE) for _ in range(3))
    do = None
    if mode == "fwdbwd":
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        do = torch.randn(B, H, n, D, generator=g, dtype=DTYPE)
    dm = None
    if mask == "window512" and need_dense_mask:
        dm = torch.ones(n, n, dtype=torch.bool).tril().triu(-(WINDOW - 1))
    return Inputs(n, mode, q, k, v, do, dm)


def window_mask_mod(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx <= WINDOW - 1)


@dataclass
class FlexSetup:
    n: int
    block_mask_first_s: float | None = None
    block_mask_steady_s: float | None = None
    compile_first_call_s: float | None = None
    compile_kind: str = ""  # "cold" for the run's first compile on a fresh inductor cache
    error: str | None = None


_FLEX_COMPILES: list[int] = []


def setup_flex(inp: Inputs, setup: FlexSetup, steady_reps: int = 3):
    """create_block_mask (timed: first call and steady state), then torch.compile(flex_attention) and its
    first call (timed: compile). Forward only: FlexAttention has no CPU backward in torch 2.13."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n = inp.n
    t0 = time.perf_counter()
    bm = create_block_mask(window_mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device="cpu")
    setup.block_mask_first_s = time.perf_counter() - t0
    steady = []
    for _ in range(min(steady_reps, 2) if setup.block_mask_first_s > 1.0 else steady_reps):
        t0 = time.perf_counter()
        create_block_mask(window_mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device="cpu")
        steady.append(time.perf_counter() - t0)
    setup.block_mask_steady_s = statistics.median(steady) if steady else None
    torch._dynamo.reset()  # every N compiles from scratch: the first call is the compile time
    compiled = torch.compile(flex_attention)
    fresh = os.environ.get("ATTNKIT_BENCH_FRESH_INDUCTOR_CACHE") and not _FLEX_COMPILES
    t0 = time.perf_counter()
    with torch.no_grad():
        compiled(inp.q, inp.k, inp.v, block_mask=bm)
    setup.compile_first_call_s = time.perf_counter() - t0
    setup.compile_kind = "cold (fresh inductor cache)" if fresh else \
        "inductor cache holds this run's earlier compiles" if _FLEX_COMPILES else "user's inductor cache"
    _FLEX_COMPILES.append(n)
    return lambda q, k, v: compiled(q, k, v, block_mask=bm)


def make_fn(kernel: str, mask: str, inp: Inputs, flex_setup: FlexSetup | None = None, flex_steady_reps: int = 3):
    """fn(q, k, v) -> out for one contender, and a note; raises Skip."""
    n = inp.n
    if kernel.startswith("attnkit:"):
        name = kernel.split(":")[1]
        kw = ATTNKIT_KW[mask]
        req = AttentionRequest.build(inp.q, inp.k, inp.v, **kw)
        note = ""
        if name == "auto":
            note = "auto -> " + select_kernel(req, "auto").name
        else:
            reasons = attnkit.get_kernel(name).not_supported_reasons(req)
            if reasons:
                raise Skip("refused by the kernel: " + "; ".join(reasons))
        if name == "dense":
            # logits, masked logits, exp, probs (+ saved tensors for backward) in float32
            need = B * H * n * n * 4 * (4 if inp.mode == "fwd" else 6)
            avail = _mem_available()
            if avail is not None and need > 0.8 * avail:
                raise Skip(f"would need ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available")
        return (lambda q, k, v: attnkit.attention(q, k, v, kernel=name, **kw)), note
    if kernel == "torch:sdpa":
        if mask == "exact":
            return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v)), ""
        if mask == "causal":
            return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)), ""
        dm = inp.dense_mask
        return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dm)), \
            f"dense bool mask {n}x{n} built once, outside the timing"
    if kernel == "torch:flex":
        if mask != "window512":
            raise Skip("FlexAttention is benchmarked on the window only")
        if inp.mode == "fwdbwd":
            raise Skip("FlexAttention has no CPU backward in torch 2.13: forward only")
        setup = flex_setup or FlexSetup(n)
        try:
            fn = setup_flex(inp, setup, flex_steady_reps)
        except Exception as e:  # noqa: BLE001 - record, don't crash
            setup.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            raise Skip("FlexAttention failed on this CPU: " + setup.error) from None
        return fn, f"compile (first call) {setup.compile_first_call_s:.2f} s"
    raise ValueError(kernel)


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def make_call(fn, inp: Inputs):
    q, k, v, do = inp.q, inp.k, inp.v, inp.do
    if inp.mode == "fwd":
        def call():
            with torch.no_grad():
                fn(q, k, v)
    else:
        def call():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(do)
    return call


# --------------------------------------------------------------------------------------------------
# One configuration: all contenders, round-robin


@dataclass
class Result:
    n: int
    mask: str
    mode: str
    kernel: str
    label: str
    status: str = "ok"  # ok | skipped | failed
    note: str = ""
    warmup_s: list = field(default_factory=list)
    times_s: list = field(default_factory=list)
    rounds: list = field(default_factory=list)
    probes_gflops: list = field(default_factory=list)  # per round; negative = ran below the gate
    foreign_cores: list = field(default_factory=list)  # cores other processes used (probe or round, larger)
    contended_rounds: int = 0  # rounds kept although other processes ran during them (retries spent)
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    spread_pct: float | None = None
    gflops: float | None = None
    pct_of_matmul: float | None = None
    peer: str = ""
    speedup_vs_peer: float | None = None  # median over rounds of peer_time / this_time
    speedup_vs_peer_min: float | None = None
    speedup_vs_peer_max: float | None = None
    speedup_vs_flex: float | None = None
    speedup_vs_flex_min: float | None = None
    speedup_vs_flex_max: float | None = None
    mem_call_peak_mib: float | None = None  # VmHWM during one call minus RSS before it
    mem_ru_maxrss_mib: float | None = None  # whole child process: the torch import, inputs and the call
    mem_note: str = ""

    @property
    def config(self) -> str:
        return f"N={self.n} {self.mask} {self.mode}"


def run_config(n: int, mask: str, mode: str, kernels: list[str], probe: Probe, opts,
               flex_setups: dict) -> list[Result]:
    inp = make_inputs(n, mask, mode, need_dense_mask="torch:sdpa" in kernels)
    results, calls = [], {}
    by_kernel: dict[str, Result] = {}
    probe.gate()  # warm-ups also start on a quiet machine: they set the repeat counts
    # the peer goes first and auto last: what they cost decides whether identical calls are re-timed
    for kernel in sorted(kernels, key=lambda kn: (kn != peer_of(mask), kn == "attnkit:auto")):
        r = Result(n, mask, mode, kernel, label(kernel, mask), peer=label(peer_of(mask), mask))
        by_kernel[kernel] = r
        try:
            if kernel == "attnkit:dense" and opts.dense_max_n and n > opts.dense_max_n:
                raise Skip(f"--quick: the reference kernel runs at N <= {opts.dense_max_n} only")
            if kernel == "attnkit:dense" and mode == "fwdbwd" and n > DENSE_FWDBWD_MAX_N:
                raise Skip(f"time-box: the reference kernel's forward+backward is timed at N <= "
                           f"{DENSE_FWDBWD_MAX_N} (at 4096 it takes ~6 s and ~3 GiB per call)")
            peer = by_kernel.get(peer_of(mask))
            peer_s = peer.warmup_s[-1] if peer is not None and peer.status == "ok" and peer.warmup_s else 0.0
            if kernel == "attnkit:sdpa" and peer_s >= RETIME_MAX_S:
                what = {"exact": "makes the peer's own call (no mask)",
                        "causal": "makes the peer's own call (is_causal=True)",
                        "window512": "makes the peer's call, with the dense mask it builds on each call"}[mask]
                raise Skip(f"time-box: {what}; not re-timed at {peer_s:.0f} s per call: see the peer row "
                           f"(the adapter's overhead shows at smaller N)")
            fs = None
            if kernel == "torch:flex" and mode == "fwd":
                fs = flex_setups.setdefault(n, FlexSetup(n))
            fn, r.note = make_fn(kernel, mask, inp, fs)
            if kernel == "attnkit:auto":
                chosen = r.note.split("-> ")[1]
                same = by_kernel.get("attnkit:" + chosen)
                if same is not None and same.status == "ok" and same.warmup_s[-1] >= RETIME_MAX_S:
                    raise Skip(f"{r.note}, which is timed above; not re-timed at "
                               f"{same.warmup_s[-1]:.0f} s per call (same kernel, same request)")
                if chosen == "sdpa" and peer_s >= RETIME_MAX_S:
                    raise Skip(f"time-box: {r.note}, which makes the peer's call; not re-timed at "
                               f"{peer_s:.0f} s per call: see the peer row")
        except Skip as e:
            r.status, r.note = "skipped", str(e)
            if kernel == "torch:flex" and mode == "fwd":
                r.status = "failed"
            log(f"  {r.config:24s} {r.label:24s} {r.status}: {r.note}")
            continue
        call = make_call(fn, inp)
        try:  # warm-up: first calls discarded; the last one estimates the cost
            r.warmup_s.append(timed(call))
            while len(r.warmup_s) < opts.warmup and r.warmup_s[-1] < SLOW_S:
                r.warmup_s.append(timed(call))
        except Exception as e:  # noqa: BLE001
            r.status, r.note = "failed", f"{type(e).__name__}: {e}"[:300]
            log(f"  {r.config:24s} {r.label:24s} failed: {r.note}")
            traceback.print_exc(file=sys.stderr)
            continue
        calls[kernel] = call
    results = [by_kernel[kn] for kn in kernels]  # table order
    est = {kn: by_kernel[kn].warmup_s[-1] for kn in calls}
    reps = {kn: (3 if t >= SLOW_S else opts.reps) for kn, t in est.items()}
    order = [kn for kn in kernels if kn in calls]
    rnd, retries = 0, 0
    while rnd < max(reps.values(), default=0):
        gflops, foreign, passed = probe.gate()
        active = [kn for kn in order if reps[kn] > rnd]
        shift = rnd % len(active)
        times, f_ticks, dirty = {}, 0, False
        for kn in active[shift:] + active[:shift]:  # rotate the order: no contender always runs first
            c0 = cpu_ticks()
            times[kn] = timed(calls[kn])
            c1 = cpu_ticks()
            if c0 and c1:
                ft = (c1[0] - c0[0]) - (c1[1] - c0[1])
                f_ticks += ft
                dirty |= ft >= 2 and ft / TICK / times[kn] >= Probe.FOREIGN_MAX
        round_s = sum(times.values())
        busy = f_ticks / TICK / round_s
        contended = dirty or busy >= Probe.FOREIGN_MAX
        if contended and probe.may_retry(retries, round_s):
            retries += 1
            log(f"    round {rnd}: other processes or steal took {busy:.2f} cores; redoing it")
            continue
        for kn, t in times.items():
            r = by_kernel[kn]
            r.times_s.append(t)
            r.rounds.append(rnd)
            r.probes_gflops.append(round(gflops, 1) if passed else -round(gflops, 1))
            r.foreign_cores.append(round(max(foreign, busy), 2))
            r.contended_rounds += contended
        rnd, retries = rnd + 1, 0
    del calls
    for r in results:
        if r.status != "ok":
            continue
        med = statistics.median(r.times_s)
        r.median_ms, r.min_ms, r.max_ms = med * 1e3, min(r.times_s) * 1e3, max(r.times_s) * 1e3
        r.spread_pct = (max(r.times_s) - min(r.times_s)) / med * 100
        r.gflops = flops(n, mask, mode) / med / 1e9
    for peer_kernel, prefix in ((peer_of(mask), "speedup_vs_peer"), ("torch:flex", "speedup_vs_flex")):
        peer = by_kernel.get(peer_kernel)
        if peer is None or peer.status != "ok":
            continue
        peer_t = dict(zip(peer.rounds, peer.times_s))
        for r in results:
            if r.status != "ok":
                continue
            ratios = [peer_t[rd] / t for rd, t in zip(r.rounds, r.times_s) if rd in peer_t]
            if ratios:
                setattr(r, prefix, statistics.median(ratios))
                setattr(r, prefix + "_min", min(ratios))
                setattr(r, prefix + "_max", max(ratios))
    for r in results:
        if r.status == "ok":
            log(f"  {r.config:24s} {r.label:24s} {r.median_ms:10.2f} ms  ±{r.spread_pct:5.1f}%  n={len(r.times_s)}"
                + (f"  x{r.speedup_vs_peer:.2f} vs {r.peer}" if r.speedup_vs_peer else ""))
    return results


# --------------------------------------------------------------------------------------------------
# Peak memory: one configuration per subprocess



def mem_measure(spec: dict) -> dict:
    """In a fresh process: build the inputs (and the dense mask or the compiled FlexAttention), warm up,
    then the high-water mark of one call above the RSS just before it."""
    n, mask, mode, kernel = spec["n"], spec["mask"], spec["mode"], spec["kernel"]
    try:
        inp = make_inputs(n, mask, mode, need_dense_mask=(kernel == "torch:sdpa"))
        fn, _ = make_fn(kernel, mask, inp, flex_steady_reps=0)
        call = make_call(fn, inp)
        if spec.get("warm", True):
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
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}


def _mem_worker(spec: dict, conn) -> None:
    try:
        conn.send(mem_measure(spec))
    finally:
        conn.close()


def measure_memory(results: list[Result], opts) -> None:
    """One process per configuration, forked from a server that has imported torch and attnkit but run
    nothing (so no OpenMP pool crosses a fork): a clean process without paying the import each time."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    # the server imports these once; "__main__" alone does not bring torch in
    ctx.set_forkserver_preload(["torch", "torch.nn.attention.flex_attention", "attnkit", "__main__"])
    todo = [r for r in results if r.status == "ok"]
    for i, r in enumerate(todo, 1):
        est = r.median_ms / 1e3
        spec = {"n": r.n, "mask": r.mask, "mode": r.mode, "kernel": r.kernel, "warm": est < 1.0}
        timeout = 120 + 4 * est + (60 if r.kernel == "torch:flex" else 0)
        t0 = time.perf_counter()
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_mem_worker, args=(spec, send), daemon=True)
        p.start()
        send.close()
        try:
            res = recv.recv() if recv.poll(timeout) else {"ok": False, "error": f"timed out after {timeout:.0f} s"}
        except EOFError:
            res = {"ok": False, "error": "the process died (out of memory?)"}
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
        if res.get("ok"):
            r.mem_call_peak_mib = res["call_peak_kb"] / 1024 if res["call_peak_kb"] is not None else None
            r.mem_ru_maxrss_mib = res["ru_maxrss_kb"] / 1024
            r.mem_note = res["method"] + ("" if res["threads"] == torch.get_num_threads()
                                          else f" ({res['threads']} threads)")
        else:
            r.mem_note = "failed: " + res.get("error", "")
        log(f"  mem {i}/{len(todo)} {r.config:24s} {r.label:24s} "
            f"{'' if r.mem_call_peak_mib is None else f'{r.mem_call_peak_mib:9.1f} MiB'} "
            f"({time.perf_counter() - t0:.1f} s) {r.mem_note}")


# --------------------------------------------------------------------------------------------------
# Set-up time of the tiled kernel's plan


def plan_timing(n: int, reps: int) -> dict:
    q, k, v = (torch.randn(B, H, n, D) for _ in range(3))
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        plan = make_plan(AttentionRequest.build(q, k, v, window=(WINDOW - 1, 0)))
        times.append(time.perf_counter() - t0)
    chunks = sum(len(row.chunks) for row in plan)
    return {"n": n, "first_ms": times[0] * 1e3, "median_ms": statistics.median(times[1:]) * 1e3,
            "min_ms": min(times[1:]) * 1e3, "max_ms": max(times[1:]) * 1e3, "reps": reps,
            "query_blocks": len(plan), "chunks": chunks}


# --------------------------------------------------------------------------------------------------
# Report


def fmt_x(x, lo, hi) -> str:
    if x is None:
        return ""
    return f"{x:.2f}x [{lo:.2f}-{hi:.2f}]"


def table(results: list[Result], mm_gflops: float) -> str:
    head = (f"{'config':24s} {'kernel':24s} {'n':>2s} {'median ms':>10s} {'spread':>7s} {'GFLOP/s':>8s} "
            f"{'%mm':>5s} {'speedup vs peer [min-max]':>26s} {'vs flex [min-max]':>22s} {'peak MiB':>9s} {'probe':>6s}")
    lines = [head, "-" * len(head)]
    last = None
    for r in results:
        if last is not None and r.config != last:
            lines.append("")
        last = r.config
        mem = "" if r.mem_call_peak_mib is None else f"{r.mem_call_peak_mib:9.0f}"
        if r.status != "ok":
            lines.append(f"{r.config:24s} {r.label:24s} {r.status}: {r.note}")
            continue
        is_peer = r.kernel == peer_of(r.mask)
        vs_peer = "(peer)" if is_peer else fmt_x(r.speedup_vs_peer, r.speedup_vs_peer_min, r.speedup_vs_peer_max)
        vs_flex = "(flex)" if r.kernel == "torch:flex" else \
            fmt_x(r.speedup_vs_flex, r.speedup_vs_flex_min, r.speedup_vs_flex_max)
        lines.append(f"{r.config:24s} {r.label:24s} {len(r.times_s):2d} {r.median_ms:10.2f} {r.spread_pct:6.1f}% "
                     f"{r.gflops:8.1f} {100 * r.gflops / mm_gflops:4.0f}% {vs_peer:>26s} {vs_flex:>22s} {mem:>9s}"
                     f" {_probe_cell(r):>6s}"
                     + (f"   {r.note}" if r.note and r.kernel == "attnkit:auto" else ""))
    return "\n".join(lines)


def find(results, n, mask, mode, kernel) -> Result | None:
    return next((r for r in results if (r.n, r.mask, r.mode, r.kernel) == (n, mask, mode, kernel)), None)


def targets(results: list[Result], plan: dict | None) -> list[dict]:
    out = []

    def add(num, ok, text, value, need):
        status = "N/A " if ok is None else ("PASS" if ok else "FAIL")
        out.append({"target": num, "status": status.strip(), "value": value, "need": need,
                    "line": f"TARGET {num} {status} {text}"})

    big = 16384
    tl = find(results, big, "window512", "fwd", "attnkit:tiled")
    r_ok = tl is not None and tl.status == "ok"
    if r_ok and tl.speedup_vs_peer is not None:
        add(1, tl.speedup_vs_peer >= 20, f"tiled window-512 N={big} fwd vs torch SDPA + dense bool mask: "
            f"{tl.speedup_vs_peer:.1f}x faster [rounds {tl.speedup_vs_peer_min:.1f}-{tl.speedup_vs_peer_max:.1f}] "
            f"(need >= 20x)", tl.speedup_vs_peer, ">= 20")
    else:
        add(1, None, f"tiled window-512 N={big} fwd vs SDPA + dense mask: not measured in this run", None, ">= 20")
    fx = find(results, big, "window512", "fwd", "torch:flex")
    if r_ok and tl.speedup_vs_flex is not None:
        add(2, tl.speedup_vs_flex >= 1.0, f"tiled window-512 N={big} fwd vs compiled FlexAttention steady state: "
            f"flex/tiled = {tl.speedup_vs_flex:.2f} [rounds {tl.speedup_vs_flex_min:.2f}-{tl.speedup_vs_flex_max:.2f}] "
            f"(need >= 1.0)", tl.speedup_vs_flex, ">= 1.0")
    else:
        why = fx.note if fx is not None and fx.status != "ok" else "not measured in this run"
        add(2, None, f"tiled window-512 N={big} fwd vs FlexAttention: {why}", None, ">= 1.0")
    if plan is not None:
        add(3, plan["median_ms"] < 50, f"tiled set-up (make_plan(AttentionRequest.build(..., window=(511, 0)))) "
            f"N={plan['n']}: {plan['median_ms']:.2f} ms median of {plan['reps']} [{plan['min_ms']:.2f}-"
            f"{plan['max_ms']:.2f}], first call {plan['first_ms']:.2f} ms (need < 50 ms)", plan["median_ms"], "< 50 ms")
    else:
        add(3, None, "tiled set-up time: not measured", None, "< 50 ms")
    au = find(results, 4096, "exact", "fwd", "attnkit:auto")
    if au is not None and au.status == "ok" and au.speedup_vs_peer is not None:
        ratio, lo, hi = 1 / au.speedup_vs_peer, 1 / au.speedup_vs_peer_max, 1 / au.speedup_vs_peer_min
        add(4, ratio <= 1.05, f"kernel='auto' exact N=4096 fwd vs torch SDPA: auto/sdpa = {ratio:.3f} "
            f"[rounds {lo:.3f}-{hi:.3f}] ({au.note}) (need <= 1.05)", ratio, "<= 1.05")
    else:
        add(4, None, "kernel='auto' exact N=4096 fwd vs SDPA: not measured in this run", None, "<= 1.05")
    return out


def gflops_lines(results: list[Result], mm_best: float, mm_median: float) -> list[str]:
    lines = []
    for r in results:
        if r.kernel == "attnkit:tiled" and r.mask == "window512" and r.status == "ok":
            lines.append(f"tiled window-512 N={r.n:5d} {r.mode:6s}: {r.gflops:6.1f} GFLOP/s over visible entries "
                         f"= {100 * r.gflops / mm_best:3.0f}% of the best matmul probe ({mm_best:.0f} GFLOP/s; "
                         f"median probe {mm_median:.0f}; this config's probes {_probe_range(r)})")
    return lines


def _probe_cell(r: Result) -> str:
    """Median probe GFLOP/s of the rounds; '*' when a round ran below the gate (slow or busy machine)."""
    p = [abs(x) for x in r.probes_gflops]
    if not p:
        return ""
    return f"{statistics.median(p):.0f}" + ("*" if any(x < 0 for x in r.probes_gflops) else "") + \
        ("!" if r.contended_rounds else "")


def _probe_range(r: Result) -> str:
    p = [abs(x) for x in r.probes_gflops]
    low = sum(1 for x in r.probes_gflops if x < 0)
    return f"{min(p):.0f}-{max(p):.0f}" + (f", {low} below gate" if low else "") + \
        (f", other processes or steal up to {max(r.foreign_cores):.2f} cores" if max(r.foreign_cores) >= 0.05 else "")


def write_outputs(out_dir: Path, stem: str, payload: dict, results: list[Result]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, cpath = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    jpath.write_text(json.dumps(payload, indent=1, default=str))
    cols = ["n", "mask", "mode", "kernel", "label", "status", "note", "n_timed", "median_ms", "min_ms", "max_ms",
            "spread_pct", "gflops", "pct_of_matmul", "peer", "speedup_vs_peer", "speedup_vs_peer_min",
            "speedup_vs_peer_max", "speedup_vs_flex", "speedup_vs_flex_min", "speedup_vs_flex_max",
            "probe_gflops_median", "rounds_below_gate", "contended_rounds", "foreign_cores_max", "mem_call_peak_mib", "mem_ru_maxrss_mib", "mem_note"]
    with cpath.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in results:
            row = asdict(r)
            row["n_timed"] = len(r.times_s)
            row["probe_gflops_median"] = statistics.median([abs(x) for x in r.probes_gflops]) \
                if r.probes_gflops else None
            row["rounds_below_gate"] = sum(1 for x in r.probes_gflops if x < 0)
            row["foreign_cores_max"] = max(r.foreign_cores) if r.foreign_cores else None
            w.writerow({c: (round(row[c], 4) if isinstance(row[c], float) else row[c]) for c in cols})
    return jpath, cpath


# --------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N in {1024, 4096}, fewer repeats, no memory pass")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out"), help="folder for the JSON and CSV")
    ap.add_argument("--sizes", type=int, nargs="+", help="override the sequence lengths")
    ap.add_argument("--masks", nargs="+", choices=MASKS, default=list(MASKS))
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    ap.add_argument("--flex-sizes", type=int, nargs="+",
                    help="sizes at which FlexAttention is compiled and timed (default all; quick: the largest)")
    ap.add_argument("--reps", type=int, help="timed repeats for calls under 2 s (default 5, quick 3); 3 above")
    ap.add_argument("--warmup", type=int, help="warm-up calls for calls under 2 s (default 2, quick 1)")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                    help="peak memory per configuration in subprocesses (default on; off with --quick)")
    opts = ap.parse_args()

    sizes = opts.sizes or ([1024, 4096] if opts.quick else [1024, 4096, 16384])
    flex_sizes = opts.flex_sizes or (sizes[-1:] if opts.quick else sizes)
    opts.reps = opts.reps or (3 if opts.quick else 5)
    opts.warmup = opts.warmup or (1 if opts.quick else 2)
    memory = (not opts.quick) if opts.memory is None else opts.memory
    opts.dense_max_n = 1024 if opts.quick else None
    # probe length, longest wait per gate, total waiting, redone rounds per round, total time of redone rounds
    probe_s, max_wait, total_wait, retries, retry_s = (0.25, 5.0, 15.0, 1, 15.0) if opts.quick else \
        (0.5, 20.0, 120.0, 3, 300.0)
    command = " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else
                        sys.executable] + [a.replace(str(REPO) + "/", "") for a in sys.argv])

    wall0 = time.perf_counter()
    ctx = machine_context()
    probe = Probe(probe_s, max_wait, total_wait, retries, retry_s)
    print("attnkit core kernel benchmark (benchmarks/bench_core.py)")
    print(f"command: {command}")
    print(f"date (UTC): {ctx['date_utc']}")
    print(f"CPU: {ctx['cpu_model']}, {ctx['cpu_count']} CPUs, {ctx['mem_total_mib']} MiB RAM")
    print(f"CPU SIMD flags: {' '.join(ctx['cpu_simd_flags'])}")
    print(f"torch {ctx['torch']}, torch.get_num_threads() = {ctx['torch_num_threads']}, "
          f"transformers {ctx['transformers']}, python {ctx['python']}")
    print(f"attnkit {ctx['attnkit']}, git commit {ctx['git_commit']}"
          + (f" + uncommitted changes in {', '.join(ctx['git_src_modified'])}" if ctx["git_src_modified"] else "")
          + f"; tiled.py sha256 {ctx['tiled_py_sha256']}")
    print(f"shapes: B={B} H={H} D={D} float32; N in {sizes}; window = causal sliding window of {WINDOW} "
          f"(window=(511, 0)); probe: {probe.reps} x torch.mm {PROBE_N}^2 per round, gate at "
          f"{GATE_FRACTION:.0%} of the best probe")
    print(flush=True)

    results: list[Result] = []
    flex_setups: dict[int, FlexSetup] = {}
    configs = [(n, mask, mode) for n in sizes for mask in opts.masks for mode in opts.modes]
    for n, mask, mode in sorted(configs, key=lambda c: c not in FIRST):
        kernels = [kn for kn in opts.kernels
                   if not (kn == "torch:flex" and (mask != "window512" or n not in flex_sizes))]
        log(f"[{time.perf_counter() - wall0:6.0f} s] N={n} {mask} {mode}")
        gc.collect()
        results += run_config(n, mask, mode, kernels, probe, opts, flex_setups)
    results.sort(key=lambda r: configs.index((r.n, r.mask, r.mode)))  # table order
    log(f"[{time.perf_counter() - wall0:6.0f} s] tiled set-up time")
    probe.gate()
    plan = plan_timing(16384, 20)
    timing_s = time.perf_counter() - wall0
    if memory:
        log(f"[{timing_s:6.0f} s] peak memory, one subprocess per configuration")
        measure_memory(results, opts)
    mm_best = probe.best or max(probe.history)
    mm_median = statistics.median(probe.history)
    for r in results:
        if r.gflops is not None:
            r.pct_of_matmul = 100 * r.gflops / mm_best
    tg = targets(results, plan)
    wall = time.perf_counter() - wall0

    print(table(results, mm_best))
    print()
    print("GFLOP/s count only visible (query, key) pairs: 4*B*H*visible*D forward, x3.5 forward+backward; "
          "%mm is against the best matmul probe of the run.")
    print("speedup = peer time / this time, median over round-robin rounds [min-max over rounds]; "
          "> 1 means faster than the peer.")
    print("probe = median matmul probe (GFLOP/s) before the rounds; * = a round ran below the gate after the "
          "waiting budget; ! = a round kept although other processes (or steal) took CPU during it.")
    print(f"matmul probe (torch.mm {PROBE_N}^2 float32): best {mm_best:.0f} GFLOP/s, median {mm_median:.0f}, "
          f"min {min(probe.history):.0f} over {len(probe.history)} probes; other processes or steal took "
          f"{statistics.median(probe.foreign):.2f} cores median, {max(probe.foreign):.2f} max during probes; "
          f"rounds run below the gate after waiting: {probe.timeouts}; waited {probe.waited_s:.0f} s; "
          f"rounds redone because other processes or steal took CPU during them: {probe.retries}; rounds kept "
          f"although "
          f"disturbed: {sum(r.contended_rounds for r in results if r.kernel == peer_of(r.mask))}")
    for line in gflops_lines(results, mm_best, mm_median):
        print(line)
    for n, fs in sorted(flex_setups.items()):
        if fs.error:
            print(f"FlexAttention N={n}: failed: {fs.error}")
        elif fs.compile_first_call_s is not None:
            print(f"FlexAttention N={n}: first call (compile) {fs.compile_first_call_s:.2f} s; create_block_mask "
                  f"{fs.block_mask_first_s * 1e3:.1f} ms first, {fs.block_mask_steady_s * 1e3:.1f} ms steady; "
                  f"compile {fs.compile_kind}")
    print(f"tiled plan N={plan['n']} window-512: {plan['query_blocks']} query blocks, {plan['chunks']} chunks; "
          f"{plan['median_ms']:.2f} ms median, first {plan['first_ms']:.2f} ms")
    print()
    for t in tg:
        print(t["line"])
    print()
    print(f"wall time {wall:.0f} s (timing {timing_s:.0f} s, memory {wall - timing_s:.0f} s)")

    payload = {"command": command, "context": ctx, "settings": {
        "B": B, "H": H, "D": D, "dtype": "float32", "sizes": sizes, "masks": opts.masks, "modes": opts.modes,
        "kernels": opts.kernels, "flex_sizes": flex_sizes, "reps_fast": opts.reps, "warmup": opts.warmup, "slow_s": SLOW_S, "retime_max_s": RETIME_MAX_S,
        "dense_fwdbwd_max_n": DENSE_FWDBWD_MAX_N,
        "probe_reps": probe.reps, "gate_fraction": GATE_FRACTION, "memory": memory, "quick": opts.quick},
        "matmul_probe": {"best_gflops": mm_best, "median_gflops": mm_median, "all_gflops": probe.history,
                         "foreign_cores": probe.foreign,
                         "below_gate_rounds": probe.timeouts, "waited_s": probe.waited_s,
                         "redone_rounds": probe.retries},
        "flex_setup": {n: asdict(fs) for n, fs in flex_setups.items()}, "plan_timing": plan,
        "targets": tg, "results": [asdict(r) for r in results], "wall_s": wall}
    stem = "bench_core_quick" if opts.quick else "bench_core"
    jpath, cpath = write_outputs(Path(opts.out), stem, payload, results)
    print(f"wrote {jpath} and {cpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
