"""What the page (``html.py``) and the figures (``figures.py``) draw: a view's data, without the code that builds
it (``views.py``) or the model run behind an explanation (``explanation.py``).

The renderers sit below both and take this data:

- :class:`ViewData`: the maps, their two :class:`Axis` objects, and how to draw them. ``views.View`` is a
  ``ViewData`` that can also save and display itself.
- :class:`ExplanationData`: what the page and the figures read from an ``Explanation`` beyond its view (the
  per-layer table and the rollout), as a protocol.
- :func:`as_view_data`: a renderer's ``source``, a view or a :class:`ViewSource`, anything that becomes one
  through its ``to_view()`` method (an ``Explanation``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from .sink import Sink

Kind = Literal["self", "cross", "image"]


@dataclass(frozen=True)
class Axis:
    """One axis of the maps: the tokens at full resolution and the M ranges [start, end) the maps are pooled
    into ((i, i + 1) for every token when they are not)."""

    tokens: tuple[str, ...]
    bins: tuple[tuple[int, int], ...]
    special: tuple[bool, ...]

    @property
    def pooled(self) -> bool:
        return len(self.bins) != len(self.tokens)

    def labels(self) -> list[str]:
        """A label per bin: the token itself, or "first…last" for a pooled range."""
        return [self.tokens[a] if b - a == 1 else f"{self.tokens[a]}…{self.tokens[b - 1]}" for a, b in self.bins]

    def bin_of(self, index: int) -> int:
        return next(i for i, (a, b) in enumerate(self.bins) if a <= index < b)


@dataclass(frozen=True)
class PatchImage:
    """The image a view's key axis lies over.

    Attributes:
        pixels: (h, w, 3) uint8, at most ``views.MAX_IMAGE_SIDE`` pixels on the longer side.
        grid: (rows, cols) patches; key ``prefix + r * cols + c`` is the patch in row r, column c.
        prefix: leading key tokens that are no patch ([CLS], registers).
        query_patches: the queries are the same tokens as the keys (clicking a patch picks it as the query).
    """

    pixels: np.ndarray
    grid: tuple[int, int]
    prefix: int
    query_patches: bool


class ExplanationData(Protocol):
    """What the page and the figures read from an explanation (``attnkit.inspect.Explanation``) beyond its view:
    its model, text, per-layer table and rollout. Shapes: N tokens, M bins, L layers, H heads."""

    text: str
    model_name: str
    tokens: list[str]
    focus: int
    causal: bool
    focus_rows: Tensor  # (L, H, N)
    rollout: Tensor  # (M, M)
    rollout_row: Tensor  # (N,)

    @property
    def visible(self) -> int: ...

    @property
    def pooled(self) -> bool: ...

    def layer_table(self, top: int = 3) -> tuple[list[str], list[list[str]]]: ...

    def rollout_rest(self) -> Tensor: ...

    def sink(self) -> Sink | None: ...

    def attribution_data(self) -> dict[str, object] | None: ...


@dataclass(frozen=True)
class ViewData:
    """Attention maps ready for the page and the figures. Built as a ``views.View`` by ``view`` or ``as_view``
    (from an ``Explanation``), which check every field.

    Attributes:
        maps: (L, H, Mq, Mk) float32 weights in [0, 1], pooled as ``queries.bins`` x ``keys.bins``.
        queries, keys: the two axes (the same object for self-attention).
        kind: "self", "cross" or "image".
        causal: later keys are masked: query ``i`` sees keys ``0 .. i + offset``.
        offset: Nk - Nq, where query 0 sits on the key axis (bottom-right alignment).
        title: shown as the page's heading and the figures' titles.
        focus: a query token index the page starts from (a decoder's last token, an image view's first query),
            or None.
        layer, head: the map shown in detail first.
        notes: lines shown under the heading.
        sink: one sentence naming a first-token attention sink (``sink.find_sink``), or None.
        image: the image under the key axis, or None.
        explanation: the ``Explanation`` this view shows, which adds its table and rollout; else None.
    """

    maps: Tensor
    queries: Axis
    keys: Axis
    kind: Kind
    causal: bool
    offset: int
    title: str
    focus: int | None
    layer: int
    head: int
    notes: list[str] = field(default_factory=list)
    sink: str | None = None
    image: PatchImage | None = None
    explanation: ExplanationData | None = None

    @property
    def num_layers(self) -> int:
        return self.maps.shape[0]

    @property
    def num_heads(self) -> int:
        return self.maps.shape[1]

    def masked_cells(self) -> Tensor:
        """(Mq, Mk) bool: the cells no query of the row's bin may attend to (every key of the column's bin comes
        after the last of them, with ``offset``); all False unless ``causal``."""
        q_ends = torch.tensor([b for _, b in self.queries.bins])  # (Mq,)
        k_starts = torch.tensor([a for a, _ in self.keys.bins])  # (Mk,)
        return (k_starts[None, :] > q_ends[:, None] - 1 + self.offset) & self.causal


class ViewSource(Protocol):
    """Anything that becomes a view (``Explanation`` is one)."""

    def to_view(self) -> ViewData: ...


def as_view_data(source: ViewData | ViewSource) -> ViewData:
    """``source`` as the data a renderer draws: a view as it is; anything else through its ``to_view()`` method
    (an ``Explanation`` has one), so that the renderers need not know the classes above them."""
    if isinstance(source, ViewData):
        return source
    to_view = getattr(source, "to_view", None)
    made = to_view() if callable(to_view) else None
    if not isinstance(made, ViewData):
        raise TypeError(f"expected an attnkit.inspect View or Explanation, got {type(source).__name__}")
    return made
