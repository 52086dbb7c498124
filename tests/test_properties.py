"""Property tests: random shapes, head groupings, causal flags, windows and masks; the tiled (with tiny
tiles, so every input spans many) and sdpa kernels agree with the dense reference in float64."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks
from helpers import assert_close, small_tiles

TOL = 1e-10  # float64 against float64: DESIGN.md's float64 tolerance
SETTINGS = settings(deadline=None, max_examples=30, derandomize=True)


@st.composite
def requests(draw):
    B = draw(st.integers(1, 2))
    Hkv = draw(st.integers(1, 2))
    H = Hkv * draw(st.integers(1, 3))
    Nq, Nk = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    D, Dv = draw(st.integers(1, 17)), draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=gen, dtype=torch.float64) * 2
    k = torch.randn(B, Hkv, Nk, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, Hkv, Nk, Dv, generator=gen, dtype=torch.float64)
    options = {"causal": draw(st.booleans())}
    if draw(st.booleans()):
        side = st.none() | st.integers(0, 12)
        options["window"] = (draw(side), draw(side))
    mask_kind = draw(st.sampled_from(["none", "dense", "dense-band", "padding", "prefix", "global|window"]))
    if mask_kind == "dense":
        shape = draw(st.sampled_from([(Nq, Nk), (B, 1, Nq, Nk), (B, H, Nq, Nk), (1, H, 1, Nk)]))
        options["mask"] = torch.rand(*shape, generator=gen) < draw(st.floats(0.0, 1.0))
    elif mask_kind == "dense-band":  # structure in a plain tensor: diagonal bands, as a user might build
        distance = torch.arange(Nq)[:, None] - torch.arange(Nk)[None, :] + draw(st.integers(-5, Nk))
        options["mask"] = (distance >= 0) & (distance <= draw(st.integers(0, 3)))
    elif mask_kind == "padding":
        k_lengths = draw(st.lists(st.integers(0, Nk), min_size=B, max_size=B))
        q_lengths = draw(st.none() | st.lists(st.integers(0, Nq), min_size=B, max_size=B))
        options["mask"] = masks.padding(k_lengths, q_lengths)
    elif mask_kind == "prefix":
        options["mask"] = masks.prefix_lm(draw(st.lists(st.integers(0, Nk), min_size=B, max_size=B)))
    elif mask_kind == "global|window":
        options["mask"] = masks.sliding_window(draw(st.integers(0, 5))) | masks.global_tokens(
            draw(st.lists(st.integers(0, Nk), min_size=1, max_size=3)))
    return q, k, v, options


def _grads(kernel, q, k, v, options, grad_out):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = attnkit.attention(q, k, v, kernel=kernel, **options)
    (out * grad_out).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@SETTINGS
@given(requests())
def test_tiled_matches_dense(case):
    q, k, v, options = case
    grad_out = torch.randn(q.shape[:-1] + v.shape[-1:], dtype=torch.float64,
                           generator=torch.Generator().manual_seed(0))
    want = _grads("dense", q, k, v, options, grad_out)
    with small_tiles(4, 4, 8):
        got = _grads("tiled", q, k, v, options, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert_close(a, b, atol=TOL, what=name)


@SETTINGS
@given(requests())
def test_sdpa_matches_dense(case):
    q, k, v, options = case
    want = attnkit.attention(q, k, v, kernel="dense", **options)
    got = attnkit.attention(q, k, v, kernel="sdpa", **options)
    assert_close(got, want, atol=TOL, what="out")


@SETTINGS
@given(requests())
def test_combined_mask_layout_is_never_wrong(case):
    """The layout of the mask the kernels actually receive (mask, causal and window folded together)."""
    q, k, v, options = case
    req = attnkit.AttentionRequest.build(q, k, v, **options)
    if req.mask is None:
        return
    Nq, Nk = q.shape[2], k.shape[2]
    dense = req.mask.materialize(Nq, Nk)
    for block in (3, 8):
        layout = req.mask.block_layout(Nq, Nk, block)
        b, h = torch.broadcast_shapes(dense.shape[:2], layout.shape[:2])
        d = dense.expand(b, h, Nq, Nk)
        nqb, nkb = layout.shape[-2:]
        pad = torch.nn.functional.pad(d.int(), (0, nkb * block - Nk, 0, nqb * block - Nq), value=-1)
        tiles = pad.unflatten(-1, (nkb, block)).unflatten(-3, (nqb, block)).transpose(-3, -2)  # (b,h,nqb,nkb,bq,bk)
        any_true = (tiles == 1).flatten(-2).any(-1)
        any_false = (tiles == 0).flatten(-2).any(-1)
        layout = layout.expand(b, h, nqb, nkb)
        assert not (any_true & (layout == masks.EMPTY)).any(), "EMPTY tile holds a visible entry"
        assert not (any_false & (layout == masks.FULL)).any(), "FULL tile holds a hidden entry"
