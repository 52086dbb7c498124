"""What a benchmark counts: the (query, key) pairs a mask leaves visible and the FLOPs over them
(BENCHMARKING.md: attention forward 4·B·H·Nq·Nk_visible·D, forward+backward ≈ 3.5× that)."""

from __future__ import annotations

from ..functional.masks import Mask

FWDBWD_FACTOR = 3.5  # forward+backward FLOPs per forward FLOP
_CHUNK = 1 << 24  # mask entries built at once while counting (16 MiB of bools)


def visible_entries(mask: Mask | None, q_len: int, k_len: int | None = None) -> int:
    """(query, key) pairs that may attend in the first batch and head, counted block of rows by block of
    rows from the mask's tiles (never the whole N×N tensor); ``None`` = no mask, every pair."""
    k_len = q_len if k_len is None else k_len
    if mask is None:
        return q_len * k_len
    rows = max(1, _CHUNK // max(k_len, 1))
    total = 0
    for qs in range(0, q_len, rows):
        qe = min(qs + rows, q_len)
        t = mask.tile(qs, qe, 0, k_len, q_len, k_len)  # broadcastable to (B, H, qe - qs, k_len)
        while t.dim() > 2:
            t = t[0]
        total += int(t.expand(qe - qs, k_len).sum())
    return total


def attention_flops(visible: int, mode: str, batch: int, heads: int, head_dim: int) -> float:
    """4·B·H·visible·D forward (two matmuls, 2 FLOPs per multiply-add); forward+backward ≈ 3.5×."""
    fwd = 4.0 * batch * heads * visible * head_dim
    return fwd * (FWDBWD_FACTOR if mode == "fwdbwd" else 1.0)
