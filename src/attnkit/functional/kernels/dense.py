"""The reference kernel: the definition of attention, readable top to bottom, any dtype.

Materializes the (B, H, Nq, Nk) weights, so it refuses requests whose weights would exceed
``MAX_DENSE_BYTES`` and names the tiled kernel instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Capabilities
from ..request import AttentionRequest, softmax_dtype
from .common import hide_unseen, repeat_kv, safe_softmax

MAX_DENSE_BYTES = 4 << 30  # budget for the weights tensor; larger requests should use kernel="tiled"


def dense_attention(req: AttentionRequest, *, return_weights: bool = False):
    """softmax(softcap(scale · q kᵀ) + bias, masked) · v, with float32 (or float64) statistics."""
    B, H, Hkv, Nq, Nk, D, Dv = req.shape
    stats = softmax_dtype(req.q.dtype)
    mask = req.dense_mask()  # (b, h, Nq, Nk) bool or None
    q, k, v, _ = hide_unseen(req.q, repeat_kv(req.k, H // Hkv), repeat_kv(req.v, H // Hkv), mask)
    logits = (q @ k.transpose(-2, -1)).to(stats) * req.scale  # (B, H, Nq, Nk)
    if req.softcap is not None:
        logits = req.softcap * torch.tanh(logits / req.softcap)
    if req.bias is not None:
        logits = logits + req.dense_bias(stats)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs, lse = safe_softmax(logits)  # (B, H, Nq, Nk), (B, H, Nq)
    if return_weights:
        return probs.to(req.q.dtype)
    if req.dropout > 0:
        probs = F.dropout(probs, req.dropout)
    out = probs.to(v.dtype) @ v  # (B, H, Nq, Dv)
    return (out, lse.detach()) if req.return_lse else out


class DenseKernel:
    name = "dense"
    description = "reference: materializes the weights; any dtype, every option"
    capabilities = Capabilities(memory="O(Nq*Nk)")

    def not_supported_reasons(self, req: AttentionRequest) -> list[str]:
        reasons = self.capabilities.reasons(req)
        B, H, _, Nq, Nk, _, _ = req.shape
        need = B * H * Nq * Nk * torch.finfo(softmax_dtype(req.q.dtype)).bits // 8
        if need > MAX_DENSE_BYTES:
            reasons.append(f"would materialize a ({B}, {H}, {Nq}, {Nk}) weight matrix of {need / 2**30:.1f} GiB "
                           f"(budget {MAX_DENSE_BYTES / 2**30:.1f} GiB); use kernel='tiled', which never builds it")
        return reasons

    def __call__(self, req: AttentionRequest) -> Tensor | tuple[Tensor, Tensor]:
        return dense_attention(req)
