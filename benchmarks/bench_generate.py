"""Greedy decoding throughput: attnkit's GPT against transformers' GPT2LMHeadModel.generate, same weights
(a GPT-2-small config with seeded random weights, saved by transformers and loaded by attnkit.hub), prompt
of 32 tokens, 128 new tokens, in one process, interleaved round-robin (the order rotating, disturbed rounds
redone), each round gated on the matmul probe (BENCHMARKING.md). Both must produce the same tokens.

    .venv/bin/python benchmarks/bench_generate.py [--rounds 3] [--batch-sizes 1 8] [--new-tokens 128]
    .venv/bin/python benchmarks/bench_generate.py --profile       # where attnkit's decoding time goes

The limit printed beside each ratio: each decoding step must read every weight once (~0.5 GB in float32),
so memory bandwidth bounds a step from below; ``--bandwidth`` is the machine's (GB/s, default 50).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import attnkit
from attnkit import hub
from attnkit.bench.measure import Probe, interleaved
from harness import git, log  # this folder

PROMPT = 32


def models(directory: Path):
    """transformers' GPT-2 small with seeded random weights, and the same weights in attnkit's GPT."""
    import transformers

    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(attn_implementation="sdpa")).eval()
    reference.save_pretrained(directory)
    ours, _ = hub.load(directory)
    return reference, ours.eval()


def profile(ours, prompt: torch.Tensor, new_tokens: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ours.generate(prompt, 4)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        ours.generate(prompt, new_tokens)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--bandwidth", type=float, default=50.0, help="memory bandwidth in GB/s (the limit)")
    parser.add_argument("--profile", action="store_true", help="profile attnkit's decoding at batch 1 and stop")
    args = parser.parse_args()

    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        reference, ours = models(Path(tmp))
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    floor_ms = weight_bytes / (args.bandwidth * 1e9) * 1e3
    commit = git("rev-parse", "--short", "HEAD")
    print(f"attnkit {attnkit.__version__} ({commit}), torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {torch.get_num_threads()} threads")
    print(f"GPT-2 small config, random weights (seed 0), float32, greedy; prompt {PROMPT}, {args.new_tokens} new "
          f"tokens; {args.rounds} interleaved rounds; weights {weight_bytes / 1e9:.2f} GB, so a step reads "
          f">= {floor_ms:.0f} ms at {args.bandwidth:.0f} GB/s")
    g = torch.Generator().manual_seed(1)
    if args.profile:
        profile(ours, torch.randint(0, 50257, (1, PROMPT), generator=g), args.new_tokens)
        return
    probe = Probe(0.5, 60.0, 600.0)
    for batch in args.batch_sizes:
        prompt = torch.randint(0, 50257, (batch, PROMPT), generator=g)
        new = args.new_tokens

        def run_ours():
            return ours.generate(prompt, new)

        def run_reference():
            with torch.no_grad():
                return reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                          min_new_tokens=new, do_sample=False, pad_token_id=50256)

        same = torch.equal(run_ours(), run_reference())  # also the warm-up
        t = interleaved(probe, {"ours": run_ours, "reference": run_reference}, args.rounds, log)
        speedup, lo, hi = t["ours"].ratio_to(t["reference"])
        tokens, ours_s, ref_s = batch * new, t["ours"].median_ms / 1e3, t["reference"].median_ms / 1e3
        print(f"batch {batch}: attnkit {tokens / ours_s:.1f} tokens/s ({ours_s / new * 1e3:.1f} ms/step), "
              f"transformers {tokens / ref_s:.1f} tokens/s ({ref_s / new * 1e3:.1f} ms/step), "
              f"speed-up {speedup:.2f}x (min {lo:.2f}, max {hi:.2f}); "
              f"limit ~{ref_s / new * 1e3 / floor_ms:.1f}x (a step >= {floor_ms:.0f} ms); same tokens: {same}; "
              f"probe {t['ours'].probe_cell()} GFLOP/s")


if __name__ == "__main__":
    main()
