"""Figures of a run: the loss curve from metrics.jsonl (matplotlib, the ``viz`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import atomic_path


def loss_curve(rows: list[dict[str, Any]], path: Path, *, title: str | None = None) -> Path | None:
    """Training loss per logged step (and evaluation losses, if the rows have ``loss`` among them) as a PNG;
    None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
