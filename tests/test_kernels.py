"""Every kernel against the float64 reference: outputs, log-sum-exp and gradients, on hostile inputs.

Each case runs for each kernel variant (dense, sdpa, tiled, and tiled with 16x16 tiles so that small
inputs span many tiles and chunks) in float64, float32 and bfloat16. A kernel in dtype X must be within
2x the dense kernel's own error in X (plus a rounding floor) of the reference; see ``helpers.py``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.functional.kernels import tiled as tiled_module
from helpers import (KERNELS, NATIVE_OFF, Inputs, assert_close, baseline_atol, dense_atol,
                     kernel_context, kernel_dtypes, naive_attention, randn, reference, run, small_tiles)


@dataclass(frozen=True)
class Case:
    id: str
    B: int = 2
    H: int = 4
    Hkv: int | None = None  # default: H
    Nq: int = 40
    Nk: int = 40
    D: int = 16
    Dv: int | None = None  # default: D
    options: Callable[[Case], dict] = field(default=lambda c: {})  # mask, causal, window, softcap, scale
    bias: str | None = None  # "tensor" (1, H, Nq, Nk), "key-bias" (B, 1, 1, Nk), "alibi"

    @property
    def seed(self) -> int:
        return zlib.crc32(self.id.encode())

    @property
    def softcap(self) -> bool:
        return "softcap" in self.options(self)

    def inputs(self) -> Inputs:
        Hkv, Dv, s = self.Hkv or self.H, self.Dv or self.D, self.seed
        q = randn(self.B, self.H, self.Nq, self.D, seed=s, scale=2.0)  # logits ~ N(0, 4): peaked rows
        k = randn(self.B, Hkv, self.Nk, self.D, seed=s + 1)
        v = randn(self.B, Hkv, self.Nk, Dv, seed=s + 2)
        bias = None
        if self.bias == "tensor":
            bias = randn(1, self.H, self.Nq, self.Nk, seed=s + 3)
        elif self.bias == "key-bias":
            bias = randn(self.B, 1, 1, self.Nk, seed=s + 3)
        elif self.bias == "alibi":
            bias = attnkit.bias.alibi(self.H)
        return Inputs(q, k, v, bias, self.options(self))

    def grad_out(self, dtype: torch.dtype) -> torch.Tensor:
        return randn(self.B, self.H, self.Nq, self.Dv or self.D, seed=self.seed + 4).to(dtype)


def random_mask(shape, *, density: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen) < density


def mask_with_empty_rows(c: Case) -> dict:
    """A per-head random mask (B, H, Nq, Nk) in which some query rows see nothing."""
    m = random_mask((c.B, c.H, c.Nq, c.Nk), density=0.6, seed=c.seed + 5)
    m[0, :, 3] = False
    m[-1, -1, c.Nq - 1] = False
    return {"mask": m}


def doc_ids(n: int) -> torch.Tensor:
    """Two packed rows of sorted document ids of length n, with uneven documents."""
    a, b = n // 4, n // 2
    return torch.stack([torch.tensor([0] * a + [1] * (n - a - 5) + [2] * 5),
                        torch.tensor([0] * b + [1] * 3 + [2] * (n - b - 3))])


def diagonal_band(c: Case) -> dict:
    """A dense mask with structure: each query sees only its own position and the one before. A tile on
    the diagonal holds exactly one True per row, so it is PARTIAL however the count is taken."""
    p = torch.arange(c.Nq)[:, None] + c.Nk - c.Nq
    j = torch.arange(c.Nk)[None, :]
    return {"mask": (j <= p) & (j >= p - 1)}


CASES = [
    Case("plain"),
    Case("causal-square", options=lambda c: {"causal": True}),
    Case("causal-bottom-right", Nq=13, Nk=45, options=lambda c: {"causal": True}),
    Case("causal-more-queries-than-keys", Nq=20, Nk=8, options=lambda c: {"causal": True}),
    Case("causal-one-query", Nq=1, Nk=45, options=lambda c: {"causal": True}),  # a decoding step
    Case("window", Nq=45, Nk=45, options=lambda c: {"window": (6, 3)}),
    Case("window-causal-offset", Nq=17, Nk=45, options=lambda c: {"window": (5, None), "causal": True}),
    Case("padding-q-lengths", Nq=37, Nk=45, options=lambda c: {"mask": masks.padding([30, 45], q_lengths=[37, 20])}),
    Case("document", options=lambda c: {"mask": masks.document(doc_ids(c.Nk))}),
    Case("document-offset", Nq=15, options=lambda c: {"mask": masks.document(doc_ids(c.Nk))}),
    Case("prefix-lm", options=lambda c: {"mask": masks.prefix_lm([5, 23])}),
    Case("global-or-window", options=lambda c: {"mask": masks.sliding_window(4) | masks.global_tokens([0, 17])}),
    Case("dense-mask-empty-rows", options=mask_with_empty_rows),
    Case("dense-mask-diagonal-band", Nq=40, Nk=48, options=diagonal_band),
    Case("gqa", H=6, Hkv=2, Nq=20, Nk=40, options=lambda c: {"causal": True}),
    Case("gqa-per-head-mask", H=6, Hkv=2, options=mask_with_empty_rows),
    Case("mqa", H=4, Hkv=1, options=lambda c: {"window": (8, 8)}),
    Case("softcap", options=lambda c: {"softcap": 1.0, "causal": True}),
    Case("softcap-bias-padding", bias="tensor",
         options=lambda c: {"softcap": 2.0, "mask": masks.padding([40, 21])}),
    Case("alibi", options=lambda c: {"causal": True}, bias="alibi"),
    Case("tensor-bias", bias="tensor", options=lambda c: {"mask": random_mask((c.Nq, c.Nk), density=0.7, seed=1)}),
    Case("key-bias-broadcast", bias="key-bias"),
    Case("scale-and-value-dim", Dv=8, options=lambda c: {"scale": 0.5, "causal": True}),
    Case("odd-sizes", B=1, H=2, Nq=97, Nk=1025, D=59, options=lambda c: {"causal": True}),
    Case("multi-block-window", B=1, H=2, Nq=300, Nk=300, options=lambda c: {"window": (100, 0)}),
    Case("batch-of-1", B=1, Nq=33, Nk=33, options=lambda c: {"causal": True}),
    Case("batch-of-0", B=0, options=lambda c: {"causal": True}),
]


def _supported(case: Case, variant: str) -> bool:
    if variant in NATIVE_OFF:  # differs from "tiled" only where the native forward would serve
        return not (case.softcap or case.bias)
    return not (variant == "sdpa" and case.softcap)  # sdpa refuses softcap (tested in test_errors)


PARAMS = [pytest.param(case, *p.values, id=f"{p.id}-{case.id}")
          for case in CASES for p in kernel_dtypes() if _supported(case, p.values[0])]


@pytest.mark.parametrize("case,variant,dtype", PARAMS)
def test_matches_reference(case: Case, variant: str, dtype: torch.dtype):
    inputs = case.inputs().to(dtype)
    grad_out = case.grad_out(dtype)
    with_lse = variant != "sdpa"
    bias_grad = variant != "sdpa"  # sdpa refuses a bias that requires grad (tested in test_errors)
    ref = reference(inputs, grad_out=grad_out, return_lse=with_lse)
    got = run(variant, inputs, grad_out=grad_out, bias_grad=bias_grad, return_lse=with_lse)
    base = run("dense", inputs, grad_out=grad_out, bias_grad=bias_grad, return_lse=with_lse)

    Dv = case.Dv or case.D
    assert got.out.shape == (case.B, case.H, case.Nq, Dv) and got.out.dtype == dtype
    expected_grads = {"q", "k", "v"} | ({"bias"} if isinstance(inputs.bias, torch.Tensor) and bias_grad else set())
    assert set(got.grads) == expected_grads

    def tolerance(name: str, expected: torch.Tensor) -> float:
        if variant == "dense":  # cannot be judged against itself: fixed table
            return dense_atol(expected, dtype)
        baseline = base.out if name == "out" else base.lse if name == "lse" else base.grads[name]
        return baseline_atol(baseline, expected, dtype)

    assert_close(got.out, ref.out, atol=tolerance("out", ref.out), what="out")
    if with_lse:
        assert got.lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert_close(got.lse, ref.lse, atol=tolerance("lse", ref.lse), what="lse")
    for name in sorted(got.grads):
        assert torch.isfinite(got.grads[name]).all(), f"grad {name} has non-finite entries"
        assert_close(got.grads[name], ref.grads[name], atol=tolerance(name, ref.grads[name]), what=f"grad {name}")


def _visible(case: Case) -> torch.Tensor | None:
    """The visibility of a case, by hand for causal and window; structured masks via ``materialize``
    (checked against hand-written definitions in test_masks)."""
    opts = case.options(case)
    p = torch.arange(case.Nq)[:, None] + case.Nk - case.Nq  # absolute query positions
    j = torch.arange(case.Nk)[None, :]
    vis = torch.ones(case.Nq, case.Nk, dtype=torch.bool)
    if opts.get("causal"):
        vis = vis & (j <= p)
    if opts.get("window") is not None:
        left, right = opts["window"]
        if left is not None:
            vis = vis & (j >= p - left)
        if right is not None:
            vis = vis & (j <= p + right)
    mask = opts.get("mask")
    if isinstance(mask, torch.Tensor):
        vis = vis & mask
    elif mask is not None:
        vis = vis & mask.materialize(case.Nq, case.Nk)
    return vis


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_reference_matches_naive_definition(case: Case):
    """The reference itself against a textbook implementation written in the test."""
    inputs = case.inputs()
    opts = case.options(case)
    bias = inputs.bias
    if isinstance(bias, attnkit.bias.Bias):
        bias = bias.materialize(case.Nq, case.Nk, dtype=torch.float64)
    expected, expected_lse = naive_attention(inputs.q, inputs.k, inputs.v, _visible(case), bias,
                                             scale=opts.get("scale"), softcap=opts.get("softcap"))
    out, lse = attnkit.attention(inputs.q, inputs.k, inputs.v, bias=inputs.bias, kernel="dense", return_lse=True,
                                 **opts)
    assert_close(out, expected, atol=dense_atol(expected, torch.float64), what="out")
    assert_close(lse, expected_lse, atol=dense_atol(expected_lse, torch.float64), what="lse")


@pytest.mark.parametrize("variant", KERNELS)
@pytest.mark.parametrize("Nq,Nk", [(0, 5), (5, 0)], ids=["no-queries", "no-keys"])
def test_empty_sequences(variant, Nq, Nk):
    """No queries: an empty output. No keys: every row sees nothing, so zeros and zero gradients."""
    inputs = Inputs(randn(2, 2, Nq, 4, seed=0), randn(2, 2, Nk, 4, seed=1), randn(2, 2, Nk, 3, seed=2))
    got = run(variant, inputs, grad_out=randn(2, 2, Nq, 3, seed=3))
    assert got.out.shape == (2, 2, Nq, 3)
    assert (got.out == 0).all()
    assert (got.grads["q"] == 0).all() and got.grads["k"].shape == (2, 2, Nk, 4)


def test_attention_weights_are_the_probabilities_attention_applies():
    case = next(c for c in CASES if c.id == "softcap-bias-padding")
    inputs = case.inputs()
    opts = case.options(case)
    weights = attnkit.attention_weights(inputs.q, inputs.k, bias=inputs.bias, **opts)
    assert weights.shape == (case.B, case.H, case.Nq, case.Nk) and weights.dtype == torch.float64
    visible = _visible(case).expand_as(weights)
    assert (weights[~visible] == 0).all()
    assert_close(weights.sum(-1), torch.ones(case.B, case.H, case.Nq, dtype=torch.float64), atol=1e-12,
                 what="row sums")
    out = attnkit.attention(inputs.q, inputs.k, inputs.v, bias=inputs.bias, kernel="dense", **opts)
    assert_close(weights @ inputs.v, out, atol=1e-12, what="weights @ v")
    expected, _ = naive_attention(inputs.q, inputs.k, torch.eye(case.Nk, dtype=torch.float64).expand(
        case.B, case.H, -1, -1), visible, inputs.bias, softcap=opts["softcap"])
    assert_close(weights, expected, atol=1e-12, what="weights")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["sdpa", "tiled"])
def test_long_sliding_window(variant):
    """N = 4096 with a 256-key causal window (the case ``auto`` sends to the tiled kernel), float32."""
    case = Case("long-window", B=1, H=2, Nq=4096, Nk=4096, D=32, options=lambda c: {"window": (256, 0)})
    inputs = case.inputs().to(torch.float32)
    grad_out = case.grad_out(torch.float32)
    ref = reference(inputs, grad_out=grad_out)
    base = run("dense", inputs, grad_out=grad_out)
    got = run(variant, inputs, grad_out=grad_out)
    assert_close(got.out, ref.out, atol=baseline_atol(base.out, ref.out, torch.float32), what="out")
    for name in ("q", "k", "v"):
        assert_close(got.grads[name], ref.grads[name], atol=baseline_atol(base.grads[name], ref.grads[name],
                                                                          torch.float32), what=f"grad {name}")


# --------------------------------------------------------------------------------------------------
# Rows that may attend to nothing

EMPTY_ROW_CASES = {
    # case, and a function giving the bool (B, H, Nq) of rows that see nothing, by construction
    "padding-q-lengths": lambda c: (torch.arange(c.Nq) >= torch.tensor([37, 20])[:, None])[:, None].expand(
        c.B, c.H, c.Nq),
    "causal-more-queries-than-keys": lambda c: (torch.arange(c.Nq) < c.Nq - c.Nk).expand(c.B, c.H, c.Nq),
    "dense-mask-empty-rows": lambda c: ~c.options(c)["mask"].any(-1),
    "gqa-per-head-mask": lambda c: ~c.options(c)["mask"].any(-1),
}


@pytest.mark.parametrize("variant,dtype", kernel_dtypes())
@pytest.mark.parametrize("case_id", sorted(EMPTY_ROW_CASES))
def test_fully_masked_rows(case_id: str, variant: str, dtype: torch.dtype):
    case = next(c for c in CASES if c.id == case_id)
    empty = EMPTY_ROW_CASES[case_id](case)  # (B, H, Nq)
    assert empty.any() and not empty.all()
    with_lse = variant != "sdpa"
    got = run(variant, case.inputs().to(dtype), grad_out=case.grad_out(dtype), return_lse=with_lse)
    assert (got.out[empty] == 0).all(), "rows that see nothing must output exactly zero"
    assert (got.out[~empty].abs().sum(-1) > 0).all()
    for name, g in got.grads.items():
        assert torch.isfinite(g).all(), f"grad {name} has non-finite entries"
    assert (got.grads["q"][empty] == 0).all(), "a row that sees nothing must get a zero gradient"
    if with_lse:
        assert (got.lse[empty] == float("-inf")).all()
        assert torch.isfinite(got.lse[~empty]).all()


# --------------------------------------------------------------------------------------------------
# NaN and inf stored where no query may look


@dataclass(frozen=True)
class PoisonCase:
    id: str
    case: Case
    unseen: Callable[[Case], torch.Tensor]  # bool (B, Hkv, Nk): keys no query of that batch/head may see


POISON_CASES = [
    PoisonCase("padding", Case("p-padding", Nq=24, Nk=40, options=lambda c: {"mask": masks.padding([25, 40])}),
               lambda c: (torch.arange(c.Nk) >= torch.tensor([25, 40])[:, None])[:, None].expand(c.B, c.H, c.Nk)),
    PoisonCase("gqa-padding",
               Case("p-gqa", H=6, Hkv=2, Nq=40, Nk=40, options=lambda c: {"mask": masks.padding([40, 13], [40, 5])}),
               lambda c: (torch.arange(c.Nk) >= torch.tensor([40, 13])[:, None])[:, None].expand(c.B, 2, c.Nk)),
    PoisonCase("window-offset", Case("p-window", Nq=10, Nk=40, options=lambda c: {"window": (6, 0)}),
               lambda c: (torch.arange(c.Nk) < 24).expand(c.B, c.H, c.Nk)),
    PoisonCase("dense-unseen-columns",
               Case("p-dense", options=lambda c: {"mask": _unseen_columns_mask(c)}),
               lambda c: ~_unseen_columns_mask(c).any(-2).expand(c.B, c.H, c.Nk)),
]


def _unseen_columns_mask(c: Case) -> torch.Tensor:
    m = random_mask((c.B, 1, c.Nq, c.Nk), density=0.5, seed=11)
    m[..., [5, 6, 33]] = False
    m[1, ..., 20:] = False
    return m


@pytest.mark.parametrize("variant,dtype", kernel_dtypes())
@pytest.mark.parametrize("pcase", POISON_CASES, ids=lambda p: p.id)
def test_nan_in_unseen_keys_changes_nothing(pcase: PoisonCase, variant: str, dtype: torch.dtype):
    case = pcase.case
    clean = case.inputs().to(dtype)
    unseen = pcase.unseen(case)[..., None]  # (B, Hkv, Nk, 1)
    assert unseen.any()
    poison = torch.tensor([float("nan"), float("inf"), float("-inf")], dtype=dtype)
    noise = poison[torch.arange(case.Nk) % 3][:, None]  # (Nk, 1): nan, inf, -inf, nan, ...
    dirty = Inputs(clean.q, torch.where(unseen, noise, clean.k), torch.where(unseen, noise.flip(0), clean.v),
                   clean.bias, clean.options)
    grad_out = case.grad_out(dtype)
    want = run(variant, clean, grad_out=grad_out)
    got = run(variant, dirty, grad_out=grad_out)
    assert torch.isfinite(got.out).all()
    assert_close(got.out, want.out, atol=0.0, what="out")
    for name in ("q", "k", "v"):
        assert torch.isfinite(got.grads[name]).all(), f"grad {name} has non-finite entries"
        assert_close(got.grads[name], want.grads[name], atol=0.0, what=f"grad {name}")


@pytest.mark.parametrize("variant", KERNELS)
def test_nan_in_padded_queries_changes_nothing(variant: str):
    """Query rows beyond q_lengths (padding) may hold garbage: the other rows' outputs and every
    gradient stay as in the clean run, and the padded rows output zeros."""
    case = Case("nan-queries", Nq=24, Nk=30, options=lambda c: {"mask": masks.padding([30, 20], [24, 9])})
    clean = case.inputs()
    padded = (torch.arange(case.Nq) >= torch.tensor([24, 9])[:, None])[:, None, :, None]  # (B, 1, Nq, 1)
    dirty = Inputs(torch.where(padded, float("nan"), clean.q), clean.k, clean.v, None, clean.options)
    grad_out = case.grad_out(torch.float64)
    want = run(variant, clean, grad_out=grad_out)
    got = run(variant, dirty, grad_out=grad_out)
    assert (got.out[1, :, 9:] == 0).all()
    assert_close(got.out, want.out, atol=0.0, what="out")
    for name in ("k", "v"):
        assert torch.isfinite(got.grads[name]).all(), f"grad {name} has non-finite entries"
        assert_close(got.grads[name], want.grads[name], atol=0.0, what=f"grad {name}")
    assert (got.grads["q"][1, :, 9:] == 0).all()


@pytest.mark.parametrize("variant", KERNELS)
def test_inf_in_masked_bias_entries_changes_nothing(variant: str):
    """An additive bias that is -inf or NaN where the mask hides the key (a common way to pass
    padding twice) must not change the output."""
    case = Case("masked-bias", Nq=20, Nk=30, bias="tensor", options=lambda c: {"mask": masks.padding([30, 17])})
    clean = case.inputs()
    hidden = torch.arange(case.Nk) >= torch.tensor([30, 17])[:, None, None, None]  # (B, 1, 1, Nk)
    bias = clean.bias.expand(case.B, -1, -1, -1)
    dirty_bias = torch.where(hidden, torch.tensor([float("-inf"), float("nan")]).repeat(case.Nk // 2), bias)
    want = run(variant, Inputs(clean.q, clean.k, clean.v, bias, clean.options), grad_out=case.grad_out(torch.float64),
               bias_grad=False)
    got = run(variant, Inputs(clean.q, clean.k, clean.v, dirty_bias, clean.options),
              grad_out=case.grad_out(torch.float64), bias_grad=False)
    assert_close(got.out, want.out, atol=0.0, what="out")
    for name in ("q", "k", "v"):
        assert_close(got.grads[name], want.grads[name], atol=0.0, what=f"grad {name}")


# --------------------------------------------------------------------------------------------------
# gradcheck in float64


def _gradcheck_inputs(seed: int, *, B=2, H=2, Hkv=1, Nq=5, Nk=7, D=3, bias: bool = True):
    q = randn(B, H, Nq, D, seed=seed).requires_grad_()
    k = randn(B, Hkv, Nk, D, seed=seed + 1).requires_grad_()
    v = randn(B, Hkv, Nk, D, seed=seed + 2).requires_grad_()
    b = randn(1, H, Nq, Nk, seed=seed + 3).requires_grad_() if bias else None
    return q, k, v, b


GRADCHECK_SCENARIOS = {
    # padding with empty query rows, softcap and a learnable bias, GQA
    "mask-softcap-bias": dict(mask=masks.padding([7, 4], q_lengths=[5, 3]), softcap=1.5),
    "causal-offset-window": dict(causal=True, window=(2, 1)),
    "document-alibi": dict(mask=masks.document([0, 0, 0, 1, 1, 2, 2]), bias_obj=attnkit.bias.alibi(2)),
}


@pytest.mark.parametrize("variant", ["dense", "tiled", "tiled-2"])
@pytest.mark.parametrize("scenario", sorted(GRADCHECK_SCENARIOS))
def test_gradcheck(scenario: str, variant: str):
    opts = dict(GRADCHECK_SCENARIOS[scenario])
    bias_obj = opts.pop("bias_obj", None)
    q, k, v, b = _gradcheck_inputs(zlib.crc32(scenario.encode()), bias=bias_obj is None)
    kernel = "dense" if variant == "dense" else "tiled"
    context = small_tiles(2, 2, 4) if variant == "tiled-2" else kernel_context(variant)

    def f(q, k, v, *bias):
        return attnkit.attention(q, k, v, bias=bias[0] if bias else bias_obj, kernel=kernel, **opts)

    args = (q, k, v) + ((b,) if b is not None else ())
    with context:
        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_sdpa():
    q, k, v, _ = _gradcheck_inputs(5, bias=False)

    def f(q, k, v):
        return attnkit.attention(q, k, v, mask=masks.padding([7, 4], q_lengths=[5, 3]), kernel="sdpa")

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# The tiled kernel's plan: the small-tile switch works, and tiles are skipped only when empty


def _plan(Nq: int, Nk: int, **options):
    q = torch.zeros(1, 1, Nq, 4)
    k = torch.zeros(1, 1, Nk, 4)
    req = attnkit.AttentionRequest.build(q, k, k, **options)
    return tiled_module.make_plan(req)


def test_small_tiles_switch_changes_the_plan():
    with small_tiles(16, 16, 32):
        plan = _plan(40, 100)
    assert [(r.qs, r.qe) for r in plan] == [(0, 16), (16, 32), (32, 40)]
    assert [c[:2] for c in plan[0].chunks] == [(0, 32), (32, 64), (64, 96), (96, 100)]
    default = _plan(40, 100)
    assert [(r.qs, r.qe) for r in default] == [(0, 40)] and [c[:2] for c in default[0].chunks] == [(0, 100)]


@pytest.mark.parametrize("blocks", [(16, 16, 32), (128, 128, 1024)], ids=["16", "128"])
@pytest.mark.parametrize("Nq,Nk,window", [(96, 96, (8, 0)), (64, 200, (20, 5)), (1024, 1024, (128, 0))],
                         ids=["square", "offset", "long"])
def test_plan_visits_exactly_the_nonempty_tiles(blocks, Nq, Nk, window):
    block_q, block_k, _ = blocks
    with small_tiles(*blocks):
        plan = _plan(Nq, Nk, window=window)
    p = torch.arange(Nq)[:, None] + Nk - Nq
    j = torch.arange(Nk)[None, :]
    vis = (j >= p - window[0]) & (j <= p + window[1])
    for row in plan:
        band = vis[row.qs:row.qe]
        needed = {kb for kb in range(-(-Nk // block_k)) if band[:, kb * block_k:(kb + 1) * block_k].any()}
        visited = set()
        for ks, ke, needs_mask in row.chunks:
            visited |= set(range(ks // block_k, -(-ke // block_k)))
            if not needs_mask:
                assert band[:, ks:ke].all(), f"chunk {ks}:{ke} of rows {row.qs}:{row.qe} skips a needed mask"
        assert visited == needed, f"rows {row.qs}:{row.qe}: visited blocks {sorted(visited)}, needed {sorted(needed)}"
