"""The sweep behind ``attnkit bench``: kernels x lengths x masks x modes, each configuration's contenders
timed round-robin in one process against named peers, then (optionally) each one's peak memory in a
process of its own.

    >>> opts = SweepOptions.build(kernels=["tiled", "sdpa"], lengths=[1024, 4096], quick=True)
    >>> result = Sweep(opts).run()
    >>> print(result.report()); result.write("attnkit-bench")
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .. import functional as AF
from . import report
from .contenders import (BIGBIRD, DOCUMENTS, MASKS, MODES, WINDOW, B, D, FlexSetup, H, Skip,
                         fresh_inductor_cache, inductor_cache_note, label, make_call, make_fn, make_inputs, mask_case,
                         memory_of)
from .context import machine
from .counting import attention_flops, visible_entries
from .measure import GATE_FRACTION, PROBE_N, MemoryServer, Probe, repeats, round_robin, warm_up
from .progress import Progress
from .report import LEGEND, ROW_COLUMNS, flex_lines, sweep_table, timing_record, write_csv, write_json
from .rows import Row

PEERS = {"sdpa": "torch:sdpa", "flex": "torch:flex", "dense": "attnkit:dense"}  # --peers name -> contender
DEFAULT_KERNELS = ("tiled", "sdpa", "dense", "linear")  # those registered
FULL_LENGTHS, QUICK_LENGTHS = (1024, 4096, 16384), (512, 1024, 2048)
QUICK_BUDGET_S = 45.0  # --quick's timing; with the imports, the probe and the plot the run stays under a minute
GC_MIN_N = 4096  # a full collection (~0.1 s with torch loaded) before configurations whose garbage matters


def _quiet(msg: str) -> None:
    pass


# --------------------------------------------------------------------------------------------------
# One row: a contender on a configuration


@dataclass
class Timing:
    rounds: int = 5  # timed repeats of calls under SLOW_S; slower calls get 3
    warmup: int = 2  # warm-up calls of calls under SLOW_S; slower calls get 1


def run_config(n: int, mask: str, mode: str, kernels: Sequence[str], probe: Probe, timing: Timing, *,
               case_name: str | None = None, peers: Sequence[str] = (), flex_setups: dict | None = None,
               vet: Callable[[Row, dict], None] | None = None, log: Callable[[str], None] = _quiet,
               deadline: float | None = None) -> list[Row]:
    """Every contender in ``kernels`` on one configuration, round-robin; ratios against each of ``peers``
    that ran (the first one that ran is the row's ``peer``). ``vet(row, rows_so_far)`` may raise Skip
    after the contender is built and before it is warmed up. No round starts after ``deadline``
    (``time.perf_counter()``) once one is done."""
    case_name = case_name or mask
    rows = {k: Row(n, mask, mode, k, label(k, case_name), case=case_name) for k in kernels}
    flex_setups = {} if flex_setups is None else flex_setups
    case = mask_case(case_name, n)
    inp = make_inputs(case, mode, need_dense_mask="torch:sdpa" in kernels)
    visible = visible_entries(case.mask, n)
    calls = {}
    probe.gate()  # warm-ups also start on a quiet machine: they set the repeat counts
    # the first peer goes first and auto last: what they cost decides what vet() lets through
    for kernel in sorted(kernels, key=lambda k: (k not in peers[:1], k == "attnkit:auto")):
        r = rows[kernel]
        r.visible = visible
        fs = flex_setups.setdefault((n, case_name), FlexSetup(n, case_name)) \
            if kernel == "torch:flex" and mode == "fwd" else None
        try:
            fn, r.note = make_fn(kernel, case, inp, fs)
            if vet is not None:
                vet(r, rows)
            call = make_call(fn, inp)
            r.warmup_s = warm_up(call, timing.warmup)
        except Skip as e:
            r.status, r.note = ("failed" if fs is not None and fs.error else "skipped"), str(e)
            log(f"  {r.config:24s} {r.label:24s} {r.status}: {r.note}")
            continue
        except Exception as e:  # noqa: BLE001 - recorded in the row; the sweep goes on
            r.status, r.note = "failed", f"{type(e).__name__}: {e}"[:300]
            log(f"  {r.config:24s} {r.label:24s} failed: {r.note}")
            continue
        calls[kernel] = call
    order = [k for k in kernels if k in calls]
    round_robin(probe, {k: calls[k] for k in order}, {k: repeats(rows[k].warmup_s[-1], timing.rounds) for k in order},
                rows, log, deadline)
    del calls
    _figures(list(rows.values()), peers, attention_flops(visible, mode, B, H, D))
    return [rows[k] for k in kernels]


def skipped(rows: list[Row], reason: str) -> list[Row]:
    """The rows, each marked skipped for ``reason``."""
    for r in rows:
        r.status, r.note = "skipped", reason
    return rows


def _figures(rows: list[Row], peers: Sequence[str], flop: float) -> None:
    """Median and spread, GFLOP/s, and the ratios against each peer that ran."""
    ok = [r for r in rows if r.status == "ok"]
    for r in ok:
        r.gflops = flop / (r.summarize()) / 1e9
    ran = [r for p in peers for r in ok if r.kernel == p]
    for r in ok:
        for p in ran:
            vs = r.ratio_to(p)
            if vs is not None:
                r.vs[p.kernel] = list(vs)
        if ran and ran[0].kernel in r.vs:
            r.peer, r.peer_kernel = ran[0].label, ran[0].kernel
            r.ratio, r.ratio_min, r.ratio_max = r.vs[ran[0].kernel]


def fill_pct_of_matmul(rows: list[Row], best_gflops: float) -> None:
    """Each timed row's GFLOP/s as a share of the run's best matmul probe, once the run's probes are in:
    the one place ``pct_of_matmul`` is derived (tables and files read it from the row)."""
    for r in rows:
        if r.gflops is not None:
            r.pct_of_matmul = 100 * r.gflops / best_gflops


def vet_dense_max_n(row: Row, dense_max_n: int | None) -> None:
    """Skip the reference kernel above ``dense_max_n`` (--quick's rule; None: no limit)."""
    if row.kernel == "attnkit:dense" and dense_max_n and row.n > dense_max_n:
        raise Skip(f"--quick: the reference kernel runs at N <= {dense_max_n} only")


def measure_memory(rows: list[Row], log: Callable[[str], None] = _quiet,
                   progress: Progress | None = None) -> None:
    """Peak memory of each timed row's call, one fresh process per row (BENCHMARKING.md 5)."""
    server = MemoryServer(["torch", "torch.nn.attention.flex_attention", "attnkit", "attnkit.bench.contenders"])
    todo = [r for r in rows if r.status == "ok"]
    for i, r in enumerate(todo, 1):
        if progress is not None:
            progress.begin(f"memory: {r.config} {r.label}")
        est = r.median_ms / 1e3
        spec = {"n": r.n, "case": r.case, "mode": r.mode, "kernel": r.kernel, "warm": est < 1.0,
                "threads": torch.get_num_threads()}
        t0 = time.perf_counter()
        res = server.run(memory_of, spec, 120 + 4 * est + (60 if r.kernel == "torch:flex" else 0))
        if res.get("ok"):
            r.mem_call_peak_mib = res["call_peak_kb"] / 1024 if res["call_peak_kb"] is not None else None
            r.mem_ru_maxrss_mib = res["ru_maxrss_kb"] / 1024
            r.mem_note = res["method"]
        else:
            r.mem_note = "failed: " + res.get("error", "")
        if progress is not None:
            progress.end(1.0)
        log(f"  mem {i}/{len(todo)} {r.config:24s} {r.label:24s} "
            f"{'' if r.mem_call_peak_mib is None else f'{r.mem_call_peak_mib:9.1f} MiB'} "
            f"({time.perf_counter() - t0:.1f} s) {r.mem_note}")


# --------------------------------------------------------------------------------------------------
# The options of `attnkit bench`


def _names(kind: str, given: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    unknown = [x for x in given if x not in known]
    if unknown:
        raise ValueError(f"unknown {kind} {unknown[0]!r}; choose from {', '.join(known)}")
    if not given:
        raise ValueError(f"no {kind} given; choose from {', '.join(known)}")
    return tuple(dict.fromkeys(given))


@dataclass(frozen=True)
class SweepOptions:
    kernels: tuple[str, ...]  # registered attnkit kernel names, or "auto"
    lengths: tuple[int, ...] = FULL_LENGTHS
    masks: tuple[str, ...] = MASKS
    modes: tuple[str, ...] = MODES
    peers: tuple[str, ...] = ("sdpa", "flex", "dense")  # ratios against the first that runs
    rounds: int = 5
    warmup: int = 2
    memory: bool = True  # peak memory of each row in a process of its own
    flex: bool = True  # False: no FlexAttention rows (its compile takes 5-15 s per configuration)
    dense_max_n: int | None = None  # the reference kernel only up to this length
    quick: bool = False
    budget_s: float | None = None  # timing stops here: each configuration gets a share by its cost, fewer rounds
    probe: tuple[float, float, float, int, float] = (0.5, 20.0, 120.0, 3, 300.0)  # Probe(...) arguments

    @property
    def compiles_flex(self) -> bool:
        """Whether FlexAttention runs (and is compiled) in this sweep."""
        return self.flex and "flex" in self.peers

    @classmethod
    def build(cls, *, kernels: Sequence[str] | None = None, lengths: Sequence[int] | None = None,
              masks: Sequence[str] | None = None, modes: Sequence[str] | None = None,
              peers: Sequence[str] | None = None, rounds: int | None = None, memory: bool | None = None,
              quick: bool = False) -> SweepOptions:
        """Options from what a user gave (None = default); ``quick`` = short lengths, 3 rounds, no memory
        pass, no FlexAttention, a short probe. ValueError names an unknown kernel, mask, mode or peer."""
        registered = [k.name for k in AF.kernels()]
        kernels = _names("kernel", kernels if kernels is not None else
                         [k for k in DEFAULT_KERNELS if k in registered], registered + ["auto"])
        if lengths is not None and (not lengths or any(int(n) < 1 for n in lengths)):
            raise ValueError(f"lengths must be positive ints, got {list(lengths)}")
        if rounds is not None and rounds < 1:
            raise ValueError(f"rounds must be positive, got {rounds}")
        opts = cls(kernels=kernels, masks=_names("mask", masks if masks is not None else MASKS, MASKS),
                   modes=_names("mode", modes if modes is not None else MODES, MODES),
                   peers=_names("peer", peers if peers is not None else cls.peers, list(PEERS)))
        if quick:
            opts = replace(opts, lengths=QUICK_LENGTHS, rounds=3, warmup=1, memory=False, flex=False,
                           dense_max_n=512, quick=True, budget_s=QUICK_BUDGET_S,
                           probe=(0.1, 1.0, 4.0, 1, 4.0))
        return replace(opts, lengths=tuple(int(n) for n in lengths) if lengths else opts.lengths,
                       rounds=rounds or opts.rounds, memory=opts.memory if memory is None else memory)

    def contenders(self) -> list[str]:
        """Contender names: the attnkit kernels, then the peers not already among them."""
        out = [f"attnkit:{k}" for k in self.kernels]
        return out + [PEERS[p] for p in self.peers if PEERS[p] not in out]

    def settings(self) -> dict:
        return {**asdict(self), "B": B, "H": H, "D": D, "dtype": "float32", "window": WINDOW,
                "documents": DOCUMENTS, "bigbird": BIGBIRD}


# --------------------------------------------------------------------------------------------------
# The run


@dataclass
class SweepResult:
    options: SweepOptions
    context: dict
    probe: dict
    rows: list[Row]
    flex_setups: dict
    wall_s: float
    timing_s: float

    def report(self) -> str:
        return sweep_report(self)

    def payload(self) -> dict:
        return {"context": self.context, "settings": self.options.settings(), "matmul_probe": self.probe,
                "flex_setup": [asdict(fs) for fs in self.flex_setups.values()],
                "results": [asdict(r) for r in self.rows], "wall_s": self.wall_s}

    def write(self, out: str | Path) -> list[Path]:
        """bench.json (everything) and bench.csv (one row per configuration and contender) in ``out``."""
        return write_sweep(Path(out), self)

    def plot(self, path: str | Path) -> Path:
        """A log-log PNG of median time vs N; ImportError without matplotlib."""
        return report.plot(self.rows, Path(path), report.context_line(self.context))


class Sweep:
    """Holds the machine context and the probe: make one, print ``header()``, then ``run()``."""

    def __init__(self, options: SweepOptions):
        self.options = options
        if options.compiles_flex:
            fresh_inductor_cache()  # the process's compiles go to a fresh cache: "compile time" means cold
        self.context = {**machine(), "inductor_cache": inductor_cache_note()}
        self.probe = Probe(*options.probe)
        self.first_probe = self.probe.measure()[0]

    def header(self) -> str:
        return sweep_header(self.options, self.context, self.probe, self.first_probe)

    def configs(self) -> list[tuple[int, str, str]]:
        o = self.options
        return [(n, mask, mode) for n in o.lengths for mask in o.masks for mode in o.modes]

    def _work(self) -> list[float]:
        """Expected cost of each configuration, for the progress bar and the time budget: N^2 (x3.5 with
        backward) plus a fixed part for the probes and the set-up, worth two forwards at N = 1024, plus,
        where FlexAttention is compiled (forward only), its ~10 s compile, worth ~8192^2 on this scale."""
        flex = self.options.compiles_flex
        return [n * n * (3.5 if mode == "fwdbwd" else 1.0) + 2 * 1024 * 1024
                + (8192 * 8192 if flex and mode == "fwd" else 0) for n, _, mode in self.configs()]

    def progress(self, stream=None) -> Progress:
        """A progress bar over this sweep's configurations (on stderr by default)."""
        return Progress(sum(self._work()), len(self.configs()), stream=stream)

    def _vet(self, row: Row, rows: dict) -> None:
        vet_dense_max_n(row, self.options.dense_max_n)

    def _config(self, n: int, mask: str, mode: str, flex_setups: dict, log: Callable[[str], None],
                deadline: float | None) -> list[Row]:
        o = self.options
        kernels = [k for k in o.contenders() if o.flex or k != "torch:flex"]  # no compile at all when flex is off
        if deadline is not None and time.perf_counter() > deadline:  # the whole budget is spent
            return skipped([Row(n, mask, mode, k, label(k, mask), case=mask) for k in kernels],
                           f"--quick: its {o.budget_s:.0f} s time budget is spent (a busy machine?)")
        return run_config(n, mask, mode, kernels, self.probe, Timing(o.rounds, o.warmup),
                          peers=[PEERS[p] for p in o.peers], flex_setups=flex_setups, vet=self._vet, log=log,
                          deadline=deadline)

    def run(self, progress: Progress | None = None, log: Callable[[str], None] = _quiet) -> SweepResult:
        o = self.options
        wall0 = time.perf_counter()
        progress = progress or self.progress(_NullStream())
        rows, flex_setups = [], {}
        work = self._work()
        left = sum(work)
        end = None if o.budget_s is None else wall0 + o.budget_s
        for (n, mask, mode), w in zip(self.configs(), work):
            progress.begin(f"N={n} {mask} {mode}")
            if n >= GC_MIN_N:
                gc.collect()
            now = time.perf_counter()  # each configuration's share of what is left of the budget, by its cost
            deadline = None if end is None else now + (end - now) * w / left
            rows += self._config(n, mask, mode, flex_setups, log, deadline)
            left -= w
            progress.end(w)
        timing_s = time.perf_counter() - wall0
        if o.memory:
            todo = sum(r.status == "ok" for r in rows)
            progress.close("timing done")
            mem_progress = Progress(todo, todo, stream=progress.stream)
            measure_memory(rows, log, mem_progress)
            progress = mem_progress
        progress.close()
        summary = self.probe.summary()
        fill_pct_of_matmul(rows, summary["best_gflops"])
        return SweepResult(o, self.context, summary, rows, flex_setups, time.perf_counter() - wall0, timing_s)


class _NullStream:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# What a sweep prints and writes (its rows' table and files: bench.report)


def sweep_header(opts: SweepOptions, ctx: dict, probe: Probe, first_probe: float) -> str:
    """Machine, threads, versions, the probe, and what the masks and peers are."""
    bigbird = ", ".join(f"{k}={v}" for k, v in BIGBIRD.items())
    simd = " ".join(ctx["cpu_simd_flags"]) or "unknown"
    return "\n".join([
        (f"attnkit bench{' --quick' if opts.quick else ''}: B={B} H={H} D={D} float32 on the CPU; "
         f"N in {', '.join(map(str, opts.lengths))}; modes {', '.join(opts.modes)}"),
        f"machine: {ctx['cpu_model']}, {ctx['cpu_count']} CPUs, {ctx['mem_total_mib']} MiB RAM; SIMD {simd}",
        f"threads: torch.get_num_threads() = {ctx['torch_num_threads']}",
        f"versions: torch {ctx['torch']}, attnkit {ctx['attnkit']}, python {ctx['python']}",
        (f"matmul probe: torch.mm {PROBE_N}^2 float32 = {first_probe:.0f} GFLOP/s; {probe.reps} of them before "
         f"each round, which waits while the probe is below {GATE_FRACTION:.0%} of the best seen"),
        (f"masks: {', '.join(opts.masks)}; window = causal sliding window of {WINDOW} (window=({WINDOW - 1}, 0)); "
         f"document = {DOCUMENTS} packed documents of random lengths; bigbird = masks.bigbird({bigbird})"),
        (f"peers: {', '.join(opts.peers)} (sdpa gets a dense bool mask for sparse patterns; flex is compiled; "
         f"dense is attnkit's reference kernel); ratios against the first that ran"),
        "",
    ])


def sweep_report(res: SweepResult) -> str:
    """The table, its legend, the probe's summary, FlexAttention's set-up times and the wall time."""
    p = res.probe
    lines = [sweep_table(res.rows), "", *LEGEND,
             (f"matmul probe: best {p['best_gflops']:.0f} GFLOP/s, median {p['median_gflops']:.0f}, min "
              f"{p['min_gflops']:.0f} over {len(p['all_gflops'])} probes; waited {p['waited_s']:.0f} s; rounds "
              f"below the gate {p['below_gate_rounds']}, redone {p['redone_rounds']}")]
    if not res.options.memory:
        lines.append("peak MiB: not measured (--quick or --no-memory)")
    if "flex" in res.options.peers and not res.options.flex:
        lines.append("FlexAttention: not compiled with --quick (5-15 s per configuration); run without --quick")
    lines += flex_lines(res.flex_setups)
    lines.append(f"wall time {res.wall_s:.0f} s (timing {res.timing_s:.0f} s)")
    return "\n".join(lines)


def write_sweep(out: Path, res: SweepResult) -> list[Path]:
    records = [{**asdict(r), **timing_record(r)} for r in res.rows]
    cols = ROW_COLUMNS + ["peer_kernel"]
    return [write_json(out / "bench.json", res.payload()), write_csv(out / "bench.csv", records, cols)]
