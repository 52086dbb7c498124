"""Masks written as one function: attnkit's ``masks.from_function`` against FlexAttention's
``create_block_mask`` on the same ``mask_mod``, and what a function mask costs the tiled kernel.

1. Set-up: the tile states of a fresh mask (``from_function(fn).block_layout(N)``: every entry evaluated
   once, tile by tile) against ``create_block_mask(fn, None, None, N, N, device="cpu")`` (FlexAttention's
   own 128x128 block mask), timed round-robin, each round gated on the matmul probe.
2. Forward under ``kernel="tiled"`` with the function mask against the equivalent built-in mask (whose
   tile states come from its parameters and whose tiles are cached), and SDPA given the dense bool mask.

    .venv/bin/python benchmarks/bench_mask_functions.py [--n 16384] [--rounds 5]
"""

from __future__ import annotations

import argparse

import torch
from torch.nn.attention.flex_attention import create_block_mask

import attnkit
from attnkit import masks
from attnkit.bench.context import machine
from attnkit.bench.measure import Probe, Timed, interleaved, warm_up
from attnkit.bench.report import context_line
from harness import git, log  # this folder

WINDOW = 512


def functions(n: int) -> dict:
    """name: (mask_mod, the equivalent built-in mask)."""
    doc = torch.arange(n) * 4 // n  # 4 packed documents of equal length

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < WINDOW)

    def document_causal(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    return {"causal": (causal, masks.causal()),
            "window 512": (window, masks.sliding_window(WINDOW - 1)),
            "4 documents, causal": (document_causal, masks.document(doc) & masks.causal())}


def cell(t: Timed) -> str:
    """A timing as "median [min-max]" in ms."""
    return f"{t.median_ms:.0f} [{t.min_ms:.0f}-{t.max_ms:.0f}]"


def ratio_cell(r: tuple[float, float, float] | None, width: int) -> str:
    """A ``Timed.ratio_to`` as "median [min-max]", the median right-aligned in ``width``."""
    return "n/a".rjust(width) if r is None else f"{r[0]:>{width}.2f} [{r[1]:.2f}-{r[2]:.2f}]"


def setup_times(probe: Probe, n: int, rounds: int) -> None:
    print(f"\nSet-up of a fresh mask at N = {n} (ms, median [min-max] of {rounds} rounds; ratio = flex / attnkit)")
    print(f"{'mask_mod':<22} {'from_function':>20} {'create_block_mask':>20} {'ratio':>18}")
    for name, (fn, _) in functions(n).items():
        calls = {"attnkit": lambda fn=fn: masks.from_function(fn).block_layout(n, n, 128),
                 "flex": lambda fn=fn: create_block_mask(fn, None, None, n, n, device="cpu")}
        for call in calls.values():
            warm_up(call, 2)
        t = interleaved(probe, calls, rounds, log)
        print(f"{name:<22} {cell(t['attnkit']):>20} {cell(t['flex']):>20} "
              f"{ratio_cell(t['attnkit'].ratio_to(t['flex']), 8)}", flush=True)


def forward_times(probe: Probe, n: int, rounds: int) -> None:
    print(f"\nForward at N = {n}, B=1 H=8 D=64 float32, no_grad (ms, median [min-max]; ratio = other / function mask)")
    print(f"{'mask':<22} {'tiled, function':>18} {'tiled, built-in':>18} {'sdpa, bool mask':>18} "
          f"{'built-in/function':>18} {'sdpa/function':>16}")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 64, generator=g) for _ in range(3))
    for name, (fn, builtin) in functions(n).items():
        fmask = masks.from_function(fn)
        fmask.block_layout(n, n, 128)  # states once per length, as in a model's repeated calls
        dense = builtin.materialize(n, n)
        calls = {"function": lambda m=fmask: attnkit.attention(q, k, v, mask=m, kernel="tiled"),
                 "builtin": lambda m=builtin: attnkit.attention(q, k, v, mask=m, kernel="tiled"),
                 "sdpa": lambda m=dense: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m)}
        with torch.no_grad():
            for call in calls.values():
                warm_up(call, 2)
            t = interleaved(probe, calls, rounds, log)
        cells = [cell(t[c]) for c in calls]
        print(f"{name:<22} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18} "
              f"{ratio_cell(t['function'].ratio_to(t['builtin']), 9)} "
              f"{ratio_cell(t['function'].ratio_to(t['sdpa']), 7)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16384, help="sequence length (default 16384)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per row (default 5)")
    parser.add_argument("--no-forward", action="store_true", help="only the set-up times")
    args = parser.parse_args()
    print(f"{context_line(machine())}, commit {git('rev-parse', '--short', 'HEAD')}")
    probe = Probe(0.25, 60.0, 300.0)
    setup_times(probe, args.n, args.rounds)
    if not args.no_forward:
        forward_times(probe, args.n, args.rounds)


if __name__ == "__main__":
    main()
