"""The self-contained HTML view: what the file holds (no browser), then what a real browser does with it.

The browser tests drive Debian's ``chromium`` through Playwright, one browser for the module; they skip,
with the reason, when either is missing (and fail instead under ATTNKIT_REQUIRE_BROWSER=1, as in CI).
Explanations are built directly from seeded random maps (cheap, any size, any hostile token), except one
from the bundled model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import RecordedPage, embedded, unpack, words

from attnkit.inspect import Explanation, explain, rollout
from attnkit.inspect.explanation import make_bins, pool
from attnkit.inspect.html import render_html, write_html

SCRIPT_SENTENCE = "The animal didn't cross the street because it was too tired <script>alert(1)</script>"
# Tokens that would run code if they ever reached the page as markup.
HOSTILE = ["<script>alert(1)</script>", "</script><script>window.__pwned=1</script>",
           "<img src=x onerror=window.__pwned=1>", "<!--", "&amp;", "\u2028", '"\'`${1}']


def synthetic(tokens: list[str], *, layers: int = 2, heads: int = 3, max_tokens: int = 128,
              causal: bool = False, seed: int = 0) -> Explanation:
    """An Explanation from seeded random softmax maps, shaped and pooled as ``explain`` does."""
    n = len(tokens)
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(layers, heads, n, n, generator=g)  # (L, H, N, N)
    if causal:
        logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    probs = logits.softmax(-1)
    bins = make_bins(n, max_tokens)
    focus = n // 2
    rolled = rollout([m[None] for m in probs])[0]  # (N, N)
    return Explanation(
        text=" ".join(tokens), model_name="synthetic", tokens=tokens, special=[False] * n,
        focus=focus, layer=layers - 1, head=heads - 1, causal=causal, maps=pool(probs, bins), bins=bins,
        focus_rows=probs[:, :, focus].clone(), rollout=pool(rolled, bins), rollout_row=rolled[focus].clone(),
        notes=["note: synthetic maps"])




@pytest.fixture(scope="module")
def hostile() -> Explanation:
    return synthetic(["[CLS]", *HOSTILE, "it", "[SEP]"], layers=2, heads=3)


@pytest.fixture(scope="module")
def pooled() -> Explanation:
    """392 tokens, 6 x 12 heads, pooled into 128 bins: the size of a long text through MiniLM."""
    return synthetic(words(392), layers=6, heads=12, max_tokens=128, seed=1)


@pytest.fixture(scope="module")
def seed() -> Explanation:
    return explain(SCRIPT_SENTENCE)






# ---- the file, without a browser -------------------------------------------------------------------------

def test_no_external_references(hostile):
    page = render_html(hostile)
    assert "<link" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", page, re.IGNORECASE), "a src/href URL"
    assert "//cdn" not in page and "@import" not in page and "url(" not in page
    urls = set(re.findall(r"https?://[^\s\"'<>)]*", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, f"unexpected URLs {urls - {'http://www.w3.org/2000/svg'}}"
    assert "default-src 'none'" in page  # the CSP forbids any fetch, whatever the script did


def test_tokens_never_appear_as_markup(hostile):
    page = render_html(hostile)
    for token in HOSTILE[:4]:
        assert token not in page, f"{token!r} appears raw"
    assert page.count("<script") == 2 and page.lower().count("</script") == 2  # the data and the code
    assert "<img" not in page.lower() and "onerror" not in page.replace("onerror=window", "")


def test_data_round_trips(hostile):
    data = embedded(render_html(hostile))
    explanation = data["explanation"]  # what only an explanation adds to a view's data
    assert data["queryTokens"] == hostile.tokens and explanation["text"] == hostile.text
    assert data["keyTokens"] is None  # self-attention: the keys are the queries
    assert data["focus"] == hostile.focus and data["queryBins"] == [list(b) for b in hostile.bins]
    for key, tensor, bound in [("maps", hostile.maps, 0.5 / 255), ("focusRows", hostile.focus_rows, 0.5 / 65535),
                               ("rollout", hostile.rollout, 0.5 / 65535),
                               ("rolloutRow", hostile.rollout_row, 0.5 / 65535)]:
        error = np.abs(unpack((data if key == "maps" else explanation)[key]) - tensor.double().numpy())
        where = np.unravel_index(error.argmax(), error.shape)
        assert error.max() <= bound + 1e-9, f"{key}: max error {error.max():.2e} at {where}"


def test_render_is_deterministic(hostile, tmp_path):
    """The same explanation gives the same bytes in another interpreter, with another hash seed (set order)."""
    torch.save(hostile, tmp_path / "explanation.pt")
    script = ("import sys, torch; from attnkit.inspect.html import render_html; "
              "sys.stdout.buffer.write(render_html(torch.load(sys.argv[1], weights_only=False)).encode())")
    pages = [subprocess.run([sys.executable, "-c", script, str(tmp_path / "explanation.pt")], check=True,
                            capture_output=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
             for seed in ("1", "2")]
    assert pages[0] == pages[1] == render_html(hostile).encode()


def test_pooled_size_bound(pooled):
    assert pooled.maps.shape == (6, 12, 128, 128) and pooled.pooled
    size = len(render_html(pooled).encode())
    assert size < 2_500_000, f"{size / 1e6:.2f} MB"


def test_rejects_mismatched_shapes(hostile):
    broken = synthetic(words(5))
    broken.focus_rows = broken.focus_rows[..., :4]
    with pytest.raises(ValueError, match="focus_rows has shape"):
        render_html(broken)


def test_write_html_is_atomic_and_creates_folders(hostile, tmp_path):
    path = write_html(hostile, tmp_path / "a" / "b" / "view.html")
    assert path == tmp_path / "a" / "b" / "view.html"
    assert path.read_text(encoding="utf-8") == render_html(hostile)
    write_html(synthetic(words(4)), path)  # overwrites in place
    assert "synthetic" in path.read_text(encoding="utf-8") and "w3" in path.read_text(encoding="utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["view.html"], "a temporary file was left behind"


# ---- a real browser --------------------------------------------------------------------------------------

class View(RecordedPage):
    """A page showing one explanation, with everything it did recorded."""

    def __init__(self, browser, path):
        super().__init__(browser, path)
        start = time.perf_counter()
        self.page.goto(self.uri)
        self.page.wait_for_selector("body[data-ready=true]", timeout=10_000)
        self.seconds = time.perf_counter() - start

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def shown_links(self) -> list[dict]:
        """The head-view links the user can see: (head, from, to) of each displayed line."""
        shown = self.page.evaluate("""() => JSON.stringify([...document.querySelectorAll('#head-svg .link')]
            .filter(l => getComputedStyle(l).display !== 'none')
            .map(l => [+l.dataset.head, +l.dataset.from, +l.dataset.to, l.classList.contains('hl')]))""")
        # one JSON string: thousands of small objects through the Playwright protocol take ~0.5 s
        return [dict(zip(("head", "from", "to", "hl"), link)) for link in json.loads(shown)]

    def clean(self) -> None:
        super().clean()
        assert self.requests == [self.uri], f"requests {self.requests}"  # the explain page has no frames


@pytest.fixture
def view(browser, tmp_path):
    opened = []

    def open_view(explanation: Explanation, name: str = "view.html") -> View:
        opened.append(View(browser, write_html(explanation, tmp_path / name)))
        return opened[-1]

    yield open_view
    for v in opened:
        v.page.close()


def drawable_links(e: Explanation, layer: int, heads) -> set[tuple[int, int, int]]:
    """(head, query, key) of every weight the head view draws: those >= 0.01 after the page's uint8 rounding
    (small unpooled texts: no per-row cap applies)."""
    quantized = (e.maps[layer] * 255).round()  # (H, N, N)
    return {(h, q, k) for h in heads for q, k in (quantized[h] >= 3).nonzero().tolist()}


# Whether each canvas has at least two different pixels (a drawn map, not a blank or uniform fill).
NON_BLANK = """sel => [...document.querySelectorAll(sel)].map(c => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 4; i < d.length; i += 4)
        if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) return true;
    return false; })"""


def test_views_render(view, seed):
    v = view(seed)
    n, layers, heads = len(seed.tokens), seed.num_layers, seed.num_heads
    assert v.count("#head-svg .token.left") == n and v.count("#head-svg .token.right") == n
    assert v.page.evaluate("() => [...document.querySelectorAll('#head-svg .token.left')].map(t => t.textContent)") \
        == seed.tokens
    drawn = {(link["head"], link["from"], link["to"]) for link in v.shown_links()}
    expected = drawable_links(seed, seed.layer, range(heads))
    assert drawn == expected, f"{len(drawn - expected)} links drawn that should not be, {len(expected - drawn)} missing"
    assert v.count("canvas.thumb") == layers * heads
    assert all(v.page.evaluate(NON_BLANK, "canvas.thumb")), "a blank model-view map"
    assert all(v.page.evaluate(NON_BLANK, ".heatmap canvas")) and v.count(".heatmap canvas") == 2
    assert v.page.inner_text("#detail-label") == f"layer {seed.layer}, head {seed.head}"
    assert v.count("#rollout-bars .bar-row") == min(n, 30)
    v.clean()


def test_hover_shows_only_the_token_links(view, seed):
    v = view(seed)
    before = v.shown_links()
    assert not any(link["hl"] for link in before)
    for side, key, index in [("left", "from", seed.focus), ("right", "to", 2)]:
        v.page.hover(f"#head-svg .token.{side}[data-token-index='{index}']")
        shown = v.shown_links()
        assert 0 < len(shown) < len(before), f"hovering a {side} token: {len(shown)} of {len(before)} links shown"
        assert all(link["hl"] and link[key] == index for link in shown), f"a shown link misses {side} token {index}"
        expected = sum(link[key] == index for link in before)
        assert len(shown) == expected, f"{len(shown)} links shown, the token has {expected}"
        v.page.mouse.move(1, 1)
        assert len(v.shown_links()) == len(before), "the links did not come back after the hover"
    v.clean()


def test_head_chips_toggle_and_solo(view, seed):
    v = view(seed)

    def heads_drawn() -> set[int]:
        return {link["head"] for link in v.shown_links()}

    assert heads_drawn() == set(range(seed.num_heads))
    v.page.click("#head-chips .chip[data-head='3']")
    assert heads_drawn() == set(range(seed.num_heads)) - {3}
    v.page.click("#head-chips .chip[data-head='3']")
    v.page.dblclick("#head-chips .chip[data-head='5']")
    assert heads_drawn() == {5}
    v.page.select_option("#head-layer", "0")
    drawn = {(link["head"], link["from"], link["to"]) for link in v.shown_links()}
    assert drawn == drawable_links(seed, 0, [5]), "layer 0's links are not the ones drawn"
    v.clean()


def test_model_cell_opens_detail(view, seed):
    v = view(seed)
    before = v.page.evaluate("() => document.querySelector('#detail-map canvas').toDataURL()")
    layer, head = (seed.layer + 1) % seed.num_layers, (seed.head + 1) % seed.num_heads
    v.page.click(f"canvas.thumb[data-layer='{layer}'][data-head='{head}']")
    assert v.page.inner_text("#detail-label") == f"layer {layer}, head {head}"
    assert v.page.evaluate("() => document.querySelector('#detail-map canvas').toDataURL()") != before
    assert v.count("canvas.thumb.selected") == 1
    # hovering a cell shows its weight, as stored
    canvas, m = v.page.locator("#detail-map canvas"), len(seed.bins)
    box = canvas.bounding_box()
    canvas.hover(position={"x": box["width"] * 1.5 / m, "y": box["height"] * 0.5 / m})  # query 0, key 1
    stored = round(seed.maps[layer, head, 0, 1].item() * 255) / 255
    expected = f"query {seed.tokens[0]} → key {seed.tokens[1]}: {stored:.3f}"
    assert v.page.inner_text("#tip") == expected
    v.clean()


def test_tokens_run_nothing_and_show_as_text(view, seed, hostile):
    for name, explanation in [("seed.html", seed), ("hostile.html", hostile)]:
        v = view(explanation, name)
        v.clean()  # no dialog, no window.__pwned, no error (a blocked inline handler logs one)
        assert v.page.inner_text("#text") == explanation.text
        shown = v.page.evaluate("() => [...document.querySelectorAll('#head-svg .right')].map(t => t.textContent)")
        assert shown == explanation.tokens
        assert v.page.evaluate("() => document.querySelectorAll('img, #head-svg script, main script').length") == 0
    assert "<script>alert(1)</script>" in v.page.inner_text("#head-view")


def test_causal_draws_no_future_links(view):
    e = synthetic(words(9), layers=2, heads=4, causal=True)
    v = view(e)
    links = v.shown_links()
    assert links and all(link["to"] <= link["from"] for link in links)
    v.clean()


def test_pooled_renders_quickly_and_draws_only_the_focus_row(view, pooled):
    v = view(pooled)
    assert v.seconds < 5, f"the pooled page took {v.seconds:.1f} s"
    assert v.count("#head-svg .token.left") == 392 and v.count("#head-svg .token.right") == 392
    links = v.shown_links()
    assert links and {link["from"] for link in links} == {pooled.focus}
    strong = (pooled.focus_rows[pooled.layer] >= 0.01).sum().item()
    assert len(links) == strong, f"{len(links)} links drawn, {strong} weights >= 0.01"
    assert v.count("canvas.thumb") == 72 and all(v.page.evaluate(NON_BLANK, "canvas.thumb"))
    assert v.page.evaluate("() => document.querySelector('canvas.thumb').width") == 128
    v.clean()
