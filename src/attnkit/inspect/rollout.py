"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Each layer's head-fused map A_l, with the residual connection as an identity half (0.5 A_l + 0.5 I, rows
renormalized), multiplied from the first layer up: R = Â_L ... Â_1. Row i of R says how much of token i's
final representation flows from each input token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Fusion = Literal["mean", "max", "min"]


def fuse_heads(probs: Tensor, fusion: Fusion = "mean") -> Tensor:
    """(B, H, N, N) -> (B, N, N): the heads' mean (Abnar & Zuidema), max or min; (B, N, N) passes through."""
    if probs.dim() == 3:
        return probs
    if probs.dim() != 4:
        raise ValueError(f"an attention map must be (B, H, N, N) or head-fused (B, N, N), got {tuple(probs.shape)}")
    if fusion == "mean":
        return probs.mean(1)
    if fusion == "max":
        return probs.amax(1)
    if fusion == "min":
        return probs.amin(1)
    raise ValueError(f"fusion must be 'mean', 'max' or 'min', got {fusion!r}")


def rollout(maps: Sequence[Tensor], residual: bool = True, *, fusion: Fusion = "mean") -> Tensor:
    """Attention rollout over ``maps``, first layer first.

    Args:
        maps: one self-attention map per layer, each (B, H, N, N) probabilities (e.g. ``capture(...).maps``)
            or already head-fused (B, N, N).
        residual: add the identity for the residual stream (0.5 A + 0.5 I), as the paper does.
        fusion: how heads combine: "mean" (the paper), "max" or "min".

    Returns:
        (B, N, N) float64-accumulated, in the maps' dtype; each row sums to 1.
    """
    if len(maps) == 0:
        raise ValueError("rollout needs at least one attention map")
    if any(m is None for m in maps):
        missing = [i for i, m in enumerate(maps) if m is None]
        raise ValueError(f"rollout needs every layer's map; layers {missing} were not captured")
    fused = [fuse_heads(m, fusion) for m in maps]
    shape = fused[0].shape
    if shape[-1] != shape[-2] or any(f.shape != shape for f in fused):
        raise ValueError("rollout needs square self-attention maps of one shape, got "
                         f"{sorted({tuple(f.shape) for f in fused})}")
    eye = torch.eye(shape[-1], dtype=torch.float64, device=fused[0].device)
    result = eye.expand(shape).clone()
    for a in fused:
        a = a.to(torch.float64)
        if residual:
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(-1, keepdim=True)
        result = a @ result
    return result.to(fused[0].dtype)
