"""Score functions (``attnkit.bias.from_function``, FlexAttention's score_mod) on the kernels that serve them.

``fn(score, b, h, q_idx, kv_idx)`` rewrites the (scaled, soft-capped) logits before the mask. Every case is
checked against an independent float64 implementation written here (full logit matrix, ``fn`` on the full
index grid, -inf where hidden, softmax with empty rows 0), with gradients to q, k, v and to the tensors ``fn``
captures, under dense, tiled and tiled with small tiles, in float64, float32 and bfloat16 (tolerances from the
dense kernel's own error in the same dtype; see ``helpers.py``). Then: NaN behind the mask, gradcheck, the
arguments fn receives, captured tensors wherever fn keeps them, dispatch (sdpa refuses, auto never picks it),
errors that name the function, and MultiHeadAttention with a score function.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import attnkit
from attnkit import masks
from attnkit.functional import AttentionRequest, select_kernel
from attnkit.functional.bias import Bias
from helpers import (DTYPE_IDS, DTYPES, NATIVE_OFF, assert_close, baseline_atol, dense_atol,
                     kernel_context, kernel_name, magnitude, randn, small_tiles)

B, H, D = 2, 4, 24
VARIANTS = ("dense", "tiled", "tiled-16")


def index_grid(batch: int, heads: int, nq: int, nk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """b (B, 1, 1, 1), h (1, H, 1, 1), q_idx (Nq, 1), kv_idx (1, Nk): int64, as the spec hands them to fn."""
    return (torch.arange(batch).view(batch, 1, 1, 1), torch.arange(heads).view(1, heads, 1, 1),
            torch.arange(nq).view(nq, 1), torch.arange(nk).view(1, nk))


def visible(options: dict, nq: int, nk: int) -> Tensor:
    """Bool (B|1, H|1, Nq, Nk): causal and window by hand (bottom-right), structured masks via materialize."""
    p = torch.arange(nq)[:, None] + nk - nq  # absolute query positions
    j = torch.arange(nk)[None, :]
    vis = torch.ones(nq, nk, dtype=torch.bool)
    if options.get("causal"):
        vis = vis & (j <= p)
    if options.get("window") is not None:
        left, right = options["window"]
        vis = vis & (j >= p - left) & (j <= p + right)
    if options.get("mask") is not None:
        vis = vis & options["mask"].materialize(nq, nk)
    return vis


def reference_attention(q, k, v, fn, vis, *, scale=None, softcap=None) -> Tensor:
    """Textbook float64 attention with a score function on the full (B, H, Nq, Nk) grid."""
    q, k, v = q.double(), k.double(), v.double()
    k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))  # GQA: (B, H, Nk, ·)
    s = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)  # (B, H, Nq, Nk)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = torch.where(vis, fn(s, *index_grid(*s.shape)), float("-inf"))
    m = s.amax(-1, keepdim=True).detach()
    e = torch.exp(s - torch.where(torch.isfinite(m), m, 0.0))  # exp(-inf) = 0, also on empty rows
    total = e.sum(-1, keepdim=True)
    return (e / torch.where(total > 0, total, 1.0)) @ v  # empty rows: 0 / 1 = 0


# --------------------------------------------------------------------------------------------------
# Score functions: each makes its learnable tensors and builds fn from them, returning (fn, None)

REL = torch.nn.Embedding(2 * 64 - 1, H, dtype=torch.float64)  # a module global: found by from_function
torch.nn.init.normal_(REL.weight, std=0.5, generator=torch.Generator().manual_seed(7))


def module_global(s, b, h, q, kv):
    """Relative bias from an nn.Module at module level, read as a global: (nq, nk, H) -> (H, nq, nk)."""
    return s + REL.weight[q - kv + 63].permute(2, 0, 1).to(s.dtype)


@dataclass(frozen=True)
class Score:
    params: Callable[[int, int], dict[str, Tensor]]  # (Nq, Nk) -> float64 initial values
    make: Callable[[dict, int, int], tuple[Callable, list | None]]
    leaf: Callable[[Tensor], Tensor] = Tensor.requires_grad_  # or nn.Parameter, for a module's


def _relpos(p, nq, nk):
    table = p["table"]  # (H, Nq + Nk - 1), captured by closure
    return (lambda s, b, h, q, kv: s + table[h, q - kv + nk - 1]), None


def _alibi_learned(p, nq, nk):
    def alibi_learned(s, b, h, q, kv, slopes=p["slopes"]):  # captured as a default argument
        return s - slopes[h] * (q + nk - nq - kv).abs()
    return alibi_learned, None


def _gate_explicit(p, nq, nk):
    holder = {"gate": p["gate"]}  # hidden in a dict: found only through fn's autograd graph
    return (lambda s, b, h, q, kv: s * (1 + holder["gate"][h])), None


def _batch_offsets(p, nq, nk):
    offsets = p["offsets"]  # (B,): a per-sequence slope on the key position
    return (lambda s, b, h, q, kv: s + offsets[b] * kv / nk), None


class DistanceBias(torch.nn.Module):
    """A module fn calls, captured by closure: its parameter (H,) weighs log(1 + |q - kv|) per head."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight = weight

    def forward(self, s, h, distance):
        return s + self.weight[h] * torch.log1p(distance.abs().to(s.dtype))


def _module_closure(p, nq, nk):
    module = DistanceBias(p["weight"])
    return (lambda s, b, h, q, kv: module(s, h, q - kv)), None


SCORES = {
    "relpos-closure": Score(lambda nq, nk: {"table": randn(H, nq + nk - 1, seed=11, scale=0.5)}, _relpos),
    "alibi-default-arg": Score(lambda nq, nk: {"slopes": attnkit.bias.alibi_slopes(H) * 4}, _alibi_learned),
    "gate-explicit": Score(lambda nq, nk: {"gate": randn(H, seed=12, scale=0.3)}, _gate_explicit),
    "batch-offsets": Score(lambda nq, nk: {"offsets": randn(B, seed=13, scale=2.0)}, _batch_offsets),
    "module-global": Score(lambda nq, nk: {}, lambda p, nq, nk: (module_global, None)),
    "module-closure": Score(lambda nq, nk: {"weight": randn(H, seed=14)}, _module_closure, torch.nn.Parameter),
}


@dataclass(frozen=True)
class Case:
    id: str
    score: str
    Nq: int = 37
    Nk: int = 23
    Hkv: int = H
    options: Callable[[], dict] = field(default=dict)  # mask, causal, window, softcap, scale

    @property
    def seed(self) -> int:
        return zlib.crc32(self.id.encode())

    def qkv(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        q = randn(B, H, self.Nq, D, seed=self.seed, scale=1.5)  # logits ~ N(0, 2.25): peaked rows
        k, v = (randn(B, self.Hkv, self.Nk, D, seed=self.seed + i) for i in (1, 2))
        return q.to(dtype), k.to(dtype), v.to(dtype)

    def params(self, dtype: torch.dtype) -> dict[str, Tensor]:
        """The captured tensors, as leaves in ``dtype``; the module global's weight is itself (float64)."""
        score = SCORES[self.score]
        made = {n: score.leaf(t.to(dtype)) for n, t in score.params(self.Nq, self.Nk).items()}
        return {"REL.weight": REL.weight} if self.score == "module-global" else made

    def make(self, params: dict) -> tuple[Callable, list | None]:
        return SCORES[self.score].make(params, self.Nq, self.Nk)


CASES = [
    Case("relpos-closure", "relpos-closure"),
    Case("alibi-default-arg-causal", "alibi-default-arg", Nk=37, options=lambda: {"causal": True}),
    Case("gate-explicit-11-queries-causal", "gate-explicit", Nq=11, Nk=37, options=lambda: {"causal": True}),
    Case("batch-offsets-padding", "batch-offsets", options=lambda: {"mask": masks.padding([23, 15])}),
    Case("module-global-window", "module-global", Nk=37, options=lambda: {"mask": masks.sliding_window(6)}),
    Case("module-closure-gqa-window", "module-closure", Nq=23, Nk=37, Hkv=2, options=lambda: {"window": (4, 4)}),
    Case("relpos-scale-softcap", "relpos-closure", options=lambda: {"scale": 0.3, "softcap": 2.0}),
    Case("relpos-causal", "relpos-closure", Nk=37, options=lambda: {"causal": True}),
    Case("relpos-padding-empty-rows", "relpos-closure",
         options=lambda: {"mask": masks.padding([23, 15], q_lengths=[37, 30])}),
    Case("relpos-window", "relpos-closure", Nk=37, options=lambda: {"window": (5, 2)}),
    Case("relpos-11-queries-causal", "relpos-closure", Nq=11, Nk=37, options=lambda: {"causal": True}),
    Case("relpos-gqa-causal", "relpos-closure", Nk=37, Hkv=2, options=lambda: {"causal": True}),
]


def run_case(case: Case, variant: str | None, dtype: torch.dtype, *, params: dict | None = None,
             qkv=None, fn=None) -> tuple[Tensor, dict[str, Tensor]]:
    """Output and gradients (q, k, v and every captured tensor) of one kernel variant (None: the float64
    reference above) for a fixed output gradient."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (qkv or case.qkv(dtype)))
    params = case.params(dtype) if params is None else params
    made_fn, tensors = case.make(params)
    fn = fn or made_fn
    opts = case.options()
    if variant is None:
        out = reference_attention(q, k, v, fn, visible(opts, case.Nq, case.Nk), scale=opts.get("scale"),
                                  softcap=opts.get("softcap"))
    else:
        bias = attnkit.bias.from_function(fn)
        assert isinstance(bias, Bias)
        with kernel_context(variant):
            out = attnkit.attention(q, k, v, bias=bias, kernel=kernel_name(variant), **opts)
        assert out.shape == (B, H, case.Nq, D) and out.dtype == dtype
    leaves = {"q": q, "k": k, "v": v, **params}
    grad_out = randn(B, H, case.Nq, D, seed=case.seed + 3)
    grads = torch.autograd.grad((out.double() * grad_out).sum(), list(leaves.values()), allow_unused=True)
    missing = [n for n, g in zip(leaves, grads) if g is None]
    assert not missing, f"no gradient reached {missing}"
    return out.detach(), dict(zip(leaves, grads))


def reference_case(case: Case, dtype: torch.dtype) -> tuple[Tensor, dict[str, Tensor]]:
    """The reference on float64 copies of the inputs and captured tensors rounded to ``dtype``."""
    params = {n: t if n == "REL.weight" else t.detach().double().requires_grad_()
              for n, t in case.params(dtype).items()}
    return run_case(case, None, torch.float64, params=params, qkv=[t.double() for t in case.qkv(dtype)])


def variant_dtypes() -> list:
    pairs = [(v, d) for v in VARIANTS for d in DTYPES] + [(v, torch.float32) for v in NATIVE_OFF]
    return [pytest.param(v, d, id=f"{v}-{DTYPE_IDS[d]}") for v, d in pairs]


# --------------------------------------------------------------------------------------------------
# Against the reference: score functions, masks, GQA, Nq != Nk, empty rows and inputs, built-ins


@pytest.mark.parametrize("variant,dtype", variant_dtypes())
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_reference(case: Case, variant: str, dtype: torch.dtype):
    """Output and gradients (q, k, v, captured tensors) within the dense kernel's own error of float64."""
    ref_out, ref_grads = reference_case(case, dtype)
    out, grads = run_case(case, variant, dtype)
    base_out, base_grads = run_case(case, "dense", dtype) if variant != "dense" else (None, None)

    def atol(expected: Tensor, baseline: Tensor | None) -> float:
        return dense_atol(expected, dtype) if baseline is None else baseline_atol(baseline, expected, dtype)

    assert_close(out, ref_out, atol=atol(ref_out, base_out), what="out")
    for name, expected in ref_grads.items():
        assert torch.isfinite(grads[name]).all(), f"grad {name} has non-finite entries"
        assert grads[name].abs().sum() > 0, f"grad {name} is all zero"
        assert_close(grads[name], expected, atol=atol(expected, base_grads and base_grads[name]), what=f"grad {name}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_fully_masked_rows_give_zeros_and_zero_gradients(variant):
    case = next(c for c in CASES if c.id == "relpos-padding-empty-rows")  # batch 1: rows 30.. see nothing
    out, grads = run_case(case, variant, torch.float32)
    assert (out[1, :, 30:] == 0).all() and (grads["q"][1, :, 30:] == 0).all()
    assert (grads["k"][1, :, 15:] == 0).all() and (grads["v"][1, :, 15:] == 0).all()  # keys no one sees


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("b,nq,nk", [(0, 5, 5), (2, 0, 5), (2, 5, 0)], ids=["no-batch", "no-queries", "no-keys"])
def test_empty_inputs(b, nq, nk, variant):
    """Empty batch, no queries, no keys: the right shape, zeros, and zero gradients (None counts as zero for
    the captured tensor: fn may never be called)."""
    q, k, v = randn(b, H, nq, 8, seed=0), randn(b, H, nk, 8, seed=1), randn(b, H, nk, 8, seed=2)
    leaves = [t.requires_grad_() for t in (q, k, v, randn(H, seed=3))]
    bias = attnkit.bias.from_function(lambda s, b, h, qi, kv: s + leaves[3][h] * kv)
    with kernel_context(variant):
        out = attnkit.attention(*leaves[:3], bias=bias, kernel=kernel_name(variant))
    assert out.shape == (b, H, nq, 8) and (out == 0).all()
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    assert all(g is not None and (g == 0).all() for g in grads[:3]) and (grads[3] is None or (grads[3] == 0).all())


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=DTYPE_IDS.get)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("what", ["alibi", "softcap"])
def test_equals_builtin(what, variant, dtype):
    """ALiBi written as a score function equals ``bias=alibi(H)`` (causal, Nq == Nk); ``c * tanh(s / c)``
    equals ``softcap=c``: outputs and gradients, against the built-in in float64, within the built-in dense
    kernel's own error in ``dtype`` (two float32 paths round differently: ~2e-6 apart on these peaked rows)."""
    q, k, v = (randn(B, H, 37, D, seed=i, scale=3.0) for i in range(3))
    fns = {"alibi": lambda s, b, h, qi, kv: s + attnkit.bias.alibi_slopes(H).to(s.dtype)[h] * (kv - qi),
           "softcap": lambda s, b, h, qi, kv: 2 * torch.tanh(s / 2)}
    builtin = {"alibi": {"bias": attnkit.bias.alibi(H)}, "softcap": {"softcap": 2.0}}[what]
    grad_out = randn(B, H, 37, D, seed=3)

    def out_and_grads(variant, dtype, **options):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        with kernel_context(variant):
            out = attnkit.attention(*leaves, causal=True, kernel=kernel_name(variant), **options)
        return (out, *torch.autograd.grad((out.double() * grad_out).sum(), leaves))

    expected = out_and_grads("dense", torch.float64, **builtin)
    baseline = out_and_grads("dense", dtype, **builtin)
    got = out_and_grads(variant, dtype, bias=attnkit.bias.from_function(fns[what]))
    for name, g, e, base in zip(["out", "q", "k", "v"], got, expected, baseline):
        assert_close(g, e, atol=baseline_atol(base, e, dtype), what=name)


# --------------------------------------------------------------------------------------------------
# NaN behind the mask


@pytest.mark.parametrize("variant,dtype", variant_dtypes())
@pytest.mark.parametrize("case_id", ["relpos-causal", "relpos-padding-empty-rows", "relpos-11-queries-causal"])
def test_nan_behind_the_mask_changes_nothing(case_id, variant, dtype):
    """fn returning NaN wherever the mask hides, and NaN in keys/values no query sees: the same output and
    gradients, bit for bit, as the clean function on clean inputs."""
    case = next(c for c in CASES if c.id == case_id)
    params = case.params(dtype)
    clean_fn, _ = case.make(params)
    vis = visible(case.options(), case.Nq, case.Nk).expand(B, 1, case.Nq, case.Nk)

    def dirty_fn(s, b, h, q, kv):
        return torch.where(vis[b, 0, q, kv], clean_fn(s, b, h, q, kv), float("nan"))  # (B, 1, nq, nk)

    q, k, v = case.qkv(dtype)
    unseen = (~vis.any(-2, keepdim=True)).transpose(-1, -2)  # (B, 1, Nk, 1): keys no query sees
    k, v = k.masked_fill(unseen, float("nan")), v.masked_fill(unseen, float("nan"))
    out, grads = run_case(case, variant, dtype, params=params)
    dirty_out, dirty_grads = run_case(case, variant, dtype, params=params, qkv=(q, k, v), fn=dirty_fn)
    assert_close(dirty_out, out, atol=0.0, what="out")
    for name in grads:
        assert_close(dirty_grads[name], grads[name], atol=0.0, what=f"grad {name}")


# --------------------------------------------------------------------------------------------------
# Captured tensors wherever fn keeps them


class Config:
    """A plain object holding a tensor: nothing a closure scan would find."""

    def __init__(self, gate: Tensor):
        self.gate = gate


@pytest.mark.parametrize("holder", ["dict", "object"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_tensor_in_a_container_gets_its_gradient(variant, holder):
    """A tensor fn reads from a dict or an object's attribute gets the gradient the dense kernel gives it
    (the tiled kernel computes it itself, tile by tile): never silently dropped."""
    q, k, v = (randn(B, H, 13, 8, seed=i).requires_grad_() for i in range(3))
    gate = randn(H, seed=5, scale=0.3).requires_grad_()
    box = {"gate": gate} if holder == "dict" else Config(gate)
    read = (lambda: box["gate"]) if holder == "dict" else (lambda: box.gate)
    bias = attnkit.bias.from_function(lambda s, b, h, qi, kv: s * (1 + read()[h]))
    expected = torch.autograd.grad(attnkit.attention(q, k, v, bias=bias, kernel="dense").sum(), [gate])[0]
    with kernel_context(variant):
        out = attnkit.attention(q, k, v, bias=bias, kernel=kernel_name(variant))
    got = torch.autograd.grad(out.sum(), [gate], allow_unused=True)[0]
    assert got is not None, "the gradient of a tensor fn reads was silently dropped"
    assert_close(got, expected, atol=1e-12 * magnitude(expected), what="grad gate")


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_tensor_computed_before_the_call_passes_its_gradient_on(variant):
    """fn reads ``table * 2``, computed from a parameter before the call and used again after it: the
    parameter gets the gradient of both uses, as with the dense kernel, and the caller's graph still runs
    (each tile's backward walks the graph from ``doubled`` to ``table`` again)."""
    q, k, v = (randn(1, H, 37, 8, seed=i).requires_grad_() for i in range(3))  # tiled-16: 3 x 3 tiles
    table = randn(H, 73, seed=6).requires_grad_()

    def loss(kernel: str) -> Tensor:
        doubled = table * 2  # a non-leaf: its graph leads to table
        bias = attnkit.bias.from_function(lambda s, b, h, qi, kv: s + doubled[h, qi - kv + 36])
        with kernel_context(variant if kernel != "dense" else "dense"):
            out = attnkit.attention(q, k, v, bias=bias, causal=True, kernel=kernel)
        return (out * out).sum() + doubled.square().sum()

    expected = torch.autograd.grad(loss("dense"), [q, table])
    got = torch.autograd.grad(loss(kernel_name(variant)), [q, table])
    for name, g, e in zip(["q", "table"], got, expected):
        assert_close(g, e, atol=1e-12 * magnitude(e), what=name)


# --------------------------------------------------------------------------------------------------
# Finite differences


@pytest.mark.parametrize("variant", ["dense", "tiled-4"])
def test_gradcheck(variant):
    """Finite differences agree with the backward for q, k, v and the captured table (GQA, causal,
    Nq != Nk; tiled with 4x4 tiles and 8-key chunks, so several tiles of each state)."""
    nq, nk = 7, 9
    q, k, v = randn(1, 2, nq, 4, seed=0), randn(1, 1, nk, 4, seed=1), randn(1, 1, nk, 3, seed=2)
    table = randn(2, nq + nk - 1, seed=3)

    def f(q, k, v, table):
        bias = attnkit.bias.from_function(lambda s, b, h, qi, kv: s + table[h, qi - kv + nk - 1])
        return attnkit.attention(q, k, v, bias=bias, causal=True, kernel=kernel_name(variant))

    leaves = [t.requires_grad_() for t in (q, k, v, table)]
    with small_tiles(4, 4, 8) if variant == "tiled-4" else kernel_context(variant):
        assert torch.autograd.gradcheck(f, leaves)


# --------------------------------------------------------------------------------------------------
# The contract fn is called with


@pytest.mark.parametrize("variant,dtype", variant_dtypes())
def test_fn_receives_the_documented_arguments(variant, dtype):
    """score (B, H, nq, nk) in the statistics dtype; b (B,1,1,1), h (1,H,1,1), q_idx (nq,1), kv_idx (1,nk) int64;
    over all calls the query row indices 0..Nq-1 and key indices 0..Nk-1 are all seen."""
    calls = []

    def record(s, b, h, q, kv):
        calls.append((s.dtype, tuple(s.shape), b.clone(), h.clone(), q.clone(), kv.clone()))
        return s

    q = randn(B, H, 37, D, seed=0).to(dtype)
    k, v = randn(B, 2, 23, D, seed=1).to(dtype), randn(B, 2, 23, D, seed=2).to(dtype)  # GQA: 2 key heads
    with kernel_context(variant):
        attnkit.attention(q, k, v, bias=attnkit.bias.from_function(record), kernel=kernel_name(variant))
    assert calls, "fn was never called"
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    for s_dtype, s_shape, b, h, qi, kv in calls:
        assert s_dtype == stats and all(t.dtype == torch.int64 for t in (b, h, qi, kv)), (s_dtype, kv.dtype)
        assert torch.equal(b, torch.arange(B).view(B, 1, 1, 1)) and torch.equal(h, torch.arange(H).view(1, H, 1, 1))
        assert qi.shape[1] == 1 and kv.shape[0] == 1 and s_shape == (B, H, qi.shape[0], kv.shape[1]), s_shape
    assert set(torch.cat([c[4].flatten() for c in calls]).tolist()) == set(range(37))
    assert set(torch.cat([c[5].flatten() for c in calls]).tolist()) == set(range(23))


# --------------------------------------------------------------------------------------------------
# Dispatch and errors


def _small_inputs():
    return [randn(B, H, 13, 8, seed=i) for i in range(3)]


@pytest.mark.parametrize("name", ["sdpa", "linear", "performer"])
def test_kernels_that_cannot_serve_refuse(name):
    """sdpa refuses and says why (a score function); linear and performer refuse any bias."""
    bias = attnkit.bias.from_function(lambda s, b, h, q, kv: s + 1.0)
    with pytest.raises(ValueError) as info:
        attnkit.attention(*_small_inputs(), bias=bias, kernel=name)
    if name == "sdpa":
        assert "score function" in str(info.value), str(info.value)


@pytest.mark.parametrize("options", [{}, {"causal": True}], ids=["plain", "causal"])
def test_auto_picks_a_kernel_that_serves_and_equals_dense(options):
    q, k, v = _small_inputs()
    table = randn(H, 25, seed=5)
    bias = attnkit.bias.from_function(lambda s, b, h, qi, kv: s + table[h, qi - kv + 12])
    chosen = select_kernel(AttentionRequest.build(q, k, v, bias=bias, **options), "auto").name
    assert chosen != "sdpa"
    got = attnkit.attention(q, k, v, bias=bias, kernel="auto", **options)
    expected = attnkit.attention(q, k, v, bias=bias, kernel="dense", **options)
    assert_close(got, expected, atol=1e-12 * magnitude(expected), what=f"auto ({chosen}) vs dense")


@pytest.mark.parametrize("fn", [42, "s + 1", None], ids=["int", "str", "None"])
def test_not_callable_is_a_type_error(fn):
    with pytest.raises(TypeError):
        attnkit.bias.from_function(fn)


def returns_row_sums(s, b, h, q, kv):
    return s.sum(-1)  # (B, H, nq): a reduction, not a score per entry


def returns_bool(s, b, h, q, kv):
    return s > 0


def returns_int(s, b, h, q, kv):
    return s.round().to(torch.int64)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("fn", [returns_row_sums, returns_bool, returns_int], ids=lambda f: f.__name__)
def test_bad_return_is_an_error_naming_the_function(fn, variant):
    with kernel_context(variant), pytest.raises((TypeError, ValueError)) as info:
        attnkit.attention(*_small_inputs(), bias=attnkit.bias.from_function(fn), kernel=kernel_name(variant))
    assert fn.__name__ in str(info.value), str(info.value)


# --------------------------------------------------------------------------------------------------
# In a model


def test_multi_head_attention_with_a_score_function():
    """MultiHeadAttention(bias=score function) equals attnkit.attention on its projections; the captured
    table gets its gradient through the module."""
    torch.manual_seed(0)
    mha = attnkit.nn.MultiHeadAttention(48, H, kernel="tiled").double()
    x = randn(B, 37, 48, seed=1)
    table = randn(H, 73, seed=2).requires_grad_()
    bias = attnkit.bias.from_function(lambda s, b, h, q, kv: s + table[h, q - kv + 36])
    got = mha(x, causal=True, bias=bias)
    (grad_table,) = torch.autograd.grad(got.square().sum(), [table])
    assert grad_table.abs().sum() > 0

    def heads(proj):  # (B, N, H*Dh) -> (B, H, N, Dh)
        return proj(x).view(B, 37, H, 12).transpose(1, 2)

    out = attnkit.attention(heads(mha.q_proj), heads(mha.k_proj), heads(mha.v_proj), bias=bias, causal=True,
                            kernel="dense")
    expected = mha.out_proj(out.transpose(1, 2).reshape(B, 37, 48))
    assert_close(got, expected, atol=1e-12 * magnitude(expected), what="module output")
