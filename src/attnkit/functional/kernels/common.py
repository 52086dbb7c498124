"""Pieces shared by the kernels: GQA head grouping, masked-position hygiene, float32 statistics."""

from __future__ import annotations

import torch
from torch import Tensor


def repeat_kv(t: Tensor, groups: int) -> Tensor:
    """(B, Hkv, N, D) -> (B, Hkv * groups, N, D): each k/v head serves `groups` query heads."""
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def zero_hidden(t: Tensor, keep: Tensor) -> Tensor:
    """``t`` with the entries where ``keep`` (broadcastable) is False zeroed, when ``t`` holds a NaN or inf
    somewhere: it would leak into outputs or gradients through 0 * NaN in a matmul, while finite values
    there get weight exactly 0 and change nothing, so a finite ``t`` is returned as it is (no copy)."""
    return t if finite(t) else torch.where(keep, t, torch.zeros((), dtype=t.dtype, device=t.device))


def zero_unseen_keys(t: Tensor, mask: Tensor | None) -> Tensor:
    """k or v (B, H, Nk, D) with the rows no query may see (mask (b, h, Nq, Nk)) zeroed, as ``zero_hidden``."""
    return t if mask is None or finite(t) else zero_hidden(t, mask.any(dim=-2)[..., None])


def finite(*tensors: Tensor) -> bool:
    """No NaN or inf in any of ``tensors``. A finite sum proves it (NaN or inf anywhere makes the sum NaN
    or inf; a sum that overflows answers "maybe not", the safe side), and a sum is ~40x cheaper than
    ``isfinite().all()`` and allocates nothing the size of the input."""
    return bool(torch.isfinite(sum(t.sum() for t in tensors)))


def hide_unseen(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Masked-position hygiene for kernels that take a dense mask (b, h, Nq, Nk).

    Returns q, k, v — with the k/v rows no query may see and the q rows that may see nothing zeroed, each
    only when it holds a NaN or inf (``zero_hidden``) — and the rows that may see something (b, h, Nq, 1),
    or None without a mask."""
    if mask is None:
        return q, k, v, None
    rows_seen = mask.any(dim=-1, keepdim=True)  # (b, h, Nq, 1)
    return zero_hidden(q, rows_seen), zero_unseen_keys(k, mask), zero_unseen_keys(v, mask), rows_seen


def safe_softmax(logits: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Softmax and log-sum-exp that give zeros and -inf for rows with no finite logit, with finite
    (zero) gradients there. The row max is detached: softmax is shift invariant."""
    if logits.shape[dim] == 0:  # no keys at all: every row sees nothing
        return logits.clone(), torch.full_like(logits.sum(dim=dim), float("-inf"))
    m = logits.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))
    e = torch.exp(logits - m)
    denom = e.sum(dim=dim, keepdim=True)
    valid = denom > 0
    probs = e / torch.where(valid, denom, torch.ones((), dtype=denom.dtype, device=denom.device))
    lse = torch.where(valid, m + torch.log(denom), torch.full((), float("-inf"), dtype=m.dtype, device=m.device))
    return probs, lse.squeeze(dim)
