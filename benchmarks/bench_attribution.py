"""Attention against attribution over many inputs: how well does each method rank the tokens as ablation does?

``attnkit.inspect.explain(text, model, attribution=True)`` scores, for one focus token, every token it sees by raw
attention (mean of layers, last layer), rollout, attention x gradient, gradient x input and integrated gradients,
and measures the ground truth: the effect of masking each token out (ablation). One input proves nothing; this
script runs it over fixed inputs written for it (no dataset) and aggregates, per model and method:

- Spearman's rho against the ablation over the scored tokens: mean, median, the share of inputs with rho > 0.5
  (an undefined rho, NaN, counts as not above 0.5 and is left out of the mean and median; the count is printed);
- top-1 agreement: the share of inputs where the method's highest-scored token is the ablation's, beside chance
  (the mean over inputs of 1 / number of scored tokens);
- for the encoder, the mean rho without special tokens ([CLS], [SEP]);
- raw attention's rho layer by layer (mean over inputs), one line;
- the wall time of one ``explain(..., attribution=True)`` call (mean and max; the first call includes warm-up).

Inputs:

- ``minilm``: the bundled encoder sentence-transformers/all-MiniLM-L6-v2; 24 sentences, each with a pronoun whose
  antecedent comes earlier; the focus is explain's default (the last pronoun), and what is explained is its final
  vector.
- ``smollm2``: the decoder HuggingFaceTB/SmolLM2-135M-Instruct; 16 prompts whose next token follows from an earlier
  word (facts, agreement, repetition, sequences); the focus is the last token (passed as an index, since a
  decoder's default focus is a pronoun when the prompt has one), and what is explained is the log-probability of
  the token the model predicts. The report says how many predictions are the expected word.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_attribution.py [--model minilm|smollm2|both] [--limit K]
        [--steps N] [--json PATH]     # quiet 2-core VM: ~10 s per MiniLM input, 3-50 s per SmolLM2 input
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata

import torch

import attnkit
from attnkit import hub
from attnkit.bench.context import machine
from attnkit.inspect import explain
from attnkit.inspect.attribution import GAP, METHODS, Attribution
from harness import git, log  # this folder

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"

# The focus is the last pronoun of each sentence; its antecedent comes before it.
SENTENCES = [
    "The trophy didn't fit in the suitcase because it was too big.",
    "Maria called her brother because she needed help with the move.",
    "The dog chased the cat across the yard until it climbed a tree.",
    "The engineers finished the bridge a month early, so the city thanked them.",
    "When the old lighthouse keeper retired, the town threw a party for him.",
    "The package arrived late because the courier had lost it.",
    "The committee studied the proposal for weeks and finally rejected it.",
    "Sarah planted tomatoes in the spring and harvested them in August.",
    "The children built a sandcastle on the beach, but the tide washed it away.",
    "The violinist tuned the instrument before the concert because it sounded flat.",
    "The bakery on the corner sells bread so good that people queue for it every morning.",
    "The laptop kept crashing, so Daniel sent it back to the store.",
    "The farmers brought fresh apples to the market, where tourists bought them.",
    "The mountain was covered in deep snow, and climbers avoided it all winter.",
    "Anna wrote a long letter to the grandmother and mailed it on Monday.",
    "The key was under the mat, where the guests found it easily.",
    "The scientists tested the vaccine for months before doctors trusted it.",
    "The parrot repeated every word that the sailors taught it.",
    "The old car broke down twice on the highway, so Mark finally sold it.",
    "The museum bought a rare painting and displayed it in the main hall.",
    "The teacher praised the students because they had worked hard all term.",
    "After the storm, the villagers repaired the roof that the wind had torn from it.",
    "The orchestra played the symphony so beautifully that the audience asked for it again.",
    "Grandfather planted an oak in the garden fifty years ago, and the family still loves it.",
]

# (prompt, the expected next word): the next token follows from an earlier word of the prompt.
PROMPTS = [
    ("The capital of France is Paris, and the capital of Germany is", "Berlin"),
    ("The capital of Italy is Rome, and the capital of Spain is", "Madrid"),
    ("Monday, Tuesday, Wednesday, Thursday,", "Friday"),
    ("January, February, March, April,", "May"),
    ("One, two, three, four, five,", "six"),
    ("The opposite of hot is cold, and the opposite of up is", "down"),
    ("The password is tiger. Repeat the password: the password is", "tiger"),
    ("My favourite colour is blue. Again, my favourite colour is", "blue"),
    ("The keys are on the table. Where are the keys? The keys are on the", "table"),
    ("The sun rises in the east and sets in the", "west"),
    ("The Eiffel Tower is in the city of", "Paris"),
    ("Shakespeare wrote Romeo and", "Juliet"),
    ("The chemical symbol for gold is Au, and the chemical symbol for silver is", "Ag"),
    ("The boy plays football every day. The girls play tennis every day. The boy", "plays"),
    ("Red, green, blue. Red, green,", "blue"),
    ("The cat is black and the dog is white. The cat is", "black"),
]


@dataclass
class Record:
    """One input's results: the per-method rho and top-1 agreement, and what the call cost."""

    text: str
    focus: str
    scored: int
    seconds: float
    steps: int
    completeness: float
    rho: dict[str, float]
    top1: dict[str, bool]
    content_rho: dict[str, float] = field(default_factory=dict)
    layer_rho: list[float] = field(default_factory=list)
    predicted: str | None = None
    expected: str | None = None


def top1(a: Attribution) -> dict[str, bool]:
    """Per method: is its highest-scored token the one whose ablation changes the explained number most?"""
    best = max(a.scored, key=lambda t: float(a.ablation[t]))
    return {m: max(a.scored, key=lambda t: float(a.scores[m][t])) == best for m in METHODS}


def run_one(text: str, model, focus: int | None, steps: int | None) -> tuple[Record, float]:
    """explain(..., attribution=True) on ``text``, timed; its Record."""
    options = {} if steps is None else {"steps": steps}
    start = time.perf_counter()
    e = explain(text, model, focus=focus, attribution=True, **options)
    seconds = time.perf_counter() - start
    a = e.attributions
    assert a is not None
    return Record(text=text, focus=e.label(e.focus), scored=len(a.scored), seconds=seconds, steps=a.steps,
                  completeness=a.completeness, rho=dict(a.correlations), top1=top1(a),
                  content_rho=dict(a.content_correlations), layer_rho=list(a.layer_correlations)), seconds


def predicted_next(model, tokenizer, ids: list[int]) -> str:
    """The decoder's greedy next token after ``ids``, as text."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits
    return tokenizer.backend.decode([int(logits[0, -1].argmax())], skip_special_tokens=False)


def measure(which: str, limit: int | None, steps: int | None, records: list[Record], save) -> None:
    """Every input of ``which`` (the first ``limit``), one explain call each, into ``records``; ``save`` after
    each input (a long run leaves what it measured)."""
    model, tokenizer = hub.load(MINILM if which == "minilm" else SMOLLM2)
    model.eval()
    inputs = [(s, None) for s in SENTENCES] if which == "minilm" else PROMPTS
    for i, (text, expected) in enumerate(inputs[:limit]):
        focus = None
        if which == "smollm2":
            ids = tokenizer.encoding(text).ids
            focus = len(ids) - 1  # the last token: the next one is predicted from it
        record, seconds = run_one(text, (model, tokenizer), focus, steps)
        if which == "smollm2":
            record.predicted, record.expected = predicted_next(model, tokenizer, ids), expected
        records.append(record)
        rhos = " ".join(f"{r:+.2f}" for r in record.rho.values())
        log(f"{which} {i + 1}/{len(inputs[:limit])}: {seconds:.0f} s, focus {record.focus!r}, {record.scored} tokens, "
            f"IG {record.steps} steps (gap {record.completeness:.1%}), rho {rhos}"
            + (f", predicted {record.predicted!r} (expected {expected!r})" if expected else ""))
        save()


def _defined(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _mean(values: list[float]) -> float:
    defined = _defined(values)
    return statistics.fmean(defined) if defined else math.nan


def summarize(records: list[Record]) -> dict:
    """Per method: mean and median rho, share of rho > 0.5, top-1 agreement, (encoder) mean rho without specials."""
    n = len(records)
    methods = {}
    for m in METHODS:
        rhos = [r.rho[m] for r in records]
        defined = _defined(rhos)
        content = [r.content_rho[m] for r in records if r.content_rho]
        methods[m] = {"mean_rho": _mean(rhos), "median_rho": statistics.median(defined) if defined else math.nan,
                      "share_rho_above_0.5": sum(v > 0.5 for v in defined) / n, "undefined": n - len(defined),
                      "top1": sum(r.top1[m] for r in records) / n,
                      "mean_rho_no_special": _mean(content) if content else None}
    layers = len(records[0].layer_rho)
    seconds = [r.seconds for r in records]
    return {"inputs": n, "methods": methods,
            "layer_mean_rho": [_mean([r.layer_rho[i] for r in records]) for i in range(layers)],
            "chance_top1": statistics.fmean(1 / r.scored for r in records),
            "scored_tokens_mean": statistics.fmean(r.scored for r in records),
            "seconds_mean": statistics.fmean(seconds), "seconds_max": max(seconds),
            "ig_steps": sorted({r.steps for r in records}),
            "ig_gap_max": max(r.completeness for r in records),
            "ig_rough": sum(r.completeness > GAP for r in records),
            "expected_predicted": sum(_same_word(r.predicted, r.expected) for r in records)
            if records[0].expected else None}


def _same_word(predicted: str | None, expected: str | None) -> bool:
    """The predicted token is the expected word (case aside). Only the whole word counts: a prefix test would let a
    predicted " A" pass for "Ag"; each prompt's answer is one token of SmolLM2's vocabulary."""
    if predicted is None or expected is None:
        return False
    return predicted.strip().lower() == expected.strip().lower()


def report(which: str, summary: dict) -> str:
    """The model's table (markdown) and its lines: per-layer rho, chance, times."""
    encoder = which == "minilm"
    header = ["method", "mean rho", "median rho", "rho > 0.5", "top-1 agreement",
              *(["mean rho, no special tokens"] if encoder else [])]
    rows = [header, ["---"] * len(header)]
    for m, s in summary["methods"].items():
        undefined = f" ({s['undefined']} n/a)" if s["undefined"] else ""
        rows.append([m, f"{s['mean_rho']:+.2f}{undefined}", f"{s['median_rho']:+.2f}",
                     f"{s['share_rho_above_0.5']:.0%}", f"{s['top1']:.0%}",
                     *([f"{s['mean_rho_no_special']:+.2f}"] if encoder else [])])
    name = MINILM if encoder else SMOLLM2
    target = "the focus pronoun's final vector" if encoder else "log p(predicted next token) at the last token"
    lines = [f"### {name}: {summary['inputs']} inputs, {summary['scored_tokens_mean']:.1f} scored tokens on average; "
             f"explained: {target}", "", *("| " + " | ".join(r) + " |" for r in rows), "",
             "raw attention, rho per layer (mean over inputs), layer 0 first: "
             + " ".join(f"{v:+.2f}" for v in summary["layer_mean_rho"]),
             f"chance level of top-1 agreement (mean of 1 / scored tokens): {summary['chance_top1']:.0%}",
             f"integrated gradients: steps reached {summary['ig_steps']}, largest completeness gap "
             f"{summary['ig_gap_max']:.1%}; {summary['ig_rough']} of {summary['inputs']} inputs still above {GAP:.0%} "
             f"after the last doubling (rough scores)",
             f"one explain(..., attribution=True) call: mean {summary['seconds_mean']:.1f} s, max "
             f"{summary['seconds_max']:.1f} s"]
    if summary["expected_predicted"] is not None:
        lines.append(f"the model's next token is the expected word in {summary['expected_predicted']}/"
                     f"{summary['inputs']} prompts")
    return "\n".join(lines)


def context() -> dict:
    info = machine()
    versions = {p: _version(p) for p in ("torch", "transformers", "captum")}
    return {**info, "versions": versions, "commit": git("rev-parse", "--short", "HEAD"),
            "dirty_src": bool(git("status", "--porcelain", "src")),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_start": os.getloadavg()}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["minilm", "smollm2", "both"], default="both")
    parser.add_argument("--limit", type=int, help="only the first K inputs of each model (a quick check)")
    parser.add_argument("--steps", type=int, help="integrated gradients' steps (default: the library's, "
                        f"{inspect.signature(explain).parameters['steps'].default}, doubled while the gap is > 5%%)")
    parser.add_argument("--json", help="write the context, every input's results and the summaries here")
    args = parser.parse_args()
    started = time.perf_counter()
    ctx = context()
    v = ctx["versions"]
    print(f"attnkit {attnkit.__version__} (commit {ctx['commit']}{', src/ modified' if ctx['dirty_src'] else ''}), "
          f"torch {v['torch']}, transformers {v['transformers']}, captum {v['captum']}; "
          f"{ctx.get('cpu_model', '?')} x {ctx.get('cpu_count', '?')}, {torch.get_num_threads()} threads, "
          f"load average at start {ctx['loadavg_start'][0]:.1f}; {ctx['date_utc']} UTC", flush=True)
    out: dict = {"context": ctx, "args": vars(args), "records": {}, "summaries": {}}

    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1, default=lambda o: asdict(o) if isinstance(o, Record) else str(o))

    for which in (["minilm", "smollm2"] if args.model == "both" else [args.model]):
        records = out["records"][which] = []
        measure(which, args.limit, args.steps, records, save)
        out["summaries"][which] = summarize(records)
        print("\n" + report(which, out["summaries"][which]), flush=True)
        save()
    out["wall_s"] = time.perf_counter() - started
    out["loadavg_end"] = os.getloadavg()
    save()
    print(f"\nwall time {out['wall_s'] / 60:.1f} min; load average at the end {out['loadavg_end'][0]:.1f}")


if __name__ == "__main__":
    main()
