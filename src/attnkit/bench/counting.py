"""What a benchmark counts: the (query, key) pairs a mask leaves visible and the FLOPs over them
(BENCHMARKING.md: attention forward 4·B·H·Nq·Nk_visible·D, forward+backward ≈ 3.5× that)."""

from __future__ import annotations

import torch

from ..functional.masks import FULL, PARTIAL, Mask

FWDBWD_FACTOR = 3.5  # forward+backward FLOPs per forward FLOP
_BLOCK = 128  # tile size of the block layout the count goes by


def visible_entries(mask: Mask | None, q_len: int, k_len: int | None = None) -> int:
    """(query, key) pairs that may attend in the first batch and head; ``None`` = no mask, every pair.
    Counted from the mask's block layout: FULL tiles by their area, PARTIAL ones from their mask tile,
    EMPTY ones not at all, so a causal or sparse N×N mask costs its diagonal or visible tiles only."""
    k_len = q_len if k_len is None else k_len
    if mask is None:
        return q_len * k_len
    layout = mask.block_layout(q_len, k_len, _BLOCK)[0, 0]  # (n_q_blocks, n_k_blocks)
    starts_q, starts_k = range(0, q_len, _BLOCK), range(0, k_len, _BLOCK)
    rows = torch.tensor([min(_BLOCK, q_len - s) for s in starts_q])
    cols = torch.tensor([min(_BLOCK, k_len - s) for s in starts_k])
    total = int((rows[:, None] * cols[None, :])[layout == FULL].sum())
    for i, j in (layout == PARTIAL).nonzero().tolist():
        qs, ks = starts_q[i], starts_k[j]
        t = mask.tile(qs, qs + int(rows[i]), ks, ks + int(cols[j]), q_len, k_len)  # broadcastable to (B, H, ...)
        while t.dim() > 2:
            t = t[0]
        total += int(t.expand(int(rows[i]), int(cols[j])).sum())
    return total


def attention_flops(visible: int, mode: str, batch: int, heads: int, head_dim: int) -> float:
    """4·B·H·visible·D forward (two matmuls, 2 FLOPs per multiply-add); forward+backward ≈ 3.5×."""
    fwd = 4.0 * batch * heads * visible * head_dim
    return fwd * (FWDBWD_FACTOR if mode == "fwdbwd" else 1.0)
