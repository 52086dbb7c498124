"""``attnkit train``: the recipes of :mod:`attnkit.train` from the command line (parsing and printing only)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .cli_common import CommandFailed, UsageError, check_out, positive_int


def cmd_train(args: argparse.Namespace) -> int:
    """Run a training recipe: its models trained, its results table printed, results.json and figures written."""
    from .train import recipes
    from .train.loop import PeerFailure

    if args.list:
        print(recipes.listing())
        return 0
    if args.recipe is None:
        raise UsageError("name a recipe; attnkit train --list shows them")
    recipes.get(args.recipe)  # an unknown name is refused before anything starts
    _check_context_parallel(args)
    out = check_out(args.out or os.path.join("attnkit-train", args.recipe))
    if "WORLD_SIZE" not in os.environ:  # processes torchrun started: checked by the launching command, or by fit
        _check_checkpoints(args, out)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each runs this command again
        return _launch(args, out)
    options = recipes.Options(out=out, seed=args.seed, steps=args.steps, quick=args.quick, resume=args.resume,
                              checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
                              context_parallel=args.context_parallel)
    try:
        report = recipes.run(args.recipe, options)
    except ModuleNotFoundError as error:  # the recipes' data and figures come with the train extra
        raise CommandFailed(f"{error.name} is not installed: pip install 'attnkit[train]'") from error
    except (PeerFailure, FloatingPointError) as error:  # the input was fine: the run failed
        raise CommandFailed(str(error)) from error
    except recipes.Interrupted as stop:
        print(f"\nattnkit train: interrupted; checkpoint written to {stop.path}; continue with --resume",
              file=sys.stderr)
        return 130
    if report is not None:
        print(report.table())
        for note in report.notes:
            print(note)
        print("\nwrote " + ", ".join(str(p) for p in [out / "results.json", *report.figures]))
    return 0


def _check_context_parallel(args: argparse.Namespace) -> None:
    """``--context-parallel C``: a recipe that can split its sequences, and processes (--nproc, or torchrun's
    WORLD_SIZE) that C divides; refused before any process starts."""
    from .train import recipes

    size = args.context_parallel
    if size == 1:
        return
    recipes.check_context_parallel(args.recipe, size, args.quick)
    processes = _processes(args)
    if processes == 1:
        raise UsageError(f"--context-parallel {size} splits each sequence over {size} processes: add --nproc {size} "
                         "(or a multiple of it), or start the command under torchrun")
    if processes % size:
        below, above = processes // size * size, -(-processes // size) * size  # the multiples of C around N
        fits = f"--nproc {size}" if processes < size else f"--nproc {below} or {above}"
        raise UsageError(f"--context-parallel {size} must divide the number of processes ({processes}): each group "
                         f"of {size} processes shares one sequence, and the groups split the batch; use {fits}")


def _processes(args: argparse.Namespace) -> int:
    """The run's processes: torchrun's WORLD_SIZE in a process it started, else --nproc."""
    return int(os.environ.get("WORLD_SIZE", args.nproc))


def _check_checkpoints(args: argparse.Namespace, out: Path) -> None:
    """What fit refuses too, before any process starts (else each process would say it): checkpoints in ``out``
    without --resume, or with --resume, checkpoints of other --nproc or --context-parallel."""
    from .train.checkpoint import load
    from .train.loop import check_parallel, refuse_existing

    paths = sorted(out.rglob("checkpoint.pt"))
    if paths and not args.resume:
        refuse_existing(out)
    for path in paths if args.resume else []:
        check_parallel(load(path), path, _processes(args), args.context_parallel)


def _launch(args: argparse.Namespace, out: Path) -> int:
    """``--nproc N``: torchrun's launcher runs N processes of this command. Ctrl-C reaches every process from the
    terminal (each finishes its step, writes its checkpoint and exits); this one only waits, then says so."""
    from .train.parallel import launch

    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        code = launch(args.nproc, ["train", *_train_argv(args, out)])
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print(f"\nattnkit train: interrupted; checkpoints written to {out}; continue with --resume", file=sys.stderr)
        return 130
    if code:
        raise CommandFailed(f"{args.nproc} processes: at least one failed (exit {code}); see the messages above")
    return 0


def _train_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """The command's own arguments, for each process that ``--nproc`` starts (without --nproc: torchrun's parser
    would take it for an abbreviation of its own --nproc-per-node; each process knows from WORLD_SIZE)."""
    argv = [args.recipe, "--out", str(out), "--seed", str(args.seed)]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    if args.checkpoint_every is not None:
        argv += ["--checkpoint-every", str(args.checkpoint_every)]
    if args.context_parallel > 1:
        argv += ["--context-parallel", str(args.context_parallel)]
    return argv + [flag for flag, on in (("--quick", args.quick), ("--resume", args.resume),
                                         ("--no-progress", args.no_progress)) if on]


def add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train the classic attention models on offline data (recipes; --list)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train the models a classic paper describes, on data that installs offline, and "
                                   "print the results table (also DIR/results.json and figures). Each model's "
                                   "metrics.jsonl, loss.png and checkpoint.pt go in DIR/<model>/.",
                       epilog="examples:\n  attnkit train --list\n  attnkit train translate --out runs/translate\n"
                              "  attnkit train vit-digits --quick --steps 50\n"
                              "  attnkit train translate --out runs/translate --resume   # after Ctrl-C or a crash\n"
                              "  attnkit train vit-digits --nproc 2                      # data parallel, 2 processes\n"
                              "  attnkit train char-lm --nproc 4 --context-parallel 2    # each sequence over 2 "
                              "processes; 2 such groups")
    p.add_argument("recipe", nargs="?", help="the recipe to run (attnkit train --list)")
    p.add_argument("--list", action="store_true", help="list the recipes, one line each")
    p.add_argument("--out", help="output directory (default ./attnkit-train/RECIPE)")
    p.add_argument("--steps", type=positive_int, help="optimizer steps per model (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same results (default 0)")
    p.add_argument("--quick", action="store_true", help="a small version (seconds to a minute), for tests")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--checkpoint-every", type=positive_int, help="also write a checkpoint every N steps")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="processes on this machine, started through torchrun: data parallel, in groups of "
                        "--context-parallel C (default 1)")
    p.add_argument("--context-parallel", type=positive_int, default=1, metavar="C",
                   help="split each sequence over C processes (ring attention, zigzag layout); C divides --nproc, "
                        "and the N/C groups are data parallel; for the recipes --list marks 'context parallel' "
                        "(default 1: whole sequences)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_train)
