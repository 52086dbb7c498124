"""Figures of a run: the loss curve from metrics.jsonl (matplotlib, the ``viz`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import atomic_path


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend: files only, never a window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) whole or not at all, and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    pyplot().close(fig)
    return path


def loss_curve(rows: list[dict[str, Any]], path: Path, *, title: str | None = None) -> Path | None:
    """Training loss per logged step (and evaluation losses, if the rows have ``loss`` among them) as a PNG;
    None when there is nothing to draw."""
    plt = pyplot()
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") is None and "loss" in r]
    evals = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "eval" and "loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(*zip(*train), label="training loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="evaluation loss", linewidth=1.2, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(loss > 0 for _, loss in train):
        ax.set_yscale("log")
    ax.set_title(title or path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
