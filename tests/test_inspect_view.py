"""``attnkit.inspect.view``: any attention map as the page and figures -- without a browser.

Maps come from seeded random softmaxes (any shape, any hostile token) and from a tiny encoder-decoder
``Transformer`` recorded with ``capture`` (its decoder's self-attention is causal, its cross-attention maps
target words to source words). The page's data is read back from the file and compared with the maps.
The browser's side is tests/test_inspect_view_browser.py.
"""

from __future__ import annotations

import base64
import html.parser
import re

import numpy as np
import pytest
import torch
from helpers import embedded, softmax_maps, unpack, words

from attnkit.inspect import Explanation, as_view, capture, render_html, view, write_html
from attnkit.inspect.explanation import SINK_SHARE, find_sink, make_bins, pool
from attnkit.inspect.html import notebook_html
from attnkit.models import Transformer, TransformerConfig, ViT, ViTConfig

HOSTILE = ["<script>alert(1)</script>", "</script><script>window.__pwned=1</script>",
           "<img src=x onerror=window.__pwned=1>", "<!--", "&amp;", "\u2028", '"\'`${1}']
FR = ["le", "chat", "noir", "dort", "sur", "le", "tapis"]
EN = ["the", "black", "cat", "sleeps", "on", "the", "mat", "."]










@pytest.fixture(scope="module")
def recorded() -> tuple[list, list[bool]]:
    """A tiny Transformer's captured maps: encoder 0-1 (7 x 7), then per decoder layer self (5 x 5, causal) and
    cross (5 target x 7 source)."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny")).eval()
    with capture(model) as record, torch.no_grad():
        model(torch.randint(3, 16, (1, 7)), torch.randint(3, 16, (1, 5)))
    return record.maps, record.causal


# ---- what reaches the page -------------------------------------------------------------------------------

def test_cross_attention_round_trips():
    maps = softmax_maps(2, 3, len(EN), len(FR))
    v = view(maps, query_tokens=EN, key_tokens=FR, title="en <- fr")
    assert (v.kind, v.causal, v.offset, v.focus) == ("cross", False, -1, None)
    data = embedded(v.html())
    assert data["queryTokens"] == EN and data["keyTokens"] == FR and data["title"] == "en <- fr"
    assert data["kind"] == "cross" and data["explanation"] is None and data["image"] is None
    error = np.abs(unpack(data["maps"]) - maps.double().numpy())
    assert unpack(data["maps"]).shape == (2, 3, 8, 7) and error.max() <= 0.5 / 255 + 1e-9, f"max error {error.max()}"


def test_three_dims_is_one_layer_and_arrays_work():
    maps = softmax_maps(4, 5, 5).numpy()
    v = view(maps, query_tokens=words(5))
    assert v.maps.shape == (1, 4, 5, 5) and v.kind == "self" and not v.causal
    torch.testing.assert_close(v.maps[0], torch.from_numpy(maps), rtol=0, atol=0)
    assert v.layer == 0 and v.head == int(torch.from_numpy(maps).amax(-1).mean(-1).argmax())


def test_captured_maps_of_an_encoder_decoder(recorded):
    maps, causal = recorded
    cross = view([maps[3], maps[5]], query_tokens=words(5), key_tokens=FR)  # each (1, H, 5, 7)
    assert cross.kind == "cross" and not cross.causal and cross.maps.shape == (2, 4, 5, 7)
    torch.testing.assert_close(cross.maps[1], maps[5][0].float(), rtol=0, atol=0)
    decoder = view([maps[2], maps[4]], query_tokens=words(5))
    assert causal[2] and decoder.causal, "the decoder's self-attention is drawn causal"
    assert torch.equal(decoder.masked_cells(), torch.ones(5, 5, dtype=torch.bool).triu(1))
    assert not view(maps[:2], query_tokens=FR).causal, "the encoder's maps are not"


def test_tokens_and_title_never_appear_as_markup():
    tokens = ["[CLS]", *HOSTILE]
    v = view(softmax_maps(2, 2, len(tokens), len(tokens)), query_tokens=tokens, key_tokens=tokens[::-1],
             title="</title></script><script>window.__pwned=1</script>")
    page = v.html()
    for token in [*HOSTILE[:4], v.title]:
        assert token not in page, f"{token!r} appears raw"
    assert page.count("<script") == 2 and page.lower().count("</script") == 2  # the data and the code
    assert "<img" not in page.lower()
    data = embedded(page)
    assert data["queryTokens"] == tokens and data["keyTokens"] == tokens[::-1] and data["title"] == v.title


class Frames(html.parser.HTMLParser):
    """Every start tag of a fragment, with its attributes (unescaped, as a browser reads them)."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_notebook_html_is_the_page_in_a_frame_of_its_own():
    v = view(softmax_maps(1, 2, 3, 3), query_tokens=["<b>", "</iframe><script>x()</script>", "&lt;"])
    first, second = v._repr_html_(), notebook_html(v)
    parsed = Frames()
    parsed.feed(first)
    assert [tag for tag, _ in parsed.tags] == ["iframe"], "only the frame is markup: the page is an attribute"
    attrs = parsed.tags[0][1]
    assert attrs["srcdoc"] == render_html(v), "the frame holds exactly the saved page"
    assert "<" not in first.split("srcdoc=", 1)[1].rstrip("</iframe>")
    ids = {re.search(r'id="([^"]+)"', page).group(1) for page in (first, second)}
    assert len(ids) == 2, "two views in one notebook share an id"


def test_explanation_displays_inline_and_becomes_a_view():
    e = synthetic_explanation(6)
    parsed = Frames()
    parsed.feed(e._repr_html_())
    assert parsed.tags[0][1]["srcdoc"] == render_html(e) == as_view(e).html()
    v = as_view(e)
    assert v.explanation is e and v.kind == "self" and v.focus == e.focus and (v.layer, v.head) == (e.layer, e.head)
    assert as_view(v) is v
    with pytest.raises(TypeError, match="View or Explanation"):
        as_view(torch.zeros(2))


def synthetic_explanation(n: int, causal: bool = False) -> Explanation:
    probs = softmax_maps(2, 3, n, n, causal=causal)
    bins = make_bins(n, 128)
    return Explanation(text=" ".join(words(n)), model_name="synthetic", tokens=words(n), special=[False] * n,
                       focus=n - 1, layer=1, head=2, causal=causal, maps=probs, bins=bins,
                       focus_rows=probs[:, :, n - 1].clone(), rollout=torch.eye(n), rollout_row=torch.eye(n)[n - 1])


def test_save_writes_the_page_whole(tmp_path):
    v = view(softmax_maps(2, 2, 4, 4), query_tokens=words(4))
    path = v.save(tmp_path / "a" / "view.html")
    assert path.read_text(encoding="utf-8") == v.html() == v.html()  # deterministic
    assert write_html(v, tmp_path / "b.html").read_text(encoding="utf-8") == v.html()
    assert sorted(p.name for p in path.parent.iterdir()) == ["view.html"]


# ---- decoders: causal maps and the first-token sink ------------------------------------------------------

def test_causal_is_detected_only_where_every_later_weight_is_zero():
    maps = softmax_maps(2, 3, 6, 6, causal=True)
    assert view(maps, query_tokens=words(6)).causal
    leaky = maps.clone()
    leaky[1, 2, 0, 5] = 1e-4
    assert not view(leaky, query_tokens=words(6)).causal
    assert not view(maps, query_tokens=words(6), causal=False).causal
    assert not view(maps, query_tokens=words(6), key_tokens=words(6)[::-1]).causal, "cross-attention: not detected"
    with pytest.raises(ValueError, match=r"causal=True but the maps give weight 0.0001 to a later key \(layer 1, "
                                         r"head 2, query 0, key 5\)"):
        view(leaky, query_tokens=words(6), causal=True)


def test_causal_with_a_cache_is_bottom_right_aligned():
    maps = softmax_maps(1, 2, 3, 7, causal=True)  # 3 new queries over 7 keys: query i sits at key 4 + i
    v = view(maps, query_tokens=words(7)[4:], key_tokens=words(7), causal=True)
    assert v.offset == 4 and v.focus == 2
    expected = torch.tensor([[k > 4 + q for k in range(7)] for q in range(3)])
    assert torch.equal(v.masked_cells(), expected)
    assert embedded(v.html())["offset"] == 4


def test_pooled_masked_cells_mask_only_bins_wholly_after():
    maps = softmax_maps(1, 1, 10, 10, causal=True)
    v = view(maps, query_tokens=words(10), max_tokens=4)
    bins = make_bins(10, 4)
    expected = torch.tensor([[max(range(*bins[q])) < min(range(*bins[k])) for k in range(4)] for q in range(4)])
    assert v.queries.bins == tuple(bins) and torch.equal(v.masked_cells(), expected)


def test_a_decoder_view_names_the_first_token_sink():
    maps = softmax_maps(3, 4, 9, 9, causal=True)
    maps[1:] = softmax_maps(2, 4, 9, 9, causal=True, first=8.0, seed=1)  # layers 1 and 2 park on token 0
    tokens = ["<s>", *words(8)]
    v = view(maps, query_tokens=tokens)
    weight = maps[:, :, 8, 0].mean(1)  # (L,) the last query's head-averaged weight on the first token
    layers = [layer for layer in range(3) if weight[layer] >= SINK_SHARE]
    assert layers == [1, 2], f"the construction should make layers 1 and 2 sinks, got {weight.tolist()}"
    share = float(weight[layers].mean())
    assert v.sink == (f"Most of the attention from 'w7' ({share:.0%} in layers 1-2) goes to the first token, "
                      f"'<s>': decoders park attention there when nothing else is relevant (an 'attention sink', "
                      f"Xiao et al. 2023); it is the first column of every map below.")
    assert embedded(v.html())["sink"] == v.sink
    # the same rule as explain's: find_sink decides, for any focus query
    assert view(maps, query_tokens=tokens, focus=4).sink == find_sink(maps[:, :, 4], "<s>").sentence("'w3'", (
        "it is the first column of every map below"))
    assert view(maps[:1], query_tokens=tokens).sink is None, "no layer gives the first token half"
    assert view(maps, query_tokens=tokens, focus=0).sink is None, "the first token sees only itself"
    assert view(maps, query_tokens=tokens, causal=False).sink is None, "only decoders are said to sink"


def test_one_layer_sink_reads_over_the_heads():
    maps = softmax_maps(4, 5, 5, causal=True, first=9.0)
    assert "% over the heads) goes to the first token" in view(maps, query_tokens=words(5)).sink


# ---- images ----------------------------------------------------------------------------------------------

def test_image_view_maps_keys_to_patches():
    image = np.random.default_rng(0).random((30, 45, 3))
    maps = softmax_maps(2, 2, 7, 1 + 2 * 3)  # 7 text queries; keys: [CLS] + 2 x 3 patches
    v = view(maps, query_tokens=words(7), image=image, patch_grid=(2, 3), prefix_tokens=1)
    assert v.kind == "image" and v.image.grid == (2, 3) and v.image.prefix == 1 and not v.image.query_patches
    assert v.keys.tokens == ("[0]", "(0,0)", "(0,1)", "(0,2)", "(1,0)", "(1,1)", "(1,2)")
    assert v.focus == 0 and v.image.pixels.dtype == np.uint8 and v.image.pixels.shape == (30, 45, 3)
    np.testing.assert_array_equal(v.image.pixels, np.rint(image * 255).astype(np.uint8))
    data = embedded(v.html())["image"]
    assert (data["width"], data["height"], data["rows"], data["cols"], data["prefix"]) == (45, 30, 2, 3, 1)
    assert base64.b64decode(data["pixels"]) == v.image.pixels.tobytes()


def test_vit_self_attention_over_its_patches():
    maps = softmax_maps(1, 3, 1 + 16, 1 + 16)  # [CLS] + a 4 x 4 grid, queries the same tokens
    gray = (np.arange(64 * 64) % 256).astype(np.uint8).reshape(64, 64)
    v = view(maps, query_tokens=None, image=gray, prefix_tokens=1)
    assert v.image.grid == (4, 4) and v.image.query_patches and v.queries is v.keys
    assert v.image.pixels.shape == (64, 64, 3) and (v.image.pixels == gray[..., None]).all()
    big = view(softmax_maps(1, 1, 4, 4), query_tokens=None, image=np.zeros((2000, 1000, 4), np.uint8))
    assert big.image.pixels.shape == (512, 256, 3)


def test_a_captured_vit_over_its_image():
    """A ViT's captured maps ([CLS] then a 3 x 3 grid of patches, row by row) on its own input image."""
    torch.manual_seed(0)
    model = ViT(ViTConfig.preset("tiny", image_size=12, patch_size=4)).eval()
    pixels = torch.rand(1, 3, 12, 12)
    with capture(model) as record, torch.no_grad():
        model(pixels)
    v = view(record.maps, query_tokens=None, image=pixels[0].permute(1, 2, 0).numpy(), prefix_tokens=1)
    assert v.image.grid == (3, 3) and v.maps.shape == (2, 4, 10, 10) and v.keys.tokens[6] == "(1,2)"
    torch.testing.assert_close(v.maps[1], record.maps[1][0].float(), rtol=0, atol=0)
    assert np.abs(v.image.pixels / 255 - pixels[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match=r"\(C, H, W\) tensor needs image.permute\(1, 2, 0\)"):
        view(record.maps, query_tokens=None, image=pixels[0], prefix_tokens=1)


def test_patch_axes_are_never_pooled_text_axes_are():
    maps = softmax_maps(1, 1, 300, 1 + 15 * 15)
    v = view(maps, query_tokens=words(300), image=np.zeros((15, 15)), prefix_tokens=1)
    assert v.maps.shape == (1, 1, 128, 226) and not v.keys.pooled and v.queries.pooled
    torch.testing.assert_close(v.maps, pool(maps, make_bins(300, 128), make_bins(226, 226)))
    torch.testing.assert_close(v.maps.sum(-1), torch.ones(1, 1, 128))  # pooled rows still sum to 1
    assert v.notes == ["300 queries x 226 keys, shown pooled into 128 x 226 token ranges (max_tokens)"]


# ---- figures ---------------------------------------------------------------------------------------------

def test_figures_of_a_cross_attention_and_an_image_view(tmp_path):
    pytest.importorskip("matplotlib")
    cross = view(softmax_maps(2, 2, len(EN), len(FR)), query_tokens=EN, key_tokens=FR, title="a $b$ <c>")
    written = cross.save_figures(tmp_path / "cross", ["svg"])
    assert sorted(p.name for p in written) == [f"head_L1_H{cross.head}.svg", "layers_mean.svg"]
    svg = written[0].read_text()
    assert ">tapis<" in svg and ">sleeps<" in svg and "a $b$ &lt;c&gt;" in svg  # labels and title as text
    image = view(softmax_maps(2, 1, 5, 5), query_tokens=None, image=np.ones((8, 8)), prefix_tokens=1)
    names = sorted(p.name for p in image.save_figures(tmp_path / "image", ["png"]))
    assert names == [f"head_L1_H{image.head}.png", "image_q0.png", "layers_mean.png"]


# ---- input checks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda: view(torch.rand(3, 3), query_tokens=words(3)), ValueError,
     r"maps must be \(heads, Nq, Nk\) or \(layers, heads, Nq, Nk\), got shape \(3, 3\)"),
    (lambda: view(torch.rand(1, 1, 1, 3, 3), query_tokens=words(3)), ValueError, "got shape"),
    (lambda: view(softmax_maps(2, 4, 5), query_tokens=words(3), key_tokens=words(5)), ValueError,
     r"query_tokens has 3 tokens but the maps have 4 queries \(shape \(1, 2, 4, 5\)"),
    (lambda: view(softmax_maps(2, 4, 5), query_tokens=words(4), key_tokens=words(4)), ValueError,
     "key_tokens has 4 tokens but the maps have 5 keys"),
    (lambda: view(softmax_maps(2, 4, 5), query_tokens=words(4)), ValueError, "key_tokens=None means self-attention"),
    (lambda: view(softmax_maps(2, 3, 3), query_tokens=None), ValueError, "query_tokens is required"),
    (lambda: view(softmax_maps(2, 3, 3), query_tokens="abc"), TypeError, "query_tokens must be a sequence"),
    (lambda: view(softmax_maps(2, 3, 3), query_tokens=["a", 1, "c"]), TypeError, r"query_tokens\[1\] must be a str"),
    (lambda: view(softmax_maps(2, 3, 3).index_put((torch.tensor(1), torch.tensor(2), torch.tensor(0)),
                                                  torch.tensor(float("nan"))), query_tokens=words(3)),
     ValueError, r"maps has a non-finite value, nan at \(layer, head, query, key\) = \(0, 1, 2, 0\)"),
    (lambda: view(torch.full((1, 2, 2), float("inf")), query_tokens=words(2)), ValueError, "non-finite"),
    (lambda: view(torch.full((1, 2, 2), 2.0), query_tokens=words(2)), ValueError, r"a weight outside \[0, 1\]"),
    (lambda: view(-softmax_maps(1, 2, 2), query_tokens=words(2)), ValueError, r"outside \[0, 1\]"),
    (lambda: view(torch.zeros(1, 0, 2), query_tokens=[]), ValueError, "maps has an empty axis"),
    (lambda: view([softmax_maps(2, 1, 3, 3)], query_tokens=words(3)), ValueError, r"maps\[0\] holds a batch of 2"),
    (lambda: view([softmax_maps(1, 1, 3, 3), None], query_tokens=words(3)), ValueError, r"no map for layers \[1\]"),
    (lambda: view([], query_tokens=words(3)), ValueError, "maps is an empty list"),
    (lambda: view("maps", query_tokens=words(3)), TypeError, "maps must be a tensor or array of numbers, got str"),
    (lambda: view(softmax_maps(1, 3, 3), query_tokens=words(3), title=3), TypeError, "title must be a str"),
    (lambda: view(softmax_maps(1, 3, 3), query_tokens=words(3), layer=1), ValueError,
     r"layer 1 is out of range: the maps has 1 layers"),
    (lambda: view(softmax_maps(1, 3, 3), query_tokens=words(3), focus=3), ValueError, "focus 3 is out of range"),
    (lambda: view(softmax_maps(1, 3, 3), query_tokens=words(3), max_tokens=1), ValueError, "max_tokens"),
    (lambda: view(softmax_maps(1, 3, 3), query_tokens=words(3), prefix_tokens=1), ValueError, "pass image= too"),
    (lambda: view(softmax_maps(1, 3, 197), query_tokens=words(3), image=np.zeros((4, 4))), ValueError,
     r"leave 197 patches, not a square grid: pass patch_grid=\(rows, cols\) \(pass prefix_tokens=1"),
    (lambda: view(softmax_maps(1, 3, 7), query_tokens=words(3), image=np.zeros((4, 4)), patch_grid=(2, 2)),
     ValueError, r"patch_grid=\(2, 2\) has 4 patches but the maps' 7 keys less prefix_tokens=0 leave 7"),
    (lambda: view(softmax_maps(1, 3, 4), query_tokens=None, image=np.zeros((4, 4))), ValueError,
     "query_tokens=None means the queries are the image's tokens"),
    (lambda: view(softmax_maps(1, 4, 4), query_tokens=None, image=np.zeros((3, 8, 8))), ValueError,
     r"image must be \(H, W\) or \(H, W, C\), got \(3, 8, 8\): a \(C, H, W\) tensor needs image.permute"),
    (lambda: view(softmax_maps(1, 4, 4), query_tokens=None, image=np.zeros(8)), ValueError, "image must be"),
    (lambda: view(softmax_maps(1, 4, 4), query_tokens=None, image=np.full((4, 4), 2.0)), ValueError,
     r"float pixels must be finite and in \[0, 1\]"),
    (lambda: view(softmax_maps(1, 4, 4), query_tokens=None, image=np.zeros((4, 4), np.int16)), TypeError,
     "image must be uint8 or float"),
], ids=["2d", "5d", "query-count", "key-count", "self-needs-square", "no-query-tokens", "tokens-a-string",
        "token-not-str", "nan", "inf", "above-one", "negative", "empty", "batch", "missing-layer", "empty-list",
        "not-numbers", "title-type", "layer", "focus", "max-tokens", "prefix-without-image", "not-square",
        "grid-mismatch", "image-queries", "chw-image", "1d-image", "image-range", "image-dtype"])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_page_too_large_is_refused(monkeypatch):
    from attnkit.inspect import views

    monkeypatch.setattr(views, "MAX_CELLS", 1000)
    maps = softmax_maps(2, 2, 30, 30)
    with pytest.raises(ValueError, match=r"maps would put 3,600 cells on the page \(shape \(2, 2, 30, 30\)\), more "
                                         r"than 1,000: pass fewer layers or heads"):
        view(maps, query_tokens=words(30))
    assert view(maps, query_tokens=words(30), max_tokens=10).maps.shape == (2, 2, 10, 10)  # 400 cells
