"""What ``kernel="auto"`` picks for inference, and what SDPA and the tiled kernel take there.

For each request shape: the kernel ``auto`` chooses, then SDPA, ``tiled`` and ``auto`` timed round-robin
in one process under ``torch.no_grad`` (each timed unit is enough back-to-back calls to take about 50 ms;
rounds gated on the matmul probe; the order rotates each round), and the speed-ups over SDPA as medians
of the per-round ratios [min-max]. The rule being checked: ``auto`` should pick ``tiled`` exactly where
``tiled`` (its native forward) is the faster of the two.

    .venv/bin/python benchmarks/bench_auto.py [--rounds 5]
"""

from __future__ import annotations

import argparse

import torch

import attnkit
from attnkit import AttentionRequest, masks
from attnkit.bench.context import machine
from attnkit.bench.measure import Probe, interleaved, warm_up
from attnkit.bench.report import context_line
from attnkit.functional import dispatch
from attnkit.functional.kernels import native
from harness import git, log  # this folder

UNIT_S = 0.05  # seconds of back-to-back calls per timed unit

# (label, B, H, Hkv, Nq, Nk, D, options); "dtype" in options: the inputs' dtype (default float32)
CASES = [
    ("64 rows", 1, 8, 8, 64, 64, 64, {}),
    ("128 rows", 1, 8, 8, 128, 128, 64, {}),
    ("128 rows causal", 1, 8, 8, 128, 128, 64, {"causal": True}),
    ("256 rows causal", 1, 8, 8, 256, 256, 64, {"causal": True}),
    ("512 rows", 1, 8, 8, 512, 512, 64, {}),
    ("1024 rows causal", 1, 8, 8, 1024, 1024, 64, {"causal": True}),
    ("GQA 32/8 heads, causal", 1, 32, 8, 512, 512, 64, {"causal": True}),
    ("head size 128, causal", 1, 8, 8, 512, 512, 128, {"causal": True}),
    ("32 sentences of 40 tokens, padding", 32, 12, 12, 40, 40, 32, {"mask": "padding"}),
    ("dense bool mask", 1, 8, 8, 1024, 1024, 64, {"mask": "bool"}),
    ("32 rows against 2048 keys", 1, 8, 8, 32, 2048, 64, {"causal": True}),
    ("64 rows against 2048 keys", 1, 8, 8, 64, 2048, 64, {"causal": True}),
    ("16 rows against 1024 keys", 1, 12, 12, 16, 1024, 64, {"causal": True}),
    ("decoding: 1 row against 1024 keys", 1, 12, 12, 1, 1024, 64, {"causal": True}),
    ("decoding, batch 8", 8, 12, 12, 1, 512, 64, {"causal": True}),
    ("bfloat16: 128 rows", 1, 8, 8, 128, 128, 64, {"dtype": torch.bfloat16}),
    ("bfloat16: 1024 rows causal", 1, 8, 8, 1024, 1024, 64, {"causal": True, "dtype": torch.bfloat16}),
    ("bfloat16: 32 sentences, padding", 32, 12, 12, 40, 40, 32, {"mask": "padding", "dtype": torch.bfloat16}),
    ("float16: 1024 rows causal", 1, 8, 8, 1024, 1024, 64, {"causal": True, "dtype": torch.float16}),
    ("bfloat16 decoding", 1, 12, 12, 1, 1024, 64, {"causal": True, "dtype": torch.bfloat16}),
]


def _options(B: int, Nq: int, Nk: int, options: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    options = {key: value for key, value in options.items() if key != "dtype"}
    if options.get("mask") == "padding":
        return {"mask": masks.padding(torch.randint(Nk // 2, Nk + 1, (B,), generator=g))}
    if options.get("mask") == "bool":
        return {"mask": torch.rand(Nq, Nk, generator=g) < 0.5}
    return options


def _unit(call, n: int):
    def unit():
        for _ in range(n):
            call()
    return unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6,
                        help="timed rounds per case (default 6: each of the 3 contenders runs first as often)")
    args = parser.parse_args()
    print(f"{context_line(machine())}, commit {git('rev-parse', '--short', 'HEAD')}; forward under no_grad, "
          f"float32 unless named; {args.rounds} round-robin rounds")
    print(f"tiled's native forward: {native.status() or 'in use'}")
    probe = Probe(0.25, 60.0, 300.0)
    header = f"{'case':<36} {'B H/Hkv Nq Nk D':<22} {'auto':<6} {'sdpa ms':>9} {'tiled ms':>9}  " \
             f"{'tiled vs sdpa':<20} {'auto vs sdpa':<20} probe"
    print(header)
    print("-" * len(header))
    torch.manual_seed(0)
    with torch.no_grad():
        for label, B, H, Hkv, Nq, Nk, D, options in CASES:
            dtype = options.get("dtype", torch.float32)
            q, k, v = (torch.randn(B, h, n, D).to(dtype) for h, n in ((H, Nq), (Hkv, Nk), (Hkv, Nk)))
            opts = _options(B, Nq, Nk, options)
            chosen = dispatch.select_kernel(AttentionRequest.build(q, k, v, **opts), "auto").name
            calls = {name: (lambda name=name: attnkit.attention(q, k, v, kernel=name, **opts))
                     for name in ("sdpa", "tiled", "auto")}
            slowest = max(min(warm_up(call, 5)) for call in calls.values())
            n = max(1, round(UNIT_S / slowest))  # the same number of calls for each, so unit times compare
            t = interleaved(probe, {name: _unit(call, n) for name, call in calls.items()}, args.rounds, log)
            tiled = t["tiled"].ratio_to(t["sdpa"])
            auto = t["auto"].ratio_to(t["sdpa"])
            ms = {name: t[name].median_ms / n for name in t}
            shape = f"{B} {H}/{Hkv} {Nq} {Nk} {D}"
            print(f"{label:<36} {shape:<22} {chosen:<6} {ms['sdpa']:>9.3f} {ms['tiled']:>9.3f}  "
                  f"{f'{tiled[0]:.2f}x [{tiled[1]:.2f}-{tiled[2]:.2f}]':<20} "
                  f"{f'{auto[0]:.2f}x [{auto[1]:.2f}-{auto[2]:.2f}]':<20} {t['sdpa'].probe_cell()}")
    print(f"matmul probe: best {probe.best:.0f} GFLOP/s; x > 1: faster than SDPA; a timed unit is "
          f"about {UNIT_S * 1e3:.0f} ms of back-to-back calls")


if __name__ == "__main__":
    main()
