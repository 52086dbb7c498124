"""The reference kernel: the definition of attention, readable top to bottom, any dtype.

Materializes the (B, H, Nq, Nk) logits and weights, so it refuses requests whose peak (``dense_bytes``) would
exceed the memory budget (``common.MAX_MATERIALIZED_BYTES``) and names the tiled kernel instead.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from ..bias import ScoreFunction
from ..registry import Capabilities, Rank
from ..request import AttentionRequest, softmax_dtype
from .common import budget_reasons, hide_unseen, planes, repeat_kv, safe_softmax

MAX_DENSE_BYTES: int | None = None  # this kernel's own memory budget; None: common.MAX_MATERIALIZED_BYTES


@overload
def dense_attention(req: AttentionRequest, *, return_weights: Literal[False] = ...
                    ) -> Tensor | tuple[Tensor, Tensor]: ...


@overload
def dense_attention(req: AttentionRequest, *, return_weights: Literal[True]) -> Tensor: ...


def dense_attention(req: AttentionRequest, *, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(softcap(scale · q kᵀ) + bias, masked) · v, with float32 (or float64) statistics: out (B, H, Nq, Dv),
    or (out, lse (B, H, Nq)) when ``req.return_lse``; with ``return_weights`` the weights (B, H, Nq, Nk) instead."""
    B, H, Hkv, Nq, Nk, D, Dv = req.shape
    stats = softmax_dtype(req.q.dtype)
    mask = req.dense_mask()  # (b, h, Nq, Nk) bool or None
    q, k, v, _ = hide_unseen(req.q, repeat_kv(req.k, H // Hkv), repeat_kv(req.v, H // Hkv), mask)
    logits = (q @ k.transpose(-2, -1)).to(stats) * req.scale  # (B, H, Nq, Nk)
    if req.softcap is not None:
        logits = req.softcap * torch.tanh(logits / req.softcap)
    if isinstance(req.bias, ScoreFunction):
        logits = req.bias.apply(logits, 0, Nq, 0, Nk)
    elif (bias := req.dense_bias(stats)) is not None:
        logits = logits + bias
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    probs, lse = safe_softmax(logits)  # (B, H, Nq, Nk), (B, H, Nq)
    if return_weights:
        return probs.to(req.q.dtype)
    if req.dropout > 0:
        probs = F.dropout(probs, req.dropout)
    out = probs.to(v.dtype) @ v  # (B, H, Nq, Dv)
    return (out, lse) if req.return_lse else out  # lse differentiable: d lse / d logits = probs


def dense_bytes(req: AttentionRequest, exact: bool = True, *, weights: bool = False) -> int:
    """What ``dense_attention`` allocates at its peak, in bytes (the inputs and output aside); ``exact``
    as in ``common.planes``.

    Per (B, H, Nq, Nk) entry: three tensors in the statistics dtype live at once in the softmax (logits,
    exp, probabilities), six when a backward follows (autograd keeps two, backward builds their gradients);
    for half-precision inputs q·kᵀ before the cast, and the returned ``weights``, in the input dtype. Per
    plane of the mask: three bools (its parts, their union, the negation masked_fill takes); of the bias:
    one in the statistics dtype. Measured on CPU (float32, 4 heads, N = 2048): 12.0 bytes per entry
    forward, 24.1 with backward; estimated 12 and 24."""
    B, H, _, Nq, Nk, _, _ = req.shape
    stats = softmax_dtype(req.q.dtype)
    half = req.q.element_size() if req.q.dtype != stats else 0
    per_entry = (6 if req.needs_grad else 3) * stats.itemsize + half * (2 if weights else 1)
    mask, bias = planes(req, req.mask, exact=exact), planes(req, req.bias, exact=exact)
    return Nq * Nk * (B * H * per_entry + 3 * mask + stats.itemsize * bias)


class DenseKernel:
    name = "dense"
    description = "reference: materializes the weights; any dtype, every option"
    capabilities = Capabilities(memory="O(Nq*Nk)")

    def not_supported_reasons(self, req: AttentionRequest) -> list[str]:
        B, H, _, Nq, Nk, _, _ = req.shape
        what = f"a ({B}, {H}, {Nq}, {Nk}) weight matrix with its logits"
        return self.capabilities.reasons(req) + budget_reasons(what, partial(dense_bytes, req), MAX_DENSE_BYTES)

    def priority(self, req: AttentionRequest) -> Rank:
        return Rank.REFERENCE  # any request, slowly: last among the built-ins

    def __call__(self, req: AttentionRequest) -> Tensor | tuple[Tensor, Tensor]:
        return dense_attention(req)
