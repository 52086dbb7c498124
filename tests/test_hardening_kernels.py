"""Regressions from issue 18 (an independent conformance run): each test failed before its fix.

- ALiBi counted positions in the kernel's input dtype (bfloat16 is exact only up to 256, float16 to 2048);
- NaN in masked bias entries reached sdpa's outputs (causal) and gradients (rows that see nothing);
- causal attention with a bias and Dv != D crashed under sdpa;
- the tiled backward in half precision gave dq, dk off zero where a row sees exactly one key;
- softcap=inf was accepted (every output NaN);
- kernels that materialize (Nq, Nk) tensors counted only part of them against the memory budget.
"""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.functional.kernels import common
from attnkit.functional.kernels import dense as dense_module
from attnkit.functional.kernels.dense import DenseKernel
from attnkit.functional.kernels.sdpa import SdpaKernel, sdpa_bytes
from attnkit.functional.dispatch import select_kernel
from attnkit.functional.request import AttentionRequest
from helpers import Inputs, assert_close, assert_raises_naming, baseline_atol, randn, reference, run

HALF = {torch.bfloat16: "bf16", torch.float16: "f16"}
EXACT_KERNELS = ("dense", "sdpa", "tiled", "tiled-16", "auto")


def qkv(B: int, H: int, Nq: int, Nk: int, D: int, Dv: int | None = None, *, seed: int) -> tuple:
    return (randn(B, H, Nq, D, seed=seed), randn(B, H, Nk, D, seed=seed + 1), randn(B, H, Nk, Dv or D, seed=seed + 2))


# --------------------------------------------------------------------------------------------------
# 1. ALiBi positions beyond the integers half precision holds exactly


@pytest.mark.parametrize("dtype,k_len", [(torch.bfloat16, 300), (torch.float16, 2100)], ids=["bf16-300", "f16-2100"])
def test_alibi_tile_in_half_precision_is_the_exact_bias_rounded_once(dtype, k_len):
    """Queries at positions k_len - 4 .. k_len - 1 (bottom-right): every entry is the float64 bias rounded
    to ``dtype`` (one rounding: at most half an ulp, 2^-9 / 2^-12 relative, plus double rounding's slack)."""
    bias = attnkit.bias.alibi(8)
    got = bias.tile(0, 4, 0, k_len, 4, k_len, dtype=dtype)
    exact = bias.tile(0, 4, 0, k_len, 4, k_len, dtype=torch.float64)
    assert got.dtype == dtype
    rel = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    assert_close(got, exact, atol=0.0, rtol=rel, what=f"alibi tile in {dtype}")


@pytest.mark.parametrize("variant", ["sdpa", "tiled", "auto"])
@pytest.mark.parametrize("dtype,k_len", [(torch.bfloat16, 300), (torch.float16, 2100)], ids=["bf16-300", "f16-2100"])
def test_alibi_in_half_precision_past_exact_positions(variant, dtype, k_len):
    """Causal ALiBi with 16 queries at the end of k_len keys (positions past 256 / 2048): within the dense
    kernel's own error in ``dtype`` (which computes the bias in float32) of the float64 reference."""
    q, k, v = qkv(1, 4, 16, k_len, 16, seed=18)
    inputs = Inputs(q, k, v, attnkit.bias.alibi(4), {"causal": True}).to(dtype)
    ref = reference(inputs)
    base = run("dense", inputs)
    got = run(variant, inputs)
    assert_close(got.out, ref.out, atol=baseline_atol(base.out, ref.out, dtype), what=f"{variant} out")


# --------------------------------------------------------------------------------------------------
# 2. NaN in bias entries the mask hides changes no output and no gradient


def _poisoned_bias_cases() -> dict:
    """name -> (inputs with a finite (B, H, Nq, Nk) bias, bool (B, H, Nq, Nk) hidden entries)."""
    B, H, N = 2, 3, 24
    q, k, v = qkv(B, H, N, N, 8, seed=7)
    bias = randn(B, H, N, N, seed=11)
    above_diagonal = torch.ones(N, N, dtype=torch.bool).triu(1).expand(B, H, N, N)
    pad = masks.padding([24, 17], [24, 13])  # batch 1: keys >= 17 hidden, query rows >= 13 see nothing
    padded = ~pad.materialize(N, N).expand(B, H, N, N)
    return {
        "causal": (Inputs(q, k, v, bias, {"causal": True}), above_diagonal),
        "padding-empty-rows": (Inputs(q, k, v, bias, {"mask": pad}), padded),
        "causal-and-padding": (Inputs(q, k, v, bias, {"mask": pad, "causal": True}), above_diagonal | padded),
    }


POISONED = _poisoned_bias_cases()
NAN_PARAMS = [pytest.param(case, variant, dtype, bias_grad,
                           id=f"{case}-{variant}-{name}-{'bias-grad' if bias_grad else 'qkv-grad'}")
              for case in POISONED for variant in EXACT_KERNELS
              for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16"))
              for bias_grad in (False, True) if not (bias_grad and variant == "sdpa")]


@pytest.mark.parametrize("case,variant,dtype,bias_grad", NAN_PARAMS)
def test_nan_in_masked_bias_entries_changes_nothing(case, variant, dtype, bias_grad):
    """Outputs and gradients (q, k, v, and the bias's, which must be 0 where hidden) are those of the same
    bias holding finite values there. sdpa refuses a bias that requires grad; "auto" then runs tiled."""
    clean, hidden = POISONED[case]
    clean = clean.to(dtype)
    dirty = Inputs(clean.q, clean.k, clean.v, torch.where(hidden, float("nan"), clean.bias), clean.options)
    grad_out = randn(*clean.q.shape[:3], clean.v.shape[-1], seed=5).to(dtype)
    want = run(variant, clean, grad_out=grad_out, bias_grad=bias_grad)
    got = run(variant, dirty, grad_out=grad_out, bias_grad=bias_grad)
    assert torch.isfinite(got.out).all(), f"{int(got.out.isnan().sum())} of {got.out.numel()} outputs NaN"
    assert_close(got.out, want.out, atol=0.0, what="out")
    assert set(got.grads) == {"q", "k", "v"} | ({"bias"} if bias_grad else set())
    for name, g in got.grads.items():
        assert torch.isfinite(g).all(), f"grad {name} has {int((~torch.isfinite(g)).sum())} non-finite entries"
        assert_close(g, want.grads[name], atol=0.0, what=f"grad {name}")
    if bias_grad:
        assert (got.grads["bias"][hidden] == 0).all(), "a hidden bias entry must get gradient 0"


# --------------------------------------------------------------------------------------------------
# 3. causal + bias with a value head dim other than q's


@pytest.mark.parametrize("variant", ["sdpa", "auto"])
@pytest.mark.parametrize("bias", ["tensor", "alibi"])
def test_causal_bias_with_another_value_head_dim(variant, bias):
    q, k, v = qkv(2, 4, 20, 20, 16, Dv=8, seed=3)
    b = randn(1, 4, 20, 20, seed=4) if bias == "tensor" else attnkit.bias.alibi(4)
    inputs = Inputs(q, k, v, b, {"causal": True}).to(torch.float32)
    got = run(variant, inputs)
    ref, base = reference(inputs), run("dense", inputs)
    assert got.out.shape == (2, 4, 20, 8)
    assert_close(got.out, ref.out, atol=baseline_atol(base.out, ref.out, torch.float32), what="out")


# --------------------------------------------------------------------------------------------------
# 4. The tiled backward in half precision: rows that see exactly one key get gradient 0


def _one_key_rows_mask(B: int, H: int, N: int, n_single: int) -> torch.Tensor:
    """(B, H, N, N): query rows < n_single see only key i (and key i < n_single is seen by no other row);
    the other rows see a random half of the keys >= n_single (at least one)."""
    gen = torch.Generator().manual_seed(2)
    m = torch.rand(B, H, N, N, generator=gen) < 0.5
    m[..., :n_single, :] = False
    m[..., :, :n_single] = False
    m[..., n_single:, -1] = True
    idx = torch.arange(n_single)
    m[..., idx, idx] = True
    return m


@pytest.mark.parametrize("tiles", ["tiled", "tiled-16"])
@pytest.mark.parametrize("dtype", list(HALF), ids=list(HALF.values()))
def test_tiled_backward_is_exactly_zero_for_rows_with_one_visible_key(tiles, dtype):
    """softmax over one key is constant: dq of such a row and dk of a key only such rows see are exactly 0
    (the dense kernel's too); elsewhere the gradients are within the dense kernel's error in ``dtype``."""
    B, H, N, single = 2, 3, 40, 6
    q, k, v = qkv(B, H, N, N, 16, seed=9)
    inputs = Inputs(q, k, v, None, {"mask": _one_key_rows_mask(B, H, N, single)}).to(dtype)
    grad_out = randn(B, H, N, 16, seed=10).to(dtype)
    got = run(tiles, inputs, grad_out=grad_out)
    base = run("dense", inputs, grad_out=grad_out)
    ref = reference(inputs, grad_out=grad_out)
    for name in ("q", "k"):
        off = got.grads[name][..., :single, :]
        assert (off == 0).all(), f"grad {name}: max {off.abs().max().item():.3e} where the exact gradient is 0"
        assert (base.grads[name][..., :single, :] == 0).all()
    for name in ("q", "k", "v"):
        assert_close(got.grads[name], ref.grads[name], atol=baseline_atol(base.grads[name], ref.grads[name], dtype),
                     what=f"grad {name}")


# --------------------------------------------------------------------------------------------------
# 6a. softcap must be finite


@pytest.mark.parametrize("softcap", [float("inf"), float("nan"), -float("inf")], ids=["inf", "nan", "-inf"])
def test_non_finite_softcap_is_refused(softcap):
    q, k, v = qkv(1, 2, 4, 4, 8, seed=1)
    assert_raises_naming(ValueError, ["softcap", "finite", repr(softcap)], attnkit.attention, q, k, v,
                         softcap=softcap)


# --------------------------------------------------------------------------------------------------
# 10. Memory budgets count what a kernel really materializes


def _request(mask=None, causal=False, bias=None, grad=False, N=64, B=1, H=2, dtype=torch.float32):
    q, k, v = (t.to(dtype).requires_grad_(grad) for t in qkv(B, H, N, N, 8, seed=2))
    return AttentionRequest.build(q, k, v, mask=mask, causal=causal, bias=bias)


def _refusal(kernel, req) -> str:
    reasons = kernel.not_supported_reasons(req)
    assert len(reasons) == 1, reasons
    return reasons[0]


def test_sdpa_refuses_a_materialized_mask_over_budget_and_names_tiled(monkeypatch):
    req = _request(mask=masks.causal() | masks.global_tokens([0]), grad=True)
    need = sdpa_bytes(req)  # one (64, 64) plane: the bool mask, its copy, SDPA's float32 copy
    assert need == 64 * 64 * (1 + 1 + 4)
    monkeypatch.setattr(common, "MAX_MATERIALIZED_BYTES", need)
    assert SdpaKernel().not_supported_reasons(req) == []
    monkeypatch.setattr(common, "MAX_MATERIALIZED_BYTES", need - 1)
    reason = _refusal(SdpaKernel(), req)
    for words in ("(1, 2, 64, 64)", f"{need / 2**30:.3g} GiB", f"budget {(need - 1) / 2**30:.3g} GiB",
                  "kernel='tiled'"):
        assert words in reason, f"{words!r} not in {reason!r}"


def test_sdpa_counts_the_planes_of_the_mask_and_the_bias():
    """A padding mask holds one plane per batch row, ALiBi one per head, a tensor bias its own; the float
    attn_mask holds their broadcast."""
    causal_global = masks.causal() | masks.global_tokens([0])
    one = sdpa_bytes(_request(mask=causal_global, B=3, H=2))
    assert sdpa_bytes(_request(mask=masks.padding([64, 30, 9]), B=3, H=2)) == 3 * one
    alibi = sdpa_bytes(_request(mask=causal_global, bias=attnkit.bias.alibi(2), B=3, H=2))
    assert alibi == 64 * 64 * (2 * 1 + 4 * (2 + 2))  # mask: bool + where; bias and attn_mask: 2 heads each
    key_bias = randn(3, 1, 1, 64, seed=0).float()
    assert sdpa_bytes(_request(bias=key_bias, B=3, H=2)) == 64 * 64 * 4 * (3 + 3)


def test_sdpa_without_a_materialized_mask_has_no_budget(monkeypatch):
    monkeypatch.setattr(common, "MAX_MATERIALIZED_BYTES", 0)
    assert SdpaKernel().not_supported_reasons(_request(grad=True)) == []
    assert SdpaKernel().not_supported_reasons(_request(causal=True, grad=True)) == []  # is_causal: nothing built
    assert "GiB" in _refusal(SdpaKernel(), _request(causal=True, bias=attnkit.bias.alibi(2)))  # built with a bias


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "backward"])
def test_dense_budget_counts_its_peak_not_only_the_weights(monkeypatch, grad):
    """float32, no mask: 3 float32 tensors of (B, H, Nq, Nk) at once forward, 6 with a backward
    (measured on CPU: 12.0 and 24.1 bytes per entry). The weights alone (4 bytes) used to be the count."""
    req = _request(grad=grad)
    entries = 1 * 2 * 64 * 64
    monkeypatch.setattr(common, "MAX_MATERIALIZED_BYTES", 4 * entries)
    reason = _refusal(DenseKernel(), req)
    assert "(1, 2, 64, 64) weight matrix" in reason and "kernel='tiled'" in reason and "budget" in reason
    monkeypatch.setattr(common, "MAX_MATERIALIZED_BYTES", (24 if grad else 12) * entries)
    assert DenseKernel().not_supported_reasons(req) == []
    monkeypatch.setattr(dense_module, "MAX_DENSE_BYTES", 4 * entries)  # the kernel's own budget wins
    assert DenseKernel().not_supported_reasons(req) != []


def test_auto_takes_tiled_when_sdpa_would_materialize_too_much(monkeypatch):
    """causal | global_tokens([0]) is less than half empty, so auto tries sdpa first with gradients on;
    over budget it must go on to tiled (which builds no (Nq, Nk) tensor) and give tiled's result."""
    mask = masks.causal() | masks.global_tokens([0])
    req = _request(mask=mask, grad=True)
    assert select_kernel(req, "auto").name == "sdpa"
    monkeypatch.setattr(common, "MAX_MATERIALIZED_BYTES", sdpa_bytes(req) - 1)
    assert select_kernel(req, "auto").name == "tiled"
    out = attnkit.attention(req.q, req.k, req.v, mask=mask)
    assert torch.equal(out, attnkit.attention(req.q, req.k, req.v, mask=mask, kernel="tiled"))


def test_attention_weights_over_budget_says_what_the_caller_can_do(monkeypatch):
    """attention_weights takes no kernel: its refusal must not tell the caller to pick one."""
    q, k, _ = (t.float() for t in qkv(1, 2, 64, 64, 8, seed=4))
    monkeypatch.setattr(common, "MAX_MATERIALIZED_BYTES", 1024)  # 1 row, 1 head: 64 * 3 float32 = 768 bytes
    with pytest.raises(ValueError) as info:
        attnkit.attention_weights(q, k)
    message = str(info.value)
    for words in ("attention_weights", "(1, 2, 64, 64) weight matrix", "GiB", "budget", "fewer heads or query rows"):
        assert words in message, f"{words!r} not in {message!r}"
    assert "use kernel=" not in message and "cannot serve" not in message
    assert attnkit.attention_weights(q[:, :1, -1:], k[:, :1]).shape == (1, 1, 1, 64)  # the advice: it fits
