"""How benchmark rows are printed and written: the context line, the table and its legend, CSV and JSON, a log-log
plot. ``sweep`` composes them into ``attnkit bench``'s header and report; benchmarks/*.py use them directly.

Every figure is a ratio against a named peer timed in the same run, beside the machine's measured
matmul rate (BENCHMARKING.md); this module only formats what was measured.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import atomic_path, write_text
from ..text import format_table
from .contenders import label

from .rows import Row

if TYPE_CHECKING:
    from .measure import Timed

ROW_COLUMNS = ["n", "mask", "mode", "kernel", "label", "status", "note", "n_timed", "median_ms", "min_ms", "max_ms",
               "spread_pct", "visible", "gflops", "pct_of_matmul", "peer", "ratio", "ratio_min", "ratio_max",
               "probe_gflops_median", "rounds_below_gate", "contended_rounds", "foreign_cores_max",
               "mem_call_peak_mib", "mem_ru_maxrss_mib", "mem_note"]


# --------------------------------------------------------------------------------------------------
# Cells


def fmt_ratio(x: float | None, lo: float | None, hi: float | None) -> str:
    """``1.23x [1.10-1.31]``, or "" when not measured."""
    if x is None:
        return ""
    return f"{x:.2f}x [{lo:.2f}-{hi:.2f}]"


def timing_record(r: Timed) -> dict:
    """The per-row summaries of the probe and the rounds, for CSV."""
    return {"n_timed": len(r.times_s), "probe_gflops_median": r.probe_median(),
            "rounds_below_gate": sum(1 for x in r.probes_gflops if x < 0),
            "foreign_cores_max": max(r.foreign_cores) if r.foreign_cores else None}


def write_csv(path: Path, records: list[dict], columns: list[str]) -> Path:
    """One line per record, floats to 6 significant digits, written whole or not at all."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for rec in records:
            w.writerow({c: (float(f"{rec[c]:.6g}") if isinstance(rec.get(c), float) else rec.get(c)) for c in columns})
    return path


def write_json(path: Path, payload: dict) -> Path:
    return write_text(path, json.dumps(payload, indent=1, default=str))


# --------------------------------------------------------------------------------------------------
# attnkit bench: header, table, notes


def context_line(ctx: dict) -> str:
    return (f"{ctx['cpu_model']}, {ctx['cpu_count']} CPUs, {ctx['torch_num_threads']} threads; "
            f"torch {ctx['torch']}, attnkit {ctx['attnkit']}")


def _row_cells(r: Row, also: str | None = None) -> list[str]:
    head = [r.config, r.label]
    extra = [] if also is None else [""]
    if r.status != "ok":
        return head + [""] * 7 + extra + [f"{r.status}: {r.note}"]
    mem = "" if r.mem_call_peak_mib is None else f"{r.mem_call_peak_mib:9.1f}"
    vs = "(peer)" if r.kernel == r.peer_kernel else fmt_ratio(r.ratio, r.ratio_min, r.ratio_max)
    if also is not None:
        extra = ["(itself)" if r.kernel == also else fmt_ratio(*r.vs.get(also, (None, None, None)))]
    note = r.note if r.kernel == "torch:flex" or r.note.startswith("auto") else ""
    spread = f"{r.spread_pct:5.1f}%" if len(r.times_s) > 1 else "1 call"
    pct = "" if r.pct_of_matmul is None else f"{r.pct_of_matmul:4.0f}%"  # filled by sweep.fill_pct_of_matmul
    return head + [f"{r.median_ms:10.3f}", spread, f"{r.gflops:8.1f}", pct, mem, vs, *extra, r.probe_cell(), note]


def sweep_table(rows: list[Row], also: str | None = None) -> str:
    """One line per (configuration, contender), a blank line between lengths; a row whose ratio is against
    another peer than the usual one (the usual one did not run there) names it in the note. ``also``: a
    second peer (e.g. "torch:flex") whose ratios get a column of their own."""
    peers = [r.peer_kernel for r in rows if r.peer_kernel]
    usual = statistics.mode(peers) if peers else ""
    body, last = [], None
    for r in rows:
        if last is not None and r.config.split()[0] != last:
            body.append([""] * (10 if also is None else 11))
        last = r.config.split()[0]
        same = [o for o in rows if o.config == r.config]
        if len(same) > 1 and len({(o.status, o.note) for o in same}) == 1 and r.status != "ok":
            if same[0] is r:  # every contender skipped for one reason: one line
                body.append([r.config, "(all)"] + [""] * (7 if also is None else 8) + [f"{r.status}: {r.note}"])
            continue
        cells = _row_cells(r, also)
        if r.status == "ok" and r.peer_kernel not in ("", usual, r.kernel):
            cells[-1] = (cells[-1] + "; " if cells[-1] else "") + f"vs {r.peer}"
        body.append(cells)
    header = ["config", "kernel", "median ms", "spread", "GFLOP/s", "%mm", "peak MiB",
              f"vs {label(usual, 'dense') if usual else 'peer'} [min-max]",
              *([] if also is None else [f"vs {label(also, 'dense')} [min-max]"]), "probe", "note"]
    return format_table(body, header)


LEGEND = [
    ("GFLOP/s over the visible (query, key) pairs: 4*B*H*visible*D forward, x3.5 forward+backward; %mm = share "
     "of the best matmul probe (approximate kernels do less work than that count: their rate can pass 100%)."),
    "ratio = peer time / this time, median over round-robin rounds [min-max]; > 1 = faster than the peer.",
    ("probe = median matmul GFLOP/s before the rounds; * a round ran below the gate, ! a round was kept although "
     "other processes took CPU."),
]


def flex_lines(flex_setups: dict) -> list[str]:
    lines = []
    for fs in flex_setups.values():
        if fs.error:
            lines.append(f"FlexAttention N={fs.n} {fs.mask}: failed: {fs.error}")
        elif fs.compile_first_call_s is not None:
            bm = "no block mask" if fs.block_mask_first_s is None else \
                f"create_block_mask {fs.block_mask_first_s * 1e3:.1f} ms first" + \
                ("" if fs.block_mask_steady_s is None else f", {fs.block_mask_steady_s * 1e3:.1f} ms steady")
            lines.append(f"FlexAttention N={fs.n} {fs.mask}: compile (first call) {fs.compile_first_call_s:.2f} s "
                         f"({fs.compile_kind}); {bm}")
    return lines


# --------------------------------------------------------------------------------------------------
# The plot


def _family(r: Row) -> str:
    """A contender's name across masks (torch sdpa's label says how it got the mask)."""
    return r.label.replace(" is_causal", "").replace("+bool mask", "")


def plot(rows: list[Row], path: Path, title: str) -> Path:
    """Log-log median time vs N: one panel per (mode, mask), one line per contender in it, so one line per
    (kernel, mask, mode). ImportError without matplotlib (``pip install "attnkit[viz]"``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed; leaves an interactive backend a user chose
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.status == "ok"]
    modes, masks = list(dict.fromkeys(r.mode for r in rows)), list(dict.fromkeys(r.mask for r in rows))
    labels = list(dict.fromkeys(_family(r) for r in ok))
    lengths = sorted({r.n for r in rows})
    colors = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
    fig, axes = plt.subplots(len(modes), len(masks), figsize=(3.2 * len(masks) + 1.8, 2.8 * len(modes) + 0.6),
                             squeeze=False)
    for (i, mode), (j, mask) in ((im, jm) for im in enumerate(modes) for jm in enumerate(masks)):
        ax = axes[i][j]
        for lab in labels:
            pts = sorted((r.n, r.median_ms) for r in ok if (r.mode, r.mask, _family(r)) == (mode, mask, lab))
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=colors[lab])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lengths, [str(n) for n in lengths], fontsize=7)
        ax.tick_params(axis="x", which="minor", labelbottom=False)
        ax.set_title(f"{mask} {mode}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("median ms" if j == 0 else "")
        ax.set_xlabel("N" if i == len(modes) - 1 else "")
    handles = [plt.Line2D([], [], color=colors[lab], marker="o", ms=3) for lab in labels]
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
