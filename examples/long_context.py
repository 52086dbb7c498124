"""128k tokens of exact attention on a CPU: causal attention at N = 131072 and a sliding-window GPT forward.

Exact causal attention over 131072 tokens (B=1, H=8, D=64, float32) would need a 131072 x 131072 weight
matrix per head for a kernel that builds one: 512 GiB. ``attnkit.attention(..., causal=True)`` with the
``tiled`` kernel (online softmax over 128 x 128 tiles, empty tiles above the diagonal skipped) keeps only
q, k, v, the output and one tile of scores per step: memory O(N). The queries go in slices so that a
progress line can report; with causal attention bottom-right aligned, the slice of queries [s, e) against
keys [0, e) is exactly those rows of the full result (that is what the bottom-right convention is for).
A few rows are then checked against a float64 reference computed directly from their definition.

The second part runs a 2-layer GPT with RoPE and a 512-token sliding window over 131072 tokens; ``auto``
sends its attention to ``tiled``, which visits only the tiles inside the window.

    python examples/long_context.py                 # ~2-3 minutes on 2 cores, peak RSS ~1.5 GiB
    python examples/long_context.py --n 16384       # a quick look
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

import attnkit
from attnkit import masks
from attnkit.bench.counting import attention_flops, visible_entries
from attnkit.bench.measure import call_peak, timed
from attnkit.bench.progress import Progress
from attnkit.functional.dispatch import select_kernel
from attnkit.models.gpt import GPT, AttentionConfig, GPTConfig

MIB = 1 << 20


def seconds_and_peak(call) -> tuple[float, float | None]:
    """Seconds one call takes, and the memory it needs above the RSS just before it, in MiB
    (``attnkit.bench.measure.call_peak``; None where the high-water mark cannot be reset)."""
    seconds = []
    peak = call_peak(lambda: seconds.append(timed(call)), warm=False)
    return seconds[0], peak["call_peak_kb"] / 1024 if peak["method"] == "VmHWM" else None


def reference_rows(q, k, v, rows: list[int]):
    """The exact causal output of the given query rows, in float64, from the definition softmax(q kᵀ/√D) v
    over the keys j <= row (one row at a time: (H, N) scores, not N x N)."""
    out = []
    scale = 1.0 / math.sqrt(q.shape[-1])
    for i in rows:
        s = torch.einsum("bhd,bhnd->bhn", q[:, :, i].double(), k[:, :, : i + 1].double()) * scale
        out.append(torch.einsum("bhn,bhnd->bhd", s.softmax(-1), v[:, :, : i + 1].double()))
    return torch.stack(out, dim=2)  # (B, H, len(rows), Dv)


def causal_attention(n: int, heads: int = 8, dim: int = 64, kernel: str = "tiled", slice_len: int = 8192,
                     seed: int = 0) -> dict:
    """Exact causal attention over n tokens, in query slices; returns time, memory and the checked error."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, n, dim, generator=g) for _ in range(3))
    out = torch.zeros_like(q)  # written now, so its pages count in the baseline and not as working memory
    slices = [(s, min(s + slice_len, n)) for s in range(0, n, slice_len)]

    def run():
        progress = Progress(n * n / 2, len(slices))  # work: visible (query, key) pairs, ~e²/2 - s²/2 a slice
        with torch.inference_mode():
            for s, e in slices:
                progress.begin(f"queries {s}:{e} against keys 0:{e}")
                out[:, :, s:e] = attnkit.attention(q[:, :, s:e], k[:, :, :e], v[:, :, :e], causal=True,
                                                   kernel=kernel)
                progress.end((e * e - s * s) / 2)
        progress.close()

    seconds, peak = seconds_and_peak(run)
    rows = sorted({0, 1, n // 3, n // 2, n - 2, n - 1})
    error = (out[:, :, rows].double() - reference_rows(q, k, v, rows)).abs().max().item()
    visible = visible_entries(masks.causal(), n)
    return dict(n=n, seconds=seconds, peak_mib=peak, inputs_mib=4 * q.numel() * 4 / MIB, rows=rows, error=error,
                gflops=attention_flops(visible, "fwd", 1, heads, dim) / seconds / 1e9,
                dense_gib=heads * n * n * 4 / 2**30)


def window_gpt(n: int, window: int = 512, layers: int = 2, dim: int = 256, heads: int = 8, seed: int = 0) -> dict:
    """A sliding-window GPT (RoPE, bytes vocabulary) forward over n tokens."""
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=256, max_seq_len=n, dim=dim, num_layers=layers, positions="rope",
                       attention=AttentionConfig(num_heads=heads, window=window))
    model = GPT(config).eval()
    ids = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))
    result = {}

    def forward():
        with torch.inference_mode():
            result["logits"] = model(ids).logits

    seconds, peak = seconds_and_peak(forward)
    logits = result["logits"]
    return dict(n=n, seconds=seconds, peak_mib=peak, finite=bool(torch.isfinite(logits).all()),
                shape=tuple(logits.shape), tokens_per_s=n / seconds,
                kernel=select_kernel(_request_like(n, heads, dim // heads, window), "auto").name)


def _request_like(n: int, heads: int, head_dim: int, window: int):
    """The attention request one of the GPT's layers makes (an expanded scalar: nothing allocated)."""
    q = torch.zeros(1, 1, 1, 1).expand(1, heads, n, head_dim)
    return attnkit.AttentionRequest.build(q, q, q, causal=True, window=(window, 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=131072, help="sequence length (default 131072)")
    parser.add_argument("--kernel", default="tiled", help="kernel for the causal part (default tiled)")
    parser.add_argument("--skip-gpt", action="store_true", help="only the causal attention part")
    args = parser.parse_args(argv)
    print(f"attnkit {attnkit.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    print(f"exact causal attention, B=1 H=8 N={args.n} D=64 float32, kernel={args.kernel!r}")
    r = causal_attention(args.n, kernel=args.kernel)
    peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f} MiB"
    print(f"  {r['seconds']:.1f} s ({r['gflops']:.0f} GFLOP/s over the visible half); working memory above the "
          f"inputs and output: {peak} (q, k, v and out: {r['inputs_mib']:.0f} MiB; a dense weight matrix would "
          f"be {r['dense_gib']:.0f} GiB)")
    print(f"  rows {r['rows']} against a float64 reference: max abs error {r['error']:.2e}")
    if r["error"] > 1e-4:
        print("  error above 1e-4: something is wrong", file=sys.stderr)
        return 1
    if not args.skip_gpt:
        print(f"sliding-window GPT forward (2 layers, dim 256, 8 heads, RoPE; each token sees itself and the 512 "
              f"before it), N={args.n}")
        g = window_gpt(args.n)
        peak = "n/a" if g["peak_mib"] is None else f"{g['peak_mib']:.0f} MiB"
        print(f"  {g['seconds']:.1f} s ({g['tokens_per_s']:.0f} tokens/s), attention kernel {g['kernel']!r}; "
              f"working memory {peak}; logits {g['shape']} all finite: {g['finite']}")
        if not g["finite"]:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
