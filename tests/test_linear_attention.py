"""Linear and kernelized attention ("linear", "performer"): against independent float64 formulas written here,
the chunked causal path and its recurrent form, the performer's random features, the refusals, that
kernel="auto" never picks an approximation, ``attnkit.kernel``, and models running on them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import AttentionRequest, masks, models
from attnkit.functional import dispatch, registry
from attnkit.nn import MultiHeadAttention, set_kernel

from helpers import DTYPE_IDS, assert_close, assert_raises_naming, baseline_atol, magnitude, randn


# --------------------------------------------------------------------------------------------------
# Independent formulas: the O(N²) definition from explicit features and an explicit visibility mask


def naive_kernelized(phi_q, phi_k, v, visible=None):
    """out_i = Σ_j m_ij φ(q_i)·φ(k_j) v_j / Σ_j m_ij φ(q_i)·φ(k_j), in the inputs' dtype; rows that see
    nothing are zeros. phi_q (B, H, Nq, M), phi_k (B, Hkv, Nk, M), v (B, Hkv, Nk, Dv)."""
    groups = phi_q.shape[1] // phi_k.shape[1]
    phi_k, v = phi_k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    weights = phi_q @ phi_k.transpose(-2, -1)  # (B, H, Nq, Nk)
    if visible is not None:
        weights = torch.where(visible, weights, torch.zeros((), dtype=weights.dtype))
        v = torch.where(visible.any(dim=-2)[..., None], v, torch.zeros((), dtype=v.dtype))  # unseen keys: NaN ok
    den = weights.sum(dim=-1, keepdim=True)
    return torch.where(den > 0, (weights @ v) / torch.where(den > 0, den, torch.ones_like(den)), 0.0)


def elu1(x):
    return F.elu(x) + 1


def naive_linear(q, k, v, visible=None, scale=None):
    """The linear kernel's definition: φ(x) = elu(x) + 1 on √scale·q and √scale·k."""
    root = math.sqrt(q.shape[-1] ** -0.5 if scale is None else scale)
    return naive_kernelized(elu1(q * root), elu1(k * root), v, visible)


def visibility(B, Nq, Nk, causal=False, k_lengths=None):
    """(B, 1, Nq, Nk) bool: bottom-right causal (row i at position i + Nk - Nq) and key lengths."""
    visible = torch.ones(B, 1, Nq, Nk, dtype=torch.bool)
    if causal:
        visible &= torch.arange(Nk)[None, :] <= torch.arange(Nq)[:, None] + (Nk - Nq)
    if k_lengths is not None:
        visible &= torch.arange(Nk) < torch.as_tensor(k_lengths)[:, None, None, None]
    return visible


def inputs(B, H, Hkv, Nq, Nk, D, Dv, *, seed, dtype=torch.float64, scale=1.0):
    return (randn(B, H, Nq, D, seed=seed, dtype=dtype, scale=scale),
            randn(B, Hkv, Nk, D, seed=seed + 1, dtype=dtype, scale=scale),
            randn(B, Hkv, Nk, Dv, seed=seed + 2, dtype=dtype))


def forward_and_grads(fn, q, k, v, grad_out):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    (out.double() * grad_out).sum().backward()
    return out.detach(), {"q": q.grad, "k": k.grad, "v": v.grad}


# (B, H, Hkv, Nq, Nk, D, Dv, causal, k_lengths)
CASES = {
    "all-keys": (2, 2, 2, 33, 47, 16, 8, False, None),
    "causal-square-gqa": (2, 4, 2, 65, 65, 12, 10, True, None),
    "causal-offset-mqa": (1, 3, 1, 23, 70, 9, 5, True, None),  # Nq < Nk: a prefix every row sees
    "causal-q-longer": (1, 2, 2, 40, 25, 8, 8, True, None),  # Nq > Nk: the first 15 rows see nothing
    "padding-empty-batch": (3, 2, 1, 30, 31, 7, 6, False, [31, 11, 0]),  # batch 2 has no key at all
    "padding-causal": (3, 2, 2, 29, 29, 7, 6, True, [29, 7, 0]),
    "decode-step": (2, 4, 2, 1, 40, 16, 8, True, [40, 17]),  # one causal query sees every key: (φq φkᵀ) v
}
LINEAR_VARIANTS = {"default": "linear", "chunk-8": attnkit.kernel("linear", chunk=8)}


def run_case(case, kernel, dtype=torch.float64, seed=0, grad=True):
    B, H, Hkv, Nq, Nk, D, Dv, causal, k_lengths = CASES[case]
    q, k, v = inputs(B, H, Hkv, Nq, Nk, D, Dv, seed=seed, dtype=dtype)
    mask = None if k_lengths is None else masks.padding(k_lengths)
    visible = visibility(B, Nq, Nk, causal, k_lengths)
    grad_out = randn(B, H, Nq, Dv, seed=seed + 3) if grad else None
    return (q, k, v, visible, grad_out,
            lambda q, k, v: attnkit.attention(q, k, v, mask=mask, causal=causal, kernel=kernel))


@pytest.mark.parametrize("variant", LINEAR_VARIANTS)
@pytest.mark.parametrize("case", CASES)
def test_linear_forward_and_gradients_equal_the_naive_formula(case, variant):
    q, k, v, visible, grad_out, fn = run_case(case, LINEAR_VARIANTS[variant])
    out, grads = forward_and_grads(fn, q, k, v, grad_out)
    ref, ref_grads = forward_and_grads(lambda q, k, v: naive_linear(q, k, v, visible), q, k, v, grad_out)
    assert_close(out, ref, atol=1e-12 * magnitude(ref), what="out")
    for name in grads:
        assert torch.isfinite(grads[name]).all(), name
        assert_close(grads[name], ref_grads[name], atol=1e-11 * magnitude(ref_grads[name]), what=f"d{name}")
    sees_nothing = ~visible.any(-1).expand(-1, out.shape[1], -1)  # (B, H, Nq)
    assert (out[sees_nothing] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("case", ["all-keys", "causal-square-gqa", "padding-causal"])
def test_linear_low_precision_within_twice_the_naive_formulas_error(case, dtype):
    """STYLE.md's rule: at most 2x the error of the naive formula computed in the same dtype, plus the floor."""
    q, k, v, visible, _, fn = run_case(case, LINEAR_VARIANTS["chunk-8"], dtype=dtype, grad=False)
    out = fn(q, k, v)
    assert out.dtype == dtype
    ref = naive_linear(q.double(), k.double(), v.double(), visible)
    baseline = naive_linear(q, k, v, visible)  # the O(N²) formula, every step in `dtype`
    assert_close(out, ref, atol=baseline_atol(baseline, ref, dtype), what=f"linear {DTYPE_IDS[dtype]}")


@pytest.mark.parametrize("name", ["linear", "performer"])
def test_gradcheck(name):
    kernel = attnkit.kernel(name, chunk=3, **({"features": 8} if name == "performer" else {}))
    q, k, v = (t.requires_grad_() for t in inputs(2, 2, 1, 7, 9, 4, 3, seed=5))

    def fn(q, k, v):
        return attnkit.attention(q, k, v, causal=True, mask=masks.padding([9, 4]), kernel=kernel)

    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("name", ["linear", "performer"])
def test_chunk_size_changes_nothing(name):
    q, k, v = inputs(2, 4, 2, 45, 50, 8, 5, seed=11)
    mask = masks.padding([50, 20])
    outs = {c: attnkit.attention(q, k, v, causal=True, mask=mask, kernel=attnkit.kernel(name, chunk=c))
            for c in (1, 7, 64, 100)}
    for c, out in outs.items():
        assert_close(out, outs[100], atol=1e-12, what=f"chunk {c} vs chunk 100 (> N)")


def test_nan_in_padded_keys_never_reaches_outputs_or_gradients():
    q, k, v = inputs(2, 2, 2, 10, 12, 6, 4, seed=3)
    k[1, :, 5:], v[1, :, 5:] = float("nan"), float("inf")
    clean_k, clean_v = k.nan_to_num(0.0, posinf=0.0), v.nan_to_num(0.0, posinf=0.0)
    for name in ("linear", "performer"):
        kernel = attnkit.kernel(name, chunk=4)

        def fn(q, k, v, kernel=kernel):
            return attnkit.attention(q, k, v, mask=masks.padding([12, 5]), causal=True, kernel=kernel)

        out, grads = forward_and_grads(fn, q, k, v, torch.ones(2, 2, 10, 4, dtype=torch.float64))
        assert_close(out, fn(q, clean_k, clean_v), atol=1e-12, what=name)
        assert all(torch.isfinite(g).all() for g in grads.values()), name


def test_a_key_padding_tensor_per_head_and_a_dense_mask_object():
    """Key padding as a bool tensor (B, H, 1, Nk) that differs per query head (GQA keys then serve each head
    separately), and as masks.dense(...) ANDed with causal."""
    q, k, v = inputs(2, 4, 2, 9, 9, 5, 3, seed=8)
    keys = randn(2, 4, 1, 9, seed=9) > -0.5
    keys[..., 0] = True
    visible = keys & visibility(2, 9, 9, causal=True)
    out = attnkit.attention(q, k, v, mask=keys, causal=True, kernel=attnkit.kernel("linear", chunk=4))
    assert_close(out, naive_linear(q, k, v, visible), atol=1e-12)
    out = attnkit.attention(q, k, v, mask=masks.dense(keys) & masks.causal(), kernel="performer")
    p = attnkit.get_kernel("performer")
    s = 5 ** -0.25
    assert_close(out, naive_kernelized(p.feature_map(q * s), p.feature_map(k * s), v, visible), atol=1e-12)


# --------------------------------------------------------------------------------------------------
# The recurrent form


@pytest.mark.parametrize("name", ["linear", "performer"])
@pytest.mark.parametrize("pieces", [[1] * 14, [5, 1, 8]], ids=["token-by-token", "pieces"])
def test_step_equals_the_chunked_causal_result(name, pieces):
    q, k, v = inputs(2, 4, 2, 14, 14, 6, 5, seed=21, scale=2.0)  # large norms: the running max must rescale
    kernel = attnkit.kernel(name, chunk=4)
    full = attnkit.attention(q, k, v, causal=True, kernel=kernel)
    state, outs, start = None, [], 0
    for n in pieces:
        sl = slice(start, start + n)
        out, state = attnkit.linear_attention_step(q[:, :, sl], k[:, :, sl], v[:, :, sl], state, kernel=kernel)
        outs.append(out)
        start += n
    assert state.length == 14 and state.kv.shape == (2, 2, kernel_features(kernel, 6), 6)
    assert_close(torch.cat(outs, dim=2), full, atol=1e-12 * magnitude(full))


def test_a_state_continues_under_another_chunk_size():
    """``chunk`` changes speed only: a state made with one chunk size continues with another; other options
    (the features) must match."""
    q, k, v = inputs(1, 2, 2, 12, 12, 6, 5, seed=4)
    full = attnkit.attention(q, k, v, causal=True, kernel="linear")
    first, state = attnkit.linear_attention_step(q[:, :, :5], k[:, :, :5], v[:, :, :5],
                                                  kernel=attnkit.kernel("linear", chunk=2))
    rest, _ = attnkit.linear_attention_step(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], state,
                                            kernel=attnkit.kernel("linear", chunk=64))
    assert_close(torch.cat([first, rest], dim=2), full, atol=1e-12 * magnitude(full))
    _, state = attnkit.linear_attention_step(q, k, v, kernel=attnkit.kernel("performer", features=8, chunk=2))
    assert_raises_naming(ValueError, ["features=8", "features=16"], attnkit.linear_attention_step, q, k, v, state,
                         kernel=attnkit.kernel("performer", features=16, chunk=2))


def kernel_features(kernel, d):
    return kernel.features if kernel.name == "performer" else d


def test_step_errors():
    q = torch.randn(1, 2, 3, 4)
    _, state = attnkit.linear_attention_step(q, q, q)
    assert_raises_naming(ValueError, ["as many new queries as new keys"], attnkit.linear_attention_step,
                         q, torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4), state)
    assert_raises_naming(ValueError, ["kernel('linear')", "performer"], attnkit.linear_attention_step,
                         q, q, q, state, kernel="performer")
    assert_raises_naming(ValueError, ["(B, Hkv, M, Dv + 1)"], attnkit.linear_attention_step,
                         torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5), state)
    assert_raises_naming(ValueError, ["redraw=False"], attnkit.linear_attention_step, q, q, q,
                         kernel=attnkit.kernel("performer", redraw=True))
    assert_raises_naming(TypeError, ["linear or performer"], attnkit.linear_attention_step, q, q, q, kernel="dense")


# --------------------------------------------------------------------------------------------------
# The performer's random features


def relative_error(out, exact):
    return ((out - exact).norm() / exact.norm()).item()


def test_performer_features_are_seeded_orthogonal_and_positive():
    q, k, v = inputs(1, 2, 2, 20, 20, 8, 4, seed=31)
    same = [attnkit.attention(q, k, v, kernel=attnkit.kernel("performer", features=32, seed=3)) for _ in range(2)]
    other = attnkit.attention(q, k, v, kernel=attnkit.kernel("performer", features=32, seed=4))
    assert torch.equal(same[0], same[1]) and not torch.allclose(same[0], other)
    p = attnkit.kernel("performer", features=20, seed=3)
    w = p.random_features(8)  # (20, 8): blocks of 8, 8 and 4 orthogonal rows
    assert w.shape == (20, 8) and p.random_features(8) is w  # drawn once per (D, device, dtype)
    for block in (w[:8], w[8:16], w[16:]):
        unit = block / block.norm(dim=1, keepdim=True)
        assert_close(unit @ unit.T, torch.eye(len(block), dtype=torch.float64), atol=1e-12)
    assert not torch.allclose(w[:8].norm(dim=1), w[:8].norm(dim=1)[:1])  # chi-distributed norms, not all equal
    phi = p.feature_map(randn(50, 8, seed=2))
    assert phi.shape == (50, 20) and (phi > 0).all()


def test_performer_estimates_exp_of_the_scaled_dot_product():
    """E[φ(a)·φ(b)] = exp(a·b): unbiased, and close with many features (measured: relative std 1.4% at
    20000 features, largest of 30 entries 5%, mean over them 0.1%)."""
    a, b = randn(5, 8, seed=1, scale=0.3), randn(6, 8, seed=2, scale=0.3)
    p = attnkit.kernel("performer", features=20000, seed=1)
    ratio = (p.feature_map(a) @ p.feature_map(b).T) / torch.exp(a @ b.T)
    assert (ratio - 1).abs().max() < 0.1 and abs(ratio.mean() - 1) < 0.015, ratio


def test_performer_with_many_features_is_close_to_softmax_attention():
    q, k, v = inputs(1, 2, 2, 40, 40, 16, 8, seed=41, scale=0.5)
    for causal in (False, True):
        exact = attnkit.attention(q, k, v, causal=causal, kernel="dense")
        out = attnkit.attention(q, k, v, causal=causal, kernel=attnkit.kernel("performer", features=4096))
        assert relative_error(out, exact) < 0.08, causal  # measured 0.034 (all keys), 0.029 (causal)


def test_performer_error_shrinks_as_features_grow():
    q, k, v = inputs(1, 2, 2, 40, 40, 16, 8, seed=51, scale=0.5)
    exact = attnkit.attention(q, k, v, kernel="dense")
    err = {m: sum(relative_error(attnkit.attention(q, k, v, kernel=attnkit.kernel("performer", features=m, seed=s)),
                                 exact) for s in range(4)) / 4 for m in (16, 64, 256, 1024)}
    values = list(err.values())
    assert values == sorted(values, reverse=True), err  # ~1/sqrt(M): measured 0.32, 0.19, 0.13, 0.06
    assert err[1024] < 0.5 * err[16], err


@pytest.mark.parametrize("causal,k_lengths,nq", [(True, None, 37), (True, [40, 13], 37), (False, [40, 0], 37),
                                                 (True, None, 53), (False, None, 53)],
                         ids=["causal", "causal-padding", "padding-empty-batch", "causal-nq>nk", "nq>nk"])
def test_performer_equals_its_own_naive_formula(causal, k_lengths, nq):
    """Same features, O(N²) formula: the chunked causal path and the running-max rescaling change nothing."""
    q, k, v = inputs(2, 4, 2, nq, 40, 8, 6, seed=61, scale=1.5)
    p = attnkit.kernel("performer", features=24, chunk=5)
    out = attnkit.attention(q, k, v, causal=causal, mask=None if k_lengths is None else masks.padding(k_lengths),
                            kernel=p)
    s = 8 ** -0.25
    ref = naive_kernelized(p.feature_map(q * s), p.feature_map(k * s), v, visibility(2, nq, 40, causal, k_lengths))
    assert_close(out, ref, atol=1e-12 * magnitude(ref))


@pytest.mark.parametrize("name", ["linear", "performer"])
@pytest.mark.parametrize("causal", [False, True])
def test_no_keys_at_all_gives_zeros(name, causal):
    """Nk = 0: every row sees nothing, as with the exact kernels (the performer once raised in amax here)."""
    q, k, v = inputs(1, 2, 2, 5, 0, 8, 6, seed=3)
    out = attnkit.attention(q, k, v, causal=causal, kernel=name)
    assert out.shape == (1, 2, 5, 6) and torch.equal(out, torch.zeros_like(out))


def test_performer_is_stable_where_the_exponentials_underflow():
    """With |√s·q|²/2 ≈ 70, exp(W x − |x|²/2) underflows in float32 for some features (the unstabilized formula
    is off by O(1)); the subtracted maxima (per query row, running over keys) keep float32 at float64's result."""
    q, k, v = inputs(1, 2, 2, 30, 30, 16, 4, seed=71, scale=6.0)
    p = attnkit.kernel("performer", chunk=8)
    out32 = attnkit.attention(q.float(), k.float(), v.float(), causal=True, kernel=p)
    out64 = attnkit.attention(q, k, v, causal=True, kernel=p)
    assert_close(out32, out64, atol=1e-5 * magnitude(out64))  # measured 1.9e-6
    s = 16 ** -0.25
    unstabilized = naive_kernelized(p.feature_map(q.float() * s), p.feature_map(k.float() * s), v.float(),
                                    visibility(1, 30, 30, causal=True))
    assert (unstabilized - out64).abs().max() > 0.1


def test_performer_redraw():
    q, k, v = inputs(1, 2, 2, 12, 12, 8, 4, seed=81)
    p = attnkit.kernel("performer", features=16, redraw=True)
    assert not torch.equal(attnkit.attention(q, k, v, kernel=p), attnkit.attention(q, k, v, kernel=p))
    torch.manual_seed(5)
    first = attnkit.attention(q, k, v, kernel=p)
    torch.manual_seed(5)
    assert torch.equal(first, attnkit.attention(q, k, v, kernel=p))  # from torch's global RNG


def test_features_are_drawn_on_the_cpu_in_float64_then_cast():
    p = attnkit.kernel("performer", features=16, seed=9)
    assert torch.equal(p.random_features(8, dtype=torch.float32), p.random_features(8).float())


# --------------------------------------------------------------------------------------------------
# What they refuse, and that auto never picks them


@pytest.mark.parametrize("options,named", [
    ({"window": (5, 0)}, "sliding_window(left=5, right=0)"),
    ({"mask": masks.document(torch.arange(16) // 4)}, "document("),
    ({"mask": masks.padding([16], q_lengths=[9])}, "q_lengths"),
    ({"mask": torch.ones(1, 1, 16, 16, dtype=torch.bool)}, "size 1 in the query dimension"),
    ({"mask": masks.causal() | masks.padding([3])}, "supports only causal and key-padding masks"),
    ({"bias": torch.zeros(16, 16)}, "bias not supported"),
    ({"softcap": 5.0}, "softcap not supported"),
    ({"dropout": 0.1}, "dropout not supported"),
    ({"return_lse": True}, "return_lse not supported"),
], ids=["window", "document", "q-padding", "dense-2d-mask", "or", "bias", "softcap", "dropout", "return_lse"])
@pytest.mark.parametrize("name", ["linear", "performer"])
def test_refusals_name_the_reason(name, options, named):
    q = torch.randn(1, 2, 16, 8)
    assert_raises_naming(ValueError, [f"kernel {name!r} cannot serve this request", named], attnkit.attention,
                         q, q, q, kernel=name, **options)


def test_windows_that_never_bind_are_accepted():
    q, k, v = inputs(1, 2, 2, 10, 10, 4, 4, seed=91)
    causal = attnkit.attention(q, k, v, causal=True, kernel="linear")
    assert_close(attnkit.attention(q, k, v, window=(9, 0), kernel="linear"), causal, atol=0.0)
    assert_close(attnkit.attention(q, k, v, window=(None, 9), kernel="linear"),
                 attnkit.attention(q, k, v, kernel="linear"), atol=0.0)


def test_declared_capabilities():
    for name in ("linear", "performer"):
        caps = attnkit.get_kernel(name).capabilities
        assert not caps.exact and caps.gqa and caps.gradients and caps.masks == "causal+padding"
        row = caps.as_row()
        assert row["exact"] == "no" and row["bias"] == "no" and row["dropout"] == "no"
        assert "approximate" in attnkit.get_kernel(name).description


@pytest.mark.parametrize("options", [{}, {"causal": True}, {"mask": masks.padding([16])}, {"softcap": 2.0},
                                     {"window": (4, 0)}], ids=["plain", "causal", "padding", "softcap", "window"])
def test_auto_never_tries_an_approximate_kernel(options):
    q = torch.zeros(1, 1, 16, 8)
    req = AttentionRequest.build(q, q, q, **options)
    order = attnkit.auto_order(req)
    assert "linear" not in order and "performer" not in order and "dense" in order
    assert dispatch.select_kernel(req, "auto").capabilities.exact


def test_auto_with_only_approximate_kernels_says_they_are_chosen_by_name(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})
    attnkit.register_kernel(attnkit.functional.LinearKernel())
    attnkit.register_kernel(attnkit.functional.PerformerKernel())
    q = torch.randn(1, 1, 8, 4)
    assert_raises_naming(ValueError, ["no attention kernel supports this request",
                                      "never chosen by 'auto', only by name: linear, performer"],
                         attnkit.attention, q, q, q, causal=True)
    assert attnkit.attention(q, q, q, causal=True, kernel="linear").shape == (1, 1, 8, 4)  # by name: fine


# --------------------------------------------------------------------------------------------------
# attnkit.kernel


def test_kernel_returns_registered_or_configured_kernels():
    assert attnkit.kernel("dense") is attnkit.get_kernel("dense")
    assert attnkit.kernel("linear") is attnkit.get_kernel("linear")
    p = attnkit.kernel("performer", features=64, seed=2)
    assert repr(p) == "kernel('performer', features=64, seed=2, redraw=False, chunk=64)"
    assert repr(attnkit.kernel("linear", chunk=32)) == "kernel('linear', chunk=32)"
    assert p.name == "performer" and p == attnkit.kernel("performer", seed=2, features=64)
    assert attnkit.get_kernel("performer") is not p and attnkit.get_kernel("performer").features == 256


@pytest.mark.parametrize("call,exc,words", [
    (lambda: attnkit.kernel("linaer"), ValueError, ["'linaer'", "linear", "performer"]),
    (lambda: attnkit.kernel("performer", feature=3), TypeError, ["'feature'", "features, seed, redraw, chunk"]),
    (lambda: attnkit.kernel("linear", chunks=3), TypeError, ["'chunks'", "chunk"]),
    (lambda: attnkit.kernel("dense", chunk=3), TypeError, ["'dense' takes no options", "chunk"]),
    (lambda: attnkit.kernel("linear", chunk=0), ValueError, ["chunk", "positive"]),
    (lambda: attnkit.kernel("performer", features=-1), ValueError, ["features", "-1"]),
    (lambda: attnkit.kernel("performer", seed=1.5), TypeError, ["seed"]),
    (lambda: attnkit.kernel("performer", redraw=1), TypeError, ["redraw"]),
    (lambda: attnkit.kernel(3), TypeError, ["name"]),
], ids=["unknown-name", "performer-option", "linear-option", "exact-kernel-option", "chunk-0", "features",
        "seed", "redraw", "not-a-name"])
def test_kernel_errors(call, exc, words):
    assert_raises_naming(exc, words, call)


# --------------------------------------------------------------------------------------------------
# Bounded memory, and models


def test_causal_gradients_save_no_quadratic_tensor():
    """Everything autograd keeps for the backward of a causal call is O(N·chunk + (N/chunk)·M·Dv)."""
    N, D, chunk = 2048, 16, 64
    q, k, v = (t.requires_grad_() for t in inputs(1, 1, 1, N, N, D, D, seed=7, dtype=torch.float32))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = attnkit.attention(q, k, v, causal=True, kernel=attnkit.kernel("linear", chunk=chunk))
    out.sum().backward()
    assert max(saved) <= N * (D + 1)  # the largest is an (N, D)-sized input or feature tensor
    assert sum(saved) < 40 * N * max(chunk, D + 1)  # vs N² = 2048 · N


def small_gpt(kernel):
    config = models.GPTConfig(vocab_size=50, max_seq_len=16, dim=32, num_layers=2,
                              attention=models.AttentionConfig(num_heads=4, num_kv_heads=2))
    torch.manual_seed(0)
    return set_kernel(models.GPT(config).eval(), kernel)


@pytest.mark.parametrize("kernel", ["linear", attnkit.kernel("performer", features=32, seed=1, chunk=4)],
                         ids=["linear", "performer"])
def test_gpt_cached_decoding_equals_the_full_causal_forward(kernel):
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0  # left padding: key padding ANDed with causal
    model = small_gpt(kernel)
    with torch.no_grad():
        full = model(ids, mask).logits  # (2, 12, 50)
        cache = model.new_cache(max_len=12)
        steps = [model(ids[:, :5], mask[:, :5], cache=cache).logits]
        steps += [model(ids[:, i:i + 1], mask[:, :i + 1], cache=cache).logits for i in range(5, 12)]
    assert full.shape == (2, 12, 50) and torch.isfinite(full).all()
    assert_close(torch.cat(steps, dim=1)[mask.bool()], full[mask.bool()], atol=1e-5 * magnitude(full))
    assert not torch.allclose(full, small_gpt("dense")(ids, mask).logits, atol=1e-3)  # it is not softmax


def test_multi_head_attention_takes_a_configured_kernel():
    mha = MultiHeadAttention(24, 4, num_kv_heads=2, kernel=attnkit.kernel("performer", features=16))
    x = torch.randn(2, 9, 24)
    padding = torch.ones(2, 9, dtype=torch.bool)
    padding[0, 6:] = False
    assert mha(x, causal=True, key_padding=padding).shape == (2, 9, 24)
    assert "kernel('performer', features=16" in repr(mha)
    mha.train()
    mha.dropout = 0.1
    assert_raises_naming(ValueError, ["dropout not supported"], mha, x, causal=True)
