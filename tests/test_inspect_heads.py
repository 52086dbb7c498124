"""attnkit.inspect.heads: pruned layers and models against the unpruned ones with the pruned heads' output
zeroed (MHA, GQA, MQA, ALiBi, T5 bias, cross-attention; GPT, BERT incl. the pretrained MiniLM, Transformer),
parameter counts computed by hand, cached decoding after pruning, head importance against finite
differences, a model left as found, and clear refusals that change nothing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnkit
from attnkit.inspect.heads import attention_layers, head_importance, prune_heads
from attnkit.models.bert import BERT, BERTConfig
from attnkit.models.gpt import GPT, GPTConfig
from attnkit.models.transformer import Transformer, TransformerConfig
from attnkit.nn import ALiBiPositions, MultiHeadAttention, RotaryEmbedding, T5RelativeBias
from attnkit.nn.positions import RelativePositions
from helpers import TOLERANCE, assert_close, magnitude, randn

F64_ATOL = TOLERANCE["floor", torch.float64]  # pruned vs zeroed: the same sums with zero terms left out


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def zeroed(model: nn.Module, heads: dict[int, list[int]]) -> nn.Module:
    """The reference: a copy of ``model`` whose listed heads contribute nothing (their out_proj columns are 0),
    built without attnkit.inspect."""
    ref = copy.deepcopy(model)
    layers = [m for m in ref.modules() if isinstance(m, MultiHeadAttention)]
    with torch.no_grad():
        for i, hs in heads.items():
            d = layers[i].head_dim
            for h in hs:
                layers[i].out_proj.weight[:, h * d:(h + 1) * d] = 0.0
    return ref


def assert_same_output(actual: torch.Tensor, expected: torch.Tensor, unpruned: torch.Tensor, what: str) -> None:
    """``actual`` equals ``expected`` to float64 rounding, and pruning changed the output by far more than
    that (else the comparison proves nothing)."""
    atol = F64_ATOL * magnitude(expected)
    assert_close(actual, expected, atol=atol, what=what)
    assert (unpruned - expected).abs().max() > 1e3 * atol, f"{what}: the pruned heads made no difference"


# --------------------------------------------------------------------------------------------------
# One layer: pruned output = output without the pruned heads; parameters counted by hand

def t5(heads: int) -> T5RelativeBias:
    return T5RelativeBias(heads, num_buckets=8, max_distance=16)


# name: (constructor, heads to prune, (num_heads, num_kv_heads) after, parameters removed computed by hand,
#        forward options)
LAYER_CASES = {
    # 5 heads of 6, biases: per head q, k, v rows 3 * (30 * 6 + 6) and out_proj columns 30 * 6
    "mha": (lambda: MultiHeadAttention(30, 5), [1, 3], (3, 3), 2 * (3 * (30 * 6 + 6) + 30 * 6), {}),
    # head_dim 7 given explicitly, no biases: per head 3 * 20 * 7 rows + 20 * 7 columns
    "mha-head-dim-7-no-bias": (lambda: MultiHeadAttention(20, 4, head_dim=7, bias=False), [0], (3, 3),
                               4 * 20 * 7, {"causal": True}),
    # 8 query heads, 4 kv heads of 4: the group {2, 3} goes with kv head 1: 2 q rows, 2 out columns, 1 k + 1 v
    "gqa-whole-group": (lambda: MultiHeadAttention(32, 8, num_kv_heads=4), [2, 3], (6, 3),
                        2 * (32 * 4 + 4) + 2 * 32 * 4 + 2 * (32 * 4 + 4), {"causal": True}),
    # one query head from each group: every kv head stays, groups of 1
    "gqa-one-per-group": (lambda: MultiHeadAttention(32, 8, num_kv_heads=4), [0, 3, 5, 6], (4, 4),
                          4 * (32 * 4 + 4) + 4 * 32 * 4, {}),
    "mqa": (lambda: MultiHeadAttention(32, 4, num_kv_heads=1), [0, 2], (2, 1), 2 * (32 * 8 + 8) + 2 * 32 * 8, {}),
    # ALiBi slopes are not parameters
    "alibi": (lambda: MultiHeadAttention(36, 6, positions=ALiBiPositions(6)), [0, 4, 5], (3, 3),
              3 * (3 * (36 * 6 + 6) + 36 * 6), {"causal": True}),
    # T5 bias: one column of 8 buckets per head too
    "t5-bias": (lambda: MultiHeadAttention(24, 4, positions=t5(4)), [2], (3, 3),
                3 * (24 * 6 + 6) + 24 * 6 + 8, {}),
    "rope-qk-norm-gqa": (lambda: MultiHeadAttention(32, 4, num_kv_heads=2, qk_norm=True,
                                                    positions=RotaryEmbedding(8)), [0, 1], (2, 1),
                         2 * (32 * 8 + 8) + 2 * 32 * 8 + 2 * (32 * 8 + 8), {"causal": True}),
    # cross-attention from a 13-wide context: k and v rows are 13 wide
    "cross": (lambda: MultiHeadAttention(24, 4, context_dim=13, cross_attention=True), [1, 2], (2, 2),
              2 * ((24 * 6 + 6) + 24 * 6 + 2 * (13 * 6 + 6)), {}),
}


@pytest.mark.parametrize("case", LAYER_CASES)
def test_pruned_layer_equals_layer_without_those_heads(case):
    build, heads, (num_heads, num_kv_heads), removed, options = LAYER_CASES[case]
    torch.manual_seed(0)
    attn = build().double()
    x = randn(2, 11, attn.dim, seed=1)
    if attn.cross_attention:
        options = {**options, "context": randn(2, 9, 13, seed=2)}
    unpruned = attn(x, **options)
    expected = zeroed(attn, {0: heads})(x, **options)
    before = num_params(attn)
    prune_heads(attn, {0: heads})
    assert (attn.num_heads, attn.num_kv_heads) == (num_heads, num_kv_heads)
    assert before - num_params(attn) == removed
    assert_same_output(attn(x, **options), expected, unpruned, case)


def test_pruned_alibi_and_t5_keep_their_heads_own_parameters():
    alibi = MultiHeadAttention(36, 6, positions=ALiBiPositions(6))
    slopes = alibi.positions.slopes.clone()
    prune_heads(alibi, {0: [0, 4]})
    torch.testing.assert_close(alibi.positions.slopes, slopes[[1, 2, 3, 5]], rtol=0, atol=0)
    assert alibi.positions.num_heads == 4
    bias = MultiHeadAttention(24, 4, positions=t5(4))
    table = bias.positions.embedding.weight.detach().clone()  # (buckets, H)
    prune_heads(bias, {0: [1]})
    torch.testing.assert_close(bias.positions.embedding.weight, table[:, [0, 2, 3]], rtol=0, atol=0)


def test_pruning_twice_uses_current_indices():
    torch.manual_seed(0)
    attn = MultiHeadAttention(30, 5).double()
    x = randn(2, 7, 30, seed=3)
    expected = zeroed(attn, {0: [1, 4]})(x)
    prune_heads(attn, {0: [4]})
    prune_heads(attn, {0: [1]})  # indices of the 4 heads left: original head 1 is still head 1
    assert attn.num_heads == 3
    assert_close(attn(x), expected, atol=F64_ATOL * magnitude(expected), what="pruned twice")


def test_shared_t5_bias_must_lose_the_same_heads_everywhere():
    torch.manual_seed(0)
    shared = t5(4)
    stack = nn.ModuleList([MultiHeadAttention(24, 4, positions=shared), MultiHeadAttention(24, 4, positions=shared)])
    stack.double()
    with pytest.raises(ValueError, match=r"layers \[0, 1\] share one T5RelativeBias"):
        prune_heads(stack, {0: [1]})
    with pytest.raises(ValueError, match=r"layers \[0, 1\] share one T5RelativeBias"):
        prune_heads(stack, {0: [1], 1: [2]})
    x = randn(2, 6, 24, seed=4)
    ref = zeroed(stack, {0: [1], 1: [1]})
    prune_heads(stack, {0: [1], 1: [1]})
    assert shared.num_heads == 3 and shared.embedding.weight.shape == (8, 3)
    for attn, ref_attn in zip(stack, ref):
        assert_close(attn(x), ref_attn(x), atol=F64_ATOL * magnitude(ref_attn(x)), what="shared T5 bias")


# --------------------------------------------------------------------------------------------------
# Whole models

def tiny_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("nano", vocab_size=61, num_layers=2, dim=32, **overrides)).double().eval()


# name: (config overrides, heads to prune, (num_heads, num_kv_heads) of each layer after)
GPT_VARIANTS = {
    "learned": (dict(), {0: [1, 2], 1: [0]}, [(2, 2), (3, 3)]),
    # layer 0 loses the group of kv head 0; layer 1 one query head of each group
    "alibi-gqa": (dict(positions="alibi", attention=dict(num_kv_heads=2)), {0: [0, 1], 1: [1, 2]}, [(2, 1), (2, 2)]),
    "rope-mqa-no-bias": (dict(positions="rope", attention=dict(num_kv_heads=1, bias=False), ffn=dict(bias=False)),
                         {0: [1, 2], 1: [0]}, [(2, 1), (3, 1)]),
}


@pytest.mark.parametrize("variant", GPT_VARIANTS)
def test_pruned_gpt_equals_zeroed_heads_and_decodes_with_a_cache(variant):
    overrides, heads, sizes = GPT_VARIANTS[variant]
    model = tiny_gpt(**overrides)
    ids = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(5))
    unpruned, expected = model(ids).logits, zeroed(model, heads)(ids).logits
    prune_heads(model, heads)
    assert [(m.num_heads, m.num_kv_heads) for _, m in attention_layers(model)] == sizes
    full = model(ids).logits
    assert_same_output(full, expected, unpruned, variant)
    cache = model.new_cache("static", max_len=12)
    with torch.no_grad():
        steps = [model(ids[:, :5], cache=cache).logits] + [model(ids[:, i:i + 1], cache=cache).logits
                                                            for i in range(5, 12)]
    assert_close(torch.cat(steps, dim=1), full, atol=F64_ATOL * magnitude(full), what=f"{variant} cached")
    prompt = ids[:, :4]
    torch.testing.assert_close(model.generate(prompt, 6), model.generate(prompt, 6, use_cache=False), rtol=0, atol=0)
    assert model.config.attention.num_heads == 4  # the config describes the model as built (see prune_heads)


def test_pruned_gpt_parameter_count():
    model = tiny_gpt(positions="alibi", attention=dict(num_kv_heads=2))  # dim 32, 4 heads of 8, 2 kv heads, biases
    before = model.num_parameters()
    prune_heads(model, {0: [2, 3], 1: [0, 2]})
    # layer 0 loses a whole group: 2 q heads, 2 out_proj slices, 1 k and 1 v head; layer 1 only 2 q heads
    per_q = 32 * 8 + 8
    expected = (2 * per_q + 2 * 32 * 8 + 2 * per_q) + (2 * per_q + 2 * 32 * 8)
    assert before - model.num_parameters() == expected


def test_pruned_bert_equals_zeroed_heads():
    torch.manual_seed(0)
    model = BERT(BERTConfig.preset("tiny", dropout=0.0, mlm_head=True)).double().eval()
    ids = torch.randint(1, 128, (3, 10), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids).masked_fill(torch.arange(10) >= torch.tensor([[10], [7], [3]]), 0)
    heads = {0: [3], 1: [0, 1, 2]}
    unpruned = model(ids, mask).mlm_logits
    expected = zeroed(model, heads)(ids, mask).mlm_logits
    prune_heads(model, heads)
    assert_same_output(model(ids, mask).mlm_logits, expected, unpruned, "BERT tiny")


def test_pruned_pretrained_minilm_equals_zeroed_heads(tmp_path):
    model, tokenizer = attnkit.hub.load("sentence-transformers/all-MiniLM-L6-v2")
    model = model.double().eval()
    ids, _ = tokenizer.encode(["Heads can be pruned without retraining."])
    heads = {0: [0, 5, 11], 3: list(range(1, 12)), 5: [7]}
    unpruned = model(ids).last_hidden_state
    expected = zeroed(model, heads)(ids).last_hidden_state
    before = model.num_parameters()
    prune_heads(model, heads)
    assert [m.num_heads for _, m in attention_layers(model)] == [9, 12, 12, 1, 12, 11]
    assert before - model.num_parameters() == 15 * (3 * (384 * 32 + 32) + 384 * 32)
    assert_same_output(model(ids).last_hidden_state, expected, unpruned, "MiniLM")
    with pytest.raises(ValueError, match=r"pruned attention heads \(layers with \[1, 9, 11\] heads.*torch.save"):
        attnkit.hub.save(model, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_pruned_transformer_equals_zeroed_heads_and_decodes_with_a_cache():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny")).double().eval()
    names = [name for name, _ in attention_layers(model)]
    assert names == ["encoder_layers.0.attn", "encoder_layers.1.attn", "decoder_layers.0.self_attn",
                     "decoder_layers.0.cross_attn", "decoder_layers.1.self_attn", "decoder_layers.1.cross_attn"]
    heads = {0: [1], 2: [0, 3], 3: [2], 5: [0, 1, 2]}
    g = torch.Generator().manual_seed(7)
    src, tgt = torch.randint(3, 16, (2, 7), generator=g), torch.randint(3, 16, (2, 5), generator=g)
    unpruned, expected = model(src, tgt).logits, zeroed(model, heads)(src, tgt).logits
    prune_heads(model, heads)
    assert_same_output(model(src, tgt).logits, expected, unpruned, "Transformer")
    torch.testing.assert_close(model.greedy_decode(src, 8), model.greedy_decode(src, 8, use_cache=False),
                               rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Refusals: clear, and nothing changed

def gqa_stack() -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList([MultiHeadAttention(32, 4, positions=ALiBiPositions(4)),
                          MultiHeadAttention(32, 4, num_kv_heads=2)])


BAD_PRUNING = {
    "layer-out-of-range": ({2: [0]}, ValueError, r"layer 2 is out of range: ModuleList has 2 attention layers"),
    "negative-layer": ({-1: [0]}, ValueError, (r"heads key: layer -1 is out of range: ModuleList has 2 attention "
                                               r"layers \(0..1\)")),
    "str-layer": ({"0": [0]}, TypeError, r"heads key: layer must be an int in \[0, 1\], got str '0'"),
    "head-out-of-range": ({0: [4]}, ValueError, r"heads\[0\]: head 4 is out of range: layer 0 has 4 heads \(0..3\)"),
    "duplicate": ({0: [1, 2, 1]}, ValueError, r"lists head\(s\) \[1\] more than once"),
    "all-heads": ({0: [3, 2, 1, 0]}, ValueError, "would remove all 4 heads of layer 0"),
    "unequal-groups": ({1: [0]}, ValueError, r"unequal sizes \[1, 2\].*num_kv_heads=2"),
    "bool-head": ({0: [True]}, TypeError, r"heads\[0\]: head must be an int in \[0, 3\], got bool"),
    "str-heads": ({0: "01"}, TypeError, r"heads\[0\] must be a list of head indices, got str"),
    "not-a-dict": ([[0]], TypeError, r"heads must be a dict"),
    # the valid request for layer 0 must not be applied when layer 1's is refused
    "valid-then-invalid": ({0: [0], 1: [1]}, ValueError, "unequal sizes"),
}


@pytest.mark.parametrize("case", BAD_PRUNING)
def test_bad_pruning_is_refused_and_changes_nothing(case):
    heads, error, message = BAD_PRUNING[case]
    stack = gqa_stack()
    state = {k: v.clone() for k, v in stack.state_dict().items()}
    slopes = stack[0].positions.slopes.clone()
    with pytest.raises(error, match=message):
        prune_heads(stack, heads)
    assert [(m.num_heads, m.num_kv_heads) for m in stack] == [(4, 4), (4, 2)]
    assert stack[0].positions.num_heads == 4 and torch.equal(stack[0].positions.slopes, slopes)
    after = stack.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)


def test_unknown_positions_are_refused_and_empty_lists_are_no_ops():
    class PerHead(RelativePositions):
        num_heads = 4

    attn = MultiHeadAttention(32, 4, positions=PerHead())
    with pytest.raises(ValueError, match="positions PerHead, which prune_heads cannot slice"):
        prune_heads(attn, {0: [1]})
    assert prune_heads(attn, {0: []}) is attn and attn.num_heads == 4
    with pytest.raises(ValueError, match="has no attnkit MultiHeadAttention"):
        prune_heads(nn.Linear(3, 3), {})


# --------------------------------------------------------------------------------------------------
# Importance: |dL/dξ| against finite differences; the model left as found

def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids).logits[:, :-1]  # (B, N-1, V)
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def loss_with_head_scaled(model: GPT, ids: torch.Tensor, layer: int, head: int, factor: float) -> float:
    """The loss with head ``head`` of layer ``layer`` scaled by ``factor`` through its out_proj columns."""
    attn = attention_layers(model)[layer][1]
    cols = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
    with torch.no_grad():
        saved = attn.out_proj.weight[:, cols].clone()
        attn.out_proj.weight[:, cols] *= factor
        loss = lm_loss(model, ids).item()
        attn.out_proj.weight[:, cols] = saved
    return loss


def test_head_importance_equals_finite_differences():
    model = tiny_gpt(attention=dict(num_kv_heads=2))
    prune_heads(model, {1: [2, 3]})  # layers of 4 and 2 heads: the scores are padded with NaN
    with torch.no_grad():
        attention_layers(model)[0][1].out_proj.weight[:, 8:16] = 0.0  # head 1 of layer 0 does nothing
    g = torch.Generator().manual_seed(8)
    batches = [torch.randint(0, 61, (2, 9), generator=g) for _ in range(3)]
    eps = 1e-5
    signed = torch.tensor([[[(loss_with_head_scaled(model, b, layer, h, 1 + eps)
                              - loss_with_head_scaled(model, b, layer, h, 1 - eps)) / (2 * eps)
                             for h in range(4 if layer == 0 else 2)] + [0.0] * (2 if layer else 0)
                            for layer in range(2)] for b in batches], dtype=torch.float64)  # (batches, L, H)
    expected = signed.abs().mean(0)
    # the batches disagree in sign somewhere, so mean |dL/dξ| and |mean dL/dξ| differ: the test can tell them apart
    assert (expected - signed.mean(0).abs()).max() > 1e-4
    raw = head_importance(model, batches, lm_loss, normalize=False)
    norm = head_importance(model, batches, lm_loss)
    assert raw.dtype == torch.float64 and raw.shape == norm.shape == (2, 4)
    assert raw[1, 2:].isnan().all() and norm[1, 2:].isnan().all() and not raw[0].isnan().any()
    assert raw[0, 1] == 0.0
    for layer, n in enumerate((4, 2)):
        assert_close(raw[layer, :n], expected[layer, :n], atol=1e-8, what=f"layer {layer} vs finite differences")
        assert_close(norm[layer, :n], expected[layer, :n] / expected[layer, :n].norm(), atol=1e-8,
                     what=f"normalized layer {layer}")


def test_head_importance_leaves_the_model_as_found(capsys):
    model = tiny_gpt(dropout=0.1).train()
    model.layers[1].eval()
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(9))
    lm_loss(model, ids).backward()
    model.final_norm.weight.grad = None  # one parameter without a gradient
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    with torch.no_grad():
        scores = head_importance(model, [ids], lm_loss, progress=True)
    assert scores.isfinite().all() and (scores > 0).any()
    assert "head_importance: batch 1, loss" in capsys.readouterr().err
    for name, p in model.named_parameters():
        assert (p.grad is None) if grads[name] is None else torch.equal(p.grad, grads[name]), name
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(not m.out_proj._forward_pre_hooks for _, m in attention_layers(model))


def test_head_importance_removes_its_hooks_when_the_loss_raises():
    model = tiny_gpt()
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(10))
    before = model(ids).logits

    def failing(m, batch):
        m(batch)
        raise RuntimeError("loss failed")

    with pytest.raises(RuntimeError, match="loss failed"):
        head_importance(model, [ids], failing)
    assert all(not m.out_proj._forward_pre_hooks for _, m in attention_layers(model))
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)


BAD_IMPORTANCE = {
    "no-batches": (lambda m, b: lm_loss(m, b), [], ValueError, "batches is empty"),
    "loss-not-callable": (3, [None], TypeError, "loss_fn must be callable"),
    "batches-not-iterable": (lambda m, b: lm_loss(m, b), 3, TypeError,
                             r"batches must be an iterable of batches .*got int"),
    "loss-not-a-tensor": (lambda m, b: 1.0, [None], TypeError, "must return a scalar tensor, got float"),
    "loss-not-scalar": (lambda m, b: m(b).logits.sum(-1), ["ids"], ValueError, r"shape \(2, 9\)"),
    "loss-detached": (lambda m, b: lm_loss(m, b).detach(), ["ids"], ValueError, "depends on no attention head"),
}


@pytest.mark.parametrize("case", BAD_IMPORTANCE)
def test_head_importance_bad_input(case):
    loss_fn, batches, error, message = BAD_IMPORTANCE[case]
    model = tiny_gpt()
    ids = torch.randint(0, 61, (2, 9))
    if isinstance(batches, list):
        batches = [ids if b == "ids" else b for b in batches]
    with pytest.raises(error, match=message):
        head_importance(model, batches, loss_fn)


def test_head_importance_refuses_a_model_without_attention():
    with pytest.raises(ValueError, match="Linear has no attnkit MultiHeadAttention"):
        head_importance(nn.Linear(2, 2), [torch.zeros(2)], lambda m, b: m(b).sum())


def test_the_pruning_example_runs(capsys, monkeypatch):
    """examples/prune_heads.py end to end on a short schedule (its full run: ~1 minute, see the README)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "prune_heads.py"
    spec = importlib.util.spec_from_file_location("prune_heads_example", path)
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # its dataclasses look their module up
    spec.loader.exec_module(example)
    example.main(steps=10, batch_size=8, random_seeds=1, test_size=100)
    out = capsys.readouterr().out
    assert "[4/4]" in out and "acc (importance)" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:2].strip().isdigit() and "," in line]
    assert [int(r[0]) for r in rows] == list(range(0, 15, 2))  # 16 heads, at least one kept per layer
