"""Attention dropout drawn from global coordinates, so the result does not depend on the number of processes.

Each attention probability (b, h, i, j) — batch, head, global query row, global key — is kept iff a 32-bit hash of
(seed, b, h, i, j) is at or above ``p`` of its range; kept ones are scaled by 1 / (1 - p). :func:`keep_mask` is
that decision as an ``attnkit.masks`` mask, so the single-process result is reproducible exactly: with W the
attention weights of the whole sequence,

    out = (W * keep_mask(p, seed, batch=B, heads=H).materialize(Nq, Nk) / (1 - p)) @ v

The hash is counter based: no random state is carried between tiles, blocks or processes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..functional.masks import Device, Mask
from .comm import Group, global_rank, guarded

_M32 = 0xFFFFFFFF
_RESOLUTION = 1 << 24  # the keep decision compares the hash's top 24 bits with round(p * 2^24)


def _mix(x: Tensor) -> Tensor:
    """A bijective 32-bit integer hash (xorshift-multiply rounds) of int64 ``x`` taken modulo 2^32. The multipliers
    are below 2^31, so the int64 products stay below 2^63: no overflow."""
    x = x & _M32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _M32
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _M32
    x = ((x ^ (x >> 12)) * 0x297A2D39) & _M32
    return x ^ (x >> 15)


class KeepMask(Mask):
    """True where the probability at (b, h, query row i, key j) is kept by dropout with probability ``p``. Rows and
    keys are counted from the start of the whole sequence: query row i, not position (see the module docstring)."""

    def __init__(self, p: float, seed: int, batch: int, heads: int):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be a probability in [0, 1), got {p!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"dropout seed must be a non-negative int, got {seed!r}")
        self.p, self.seed, self.batch, self.heads = float(p), seed, batch, heads
        self.threshold = round(p * _RESOLUTION)

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        base = _mix(torch.tensor(self.seed & _M32, device=device) ^ _mix(torch.tensor(self.seed >> 32, device=device)))
        b = torch.arange(self.batch, device=device)[:, None, None, None]  # (B, 1, 1, 1)
        h = torch.arange(self.heads, device=device)[None, :, None, None]  # (1, H, 1, 1)
        i = torch.arange(qs, qe, device=device)[:, None]  # (nq, 1)
        j = torch.arange(ks, ke, device=device)[None, :]  # (1, nk)
        row = _mix(_mix(_mix(base + b) + h) + i)  # (B, H, nq, 1)
        return (_mix(row + j) >> 8) >= self.threshold  # (B, H, nq, nk)

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        # every tile holds kept and dropped entries, almost surely: PARTIAL, without hashing N x N entries
        n_q, n_k = -(-q_len // block_q), -(-k_len // block_k)
        return torch.ones(1, 1, n_q, n_k, dtype=torch.int8, device=device)

    def __repr__(self) -> str:
        return f"keep_mask(p={self.p}, seed={self.seed}, batch={self.batch}, heads={self.heads})"


def keep_mask(p: float, seed: int, *, batch: int, heads: int) -> Mask:
    """The dropout keep-mask ``attnkit.distributed.attention(..., dropout=p, dropout_seed=seed)`` applies, as a mask
    broadcastable to (batch, heads, Nq, Nk): True = kept (and scaled by 1 / (1 - p)). ``heads`` is q's head count.

    Example (one process: the reference the distributed result equals)::

        >>> keep = keep_mask(0.1, 1234, batch=B, heads=H).materialize(Nq, Nk)      # (B, H, Nq, Nk) bool
        >>> w = attnkit.attention_weights(q, k, causal=True)                      # (B, H, Nq, Nk)
        >>> out = (w * keep / (1 - 0.1)) @ v
    """
    return KeepMask(p, seed, batch, heads)


def draw_seed(group: Group, device: torch.device) -> int:
    """A dropout seed from torch's random generator on the group's first rank, the same on every rank (every rank
    draws one, so their generators advance alike; rank 0's is broadcast)."""
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64).to(device)
    source = global_rank(group, 0)
    guarded(lambda: dist.broadcast(seed, src=source, group=group), "the dropout seed's broadcast", group)
    return int(seed.item())


__all__ = ["KeepMask", "keep_mask", "draw_seed"]
