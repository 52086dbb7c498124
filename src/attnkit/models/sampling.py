"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import Tensor

from ..functional.checks import check_int
from .base import check_ids


def _require_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling options ``next_token`` cannot use, naming the option: a TypeError for a non-number, a
    ValueError for temperature < 0, NaN or inf, top_k < 1, top_p outside (0, 1] or NaN."""
    _require_number("temperature", temperature)
    if not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None:
        check_int("top_k", top_k)
    if top_p is not None:
        _require_number("top_p", top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def check_prompt(input_ids: Tensor, vocab_size: int) -> tuple[int, int]:
    """``check_ids`` for a prompt to continue, which must hold at least one token: returns (B, N)."""
    b, n = check_ids(input_ids, vocab_size)
    if n == 0:
        raise ValueError(f"input_ids (the prompt) must hold at least one token per sequence, got shape "
                         f"{tuple(input_ids.shape)}; to start from nothing, pass the model's BOS token")
    return b, n


def next_token(logits: Tensor, *, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """logits (B, V) -> token ids (B,). Temperature 0 is greedy (argmax); otherwise sample from
    softmax(logits / temperature) restricted to the ``top_k`` most likely tokens and to the smallest set
    whose probability reaches ``top_p`` (Holtzman et al. 2020).

    Any temperature > 0 works, however small: the logits are shifted so that their maximum is 0 before the
    division, in float64, so nothing overflows; a temperature so small that only the maximum keeps any
    probability samples the argmax (exact ties at random)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.double()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # (B, V), each <= 0, max exactly 0
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


__all__ = ["check_prompt", "check_sampling", "extend", "next_token"]
