"""``view``: any attention map as the interactive page and the figures that ``explain`` gets.

Maps come in as probabilities, ``(heads, Nq, Nk)`` or ``(layers, heads, Nq, Nk)`` (a tensor, an array, or
``capture(...).maps`` with a batch of one), and are drawn as one of three kinds:

- **self-attention** (``key_tokens=None``): the keys are the query tokens; a decoder's maps (every weight on a
  later key exactly zero) are recognised as causal and drawn so: later keys masked (grey), not zero weights;
- **cross-attention** (``key_tokens`` given): queries and keys are different tokens, e.g. a translation's
  target words attending to its source words; ``causal=True`` for a decoder reading a KV cache, whose query
  ``i`` sits at key position ``i + Nk - Nq`` (bottom-right, as ``attnkit.attention`` aligns it);
- **image patches** (``image=`` an (H, W) or (H, W, C) array): the key axis is ``prefix_tokens`` leading tokens
  that are no patch (a ViT's [CLS]) followed by the ``patch_grid=(rows, cols)`` patches in row-major order (key
  ``prefix_tokens + r * cols + c`` is the patch in row ``r``, column ``c``), and a query's row is drawn over the
  image. ``query_tokens=None`` means the queries are those same tokens (a ViT's self-attention).

    >>> v = view(maps, query_tokens=["le", "chat", "dort"], key_tokens=["the", "cat", "sleeps"], title="fr-en")
    >>> v.save("out/alignment.html")      # the self-contained offline page
    >>> v.save_figures("out/")            # PNG + SVG with matplotlib
    >>> v                                 # in Jupyter: shown inline (``_repr_html_``), no network

Axes longer than ``max_tokens`` are pooled into that many token ranges, as ``explain`` pools (a query bin's row
is the mean of its queries' rows, a key bin's column the sum over its keys); an image's patch axes never are.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..functional.checks import check_index, check_int
from .capture import Capture
from .figures import Format, write_figures
from .html import notebook_html, render_html, write_html
from .pooling import make_bins, pool
from .sink import find_sink
from .viewdata import Axis, Kind, PatchImage, ViewData, ViewSource, as_view_data

MAX_CELLS = 16_000_000  # map cells on one page (one byte each, ~21 MB of base64): beyond, ask for fewer
MAX_IMAGE_SIDE = 512  # an image is stored at most this many pixels on its longer side
ROUNDING = 1e-3  # weights up to 1 + this (half-precision rounding) count as 1
SINK_ALSO = "it is the first column of every map below"


class View(ViewData):
    """Attention maps ready for the page (:meth:`save`, :meth:`_repr_html_`) and figures (:meth:`save_figures`).

    Built by :func:`view` or :func:`as_view` (from an ``Explanation``), which check every field. The fields are
    :class:`~attnkit.inspect.viewdata.ViewData`'s: ``maps`` (L, H, Mq, Mk), ``queries`` and ``keys`` (each an
    ``Axis``), ``kind``, ``causal``, ``offset``, ``title``, ``focus``, ``layer``, ``head``, ``notes``, ``sink``,
    ``image`` and ``explanation``.
    """

    def html(self) -> str:
        """The page as one string (:func:`attnkit.inspect.html.render_html`)."""
        return render_html(self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the self-contained page to ``path`` (parent folders created), whole or not at all."""
        return write_html(self, path)

    def save_figures(self, directory: str | os.PathLike[str],
                     formats: Sequence[Format] = ("png", "svg")) -> list[Path]:
        """Write the figures (:func:`attnkit.inspect.figures.write_figures`) into ``directory``."""
        return write_figures(self, directory, formats)

    def _repr_html_(self) -> str:
        return notebook_html(self)

    def __repr__(self) -> str:
        q, k = len(self.queries.tokens), len(self.keys.tokens)
        return (f"View({self.kind}{', causal' if self.causal else ''}: {self.num_layers} layers x {self.num_heads} "
                f"heads, {q} queries x {k} keys, title={self.title!r})")


# ---- checks ------------------------------------------------------------------------------------------------

def _stack(maps: object) -> Tensor:
    """(L, H, Nq, Nk) float32 from a tensor or array of 3 or 4 dims, a Capture, or a list of per-layer maps."""
    if isinstance(maps, Capture):
        maps = maps.maps
    if isinstance(maps, (list, tuple)):
        if not maps:
            raise ValueError("maps is an empty list; pass at least one layer's map")
        missing = [i for i, m in enumerate(maps) if m is None]
        if missing:
            raise ValueError(f"maps has no map for layers {missing} (not captured): pass only the layers recorded")
        layers = [_as_tensor(m, f"maps[{i}]") for i, m in enumerate(maps)]
        for i, m in enumerate(layers):
            if m.dim() == 4 and m.shape[0] != 1:
                raise ValueError(f"maps[{i}] holds a batch of {m.shape[0]}: pass one example, e.g. "
                                 f"[m[0] for m in maps]")
            if m.dim() not in (3, 4):
                raise ValueError(f"maps[{i}] must be (heads, Nq, Nk) or (1, heads, Nq, Nk), got {tuple(m.shape)}")
        layers = [m[0] if m.dim() == 4 else m for m in layers]
        if len({tuple(m.shape) for m in layers}) > 1:
            raise ValueError(f"maps' layers differ in shape: {[tuple(m.shape) for m in layers]}")
        return torch.stack(layers)
    tensor = _as_tensor(maps, "maps")
    if tensor.dim() not in (3, 4):
        raise ValueError(f"maps must be (heads, Nq, Nk) or (layers, heads, Nq, Nk), got shape {tuple(tensor.shape)}")
    return tensor[None] if tensor.dim() == 3 else tensor


def _as_tensor(value: object, name: str) -> Tensor:
    if isinstance(value, Tensor):
        tensor = value.detach().cpu()
    else:
        try:
            tensor = torch.from_numpy(np.asarray(value))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a tensor or array of numbers, got {type(value).__name__}") from error
    if not (tensor.is_floating_point() or tensor.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold numbers, got dtype {tensor.dtype}")
    return tensor


def _check_weights(maps: Tensor) -> Tensor:
    """``maps`` as float32 in [0, 1]: ValueError naming the first bad cell otherwise."""
    if 0 in maps.shape:
        raise ValueError(f"maps has an empty axis: shape {tuple(maps.shape)} (layers, heads, Nq, Nk)")
    maps = maps.float()
    for bad, what in ((~torch.isfinite(maps), "a non-finite value"),
                      ((maps < -ROUNDING) | (maps > 1 + ROUNDING), "a weight outside [0, 1]")):
        if bad.any():
            where = tuple(bad.nonzero()[0].tolist())
            raise ValueError(f"maps has {what}, {maps[where].item()} at (layer, head, query, key) = {where}, "
                             f"in {int(bad.sum())} cells: views show attention probabilities (softmax first)")
    return maps.clamp(0.0, 1.0)


def _tokens(name: str, tokens: Sequence[str], count: int, axis: str, shape: tuple[int, ...]) -> tuple[str, ...]:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name} must be a sequence of strings, got {type(tokens).__name__}")
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(token).__name__} {token!r}")
    if len(tokens) != count:
        raise ValueError(f"{name} has {len(tokens)} tokens but the maps have {count} {axis} "
                         f"(shape {shape}: layers, heads, Nq, Nk)")
    return tuple(tokens)


def _causal_cells(nq: int, nk: int) -> Tensor:
    """(Nq, Nk) bool: the keys after each query, query i sitting at key position i + Nk - Nq."""
    return torch.ones(nq, nk, dtype=torch.bool).triu(nk - nq + 1)


def _causal(maps: Tensor, causal: bool | None, kind: Kind) -> bool:
    """Whether to draw the maps as a decoder's: as given (True checked against the maps), or for self-attention
    when every weight on a later key is exactly zero."""
    if causal is not None and not isinstance(causal, bool):
        raise TypeError(f"causal must be True, False or None (detect), got {causal!r}")
    later = _causal_cells(*maps.shape[-2:])
    weights = maps[..., later]  # (L, H, cells)
    if causal is None:
        return kind == "self" and weights.numel() > 0 and bool((weights == 0).all())
    if causal and weights.numel() and weights.max() > 1e-6:
        layer, head, cell = np.unravel_index(int(weights.argmax()), tuple(weights.shape))
        q, k = later.nonzero()[cell].tolist()
        raise ValueError(f"causal=True but the maps give weight {weights.max():.3g} to a later key (layer {layer}, "
                         f"head {head}, query {q}, key {k}): a decoder's maps are zero there")
    return causal


# ---- images ------------------------------------------------------------------------------------------------

def _pixels(image: object) -> np.ndarray:
    """(h, w, 3) uint8 from an (H, W) or (H, W, C) image (C = 1, 3 or 4; uint8, or floats in [0, 1])."""
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be (H, W) or (H, W, C), got {array.shape}: a (C, H, W) tensor needs "
                         f"image.permute(1, 2, 0)")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)) or 0 in array.shape:
        raise ValueError(f"image must be (H, W) or (H, W, C) with C = 1, 3 or 4, got shape {array.shape}")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"image: float pixels must be finite and in [0, 1], got [{array.min()}, {array.max()}]")
        pixels = np.rint(array * 255).astype(np.uint8)
    else:
        raise TypeError(f"image must be uint8 or float in [0, 1], got dtype {array.dtype}")
    pixels = pixels.reshape(*pixels.shape[:2], -1)[..., :3]  # alpha dropped
    pixels = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
    return _shrink(pixels)


def _shrink(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    if max(h, w) <= MAX_IMAGE_SIDE:
        return np.ascontiguousarray(pixels)
    scale = MAX_IMAGE_SIDE / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()  # (1, 3, h, w)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _grid(nk: int, patch_grid: tuple[int, int] | None, prefix: int) -> tuple[int, int]:
    check_int("prefix_tokens", prefix, minimum=0, maximum=nk - 1)
    patches = nk - prefix
    if patch_grid is None:
        side = math.isqrt(patches)
        if side * side != patches:
            hint = " (pass prefix_tokens=1 for a leading [CLS] token)" if math.isqrt(nk - 1) ** 2 == nk - 1 else ""
            raise ValueError(f"the maps' {nk} keys less prefix_tokens={prefix} leave {patches} patches, not a square "
                             f"grid: pass patch_grid=(rows, cols){hint}")
        return side, side
    if not isinstance(patch_grid, (tuple, list)) or len(patch_grid) != 2:
        raise TypeError(f"patch_grid must be (rows, cols), got {patch_grid!r}")
    rows, cols = (check_int(f"patch_grid[{i}]", v) for i, v in enumerate(patch_grid))
    if rows * cols != patches:
        raise ValueError(f"patch_grid={rows, cols} has {rows * cols} patches but the maps' {nk} keys less "
                         f"prefix_tokens={prefix} leave {patches}")
    return rows, cols


def _patch_labels(nk: int, grid: tuple[int, int], prefix: int) -> tuple[str, ...]:
    """"[0]" for each leading non-patch token, then "(row,col)" for each patch."""
    cols = grid[1]
    return (*(f"[{i}]" for i in range(prefix)), *(f"({p // cols},{p % cols})" for p in range(nk - prefix)))


# ---- building views ----------------------------------------------------------------------------------------

def _axes(shape: tuple[int, ...], query_tokens: Sequence[str] | None, key_tokens: Sequence[str] | None,
          image: PatchImage | None) -> tuple[Kind, tuple[str, ...], tuple[str, ...]]:
    """The kind of view and each axis' tokens, checked against the maps' (L, H, Nq, Nk) shape."""
    nq, nk = shape[-2:]
    if image is not None:
        keys = _tokens("key_tokens", key_tokens, nk, "keys", shape) if key_tokens is not None else \
            _patch_labels(nk, image.grid, image.prefix)
        if query_tokens is None and nq != nk:
            raise ValueError(f"query_tokens=None means the queries are the image's tokens, but the maps have {nq} "
                             f"queries and {nk} keys (shape {shape}): pass query_tokens")
        queries = keys if query_tokens is None else _tokens("query_tokens", query_tokens, nq, "queries", shape)
        return "image", queries, keys
    if query_tokens is None:
        raise ValueError("query_tokens is required (None only for an image view whose queries are its patches)")
    queries = _tokens("query_tokens", query_tokens, nq, "queries", shape)
    if key_tokens is None:
        if nq != nk:
            raise ValueError(f"key_tokens=None means self-attention over query_tokens, but the maps have {nq} "
                             f"queries and {nk} keys (shape {shape}): pass key_tokens")
        return "self", queries, queries
    keys = _tokens("key_tokens", key_tokens, nk, "keys", shape)
    return ("self" if keys == queries else "cross"), queries, keys


def _axis(tokens: tuple[str, ...], max_tokens: int | None) -> Axis:
    bins = make_bins(len(tokens), max_tokens or len(tokens))
    return Axis(tokens, tuple(bins), (False,) * len(tokens))


def _detail(maps: Tensor, focus: int | None, layer: int | None, head: int | None) -> tuple[int, int]:
    """The map shown first: as given (checked), else the last layer and in it the head whose rows (the focus
    token's, else all) are most peaked."""
    num_layers, num_heads = maps.shape[:2]
    layer = num_layers - 1 if layer is None else check_index("layer", layer, num_layers, "the maps", "layers")
    if head is not None:
        return layer, check_index("head", head, num_heads, "the maps", "heads")
    rows = maps[layer] if focus is None else maps[layer, :, focus:focus + 1]  # (H, rows, Nk)
    return layer, int(rows.amax(-1).mean(-1).argmax())


def view(maps: Tensor | np.ndarray | Capture | Sequence[Tensor], *, query_tokens: Sequence[str] | None,
         key_tokens: Sequence[str] | None = None, title: str | None = None, image: Tensor | np.ndarray | None = None,
         patch_grid: tuple[int, int] | None = None, prefix_tokens: int = 0, causal: bool | None = None,
         focus: int | None = None, layer: int | None = None, head: int | None = None,
         max_tokens: int | None = 128) -> View:
    """A view of attention maps: self-attention, cross-attention, or a key axis over image patches.

    Args:
        maps: probabilities (H, Nq, Nk) or (L, H, Nq, Nk) (a tensor or array), or one map per layer, each
            (H, Nq, Nk) or (1, H, Nq, Nk) -- e.g. ``capture(model).maps`` for a batch of one.
        query_tokens: Nq display strings; None only with ``image`` when the queries are its tokens too.
        key_tokens: Nk display strings; None: the keys are the query tokens (self-attention), or with
            ``image``, labels "[i]" for the leading tokens and "(row,col)" for the patches.
        title: the page's heading and the figures' titles (default "attention").
        image: (H, W) or (H, W, C) pixels, uint8 or floats in [0, 1], that the key axis' patches cover.
        patch_grid: (rows, cols) of patches on the key axis, row-major; None: a square grid.
        prefix_tokens: how many keys come before the patches and are none ([CLS]: 1).
        causal: draw later keys as masked (query i sees keys up to i + Nk - Nq); None detects it for
            self-attention (every weight on a later key is exactly zero). A decoder's view names a first-token
            attention sink (at least half the focus query's attention, head-averaged, in some layer).
        focus: a query index to start from; None: a decoder's last query, an image view's first, else none.
        layer, head: the map shown in detail first; None: the last layer's most peaked head.
        max_tokens: a text axis longer than this is pooled into this many token ranges; None: never.

    Raises:
        ValueError / TypeError naming the argument: maps of another rank, tokens that do not match the maps'
        axes, non-finite weights or weights outside [0, 1], a patch grid that does not fit the keys.
    """
    stacked = _stack(maps)
    shape = tuple(stacked.shape)
    weights = _check_weights(stacked)  # (L, H, Nq, Nk)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    if max_tokens is not None:
        check_int("max_tokens", max_tokens, minimum=2)
    picture = None
    if image is not None:
        grid = _grid(shape[-1], patch_grid, prefix_tokens)
        picture = PatchImage(_pixels(image), grid, prefix_tokens, query_patches=query_tokens is None)
    elif patch_grid is not None or prefix_tokens:
        raise ValueError("patch_grid and prefix_tokens describe an image's patches: pass image= too")
    kind, q_tokens, k_tokens = _axes(shape, query_tokens, key_tokens, picture)
    is_causal = _causal(weights, causal, kind)
    if focus is None:
        focus = shape[-2] - 1 if is_causal else 0 if picture is not None else None
    else:
        focus = check_index("focus", focus, shape[-2], "the maps", "queries")
    layer, head = _detail(weights, focus, layer, head)
    queries = _axis(q_tokens, None if picture is not None and picture.query_patches else max_tokens)
    keys = queries if k_tokens is q_tokens else _axis(k_tokens, None if picture is not None else max_tokens)
    return _assemble(weights, queries, keys, kind=kind, causal=is_causal, title=title or "attention", focus=focus,
                     layer=layer, head=head, image=picture)


def _assemble(weights: Tensor, queries: Axis, keys: Axis, **fields) -> View:
    """The View of full-resolution ``weights`` (L, H, Nq, Nk): pooled, with the notes and sink it needs."""
    pooled = pool(weights, list(queries.bins), list(keys.bins))
    cells = pooled.numel()
    if cells > MAX_CELLS:
        raise ValueError(f"maps would put {cells:,} cells on the page (shape {tuple(pooled.shape)}), more than "
                         f"{MAX_CELLS:,}: pass fewer layers or heads (e.g. maps[-4:]) or a smaller max_tokens")
    notes = []
    if queries.pooled or keys.pooled:
        notes.append(f"{len(queries.tokens)} queries x {len(keys.tokens)} keys, shown pooled into "
                     f"{len(queries.bins)} x {len(keys.bins)} token ranges (max_tokens)")
    sink = None
    focus = fields["focus"]
    if fields["causal"] and focus is not None and focus + weights.shape[-1] - weights.shape[-2] > 0:
        found = find_sink(weights[:, :, focus], keys.tokens[0])  # (L, H, Nk): the focus query's rows
        sink = None if found is None else found.sentence(repr(queries.tokens[focus]), SINK_ALSO)
    offset = len(keys.tokens) - len(queries.tokens)
    return View(maps=pooled.contiguous(), queries=queries, keys=keys, offset=offset, notes=notes, sink=sink,
                **fields)


def as_view(source: View | ViewSource) -> View:
    """``source`` as a :class:`View`: a view as it is; an ``Explanation`` through its ``to_view()``, with its maps
    (pooled as they are), its focus token, detail head, notes and sink sentence, and itself (for its table and
    rollout). TypeError for anything else."""
    made = as_view_data(source)
    if not isinstance(made, View):
        raise TypeError(f"expected an attnkit.inspect View or Explanation, got {type(source).__name__}")
    return made
