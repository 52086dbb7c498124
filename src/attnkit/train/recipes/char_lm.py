"""``char-lm``: a GPT that reads and writes Python, one byte at a time, trained on the sources of the Python standard
library that every machine has offline. The same model with four attention variants, at equal parameters and
equal steps (the same tokens in the same order): exact softmax attention, a sliding window of 16 bytes, linear
attention (elu + 1 features) and Performer (FAVOR+ random features). Validation loss (bits per byte), seconds
per step, and a sample from each: what exactness buys, and what it costs, on real text.

A fifth model, an SSM hybrid (``HybridLM``: selective state-space layers around one attention layer, Jamba's
pattern at this size), runs at about *equal time* instead: its selective scan steps through the sequence in
Python, about 9x the softmax model's time per step here, so it gets a ninth of the steps (the same number on
every run, not a timer, so the results stay reproducible).

The corpus is a fixed list of modules (below), read from this interpreter's standard library: its exact bytes
depend on the Python version, so results.json records the version and the byte count.

With ``--context-parallel C`` every sequence is split over C processes (zigzag, ring attention), and the variants
that cannot be split are skipped, each with its reason in the notes (``WHOLE_SEQUENCE_ONLY``).
"""

from __future__ import annotations

import math
import statistics
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...distributed import ContextParallel
from ...distributed.layout import Layout
from ...models.gpt import GPT, AttentionConfig, GPTConfig
from ...models.hybrid import HybridConfig, HybridLM
from ..config import ContextParallelConfig
from ..loop import read_metrics
from ..task import Loss, Task
from . import Options, Recipe, Report
from .common import fit_part, main_process, seed_everything, train_config

MODULES = ("argparse", "textwrap", "string", "shlex", "difflib", "fractions", "statistics", "heapq", "bisect",
           "calendar", "csv", "dataclasses", "functools", "glob", "fnmatch", "pprint", "reprlib", "queue",
           "sched", "tokenize", "ast", "copy", "enum", "ipaddress", "locale", "pathlib", "random")
VARIANTS: dict[str, dict[str, Any]] = {"softmax": {}, "window-16": {"window": 15}, "linear": {"kernel": "linear"},
                                       "performer": {"kernel": "performer"}, "ssm-hybrid": {"hybrid": True}}
HYBRID_STEPS = 9  # the hybrid runs steps // 9: about the softmax model's wall time (see the module docstring)
WHOLE_SEQUENCE_ONLY = {  # the variants that --context-parallel skips, and why
    "linear": "its kernel keeps no log-sum-exp, through which ring attention merges the shards' blocks",
    "performer": "its kernel keeps no log-sum-exp, through which ring attention merges the shards' blocks",
    "ssm-hybrid": "its selective scan runs through the whole sequence in order",
}


@dataclass(frozen=True)
class Sizes:
    block: int  # bytes of context
    dim: int
    layers: int
    steps: int
    batch: int
    corpus: int | None  # bytes of the corpus used; None = all


FULL = Sizes(block=96, dim=96, layers=3, steps=500, batch=16, corpus=None)
QUICK = Sizes(block=32, dim=32, layers=1, steps=6, batch=8, corpus=60_000)


def corpus(limit: int | None) -> bytes:
    """The listed modules' sources, concatenated; an OSError naming the directory when none can be read."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = [(root / f"{name}.py").read_bytes() for name in MODULES if (root / f"{name}.py").is_file()]
    if not parts:
        raise OSError(f"no standard-library sources under {root}: this Python ships without them")
    text = b"\n".join(parts)
    return text[:limit] if limit is not None else text


class Tokens(NamedTuple):
    """A batch: bytes in, the next bytes, and with context parallelism the global positions of this part's."""

    ids: Tensor  # (B, N)
    targets: Tensor  # (B, N)
    positions: Tensor | None = None  # (B, N) where these tokens sit in their sequence; None: 0 ... N-1

    def split(self, setting: ContextParallel) -> Tokens:
        """This process's part of every sequence (``Task.split``)."""
        ids = setting.shard(self.ids)  # (B, N / C)
        return Tokens(ids, setting.shard(self.targets), setting.positions(ids))


@dataclass
class Data:
    train: Tensor  # (n,) byte values
    valid: Tensor  # (m,) the last tenth of the corpus
    block: int

    def windows(self) -> int:
        """Training examples: windows starting every half block."""
        return (len(self.train) - self.block - 1) // (self.block // 2)

    def batch(self, indices: Tensor) -> Tokens:
        starts = indices * (self.block // 2)
        rows = starts[:, None] + torch.arange(self.block + 1)  # (B, block + 1)
        chunk = self.train[rows]
        return Tokens(chunk[:, :-1], chunk[:, 1:])

    def validation(self, count: int = 64) -> tuple[Tensor, Tensor]:
        """``count`` evenly spaced windows of the validation text (the same for every variant)."""
        starts = torch.linspace(0, len(self.valid) - self.block - 1, count).long()
        chunk = self.valid[starts[:, None] + torch.arange(self.block + 1)]
        return chunk[:, :-1], chunk[:, 1:]


def make_data(sizes: Sizes) -> Data:
    text = torch.frombuffer(bytearray(corpus(sizes.corpus)), dtype=torch.uint8).long()
    split = int(len(text) * 0.9)
    return Data(text[:split], text[split:], sizes.block)


def build(sizes: Sizes, variant: dict[str, Any]) -> nn.Module:
    if variant.get("hybrid"):  # SSM, attention, SSM: about the GPT's parameter count
        return HybridLM(HybridConfig(vocab_size=256, dim=sizes.dim, pattern="MAM"[:max(1, sizes.layers)],
                                     num_heads=4, state_dim=4, expand=1, hidden=4 * sizes.dim, activation="gelu",
                                     norm="layer"))
    attention = AttentionConfig(num_heads=4, window=variant.get("window"))
    return GPT(GPTConfig(vocab_size=256, max_seq_len=sizes.block, dim=sizes.dim, num_layers=sizes.layers,
                         attention=attention, kernel=variant.get("kernel", "auto")))


def _loss(model: nn.Module, batch: Tokens) -> Loss:
    """The summed loss over the batch's tokens (this process's part of them with context parallelism)."""
    x, y, positions = batch
    logits = (model(x) if positions is None else model(x, position_ids=positions)).logits  # (B, N, 256)
    return Loss(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"), y.numel())


def make_task(model: nn.Module, data: Data) -> Task:
    valid_x, valid_y = data.validation()

    def evaluate(model: nn.Module) -> dict[str, float]:
        loss = float(F.cross_entropy(model(valid_x).logits.flatten(0, 1), valid_y.flatten()))
        return {"loss": loss, "bits_per_byte": loss / math.log(2)}

    return Task(model, size=data.windows(), batch=data.batch, loss=_loss, evaluate=evaluate, unit="tokens",
                items=lambda b: b.targets.numel(), split=Tokens.split)


def sample(model: nn.Module, data: Data, length: int, seed: int) -> str:
    """``length`` bytes sampled at temperature 0.8 after the first validation window's last 16 bytes, by
    re-running the whole window (the approximate kernels have no KV cache of their own)."""
    generator = torch.Generator().manual_seed(seed)
    ids = data.valid[: data.block][None, -16:]
    model.eval()
    with torch.no_grad():
        for _ in range(length):
            logits = model(ids[:, -data.block:]).logits[:, -1] / 0.8
            ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1, generator=generator)], dim=1)
    text = bytes(ids[0, 16:].tolist()).decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() or c in "\n\t" else "\u00b7" for c in text)  # no control bytes to a terminal


def check_context_parallel(size: int, quick: bool) -> None:
    """A ValueError unless the run's layout (``ContextParallelConfig``'s default, as ``train_config`` builds it)
    cuts each sequence (``--quick``'s when ``quick``) into the chunks it needs (``Recipe.context_parallel``: checked
    before the processes start)."""
    block = (QUICK if quick else FULL).block
    what = f"char-lm{' --quick' if quick else ''} with --context-parallel {size}"
    Layout(ContextParallelConfig(size).layout, size).check_length(what, block, whole=True)


def run(options: Options) -> Report | None:
    sizes = QUICK if options.quick else FULL
    split = options.context_parallel
    data = make_data(sizes)
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    curves: dict[str, list[tuple[float, float]]] = {}
    skipped = {name: why for name, why in WHOLE_SEQUENCE_ONLY.items() if split > 1}
    for name, variant in VARIANTS.items():
        if name in skipped:
            continue
        steps = options.steps or sizes.steps
        if variant.get("hybrid"):
            steps = max(1, steps // HYBRID_STEPS)
        config = train_config(options, steps, batch_size=sizes.batch, lr=3e-3, warmup=min(20, steps // 10),
                          weight_decay=0.1, eval_every=max(1, steps // 6))
        seed_everything(options.seed)  # the same initial weights for every GPT variant
        model = build(sizes, variant)
        result = fit_part(options, name, make_task(model, data), config)
        if not main_process():
            continue
        seconds = steps * _seconds_per_step(options.out / name, sizes)  # from the logged rates: right after --resume
        text = sample(model, data, 120 if not options.quick else 16, options.seed)
        parameters = sum(p.numel() for p in model.parameters())
        rows.append([name, steps, result.evaluation["bits_per_byte"], seconds / steps, seconds, parameters])
        results[name] = {**result.evaluation, "steps": steps, "seconds": seconds, "parameters": parameters,
                         "sample": text}
        curves[name] = [(seconds * r["step"] / steps, r["bits_per_byte"])
                        for r in read_metrics(options.out / name) if r.get("kind") == "eval"]
    if not main_process():
        return None
    return _report(sizes, data, rows, results, curves, options, skipped)


def _seconds_per_step(out: Path, sizes: Sizes) -> float:
    """The median over the logged rows of a step's tokens / the row's tokens per second."""
    rates = [r["tokens_per_s"] for r in read_metrics(out) if r.get("kind") is None]
    return sizes.batch * sizes.block / statistics.median(rates)


def _report(sizes: Sizes, data: Data, rows: list[list[Any]], results: dict[str, Any],
            curves: dict[str, list[tuple[float, float]]], options: Options, skipped: dict[str, str]) -> Report:
    from .figures import lines

    figure = lines(options.out / "validation.png", curves, xlabel="seconds of training (the step's share of the run)",
                   ylabel="validation bits per byte", title="char-lm: validation loss against training time")
    title = (f"char-lm: a {sizes.layers}-layer byte-level model on {len(data.train) + len(data.valid):,} bytes of the "
             f"Python {sys.version_info.major}.{sys.version_info.minor} standard library, batches of "
             f"{sizes.batch} x {sizes.block} bytes; validation bits per byte (lower is better)")
    if options.context_parallel > 1:
        title += f"; each sequence split over {options.context_parallel} processes"
    notes = [f"\n{name} sample:\n{results[name]['sample']}" for name in results]
    notes += [f"\n{name}: skipped under --context-parallel: {why}" for name, why in skipped.items()]
    return Report(title, ["model", "steps", "bits/byte", "s/step", "seconds", "parameters"], rows,
                  {"variants": results, "python": sys.version.split()[0], "sizes": sizes.__dict__,
                   "context_parallel": options.context_parallel, "skipped": skipped},
                  figures=[figure], notes=notes)


RECIPE = Recipe("char-lm", "a byte-level GPT on the Python standard library's sources: softmax vs sliding window vs "
                "linear vs Performer at equal parameters and steps, and an SSM hybrid at about equal time", run,
                context_parallel=check_context_parallel)
