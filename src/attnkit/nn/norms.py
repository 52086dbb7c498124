"""Normalization layers: RMSNorm (with Gemma's ``1 + weight`` form), and :class:`NormConfig`, the typed
description that models hold and build their norms from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.checks import is_positive_finite
from ..functional.kernels import native
from .linear import inference, switched_on

NormKind = Literal["layer", "rms"]


class RMSNorm(nn.Module):
    """Zhang & Sennrich 2019: x / sqrt(mean(x²) + eps) · weight, over the last dim; statistics in float32
    for half-precision inputs.

    ``unit_offset=True`` is Gemma's form: the scale is ``1 + weight`` (weight initialized to 0), computed in
    float32 with the normalized input and rounded once, as Gemma's reference does.

        >>> RMSNorm(512)(torch.randn(2, 10, 512)).shape
        torch.Size([2, 10, 512])
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, unit_offset: bool = False):
        super().__init__()
        self.eps, self.unit_offset = eps, unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"RMSNorm was built for dim={self.weight.shape[0]}, got input {tuple(x.shape)}")
        if switched_on() and inference(x, (self.weight,)):
            fast = native.rms_rows(x, self.weight, self.eps, self.unit_offset)  # a decoding step's few rows, in C
            if fast is not None:
                return fast
        if not self.unit_offset and x.dtype == self.weight.dtype and x.dtype in (torch.float32, torch.float64):
            # one fused op, bitwise the steps below for these types (x · rsqrt(mean(x²) + eps) · weight)
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (normed * (1.0 + self.weight.to(normed.dtype))).to(x.dtype)
        return normed.to(x.dtype) * self.weight.to(x.dtype)  # x's dtype, also under autocast

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}" + (", unit_offset=True" if self.unit_offset else "")


@dataclass
class NormConfig:
    """Which normalization a model's blocks use.

    Args:
        kind: ``"layer"`` (torch.nn.LayerNorm) or ``"rms"`` (:class:`RMSNorm`).
        eps: added to the variance.
        unit_offset: RMSNorm scales by ``1 + weight`` (Gemma).
        sandwich: blocks also normalize each residual branch's output before adding it (Gemma 2 and 3:
            ``x + norm(attn(norm(x)))``); read by the blocks that build from this config.

        >>> NormConfig("rms", 1e-6).make(64)
        RMSNorm(64, eps=1e-06)
    """

    kind: NormKind = "layer"
    eps: float = 1e-5
    unit_offset: bool = False
    sandwich: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("layer", "rms"):
            raise ValueError(f"NormConfig.kind must be 'layer' or 'rms', got {self.kind!r}")
        if not is_positive_finite(self.eps):
            raise ValueError(f"NormConfig.eps must be a finite number > 0, got {self.eps!r}")
        if self.unit_offset and self.kind != "rms":
            raise ValueError("NormConfig.unit_offset (Gemma's 1 + weight) needs kind='rms'")

    def make(self, dim: int) -> nn.Module:
        """A fresh norm over ``dim`` features."""
        if self.kind == "layer":
            return nn.LayerNorm(dim, eps=self.eps)
        return RMSNorm(dim, eps=self.eps, unit_offset=self.unit_offset)


def norm_parts(norm: nn.Module | None) -> native.Norm | None:
    """What the C decoding calls read of ``norm`` when it is an RMSNorm or a LayerNorm over the last dim with a
    weight; None for any other module (or None)."""
    if isinstance(norm, RMSNorm):
        return native.Norm(norm.weight, None, norm.eps, norm.unit_offset, False)
    if isinstance(norm, nn.LayerNorm) and norm.weight is not None and len(norm.normalized_shape) == 1:
        return native.Norm(norm.weight, norm.bias, norm.eps, False, True)
    return None


def make_norm(kind: NormKind, dim: int, eps: float = 1e-5) -> nn.Module:
    """``"layer"``: torch.nn.LayerNorm; ``"rms"``: RMSNorm."""
    if kind not in ("layer", "rms"):
        raise ValueError(f"norm must be 'layer' or 'rms', got {kind!r}")
    return NormConfig(kind, eps).make(dim)


__all__ = ["RMSNorm", "NormConfig", "make_norm", "norm_parts", "NormKind"]
