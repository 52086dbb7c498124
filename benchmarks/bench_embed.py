"""Sentence-embedding throughput: attnkit.embed against sentence-transformers' encode, same weights (the
bundled all-MiniLM-L6-v2), same 2000 deterministic sentences of 5-60 words, in one process, interleaved
round-robin (``attnkit.bench.measure.round_robin``: the order rotates from round to round, disturbed rounds
are redone), each round gated on the matmul probe (BENCHMARKING.md).

    .venv/bin/python benchmarks/bench_embed.py [--rounds 3] [--sentences 2000] [--batch-sizes 32 128]
"""

from __future__ import annotations

import argparse
import random

import torch

import attnkit
from attnkit import hub
from attnkit.bench.measure import Probe, interleaved
from harness import git, log  # this folder

WORDS = ("the of and to in is was for on that with as by at from his her an which are this be had not but "
         "attention model language network sequence token layer weight learning training data translation "
         "sentence word vector memory query key value head encoder decoder transformer street animal tired "
         "river bank money city night music history science water light small large quickly slowly").split()


def sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` sentences of 5 to 60 words, the same on every run."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))).capitalize() + "."
            for _ in range(count)]


def matmul_gflop(config, lengths: list[int]) -> float:
    """Matmul work of encoding the sentences unpadded: per token and layer, the four projections
    (4 d^2) and the feed-forward (2 d h) multiply-adds, plus attention's 2 n d per token of an n-token
    sentence; 2 FLOP per multiply-add."""
    d, h, layers = config.dim, config.hidden, config.num_layers
    attention = sum(2 * n * n * d for n in lengths)
    return 2 * layers * (sum(lengths) * (4 * d * d + 2 * d * h) + attention) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    args = parser.parse_args()

    import sentence_transformers
    import transformers

    texts = sentences(args.sentences)
    directory = hub.resolve(attnkit.embeddings.DEFAULT_MODEL)
    ours = hub.load(directory)
    reference = sentence_transformers.SentenceTransformer(str(directory), device="cpu")
    commit = git("rev-parse", "--short", "HEAD")
    print(f"attnkit {attnkit.__version__} ({commit}), torch {torch.__version__}, sentence-transformers "
          f"{sentence_transformers.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{len(texts)} sentences of 5-60 words, float32, all-MiniLM-L6-v2; {args.rounds} interleaved rounds")
    _, tokenizer = ours
    lengths = [len(t) for t in attnkit.embeddings._token_lists(tokenizer, texts)]
    gflop = matmul_gflop(ours[0].config, lengths)
    print(f"{sum(lengths)} tokens without padding: {gflop:.0f} GFLOP of matmuls (projections, feed-forward, attention)")
    bf16 = hub.load(directory, dtype=torch.bfloat16)
    probe = Probe(0.5, 60.0, 600.0)
    for batch_size in args.batch_sizes:
        def run_ours():
            return attnkit.embed(texts, ours, batch_size=batch_size)

        def run_reference():
            return reference.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                                    normalize_embeddings=True)

        def run_bf16():
            return attnkit.embed(texts, bf16, batch_size=batch_size)

        float32 = run_ours()
        cosine = (float32 * run_reference()).sum(-1).min().item()  # also the warm-up
        cosine_bf16 = (run_bf16().float() * float32).sum(-1).min().item()
        t = interleaved(probe, {"ours": run_ours, "reference": run_reference, "bf16": run_bf16}, args.rounds, log)
        speedup, lo, hi = t["ours"].ratio_to(t["reference"])
        n = len(texts)
        ours_s, ref_s, bf16_s = (t[k].median_ms / 1e3 for k in ("ours", "reference", "bf16"))
        print(f"batch {batch_size}: attnkit {n / ours_s:.0f} sentences/s, "
              f"sentence-transformers {n / ref_s:.0f} sentences/s, "
              f"speed-up {speedup:.2f}x (min {lo:.2f}, max {hi:.2f}), "
              f"min cosine {cosine:.7f}; probe {t['ours'].probe_cell()} GFLOP/s: sentence-transformers "
              f"runs its matmuls at {gflop / ref_s:.0f} GFLOP/s, attnkit at {gflop / ours_s:.0f}")
        print(f"  bfloat16 (attnkit, separate): {n / bf16_s:.0f} sentences/s, "
              f"{ref_s / bf16_s:.2f}x sentence-transformers float32, min cosine to attnkit float32 {cosine_bf16:.5f}")


if __name__ == "__main__":
    main()
