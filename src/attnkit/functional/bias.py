"""Additive attention biases: a dense float tensor, or a structured bias computed per tile.

A bias is added to the (scaled, soft-capped) logits before masking. Structured biases such as ALiBi
are computed tile by tile, so the tiled kernel never builds the N×N matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .masks import check_broadcast, shape4


class Bias:
    """Base class: ``tile`` returns float logits offsets broadcastable to (B, H, qe - qs, ke - ks) in ``dtype``,
    computed in float32 or better whatever ``dtype`` is (kernels ask for half precision tiles)."""

    requires_grad = False

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device=None,
             dtype=torch.float32) -> Tensor:
        raise NotImplementedError

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        """Raise ValueError if this bias cannot apply to the given sizes."""

    def materialize(self, q_len: int, k_len: int | None = None, device=None, dtype=torch.float32) -> Tensor:
        k_len = q_len if k_len is None else k_len
        return self.tile(0, q_len, 0, k_len, q_len, k_len, device, dtype)


class TensorBias(Bias):
    """A float tensor broadcastable to (B, H, Nq, Nk); may require grad (the kernels return its gradient)."""

    def __init__(self, bias: Tensor):
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be a float tensor or an attnkit.bias object, got {type(bias).__name__}")
        if not bias.dtype.is_floating_point:
            raise TypeError(f"bias must be a floating-point tensor, got dtype {bias.dtype}; "
                            "pass a bool mask as mask=")
        self.tensor = bias
        self.tensor4 = bias.reshape(shape4("bias", bias))  # (b, h, nq|1, nk|1)

    @property
    def requires_grad(self) -> bool:  # type: ignore[override]
        return self.tensor.requires_grad

    def check(self, batch, heads, q_len, k_len):
        check_broadcast("bias", self.tensor, (batch, heads, q_len, k_len))

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None, dtype=torch.float32):
        t = self.tensor4.expand(-1, -1, q_len, k_len)[..., qs:qe, ks:ke]
        return t.to(device=device, dtype=dtype)

    def __repr__(self):
        return f"bias_tensor({tuple(self.tensor.shape)})"


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head ALiBi slopes (Press et al. 2022): a geometric sequence 2^(-8/n), interleaved for
    head counts that are not powers of two, as in the reference implementation."""
    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_2(closest)
    if closest != num_heads:
        slopes += power_of_2(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float64)


class ALiBi(Bias):
    """Linear distance penalty: bias[h, i, j] = -slope_h · |p_i - j|, p_i the query's absolute position.

    For causal attention this equals ALiBi's slope_h · (j - p_i) on every visible key.
    """

    def __init__(self, num_heads: int, slopes: Tensor | None = None):
        self.slopes = alibi_slopes(num_heads) if slopes is None else torch.as_tensor(slopes, dtype=torch.float64)
        if self.slopes.shape != (num_heads,):
            raise ValueError(f"alibi slopes must have shape ({num_heads},), got {tuple(self.slopes.shape)}")

    def check(self, batch, heads, q_len, k_len):
        if self.slopes.numel() != heads:
            raise ValueError(f"alibi bias was built for {self.slopes.numel()} heads but q has {heads} heads")

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None, dtype=torch.float32):
        # positions counted and scaled in float32 (exact to 2^24; float64 for float64), rounded to ``dtype``
        # once at the end: bfloat16 holds integers exactly only up to 256 (float16: 2048), so positions
        # counted in it put keys at the wrong distance
        exact = torch.float64 if dtype == torch.float64 else torch.float32
        p = torch.arange(qs, qe, device=device, dtype=exact)[:, None] + (k_len - q_len)  # (nq, 1)
        j = torch.arange(ks, ke, device=device, dtype=exact)[None, :]  # (1, nk)
        slopes = self.slopes.to(device=device, dtype=exact)[None, :, None, None]
        return (-slopes * (p - j).abs()).to(dtype)  # (1, H, nq, nk)

    def __repr__(self):
        return f"alibi(num_heads={self.slopes.numel()})"


def alibi(num_heads: int, slopes: Tensor | None = None) -> Bias:
    """ALiBi bias for ``num_heads`` heads (default slopes from the paper)."""
    return ALiBi(num_heads, slopes)


def as_bias(bias) -> Bias:
    if isinstance(bias, Bias):
        return bias
    return TensorBias(bias)


__all__ = ["Bias", "TensorBias", "alibi", "alibi_slopes", "as_bias"]
