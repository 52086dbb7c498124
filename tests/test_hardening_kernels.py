"""Regressions from issue 18 (an independent conformance run): each test failed before its fix.

- ALiBi counted positions in the kernel's input dtype (bfloat16 is exact only up to 256, float16 to 2048);
- softcap=inf was accepted (every output NaN);
"""

from __future__ import annotations

import pytest
import torch

import attnkit
from helpers import Inputs, assert_close, assert_raises_naming, baseline_atol, randn, reference, run


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
# 6a. softcap must be finite


@pytest.mark.parametrize("softcap", [float("inf"), float("nan"), -float("inf")], ids=["inf", "nan", "-inf"])
def test_non_finite_softcap_is_refused(softcap):
    q, k, v = qkv(1, 2, 4, 4, 8, seed=1)
    assert_raises_naming(ValueError, ["softcap", "finite", repr(softcap)], attnkit.attention, q, k, v,
                         softcap=softcap)


