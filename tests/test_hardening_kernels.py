"""Regressions from issue 18 (an independent conformance run): each test failed before its fix.

- softcap=inf was accepted (every output NaN);
"""

from __future__ import annotations

import pytest

import attnkit
from helpers import assert_raises_naming, randn


def qkv(B: int, H: int, Nq: int, Nk: int, D: int, Dv: int | None = None, *, seed: int) -> tuple:
    return (randn(B, H, Nq, D, seed=seed), randn(B, H, Nk, D, seed=seed + 1), randn(B, H, Nk, Dv or D, seed=seed + 2))


# --------------------------------------------------------------------------------------------------
# 6a. softcap must be finite


@pytest.mark.parametrize("softcap", [float("inf"), float("nan"), -float("inf")], ids=["inf", "nan", "-inf"])
def test_non_finite_softcap_is_refused(softcap):
    q, k, v = qkv(1, 2, 4, 4, 8, seed=1)
    assert_raises_naming(ValueError, ["softcap", "finite", repr(softcap)], attnkit.attention, q, k, v,
                         softcap=softcap)


