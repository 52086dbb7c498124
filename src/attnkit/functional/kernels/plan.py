"""The tiled kernel's schedule, shared by its PyTorch path and its native forward (``native.py``).

A plan lists, for each block of query rows, the chunks of keys to visit: runs of consecutive non-empty key
blocks of the mask's block layout, cut into chunks of at most ``max_chunk`` keys, each marked with whether
it holds a PARTIAL tile (needs the mask) or only FULL ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..masks import EMPTY, FULL
from ..request import AttentionRequest


def runs(flags: list[bool]) -> list[tuple[int, int]]:
    """The [start, end) ranges of consecutive True entries."""
    runs, start = [], None
    for j, flag in enumerate(flags + [False]):
        if flag and start is None:
            start = j
        elif not flag and start is not None:
            runs.append((start, j))
            start = None
    return runs


@dataclass(frozen=True)
class Row:
    """One query block and the key chunks it visits: (ks, ke, needs_mask)."""

    qs: int
    qe: int
    chunks: tuple[tuple[int, int, bool], ...]


def make_plan(req: AttentionRequest, block_q: int, block_k: int, max_chunk: int) -> list[Row]:
    """The visiting schedule: for each query block of ``block_q`` rows, chunks of consecutive non-empty key
    blocks of ``block_k`` keys, at most ``max_chunk`` keys a chunk.

    A tile is skipped only if it is EMPTY for every batch and head, and left unmasked only if FULL for all.
    """
    _, _, _, Nq, Nk, _, _ = req.shape
    layout = req.layout(block_q, block_k)  # (b, h, nqb, nkb) or None
    nqb, nkb = -(-Nq // block_q), -(-Nk // block_k)
    if layout is None:
        visit = [[True] * nkb] * nqb
        masked = [[False] * nkb] * nqb
    else:
        nonempty = (layout != EMPTY).flatten(0, 1).any(0)  # (nqb, nkb)
        visit = nonempty.tolist()
        masked = ((layout != FULL).flatten(0, 1).any(0) & nonempty).tolist()
    per_chunk = max(1, max_chunk // block_k)
    rows = []
    for i in range(nqb):
        chunks = []
        for first, end in runs(visit[i]):  # a run of non-empty key blocks, cut into chunks
            for s in range(first, end, per_chunk):
                e = min(s + per_chunk, end)
                chunks.append((s * block_k, min(e * block_k, Nk), any(masked[i][s:e])))
        rows.append(Row(i * block_q, min((i + 1) * block_q, Nq), tuple(chunks)))
    return rows
