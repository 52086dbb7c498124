"""The ``attnkit`` command: thin argument parsing and printing over the library."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import __version__
from . import functional as F
from .functional import masks


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def cmd_kernels(args: argparse.Namespace) -> int:
    """Print every registered kernel and what it declares it supports."""
    ks = F.kernels()
    if not ks:
        print("no kernels registered")
        return 1
    fields = list(ks[0].capabilities.as_row())
    rows = [[k.name, *k.capabilities.as_row().values()] for k in ks]
    print(_table(rows, ["kernel", *fields]))
    print()
    for k in ks:
        print(f"{k.name:>6}: {k.description}")
    print("\nauto: tiled first for structured masks that leave >= 50% of tiles empty on large inputs; "
          "otherwise sdpa, tiled, dense (first that supports the request).")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Every kernel on one masked GQA request, against the float64 reference, and a mask's block grid."""
    n, window = args.n, args.window
    g = torch.Generator().manual_seed(args.seed)
    q = torch.randn(1, 8, n, 64, generator=g)
    k, v = torch.randn(1, 2, n, 64, generator=g), torch.randn(1, 2, n, 64, generator=g)
    mask = masks.sliding_window(window - 1)  # causal: right = 0
    print(f"attnkit {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"q (1, 8, {n}, 64), k/v (1, 2, {n}, 64) grouped-query, causal sliding window of {window}:\n")
    print(mask.to_string(n, n, block=max(1, n // 32)), "\n")
    ref = F.attention(q.double(), k.double(), v.double(), mask=mask, kernel="dense")
    rows = []
    for kernel in [k.name for k in F.kernels()] + ["auto"]:
        try:
            start = time.perf_counter()
            out = F.attention(q, k, v, mask=mask, kernel=kernel)
            ms = (time.perf_counter() - start) * 1e3
        except ValueError as err:
            rows.append([kernel, "refused", str(err).splitlines()[0][:60]])
            continue
        rows.append([kernel, f"{ms:.1f} ms (first call)", f"{(out.double() - ref).abs().max().item():.2e}"])
    print(_table(rows, ["kernel", "time", "max |out - float64 reference|"]))
    print("\nfor speed, see `make bench` (medians after warm-up, ratios against SDPA in one run)")
    return 0


def _millions(count: int) -> str:
    return f"{count / 1e6:,.1f}M" if count >= 1e5 else f"{count:,}"


def cmd_models(args: argparse.Namespace) -> int:
    """Every model's named presets with their parameter counts."""
    from .models.catalog import catalog

    rows = [[e.model, e.preset, _millions(e.num_parameters),
             ", ".join(f"{k}={v}" for k, v in e.assumed.items())] for e in catalog()]
    print(_table(rows, ["model", "preset", "parameters", "counted with"]))
    print("\nbuild one: attnkit.models.GPT(attnkit.models.GPTConfig.preset('nano', num_layers=2)); "
          "'counted with' fills fields a preset leaves to your data")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnkit", description="The attention mechanism in all its forms.")
    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("kernels", help="list the registered attention kernels and their capabilities")
    p.set_defaults(func=cmd_kernels)
    p = sub.add_parser("demo", help="run every kernel on a masked GQA example and compare to float64")
    p.add_argument("--n", type=int, default=1024, help="sequence length (default 1024)")
    p.add_argument("--window", type=int, default=256, help="sliding window size (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("models", help="list the models, their named presets and parameter counts")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    if getattr(args, "n", 1) < 1 or getattr(args, "window", 1) < 1:
        parser.error("--n and --window must be positive")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
