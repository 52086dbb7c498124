"""Pieces shared by the kernels: GQA head grouping, masked-position hygiene, float32 statistics."""

from __future__ import annotations

import torch
from torch import Tensor


def repeat_kv(t: Tensor, groups: int) -> Tensor:
    """(B, Hkv, N, D) -> (B, Hkv * groups, N, D): each k/v head serves `groups` query heads."""
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def zero_unseen_keys(t: Tensor, mask: Tensor | None) -> Tensor:
    """Zero k or v rows (B, H, Nk, D) that no query may see (mask (b, h, Nq, Nk)), so NaN or inf stored
    there cannot leak into outputs or gradients through 0 * NaN in a matmul."""
    if mask is None:
        return t
    seen = mask.any(dim=-2)[..., None]  # (b, h, Nk, 1)
    return torch.where(seen, t, torch.zeros((), dtype=t.dtype, device=t.device))


def zero_unseen_queries(q: Tensor, mask: Tensor | None) -> Tensor:
    """Zero q rows (B, H, Nq, D) that may see no key, so NaN stored in a padded query cannot reach
    the keys' gradients through 0 * NaN."""
    if mask is None:
        return q
    return torch.where(mask.any(dim=-1)[..., None], q, torch.zeros((), dtype=q.dtype, device=q.device))


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
