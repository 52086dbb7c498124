"""Pieces shared by the kernels: GQA head grouping, masked-position hygiene, float32 statistics, and the
memory budget of the kernels that materialize (Nq, Nk) tensors."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..bias import Bias, ScoreFunction
from ..masks import Mask
from ..request import AttentionRequest

# The most a kernel that materializes (Nq, Nk) tensors (masks, biases, logits, weights, what autograd keeps
# of them) may allocate for them in one call; over it the kernel refuses and names kernel='tiled', which
# builds none (so kernel="auto" moves on to it). A kernel module may set its own budget (dense.MAX_DENSE_BYTES).
MAX_MATERIALIZED_BYTES = 4 << 30


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
    first, *rest = tensors
    return bool(torch.isfinite(sum((t.sum() for t in rest), first.sum())))


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
    (zero) gradients there; both are differentiable. The row max is detached: softmax and log-sum-exp - max
    are shift invariant."""
    if logits.shape[dim] == 0:  # no keys at all: every row sees nothing
        return logits.clone(), torch.full_like(logits.sum(dim=dim), float("-inf"))
    m = logits.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))
    e = torch.exp(logits - m)
    denom = e.sum(dim=dim, keepdim=True)
    valid = denom > 0
    safe_denom = torch.where(valid, denom, torch.ones((), dtype=denom.dtype, device=denom.device))
    probs = e / safe_denom
    # log of the guarded denominator: log(0)'s infinite derivative would make the lse's gradient NaN on empty rows
    lse = torch.where(valid, m + torch.log(safe_denom), torch.full((), float("-inf"), dtype=m.dtype, device=m.device))
    return probs, lse.squeeze(dim)


def planes(req: AttentionRequest, part: Mask | Bias | None, *, exact: bool = True) -> int:
    """How many (Nq, Nk) planes the dense form of ``part`` (``req.mask`` or ``req.bias``) holds: b·h of its
    broadcast shape (b|1, h|1, Nq, Nk), read from a 1x1 tile (nothing N×N is built); 0 for None. With
    ``exact=False``, the most it may hold, B·H, without asking it (a tile costs ~10-50 us)."""
    if part is None:
        return 0
    B, H, _, Nq, Nk, _, _ = req.shape
    if not exact or Nq == 0 or Nk == 0 or isinstance(part, ScoreFunction):  # a function's result: every plane
        return B * H
    t = part.tile(0, 1, 0, 1, Nq, Nk)  # (1, 1) or (b|1, h|1, 1, 1)
    return math.prod(t.shape[:-2])


def over_budget(need: Callable[[bool], int], budget: int | None = None) -> tuple[int, int] | None:
    """(bytes needed, budget) when ``need(exact=True)`` bytes exceed ``budget`` (None: MAX_MATERIALIZED_BYTES,
    read at call time), else None. ``need(False)``, an upper bound that asks nothing of the mask or bias
    (see ``planes``), is tried first: most requests are far within."""
    budget = MAX_MATERIALIZED_BYTES if budget is None else budget
    if need(False) <= budget or (bytes_ := need(True)) <= budget:
        return None
    return bytes_, budget


def budget_reasons(what: str, need: Callable[[bool], int], budget: int | None = None) -> list[str]:
    """A kernel's refusal when it would allocate more than its budget for ``what`` (see ``over_budget``)."""
    over = over_budget(need, budget)
    if over is None:
        return []
    return [(f"would materialize {what}: {gib(over[0])} at its peak (budget {gib(over[1])}); "
             "use kernel='tiled', which never builds them")]


def gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"
