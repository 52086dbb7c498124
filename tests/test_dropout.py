"""Attention dropout: reproducible from torch's seed, the promised drop rate, inverted scaling, and
gradients that follow the probabilities that were actually kept.

Trick used throughout: with v = I (Nk = Dv) the output *is* the effective weight matrix,
out[i, j] = softmax(...)[i, j] * keep[i, j] / (1 - p), so dropout can be read off the output.
"""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks
from helpers import KERNELS, assert_close, kernel_context, kernel_name, randn, small_tiles


def _attend(variant: str, q, k, v, **options):
    with kernel_context(variant):
        return attnkit.attention(q, k, v, kernel=kernel_name(variant), **options)


def _inputs(B=2, H=2, Nq=40, Nk=40, D=8, seed=0, requires_grad=False):
    q, k, v = randn(B, H, Nq, D, seed=seed), randn(B, H, Nk, D, seed=seed + 1), randn(B, H, Nk, D, seed=seed + 2)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("variant", KERNELS)
def test_same_seed_gives_identical_output_and_grads(variant):
    results = []
    for _ in range(2):
        q, k, v = _inputs(requires_grad=True)
        torch.manual_seed(1234)
        out = _attend(variant, q, k, v, dropout=0.3, causal=True)
        out.pow(2).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        assert torch.equal(a, b), f"{name} differs between two runs with the same seed"


@pytest.mark.parametrize("variant", KERNELS)
def test_different_seed_gives_different_output(variant):
    q, k, v = _inputs()
    torch.manual_seed(1)
    a = _attend(variant, q, k, v, dropout=0.3)
    torch.manual_seed(2)
    b = _attend(variant, q, k, v, dropout=0.3)
    no_dropout = _attend(variant, q, k, v)
    assert not torch.equal(a, b)
    assert not torch.equal(a, no_dropout)


@pytest.mark.parametrize("variant", KERNELS)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_and_inverted_scaling(variant, p):
    """q = k = 0: uniform weights 1/Nk; v = I: out[i, j] = keep[i, j] / ((1 - p) Nk)."""
    B, H, N = 1, 4, 256  # 262144 Bernoulli draws: the rate's standard deviation is < 0.001
    q = k = torch.zeros(B, H, N, 8, dtype=torch.float64)
    v = torch.eye(N, dtype=torch.float64).expand(B, H, N, N)
    torch.manual_seed(7)
    out = _attend(variant, q, k, v, dropout=p)
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - p) <= 0.01, f"dropped fraction {dropped:.4f}, expected {p} +- 0.01"
    kept = out[out != 0]
    assert_close(kept, torch.full_like(kept, 1 / ((1 - p) * N)), atol=1e-12, what="kept weights")


def test_tiles_draw_independent_masks():
    """The tiled kernel draws a keep-mask per tile: no two 16x16 tiles may repeat the same pattern."""
    N = 64
    q = k = torch.zeros(1, 1, N, 4, dtype=torch.float64)
    v = torch.eye(N, dtype=torch.float64)[None, None]
    torch.manual_seed(3)
    with small_tiles(16, 16, 16):
        out = attnkit.attention(q, k, v, dropout=0.5, kernel="tiled")
    tiles = (out[0, 0] != 0).reshape(4, 16, 4, 16).transpose(1, 2).reshape(16, 256)
    assert len({tuple(t.tolist()) for t in tiles}) == 16


@pytest.mark.parametrize("variant", KERNELS)
def test_value_grad_is_column_sum_of_kept_weights(variant):
    """With v = I, out = W_eff and d sum(out) / dv[j, :] = sum_i W_eff[i, j] for every value column."""
    B, H, N = 2, 2, 48
    q, k = randn(B, H, N, 8, seed=4, scale=2.0), randn(B, H, N, 8, seed=5)
    v = torch.eye(N, dtype=torch.float64).repeat(B, H, 1, 1).requires_grad_()
    torch.manual_seed(11)
    out = _attend(variant, q, k, v, dropout=0.25, mask=masks.padding([48, 30], q_lengths=[48, 40]))
    out.sum().backward()
    col_sums = out.detach().sum(dim=-2)  # (B, H, Nk)
    assert (out == 0).any() and (out > 0).any()
    assert_close(v.grad, col_sums[..., None].expand_as(v.grad), atol=1e-12, what="dv")


@pytest.mark.parametrize("variant", ["dense", "tiled", "tiled-16"])
def test_gradcheck_with_a_fixed_dropout_mask(variant):
    """Reseeding before each call fixes the keep-mask, so the function is smooth and gradcheck applies
    to the backward pass with dropout (q, k, v and a bias)."""
    q, k, v = _inputs(B=1, H=2, Nq=20, Nk=24, D=3, seed=21, requires_grad=True)
    bias = randn(1, 2, 20, 24, seed=25).requires_grad_()

    def f(q, k, v, bias):
        torch.manual_seed(99)
        return _attend(variant, q, k, v, bias=bias, dropout=0.4, causal=True)

    assert torch.autograd.gradcheck(f, (q, k, v, bias), eps=1e-6, atol=1e-7, rtol=1e-5)
