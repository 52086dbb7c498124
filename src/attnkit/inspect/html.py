"""The self-contained interactive HTML view of an :class:`~attnkit.inspect.Explanation`.

One file, readable offline and safe to open: the page's CSS and JavaScript (``assets/view.css``,
``assets/view.js``) are inlined, the data sits in a ``<script type="application/json">`` element, and a
Content-Security-Policy allows only that one inline script (by its hash) and no network access at all.
Token text reaches the page only through JSON and ``textContent``, so a token such as ``</script>`` or
``<img onerror=...>`` shows as text and runs nothing.

Views: a header (model, text, focus, notes, an attention sink in one sentence when there is one); the focus
token's per-layer table (as in the terminal); the head view (BertViz-style lines from each query token to
the key tokens, one colour per head; when the text is pooled, only the focus token's full-resolution row);
the model view (every layer x head as a small heatmap; click one to show it in detail); the detail heatmap;
the rollout heatmap with the focus token's rollout bars. A decoder's maps draw the cells a query cannot see
(later tokens) grey, as masked, not as zero weights; its bars list only the tokens up to the focus, and with a
sink the bars without the first token beside them.

    >>> from attnkit.inspect import explain
    >>> from attnkit.inspect.html import write_html
    >>> write_html(explain("The animal didn't cross the street because it was too tired"), "out/view.html")

Data size: maps are stored as uint8 (weight * 255, error <= 0.002), the focus rows and rollout as uint16
(error <= 8e-6), base64-encoded: a 6 x 12 x 128 x 128 pooled explanation is ~1.6 MB.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
from torch import Tensor

from ..files import write_text
from .explanation import Explanation

# Characters that must not appear raw inside a <script> element's JSON (no token can close the element
# or open a comment); JSON.parse turns the \uXXXX escapes back into the characters.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>attnkit attention view</title>
<style>{css}</style>
</head>
<body>
<header id="header">
<h1>attnkit attention view</h1>
<dl>
<dt>model</dt><dd id="model"></dd>
<dt>text</dt><dd id="text"></dd>
<dt>focus</dt><dd id="focus"></dd>
<dt>shape</dt><dd id="shape"></dd>
</dl>
<ul id="notes"></ul>
<p id="sink" hidden></p>
<noscript>This view needs JavaScript.</noscript>
</header>
<main>
<section id="layer-table"><h2>Focus token, per layer</h2>
<p class="hint" id="table-hint"></p>
<table id="focus-table"></table>
</section>
<section id="head-view"><h2>Head view</h2>
<div class="controls"><label>layer <select id="head-layer"></select></label><span id="head-chips"></span></div>
<p class="hint" id="head-hint"></p>
<svg id="head-svg"></svg>
</section>
<section id="model-view"><h2>Model view</h2>
<p class="hint" id="model-hint">Every head's map (rows: queries, columns: keys; colour ~ sqrt(weight)).
Click one to show it in detail.</p>
<div id="model-grid"></div>
</section>
<section id="detail-view"><h2>Detail: <span id="detail-label"></span></h2>
<div class="controls"><label>layer <select id="detail-layer"></select></label>
<label>head <select id="detail-head"></select></label></div>
<div id="detail-map"></div>
</section>
<section id="rollout-view"><h2>Rollout</h2>
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


def _pack(values: Tensor, nbytes: int) -> dict:
    """A tensor of weights in [0, 1] as little-endian uint8 / uint16 (weight * scale), base64-encoded."""
    scale = 255 if nbytes == 1 else 65535
    array = np.nan_to_num(values.detach().float().cpu().numpy(), nan=0.0)
    quantized = np.clip(np.rint(array * scale), 0, scale).astype("<u1" if nbytes == 1 else "<u2")
    return {"shape": list(array.shape), "bytes": nbytes, "scale": scale,
            "data": base64.b64encode(quantized.tobytes()).decode("ascii")}


def _check(e: Explanation) -> None:
    n, m = len(e.tokens), len(e.bins)
    expected = {"maps": (e.num_layers, e.num_heads, m, m), "focus_rows": (e.num_layers, e.num_heads, n),
                "rollout": (m, m), "rollout_row": (n,)}
    for name, shape in expected.items():
        if tuple(getattr(e, name).shape) != shape:
            raise ValueError(f"explanation.{name} has shape {tuple(getattr(e, name).shape)}, expected {shape} "
                             f"for {n} tokens in {m} bins")
    if not 0 <= e.focus < n or not 0 <= e.layer < e.num_layers or not 0 <= e.head < e.num_heads:
        raise ValueError(f"focus {e.focus}, layer {e.layer} or head {e.head} is out of range for {n} tokens, "
                         f"{e.num_layers} layers, {e.num_heads} heads")


def _payload(e: Explanation) -> dict:
    header, rows = e.layer_table()
    sink = e.sink_sentence(also="the table and the rollout bars below also rank the tokens without it")
    return {
        "model": e.model_name, "text": e.text, "tokens": list(e.tokens), "special": [bool(s) for s in e.special],
        "focus": e.focus, "layer": e.layer, "head": e.head, "causal": bool(e.causal), "pooled": e.pooled,
        "notes": list(e.notes), "bins": [list(b) for b in e.bins], "visible": e.visible, "sink": sink,
        "table": {"header": header, "rows": rows},
        "binLabels": e.bin_labels(),
        "maps": _pack(e.maps, 1),  # (L, H, M, M)
        "focusRows": _pack(e.focus_rows, 2),  # (L, H, N)
        "rollout": _pack(e.rollout, 2),  # (M, M)
        "rolloutRow": _pack(e.rollout_row, 2),  # (N,)
        # (N,) a decoder's rollout without the first token, renormalized: its own entries are too small for
        # uint16 when the first token takes nearly all (a 30-layer decoder leaves it ~1e-6)
        "rolloutRest": _pack(e.rollout_rest(), 2) if e.causal else None,
    }


def _script_json(payload: dict) -> str:
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    for char, escape in _SCRIPT_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def render_html(explanation: Explanation) -> str:
    """The page as one string: deterministic (the same explanation gives the same bytes), no network.

    Args:
        explanation: from :func:`~attnkit.inspect.explain` (or built directly; shapes are checked).

    Returns:
        A complete HTML document, UTF-8 text (ASCII apart from the assets).
    """
    _check(explanation)
    js = _asset("view.js")
    script_hash = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")
    # No source may be fetched (default-src 'none'); only this page's own script runs, matched by its hash,
    # which also disables inline event handlers; canvases read back as data: URLs.
    csp = (f"default-src 'none'; script-src 'sha256-{script_hash}'; style-src 'unsafe-inline'; "
           f"img-src data:; base-uri 'none'; form-action 'none'")
    return _PAGE.format(csp=csp, css=_asset("view.css"), data=_script_json(_payload(explanation)), js=js)


def write_html(explanation: Explanation, path: str | os.PathLike) -> Path:
    """Write :func:`render_html` to ``path`` (parent folders created) whole or not at all (``attnkit.files``),
    so a reader never sees half a page. Returns the path."""
    return write_text(Path(path), render_html(explanation))
