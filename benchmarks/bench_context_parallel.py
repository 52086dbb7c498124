"""Context parallelism (attnkit.distributed): what a hop costs here, and what that means at 8-64 GPUs.

1. Process groups on this machine (gloo, one thread per process): ring (zigzag and contiguous layouts) and Ulysses,
   forward, causal / sliding-window / packed-document masks, P = 2, 3, 4. Per hop (``attnkit.distributed.profile``):
   compute seconds, seconds waited for the transfer after the compute it overlapped, bytes moved. Derived: the overlap
   achieved (1 - waited / the same transfer alone, timed in the same group) and the causal load imbalance (the
   slowest rank's compute over the mean rank's) of zigzag against contiguous.
2. Per-hop compute at N = 16k..128k (B=1, H=8, D=64, float32, one thread): a zigzag causal ring hop is two full
   (chunk x chunk) blocks through the local kernel; measured where a block takes seconds, predicted from the
   measured rate (marked *) where it would take minutes. Bytes per hop: the k and v shards (ring), or each
   all-to-all's share (Ulysses).
3. A model of efficiency at 8-64 processes from those measurements — the per-hop work is counted in non-empty
   128 x 128 tiles of the same schedule the code uses, the overlap is the measured one — and the stated link and
   compute rates (ASSUMPTIONS, printed): a table and a PNG.

    .venv/bin/python benchmarks/bench_context_parallel.py [--quick] [--plot context_parallel.png]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attnkit
from attnkit import distributed as cp
from attnkit import masks
from attnkit.bench.context import machine
from attnkit.bench.report import context_line
from attnkit.distributed.layout import Layout
from attnkit.functional.masks import EMPTY
from harness import git, log  # this folder

B, H, D = 1, 8, 64
ASSUMPTIONS = {
    "attention rate per GPU": 400e12,  # FLOP/s the local kernel reaches (4·N²·D per head, forward)
    "NVLink per GPU": 450e9,  # B/s each way, between the GPUs of one node
    "InfiniBand per GPU": 50e9,  # B/s each way, between nodes
    "GPUs per node": 8,
    "latency per transfer": 20e-6,  # s, per ring hop or all-to-all
    "bytes per element": 2,  # bfloat16 q, k, v, out
    "backward / forward compute": 2.5,  # FlashAttention-2's backward; the ring step is forward + backward
    "backward / forward bytes": 2.0,  # ring: k/v again and dk/dv home; Ulysses: four all-to-alls again
    "tile": 128,  # the granularity at which empty work is skipped
}
WINDOW, DOC = 4096, 8192  # the model's sliding window (left, causal) and mean document length


def _masks(n: int, window: int, doc: int) -> dict[str, masks.Mask]:
    """The three workloads on a sequence of n: causal, a causal sliding window, causal packed documents (lengths
    drawn around ``doc``, seeded)."""
    gen = torch.Generator().manual_seed(0)
    lengths = (torch.rand(n // doc * 2 + 2, generator=gen) * 1.5 + 0.25) * doc
    ids = torch.repeat_interleave(torch.arange(lengths.numel()), lengths.long().clamp(min=1))[:n]
    if ids.numel() < n:
        ids = torch.cat([ids, torch.full((n - ids.numel(),), int(ids[-1]) + 1)])
    return {"causal": masks.causal(), "window": masks.sliding_window(window, 0),
            "document": masks.document(ids) & masks.causal()}


# --------------------------------------------------------------------------------------------------
# 1. process groups


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_worker(rank: int, world: int, port: int, n: int, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(minutes=10))
    gen = torch.Generator().manual_seed(0)
    whole = [torch.randn(B, H, n, D, generator=gen) for _ in range(3)]
    workloads = _masks(n, window=n // 16, doc=n // 8)
    runs = [("ring", "zigzag", "causal"), ("ring", "contiguous", "causal"), ("ring", "contiguous", "window"),
            ("ring", "contiguous", "document"), ("ulysses", "zigzag", "causal")]
    out = []
    for strategy, layout, workload in runs:
        if strategy == "ulysses" and H % world:
            continue  # H=8 heads do not split over 3 processes
        q, k, v = (cp.shard(t, layout=layout) for t in whole)
        alone = _transfer_alone(k, v, world, rank)
        dist.barrier()
        began = time.perf_counter()
        with cp.profile() as hops:
            cp.attention(q, k, v, strategy=strategy, layout=layout, mask=workloads[workload])
        wall = time.perf_counter() - began
        out.append({"strategy": strategy, "layout": layout, "mask": workload, "wall": wall, "alone": alone,
                    "hops": [[h.hop, h.blocks, h.compute_cpu_s, h.wait_s, h.bytes_sent, h.bytes_received, h.compute_s]
                             for h in hops]})
    with open(os.path.join(outdir, f"{rank}.json"), "w") as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


def _transfer_alone(k: torch.Tensor, v: torch.Tensor, world: int, rank: int) -> float:
    """Seconds one ring hop's k/v exchange takes with nothing else running (median of 3)."""
    times = []
    for _ in range(3):
        recv = [torch.empty_like(k), torch.empty_like(v)]
        dst, src = (rank + 1) % world, (rank - 1) % world
        dist.barrier()
        began = time.perf_counter()
        ops = [dist.P2POp(dist.isend, t, dst) for t in (k, v)] + [dist.P2POp(dist.irecv, t, src) for t in recv]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure_groups(n: int, worlds: list[int]) -> dict[int, list[list[dict]]]:
    """{P: [rank][run] records} from one process group per P."""
    results = {}
    for world in worlds:
        n_p = n - n % (2 * world)  # zigzag cuts 2P equal chunks
        log(f"process group: P={world}, N={n_p}")
        with tempfile.TemporaryDirectory() as outdir:
            mp.start_processes(_group_worker, args=(world, _free_port(), n_p, outdir), nprocs=world,
                               start_method="spawn")
            results[world] = [json.load(open(os.path.join(outdir, f"{r}.json"))) for r in range(world)]
    return results


def report_groups(n: int, results: dict[int, list[list[dict]]]) -> float:
    """Print section 1; returns the median overlap achieved by the ring (the model's)."""
    print(f"\n## 1. Measured in process groups: N = {n} (less N mod 2P), B={B}, H={H}, D={D}, float32, gloo, "
          "1 thread per process\n")
    print("| P | strategy | layout | mask | wall s | hops computed (rank 0..P-1) | compute CPU s per rank | "
          "imbalance max/mean | per-hop compute CPU s (mean) | MB sent per transfer | overlap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    overlaps = []
    for world, ranks in results.items():
        for i, run in enumerate(ranks[0]):
            rows = [r[i] for r in ranks]
            compute = [sum(h[2] for h in r["hops"]) for r in rows]
            computed = [sum(1 for h in r["hops"] if h[1] > 0) for r in rows]
            hop_times = [h[2] for r in rows for h in r["hops"] if h[1] > 0]
            sent = [h[4] for r in rows for h in r["hops"] if h[4] > 0]
            waited = sum(h[3] for r in rows for h in r["hops"] if h[5] > 0)
            alone = sum(r["alone"] for r in rows for h in r["hops"] if h[5] > 0)
            overlap = "—"
            if run["strategy"] == "ring" and alone > 0:
                phi = min(1.0, max(0.0, 1 - waited / alone))
                overlaps.append(phi)
                overlap = f"{phi:.2f}"
            ring = run["strategy"] == "ring"
            imbalance = f"{max(compute) / statistics.mean(compute):.2f}" if ring else "—"
            per_hop = f"{statistics.mean(hop_times):.3f}" if hop_times and ring else "—"
            mb = statistics.mean(sent) / 1e6 if sent else 0.0
            wall = max(r["wall"] for r in rows)
            seconds = [round(c, 2) for c in compute]
            print(f"| {world} | {run['strategy']} | {run['layout']} | {run['mask']} | {wall:.2f} | {computed} | "
                  f"{seconds if ring else '—'} | {imbalance} | {per_hop} | {mb:.1f} | {overlap} |")
    phi = statistics.median(overlaps) if overlaps else 0.0
    print(f"\nOverlap = 1 - (time waited for a hop's k/v after computing the previous hop) / (the same transfer "
          f"alone); median over ring runs: {phi:.2f}. Ulysses' all-to-alls are not overlapped (they are on the path). "
          "Two cores run all P processes, so compute and gloo's copies contend for them; compute is counted in "
          "each process's CPU seconds (wall seconds would include the time-slicing).")
    return phi


# --------------------------------------------------------------------------------------------------
# 2. per-hop compute and bytes at N = 16k..128k


def _block_seconds(c: int) -> float:
    """One full (c x c) block through the local kernel with its lse, B=1, H=8, D=64 (median of 2 after a warm-up)."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, H, c, D, generator=gen) for _ in range(3))
    attnkit.attention(q[:, :, :256], k[:, :, :256], v[:, :, :256], return_lse=True)
    times = []
    for _ in range(2 if c <= 8192 else 1):
        began = time.perf_counter()
        attnkit.attention(q, k, v, return_lse=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def report_hops(sizes: list[int], worlds: list[int], measure_up_to: int) -> float:
    """Print section 2; returns the measured CPU rate (FLOP/s, one thread) used for the predictions."""
    torch.set_num_threads(1)
    print(f"\n## 2. Per-hop compute and bytes: B={B}, H={H}, D={D}, float32, one thread\n")
    measured: dict[int, float] = {}
    for n in sizes:
        for world in worlds:
            c = n // (2 * world)
            if c <= measure_up_to and c not in measured:
                log(f"block {c} x {c}")
                measured[c] = _block_seconds(c)
    rate = statistics.median(4 * c * c * D * H / s for c, s in measured.items())
    print("| N | P | zigzag chunk | ring hop compute s (2 full blocks) | ring MB per hop (k+v) | "
          "Ulysses MB per all-to-all per rank |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        for world in worlds:
            c = n // (2 * world)
            hop = 2 * measured[c] if c in measured else 2 * 4 * c * c * D * H / rate
            star = "" if c in measured else "*"
            kv = 2 * B * H * (n // world) * D * 4
            a2a = B * H * (n // world) * D * 4 * (world - 1) / world
            print(f"| {n} | {world} | {c} | {hop:.2f}{star} | {kv / 1e6:.1f} | {a2a / 1e6:.1f} |")
    print(f"\n* predicted from the measured rate, {rate / 1e9:.1f} GFLOP/s per thread (4·c²·D·H flops per full "
          "block, median over the measured blocks).")
    return rate


# --------------------------------------------------------------------------------------------------
# 3. model


def tile_counts(mask: masks.Mask, n: int, layout: Layout) -> torch.Tensor:
    """(n_chunks, n_chunks) non-empty tiles of each (query chunk, key chunk) pair."""
    tile = ASSUMPTIONS["tile"]
    nonempty = (mask.block_layout(n, n, tile) != EMPTY).flatten(0, 1).any(dim=0)  # (T, T)
    per = n // tile // layout.n_chunks
    return nonempty.view(layout.n_chunks, per, layout.n_chunks, per).sum(dim=(1, 3))


def _link(a: int, b: int) -> float:
    node = ASSUMPTIONS["GPUs per node"]
    return ASSUMPTIONS["NVLink per GPU"] if a // node == b // node else ASSUMPTIONS["InfiniBand per GPU"]


def model_ring(counts: torch.Tensor, layout: Layout, n: int, heads: int, kv_heads: int, phi: float) -> float:
    """Seconds of one forward + backward step: each rank sums its hops; a hop costs max(compute, transfer) plus the
    part of the shorter that is not overlapped; the slowest rank sets the step."""
    a = ASSUMPTIONS
    P = layout.world
    tile_flops = 4 * a["tile"] ** 2 * D * heads * (1 + a["backward / forward compute"]) / a["attention rate per GPU"]
    kv_bytes = 2 * kv_heads * (n // P) * D * a["bytes per element"] * (1 + a["backward / forward bytes"])
    slowest = 0.0
    for r in range(P):
        total = 0.0
        for t in range(P):
            src = (r - t) % P
            tiles = sum(int(counts[qc, kc]) for qc in layout.chunks(r) for kc in layout.chunks(src))
            if tiles == 0:
                continue
            compute = tiles * tile_flops
            transfer = 0.0 if t == 0 else kv_bytes / _link(r, src) + a["latency per transfer"]
            total += max(compute, transfer) + (1 - phi) * min(compute, transfer)
        slowest = max(slowest, total)
    return slowest


def model_ulysses(counts: torch.Tensor, n: int, P: int, heads: int, kv_heads: int) -> float | None:
    """Seconds of one forward + backward step: every rank computes all tiles for heads / P heads, and four
    all-to-alls (q, k, v, out; the same again backward) wait for the slowest link. None when P does not divide the
    heads."""
    a = ASSUMPTIONS
    if heads % P:
        return None
    kv_heads = kv_heads if kv_heads % P == 0 else heads
    tiles = int(counts.sum())
    compute = tiles * 4 * a["tile"] ** 2 * D * (heads / P) * (1 + a["backward / forward compute"])
    shard = (n // P) * D * a["bytes per element"] * (2 * heads + 2 * kv_heads) * (1 + a["backward / forward bytes"])
    node = int(a["GPUs per node"])
    remote = max(0, P - node) / (P - 1) if P > 1 else 0.0
    comm = max(shard * (1 - remote) * (P - 1) / P / a["NVLink per GPU"],
               shard * remote * (P - 1) / P / a["InfiniBand per GPU"]) + 8 * a["latency per transfer"]
    return compute / a["attention rate per GPU"] + comm


def run_model(sizes: list[int], worlds: list[int], phi: float) -> list[dict]:
    """Efficiency = (all tiles' compute / P) / modelled step, per (N, mask, strategy, heads, P)."""
    a = ASSUMPTIONS
    rows = []
    for n in sizes:
        workloads = _masks(n, WINDOW, DOC)
        for mask_name, mask in workloads.items():
            log(f"model: N={n} {mask_name}")
            for heads, kv_heads in ((8, 8), (64, 8)):
                per_p: dict[str, dict[int, float | None]] = {"ring zigzag": {}, "ring contiguous": {}, "ulysses": {}}
                for P in worlds:
                    zig, con = Layout("zigzag", P), Layout("contiguous", P)
                    counts_z, counts_c = tile_counts(mask, n, zig), tile_counts(mask, n, con)
                    ideal = int(counts_z.sum()) * 4 * a["tile"] ** 2 * D * heads * (
                        1 + a["backward / forward compute"]) / a["attention rate per GPU"] / P
                    per_p["ring zigzag"][P] = ideal / model_ring(counts_z, zig, n, heads, kv_heads, phi)
                    per_p["ring contiguous"][P] = ideal / model_ring(counts_c, con, n, heads, kv_heads, phi)
                    u = model_ulysses(counts_c, n, P, heads, kv_heads)
                    per_p["ulysses"][P] = None if u is None else ideal / u
                for strategy, effs in per_p.items():
                    rows.append({"N": n, "mask": mask_name, "heads": f"H={heads} Hkv={kv_heads}",
                                 "strategy": strategy, "eff": effs})
    return rows


def report_model(rows: list[dict], worlds: list[int], phi: float) -> None:
    a = ASSUMPTIONS
    print("\n## 3. Model: efficiency of one forward + backward step at 8-64 GPUs\n")
    print("Assumptions: " + "; ".join(f"{k} = {_fmt(v)}" for k, v in a.items())
          + f"; overlap of a ring hop's transfer with its compute = {phi:.2f} (measured in section 1); window = "
          f"{WINDOW} (causal), documents ~{DOC} tokens (causal inside); D = {D}. Efficiency = (the visible tiles' "
          "compute split evenly, no communication) / (the modelled step): 1.0 is perfect. Ring: each hop max(compute, "
          "transfer) + (1 - overlap) · min, summed per rank, the slowest rank sets the step; hops whose tiles are all "
          "empty cost nothing. Ulysses: compute split by heads (needs H divisible by P), then 4 all-to-alls "
          "forward and 4 backward, not overlapped, bounded by the slowest link.\n")
    print("| N | mask | heads | strategy | " + " | ".join(f"P={p}" for p in worlds) + " |")
    print("|---|---|---|---|" + "---|" * len(worlds))
    for r in rows:
        cells = ["—" if r["eff"][p] is None else f"{r['eff'][p]:.2f}" for p in worlds]
        print(f"| {r['N']} | {r['mask']} | {r['heads']} | {r['strategy']} | " + " | ".join(cells) + " |")


def _fmt(v: float) -> str:
    if v >= 1e9:
        return f"{v / 1e12:g} T/s" if v >= 1e12 else f"{v / 1e9:g} GB/s"
    return f"{v * 1e6:g} us" if v < 1e-3 else f"{v:g}"


def plot(rows: list[dict], worlds: list[int], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["N"] for r in rows})
    mask_names = list(dict.fromkeys(r["mask"] for r in rows))
    fig, axes = plt.subplots(len(sizes), len(mask_names), figsize=(4 * len(mask_names), 3.2 * len(sizes)),
                             squeeze=False, sharey=True)
    for i, n in enumerate(sizes):
        for j, mask_name in enumerate(mask_names):
            ax = axes[i][j]
            for r in rows:
                if r["N"] != n or r["mask"] != mask_name:
                    continue
                ps = [p for p in worlds if r["eff"][p] is not None]
                style = "-" if "64" in r["heads"] else ":"
                ax.plot(ps, [r["eff"][p] for p in ps], style, marker="o", label=f"{r['strategy']}, {r['heads']}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(worlds, [str(p) for p in worlds])
            ax.set_ylim(0, 1.05)
            ax.set_title(f"N={n // 1024}k, {mask_name}")
            ax.set_xlabel("GPUs")
            if j == 0:
                ax.set_ylabel("efficiency")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    log(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a check that everything runs (~1 min)")
    parser.add_argument("--plot", default="context_parallel.png", help="where to write the PNG")
    args = parser.parse_args()
    group_n = 4096 if args.quick else 16384
    hop_sizes = [4096, 8192] if args.quick else [16384, 32768, 65536, 131072]
    measure_up_to = 1024 if args.quick else 16384
    model_sizes = [131072] if args.quick else [131072, 1048576]
    print("# Context parallelism: attnkit.distributed\n")
    print(context_line(machine()) + f"; commit {git('rev-parse', '--short', 'HEAD')}")
    phi = report_groups(group_n, measure_groups(group_n, [2, 3, 4]))
    report_hops(hop_sizes, [2, 3, 4], measure_up_to)
    worlds = [8, 16, 32, 64]
    rows = run_model(model_sizes, worlds, phi)
    report_model(rows, worlds, phi)
    plot(rows, worlds, args.plot)
    print(f"\nPlot: {args.plot}")


if __name__ == "__main__":
    main()
