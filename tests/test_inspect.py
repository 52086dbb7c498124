"""attnkit.inspect: captured maps against transformers' output_attentions on the bundled MiniLM, rollout on a
hand-computed example, and ``explain`` (focus choice, pooling, decoders, errors)."""

from __future__ import annotations

import pytest
import torch

from attnkit import hub
from attnkit.inspect import attention_layers, capture, explain, rollout
from attnkit.inspect.explanation import SEED_SENTENCE, choose_focus, make_bins, pool
from attnkit.models import GPT, GPTConfig, HybridConfig, HybridLM
from attnkit.nn import MultiHeadAttention
from helpers import assert_close

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
KERNELS = ("dense", "sdpa", "tiled")


@pytest.fixture(scope="module")
def minilm():
    return hub.load(MINILM)


@pytest.fixture(scope="module")
def hf_attentions(minilm):
    """transformers' eager BertModel on the same weights: its output_attentions for a padded batch."""
    transformers = pytest.importorskip("transformers")
    _, tokenizer = minilm
    ids, mask = tokenizer.encode([SEED_SENTENCE, "Attention is all you need."])
    reference = transformers.BertModel.from_pretrained(str(hub.resolve(MINILM)), attn_implementation="eager").eval()
    with torch.no_grad():
        out = reference(ids, attention_mask=mask, output_attentions=True)
    return ids, mask, out.attentions


@pytest.mark.parametrize("kernel", KERNELS)
def test_captured_maps_equal_transformers_output_attentions(minilm, hf_attentions, kernel):
    model, _ = minilm
    ids, mask, expected = hf_attentions
    model.set_kernel(kernel)
    try:
        with capture(model) as record, torch.no_grad():
            model(ids, attention_mask=mask)
    finally:
        model.set_kernel("auto")
    assert len(record.maps) == len(expected) == 6
    for ours, theirs in zip(record.maps, expected):
        assert ours.shape == theirs.shape == (2, 12, ids.shape[1], ids.shape[1])
        # padded keys get exactly 0 in both; padded query rows are compared too
        assert_close(ours, theirs, atol=1e-5, what="transformers' output_attentions")
    assert record.calls == [1] * 6
    assert record.causal == [False] * 6  # as each call said, not guessed from the model


def test_only_requested_layers_and_heads_are_recorded(minilm, hf_attentions):
    model, _ = minilm
    ids, mask, expected = hf_attentions
    with capture(model, layers=[4, 1], heads=[7, 2]) as record, torch.no_grad():
        model(ids, attention_mask=mask)
    assert [m is not None for m in record.maps] == [False, True, False, False, True, False]
    for layer in (1, 4):
        assert_close(record.maps[layer], expected[layer][:, [2, 7]], atol=1e-5, what=f"layer {layer} heads 2, 7")
    assert record.heads[1] == [2, 7] and record.heads[0] is None
    assert record.causal == [None, False, None, None, False, None]
    assert record.calls == [1] * 6  # every layer ran; only two were recomputed


def test_hooks_are_removed_on_exit_and_on_error(minilm):
    model, tokenizer = minilm
    layers = [m for _, m in attention_layers(model)]
    ids, mask = tokenizer.encode(["hello"])
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model):
            raise RuntimeError("boom")
    assert all(not m._recorders for m in layers)
    with capture(model) as record:
        pass
    with torch.no_grad():
        model(ids, attention_mask=mask)
    assert record.maps == [None] * 6 and all(not m._recorders for m in layers)


def test_reduce_and_generation_keep_the_latest_call():
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("nano", num_layers=2, vocab_size=50, max_seq_len=32)).eval()
    prompt = torch.randint(0, 50, (1, 5))
    with capture(model, reduce=lambda layer, probs: (layer, tuple(probs.shape))) as record:
        model.generate(prompt, 4)
    # the prompt's forward, then one call per new token with a cache: the last is 1 query over 8 keys
    assert record.calls == [4, 4]
    assert record.maps == [(0, (1, 4, 1, 8)), (1, (1, 4, 1, 8))]
    assert record.causal == [True, True]


def test_capture_with_grouped_query_heads_matches_a_reference():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, num_kv_heads=2).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    with capture(mha, heads=[1, 2]) as record:
        mha(x, causal=True)
    q = mha.q_proj(x).view(2, 7, 4, 8).transpose(1, 2)
    k = mha.k_proj(x).view(2, 7, 2, 8).transpose(1, 2)
    logits = q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) / 8 ** 0.5
    logits = logits.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    assert_close(record.maps[0], logits.softmax(-1)[:, [1, 2]].detach(), atol=1e-12, what="GQA heads 1, 2")
    assert record.causal == [True]


def test_capture_refuses_bad_requests(minilm):
    model, _ = minilm
    with pytest.raises(ValueError, match="layer 6 is out of range.*6 attention layers"):
        with capture(model, layers=[6]):
            pass
    with pytest.raises(ValueError, match="head 12 is out of range"):
        with capture(model, heads=[12]):
            pass
    with pytest.raises(TypeError, match="layer"):
        with capture(model, layers=["0"]):
            pass
    with pytest.raises(ValueError, match="no attnkit MultiHeadAttention"):
        with capture(torch.nn.Linear(2, 2)):
            pass


# rollout: 3 tokens, 2 layers, worked out by hand
# layer 1's heads average to A1 = [[1, 0, 0], [.5, .5, 0], [0, .5, .5]]; layer 2 is A2 = a cyclic shift.
# with the residual: Â1 = .5 A1 + .5 I = [[1, 0, 0], [.25, .75, 0], [0, .25, .75]],
#                    Â2 = [[.5, .5, 0], [0, .5, .5], [.5, 0, .5]];   rollout = Â2 @ Â1.
A1_HEADS = [[[1, 0, 0], [1, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, 0], [0, 0, 1]]]
A2 = [[[0, 1, 0], [0, 0, 1], [1, 0, 0]]]
BY_HAND_RESIDUAL = [[0.625, 0.375, 0.0], [0.125, 0.5, 0.375], [0.5, 0.125, 0.375]]
BY_HAND_PLAIN = [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]  # A2 @ A1: A1's rows 1, 2, 0


def test_rollout_on_a_hand_computed_example():
    maps = [torch.tensor([A1_HEADS], dtype=torch.float64), torch.tensor([A2], dtype=torch.float64)]
    torch.testing.assert_close(rollout(maps)[0], torch.tensor(BY_HAND_RESIDUAL, dtype=torch.float64))
    torch.testing.assert_close(rollout(maps, residual=False)[0], torch.tensor(BY_HAND_PLAIN, dtype=torch.float64))
    # head-fused (B, N, N) maps give the same; max fusion differs (row 1 of layer 1 is [1, 1, 0] / 2 after norm)
    fused = [maps[0].mean(1), maps[1][:, 0]]
    torch.testing.assert_close(rollout(fused), rollout(maps))
    assert not torch.allclose(rollout(maps, fusion="max"), rollout(maps))


def test_rollout_refuses_missing_or_ragged_maps():
    square = torch.full((1, 2, 3, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"layers \[1\] were not captured"):
        rollout([square, None])
    with pytest.raises(ValueError, match="square"):
        rollout([torch.full((1, 2, 3, 4), 0.25)])
    with pytest.raises(ValueError, match="at least one"):
        rollout([])
    with pytest.raises(ValueError, match="fusion"):
        rollout([square], fusion="median")


# explain


@pytest.fixture(scope="module")
def seed(minilm):
    return explain(SEED_SENTENCE, minilm)


def test_explain_the_seed_sentence(seed, minilm):
    assert not seed.causal and "encoder" in seed.summary()
    assert seed.tokens == ["[CLS]", "The", "animal", "didn", "'", "t", "cross", "the", "street", "because", "it",
                           "was", "too", "tired", "[SEP]"]
    assert seed.tokens[seed.focus] == "it"  # the pronoun, by default
    assert seed.maps.shape == (6, 12, 15, 15) and not seed.pooled
    model, tokenizer = minilm
    ids, mask = tokenizer.encode([SEED_SENTENCE])
    with capture(model) as record, torch.no_grad():
        model(ids, attention_mask=mask)
    full = torch.stack([m[0] for m in record.maps])  # (6, 12, 15, 15)
    torch.testing.assert_close(seed.maps, full)
    torch.testing.assert_close(seed.focus_rows, full[:, :, seed.focus])
    rolled = rollout(list(record.maps))[0]  # (15, 15)
    torch.testing.assert_close(seed.rollout, rolled)
    torch.testing.assert_close(seed.rollout_row, rolled[seed.focus])
    text = seed.summary()
    assert "focus: 'it' (token 10)" in text and "Rollout" in text
    for layer in range(6):  # the table's first column is the head-averaged argmax of the focus row
        best = int(full[layer, :, seed.focus].mean(0).argmax())
        assert f"\n{layer}      {seed.tokens[best]} " in text


def test_standout_heads_follow_their_definition(seed):
    heads = seed.standout_heads()
    assert heads, "MiniLM has heads that single out a word for 'it'"
    expected = {}  # every head that meets the definition, found by sorting each focus row in plain Python
    for layer in range(seed.num_layers):
        for head in range(seed.num_heads):
            row = seed.focus_rows[layer, head].tolist()
            first, second = sorted(range(len(row)), key=lambda i: -row[i])[:2]
            sink = seed.special[first] or first == seed.focus or (seed.causal and first == 0)
            if row[first] >= 2 * row[second] and not sink:
                expected[layer, head] = (first, row[first], row[second])
    found = {(layer, head): (target, weight, second) for layer, head, target, weight, second in heads}
    assert len(found) == len(heads), "a head is listed twice"
    assert found.keys() == expected.keys()
    for key, (target, weight, second) in found.items():
        assert target == expected[key][0] and (weight, second) == pytest.approx(expected[key][1:]), key
    assert [h[3] for h in heads] == sorted((h[3] for h in heads), reverse=True)
    # the detail map defaults to the deepest layer that has a standout head
    assert seed.layer == max(h[0] for h in heads) and (seed.layer, seed.head) in [(h[0], h[1]) for h in heads]


def test_focus_choice():
    tokens = ["[CLS]", "The", "cat", "sat", "un", "believ", "ably", "well", "[SEP]"]
    special = [True] + [False] * 7 + [True]
    words = [None, 0, 1, 2, 3, 3, 3, 4, None]
    assert choose_focus(tokens, special, words, None) == 7  # no pronoun: the last content word
    assert choose_focus(tokens, special, words, "UNBELIEVABLY") == 4  # a word's first piece
    assert choose_focus(tokens, special, words, 2) == 2
    with pytest.raises(ValueError, match="'dog' is not in the text.*'unbelievably'"):
        choose_focus(tokens, special, words, "dog")
    for index in (9, -1):  # a negative index is refused like --layer's, not counted from the end
        with pytest.raises(ValueError, match=f"focus index {index} is out of range: the text has 9 tokens"):
            choose_focus(tokens, special, words, index)
    tokens[2] = "she"
    assert choose_focus(tokens, special, words, None) == 2  # a pronoun wins over a later content word


def test_pooling_keeps_rows_stochastic_and_sums_blocks():
    probs = torch.rand(2, 10, 10, dtype=torch.float64).softmax(-1)
    bins = make_bins(10, 4)
    assert bins == [(0, 2), (2, 5), (5, 8), (8, 10)]  # round(i * 10 / 4): 0, 2, 5, 8, 10
    pooled = pool(probs, bins)
    torch.testing.assert_close(pooled.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    torch.testing.assert_close(pooled[1, 1, 2], probs[1, 2:5, 5:8].sum(-1).mean())
    assert pool(probs, make_bins(10, 10)) is probs


def test_long_texts_are_pooled(minilm):
    text = " ".join([SEED_SENTENCE] * 12)
    e = explain(text, minilm, max_tokens=32)
    n = len(e.tokens)
    assert n > 32 and e.pooled and e.maps.shape == (6, 12, 32, 32) and e.focus_rows.shape == (6, 12, n)
    assert e.bins[0][0] == 0 and e.bins[-1][1] == n
    torch.testing.assert_close(e.maps.sum(-1), torch.ones(6, 12, 32), atol=1e-5, rtol=0)
    model, tokenizer = minilm  # the pooled maps and rollout, and the full-resolution rows, from the recorded maps
    ids, mask = tokenizer.encode([text])
    with capture(model) as record, torch.no_grad():
        model(ids, attention_mask=mask)
    full = torch.stack([m[0] for m in record.maps])  # (6, 12, n, n)
    rolled = rollout(list(record.maps))[0]  # (n, n)
    torch.testing.assert_close(e.maps, pool(full, e.bins))
    torch.testing.assert_close(e.focus_rows, full[:, :, e.focus])
    torch.testing.assert_close(e.rollout, pool(rolled, e.bins))
    torch.testing.assert_close(e.rollout_row, rolled[e.focus])
    assert any("pooled into 32" in note for note in e.notes)
    assert e.tokens[e.focus] == "it" and e.focus > n - 15  # the last pronoun


def test_explain_a_decoder(minilm):
    torch.manual_seed(0)
    _, tokenizer = minilm  # any tokenizer works: explain needs its encoding() only
    model = GPT(GPTConfig.preset("nano", num_layers=2, vocab_size=tokenizer.vocab_size, max_seq_len=64)).eval()
    e = explain("the cat sat because it was tired", (model, tokenizer), focus="cat")
    assert e.causal and e.tokens[e.focus] == "cat" and e.maps.shape[:2] == (2, 4)
    upper = torch.ones(len(e.tokens), len(e.tokens), dtype=torch.bool).triu(1)
    assert e.maps[..., upper].abs().max() == 0  # a decoder never looks ahead
    assert e.focus_rows[..., e.focus + 1:].abs().max() == 0


class HybridDecoder(torch.nn.Module):
    """A decoder that is no GPT: ``explain`` must learn that it is causal from its attention calls."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.lm = HybridLM(HybridConfig.preset("tiny", vocab_size=vocab_size, pattern="AMA"))

    def forward(self, input_ids, attention_mask=None):
        return self.lm(input_ids)


def test_explain_a_decoder_that_is_not_a_gpt(minilm):
    torch.manual_seed(0)
    _, tokenizer = minilm
    e = explain("the cat sat because it was tired", (HybridDecoder(tokenizer.vocab_size).eval(), tokenizer))
    assert e.causal and "decoder (causal)" in e.summary() and e.maps.shape[:2] == (2, 4)
    upper = torch.ones(len(e.tokens), len(e.tokens), dtype=torch.bool).triu(1)
    assert e.maps[..., upper].abs().max() == 0


def test_explain_errors(minilm):
    with pytest.raises(ValueError, match="non-empty"):
        explain("   ", minilm)
    with pytest.raises(ValueError, match="layer 6 is out of range"):
        explain("a b c", minilm, layer=6)
    with pytest.raises(ValueError, match="head 12 is out of range"):
        explain("a b c", minilm, head=12)
    with pytest.raises(ValueError, match="not in the text"):
        explain("a b c", minilm, focus="zebra")


def test_explain_leaves_the_models_kernel_as_it_was(minilm):
    model, _ = minilm
    layers = [m for _, m in attention_layers(model)]
    before = [m.kernel for m in layers]
    dense = explain(SEED_SENTENCE, minilm, kernel="dense")
    assert [m.kernel for m in layers] == before
    torch.testing.assert_close(dense.maps, explain(SEED_SENTENCE, minilm, kernel="tiled").maps)
