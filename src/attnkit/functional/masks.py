"""Structured attention masks: small typed objects that explain themselves.

A mask answers three questions for a query length ``q_len`` and key length ``k_len``:

- ``tile(qs, qe, ks, ke, q_len, k_len)``: the bool tensor for queries ``qs:qe`` and keys ``ks:ke``,
  broadcastable to ``(B, H, qe - qs, ke - ks)``; True = may attend.
- ``block_states(q_len, k_len, block_q, block_k)``: per (query-block, key-block) tile, whether it is
  ``EMPTY`` (0), ``PARTIAL`` (1) or ``FULL`` (2), as an int8 tensor broadcastable to
  ``(B, H, n_q_blocks, n_k_blocks)``, computed from the mask's parameters without the dense N×N
  tensor. States may be conservative (PARTIAL where the exact answer is EMPTY or FULL), never wrong.
- ``materialize(q_len, k_len)``: the whole dense bool tensor, for tests and plots.

Positions are bottom-right aligned: query row ``i`` sits at absolute position ``p = i + k_len - q_len``
(the last query sees the last key), which is what decoding with a KV cache needs::

    causal, q_len=2, k_len=5        p   keys 0 1 2 3 4
                                    3        x x x x .
                                    4        x x x x x

Masks compose with ``&``, ``|`` and ``~``; the block states compose too (min, max, 2 - s).

Besides the basic masks, the sparse patterns of the literature: ``strided`` and ``fixed`` (Sparse
Transformer), ``longformer`` and ``bigbird``, each with its picture in its docstring.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch
from torch import Tensor

EMPTY, PARTIAL, FULL = 0, 1, 2
_GRID_CHARS = {EMPTY: "·", PARTIAL: "░", FULL: "█"}


@dataclass(frozen=True)
class _Blocks:
    """Start/end positions of the query and key blocks of a tiling, as broadcastable columns."""

    qs: Tensor  # (nqb, 1) first query row of each block
    qe: Tensor  # (nqb, 1) one past the last query row
    ks: Tensor  # (1, nkb) first key of each block
    ke: Tensor  # (1, nkb)
    offset: int  # k_len - q_len: absolute position of query row i is i + offset

    @classmethod
    def make(cls, q_len: int, k_len: int, block_q: int, block_k: int, device=None) -> "_Blocks":
        qs = torch.arange(0, q_len, block_q, device=device)
        ks = torch.arange(0, k_len, block_k, device=device)
        qe = (qs + block_q).clamp(max=q_len)
        ke = (ks + block_k).clamp(max=k_len)
        return cls(qs[:, None], qe[:, None], ks[None, :], ke[None, :], k_len - q_len)

    @property
    def p_first(self) -> Tensor:  # absolute position of each block's first query
        return self.qs + self.offset

    @property
    def p_last(self) -> Tensor:
        return self.qe - 1 + self.offset


def _states(full: Tensor, empty: Tensor) -> Tensor:
    """int8 block states from bool 'full' and 'empty' tensors (empty wins if both hold)."""
    s = torch.where(full, FULL, PARTIAL).to(torch.int8)
    return torch.where(empty, torch.tensor(EMPTY, dtype=torch.int8, device=s.device), s)


def _as_4d(t: Tensor) -> Tensor:
    """(nq, nk) -> (1, 1, nq, nk); (B, nq, nk) is not used: batch-dependent masks build 4-D directly."""
    return t[None, None] if t.dim() == 2 else t


class Mask:
    """Base class of structured masks. Subclasses implement ``tile`` and ``block_states``."""

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device=None) -> Tensor:
        raise NotImplementedError

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device=None) -> Tensor:
        raise NotImplementedError

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        """Raise ValueError if this mask cannot apply to the given sizes. Default: any size."""

    def tile_key(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int):
        """A hashable key such that tiles with equal keys are equal (kernels cache them), or None.
        Masks that depend only on the distance p - j (causal, sliding windows) return one."""
        return None

    def cells(self, q_len: int, k_len: int) -> tuple[int, int, Tensor] | None:
        """For a mask that is constant on squares of ``cell`` x ``cell`` positions: ``(cell, q_offset, grid)``
        such that query row i may see key j iff ``grid[..., (i + q_offset) // cell, j // cell]``, with
        ``q_offset >= 0`` and grid a bool CPU tensor (b|1, h|1, n_query_cells, ceil(k_len / cell)).
        None (the default) when the mask has no such grid or it would be too large. The native tiled
        forward expands the tiles it needs from the grid in C instead of asking ``tile`` for each one."""
        return None

    def length(self) -> int | None:
        """The sequence length the mask carries (e.g. document ids), or None if it has none."""
        return None

    def materialize(self, q_len: int, k_len: int | None = None, device=None) -> Tensor:
        """The dense bool mask, broadcastable to ``(B, H, q_len, k_len)``; True = may attend."""
        k_len = q_len if k_len is None else k_len
        return _as_4d(self.tile(0, q_len, 0, k_len, q_len, k_len, device))

    def block_layout(self, q_len: int, k_len: int | None = None, block: int | tuple[int, int] = 128,
                     device=None) -> Tensor:
        """Per-tile states EMPTY (0) / PARTIAL (1) / FULL (2), shape ``(b, h, n_q_blocks, n_k_blocks)``."""
        k_len = q_len if k_len is None else k_len
        bq, bk = (block, block) if isinstance(block, int) else block
        states = _as_4d(self.block_states(q_len, k_len, bq, bk, device))
        return states.expand(-1, -1, -(-q_len // bq), -(-k_len // bk))

    def to_string(self, q_len: int | None = None, k_len: int | None = None, block: int | None = None,
                  batch: int = 0, head: int = 0) -> str:
        """A block grid: '█' full, '░' partial, '·' empty; one character per tile."""
        q_len = q_len or self.length() or 16
        k_len = k_len or q_len
        block = block or max(1, math.ceil(max(q_len, k_len) / 32))
        states = self.block_layout(q_len, k_len, block)
        grid = states[min(batch, states.shape[0] - 1), min(head, states.shape[1] - 1)]
        rows = ["".join(_GRID_CHARS[int(s)] for s in row) for row in grid.tolist()]
        title = f"{self!r}  q_len={q_len} k_len={k_len} block={block}"
        if states.shape[0] > 1 or states.shape[1] > 1:
            title += f"  (batch {batch}, head {head} of {states.shape[0]}x{states.shape[1]})"
        return "\n".join([title] + rows)

    def __str__(self) -> str:
        return self.to_string()

    def __and__(self, other: "Mask") -> "Mask":
        return And(self, as_mask(other))

    def __or__(self, other: "Mask") -> "Mask":
        return Or(self, as_mask(other))

    def __invert__(self) -> "Mask":
        return Not(self)


class And(Mask):
    def __init__(self, a: Mask, b: Mask):
        self.a, self.b = a, b

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        return self.a.tile(qs, qe, ks, ke, q_len, k_len, device) & self.b.tile(qs, qe, ks, ke, q_len, k_len, device)

    def block_states(self, q_len, k_len, block_q, block_k, device=None):
        return torch.minimum(_as_4d(self.a.block_states(q_len, k_len, block_q, block_k, device)),
                             _as_4d(self.b.block_states(q_len, k_len, block_q, block_k, device)))

    def check(self, batch, heads, q_len, k_len):
        self.a.check(batch, heads, q_len, k_len)
        self.b.check(batch, heads, q_len, k_len)

    def tile_key(self, qs, qe, ks, ke, q_len, k_len):
        a, b = self.a.tile_key(qs, qe, ks, ke, q_len, k_len), self.b.tile_key(qs, qe, ks, ke, q_len, k_len)
        return None if a is None or b is None else (type(self).__name__, a, b)

    def length(self):
        return self.a.length() or self.b.length()

    def __repr__(self):
        return f"({self.a!r} & {self.b!r})"


class Or(And):
    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        return self.a.tile(qs, qe, ks, ke, q_len, k_len, device) | self.b.tile(qs, qe, ks, ke, q_len, k_len, device)

    def block_states(self, q_len, k_len, block_q, block_k, device=None):
        return torch.maximum(_as_4d(self.a.block_states(q_len, k_len, block_q, block_k, device)),
                             _as_4d(self.b.block_states(q_len, k_len, block_q, block_k, device)))

    def __repr__(self):
        return f"({self.a!r} | {self.b!r})"


class Not(Mask):
    def __init__(self, a: Mask):
        self.a = a

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        return ~self.a.tile(qs, qe, ks, ke, q_len, k_len, device)

    def block_states(self, q_len, k_len, block_q, block_k, device=None):
        return FULL - self.a.block_states(q_len, k_len, block_q, block_k, device)

    def check(self, batch, heads, q_len, k_len):
        self.a.check(batch, heads, q_len, k_len)

    def tile_key(self, qs, qe, ks, ke, q_len, k_len):
        a = self.a.tile_key(qs, qe, ks, ke, q_len, k_len)
        return None if a is None else ("Not", a)

    def length(self):
        return self.a.length()

    def __repr__(self):
        return f"~{self.a!r}"


def shape4(name: str, t: Tensor) -> tuple[int, ...]:
    """The shape of a mask or bias tensor with 2 to 4 dims, left-padded with 1s to (b, h, nq, nk)."""
    if not 2 <= t.dim() <= 4:
        raise ValueError(f"{name} must have 2 to 4 dims broadcastable to (B, H, Nq, Nk), got shape {tuple(t.shape)}")
    return (1,) * (4 - t.dim()) + tuple(t.shape)


def check_broadcast(name: str, t: Tensor, target: tuple[int, int, int, int]) -> None:
    if any(s not in (1, n) for s, n in zip(shape4(name, t), target)):
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to (B, H, Nq, Nk) = {target}")


def _positions(qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device) -> tuple[Tensor, Tensor]:
    """Absolute query positions (nq, 1) and key positions (1, nk) of a tile."""
    p = torch.arange(qs, qe, device=device)[:, None] + (k_len - q_len)
    j = torch.arange(ks, ke, device=device)[None, :]
    return p, j


class SlidingWindow(Mask):
    """Query at absolute position p sees keys p - left <= j <= p + right; None = unbounded side."""

    def __init__(self, left: int | None, right: int | None):
        for name, value in (("left", left), ("right", right)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"window {name} must be a non-negative int or None (unbounded), got {value!r}")
        self.left, self.right = left, right

    def tile_key(self, qs, qe, ks, ke, q_len, k_len):
        return ("window", self.left, self.right, qs + k_len - q_len - ks, qe - qs, ke - ks)

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        p, j = _positions(qs, qe, ks, ke, q_len, k_len, device)
        visible = torch.ones(p.shape[0], j.shape[1], dtype=torch.bool, device=device)
        if self.left is not None:
            visible &= j >= p - self.left
        if self.right is not None:
            visible &= j <= p + self.right
        return visible

    def block_states(self, q_len, k_len, block_q, block_k, device=None):
        b = _Blocks.make(q_len, k_len, block_q, block_k, device)
        full = torch.ones(b.qs.shape[0], b.ks.shape[1], dtype=torch.bool, device=device)
        empty = torch.zeros_like(full)
        if self.left is not None:
            full &= b.ks >= b.p_last - self.left
            empty |= b.ke - 1 < b.p_first - self.left
        if self.right is not None:
            full &= b.ke - 1 <= b.p_first + self.right
            empty |= b.ks > b.p_last + self.right
        return _states(full, empty)

    def __repr__(self):
        if self.left is None and self.right == 0:
            return "causal()"
        return f"sliding_window(left={self.left}, right={self.right})"


def _batch_vector(name: str, value, device=None) -> Tensor:
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

    def __init__(self, k_lengths, q_lengths=None):
        self.k_lengths = _batch_vector("k_lengths", k_lengths)
        self.q_lengths = None if q_lengths is None else _batch_vector("q_lengths", q_lengths)

    def check(self, batch, heads, q_len, k_len):
        _check_batch("padding k_lengths", self.k_lengths, batch)
        if self.q_lengths is not None:
            _check_batch("padding q_lengths", self.q_lengths, batch)

    def _lengths(self, device):
        kl = self.k_lengths.to(device)[:, None, None, None]  # (B, 1, 1, 1)
        ql = None if self.q_lengths is None else self.q_lengths.to(device)[:, None, None, None]
        return kl, ql

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        kl, ql = self._lengths(device)
        visible = torch.arange(ks, ke, device=device) < kl  # (B, 1, 1, nk)
        if ql is not None:
            visible = visible & (torch.arange(qs, qe, device=device)[:, None] < ql)
        return visible.expand(-1, -1, qe - qs, -1)

    def block_states(self, q_len, k_len, block_q, block_k, device=None):
        b = _Blocks.make(q_len, k_len, block_q, block_k, device)
        kl, ql = self._lengths(device)
        full, empty = b.ke <= kl, b.ks >= kl
        if ql is not None:
            full, empty = full & (b.qe <= ql), empty | (b.qs >= ql)
        return _states(full, empty)

    def __repr__(self):
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

    def __init__(self, ids, q_ids=None):
        self.ids = self._ids("ids", ids)
        self.q_ids = None if q_ids is None else self._ids("q_ids", q_ids)

    @staticmethod
    def _ids(name, ids) -> Tensor:
        t = torch.as_tensor(ids)
        if t.dim() == 1:
            t = t[None]
        if t.dim() != 2 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"document {name} must be an integer tensor of shape (B, N) or (N,), got "
                            f"{tuple(t.shape)} {t.dtype}")
        return t.long()

    def length(self):
        return self.ids.shape[-1]

    def check(self, batch, heads, q_len, k_len):
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

    def _query_ids(self, q_len: int, k_len: int, device) -> Tensor:  # (B, q_len)
        if self.q_ids is not None:
            return self.q_ids.to(device)
        return self.ids.to(device)[:, k_len - q_len:]

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        qid = self._query_ids(q_len, k_len, device)[:, qs:qe]
        kid = self.ids.to(device)[:, ks:ke]
        return (qid[:, :, None] == kid[:, None, :])[:, None]  # (B, 1, nq, nk)

    def block_states(self, q_len, k_len, block_q, block_k, device=None):
        qmin, qmax = _block_min_max(self._query_ids(q_len, k_len, device), block_q)
        kmin, kmax = _block_min_max(self.ids.to(device), block_k)
        qmin, qmax = qmin[:, :, None], qmax[:, :, None]  # (B, nqb, 1)
        kmin, kmax = kmin[:, None, :], kmax[:, None, :]  # (B, 1, nkb)
        full = (qmin == qmax) & (kmin == kmax) & (qmin == kmin)
        empty = (qmax < kmin) | (kmax < qmin)
        return _states(full, empty)[:, None]

    def __repr__(self):
        n_docs = int(self.ids[0].unique().numel())
        return f"document(B={self.ids.shape[0]}, N={self.ids.shape[-1]}, docs in row 0={n_docs})"


class PrefixLM(Mask):
    """Keys j < prefix_lengths[b] are seen by every query (bidirectional prefix); causal after it."""

    def __init__(self, prefix_lengths):
        self.prefix = _batch_vector("prefix_lengths", prefix_lengths)

    def check(self, batch, heads, q_len, k_len):
        _check_batch("prefix_lm prefix_lengths", self.prefix, batch)

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        p, j = _positions(qs, qe, ks, ke, q_len, k_len, device)
        prefix = self.prefix.to(device)[:, None, None, None]
        return (j <= p) | (j < prefix)  # (B, 1, nq, nk)

    def block_states(self, q_len, k_len, block_q, block_k, device=None):
        b = _Blocks.make(q_len, k_len, block_q, block_k, device)
        prefix = self.prefix.to(device)[:, None, None, None]
        full = (b.ke - 1 <= b.p_first) | (b.ke <= prefix)
        empty = (b.ks > b.p_last) & (b.ks >= prefix)
        return _states(full, empty)

    def __repr__(self):
        return f"prefix_lm(prefix_lengths={self.prefix.tolist()})"


class GlobalTokens(Mask):
    """Positions in ``indices`` see every key and are seen by every query; nothing else is visible.

    Combine with another pattern by ``|``: ``sliding_window(256) | global_tokens([0])``.
    """

    def __init__(self, indices):
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

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        p, j = _positions(qs, qe, ks, ke, q_len, k_len, device)
        g = self.indices.to(device)
        return torch.isin(p, g) | torch.isin(j, g)

    def tile_key(self, qs, qe, ks, ke, q_len, k_len):
        offset = k_len - q_len
        if self._any(qs + offset, qe + offset) or self._any(ks, ke):
            return None  # global rows and columns sit at absolute positions
        return ("no global token", qe - qs, ke - ks)  # all hidden

    def block_states(self, q_len, k_len, block_q, block_k, device=None):
        b = _Blocks.make(q_len, k_len, block_q, block_k, device)
        g = self.indices.to(device)

        def count(first: Tensor, end: Tensor) -> Tensor:  # globals in [first, end)
            return torch.searchsorted(g, end.contiguous()) - torch.searchsorted(g, first.contiguous())

        in_q = count(b.p_first, b.p_last + 1)  # (nqb, 1)
        in_k = count(b.ks, b.ke)  # (1, nkb)
        full = (in_q == b.qe - b.qs) | (in_k == b.ke - b.ks)
        empty = (in_q == 0) & (in_k == 0)
        return _states(full, empty)

    def __repr__(self):
        shown = self.indices[:8].tolist()
        return f"global_tokens({shown}{'...' if self.indices.numel() > 8 else ''})"


class Dense(Mask):
    """A bool tensor broadcastable to (B, H, q_len, k_len); True = may attend."""

    def __init__(self, mask: Tensor):
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor or an attnkit mask, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = may attend), got dtype {mask.dtype}; "
                            "pass an additive float mask as bias=")
        shape4("mask", mask)
        self.mask = mask

    def check(self, batch, heads, q_len, k_len):
        check_broadcast("mask", self.mask, (batch, heads, q_len, k_len))

    def _full(self, q_len, k_len) -> Tensor:
        m = self.mask.reshape(shape4("mask", self.mask))
        return m.expand(-1, -1, q_len, k_len)

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        return self._full(q_len, k_len)[..., qs:qe, ks:ke].to(device)

    def block_states(self, q_len, k_len, block_q, block_k, device=None):
        m = self._full(q_len, k_len).to(device)
        n_kb = -(-k_len // block_k)
        ks = torch.arange(n_kb, device=device) * block_k
        k_sizes = (ks + block_k).clamp(max=k_len) - ks
        rows = []
        for qs in range(0, q_len, block_q):
            band = m[..., qs:qs + block_q, :].to(torch.int32)
            band = torch.nn.functional.pad(band, (0, n_kb * block_k - k_len))
            counts = band.unflatten(-1, (n_kb, block_k)).sum(dim=(-3, -1))  # (b, h, nkb)
            size = k_sizes * band.shape[-2]  # keys per block x rows in this band
            rows.append(_states(counts == size, counts == 0))
        return torch.stack(rows, dim=-2)

    def length(self):
        return self.mask.shape[-1]

    def __repr__(self):
        return f"dense({tuple(self.mask.shape)})"


def causal() -> Mask:
    """Query at absolute position p sees keys j <= p (bottom-right aligned when q_len != k_len)."""
    return SlidingWindow(None, 0)


def sliding_window(left: int | None, right: int | None = 0) -> Mask:
    """Query at absolute position p sees keys p - left <= j <= p + right (None = unbounded)."""
    return SlidingWindow(left, right)


def padding(k_lengths, q_lengths=None) -> Mask:
    """Per-sequence valid lengths (B,): keys at j >= k_lengths[b] and query rows i >= q_lengths[b] are
    masked. A masked query row outputs zeros."""
    return Padding(k_lengths, q_lengths)


def document(ids, q_ids=None) -> Mask:
    """Packed sequences: query and key attend iff their document ids (B, N) are equal."""
    return Document(ids, q_ids)


def prefix_lm(prefix_lengths) -> Mask:
    """Bidirectional attention inside each sequence's prefix (B,), causal after it."""
    return PrefixLM(prefix_lengths)


def global_tokens(indices) -> Mask:
    """These absolute positions see and are seen by all; combine with ``|``."""
    return GlobalTokens(indices)


def dense(mask: Tensor) -> Mask:
    """Wrap a bool tensor broadcastable to (B, H, Nq, Nk)."""
    return Dense(mask)


def as_mask(mask) -> Mask:
    """A Mask from a Mask or a bool tensor; anything else is a TypeError naming what was received."""
    if isinstance(mask, Mask):
        return mask
    if isinstance(mask, Tensor):
        return Dense(mask)
    raise TypeError(f"mask must be a bool tensor or an attnkit.masks mask, got {type(mask).__name__}")


# the sparse patterns live in their own module (it imports this one, so it comes last)
from .sparse_masks import bigbird, fixed, longformer, strided  # noqa: E402

__all__ = [
    "EMPTY", "PARTIAL", "FULL", "Mask", "causal", "sliding_window", "padding", "document", "prefix_lm",
    "global_tokens", "dense", "as_mask", "strided", "fixed", "longformer", "bigbird",
]
