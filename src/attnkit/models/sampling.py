"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..functional.checks import check_int


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None:
        check_int("top_k", top_k)
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def next_token(logits: Tensor, *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """logits (B, V) -> token ids (B,). Temperature 0 is greedy (argmax); otherwise sample from
    softmax(logits / temperature) restricted to the ``top_k`` most likely tokens and to the smallest set
    whose probability reaches ``top_p`` (Holtzman et al. 2020)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        p = sorted_logits.softmax(-1)
        drop = p.cumsum(-1) - p >= top_p  # keep tokens until the mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def extend(input_ids: Tensor, steps: Iterable[Tensor]) -> Tensor:
    """input_ids (B, N) followed by each step's new tokens (B,) from a ``stream``: (B, N + steps)."""
    return torch.cat([input_ids, *(t[:, None] for t in steps)], dim=1)


__all__ = ["check_sampling", "extend", "next_token"]
