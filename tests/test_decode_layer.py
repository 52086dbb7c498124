"""A decoding step's whole layer in one C call (``native.decode_layer``, csrc/decode.c): the attention half (norm,
q/k/v projections and biases, per-head q/k RMSNorm, RoPE over all or part of each head, the cache write, GQA
attention with key padding, a sliding window and soft-capping) against a float64 reference written here on fresh
random inputs, with NaN in the cache slots the mask hides and fully-masked rows; and the models that take it
(``Block`` through ``MultiHeadAttention.decode_step``) against their PyTorch path and the uncached forward."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from helpers import assert_close, needs_native_symbol, small_decoder

from attnkit.functional.kernels import native
from attnkit.models import GPT
from attnkit.nn import GrowingCache, StaticCache

needs_native = needs_native_symbol("attnkit_decode_layer")


def _rms64(v: torch.Tensor, w: torch.Tensor | None, eps: float, unit_offset: bool) -> torch.Tensor:
    if w is None:
        return v
    scale = (1.0 + w.double()) if unit_offset else w.double()
    return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps) * scale


def _reference(call: native.AttnCall, k_cache: torch.Tensor, v_cache: torch.Tensor,
               stored: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
    """(heads' outputs (B, H·D), the new key and value (B, Hkv, D)) in float64, from the caches as they were before.
    Attention reads the new token's key and value from the cache: ``stored`` (what was written there, checked
    against the returned ones by the caller) or, without it, the float64 ones."""
    x = call.x.double()
    b, _ = x.shape
    _, hkv, _, d = k_cache.shape
    h = call.wq.shape[0] // d
    norm = call.norm
    if norm.layer:
        centred = x - x.mean(-1, keepdim=True)
        normed = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.double()
        normed = normed if norm.bias is None else normed + norm.bias.double()
    else:
        normed = _rms64(x, norm.weight, norm.eps, norm.unit_offset)

    def project(w, bias):
        y = normed @ w.double().T
        return y if bias is None else y + bias.double()

    q = _rms64(project(call.wq, call.bq).view(b, h, d), call.q_norm_w, call.qk_eps, call.qk_unit_offset)
    k = _rms64(project(call.wk, call.bk).view(b, hkv, d), call.k_norm_w, call.qk_eps, call.qk_unit_offset)
    v = project(call.wv, call.bv).view(b, hkv, d)
    if call.cos is not None:
        r = call.cos.shape[1]
        cos, sin = call.cos.double()[:, None], call.sin.double()[:, None]
        for t in (q, k):
            part = t[..., :r].clone()
            swapped = torch.cat((part[..., r // 2:], part[..., :r // 2]), dim=-1)
            t[..., :r] = part * cos + swapped * sin
    keys, values = k_cache.double().clone(), v_cache.double().clone()
    keys[:, :, call.pos], values[:, :, call.pos] = (k, v) if stored is None else (t.double() for t in stored)
    out = torch.zeros(b, h, d, dtype=torch.float64)
    for row in range(b):
        for head in range(h):
            g = head // (h // hkv)
            visible = [j for j in range(call.pos + 1)
                       if (call.key_padding is None or call.key_padding[row, j])
                       and (call.window is None or call.pos - j <= call.window)]
            if not visible:
                continue  # a fully-masked row: zeros
            s = keys[row, g, visible] @ q[row, head] * call.scale
            if call.softcap:
                s = call.softcap * torch.tanh(s / call.softcap)
            out[row, head] = torch.softmax(s, 0) @ values[row, g, visible]
    return out.reshape(b, h * d), k, v


def _call(seed: int, *, b: int, dim: int, h: int, hkv: int, d: int, rotary: int, bias: bool, qk_norm: bool,
          capacity: int, pos: int, padding: bool, window: int | None, softcap: float | None,
          unit_offset: bool, dtype: torch.dtype = torch.float32, layer_norm: bool = False) -> native.AttnCall:
    """Random inputs; ``dtype``: the weights' and caches' (x, cos and sin stay float32); ``layer_norm``: the norm a
    LayerNorm with a bias, else an RMSNorm."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    k_cache, v_cache = rand(b, hkv, capacity, d), rand(b, hkv, capacity, d)
    key_padding = None
    if padding:
        key_padding = torch.rand(b, capacity + 3, generator=g) > 0.3
        key_padding[0, : pos + 1] = False  # row 0 sees nothing: zeros
        key_padding[1:, pos] = True  # the others see at least their new token
        # what padding hides may hold anything: NaN must not leak into the rows that do see keys
        hidden = ~key_padding[:, :capacity]
        k_cache[hidden[:, None, :, None].expand_as(k_cache)] = math.nan
        v_cache[hidden[:, None, :, None].expand_as(v_cache)] = math.nan
    if window is not None:
        k_cache[:, :, : max(0, pos - window)] = math.nan  # behind the window
        v_cache[:, :, : max(0, pos - window)] = math.nan
    angles = torch.randn(b, rotary // 2, generator=g) * 3
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1)
    sin = torch.cat((-angles.sin(), angles.sin()), dim=-1)
    x, norm_w = torch.randn(b, dim, generator=g), rand(dim, scale=0.5)
    projections = [rand(h * d, dim, scale=dim ** -0.5), rand(hkv * d, dim, scale=dim ** -0.5),
                   rand(hkv * d, dim, scale=dim ** -0.5)]
    biases = [rand(h * d) if bias else None, rand(hkv * d) if bias else None, rand(hkv * d) if bias else None]
    qk = [rand(d) if qk_norm else None, rand(d) if qk_norm else None]
    norm = native.Norm(norm_w, rand(dim) if layer_norm else None, 1e-5, unit_offset, layer_norm)
    return native.AttnCall(x, norm, *projections, *biases, *qk, 1e-6, unit_offset, cos if rotary else None,
                           sin if rotary else None, k_cache, v_cache, pos, key_padding, window, d ** -0.5 * 1.7,
                           softcap)


CASES = {
    "llama-gqa": dict(b=1, dim=48, h=6, hkv=2, d=16, rotary=16, bias=False, qk_norm=False),
    "batch-8-odd-head-layernorm": dict(b=8, dim=40, h=4, hkv=4, d=12, rotary=12, bias=True, qk_norm=False,
                                       layer_norm=True),
    "qwen3-qk-norm": dict(b=3, dim=64, h=8, hkv=2, d=24, rotary=24, bias=False, qk_norm=True),
    "partial-rotary-mqa": dict(b=5, dim=36, h=3, hkv=1, d=20, rotary=10, bias=True, qk_norm=False),
    "gpt2-no-positions-layernorm": dict(b=2, dim=32, h=4, hkv=4, d=8, rotary=0, bias=True, qk_norm=False,
                                        layer_norm=True),
    "no-positions-qk-norm": dict(b=2, dim=32, h=4, hkv=2, d=8, rotary=0, bias=False, qk_norm=True),
    "wide-head": dict(b=2, dim=80, h=2, hkv=1, d=80, rotary=64, bias=False, qk_norm=False),
}


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("mask", ["none", "padding", "window", "both"])
def test_the_attention_half_equals_a_float64_reference(name, mask, dtype):
    """float32 or bfloat16 weights and caches (bfloat16: the same float32 arithmetic on the widened values, the new
    key and value rounded as stored), against float64 on the same values."""
    size = CASES[name]
    for seed, (capacity, pos) in enumerate([(9, 0), (9, 6), (40, 33)]):
        call = _call(seed, **size, capacity=capacity, pos=pos, padding=mask in ("padding", "both"),
                     window=3 if mask in ("window", "both") else None, softcap=2.5 if seed == 1 else None,
                     unit_offset=seed == 2 and not size.get("layer_norm"), dtype=dtype)
        before_k, before_v = call.k_cache.clone(), call.v_cache.clone()
        out = native.decode_layer(call, None)
        assert out is not None, "the C call declined"
        what = f"{name}, {mask}, pos {pos}"
        written = call.k_cache[:, :, pos], call.v_cache[:, :, pos]
        _, k, v = _reference(call, before_k, before_v)
        for new, expected_new, kind in zip(written, (k, v), ("keys", "values")):
            # float32: within rounding; bfloat16: within one bfloat16 step (2^-8 of the largest), and nearly always
            # the float64 value rounded to nearest (truncating would miss about half; the float32 arithmetic
            # before the rounding crosses a rounding boundary now and then)
            step = 1e-5 if dtype == torch.float32 else 2.0 ** -8 * float(expected_new.abs().max())
            assert_close(new.double(), expected_new, atol=step, what=f"{what}: {kind} written")
            if dtype == torch.bfloat16:
                assert (new == expected_new.to(dtype)).double().mean() >= 0.9, f"{what}: {kind} rounded"
        expected, _, _ = _reference(call, before_k, before_v, written)
        assert torch.isfinite(out).all(), what
        assert_close(out, expected.float(), atol=2e-5 * max(1.0, float(expected.abs().max())), what=what)
        others = torch.ones(capacity, dtype=torch.bool)
        others[pos] = False  # every other slot untouched, NaN included
        assert torch.equal(call.k_cache[:, :, others].isnan(), before_k[:, :, others].isnan())
        torch.testing.assert_close(call.k_cache[:, :, others], before_k[:, :, others], equal_nan=True, rtol=0,
                                   atol=0)
        torch.testing.assert_close(call.v_cache[:, :, others], before_v[:, :, others], equal_nan=True, rtol=0,
                                   atol=0)
        if mask in ("padding", "both"):
            assert torch.equal(out[0], torch.zeros_like(out[0]))  # row 0's keys are all padding


@needs_native
def test_it_declines_what_it_cannot_take():
    """Sizes that disagree, more than 8 rows, other dtypes: None and nothing written (C trusts what it is given)."""
    base = dict(CASES["llama-gqa"], capacity=9, pos=4, padding=True, window=None, softcap=None, unit_offset=False)
    bad = {
        "9 rows": lambda c: native.AttnCall(**{**vars(c), "x": torch.randn(9, 48),
                                               "k_cache": torch.randn(9, 2, 9, 16), "v_cache": torch.randn(9, 2, 9, 16),
                                               "cos": c.cos.expand(9, -1).contiguous(),
                                               "sin": c.sin.expand(9, -1).contiguous(),
                                               "key_padding": torch.ones(9, 12, dtype=torch.bool)}),
        "slot past the end": lambda c: native.AttnCall(**{**vars(c), "pos": 9}),
        "padding too short": lambda c: native.AttnCall(**{**vars(c), "key_padding": c.key_padding[:, :4]}),
        "padding not bool": lambda c: native.AttnCall(**{**vars(c), "key_padding": c.key_padding.float()}),
        "wq of another width": lambda c: native.AttnCall(**{**vars(c), "wq": torch.randn(96, 40)}),
        "float64 weights": lambda c: native.AttnCall(**{**vars(c), "wk": c.wk.double()}),
        "a strided cache": lambda c: native.AttnCall(**{**vars(c),
                                                         "k_cache": torch.randn(1, 2, 16, 9).transpose(2, 3)}),
        "odd rotary": lambda c: native.AttnCall(**{**vars(c), "cos": c.cos[:, :15], "sin": c.sin[:, :15]}),
        "sin without cos": lambda c: native.AttnCall(**{**vars(c), "cos": None}),
    }
    for what, make in bad.items():
        call = make(_call(0, **base))
        before = call.k_cache.clone()
        assert native.decode_layer(call, None) is None, what
        torch.testing.assert_close(call.k_cache, before, equal_nan=True, rtol=0, atol=0)


# ----- models that take the call: the block's PyTorch path and the uncached forward agree with it -----

MODELS = {
    "llama": dict(attention=dict(num_heads=4, num_kv_heads=2, bias=False),
                  ffn=dict(hidden=48, activation="swiglu", bias=False), norm=dict(kind="rms", eps=1e-6)),
    "qwen2-biases-partial-rope": dict(attention=dict(num_heads=4, bias=True, out_bias=False, head_dim=10,
                                                     rope=dict(fraction=0.6)),
                                      ffn=dict(hidden=40, activation="swiglu", bias=False),
                                      norm=dict(kind="rms", eps=1e-5)),
    "qwen3-qk-norm": dict(attention=dict(num_heads=4, num_kv_heads=1, bias=False, qk_norm=True),
                          ffn=dict(hidden=40, activation="swiglu", bias=False), norm=dict(kind="rms", eps=1e-6)),
    "gpt2": dict(positions="learned", attention=dict(num_heads=4, bias=True), ffn=dict(hidden=64,
                 activation="gelu_tanh", bias=True), norm=dict(kind="layer", eps=1e-5)),
    "relu-layernorm-rope": dict(attention=dict(num_heads=4, num_kv_heads=2, bias=False),
                                ffn=dict(hidden=40, activation="relu", bias=False), norm=dict(kind="layer")),
    "silu-rms-plain": dict(attention=dict(num_heads=2, bias=False), ffn=dict(hidden=36, activation="silu"),
                           norm=dict(kind="rms", eps=1e-6)),
    "gelu-erf-plain": dict(attention=dict(num_heads=4, bias=True), ffn=dict(hidden=44, activation="gelu"),
                           norm=dict(kind="layer")),
    "gemma2-window-softcap": dict(attention=dict(num_heads=4, num_kv_heads=2, head_dim=12, bias=False, window=4,
                                                 window_layers=(0,), softcap=3.0, scale=0.2),
                                  ffn=dict(hidden=56, activation="geglu_tanh", bias=False),
                                  norm=dict(kind="rms", eps=1e-6, unit_offset=True, sandwich=True),
                                  embedding_scale=5.6),
}


def _model(name: str) -> GPT:
    return small_decoder(**MODELS[name])


def _counting(monkeypatch) -> list[int]:
    """The rows of each C layer call that ran."""
    calls: list[int] = []
    real = native.decode_layer

    def counting(attn, ffn):
        out = real(attn, ffn)
        if out is not None:
            calls.append(attn.x.shape[0])
        return out

    monkeypatch.setattr(native, "decode_layer", counting)
    return calls


@needs_native
@pytest.mark.parametrize("name", list(MODELS))
def test_a_model_decodes_through_the_c_layer_as_through_pytorch(name, monkeypatch):
    model = _model(name)
    calls = _counting(monkeypatch)
    for batch in (1, 3, 8):
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(0, 71, (batch, 9), generator=g)
        mask = torch.ones(batch, 9, dtype=torch.long)
        mask[-1, :3] = 0  # the last row left-padded
        with torch.no_grad():
            fused = model.generate(ids, 6, attention_mask=mask, cache_kind="static")
            cache = model.new_cache(max_len=16)
            model(ids[:, :8], mask[:, :8], cache=cache)
            step = model(ids[:, 8:], mask, cache=cache).logits
        assert len(calls) == 2 * 6, f"{name}: {len(calls)} C layer calls, expected 2 layers x 6 steps"
        assert set(calls) == {batch}
        calls.clear()
        monkeypatch.setenv("ATTNKIT_NATIVE", "0")  # the C call declines: the same blocks in PyTorch
        with torch.no_grad():
            plain = model.generate(ids, 6, attention_mask=mask, cache_kind="static")
            cache = model.new_cache(max_len=16)
            model(ids[:, :8], mask[:, :8], cache=cache)
            step_plain = model(ids[:, 8:], mask, cache=cache).logits
        monkeypatch.delenv("ATTNKIT_NATIVE")
        assert not calls
        assert torch.equal(fused, plain), name
        assert_close(step, step_plain, atol=2e-5 * max(1.0, float(step_plain.abs().max())), what=name)
        with torch.no_grad():  # the whole sequence at once: forward's own path
            whole = model(ids, mask).logits[:, -1:]
        assert_close(step, whole, atol=2e-5 * max(1.0, float(whole.abs().max())), what=f"{name}, uncached")
        for row in range(batch):  # and each row alone, its padding dropped
            keep = mask[row].bool()
            with torch.no_grad():
                alone = model(ids[row:row + 1, keep]).logits[:, -1:]
            assert_close(step[row:row + 1], alone, atol=2e-5 * max(1.0, float(alone.abs().max())),
                         what=f"{name}, row {row} alone")


@needs_native
def test_a_growing_cache_takes_the_c_layer_across_its_reallocations(monkeypatch):
    model = _model("llama")
    calls = _counting(monkeypatch)
    ids = torch.randint(0, 71, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        grown = model.generate(ids, 30, cache_kind="growing")  # 16 slots, then 32, then 64
        static = model.generate(ids, 30, cache_kind="static")
    assert len(calls) == 2 * 2 * 29 and torch.equal(grown, static)
    monkeypatch.setenv("ATTNKIT_NATIVE", "0")
    with torch.no_grad():
        assert torch.equal(model.generate(ids, 30, cache_kind="growing"), grown)


@needs_native
def test_what_the_c_layer_does_not_serve_takes_pytorch(monkeypatch):
    """A recorder, a kernel chosen by name and a gradient each keep the PyTorch path (and its results); the cache
    holds every token either way. (Hooks, a RingCache and other modules: the test below.)"""
    from attnkit.inspect import capture

    model = _model("llama")
    calls = _counting(monkeypatch)
    ids = torch.randint(0, 71, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits[:, -1:]

    def step(cache):
        model(ids[:, :8], cache=cache)
        return model(ids[:, 8:], cache=cache).logits

    with torch.no_grad():
        assert_close(step([StaticCache(9), StaticCache(9)]), expected, atol=1e-4, what="static")
        assert len(calls) == 2
        calls.clear()
        with capture(model):
            assert_close(step([GrowingCache(), GrowingCache()]), expected, atol=1e-4, what="recorded")
        from attnkit.nn import set_kernel
        set_kernel(model, "dense")
        assert_close(step([StaticCache(9), StaticCache(9)]), expected, atol=1e-4, what="dense by name")
        set_kernel(model, "auto")
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    assert_close(step([StaticCache(9), StaticCache(9)]), expected, atol=1e-4, what="with gradients")
    assert not calls


@needs_native
def test_the_feed_forward_half_must_agree_with_the_attention_half():
    """decode_layer hands the attention's output to the feed-forward half: rows, widths and weight types must agree
    (C trusts them), else None and nothing written."""
    model = _model("llama")
    block = model.layers[0]
    base = dict(CASES["llama-gqa"], capacity=9, pos=4, padding=False, window=None, softcap=None, unit_offset=False)
    y = torch.randn(1, 1, 32)
    with torch.no_grad():
        norm = block._fused_norm(y)
    assert norm is not None
    good = block._ffn_call(y, norm)
    bad = {
        "8 rows after 1": native.FFNCall(**{**vars(good), "x": torch.randn(8, 32)}),
        "wo of another width": native.FFNCall(**{**vars(good), "wo": torch.randn(32, 40)}),
        "a short bias": native.FFNCall(**{**vars(good), "bd": torch.randn(31)}),
        "wd transposed": native.FFNCall(**{**vars(good), "wd": good.wd.t().contiguous()}),
        "bfloat16 after float32": native.FFNCall(**{**vars(good), "wo": good.wo.bfloat16(), "wg": good.wg.bfloat16(),
                                                    "wu": good.wu.bfloat16(), "wd": good.wd.bfloat16(),
                                                    "norm": replace(good.norm, weight=good.norm.weight.bfloat16())}),
    }
    for what, ffn in bad.items():
        call = _call(0, **{**base, "dim": 32, "h": 4, "hkv": 2, "d": 8, "rotary": 8})
        before = (call.k_cache.clone(), ffn.x.clone())
        assert native.decode_layer(call, ffn) is None, what
        assert torch.equal(call.k_cache, before[0]) and torch.equal(ffn.x, before[1]), what
    call = _call(0, **{**base, "dim": 32, "h": 4, "hkv": 2, "d": 8, "rotary": 8})
    good = native.FFNCall(**{**vars(good), "wo": model.layers[0].attn.out_proj.weight})
    assert native.decode_layer(call, good) is not None  # the same sizes, agreeing: taken


@needs_native
def test_hooks_odd_modules_and_bad_options_take_pytorch(monkeypatch):
    """What the C layer would silently change keeps the PyTorch path: a forward hook (its own or a global one) on any
    module it stands in for, a RingCache, a cache subclass, a q norm without a k norm, attention dropout in training
    mode; and an option attnkit.attention refuses is refused with its own error, not run."""
    calls = _counting(monkeypatch)
    ids = torch.randint(0, 71, (2, 9), generator=torch.Generator().manual_seed(0))

    def step(model, cache=None):
        cache = cache if cache is not None else [StaticCache(9), StaticCache(9)]
        with torch.no_grad():
            model(ids[:, :8], cache=cache)
            return model(ids[:, 8:], cache=cache).logits

    model = _model("llama")
    expected = step(model)
    assert len(calls) == 2
    calls.clear()
    seen = []
    for module in (model.layers[1].attn_norm, model.layers[1].attn.k_proj, model.layers[1].ffn.down):
        handle = module.register_forward_hook(lambda m, args, out: seen.append(type(m).__name__))
        assert_close(step(model), expected, atol=1e-4, what="hooked")
        handle.remove()
    assert seen == ["RMSNorm", "RMSNorm", "Linear", "Linear", "Linear", "Linear"]  # prefill and step each
    assert len(calls) == 3  # layer 0 only: it has no hook
    calls.clear()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, args, out: None)
    assert_close(step(model), expected, atol=1e-4, what="global hook")
    handle.remove()

    class Logged(StaticCache):
        def update(self, k, v):
            return super().update(k, v)

    assert_close(step(model, [Logged(9), Logged(9)]), expected, atol=1e-4, what="subclass")
    windowed = _model("gemma2-window-softcap")
    with torch.no_grad():
        ring = windowed.generate(ids, 4)  # the default RingCache for its windowed layer 0
    assert len(calls) == 3 * 1  # only layer 1 (static cache) took C, once a step after the first
    calls.clear()
    monkeypatch.setenv("ATTNKIT_NATIVE", "0")
    with torch.no_grad():
        assert torch.equal(windowed.generate(ids, 4), ring)
    monkeypatch.delenv("ATTNKIT_NATIVE")
    qk = _model("qwen3-qk-norm")
    reference = step(qk)
    calls.clear()
    for layer in qk.layers:
        layer.attn.k_norm.eps = 0.5  # no longer the q norm's
    monkeypatch.setenv("ATTNKIT_NATIVE", "0")
    changed = step(qk)
    monkeypatch.delenv("ATTNKIT_NATIVE")
    assert (changed - reference).abs().max() > 1e-4
    assert_close(step(qk), changed, atol=1e-4, what="k norm's own eps")
    assert not calls
    attn = model.layers[0].attn
    attn.dropout = 0.5
    attn.train()
    torch.manual_seed(0)
    dropped_out = step(model)
    assert calls == [2] and (dropped_out - expected).abs().max() > 1e-3  # layer 1 only; layer 0 drops out
    calls.clear()
    attn.eval()
    attn.softcap = -1.0  # what GPTConfig would refuse; the PyTorch path names it
    with pytest.raises(ValueError, match="softcap"), torch.no_grad():
        model(ids[:, :1], cache=[StaticCache(9), StaticCache(9)])
    assert not calls


@needs_native
@pytest.mark.parametrize("name", ["llama", "qwen3-qk-norm", "gemma2-window-softcap"])
def test_a_bfloat16_model_decodes_through_the_c_layer(name, monkeypatch):
    """A bfloat16 model's step takes the C layer (weights and cache bfloat16, arithmetic float32): its logits are
    within a few bfloat16 roundings of float64 on the same weights, and no farther from them than PyTorch's
    bfloat16 path (whose every intermediate is rounded) but for one rounding of the bfloat16 logits."""
    model = _model(name).to(torch.bfloat16)
    exact = _model(name).double()
    exact.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    calls = _counting(monkeypatch)
    errors = {}
    for batch in (1, 3):
        ids = torch.randint(0, 71, (batch, 9), generator=torch.Generator().manual_seed(batch))
        mask = torch.ones(batch, 9, dtype=torch.long)
        mask[-1, :2] = 0
        with torch.no_grad():
            reference = exact(ids, mask).logits[:, -1:]
        for path in ("C", "PyTorch"):
            if path == "PyTorch":
                monkeypatch.setenv("ATTNKIT_NATIVE", "0")
            with torch.no_grad():
                cache = model.new_cache(max_len=16)
                model(ids[:, :8], mask[:, :8], cache=cache)
                step = model(ids[:, 8:], mask, cache=cache).logits
            monkeypatch.delenv("ATTNKIT_NATIVE", raising=False)
            assert step.dtype == torch.bfloat16
            errors[path, batch] = float((step.double() - reference).abs().max())
        assert len(calls) == 2 and set(calls) == {batch}
        calls.clear()
        scale = float(reference.abs().max())
        assert errors["C", batch] <= 3 * 2.0 ** -8 * scale, errors  # a few roundings of the bfloat16 logits
        assert errors["C", batch] <= errors["PyTorch", batch] + 2.0 ** -8 * scale, errors
