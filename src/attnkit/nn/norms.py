"""Normalization layers: RMSNorm, and a ``make_norm`` that picks RMSNorm or LayerNorm by name."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

NormKind = Literal["layer", "rms"]


class RMSNorm(nn.Module):
    """Zhang & Sennrich 2019: x / sqrt(mean(x²) + eps) · weight, over the last dim; statistics in float32
    for half-precision inputs.

        >>> RMSNorm(512)(torch.randn(2, 10, 512)).shape
        torch.Size([2, 10, 512])
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"RMSNorm was built for dim={self.weight.shape[0]}, got input {tuple(x.shape)}")
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.to(x.dtype)  # x's dtype, also under autocast

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: NormKind, dim: int, eps: float = 1e-5) -> nn.Module:
    """``"layer"``: torch.nn.LayerNorm; ``"rms"``: RMSNorm."""
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rms":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"norm must be 'layer' or 'rms', got {kind!r}")


__all__ = ["RMSNorm", "make_norm", "NormKind"]
