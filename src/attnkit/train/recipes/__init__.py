"""Recipes: each trains the models one of the field's classic papers describes, on data that installs offline,
and measures the paper's claim. ``attnkit train --list`` lists them; :func:`run` runs one by name.

A recipe is a function of :class:`Options` returning a :class:`Report` (on the main process; None on the
others): the results table it prints, ``results.json`` and its figures, all in ``Options.out``.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...files import write_text
from ...text import format_table


class Interrupted(Exception):
    """SIGINT stopped a recipe's training after writing a checkpoint at ``path``."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"interrupted; checkpoint in {path}")
        self.path = path


@dataclass
class Options:
    """What the command line tells a recipe."""

    out: Path
    seed: int = 0
    steps: int | None = None  # None: the recipe's own (the full or the --quick number)
    quick: bool = False  # a small version for tests: seconds to a minute
    resume: bool = False
    checkpoint_every: int | None = None
    progress: bool = True
    context_parallel: int = 1  # processes that share each sequence (a recipe with Recipe.context_parallel)


@dataclass
class Report:
    """A recipe's results: a table, the same numbers as JSON, the figures it wrote and notes to print."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    results: dict[str, Any]
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [[_cell(v) for v in row] for row in self.rows]
        return f"{self.title}\n\n" + format_table(rows, self.columns, right_from=1)

    def write(self, out: Path) -> Path:
        return write_text(out / "results.json", json.dumps({"title": self.title, "columns": self.columns,
                                                            "rows": self.rows, **self.results}, indent=2) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str  # one line for --list
    run: Callable[[Options], Report | None]
    # With sequences that split over processes: context_parallel(size, quick) raises a ValueError unless they split
    # over ``size`` (the --quick version's when ``quick``); checked before any process starts. None: whole only.
    context_parallel: Callable[[int, bool], None] | None = None


ORDER = ("translate", "vit-digits", "glimpse", "han", "char-lm", "finetune")  # the order, for --list


@functools.cache
def _recipes() -> dict[str, Recipe]:
    """Every module of this package that defines ``RECIPE`` (each imports its data packages only when run)."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        recipe = getattr(importlib.import_module(f"{__name__}.{module.name}"), "RECIPE", None)
        if isinstance(recipe, Recipe):
            found.append(recipe)
    found.sort(key=lambda r: (ORDER.index(r.name) if r.name in ORDER else len(ORDER), r.name))
    return {r.name: r for r in found}


def names() -> list[str]:
    return list(_recipes())


def get(name: str) -> Recipe:
    recipes = _recipes()
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(recipes)} (attnkit train --list)")
    return recipes[name]


def check_context_parallel(name: str, size: int, quick: bool = False) -> None:
    """A ValueError unless recipe ``name`` (its --quick version when ``quick``) trains with each sequence split
    over ``size`` processes (any recipe can with 1): naming the recipes that can, or why its sequences do not
    split over ``size``."""
    if size == 1:
        return
    check = get(name).context_parallel
    if check is None:
        able = ", ".join(r.name for r in _recipes().values() if r.context_parallel is not None)
        raise ValueError(f"recipe {name!r} cannot run with --context-parallel (it trains no GPT over token sequences "
                         f"to split); recipes that can: {able}")
    check(size, quick)


def listing() -> str:
    recipes = _recipes().values()
    width = max(len(r.name) for r in recipes)
    return "\n".join(f"{r.name.ljust(width)}  {r.summary}"
                     + (" (context parallel)" if r.context_parallel is not None else "") for r in recipes)


def run(name: str, options: Options) -> Report | None:
    """Run recipe ``name``; on the main process write ``results.json`` and return the report."""
    check_context_parallel(name, options.context_parallel, options.quick)
    report = get(name).run(options)
    if report is not None:
        report.write(options.out)
    return report


__all__ = ["Interrupted", "Options", "Report", "Recipe", "names", "get", "check_context_parallel", "listing", "run"]
