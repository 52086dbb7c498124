"""The self-contained interactive HTML page of a :class:`~attnkit.inspect.views.View` (or an
:class:`~attnkit.inspect.Explanation`, which becomes one).

One file, readable offline and safe to open: the page's CSS and JavaScript (``assets/view.css``,
``assets/view.js``) are inlined, the data sits in a ``<script type="application/json">`` element, and a
Content-Security-Policy allows only that one inline script (by its hash) and no network access at all.
Every string of the data (tokens, titles, text) reaches the page only through JSON and ``textContent``, so a
token such as ``</script>`` or ``<img onerror=...>`` shows as text and runs nothing.

Sections: a header (title, shape, notes, an attention sink in one sentence when there is one); for an
explanation, the focus token's per-layer table (as in the terminal); the head view (BertViz-style lines from
each query token on the left to the key tokens on the right, one colour per head; an explanation of a long
text draws only the focus token's full-resolution row); for an image view, the image with one query's
attention over its patches; the model view (every layer x head as a small map; activating one shows it in
detail and scrolls there); the detail heatmap; for an explanation, the rollout heatmap and bars. A causal
view draws the cells a query cannot see (later tokens) grey, as masked, not as zero weights. Every heatmap
has a colour legend; the page follows the reader's light or dark scheme, fits a 390 px screen, and every
control works from the keyboard (Tab, Enter/Space, arrow keys in the token columns and on a heatmap).

    >>> write_html(explain("The animal didn't cross the street because it was too tired"), "out/view.html")

In a notebook, :func:`notebook_html` puts the same page in an ``<iframe srcdoc>``: its ids, CSS and script
stay inside the frame, so several views in one notebook never clash, and it needs no network either.

Data size: maps are stored as uint8 (weight * 255, error <= 0.002), an explanation's focus rows and rollout as
uint16 (error <= 8e-6), base64-encoded: a 6 x 12 x 128 x 128 pooled explanation is ~1.6 MB.
"""

from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
from torch import Tensor

from ..files import write_text
from .viewdata import ExplanationData, ViewData, ViewSource, as_view_data

# Characters that must not appear raw inside a <script> element's JSON (no token can close the element
# or open a comment); JSON.parse turns the \uXXXX escapes back into the characters.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_FRAMES = itertools.count()  # numbers each notebook frame, so that no two share an id

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>attnkit attention view</title>
<style>{css}</style>
</head>
<body>
<header id="header">
<h1 id="title">attnkit attention view</h1>
<dl id="facts"></dl>
<ul id="notes"></ul>
<p id="sink" hidden></p>
<noscript>This view needs JavaScript.</noscript>
</header>
<main>
<section id="layer-table" hidden><h2>Focus token, per layer</h2>
<p class="hint" id="table-hint"></p>
<div class="scroll"><table id="focus-table" class="text-table"></table></div>
</section>
<section id="attribution-view" hidden><h2>Attention vs attribution</h2>
<p class="hint" id="attribution-lead"></p>
<div class="scroll"><table id="attribution-methods" class="text-table"></table></div>
<p id="attribution-layers" class="hint"></p>
<ul id="attribution-notes"></ul>
<p id="attribution-reading"></p>
<h3>Per token</h3>
<p class="hint">Each method's score for each token (shaded against the method's largest), most affected by the
ablation first.</p>
<div class="scroll"><table id="attribution-tokens" class="text-table"></table></div>
</section>
<section id="head-view" hidden><h2>Head view</h2>
<div class="controls"><label>layer <select id="head-layer"></select></label>
<span id="head-chips" role="group" aria-label="heads shown"></span></div>
<p class="hint" id="head-hint"></p>
<div class="scroll"><svg id="head-svg" role="group" aria-label="query tokens (left) and key tokens (right)"></svg></div>
</section>
<section id="image-view" hidden><h2>Image</h2>
<div class="controls"><label>query <select id="image-query"></select></label>
<label>layer <select id="image-layer"></select></label>
<label>head <select id="image-head"></select></label></div>
<p class="hint" id="image-hint"></p>
<canvas id="image-canvas"></canvas>
<div id="image-legend"></div>
<p class="hint" id="image-prefix"></p>
</section>
<section id="model-view"><h2>Model view</h2>
<p class="hint" id="model-hint">Every head's map (rows: queries, columns: keys). Click one, or Tab to it and
press Enter, to show it in detail.</p>
<div id="model-legend"></div>
<div class="scroll"><div id="model-grid"></div></div>
</section>
<section id="detail-view" tabindex="-1"><h2>Detail: <span id="detail-label"></span></h2>
<div class="controls"><label>layer <select id="detail-layer"></select></label>
<label>head <select id="detail-head"></select></label></div>
<div id="detail-map"></div>
</section>
<section id="rollout-view" hidden><h2>Rollout</h2>
<p class="hint" id="rollout-hint"></p>
<div class="side-by-side"><div id="rollout-map"></div><div id="rollout-bars" class="bars"></div>
<div id="rollout-rest" class="bars" hidden></div></div>
</section>
</main>
<div id="tip" hidden></div>
<script type="application/json" id="attnkit-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def _asset(name: str) -> str:
    text = resources.files("attnkit.inspect").joinpath("assets", name).read_text(encoding="utf-8")
    if "</script" in text.lower() or "</style" in text.lower():
        raise ValueError(f"assets/{name} must not contain '</script' or '</style': it is inlined into the page")
    return text


def _pack(values: Tensor | np.ndarray, nbytes: int) -> dict:
    """Weights in [0, 1] as little-endian uint8 / uint16 (weight * scale), base64-encoded."""
    scale = 255 if nbytes == 1 else 65535
    array = values.detach().float().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values, np.float32)
    quantized = np.clip(np.rint(np.nan_to_num(array, nan=0.0) * scale), 0, scale)
    return {"shape": list(array.shape), "bytes": nbytes, "scale": scale,
            "data": base64.b64encode(quantized.astype("<u1" if nbytes == 1 else "<u2").tobytes()).decode("ascii")}


def _explanation(e: ExplanationData) -> dict:
    """What only an explanation adds: the model, the text, the per-layer table and the rollout."""
    header, rows = e.layer_table()
    return {
        "model": e.model_name, "text": e.text, "visible": e.visible, "pooled": e.pooled,
        "table": {"header": header, "rows": rows},
        "focusRows": _pack(e.focus_rows, 2),  # (L, H, N)
        "rollout": _pack(e.rollout, 2),  # (M, M)
        "rolloutRow": _pack(e.rollout_row, 2),  # (N,)
        # (N,) a decoder's rollout without the first token, renormalized: its own entries are too small for
        # uint16 when the first token takes nearly all (a 30-layer decoder leaves it ~1e-6)
        "rolloutRest": _pack(e.rollout_rest(), 2) if e.causal else None,
        "attribution": e.attribution_data(),  # None unless explain(..., attribution=True)
    }


def _image(v: ViewData) -> dict | None:
    if v.image is None:
        return None
    pixels = v.image.pixels  # (h, w, 3) uint8
    return {"width": pixels.shape[1], "height": pixels.shape[0], "rows": v.image.grid[0], "cols": v.image.grid[1],
            "prefix": v.image.prefix, "queryPatches": v.image.query_patches,
            "pixels": base64.b64encode(np.ascontiguousarray(pixels).tobytes()).decode("ascii")}


def _payload(v: ViewData) -> dict:
    same = v.keys is v.queries
    return {
        "title": v.title, "kind": v.kind, "causal": v.causal, "offset": v.offset,
        "queryTokens": list(v.queries.tokens), "querySpecial": list(v.queries.special),
        "queryBins": [list(b) for b in v.queries.bins], "queryLabels": v.queries.labels(),
        # null: the keys are the queries (self-attention)
        "keyTokens": None if same else list(v.keys.tokens), "keySpecial": None if same else list(v.keys.special),
        "keyBins": None if same else [list(b) for b in v.keys.bins], "keyLabels": None if same else v.keys.labels(),
        "focus": v.focus, "layer": v.layer, "head": v.head, "notes": list(v.notes), "sink": v.sink,
        "maps": _pack(v.maps, 1),  # (L, H, Mq, Mk)
        "image": _image(v),
        "explanation": None if v.explanation is None else _explanation(v.explanation),
    }


def _script_json(payload: dict) -> str:
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    for char, escape in _SCRIPT_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def render_html(source: ViewData | ViewSource) -> str:
    """The page as one string: deterministic (the same view gives the same bytes), no network.

    Args:
        source: a :class:`View` (from :func:`~attnkit.inspect.view`), or an :class:`Explanation` (from
            :func:`~attnkit.inspect.explain`, or built directly; its ``to_view()`` checks the shapes).

    Returns:
        A complete HTML document, UTF-8 text (ASCII apart from the assets).
    """
    v = as_view_data(source)
    js = _asset("view.js")
    script_hash = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")
    # No source may be fetched (default-src 'none'); only this page's own script runs, matched by its hash,
    # which also disables inline event handlers; canvases read back as data: URLs.
    csp = (f"default-src 'none'; script-src 'sha256-{script_hash}'; style-src 'unsafe-inline'; "
           f"img-src data:; base-uri 'none'; form-action 'none'")
    return _PAGE.format(csp=csp, css=_asset("view.css"), data=_script_json(_payload(v)), js=js)


def write_html(source: ViewData | ViewSource, path: str | os.PathLike) -> Path:
    """Write :func:`render_html` to ``path`` (parent folders created) whole or not at all (``attnkit.files``),
    so a reader never sees half a page. Returns the path."""
    return write_text(Path(path), render_html(source))


def notebook_html(source: ViewData | ViewSource, *, height: int = 720) -> str:
    """The page for a notebook cell (``_repr_html_``): an ``<iframe srcdoc>`` holding :func:`render_html`'s page,
    escaped as an attribute. The frame keeps the page's ids, styles and script apart from the notebook's and
    from other views'; the page's script fits the frame's height to its content (``height`` px until then)."""
    page = render_html(source)
    digest = hashlib.sha256(page.encode("utf-8")).hexdigest()[:12]
    frame_id = f"attnkit-view-{digest}-{next(_FRAMES)}"
    return (f'<iframe id="{frame_id}" class="attnkit-view" title="attnkit attention view" '
            f'style="width: 100%; height: {int(height)}px; border: 0;" srcdoc="{html.escape(page, quote=True)}">'
            f"</iframe>")
