"""Training throughput: the loop's cost against a plain PyTorch loop, and data parallelism on this machine.

1. ``attnkit.train.fit`` against the loop anyone would write by hand (AdamW, clipping, the same batches), on the
   vit-digits recipe's model and batches (batch 64): steps/s of each, interleaved round-robin, each round gated
   on the matmul probe (BENCHMARKING.md). The ratio is what the loop's bookkeeping costs (the Loss sum and count,
   the all_reduce of the step's numbers, the gradient scaling, the stop flag, metrics rows).
2. ``attnkit train vit-digits --steps N`` in fresh processes: one process with 2 threads, one with 1 thread, and
   ``--nproc 2`` (1 thread each; the same global batch of 64, 32 per process): samples/s from metrics.jsonl
   (the median of the logged rows after the first), over interleaved rounds. The data-parallel efficiency is
   rate(2 processes) / (2 x rate(1 process, 1 thread)).

    .venv/bin/python benchmarks/bench_train.py [--rounds 3] [--steps 20] [--ddp-steps 150]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import attnkit
from attnkit.bench.context import machine
from attnkit.bench.measure import Probe, interleaved
from attnkit.train import Loss, Task, TrainConfig, fit
from attnkit.train.recipes import vit_digits
from harness import git, log  # this folder


def _model_and_data() -> tuple[torch.nn.Module, vit_digits.Data]:
    torch.manual_seed(0)
    s = vit_digits.FULL
    model = vit_digits.ViT(vit_digits.ViTConfig(image_size=8, patch_size=s.patch, channels=1, num_classes=10,
                                                dim=s.dim, num_layers=s.layers, num_heads=4, hidden=2 * s.dim,
                                                dropout=0.0))
    return model, vit_digits.make_data(0)


def loop_overhead(rounds: int, steps: int) -> str:
    model, data = _model_and_data()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup=5, log_every=steps)

    def ours() -> None:
        model.load_state_dict(initial)
        task = Task(model, size=len(data.train_y), batch=lambda i: (data.train_x[i], data.train_y[i]),
                    loss=lambda m, b: Loss(F.cross_entropy(m(b[0]).logits, b[1], reduction="sum"), len(b[1])))
        fit(task, config, progress=False)

    def plain() -> None:
        model.load_state_dict(initial)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.01)
        generator = torch.Generator().manual_seed(0)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate(step)
            idx = torch.randint(0, len(data.train_y), (64,), generator=generator)
            loss = F.cross_entropy(model(data.train_x[idx]).logits, data.train_y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    probe = Probe(target_s=0.3, max_wait_s=20, total_wait_s=120)
    out = interleaved(probe, {"attnkit.train.fit": ours, "plain PyTorch loop": plain}, rounds, log)
    ratio = out["attnkit.train.fit"].ratio_to(out["plain PyTorch loop"])
    assert ratio is not None
    fit_ms, plain_ms = out["attnkit.train.fit"].median_ms, out["plain PyTorch loop"].median_ms
    assert fit_ms is not None and plain_ms is not None
    return (f"loop: {steps} steps of the vit-digits ViT at batch 64 ({sum(p.numel() for p in model.parameters()):,} "
            f"parameters): attnkit.train.fit {fit_ms / steps:.1f} ms/step, a plain PyTorch loop "
            f"{plain_ms / steps:.1f} ms/step; plain/fit = {ratio[0]:.3f} (min {ratio[1]:.3f}, max {ratio[2]:.3f}; "
            f"1.0 = the loop costs nothing); probe {out['attnkit.train.fit'].probe_cell()} GFLOP/s")


def _rate(threads: int, nproc: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "attnkit", "train", "vit-digits", "--steps", str(steps), "--out", out,
                   "--no-progress", "--nproc", str(nproc)]
        subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        rows = [json.loads(line) for line in (Path(out) / "vit" / "metrics.jsonl").read_text().splitlines()]
        rates = [r["samples_per_s"] for r in rows if "kind" not in r][1:]  # the first row holds the warm-up
        return statistics.median(rates)


def data_parallel(rounds: int, steps: int) -> str:
    setups = {"1 process, 2 threads": (2, 1), "1 process, 1 thread": (1, 1), "2 processes, 1 thread each": (1, 2)}
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for round_ in range(rounds):
        for name, (threads, nproc) in setups.items():
            rates[name].append(_rate(threads, nproc, steps))
            log(f"round {round_ + 1}: {name}: {rates[name][-1]:.0f} samples/s")
    median = {name: statistics.median(r) for name, r in rates.items()}
    efficiency = median["2 processes, 1 thread each"] / (2 * median["1 process, 1 thread"])
    cells = ", ".join(f"{name} {m:.0f} samples/s (min {min(rates[name]):.0f}, max {max(rates[name]):.0f})"
                      for name, m in median.items())
    return (f"data parallel, attnkit train vit-digits --steps {steps} (global batch 64, gloo): {cells}; "
            f"efficiency of 2 processes = {efficiency:.2f} of 2x one single-thread process; 2 processes / "
            f"1 process with 2 threads = {median['2 processes, 1 thread each'] / median['1 process, 2 threads']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed call of the loop comparison")
    parser.add_argument("--ddp-steps", type=int, default=150, help="steps per data-parallel run")
    args = parser.parse_args()
    info = machine()
    print(f"attnkit {attnkit.__version__} (commit {git('rev-parse', '--short', 'HEAD')}), torch {torch.__version__}, "
          f"{info.get('cpu_model', '?')} x {info.get('cpu_count', '?')}, {torch.get_num_threads()} threads, "
          f"{info['date_utc']} UTC")
    print(loop_overhead(args.rounds, args.steps), flush=True)
    print(data_parallel(args.rounds, args.ddp_steps), flush=True)


if __name__ == "__main__":
    main()
