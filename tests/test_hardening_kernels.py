"""Regressions from issue 18 (an independent conformance run): each test failed before its fix.

- ALiBi counted positions in the kernel's input dtype (bfloat16 is exact only up to 256, float16 to 2048);
- NaN in masked bias entries reached sdpa's outputs (causal) and gradients (rows that see nothing);
- causal attention with a bias and Dv != D crashed under sdpa;
- the tiled backward in half precision gave dq, dk off zero where a row sees exactly one key;
- softcap=inf was accepted (every output NaN);
"""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks
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


