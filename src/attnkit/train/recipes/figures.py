"""The recipes' figures (matplotlib, the ``viz`` extra): curves, alignment maps and image grids, each written
whole or not at all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor

from ..plots import pyplot, save_figure


def lines(path: Path, series: Mapping[str, Sequence[tuple[float, float]]], *, xlabel: str, ylabel: str,
          title: str) -> Path:
    """One line per named series of (x, y) points."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    for name, points in series.items():
        ax.plot(*zip(*points), "o-", label=name, linewidth=1.4, markersize=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def alignment_grid(path: Path, maps: Sequence[tuple[Tensor, list[str], list[str]]], *, title: str) -> Path:
    """Attention maps side by side: each (T, S) weights with its source tokens (columns) and output tokens
    (rows), as in Bahdanau et al.'s alignment figures (white = weight 1)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 4.2), dpi=110, squeeze=False)
    for ax, (weights, source, output) in zip(axes[0], maps):
        w = weights[:len(output), :len(source)].detach().float().numpy()
        ax.imshow(w, cmap="gray", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(source)), source)
        ax.set_yticks(range(len(output)), output, fontsize=7)
        ax.xaxis.tick_top()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def image_grid(path: Path, images: Sequence[Tensor], overlays: Sequence[Tensor] | None, captions: Sequence[str], *,
               title: str) -> Path:
    """Small images in a row, each with an optional (h, w) heat map drawn over it and a caption."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(images), figsize=(1.6 * len(images), 2.1), dpi=110, squeeze=False)
    for i, (ax, image, caption) in enumerate(zip(axes[0], images, captions)):
        ax.imshow(image.float().numpy(), cmap="gray_r", interpolation="nearest")
        if overlays is not None:
            h, w = image.shape[-2:]
            ax.imshow(overlays[i].float().numpy(), cmap="inferno", alpha=0.55, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                      interpolation="nearest")
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def bars(path: Path, groups: Mapping[str, Mapping[str, float]], *, ylabel: str, title: str) -> Path:
    """Grouped bars: one group per key of ``groups``, one bar per key of its mapping, the value written above."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    x = 0.0
    ticks, labels = [], []
    for group, values in groups.items():
        for i, (name, value) in enumerate(values.items()):
            ax.bar(x + i, value, width=0.8, color=f"C{i}")
            ax.text(x + i, value, f"{value:.2f}\n{name}", ha="center", va="bottom", fontsize=7)
        ticks.append(x + (len(values) - 1) / 2)
        labels.append(group)
        x += len(values) + 1
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.25)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
