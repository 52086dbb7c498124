"""Adapter for ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's fused kernels).

Structured masks and biases are materialized into SDPA's ``attn_mask``. The adapter keeps attnkit's
guarantees on every PyTorch version in the supported range: rows that may attend to nothing output
zeros with zero gradients (older math backends return NaN there), and NaN stored in keys or values
that no query sees, or in bias entries the mask hides, never reaches an output or a gradient.
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Capabilities, Rank
from ..request import AttentionRequest
from .common import budget_reasons, hide_unseen, planes, repeat_kv


def _has_enable_gqa() -> bool:  # torch >= 2.5
    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtins without a signature: parse the docstring
        return "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


_ENABLE_GQA = _has_enable_gqa()


def sdpa_attention(req: AttentionRequest) -> Tensor:
    B, H, Hkv, Nq, Nk, D, Dv = req.shape
    q, k, v = req.q, req.k, req.v
    kwargs: dict[str, bool] = {}
    if H != Hkv:
        if _ENABLE_GQA:
            kwargs["enable_gqa"] = True
        else:
            k, v = repeat_kv(k, H // Hkv), repeat_kv(v, H // Hkv)
    # with a bias the causal mask is materialized: the bias must be hidden where the mask hides a key, and
    # SDPA refuses is_causal beside an attn_mask on some backends ("Explicit attn_mask should not be set")
    is_causal = req.bias is None and _is_plain_causal(req)
    mask = None if is_causal else req.dense_mask()  # (b, h, Nq, Nk) bool
    row_ok = None
    if mask is not None:
        if mask.shape[1] not in (1, k.shape[1]):  # per-q-head mask on shared k/v heads
            k, v = repeat_kv(k, H // k.shape[1]), repeat_kv(v, H // v.shape[1])
            kwargs.pop("enable_gqa", None)
        q, k, v, row_ok = hide_unseen(q, k, v, mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_attn_mask(req, mask, row_ok, q.dtype),
                                         dropout_p=req.dropout, is_causal=is_causal, scale=req.scale, **kwargs)
    if row_ok is not None:
        out = torch.where(row_ok, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


def _attn_mask(req: AttentionRequest, mask: Tensor | None, row_ok: Tensor | None, dtype: torch.dtype
               ) -> Tensor | None:
    """SDPA's attn_mask, broadcastable to (B, H, Nq, Nk): the bool mask, or the bias in ``dtype`` (SDPA takes
    no other float dtype; its values are computed in float32, see ``Bias.tile``) with -inf where the mask
    hides a key — replaced, not added: NaN + -inf is NaN.

    Rows that may see nothing (row_ok (b, h, Nq, 1) False) attend to every (zeroed) key, with bias 0, and are
    zeroed afterwards: SDPA's math backend gives NaN for a row of -inf, and a bias value read there (NaN,
    inf) would reach the gradients of q, k and v."""
    bias = req.dense_bias(dtype)  # None without a bias
    if mask is None:
        return bias
    assert row_ok is not None  # hide_unseen gives it with every mask
    if bias is None:
        return mask | ~row_ok
    hidden = torch.where(row_ok, torch.tensor(float("-inf"), dtype=dtype, device=bias.device),
                         torch.zeros((), dtype=dtype, device=bias.device))  # (b, h, Nq, 1)
    return torch.where(mask, bias, hidden)


def _is_plain_causal(req: AttentionRequest) -> bool:
    """SDPA's is_causal is top-left aligned: equal to ours only when Nq == Nk."""
    from ..masks import SlidingWindow

    m = req.mask
    return isinstance(m, SlidingWindow) and m.left is None and m.right == 0 and req.q.shape[2] == req.k.shape[2]


def sdpa_bytes(req: AttentionRequest, exact: bool = True) -> int:
    """What the adapter and SDPA allocate for (Nq, Nk) tensors, in bytes; ``exact`` as in ``common.planes``.

    Nothing without a mask or bias (nor for plain causal attention: is_causal). Per plane of the mask: the
    bool mask and the copy that unmasks empty rows (or the bias's where). Per plane of the attn_mask, in the
    input dtype: SDPA's float copy of a bool mask, or the bias with masked entries replaced; and the bias
    itself. (Backends that run on SDPA's math path also build the weights, which this does not count.)"""
    if req.bias is None and (req.mask is None or _is_plain_causal(req)):
        return 0
    B, H, _, Nq, Nk, _, _ = req.shape
    mask, bias = planes(req, req.mask, exact=exact), planes(req, req.bias, exact=exact)
    both = min(B * H, max(mask, 1) * max(bias, 1))  # planes of their broadcast, at most
    return Nq * Nk * (2 * mask + req.q.element_size() * (both + bias))


class SdpaKernel:
    name = "sdpa"
    description = "torch.nn.functional.scaled_dot_product_attention; masks materialized"
    capabilities = Capabilities(masks="materialized", softcap=False, return_lse=False, bias_grad=False,
                                score_functions=False,
                                memory="O(N) without mask, O(Nq*Nk) with one")

    def not_supported_reasons(self, req: AttentionRequest) -> list[str]:
        B, H, _, Nq, Nk, _, _ = req.shape
        what = f"an attn_mask for ({B}, {H}, {Nq}, {Nk}) scores"
        return self.capabilities.reasons(req) + budget_reasons(what, partial(sdpa_bytes, req))

    def priority(self, req: AttentionRequest) -> Rank:
        return Rank.DEFAULT  # PyTorch's fused kernels: the general choice

    def __call__(self, req: AttentionRequest) -> Tensor:
        return sdpa_attention(req)
