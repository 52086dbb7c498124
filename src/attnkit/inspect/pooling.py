"""Pooling a long text's maps into token ranges: ``explain`` and ``view`` show at most ``max_tokens`` rows and
columns (a browser cannot draw 12 x 12 maps of 1000 x 1000 cells), so a longer axis is cut into contiguous bins.

A query bin's row is the mean of its queries' rows and a key bin's column the sum over its keys, so pooled rows
still sum to 1.

    >>> bins = make_bins(10, 4)          # [(0, 2), (2, 5), (5, 8), (8, 10)]
    >>> pool(probs, bins).shape          # (..., 10, 10) -> (..., 4, 4)
"""

from __future__ import annotations

import torch
from torch import Tensor


def make_bins(n: int, max_tokens: int) -> list[tuple[int, int]]:
    """Split n tokens into min(n, max_tokens) contiguous ranges of nearly equal size."""
    m = min(n, max_tokens)
    edges = [round(i * n / m) for i in range(m + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _members(bins: list[tuple[int, int]], n: int, like: Tensor) -> Tensor:
    """(M, N) 1.0 where bin m holds token n."""
    starts, ends = torch.tensor(bins, device=like.device).reshape(-1, 2).T[..., None]  # (M, 1) each
    tokens = torch.arange(n, device=like.device)
    return ((tokens >= starts) & (tokens < ends)).to(like.dtype)


def pool(probs: Tensor, bins: list[tuple[int, int]], key_bins: list[tuple[int, int]] | None = None) -> Tensor:
    """(..., Nq, Nk) -> (..., Mq, Mk): a query bin's row is the mean of its queries' rows, a key bin's column the
    sum over its keys (pooled rows still sum to 1). ``key_bins`` default to ``bins`` (self-attention). Unchanged
    when every bin is one token."""
    key_bins = bins if key_bins is None else key_bins
    nq, nk = probs.shape[-2:]
    if len(bins) == nq and len(key_bins) == nk:
        return probs
    rows = _members(bins, nq, probs)  # (Mq, Nq)
    return (rows / rows.sum(1, keepdim=True)) @ probs @ _members(key_bins, nk, probs).T
