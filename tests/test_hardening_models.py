"""Issue 18, models and modules: from_torch keeps float64 weights bit for bit; configs refuse eps, RoPE bases,
MoE options and kernel names that would only fail (or give NaN) later; attention_mask holds 0/1 only;
generate refuses an empty prompt and bad sampling options and survives tiny temperatures;
MultiHeadAttention takes an additive ``bias=`` and hands it to ``attnkit.attention``."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import models
from attnkit.models.sampling import next_token
from attnkit.nn import MoE
from attnkit.nn.attention import MultiHeadAttention, set_kernel
from attnkit.nn.positions import ALiBiPositions, RotaryEmbedding

from helpers import max_abs_error


def tiny_gpt(**overrides) -> models.GPT:
    torch.manual_seed(0)
    return models.GPT(models.GPTConfig.preset("nano", vocab_size=41, num_layers=2, dim=32, **overrides)).eval()


def tiny_hybrid() -> models.HybridLM:
    torch.manual_seed(0)
    return models.HybridLM(models.HybridConfig.preset("tiny", vocab_size=41, dim=32)).eval()


def tiny_bert() -> models.BERT:
    torch.manual_seed(0)
    return models.BERT(models.BERTConfig.preset("tiny", vocab_size=41)).eval()


def tiny_transformer() -> models.Transformer:
    torch.manual_seed(0)
    return models.Transformer(models.TransformerConfig.preset("tiny", src_vocab_size=41,
                                                               tgt_vocab_size=41)).eval()


# --- 5: from_torch keeps the source's dtype -----------------------------------------------------------


@pytest.mark.parametrize("kdim", [None, 12], ids=["packed", "kdim"])
def test_from_torch_float64_weights_bitwise_and_outputs_identical(kdim):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4, kdim=kdim, vdim=kdim, batch_first=True, dtype=torch.float64).eval()
    with torch.no_grad():
        for p in ref.parameters():  # every entry needs more than float32's 24 bits
            p.copy_(torch.randn_like(p))
    ours = MultiHeadAttention.from_torch(ref)
    if ref._qkv_same_embed_dim:
        sources = ref.in_proj_weight.chunk(3)
    else:
        sources = (ref.q_proj_weight, ref.k_proj_weight, ref.v_proj_weight)
    for proj, w, b in zip((ours.q_proj, ours.k_proj, ours.v_proj), sources, ref.in_proj_bias.chunk(3)):
        assert proj.weight.dtype == torch.float64 and torch.equal(proj.weight, w) and torch.equal(proj.bias, b)
    assert torch.equal(ours.out_proj.weight, ref.out_proj.weight)
    assert torch.equal(ours.out_proj.bias, ref.out_proj.bias)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    ctx = x if kdim is None else torch.randn(2, 9, kdim, dtype=torch.float64)
    expected, _ = ref(x, ctx, ctx, need_weights=False)
    got = ours(x) if kdim is None else ours(x, ctx)
    assert max_abs_error(got, expected) <= 1e-12


# --- 6: eps and RoPE bases -------------------------------------------------------------------------


BAD_FLOATS = [0.0, -1e-5, math.nan, math.inf]


# name: (a preset with the value where the field lives, the field the refusal names)
EPS_AND_BASE = {
    "GPTConfig-norm.eps": (lambda v: models.GPTConfig.preset("nano", norm=dict(eps=v)),
                           r"NormConfig\.eps must be a finite number > 0"),
    "GPTConfig-attention.rope.base": (lambda v: models.GPTConfig.preset("nano", attention=dict(rope=dict(base=v))),
                                      r"RopeConfig\.base must be > 0"),
    "HybridConfig-norm_eps": (lambda v: models.HybridConfig.preset("tiny", norm_eps=v),
                              r"HybridConfig\.norm_eps must be > 0"),
    "HybridConfig-rope_base": (lambda v: models.HybridConfig.preset("tiny", rope_base=v),
                               r"HybridConfig\.rope_base must be > 0"),
}


@pytest.mark.parametrize("value", BAD_FLOATS, ids=str)
@pytest.mark.parametrize("case", EPS_AND_BASE)
def test_config_refuses_non_positive_eps_and_rope_base(case, value):
    build, match = EPS_AND_BASE[case]
    with pytest.raises(ValueError, match=match):
        build(value)


def test_rotary_embedding_refuses_a_bad_base():
    for base in (0.0, -2.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="base"):
            RotaryEmbedding(8, base)

# --- 6: attention_mask holds 0/1 only ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [2, -1, 0.5], ids=["2", "-1", "0.5"])
def test_gpt_and_bert_refuse_attention_mask_values_other_than_0_and_1(bad):
    ids = torch.randint(1, 41, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.float64 if isinstance(bad, float) else torch.long)
    mask[1, 2] = bad
    for model in (tiny_gpt(), tiny_bert()):
        with pytest.raises(ValueError, match=rf"attention_mask.*0 .*1.*{bad}"):
            model(ids, mask)
    with pytest.raises(ValueError, match=rf"attention_mask.*{bad}"):
        tiny_gpt().generate(ids, 2, attention_mask=mask)


def test_transformer_refuses_src_and_tgt_mask_values_other_than_0_and_1():
    model = tiny_transformer()
    src, tgt = torch.randint(3, 41, (2, 5)), torch.randint(3, 41, (2, 4))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, 0] = 3
    with pytest.raises(ValueError, match=r"src_mask.*3"):
        model(src, tgt, src_mask=mask)
    with pytest.raises(ValueError, match=r"tgt_mask.*3"):
        model(src, tgt, tgt_mask=mask[:, :4])


def test_attention_masks_of_0_and_1_in_any_dtype_agree():
    ids = torch.randint(1, 41, (2, 6))
    as_bool = torch.ones(2, 6, dtype=torch.bool)
    as_bool[0, :2] = False  # GPT: left padding
    gpt = tiny_gpt()
    expected = gpt(ids, as_bool).logits
    for dtype in (torch.long, torch.int32, torch.float32):
        torch.testing.assert_close(gpt(ids, as_bool.to(dtype)).logits, expected, atol=0, rtol=0)
    bert = tiny_bert()
    right = as_bool.flip(-1)  # BERT: right padding
    expected = bert(ids, right).last_hidden_state
    torch.testing.assert_close(bert(ids, right.long()).last_hidden_state, expected, atol=0, rtol=0)


# --- 6: MoE options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [dict(capacity_factor=math.inf), dict(capacity_factor=math.nan),
                                    dict(capacity_factor=-math.inf), dict(capacity_factor="1.25")],
                         ids=["inf", "nan", "-inf", "str"])
def test_moe_refuses_a_non_finite_capacity_factor_at_construction(kwargs):
    with pytest.raises(ValueError, match="capacity_factor"):
        MoE(8, 16, 4, 2, **kwargs)


@pytest.mark.parametrize("overrides,match", [
    (dict(capacity_factor=math.inf), "MoEConfig.capacity_factor"),
    (dict(capacity_factor=0.0), "MoEConfig.capacity_factor"),
    (dict(num_experts=0), "MoEConfig.num_experts"),
    (dict(top_k=0), "MoEConfig.top_k"),
    (dict(num_experts=4, top_k=5), "MoEConfig.top_k"),
], ids=["cf-inf", "cf-zero", "experts-0", "top_k-0", "top_k-over"])
def test_gpt_config_refuses_bad_moe_options(overrides, match):
    with pytest.raises(ValueError, match=match):
        models.GPTConfig.preset("nano", moe=dict(layers=(0,), **overrides))


def test_moe_capacity_none_and_finite_still_build():
    MoE(8, 16, 4, 2, capacity_factor=None)
    MoE(8, 16, 4, 2, capacity_factor=2)
    models.GPTConfig.preset("nano", moe=dict(layers=(0,), capacity_factor=None))


# --- 6: kernel names are checked where they are given ---------------------------------------------------


CONFIGS = {
    "GPTConfig": lambda **kw: models.GPTConfig.preset("nano", **kw),
    "BERTConfig": lambda **kw: models.BERTConfig.preset("tiny", **kw),
    "ViTConfig": lambda **kw: models.ViTConfig.preset("tiny", **kw),
    "TransformerConfig": lambda **kw: models.TransformerConfig.preset("tiny", **kw),
    "HybridConfig": lambda **kw: models.HybridConfig.preset("tiny", **kw),
}


@pytest.mark.parametrize("config", CONFIGS)
def test_config_refuses_an_unknown_kernel_listing_the_registered_ones(config):
    with pytest.raises(ValueError, match=rf"{config}\.kernel.*'nope'.*dense.*sdpa.*tiled"):
        CONFIGS[config](kernel="nope")
    for good in ("auto", "dense", attnkit.kernel("sdpa")):
        assert CONFIGS[config](kernel=good).kernel is good


def test_multi_head_attention_and_set_kernel_refuse_unknown_kernels_before_any_forward():
    with pytest.raises(ValueError, match=r"kernel.*'bogus'.*registered: .*dense"):
        MultiHeadAttention(8, 2, kernel="bogus")
    with pytest.raises(TypeError, match="kernel"):
        MultiHeadAttention(8, 2, kernel=3)
    model = tiny_gpt(kernel="dense")
    with pytest.raises(ValueError, match=r"'bogus'.*registered: .*dense"):
        model.set_kernel("bogus")
    with pytest.raises(ValueError, match=r"'bogus'.*registered: .*dense"):
        set_kernel(model, "bogus")
    assert {layer.attn.kernel for layer in model.layers} == {"dense"}  # a refused kernel changes nothing
    tiled = attnkit.kernel("tiled")
    assert {layer.attn.kernel for layer in model.set_kernel(tiled).layers} == {tiled}


# --- 11: generate -------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [tiny_gpt, tiny_hybrid], ids=["gpt", "hybrid"])
def test_generate_refuses_an_empty_prompt(make):
    with pytest.raises(ValueError, match=r"input_ids.*prompt.*at least one token.*\(1, 0\)"):
        make().generate(torch.zeros(1, 0, dtype=torch.long), 3)


@pytest.mark.parametrize("temperature", [1e-45, 1e-300, 5e-324])
@pytest.mark.parametrize("make", [tiny_gpt, tiny_hybrid], ids=["gpt", "hybrid"])
def test_tiny_temperature_samples_the_argmax(make, temperature):
    model = make()
    ids = torch.randint(0, 41, (2, 5))
    greedy = model.generate(ids, 4)
    sampled = model.generate(ids, 4, temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, greedy)


def test_next_token_tiny_temperature_with_large_and_masked_logits():
    logits = torch.tensor([[3e38, -3e38, float("-inf"), 1e38], [-5.0, 7.0, 6.9999, float("-inf")]])
    for temperature in (1e-45, 1e-30, 5e-324):
        for options in (dict(), dict(top_k=2), dict(top_p=0.5)):
            token = next_token(logits, temperature=temperature, **options)
            assert token.tolist() == [0, 1], (temperature, options)


def test_next_token_tiny_temperature_samples_among_exact_ties():
    logits = torch.tensor([[1.0, 5.0, 5.0, -2.0]])
    gen = torch.Generator().manual_seed(0)
    seen = {int(next_token(logits, temperature=1e-40, generator=gen)) for _ in range(40)}
    assert seen == {1, 2}


@pytest.mark.parametrize("options,exc,match", [
    (dict(temperature=-1.0), ValueError, "temperature.*-1.0"),
    (dict(temperature=math.inf), ValueError, "temperature.*inf"),
    (dict(temperature=math.nan), ValueError, "temperature.*nan"),
    (dict(temperature="1"), TypeError, "temperature"),
    (dict(temperature=1.0, top_k=0), ValueError, "top_k"),
    (dict(temperature=1.0, top_k=2.5), TypeError, "top_k"),
    (dict(temperature=1.0, top_k=True), TypeError, "top_k"),
    (dict(temperature=1.0, top_p=0.0), ValueError, "top_p"),
    (dict(temperature=1.0, top_p=math.nan), ValueError, "top_p"),
    (dict(temperature=1.0, top_p=1.5), ValueError, "top_p"),
    (dict(temperature=1.0, top_p="0.5"), TypeError, "top_p"),
], ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={x}" for k, x in v.items()))
@pytest.mark.parametrize("make", [tiny_gpt, tiny_hybrid], ids=["gpt", "hybrid"])
def test_generate_refuses_bad_sampling_options(make, options, exc, match):
    with pytest.raises(exc, match=match):
        make().generate(torch.randint(0, 41, (1, 3)), 2, **options)


# --- 13: MultiHeadAttention(bias=...) ---------------------------------------------------------------


def functional_mha(m: MultiHeadAttention, x, **options):
    """The module's projections around attnkit.attention, written out."""
    b, n, _ = x.shape
    q = m.q_proj(x).view(b, n, m.num_heads, m.head_dim).transpose(1, 2)  # (B, H, N, D)
    k = m.k_proj(x).view(b, n, m.num_kv_heads, m.head_dim).transpose(1, 2)  # (B, Hkv, N, D)
    v = m.v_proj(x).view(b, n, m.num_kv_heads, m.head_dim).transpose(1, 2)
    out = attnkit.attention(q, k, v, kernel="dense", **options)  # (B, H, N, D)
    return m.out_proj(out.transpose(1, 2).reshape(b, n, m.num_heads * m.head_dim))


@pytest.mark.parametrize("kernel", ["dense", "sdpa", "tiled"])
@pytest.mark.parametrize("kind", ["tensor-4d", "tensor-2d", "alibi-object"])
def test_bias_keyword_equals_functional_attention(kernel, kind):
    torch.manual_seed(3)
    m = MultiHeadAttention(24, 6, num_kv_heads=2, kernel=kernel).double()
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    bias = {"tensor-4d": torch.randn(2, 6, 9, 9, dtype=torch.float64),
            "tensor-2d": torch.randn(9, 9, dtype=torch.float64),
            "alibi-object": attnkit.bias.alibi(6)}[kind]
    got = m(x, bias=bias, causal=True)
    assert max_abs_error(got, functional_mha(m, x, bias=bias, causal=True)) <= 1e-12
    assert max_abs_error(got, m(x, causal=True)) > 1e-3  # the bias did change the output


def test_bias_adds_to_the_positions_bias_and_reaches_recorders():
    torch.manual_seed(4)
    m = MultiHeadAttention(16, 4, positions=ALiBiPositions(4)).double()
    x = torch.randn(1, 7, 16, dtype=torch.float64)
    bias = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    alibi = attnkit.bias.alibi(4, m.positions.slopes)
    both = alibi.materialize(7, 7, dtype=torch.float64) + bias
    calls = []
    m.attach(lambda module, call: calls.append(call))
    got = m(x, bias=bias, causal=True)
    assert max_abs_error(got, functional_mha(m, x, bias=both, causal=True)) <= 1e-12
    expected = attnkit.attention_weights(calls[0].q, calls[0].k, bias=both, causal=True)
    assert max_abs_error(calls[0].weights(), expected) <= 1e-12


def test_bias_with_a_cache_covers_every_key_and_a_ring_cache_refuses_it():
    torch.manual_seed(5)
    m = MultiHeadAttention(16, 4).double()
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    bias = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    full = m(x, bias=bias, causal=True)
    cache = attnkit.nn.cache.make_cache("static", max_len=6)
    parts = [m(x[:, :4], bias=bias[..., :4, :4], causal=True, cache=cache),
             m(x[:, 4:], bias=bias[..., 4:, :], causal=True, cache=cache)]
    assert max_abs_error(torch.cat(parts, dim=1), full) <= 1e-12
    ring = attnkit.nn.cache.make_cache("ring", size=3)
    with pytest.raises(ValueError, match="RingCache.*bias"):
        m(x, bias=bias, causal=True, window=(3, 0), cache=ring)


def test_float_mask_error_points_to_the_bias_keyword_that_exists():
    m = MultiHeadAttention(8, 2)
    x = torch.randn(1, 4, 8)
    additive = torch.zeros(4, 4)
    for extra in (dict(), dict(key_padding=torch.ones(1, 4, dtype=torch.bool))):
        with pytest.raises(TypeError, match=r"mask must be a bool tensor.*got dtype torch.float32.*bias="):
            m(x, mask=additive, **extra)
    assert max_abs_error(m(x, bias=additive), m(x)) == 0.0  # ... and bias= takes it


# --------------------------------------------------------------------------------------------------
# bias= through the layers


def _relative(table: torch.Tensor, n: int) -> attnkit.functional.bias.Bias:
    """A learned relative-position score function over n positions: table (H, 2n - 1)."""
    return attnkit.bias.from_function(lambda s, b, h, q, kv: s + table[h, q - kv + n - 1])


@pytest.mark.parametrize("kind", ["tensor", "score-function"])
def test_encoder_layer_passes_bias_to_its_attention(kind):
    """EncoderLayer(x, bias=b) is x + attn(norm(x), bias=b), then the feed-forward branch, and the bias's
    tensors get gradients (they were not accepted at all)."""
    torch.manual_seed(0)
    layer = attnkit.nn.EncoderLayer(32, 4, 64).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    table = torch.randn(4, 17, dtype=torch.float64, requires_grad=True)
    bias = table[:, None, :9].expand(4, 9, 9) if kind == "tensor" else _relative(table, 9)  # varies over keys
    out = layer(x, bias=bias)
    h = x + layer.attn(layer.attn_norm(x), bias=bias)
    assert torch.allclose(out, h + layer.ffn(layer.ffn_norm(h)), atol=1e-12)
    assert not torch.allclose(out, layer(x), atol=1e-6)
    out.sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_decoder_layer_passes_bias_to_its_self_attention():
    torch.manual_seed(1)
    layer = attnkit.nn.DecoderLayer(32, 4, 64).double()
    x, context = torch.randn(2, 7, 32, dtype=torch.float64), torch.randn(2, 5, 32, dtype=torch.float64)
    table = torch.randn(4, 13, dtype=torch.float64)
    bias = _relative(table, 7)
    out = layer(x, context, bias=bias)
    h = layer.self_norm(x + layer.self_attn(x, causal=True, bias=bias))  # post-norm, the default
    h = layer.cross_norm(h + layer.cross_attn(h, context))
    assert torch.allclose(out, layer.ffn_norm(h + layer.ffn(h)), atol=1e-12)
