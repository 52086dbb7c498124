"""attnkit.inspect on transformers models that run with ``attn_implementation="attnkit"``.

Tiny random Llama (grouped-query) and BERT, built from configs (no download): the maps ``capture`` records equal
transformers' own ``output_attentions`` from the eager implementation on the same model, at every real query row.
"""

from __future__ import annotations

import pytest
import torch

from attnkit.inspect import attention_layers, capture, rollout
from attnkit.integrations.transformers import attention_modules, register
from helpers import assert_close, padded_batch

transformers = pytest.importorskip("transformers")

VOCAB, N = 64, 9
# float32: the recomputed maps and eager's differ by at most 7.8e-7 here (measured: Llama and BERT, padded or not)
ATOL = 1e-5


def llama():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      initializer_range=0.3, pad_token_id=0)
    return transformers.LlamaForCausalLM(config)


def bert():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, initializer_range=0.3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    return transformers.BertModel(config, add_pooling_layer=False)


MODELS = {"llama": llama, "bert": bert}
PADDING = {"llama": "left", "bert": "right"}  # how each is batched in practice


def build(name: str):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    model.set_attn_implementation(register())
    return model


def batch(padding: str):
    """(ids (2, N), attention mask (2, N) or None for "none"): row 1 full, row 0 with 3 pad tokens."""
    return padded_batch(VOCAB, N, padding)


def eager_attentions(model, ids, mask) -> tuple[torch.Tensor, ...]:
    """transformers' own maps: the same model switched to eager attention for one forward, then back."""
    name = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(name)


def real_rows(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, H, N, N) maps at real query rows, as (rows, H, N): a pad query that may see nothing gets zeros in
    attnkit and a uniform row in eager."""
    return maps.transpose(1, 2)[mask.bool()]


@pytest.mark.parametrize("name", list(MODELS))
def test_captured_maps_equal_eager_output_attentions(name):
    model = build(name)
    ids, mask = batch(PADDING[name])
    expected = eager_attentions(model, ids, mask)
    assert model.config._attn_implementation == "attnkit"
    with capture(model) as record, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert record.names == [n for n, _ in attention_modules(model)] and len(record.names) == 2
    assert record.calls == [1, 1]
    assert record.causal == [False, False]  # padding travels as a bool mask, causality with it (Llama)
    for layer, (ours, theirs) in enumerate(zip(record.maps, expected)):
        assert ours.shape == theirs.shape == (2, 4, N, N)
        assert_close(real_rows(ours, mask), real_rows(theirs, mask), atol=ATOL, what=f"{name} layer {layer}")


@pytest.mark.parametrize("name", list(MODELS))
def test_requested_layers_and_heads(name):
    model = build(name)
    ids, mask = batch(PADDING[name])
    expected = eager_attentions(model, ids, mask)
    with capture(model, layers=[1], heads=[0]) as record, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert record.maps[0] is None and record.maps[1].shape == (2, 1, N, N)
    assert record.calls == [1, 1]
    assert_close(real_rows(record.maps[1], mask), real_rows(expected[1][:, [0]], mask), atol=ATOL,
                 what=f"{name} layer 1 head 0")
    # grouped-query: head 3 of Llama reads key/value head 1
    with capture(model, layers=[0], heads=[3]) as record, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert_close(real_rows(record.maps[0], mask), real_rows(expected[0][:, [3]], mask), atol=ATOL,
                 what=f"{name} layer 0 head 3")


def test_unpadded_causal_call_and_rollout():
    """Without padding Llama's mask is left out and the call says causal; rollout runs over the maps."""
    model = build("llama")
    ids, _ = batch("left")
    expected = eager_attentions(model, ids, None)
    with capture(model) as record, torch.no_grad():
        model(input_ids=ids)
    assert record.causal == [True, True]
    for ours, theirs in zip(record.maps, expected):
        assert_close(ours, theirs, atol=ATOL, what="llama, no padding")
    rolled = rollout(record.maps)
    assert rolled.shape == (2, N, N)
    assert_close(rolled.sum(-1), torch.ones(2, N), atol=1e-6, what="rollout row sums")
    assert torch.all(rolled.triu(1) == 0)  # causal all the way through


def test_hooks_are_removed_and_cost_nothing_after():
    model = build("bert")
    ids, mask = batch("right")
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model):
            raise RuntimeError("boom")
    with capture(model) as record:
        pass
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert record.calls == [0, 0] and record.maps == [None, None]


def test_a_model_not_running_attnkit_says_how_to_switch():
    torch.manual_seed(0)
    model = llama().eval()
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match=r"attn_implementation='eager'.*register\(\).*set_attn_implementation"):
        attention_layers(model)
    with pytest.raises(ValueError, match="register"):
        with capture(model):
            pass
