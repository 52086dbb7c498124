"""The classic mechanisms before scaled dot-product: Bahdanau (additive), Luong (dot, general) and hard
attention. Same conventions as ``attention``: q (..., Nq, Dq), k (..., Nk, Dk), v (..., Nk, Dv), a bool
mask broadcastable to (..., Nq, Nk) with True = may attend; a row that may attend to nothing gets zero
weights and a zero output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels.common import hide_unseen, safe_softmax, zero_unseen_keys


def _check_mask(mask: Tensor, scores_shape: tuple[int, ...]) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
    try:
        torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
                         f"{tuple(scores_shape)} (..., Nq, Nk)") from None


def _masked(scores: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return scores
    _check_mask(mask, tuple(scores.shape))
    return scores.masked_fill(~mask, float("-inf"))


def _visible(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v with the keys no query may see and the queries that may see nothing zeroed when they are
    not finite (``hide_unseen``): a NaN there gets weight 0, but 0 * NaN would still reach q's gradient
    through the scores (q·k, or tanh(W_q q + W_k k)), and v's rows reach the output."""
    if mask is None:
        return q, k, v
    try:
        scores_shape = torch.broadcast_shapes((*q.shape[:-1], 1), (*k.shape[:-2], 1, k.shape[-2]))
    except RuntimeError:
        raise ValueError(f"leading dims of q {tuple(q.shape)} and k {tuple(k.shape)} do not broadcast") from None
    _check_mask(mask, scores_shape)  # (..., Nq, Nk)
    q, k, v, _ = hide_unseen(q, k, v, mask)
    return q, k, v


def _weighted(scores: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """softmax over the visible keys, then the weighted values; v must have passed ``_visible``."""
    weights, _ = safe_softmax(_masked(scores, mask))  # (..., Nq, Nk)
    return weights @ v, weights


def project_keys(k: Tensor, w_k: Tensor, mask: Tensor | None = None) -> Tensor:
    """W_k k_j for every key, k (..., Nk, Dk) -> (..., Nk, A): the half of the additive score that does not
    depend on the query. A decoder attending to the same keys at every step projects them once and passes
    the result to ``additive_scores``/``additive_attention`` with ``w_k=None``. With the ``mask`` those calls
    use, non-finite keys no query may see are zeroed first, so they reach neither the result nor w_k's
    gradient."""
    if w_k.dim() != 2 or k.shape[-1] != w_k.shape[1]:
        raise ValueError(f"w_k must be (A, Dk={k.shape[-1]}), got {tuple(w_k.shape)}")
    return zero_unseen_keys(k, mask) @ w_k.T  # (..., Nk, A)


def additive_scores(q: Tensor, k: Tensor, w_q: Tensor, w_k: Tensor | None, w_score: Tensor) -> Tensor:
    """Bahdanau scores wᵀ·tanh(W_q q_i + W_k k_j): W_q (A, Dq), W_k (A, Dk), w (A,) -> (..., Nq, Nk).

    ``w_k=None``: k is already projected, W_k k (..., Nk, A) from ``project_keys``."""
    if w_q.dim() != 2 or (w_k is not None and w_k.dim() != 2) or w_score.dim() != 1:
        got = None if w_k is None else tuple(w_k.shape)
        raise ValueError(f"w_q must be (A, Dq), w_k (A, Dk), w_score (A,); got {tuple(w_q.shape)}, "
                         f"{got}, {tuple(w_score.shape)}")
    key_size = k.shape[-1] if w_k is None else w_k.shape[0]  # A as the keys give it
    if not (w_q.shape[0] == key_size == w_score.shape[0]):
        where = "projected keys" if w_k is None else "w_k"
        raise ValueError(f"attention sizes differ: w_q has A={w_q.shape[0]}, {where} A={key_size}, "
                         f"w_score A={w_score.shape[0]}")
    if q.shape[-1] != w_q.shape[1] or (w_k is not None and k.shape[-1] != w_k.shape[1]):
        raise ValueError(f"q's last dim {q.shape[-1]} must match w_q (A, Dq={w_q.shape[1]}) and k's "
                         f"{k.shape[-1]} must match w_k (A, Dk={None if w_k is None else w_k.shape[1]})")
    keys = k if w_k is None else k @ w_k.T  # (..., Nk, A)
    hidden = torch.tanh((q @ w_q.T).unsqueeze(-2) + keys.unsqueeze(-3))  # (..., Nq, Nk, A)
    return hidden @ w_score  # (..., Nq, Nk)


def additive_attention(q: Tensor, k: Tensor, v: Tensor, w_q: Tensor, w_k: Tensor | None, w_score: Tensor,
                       mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Bahdanau et al. 2014: returns (output (..., Nq, Dv), weights (..., Nq, Nk)). ``w_k=None``: k is
    already projected (see ``project_keys``)."""
    q, k, v = _visible(q, k, v, mask)
    return _weighted(additive_scores(q, k, w_q, w_k, w_score), v, mask)


def luong_scores(q: Tensor, k: Tensor, method: Literal["dot", "general"] = "dot",
                 weight: Tensor | None = None) -> Tensor:
    """Luong et al. 2015 scores: ``dot`` q·k, or ``general`` qᵀ W k with W (Dq, Dk)."""
    if method == "dot":
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(f"dot scores need equal dims, got q {q.shape[-1]} and k {k.shape[-1]}")
        return q @ k.transpose(-2, -1)
    if method == "general":
        if weight is None or weight.shape != (q.shape[-1], k.shape[-1]):
            got = None if weight is None else tuple(weight.shape)
            raise ValueError(f"general scores need weight of shape (Dq={q.shape[-1]}, Dk={k.shape[-1]}), got {got}")
        return q @ weight @ k.transpose(-2, -1)
    raise ValueError(f"method must be 'dot' or 'general', got {method!r}")


def luong_attention(q: Tensor, k: Tensor, v: Tensor, method: Literal["dot", "general"] = "dot",
                    weight: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Returns (output (..., Nq, Dv), weights (..., Nq, Nk))."""
    q, k, v = _visible(q, k, v, mask)
    return _weighted(luong_scores(q, k, method, weight), v, mask)


@dataclass
class HardAttention:
    """Result of hard attention: one key per query."""

    output: Tensor  # (..., Nq, Dv) the selected value (zeros for rows with nothing to select)
    index: Tensor  # (..., Nq) selected key, -1 where the row may attend to nothing
    weights: Tensor  # (..., Nq, Nk) one-hot (straight-through modes carry the soft gradient)
    log_prob: Tensor | None  # (..., Nq) log-probability of the sample, for REINFORCE ("sample" only)


HardMode = Literal["argmax", "sample", "straight_through", "gumbel"]


def hard_attention(scores: Tensor, v: Tensor, *, mode: HardMode = "argmax", mask: Tensor | None = None,
                   tau: float = 1.0, generator: torch.Generator | None = None) -> HardAttention:
    """Select one key per query from ``scores`` (..., Nq, Nk).

    - ``argmax``: the best key; no gradient.
    - ``sample``: a key drawn from softmax(scores); ``log_prob`` is differentiable (REINFORCE).
    - ``straight_through``: forward one-hot argmax, backward the softmax's gradient.
    - ``gumbel``: Gumbel-softmax with temperature ``tau``, hard one-hot forward, straight-through backward.
    """
    logits = _masked(scores, mask)
    soft, _ = safe_softmax(logits)  # (..., Nq, Nk)
    valid = soft.sum(dim=-1) > 0  # (..., Nq)
    if mode == "argmax" or mode == "straight_through":
        index = logits.detach().argmax(dim=-1)
    elif mode == "sample":
        flat = soft.detach().reshape(-1, soft.shape[-1])
        flat = torch.where(valid.reshape(-1, 1), flat, torch.ones_like(flat))  # any key for empty rows
        index = torch.multinomial(flat, 1, generator=generator).reshape(valid.shape)
    elif mode == "gumbel":
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau!r}")
        u = torch.rand(logits.shape, generator=generator, dtype=soft.dtype, device=soft.device)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
        soft, _ = safe_softmax((logits + gumbel) / tau)
        index = soft.detach().argmax(dim=-1)
    else:
        raise ValueError(f"mode must be 'argmax', 'sample', 'straight_through' or 'gumbel', got {mode!r}")
    one_hot = F.one_hot(index, soft.shape[-1]).to(soft.dtype) * valid[..., None]
    weights = one_hot if mode in ("argmax", "sample") else one_hot - soft.detach() + soft
    log_prob = None
    if mode == "sample":
        log_p = torch.log(soft.gather(-1, index[..., None]).squeeze(-1).clamp_min(torch.finfo(soft.dtype).tiny))
        log_prob = torch.where(valid, log_p, torch.zeros_like(log_p))
    index = torch.where(valid, index, torch.full_like(index, -1))
    v = zero_unseen_keys(v, mask)  # weight 0 there, but 0 * NaN is NaN
    return HardAttention(weights @ v, index, weights, log_prob)


__all__ = ["project_keys", "additive_scores", "additive_attention", "luong_scores", "luong_attention",
           "hard_attention", "HardAttention"]
