"""``attnkit.inspect.view`` pages in a real browser: a cross-attention view, an image view, a decoder view and
two views in one notebook-like page -- no console error, no network request, no dialog; no sideways scroll at
390 px; dark and light; the keyboard path; a thumbnail brings the detail into view.

As tests/test_inspect_html.py: Debian's ``chromium`` through Playwright, one browser for the module; skipped,
with the reason, when either is missing (and failed instead under ATTNKIT_REQUIRE_BROWSER=1, as in CI).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import RecordedPage, softmax_maps

from attnkit.inspect import view

HOSTILE = ["<script>alert(1)</script>", "</script><script>window.__pwned=1</script>",
           "<img src=x onerror=window.__pwned=1>", "<!--"]
SOURCE = ["le", "chat", "noir", "dort", *HOSTILE]
TARGET = ["the", "black", "cat", "sleeps", "</title><img src=x onerror=window.__pwned=1>"]
NARROW = {"width": 390, "height": 800}




def cross_view():
    return view(softmax_maps(2, 4, len(TARGET), len(SOURCE)), query_tokens=TARGET, key_tokens=SOURCE,
                title="<b>fr</b> \u2192 en")


def image_view():
    yy, xx = np.mgrid[0:48, 0:72]
    image = np.stack([xx / 72, yy / 48, np.full_like(xx, 0.5, dtype=float)], -1)  # (48, 72, 3) floats
    return view(softmax_maps(2, 3, 1 + 4 * 6, 1 + 4 * 6, seed=1), query_tokens=None, image=image, patch_grid=(4, 6),
                prefix_tokens=1, title="vit")


def decoder_view():
    maps = softmax_maps(3, 4, 9, 9, causal=True, first=6.0, seed=2)
    return view(maps, query_tokens=["<s>", *(f"w{i}" for i in range(8))], title="decoder")


def wide_view():
    """12 heads (a model view wider than a phone), 90 tokens, some long (a head view and heatmap labels)."""
    tokens = [f"token{i}" if i % 9 else f"a-very-long-word-piece-number-{i}" for i in range(90)]
    return view(softmax_maps(2, 12, 90, 90, seed=3), query_tokens=tokens, title="wide " * 30)


def synthetic_attribution(n: int, focus: int, layers: int):
    """An ``Attribution`` of seeded random scores for n tokens (the page draws what it is given)."""
    from attnkit.inspect.attribution import METHODS, Attribution, spearman

    g = torch.Generator().manual_seed(5)
    scored = [t for t in range(n) if t != focus]
    index = torch.tensor(scored)
    scores = {m: torch.rand(n, generator=g, dtype=torch.float64) for m in METHODS}
    ablation = torch.rand(n, generator=g, dtype=torch.float64)
    attention = torch.rand(layers, n, generator=g)
    for values in (*scores.values(), ablation):
        values[focus] = 0.0
    correlations = {m: spearman(v[index], ablation[index]) for m, v in scores.items()}
    return Attribution(target="the focus token's final vector", scored=scored, scores=scores,
                       ablation=ablation, correlations=correlations,
                       layer_correlations=[spearman(a.double()[index], ablation[index]) for a in attention],
                       directions=32, notes=["note: <b>a note</b>"])


def explanation_view(tokens=None, attribution=False):
    """An explanation (its per-layer table and rollout bars too) of 40 long tokens; with ``attribution``, its
    attention-vs-attribution section too."""
    from attnkit.inspect import Explanation, as_view, rollout

    tokens = tokens or [f"{'long' * 8}{i}" for i in range(40)]
    probs = softmax_maps(4, 12, 40, 40, seed=4)
    rolled = rollout([m[None] for m in probs])[0]
    e = Explanation(text=" ".join(tokens), model_name="m" * 80, tokens=tokens, special=[False] * 40, focus=20,
                    layer=3, head=0, causal=False, maps=probs, bins=[(i, i + 1) for i in range(40)],
                    focus_rows=probs[:, :, 20].clone(), rollout=rolled, rollout_row=rolled[20].clone())
    if attribution:
        e.attributions = synthetic_attribution(40, 20, 4)
    return as_view(e)


def attribution_view():
    return explanation_view([*HOSTILE, *(f"{'long' * 8}{i}" for i in range(36))], attribution=True)


class Page(RecordedPage):
    """A file opened in the browser, with every error, request and dialog recorded."""

    def __init__(self, browser, path, viewport=None, scheme="light"):
        super().__init__(browser, path, color_scheme=scheme, **({"viewport": viewport} if viewport else {}))
        self.page.goto(self.uri)

    def ready(self, frame=None):
        (frame or self.page).wait_for_selector("body[data-ready=true]", timeout=10_000)
        return self

    def pixels(self, selector: str) -> np.ndarray:
        """(height, width, 3) of a canvas."""
        shape_and_data = self.page.evaluate("""sel => { const c = document.querySelector(sel);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return JSON.stringify([c.height, c.width, Array.from(d)]); }""", selector)
        height, width, flat = json.loads(shape_and_data)
        return np.array(flat, dtype=np.uint8).reshape(height, width, 4)[..., :3]


@pytest.fixture
def open_page(browser, tmp_path):
    opened = []

    def open_(v, viewport=None, scheme="light") -> Page:
        path = v.save(tmp_path / f"view{len(opened)}.html")
        opened.append(Page(browser, path, viewport, scheme).ready())
        return opened[-1]

    yield open_
    for page in opened:
        page.page.close()


def shown_links(page: Page) -> set[tuple[int, int, int]]:
    links = page.page.evaluate("""() => JSON.stringify([...document.querySelectorAll('#head-svg .link')]
        .filter(l => getComputedStyle(l).display !== 'none')
        .map(l => [+l.dataset.head, +l.dataset.from, +l.dataset.to]))""")
    return {tuple(link) for link in json.loads(links)}


def drawable(maps: torch.Tensor, layer: int) -> set[tuple[int, int, int]]:
    """(head, query, key) of every weight >= 0.01 after the page's uint8 rounding."""
    return {(h, q, k) for h, q, k in ((maps[layer] * 255).round() >= 3).nonzero().tolist()}


# ---- the three kinds of view ------------------------------------------------------------------------------

def test_cross_attention_page(open_page):
    v = cross_view()
    p = open_page(v)
    texts = "side => [...document.querySelectorAll('#head-svg .token.' + side)].map(t => t.textContent)"
    assert p.page.evaluate(texts, "left") == TARGET and p.page.evaluate(texts, "right") == SOURCE
    assert shown_links(p) == drawable(v.maps, v.layer)
    assert p.page.inner_text("#title") == v.title and "cross-attention" in p.page.inner_text("#shape")
    assert p.page.evaluate("() => [document.querySelector('#detail-map canvas').width, "
                           "document.querySelector('#detail-map canvas').height]") == [len(SOURCE), len(TARGET)]
    for where in ("#model-legend", "#detail-map"):
        assert p.page.locator(f"{where} .legend").count() == 1, f"no legend in {where}"
    assert p.page.locator("#detail-map .legend-ticks span").all_inner_texts() == ["0", "0.01", "0.1", "0.25", "0.5",
                                                                                  "1"]
    canvas = p.page.locator("#detail-map canvas")
    box = canvas.bounding_box()
    canvas.hover(position={"x": box["width"] * 1.5 / len(SOURCE), "y": box["height"] * 0.5 / len(TARGET)})
    stored = round(v.maps[v.layer, v.head, 0, 1].item() * 255) / 255
    assert p.page.inner_text("#tip") == f"query {TARGET[0]} \u2192 key {SOURCE[1]}: {stored:.3f}"
    assert p.page.locator("#image-view").is_hidden() and p.page.locator("#rollout-view").is_hidden()
    p.clean()


def test_image_page_draws_a_query_over_the_patches(open_page):
    v = image_view()
    p = open_page(v)
    assert p.page.locator("#head-view").is_hidden() and p.page.locator("#image-legend .legend").count() == 1
    assert p.page.input_value("#image-query") == "0" and p.page.input_value("#image-head") == "-1"
    before = p.pixels("#image-canvas")
    zoom = 448 // 72 + 1  # drawn at whole multiples of the image, at least 448 px on its longer side
    assert before.shape == (48 * zoom, 72 * zoom, 3)
    # the patch with the largest head-mean weight gets the ramp's darkest blue over the image
    row = v.maps[v.layer, :, 0, 1:].mean(0)  # (24,) the [CLS] query over the 4 x 6 patches
    top = int(row.argmax())
    r, c = divmod(top, 6)
    centre = before[int((r + 0.5) * 12 * zoom), int((c + 0.5) * 12 * zoom)].astype(int)
    assert centre[2] > centre[0] + 40, f"patch {top} should be tinted blue, got {centre}"
    # clicking a patch makes it the query (the queries are the image's tokens), outlined
    canvas = p.page.locator("#image-canvas")
    box = canvas.bounding_box()
    canvas.click(position={"x": box["width"] * 2.5 / 6, "y": box["height"] * 1.5 / 4})  # row 1, column 2
    assert p.page.input_value("#image-query") == str(1 + 1 * 6 + 2)
    assert not np.array_equal(p.pixels("#image-canvas"), before)
    shares = p.page.inner_text("#image-prefix")
    stored = np.rint(v.maps[v.layer, :, 9, 0].numpy() * 255) / 255
    assert f"not on a patch: [0] {stored.mean():.3f}" in shares, shares
    p.clean()


def test_decoder_page_masks_later_tokens_and_names_the_sink(open_page):
    v = decoder_view()
    assert v.causal and v.sink, "the construction should make a sink"
    p = open_page(v)
    assert p.page.inner_text("#sink") == v.sink
    grey = (p.pixels("#detail-map canvas") == [222, 222, 222]).all(-1)
    assert np.array_equal(grey, v.masked_cells().numpy())
    assert "masked" in p.page.inner_text("#model-legend") and "masked" in p.page.inner_text("#detail-map .legend")
    assert all(to <= q for _, q, to in shown_links(p))
    p.clean()


# ---- the page on a phone, in the dark, from the keyboard --------------------------------------------------

@pytest.mark.parametrize("make", [cross_view, image_view, decoder_view, wide_view, explanation_view,
                                  attribution_view],
                         ids=["cross", "image", "decoder", "wide", "explanation", "attribution"])
def test_fits_390_px_without_sideways_scroll(open_page, make):
    p = open_page(make(), viewport=NARROW)
    widths = p.page.evaluate("() => [document.documentElement.scrollWidth, document.body.scrollWidth, "
                             "Math.max(...[...document.querySelectorAll('header, section')]"
                             ".map(s => s.getBoundingClientRect().right))]")
    assert max(widths) <= 390, f"the page is {widths} px wide at 390"
    p.clean()


def test_dark_mode_follows_the_system_and_its_changes(open_page):
    v = decoder_view()
    p = open_page(v, scheme="dark")
    background = p.page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(18, 18, 18)", background
    masked = v.masked_cells().numpy()
    dark = p.pixels("#detail-map canvas")
    assert (dark[masked] == [100, 100, 100]).all() and dark[~masked].mean() < 128, "not drawn in the dark scheme"
    p.page.emulate_media(color_scheme="light")
    assert p.page.evaluate("() => getComputedStyle(document.body).backgroundColor") == "rgb(250, 250, 250)"
    p.page.wait_for_function("""() => { const c = document.querySelector('#detail-map canvas');  // its last cell
        const d = c.getContext('2d').getImageData(c.width - 1, 0, 1, 1).data; return d[0] === 222; }""", timeout=3_000)
    assert (p.pixels("#detail-map canvas")[masked] == [222, 222, 222]).all(), "not repainted for the light scheme"
    p.clean()


def active(page: Page) -> str:
    """What has the keyboard focus, as 'tag.class[data-...]'."""
    return page.page.evaluate("""() => { const a = document.activeElement;
        const data = Object.entries(a.dataset || {}).map(([k, v]) => k + '=' + v).join(',');
        return a.tagName.toLowerCase() + '.' + (a.getAttribute('class') || '') + '[' + (a.id || data) + ']'; }""")


def detail_box(page: Page) -> tuple[float, float]:
    return tuple(page.page.evaluate("() => { const r = document.getElementById('detail-view')"
                                    ".getBoundingClientRect(); return [r.top, r.bottom]; }"))


def in_view(box: tuple[float, float], height: int = 800) -> bool:
    """All of it on the screen, or (when taller than the screen, or the page ends) its top at the top."""
    top, bottom = box
    return 0 <= top and (bottom <= height or top < 2)


def test_keyboard_path_reaches_everything_and_opens_a_thumbnail(open_page):
    v = cross_view()
    p = open_page(v, viewport=NARROW)
    path = []
    for _ in range(40):  # Tab from the top of the page to the first thumbnail
        p.page.keyboard.press("Tab")
        path.append(active(p))
        if path[-1].startswith("button.thumb-button"):
            break
    assert path[0] == "select.[head-layer]", path
    assert sum(stop.startswith("button.chip") for stop in path) == v.num_heads, path
    tokens = [stop for stop in path if stop.startswith("text.")]  # one Tab stop per column, its first token
    assert [t.split(" ")[1] for t in tokens] == ["left", "right"] and all("[tokenIndex=0]" in t for t in tokens)
    assert path[-1].startswith("button.thumb-button"), f"no thumbnail reached by Tab: {path}"
    # a token column: arrow keys move within it, and the focused token shows only its links
    p.page.focus("#head-svg .token.left[data-token-index='0']")
    p.page.keyboard.press("ArrowDown")
    assert active(p) == "text.token left active[tokenIndex=1]"
    assert shown_links(p) == {(h, q, k) for h, q, k in drawable(v.maps, v.layer) if q == 1}
    # a chip toggles with Enter and shows its head alone with Shift+Enter
    p.page.focus("#head-chips .chip[data-head='2']")
    p.page.keyboard.press("Shift+Enter")
    assert {h for h, _, _ in shown_links(p)} == {2}
    # Enter on a thumbnail shows it in detail, scrolled into view
    p.page.focus("button.thumb-button:has(canvas[data-layer='0'][data-head='1'])")
    p.page.evaluate("() => window.scrollTo(0, 0)")
    assert detail_box(p)[1] > 800, "the detail should start out (partly) below the screen"
    p.page.keyboard.press("Enter")
    assert p.page.inner_text("#detail-label") == "layer 0, head 1"
    assert in_view(detail_box(p)), f"the detail at {detail_box(p)} is not brought into the 800 px screen"
    # the detail heatmap reads a cell with the arrow keys
    p.page.focus("#detail-map canvas")
    p.page.keyboard.press("ArrowRight")
    stored = round(v.maps[0, 1, 0, 1].item() * 255) / 255
    assert p.page.inner_text("#tip") == f"query {TARGET[0]} \u2192 key {SOURCE[1]}: {stored:.3f}"
    p.clean()


def test_clicking_a_thumbnail_scrolls_the_detail_into_view(open_page):
    p = open_page(image_view(), viewport=NARROW)
    thumb = p.page.locator("canvas.thumb[data-layer='1'][data-head='2']")
    thumb.evaluate("t => t.scrollIntoView({block: 'end'})")  # the thumbnail at the bottom of the screen
    assert detail_box(p)[0] > 800, "the detail should start out below the screen"
    thumb.click()
    assert p.page.inner_text("#detail-label") == "layer 1, head 2"
    assert in_view(detail_box(p)), f"the detail at {detail_box(p)} is not brought into the 800 px screen"
    p.clean()


# ---- in a notebook ----------------------------------------------------------------------------------------

def test_two_views_in_one_notebook_page(browser, tmp_path):
    cells = [cross_view()._repr_html_(), decoder_view()._repr_html_()]
    path = tmp_path / "notebook.html"
    path.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><style>.tile{display:block}</style></head>"
                    "<body><div id='detail-view'>the notebook's own element</div>"
                    + "".join(f"<div class='output'>{cell}</div>" for cell in cells) + "</body></html>",
                    encoding="utf-8")
    p = Page(browser, path)
    try:
        frames = [frame for frame in p.page.frames if frame != p.page.main_frame]
        assert len(frames) == 2
        for frame in frames:
            p.ready(frame)
        titles = [frame.inner_text("#title") for frame in frames]
        assert titles == ["<b>fr</b> \u2192 en", "decoder"]
        assert frames[1].inner_text("#sink") == decoder_view().sink
        fitted = """() => [...document.querySelectorAll('iframe')].every(f => Math.abs(
            f.getBoundingClientRect().height - f.contentDocument.documentElement.getBoundingClientRect().height) < 2)"""
        p.page.wait_for_function(fitted, timeout=5_000)  # each frame fitted to its page
        assert p.page.inner_text("#detail-view") == "the notebook's own element"
        p.clean()
    finally:
        p.page.close()


def test_the_attribution_section_shows_the_tables_as_text(open_page):
    v = attribution_view()
    a = v.explanation.attributions
    p = open_page(v, scheme="dark")
    assert p.page.is_visible("#attribution-view")
    methods = p.page.evaluate("() => [...document.querySelectorAll('#attribution-methods tbody tr')]"
                              ".map(r => [...r.cells].map(c => c.textContent))")
    header, rows = a.table(v.explanation.label)
    assert methods == rows and len(rows) == len(a.scores) + 1
    cells = p.page.evaluate("() => [...document.querySelectorAll('#attribution-tokens tbody tr')]"
                            ".map(r => r.cells[0].textContent)")
    assert cells[:1] == [v.explanation.tokens[max(a.scored, key=lambda t: float(a.ablation[t]))]]
    assert set(HOSTILE) <= set(cells), "hostile tokens shown as text"
    shades = p.page.evaluate("() => [...document.querySelectorAll('#attribution-tokens td.shaded')]"
                             ".map(c => getComputedStyle(c).backgroundColor)")
    assert len(shades) == len(a.scored) * (len(a.scores) + 1) and len(set(shades)) > 10, "cells not shaded"
    assert p.page.inner_text("#attribution-notes") == "note: <b>a note</b>"
    assert a.note(repr(v.explanation.label(20)), v.explanation.label) == p.page.inner_text("#attribution-reading")
    p.clean()


def test_no_attribution_section_without_attributions(open_page):
    p = open_page(explanation_view())
    assert not p.page.is_visible("#attribution-view")
    p.clean()
