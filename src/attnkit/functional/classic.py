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

from .kernels.common import safe_softmax, zero_unseen_keys


def _masked(scores: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return scores
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
    try:
        return scores.masked_fill(~mask, float("-inf"))
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
                         f"{tuple(scores.shape)} (..., Nq, Nk)") from None


def _weighted(scores: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    weights, _ = safe_softmax(_masked(scores, mask))  # (..., Nq, Nk)
    return weights @ zero_unseen_keys(v, mask), weights


def additive_scores(q: Tensor, k: Tensor, w_q: Tensor, w_k: Tensor, w_score: Tensor) -> Tensor:
    """Bahdanau scores wᵀ·tanh(W_q q_i + W_k k_j): W_q (A, Dq), W_k (A, Dk), w (A,) -> (..., Nq, Nk)."""
    if w_q.dim() != 2 or w_k.dim() != 2 or w_score.dim() != 1:
        raise ValueError(f"w_q must be (A, Dq), w_k (A, Dk), w_score (A,); got {tuple(w_q.shape)}, "
                         f"{tuple(w_k.shape)}, {tuple(w_score.shape)}")
    if not (w_q.shape[0] == w_k.shape[0] == w_score.shape[0]):
        raise ValueError(f"attention sizes differ: w_q has A={w_q.shape[0]}, w_k A={w_k.shape[0]}, "
                         f"w_score A={w_score.shape[0]}")
    if q.shape[-1] != w_q.shape[1] or k.shape[-1] != w_k.shape[1]:
        raise ValueError(f"q's last dim {q.shape[-1]} must match w_q (A, Dq={w_q.shape[1]}) and k's "
                         f"{k.shape[-1]} must match w_k (A, Dk={w_k.shape[1]})")
    hidden = torch.tanh((q @ w_q.T).unsqueeze(-2) + (k @ w_k.T).unsqueeze(-3))  # (..., Nq, Nk, A)
    return hidden @ w_score  # (..., Nq, Nk)


def additive_attention(q: Tensor, k: Tensor, v: Tensor, w_q: Tensor, w_k: Tensor, w_score: Tensor,
                       mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Bahdanau et al. 2014: returns (output (..., Nq, Dv), weights (..., Nq, Nk))."""
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
    return HardAttention(weights @ zero_unseen_keys(v, mask), index, weights, log_prob)


__all__ = ["additive_scores", "additive_attention", "luong_scores", "luong_attention", "hard_attention",
           "HardAttention"]
