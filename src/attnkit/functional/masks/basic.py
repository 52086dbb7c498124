"""The basic structured masks: causal and sliding windows, padding, packed documents, prefix-LM and
global tokens, each computing its tile states from its parameters (no N×N tensor).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence
from typing import TypeAlias

import torch
from torch import Tensor

from .base import Blocks, Dense, Device, Mask, positions, states

Lengths: TypeAlias = Tensor | Sequence[int] | int  # one per sequence (B,), or one int for every sequence
Positions: TypeAlias = Tensor | Sequence[int] | int  # absolute positions, any shape (flattened)
DocumentIds: TypeAlias = Tensor | Sequence[int] | Sequence[Sequence[int]]  # (B, N) or (N,) integer ids


class SlidingWindow(Mask):
    """Query at absolute position p sees keys p - left <= j <= p + right; None = unbounded side."""

    def __init__(self, left: int | None, right: int | None):
        for name, value in (("left", left), ("right", right)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"window {name} must be a non-negative int or None (unbounded), got {value!r}")
        self.left, self.right = left, right

    def tile_key(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int) -> Hashable | None:
        return ("window", self.left, self.right, qs + k_len - q_len - ks, qe - qs, ke - ks)

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        p, j = positions(qs, qe, ks, ke, q_len, k_len, device)
        visible = torch.ones(p.shape[0], j.shape[1], dtype=torch.bool, device=device)
        if self.left is not None:
            visible &= j >= p - self.left
        if self.right is not None:
            visible &= j <= p + self.right
        return visible

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        b = Blocks.make(q_len, k_len, block_q, block_k, device)
        full = torch.ones(b.qs.shape[0], b.ks.shape[1], dtype=torch.bool, device=device)
        empty = torch.zeros_like(full)
        if self.left is not None:
            full &= b.ks >= b.p_last - self.left
            empty |= b.ke - 1 < b.p_first - self.left
        if self.right is not None:
            full &= b.ke - 1 <= b.p_first + self.right
            empty |= b.ks > b.p_last + self.right
        return states(full, empty)

    def __repr__(self) -> str:
        if self.left is None and self.right == 0:
            return "causal()"
        return f"sliding_window(left={self.left}, right={self.right})"


def _batch_vector(name: str, value: Lengths, device: Device = None) -> Tensor:
    t = torch.as_tensor(value, device=device)
    if t.dim() == 0:
        t = t[None]
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an int or a 1-D integer tensor of shape (B,), got "
                        f"{tuple(t.shape)} {t.dtype}")
    if (t < 0).any():
        raise ValueError(f"{name} must be non-negative, got {t.tolist()}")
    return t.long()


def _check_batch(name: str, t: Tensor, batch: int) -> None:
    if t.shape[0] not in (1, batch):
        raise ValueError(f"{name} has {t.shape[0]} entries but the batch size is {batch}")


class Padding(Mask):
    """Key j is visible iff j < k_lengths[b]; query row i is active iff i < q_lengths[b]."""

    def __init__(self, k_lengths: Lengths, q_lengths: Lengths | None = None):
        self.k_lengths = _batch_vector("k_lengths", k_lengths)
        self.q_lengths = None if q_lengths is None else _batch_vector("q_lengths", q_lengths)

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        _check_batch("padding k_lengths", self.k_lengths, batch)
        if self.q_lengths is not None:
            _check_batch("padding q_lengths", self.q_lengths, batch)

    def _lengths(self, device: Device) -> tuple[Tensor, Tensor | None]:  # (B, 1, 1, 1) each
        kl = self.k_lengths.to(device)[:, None, None, None]  # (B, 1, 1, 1)
        ql = None if self.q_lengths is None else self.q_lengths.to(device)[:, None, None, None]
        return kl, ql

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        kl, ql = self._lengths(device)
        visible = torch.arange(ks, ke, device=device) < kl  # (B, 1, 1, nk)
        if ql is not None:
            visible = visible & (torch.arange(qs, qe, device=device)[:, None] < ql)
        return visible.expand(-1, -1, qe - qs, -1)

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        b = Blocks.make(q_len, k_len, block_q, block_k, device)
        kl, ql = self._lengths(device)
        full, empty = b.ke <= kl, b.ks >= kl
        if ql is not None:
            full, empty = full & (b.qe <= ql), empty | (b.qs >= ql)
        return states(full, empty)

    def __repr__(self) -> str:
        q = "" if self.q_lengths is None else f", q_lengths={self.q_lengths.tolist()}"
        return f"padding(k_lengths={self.k_lengths.tolist()}{q})"


def _block_min_max(ids: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Per-block min and max of ids (B, N) -> two (B, n_blocks) tensors."""
    n = ids.shape[-1]
    pad = (-n) % block
    if pad:  # repeat the last id: min/max unchanged
        ids = torch.cat([ids, ids[:, -1:].expand(-1, pad)], dim=-1)
    blocks = ids.view(ids.shape[0], -1, block)
    return blocks.amin(-1), blocks.amax(-1)


class Document(Mask):
    """Packed sequences: attend only within the same document id.

    ``ids`` (B, k_len) or (k_len,) gives each key's document; query i takes the id of its absolute
    position ``ids[..., i + k_len - q_len]`` unless ``q_ids`` (B, q_len) is given.
    """

    def __init__(self, ids: DocumentIds, q_ids: DocumentIds | None = None):
        self.ids = self._ids("ids", ids)
        self.q_ids = None if q_ids is None else self._ids("q_ids", q_ids)

    @staticmethod
    def _ids(name: str, ids: DocumentIds) -> Tensor:
        t = torch.as_tensor(ids)
        if t.dim() == 1:
            t = t[None]
        if t.dim() != 2 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"document {name} must be an integer tensor of shape (B, N) or (N,), got "
                            f"{tuple(t.shape)} {t.dtype}")
        return t.long()

    def length(self) -> int:
        return self.ids.shape[-1]

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        _check_batch("document ids", self.ids, batch)
        if self.ids.shape[-1] != k_len:
            raise ValueError(f"document ids cover {self.ids.shape[-1]} positions but k_len is {k_len}")
        if self.q_ids is not None:
            _check_batch("document q_ids", self.q_ids, batch)
            if self.q_ids.shape[-1] != q_len:
                raise ValueError(f"document q_ids cover {self.q_ids.shape[-1]} positions but q_len is {q_len}")
        elif q_len > k_len:
            raise ValueError(f"document(ids) with q_len={q_len} > k_len={k_len}: queries before the first key "
                             "have no id; pass q_ids")

    def _query_ids(self, q_len: int, k_len: int, device: Device) -> Tensor:  # (B, q_len)
        if self.q_ids is not None:
            return self.q_ids.to(device)
        return self.ids.to(device)[:, k_len - q_len:]

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        qid = self._query_ids(q_len, k_len, device)[:, qs:qe]
        kid = self.ids.to(device)[:, ks:ke]
        return (qid[:, :, None] == kid[:, None, :])[:, None]  # (B, 1, nq, nk)

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        qmin, qmax = _block_min_max(self._query_ids(q_len, k_len, device), block_q)
        kmin, kmax = _block_min_max(self.ids.to(device), block_k)
        qmin, qmax = qmin[:, :, None], qmax[:, :, None]  # (B, nqb, 1)
        kmin, kmax = kmin[:, None, :], kmax[:, None, :]  # (B, 1, nkb)
        full = (qmin == qmax) & (kmin == kmax) & (qmin == kmin)
        empty = (qmax < kmin) | (kmax < qmin)
        return states(full, empty)[:, None]

    def __repr__(self) -> str:
        n_docs = int(self.ids[0].unique().numel())
        return f"document(B={self.ids.shape[0]}, N={self.ids.shape[-1]}, docs in row 0={n_docs})"


class PrefixLM(Mask):
    """Keys j < prefix_lengths[b] are seen by every query (bidirectional prefix); causal after it."""

    def __init__(self, prefix_lengths: Lengths):
        self.prefix = _batch_vector("prefix_lengths", prefix_lengths)

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        _check_batch("prefix_lm prefix_lengths", self.prefix, batch)

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        p, j = positions(qs, qe, ks, ke, q_len, k_len, device)
        prefix = self.prefix.to(device)[:, None, None, None]
        return (j <= p) | (j < prefix)  # (B, 1, nq, nk)

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        b = Blocks.make(q_len, k_len, block_q, block_k, device)
        prefix = self.prefix.to(device)[:, None, None, None]
        full = (b.ke - 1 <= b.p_first) | (b.ke <= prefix)
        empty = (b.ks > b.p_last) & (b.ks >= prefix)
        return states(full, empty)

    def __repr__(self) -> str:
        return f"prefix_lm(prefix_lengths={self.prefix.tolist()})"


class GlobalTokens(Mask):
    """Positions in ``indices`` see every key and are seen by every query; nothing else is visible.

    Combine with another pattern by ``|``: ``sliding_window(256) | global_tokens([0])``.
    """

    def __init__(self, indices: Positions):
        t = torch.as_tensor(indices).flatten()
        if t.numel() == 0:
            t = t.long()
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"global_tokens indices must be integers, got {t.dtype}")
        if (t < 0).any():
            raise ValueError(f"global_tokens indices must be non-negative positions, got {t.tolist()}")
        self.indices = t.long().unique()  # sorted, unique
        self._sorted = self.indices.tolist()

    def _any(self, first: int, end: int) -> bool:  # a global position in [first, end)
        i = bisect.bisect_left(self._sorted, first)
        return i < len(self._sorted) and self._sorted[i] < end

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        p, j = positions(qs, qe, ks, ke, q_len, k_len, device)
        g = self.indices.to(device)
        return torch.isin(p, g) | torch.isin(j, g)

    def tile_key(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int) -> Hashable | None:
        offset = k_len - q_len
        if self._any(qs + offset, qe + offset) or self._any(ks, ke):
            return None  # global rows and columns sit at absolute positions
        return ("no global token", qe - qs, ke - ks)  # all hidden

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        b = Blocks.make(q_len, k_len, block_q, block_k, device)
        g = self.indices.to(device)

        def count(first: Tensor, end: Tensor) -> Tensor:  # globals in [first, end)
            return torch.searchsorted(g, end.contiguous()) - torch.searchsorted(g, first.contiguous())

        in_q = count(b.p_first, b.p_last + 1)  # (nqb, 1)
        in_k = count(b.ks, b.ke)  # (1, nkb)
        full = (in_q == b.qe - b.qs) | (in_k == b.ke - b.ks)
        empty = (in_q == 0) & (in_k == 0)
        return states(full, empty)

    def __repr__(self) -> str:
        shown = self.indices[:8].tolist()
        return f"global_tokens({shown}{'...' if self.indices.numel() > 8 else ''})"


def causal() -> Mask:
    """Query at absolute position p sees keys j <= p (bottom-right aligned when q_len != k_len)."""
    return SlidingWindow(None, 0)


def sliding_window(left: int | None, right: int | None = 0) -> Mask:
    """Query at absolute position p sees keys p - left <= j <= p + right (None = unbounded)."""
    return SlidingWindow(left, right)


def padding(k_lengths: Lengths, q_lengths: Lengths | None = None) -> Mask:
    """Per-sequence valid lengths (B,): keys at j >= k_lengths[b] and query rows i >= q_lengths[b] are
    masked. A masked query row outputs zeros."""
    return Padding(k_lengths, q_lengths)


def document(ids: DocumentIds, q_ids: DocumentIds | None = None) -> Mask:
    """Packed sequences: query and key attend iff their document ids (B, N) are equal."""
    return Document(ids, q_ids)


def prefix_lm(prefix_lengths: Lengths) -> Mask:
    """Bidirectional attention inside each sequence's prefix (B,), causal after it."""
    return PrefixLM(prefix_lengths)


def global_tokens(indices: Positions) -> Mask:
    """These absolute positions see and are seen by all; combine with ``|``."""
    return GlobalTokens(indices)


def dense(mask: Tensor) -> Mask:
    """Wrap a bool tensor broadcastable to (B, H, Nq, Nk)."""
    return Dense(mask)
