"""Paper-ready figures of an :class:`~attnkit.inspect.Explanation` with matplotlib: PNG and SVG (text kept as
text in the SVG, so labels stay editable), written without a display.

    >>> write_figures(explain("The animal didn't cross the street because it was too tired"), "out/")
    [PosixPath('out/head_L5_H11.png'), PosixPath('out/head_L5_H11.svg'), PosixPath('out/layers_mean.png'), ...]

A decoder's maps draw the cells a query cannot see (later tokens) grey and say so in the title: masked, not
zero weights. Its rollout bars list only the tokens up to the focus token; with an attention sink
(``Explanation.sink``), a third panel ranks the tokens without the first one.

matplotlib is an optional dependency (``pip install "attnkit[viz]"``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from ..files import atomic_path
from .explanation import Explanation

FORMATS = ("png", "svg")
MAX_LABELS = 60  # more token labels than this on an axis are thinned out
MASKED = "#dedede"  # cells a decoder's query cannot see: grey, apart from every colour a weight can take


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('figures need matplotlib: pip install "attnkit[viz]" (or matplotlib)') from error
    matplotlib.use("Agg", force=False)  # no display needed; leaves an interactive backend a user chose
    import matplotlib.pyplot as plt

    return plt


def _ticks(ax, labels: Sequence[str], *, x: bool = True, y: bool = True) -> None:
    step = max(1, math.ceil(len(labels) / MAX_LABELS))
    positions = list(range(0, len(labels), step))
    shown = [labels[i] for i in positions]
    size = 8 if len(positions) <= 30 else 6
    ax.set_xticks(positions if x else [])
    ax.set_yticks(positions if y else [])
    if x:
        ax.set_xticklabels(shown, rotation=90, fontsize=size, parse_math=False)
    if y:
        ax.set_yticklabels(shown, fontsize=size, parse_math=False)


def _heatmap(ax, matrix: Tensor, labels: Sequence[str], title: str, masked: Tensor, *, x: bool = True,
             y: bool = True):
    """``matrix`` (M, M) as an image; cells where ``masked`` (M, M) is True are drawn ``MASKED``."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=MASKED)
    values = np.ma.masked_array(matrix.numpy(), mask=masked.numpy())
    image = ax.imshow(values, cmap=cmap, vmin=0.0, interpolation="nearest", aspect="equal")
    ax.set_title(title, fontsize=9, parse_math=False)
    _ticks(ax, labels, x=x, y=y)
    return image


def _bars(ax, e: Explanation, row: Tensor, candidates: range, title: str, xlabel: str) -> None:
    """Horizontal bars of ``row`` (N,) for the tokens in ``candidates``: all of them in text order, or the
    MAX_LABELS largest, largest on top."""
    index = list(candidates)
    order = index[::-1] if len(index) <= MAX_LABELS else \
        [index[i] for i in row[index].topk(MAX_LABELS).indices.flip(0).tolist()]
    ax.barh(range(len(order)), row[order].numpy(), color="#3b6fb6")
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([e.tokens[i] for i in order], fontsize=7, parse_math=False)
    ax.set_title(title, fontsize=9, parse_math=False)
    ax.set_xlabel(xlabel)


def _save(plt, fig, stem: Path, formats: Sequence[str]) -> list[Path]:
    written = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=200, bbox_inches="tight", metadata=_metadata(fmt))
        written.append(path)
    plt.close(fig)
    return written


def _metadata(fmt: str) -> dict:
    """No creation date: the same explanation writes the same files."""
    return {"Date": None} if fmt == "svg" else {}


def check_formats(formats: Sequence[str]) -> list[str]:
    """The figure formats as a list; ValueError unless a non-empty subset of png, svg, pdf."""
    formats = [formats] if isinstance(formats, str) else list(formats)
    if not formats or sorted(set(formats) - {"png", "svg", "pdf"}):
        raise ValueError(f"formats must be a non-empty subset of png, svg, pdf; got {formats}")
    return formats


def write_figures(e: Explanation, directory: str | os.PathLike[str], formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write three figures into ``directory``, each in every format of ``formats`` ("png", "svg", "pdf"):

    - ``head_L{layer}_H{head}``: the detail map (``e.layer``, ``e.head``) with token labels;
    - ``layers_mean``: every layer's head-averaged map, side by side;
    - ``rollout``: the rollout map, and the focus token's rollout row as bars.

    Returns the written paths. Each file is written atomically.
    """
    formats = check_formats(formats)
    plt = _pyplot()
    directory = Path(directory)
    labels = e.bin_labels()
    title = e.model_name
    masked = e.masked_cells()  # (M, M)
    grey = "\n(grey: masked, a decoder's token sees no later token)" if e.causal else ""
    written: list[Path] = []
    # user text (the model's path, tokens) is drawn as it is: parse_math=False on every Text built from it, and
    # no LaTeX, where $ _ ^ % & # are markup too
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "attnkit", "font.size": 8, "text.usetex": False}):
        size = min(12.0, 3.0 + 0.22 * len(labels))
        fig, ax = plt.subplots(figsize=(size + 1.2, size))
        image = _heatmap(ax, e.maps[e.layer, e.head], labels, f"{title}: layer {e.layer}, head {e.head}{grey}",
                         masked)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        written += _save(plt, fig, directory / f"head_L{e.layer}_H{e.head}", formats)

        columns = min(e.num_layers, 4)
        rows = math.ceil(e.num_layers / columns)
        cell = min(4.0, 1.5 + 0.12 * len(labels))
        fig, axes = plt.subplots(rows, columns, figsize=(cell * columns, cell * rows), squeeze=False)
        for layer, ax in enumerate(axes.flat):
            if layer >= e.num_layers:
                ax.axis("off")
                continue
            _heatmap(ax, e.maps[layer].mean(0), labels, f"layer {layer} (mean of {e.num_heads} heads)", masked,
                     x=layer + columns >= e.num_layers, y=layer % columns == 0)
        fig.suptitle(f"{title}: head-averaged attention per layer{grey}", fontsize=10, parse_math=False)
        written += _save(plt, fig, directory / "layers_mean", formats)

        rest = e.sink() is not None and e.visible > 1  # a third panel: the bars without the first token
        fig, axes = plt.subplots(1, 3 if rest else 2, figsize=((2.6 if rest else 2) * size + 1, size),
                                 gridspec_kw={"width_ratios": [1, 0.6, 0.6] if rest else [1, 0.6]})
        _heatmap(axes[0], e.rollout, labels, f"{title}: attention rollout (Abnar & Zuidema 2020){grey}", masked)
        seen = f",\nof the {e.visible} tokens up to it" if e.causal else ""
        _bars(axes[1], e, e.rollout_row, range(e.visible), f"rollout of {e.tokens[e.focus]!r} (token {e.focus}){seen}",
              "share of the final representation")
        if rest:
            _bars(axes[2], e, e.rollout_rest(), range(1, e.visible), f"without the first token, {e.tokens[0]!r}",
                  "share of what the first token leaves")
        written += _save(plt, fig, directory / "rollout", formats)
    return written
