"""Paper-ready figures of any :class:`~attnkit.inspect.views.View` (or an :class:`~attnkit.inspect.Explanation`,
which becomes one) with matplotlib: PNG and SVG (text kept as text in the SVG, so labels stay editable), written
without a display.

    >>> write_figures(explain("The animal didn't cross the street because it was too tired"), "out/")
    [PosixPath('out/head_L5_H11.png'), PosixPath('out/head_L5_H11.svg'), PosixPath('out/layers_mean.png'), ...]
    >>> view(maps, query_tokens=fr, key_tokens=en).save_figures("out/")

A causal view's maps draw the cells a query cannot see (later tokens) grey and say so in the title: masked,
not zero weights. An explanation adds its rollout: the map, and bars listing (for a decoder) only the tokens up
to the focus token; with an attention sink (``Explanation.sink``), a third panel ranks the tokens without the
first one. An image view adds the focus query's head-averaged attention over the image, one panel per layer.

matplotlib is an optional dependency (``pip install "attnkit[viz]"``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from torch import Tensor

from ..files import atomic_path
from .outputs import FIGURE_FORMATS, HEAD_FIGURE, IMAGE_FIGURE, LAYERS_FIGURE, ROLLOUT_FIGURE
from .viewdata import ViewData, ViewSource, as_view_data

Format = Literal["png", "svg", "pdf"]
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


def _ticks(ax, labels: Sequence[str], *, x: bool = True, y: bool = True,
           column_labels: Sequence[str] | None = None) -> None:
    """Token labels on the y axis (``labels``, the queries) and the x axis (``column_labels``, default the same)."""
    for axis, names, on in (("y", labels, y), ("x", labels if column_labels is None else column_labels, x)):
        step = max(1, math.ceil(len(names) / MAX_LABELS))
        positions = list(range(0, len(names), step)) if on else []
        size = 8 if len(positions) <= 30 else 6
        getattr(ax, f"set_{axis}ticks")(positions)
        if on:
            getattr(ax, f"set_{axis}ticklabels")([names[i] for i in positions], fontsize=size, parse_math=False,
                                                 **({"rotation": 90} if axis == "x" else {}))


def _heatmap(ax, matrix: Tensor, labels: Sequence[str], title: str, masked: Tensor, *, x: bool = True,
             y: bool = True, column_labels: Sequence[str] | None = None):
    """``matrix`` (Mq, Mk) as an image, rows labelled ``labels`` and columns ``column_labels`` (default the same);
    cells where ``masked`` (Mq, Mk) is True are drawn ``MASKED``."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=MASKED)
    values = np.ma.masked_array(matrix.numpy(), mask=masked.numpy())
    image = ax.imshow(values, cmap=cmap, vmin=0.0, interpolation="nearest", aspect="equal")
    ax.set_title(title, fontsize=9, parse_math=False)
    _ticks(ax, labels, x=x, y=y, column_labels=column_labels)
    return image


def _bars(ax, tokens: Sequence[str], row: Tensor, candidates: range, title: str, xlabel: str) -> None:
    """Horizontal bars of ``row`` (N,) for the ``tokens`` in ``candidates``: all of them in text order, or the
    MAX_LABELS largest, largest on top."""
    index = list(candidates)
    order = index[::-1] if len(index) <= MAX_LABELS else \
        [index[i] for i in row[index].topk(MAX_LABELS).indices.flip(0).tolist()]
    ax.barh(range(len(order)), row[order].numpy(), color="#3b6fb6")
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([tokens[i] for i in order], fontsize=7, parse_math=False)
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
    if not formats or sorted(set(formats) - set(FIGURE_FORMATS)):
        raise ValueError(f"formats must be a non-empty subset of png, svg, pdf; got {formats}")
    return formats


def write_figures(source: ViewData | ViewSource, directory: str | os.PathLike[str],
                  formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write the figures of ``source`` into ``directory``, each in every format of ``formats`` ("png", "svg", "pdf"):

    - ``head_L{layer}_H{head}``: the detail map (the view's ``layer``, ``head``) with token labels;
    - ``layers_mean``: every layer's head-averaged map, side by side;
    - an explanation's ``rollout``: the rollout map, and the focus token's rollout row as bars;
    - an image view's ``image_q{focus}``: the focus query's head-averaged attention over the image, per layer.

    Returns the written paths. Each file is written atomically.
    """
    formats = check_formats(formats)
    plt = _pyplot()
    v = as_view_data(source)
    directory = Path(directory)
    # user text (titles, tokens) is drawn as it is: parse_math=False on every Text built from it, and no LaTeX,
    # where $ _ ^ % & # are markup too
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "attnkit", "font.size": 8, "text.usetex": False}):
        written = _maps(plt, v, directory, formats)
        if v.explanation is not None:
            written += _rollout(plt, v, directory, formats)
        if v.image is not None and v.focus is not None:
            written += _image(plt, v, directory, formats)
    return written


def _grey(v: ViewData) -> str:
    return "\n(grey: masked, a decoder's token sees no later token)" if v.causal else ""


def _maps(plt, v: ViewData, directory: Path, formats: Sequence[str]) -> list[Path]:
    """The detail map and the per-layer head means."""
    rows, cols = v.queries.labels(), v.keys.labels()
    masked = v.masked_cells()  # (Mq, Mk)
    labels = {"column_labels": cols}
    size = min(12.0, 3.0 + 0.22 * max(len(rows), len(cols)))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = _heatmap(ax, v.maps[v.layer, v.head], rows, f"{v.title}: layer {v.layer}, head {v.head}{_grey(v)}",
                     masked, **labels)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    written = _save(plt, fig, directory / HEAD_FIGURE.format(layer=v.layer, head=v.head), formats)

    columns = min(v.num_layers, 4)
    grid_rows = math.ceil(v.num_layers / columns)
    cell = min(4.0, 1.5 + 0.12 * max(len(rows), len(cols)))
    fig, axes = plt.subplots(grid_rows, columns, figsize=(cell * columns, cell * grid_rows), squeeze=False)
    for layer, ax in enumerate(axes.flat):
        if layer >= v.num_layers:
            ax.axis("off")
            continue
        _heatmap(ax, v.maps[layer].mean(0), rows, f"layer {layer} (mean of {v.num_heads} heads)", masked,
                 x=layer + columns >= v.num_layers, y=layer % columns == 0, **labels)
    fig.suptitle(f"{v.title}: head-averaged attention per layer{_grey(v)}", fontsize=10, parse_math=False)
    return written + _save(plt, fig, directory / LAYERS_FIGURE, formats)


def _rollout(plt, v: ViewData, directory: Path, formats: Sequence[str]) -> list[Path]:
    """An explanation's rollout map and its focus token's rollout bars (and, with a sink, without the first): the
    view's bins, labels and masked cells."""
    e = v.explanation
    assert e is not None
    labels = v.queries.labels()
    grey = "\n(grey: masked, a decoder's token sees no later token)" if e.causal else ""
    size = min(12.0, 3.0 + 0.22 * len(labels))
    rest = e.sink() is not None and e.visible > 1  # a third panel: the bars without the first token
    fig, axes = plt.subplots(1, 3 if rest else 2, figsize=((2.6 if rest else 2) * size + 1, size),
                             gridspec_kw={"width_ratios": [1, 0.6, 0.6] if rest else [1, 0.6]})
    _heatmap(axes[0], e.rollout, labels, f"{e.model_name}: attention rollout (Abnar & Zuidema 2020){grey}",
             v.masked_cells())
    seen = f",\nof the {e.visible} tokens up to it" if e.causal else ""
    tokens = v.queries.tokens  # as the terminal labels them: word pieces marked
    _bars(axes[1], tokens, e.rollout_row, range(e.visible), f"rollout of {tokens[e.focus]!r} (token {e.focus}){seen}",
          "share of the final representation")
    if rest:
        _bars(axes[2], tokens, e.rollout_rest(), range(1, e.visible), f"without the first token, {tokens[0]!r}",
              "share of what the first token leaves")
    return _save(plt, fig, directory / ROLLOUT_FIGURE, formats)


def _image(plt, v: ViewData, directory: Path, formats: Sequence[str]) -> list[Path]:
    """The focus query's head-averaged row over the image's patches, one panel per layer (at most 12)."""
    assert v.image is not None and v.focus is not None
    rows, cols = v.image.grid
    query = v.queries.bin_of(v.focus)
    layers = list(range(v.num_layers))[-12:]
    columns = min(len(layers), 4)
    fig, axes = plt.subplots(math.ceil(len(layers) / columns), columns, figsize=(3 * columns, 3 * math.ceil(
        len(layers) / columns)), squeeze=False)
    height, width = v.image.pixels.shape[:2]
    for ax in axes.flat:
        ax.axis("off")
    for layer, ax in zip(layers, axes.flat):
        patches = v.maps[layer, :, query, v.image.prefix:].mean(0).reshape(rows, cols).numpy()  # (rows, cols)
        ax.imshow(v.image.pixels, interpolation="nearest")
        ax.imshow(patches, cmap="viridis", alpha=0.6, extent=(0, width, height, 0), interpolation="nearest",
                  vmin=0.0)
        ax.set_title(f"layer {layer}", fontsize=9)
    fig.suptitle(f"{v.title}: attention of query {v.queries.tokens[v.focus]!r} over the image (mean of heads, "
                 f"colour scaled per panel)", fontsize=10, parse_math=False)
    return _save(plt, fig, directory / IMAGE_FIGURE.format(focus=v.focus), formats)
