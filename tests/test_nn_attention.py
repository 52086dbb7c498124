"""attnkit.nn.MultiHeadAttention: against torch.nn.MultiheadAttention and a hand-written float64
reference, GQA/MQA, cross-attention, the recorder hook, set_kernel, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit.nn.attention import AttentionCall, MultiHeadAttention, set_kernel
from attnkit.nn.positions import ALiBiPositions

KERNELS = ["dense", "sdpa", "tiled"]


def naive_mha(m: MultiHeadAttention, x, context=None, allowed=None):
    """Projections, per-head softmax(q·k/sqrt(d)) in float64 written out, merge, output projection.
    ``allowed`` (B, Nq, Nk) bool; rows with nothing allowed give zeros."""
    ctx = x if context is None else context
    b, n, _ = x.shape
    h, hkv, d = m.num_heads, m.num_kv_heads, m.head_dim
    q = m.q_proj(x).double().view(b, n, h, d)
    k = m.k_proj(ctx).double().view(b, ctx.shape[1], hkv, d)
    v = m.v_proj(ctx).double().view(b, ctx.shape[1], hkv, d)
    out = torch.zeros(b, n, h, d, dtype=torch.float64)
    for head in range(h):
        kv = head // (h // hkv)
        scores = torch.einsum("bnd,bmd->bnm", q[:, :, head], k[:, :, kv]) / math.sqrt(d)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        p = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        out[:, :, head] = p @ v[:, :, kv]
    return m.out_proj.double()(out.reshape(b, n, h * d))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("masked", ["none", "attn_mask", "key_padding", "both"])
def test_from_torch_matches_torch(kernel, masked):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(48, 6, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref, kernel=kernel).eval()
    x = torch.randn(3, 11, 48)
    attn_mask = torch.rand(11, 11) < 0.3  # torch: True = blocked
    attn_mask.fill_diagonal_(False)
    padding = torch.zeros(3, 11, dtype=torch.bool)
    padding[1, 8:] = True
    padding[2, 3:] = True
    kw_ref, kw_ours = {}, {}
    if masked in ("attn_mask", "both"):
        kw_ref["attn_mask"], kw_ours["mask"] = attn_mask, ~attn_mask
    if masked in ("key_padding", "both"):
        kw_ref["key_padding_mask"], kw_ours["key_padding"] = padding, ~padding
    expected, _ = ref(x, x, x, need_weights=False, **kw_ref)
    actual = ours(x, **kw_ours)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_from_torch_cross_attention_with_kdim():
    torch.manual_seed(1)
    ref = torch.nn.MultiheadAttention(32, 4, kdim=20, vdim=20, batch_first=True, bias=False).eval()
    ours = MultiHeadAttention.from_torch(ref)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 9, 20)
    expected, _ = ref(x, ctx, ctx, need_weights=False)
    torch.testing.assert_close(ours(x, ctx), expected, atol=1e-5, rtol=1e-5)


def test_from_torch_refuses_what_it_cannot_copy():
    with pytest.raises(ValueError, match="add_bias_kv"):
        MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="kdim == vdim"):
        MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(8, 2, kdim=4, vdim=6))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("heads,kv_heads", [(6, 6), (6, 2), (6, 1)], ids=["mha", "gqa", "mqa"])
def test_matches_naive_reference(kernel, heads, kv_heads):
    torch.manual_seed(2)
    m = MultiHeadAttention(30, heads, num_kv_heads=kv_heads, head_dim=7, kernel=kernel).double()
    x = torch.randn(2, 13, 30, dtype=torch.float64)
    causal = torch.ones(13, 13, dtype=torch.bool).tril().expand(2, 13, 13)
    torch.testing.assert_close(m(x, causal=True), naive_mha(m, x, allowed=causal), atol=1e-10, rtol=1e-10)


def test_cross_attention_matches_reference_and_padding_rows():
    torch.manual_seed(3)
    m = MultiHeadAttention(16, 4, context_dim=10, cross_attention=True).double()
    x, ctx = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 7, 10, dtype=torch.float64)
    pad = torch.ones(2, 7, dtype=torch.bool)
    pad[1] = False  # the second source is all padding: its queries see nothing
    allowed = pad[:, None, :].expand(2, 5, 7)
    out = m(x, ctx, key_padding=pad)
    torch.testing.assert_close(out, naive_mha(m, x, ctx, allowed), atol=1e-10, rtol=1e-10)
    # nothing to see: the attention output is zero, so the layer returns the output projection's bias
    torch.testing.assert_close(out[1], m.out_proj.bias.expand(5, 16))


def test_qk_norm_normalizes_heads_before_attention():
    torch.manual_seed(4)
    m = MultiHeadAttention(16, 2, qk_norm=True).double()
    seen = []
    m.attach(lambda module, call: seen.append(call))
    m(torch.randn(1, 4, 16, dtype=torch.float64) * 50)
    rms = seen[0].q.pow(2).mean(-1).sqrt()  # RMSNorm with unit weight: every head vector has RMS 1
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-5, rtol=0)


def test_recorder_receives_what_reconstructs_the_maps():
    torch.manual_seed(5)
    m = MultiHeadAttention(24, 6, num_kv_heads=3, positions=ALiBiPositions(6), kernel="tiled").double()
    calls: list[AttentionCall] = []
    handle = m.attach(lambda module, call: calls.append(call))
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    pad = torch.ones(2, 9, dtype=torch.bool)
    pad[0, 7:] = False
    m(x, causal=True, key_padding=pad)
    assert len(calls) == 1
    call = calls[0]
    weights = call.weights()  # (B, H, Nq, Nk)
    # the maps reproduce the layer: weights @ v, merged and projected, is the layer's output
    v = m.v_proj(x).view(2, 9, 3, 4).transpose(1, 2).repeat_interleave(2, dim=1)
    merged = (weights @ v).transpose(1, 2).reshape(2, 9, 24)
    torch.testing.assert_close(m.out_proj(merged), m(x, causal=True, key_padding=pad), atol=1e-10, rtol=1e-10)
    assert (weights[0, :, :, 7:] == 0).all() and (weights.triu(1) == 0).all()
    torch.testing.assert_close(call.weights(heads=[1, 4]), weights[:, [1, 4]], atol=1e-12, rtol=0)
    handle.remove()
    m(x)
    assert len(calls) == 2  # the second call above (inside assert_close) was recorded, then none


def test_set_kernel_reaches_every_layer():
    model = torch.nn.Sequential(MultiHeadAttention(8, 2), torch.nn.ModuleList([MultiHeadAttention(8, 2)]))
    set_kernel(model, "tiled")
    assert [m.kernel for m in model.modules() if isinstance(m, MultiHeadAttention)] == ["tiled", "tiled"]


def test_attention_dropout_only_in_training():
    torch.manual_seed(6)
    m = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(1, 6, 16)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    assert not torch.allclose(m(x), m(x))


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=30, num_heads=4), "num_heads=4 must divide dim=30"),
    (dict(dim=32, num_heads=4, num_kv_heads=3), "num_kv_heads=3 must divide num_heads=4"),
    (dict(dim=32, num_heads=0), "num_heads must be a positive int"),
    (dict(dim=32, num_heads=4, head_dim=0), "head_dim must be a positive int"),
    (dict(dim=32, num_heads=4, dropout=1.0), "dropout must be in"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(**kwargs)


def test_bad_calls():
    m = MultiHeadAttention(16, 2)
    with pytest.raises(ValueError, match=r"x must be \(B, N, dim=16\)"):
        m(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="context must be"):
        m(torch.randn(2, 5, 16), torch.randn(2, 5, 3))
    cross = MultiHeadAttention(16, 2, cross_attention=True)
    with pytest.raises(ValueError, match="cross-attention layer: pass context"):
        cross(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="key_padding must be"):
        m(torch.randn(2, 5, 16), key_padding=torch.ones(2, 3, dtype=torch.bool))


def test_module_is_exported():
    assert attnkit.nn.MultiHeadAttention is MultiHeadAttention


def test_from_torch_keeps_dtype_and_mode():
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True, dropout=0.3).double().eval()
    ours = MultiHeadAttention.from_torch(ref)
    assert ours.q_proj.weight.dtype == torch.float64 and not ours.training
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0])


def test_recorder_selects_heads_of_3d_masks_and_reports_key_positions():
    torch.manual_seed(7)
    m = MultiHeadAttention(16, 4, num_kv_heads=1).double()
    calls = []
    m.attach(lambda module, call: calls.append(call))
    mask = torch.rand(4, 6, 6) < 0.7  # (H, Nq, Nk): a head dimension, no batch dimension
    m(torch.randn(2, 6, 16, dtype=torch.float64), mask=mask)
    full = calls[0].weights()
    torch.testing.assert_close(calls[0].weights(heads=[2]), full[:, [2]], atol=1e-12, rtol=0)
    assert calls[0].key_positions.tolist() == list(range(6))


def test_qk_norm_under_bf16_autocast():
    m = MultiHeadAttention(16, 4, qk_norm=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(2, 5, 16))
    assert out.dtype == torch.bfloat16
