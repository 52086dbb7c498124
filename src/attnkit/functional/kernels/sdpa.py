"""Adapter for ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's fused kernels).

Structured masks and biases are materialized into SDPA's ``attn_mask``. The adapter keeps attnkit's
guarantees on every PyTorch version in the supported range: rows that may attend to nothing output
zeros with zero gradients (older math backends return NaN there), and NaN stored in keys or values
that no query sees never reaches the output.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Capabilities
from ..request import AttentionRequest
from .common import hide_unseen, repeat_kv


def _has_enable_gqa() -> bool:  # torch >= 2.5
    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtins without a signature: parse the docstring
        return "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


_ENABLE_GQA = _has_enable_gqa()


def sdpa_attention(req: AttentionRequest) -> Tensor:
    B, H, Hkv, Nq, Nk, D, Dv = req.shape
    q, k, v = req.q, req.k, req.v
    kwargs = {}
    if H != Hkv:
        if _ENABLE_GQA:
            kwargs["enable_gqa"] = True
        else:
            k, v = repeat_kv(k, H // Hkv), repeat_kv(v, H // Hkv)
    is_causal = _is_plain_causal(req)
    mask = None if is_causal else req.dense_mask()  # (b, h, Nq, Nk) bool
    row_ok = None
    if mask is not None:
        if mask.shape[1] not in (1, k.shape[1]):  # per-q-head mask on shared k/v heads
            k, v = repeat_kv(k, H // k.shape[1]), repeat_kv(v, H // v.shape[1])
            kwargs.pop("enable_gqa", None)
        q, k, v, row_ok = hide_unseen(q, k, v, mask)
        mask = mask | ~row_ok  # empty rows attend to (zeroed) keys, then are zeroed: finite gradients
    attn_mask = mask
    if req.bias is not None:
        attn_mask = req.dense_bias(q.dtype)
        if mask is not None:
            attn_mask = attn_mask.masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=req.dropout,
                                         is_causal=is_causal, scale=req.scale, **kwargs)
    if row_ok is not None:
        out = torch.where(row_ok, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


def _is_plain_causal(req: AttentionRequest) -> bool:
    """SDPA's is_causal is top-left aligned: equal to ours only when Nq == Nk."""
    from ..masks import SlidingWindow

    m = req.mask
    return isinstance(m, SlidingWindow) and m.left is None and m.right == 0 and req.q.shape[2] == req.k.shape[2]


class SdpaKernel:
    name = "sdpa"
    description = "torch.nn.functional.scaled_dot_product_attention; masks materialized"
    capabilities = Capabilities(masks="materialized", softcap=False, return_lse=False, bias_grad=False,
                                memory="O(N) without mask, O(Nq*Nk) with one")

    def not_supported_reasons(self, req: AttentionRequest) -> list[str]:
        return self.capabilities.reasons(req)

    def __call__(self, req: AttentionRequest) -> Tensor:
        return sdpa_attention(req)
