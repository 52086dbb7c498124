"""The base of attnkit's structured masks: the ``Mask`` class, tile states, composition with ``& | ~``,
and ``Dense`` (a bool tensor as a mask), which every other mask module builds on.

A mask answers three questions for a query length ``q_len`` and key length ``k_len``:

- ``tile(qs, qe, ks, ke, q_len, k_len)``: the bool tensor for queries ``qs:qe`` and keys ``ks:ke``,
  broadcastable to ``(B, H, qe - qs, ke - ks)``; True = may attend. The one method a subclass must write.
- ``block_states(q_len, k_len, block_q, block_k)``: per (query-block, key-block) tile, its
  :class:`TileState` (``EMPTY``, ``PARTIAL`` or ``FULL``), as an int8 tensor broadcastable to
  ``(B, H, n_q_blocks, n_k_blocks)``. The built-in masks compute it from their parameters without the
  dense N×N tensor; the default derives it exactly from ``tile``, one band of query rows at a time.
  States may be conservative (PARTIAL where the exact answer is EMPTY or FULL), never wrong.
- ``materialize(q_len, k_len)``: the whole dense bool tensor, for tests and plots.

Positions are bottom-right aligned: query row ``i`` sits at absolute position ``p = i + k_len - q_len``
(the last query sees the last key), which is what decoding with a KV cache needs::

    causal, q_len=2, k_len=5        p   keys 0 1 2 3 4
                                    3        x x x x .
                                    4        x x x x x

Masks compose with ``&``, ``|`` and ``~``; the block states compose too (min, max, 2 - s).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeAlias

import torch
from torch import Tensor


class TileState(enum.IntEnum):
    """What a mask holds on one tile of queries x keys; ``block_states`` returns these as int8."""

    EMPTY = 0  # nothing visible: kernels skip the tile
    PARTIAL = 1  # some entries visible: kernels apply the tile's mask
    FULL = 2  # everything visible: kernels need no mask there


EMPTY, PARTIAL, FULL = TileState.EMPTY, TileState.PARTIAL, TileState.FULL
_GRID_CHARS: dict[int, str] = {EMPTY: "·", PARTIAL: "░", FULL: "█"}  # by the int8 values block_states holds

Device: TypeAlias = torch.device | str | None  # where a mask or bias builds its tensors, as torch's device= takes it
TileFunction: TypeAlias = Callable[[int, int, int, int, int, int, Device], Tensor]  # Mask.tile's signature


@dataclass(frozen=True)
class Blocks:
    """Start/end positions of the query and key blocks of a tiling, as broadcastable columns."""

    qs: Tensor  # (nqb, 1) first query row of each block
    qe: Tensor  # (nqb, 1) one past the last query row
    ks: Tensor  # (1, nkb) first key of each block
    ke: Tensor  # (1, nkb)
    offset: int  # k_len - q_len: absolute position of query row i is i + offset

    @classmethod
    def make(cls, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Blocks:
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


def states(full: Tensor, empty: Tensor) -> Tensor:
    """int8 block states from bool 'full' and 'empty' tensors (empty wins if both hold)."""
    s = torch.where(full, FULL, PARTIAL).to(torch.int8)
    return torch.where(empty, torch.tensor(EMPTY, dtype=torch.int8, device=s.device), s)


def as_4d(t: Tensor) -> Tensor:
    """(nq, nk) -> (1, 1, nq, nk); (B, nq, nk) is not used: batch-dependent masks build 4-D directly."""
    return t[None, None] if t.dim() == 2 else t


def shape4(name: str, t: Tensor) -> tuple[int, ...]:
    """The shape of a mask or bias tensor with 2 to 4 dims, left-padded with 1s to (b, h, nq, nk)."""
    if not 2 <= t.dim() <= 4:
        raise ValueError(f"{name} must have 2 to 4 dims broadcastable to (B, H, Nq, Nk), got shape {tuple(t.shape)}")
    return (1,) * (4 - t.dim()) + tuple(t.shape)


def check_broadcast(name: str, t: Tensor, target: tuple[int, int, int, int]) -> None:
    if any(s not in (1, n) for s, n in zip(shape4(name, t), target)):
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to (B, H, Nq, Nk) = {target}")


def positions(qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device) -> tuple[Tensor, Tensor]:
    """Absolute query positions (nq, 1) and key positions (1, nk) of a tile."""
    p = torch.arange(qs, qe, device=device)[:, None] + (k_len - q_len)
    j = torch.arange(ks, ke, device=device)[None, :]
    return p, j


def tile_states(tile: TileFunction, q_len: int, k_len: int, block_q: int, block_k: int,
                device: Device = None) -> Tensor:
    """Exact block states (b, h, nqb, nkb) from ``tile(qs, qe, ks, ke, q_len, k_len, device)``, one band of
    ``block_q`` query rows by every key at a time: memory O(block_q · k_len), time O(q_len · k_len)."""
    n_kb = -(-k_len // block_k)
    ks = torch.arange(n_kb, device=device) * block_k
    k_sizes = (ks + block_k).clamp(max=k_len) - ks  # keys per block
    whole = k_len // block_k * block_k  # the keys of the blocks that are not cut short
    rows = []
    for qs in range(0, q_len, block_q):
        qe = min(qs + block_q, q_len)
        band = as_4d(tile(qs, qe, 0, k_len, q_len, k_len, device))
        band = band.expand(*band.shape[:-2], qe - qs, k_len)  # (b, h, rows, k_len) bool
        # visible entries per block, summed from bool with an int32 accumulator: ~10x faster than converting
        # the band to int32 first, and no padded copy for a last block that is cut short
        counts = band[..., :whole].unflatten(-1, (whole // block_k, block_k)).sum(dim=(-3, -1), dtype=torch.int32)
        if whole < k_len:
            last = band[..., whole:].sum(dim=(-2, -1), dtype=torch.int32)[..., None]
            counts = torch.cat([counts, last], dim=-1)  # (b, h, nkb)
        rows.append(states(counts == k_sizes * (qe - qs), counts == 0))
    if not rows:  # no queries
        return torch.zeros(1, 1, 0, n_kb, dtype=torch.int8, device=device)
    return torch.stack(rows, dim=-2)


class Mask:
    """Base class of structured masks. A subclass implements ``tile``; the rest has defaults.

    The default ``block_states`` is exact but derives the states from ``tile`` over every entry (see
    :func:`tile_states`); a mask that can tell empty and full tiles from its parameters should override it,
    and ``tile_key`` where tiles repeat, so that kernels skip and cache tiles cheaply.
    """

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        """The bool tile for queries ``qs:qe`` and keys ``ks:ke``, broadcastable to (B, H, qe - qs, ke - ks)."""
        raise NotImplementedError(f"{type(self).__name__} must implement tile(qs, qe, ks, ke, q_len, k_len, device): "
                                  "every attnkit mask derives the rest from it")

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        """Per-tile :class:`TileState` as int8, broadcastable to (B, H, n_q_blocks, n_k_blocks)."""
        return tile_states(self.tile, q_len, k_len, block_q, block_k, device)

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        """Raise ValueError if this mask cannot apply to the given sizes. Default: any size."""

    def tile_key(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int) -> Hashable | None:
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

    def materialize(self, q_len: int, k_len: int | None = None, device: Device = None) -> Tensor:
        """The dense bool mask, broadcastable to ``(B, H, q_len, k_len)``; True = may attend."""
        k_len = q_len if k_len is None else k_len
        return as_4d(self.tile(0, q_len, 0, k_len, q_len, k_len, device))

    def block_layout(self, q_len: int, k_len: int | None = None, block: int | tuple[int, int] = 128,
                     device: Device = None) -> Tensor:
        """Per-tile states EMPTY (0) / PARTIAL (1) / FULL (2), shape ``(b, h, n_q_blocks, n_k_blocks)``."""
        k_len = q_len if k_len is None else k_len
        bq, bk = (block, block) if isinstance(block, int) else block
        states = as_4d(self.block_states(q_len, k_len, bq, bk, device))
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

    def __and__(self, other: Mask | Tensor) -> Mask:
        return And(self, as_mask(other))

    def __or__(self, other: Mask | Tensor) -> Mask:
        return Or(self, as_mask(other))

    def __invert__(self) -> Mask:
        return Not(self)


class And(Mask):
    def __init__(self, a: Mask, b: Mask):
        self.a, self.b = a, b

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        return self.a.tile(qs, qe, ks, ke, q_len, k_len, device) & self.b.tile(qs, qe, ks, ke, q_len, k_len, device)

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        return torch.minimum(as_4d(self.a.block_states(q_len, k_len, block_q, block_k, device)),
                             as_4d(self.b.block_states(q_len, k_len, block_q, block_k, device)))

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        self.a.check(batch, heads, q_len, k_len)
        self.b.check(batch, heads, q_len, k_len)

    def tile_key(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int) -> Hashable | None:
        a, b = self.a.tile_key(qs, qe, ks, ke, q_len, k_len), self.b.tile_key(qs, qe, ks, ke, q_len, k_len)
        return None if a is None or b is None else (type(self).__name__, a, b)

    def length(self) -> int | None:
        return self.a.length() or self.b.length()

    def __repr__(self) -> str:
        return f"({self.a!r} & {self.b!r})"


class Or(And):
    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        return self.a.tile(qs, qe, ks, ke, q_len, k_len, device) | self.b.tile(qs, qe, ks, ke, q_len, k_len, device)

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        return torch.maximum(as_4d(self.a.block_states(q_len, k_len, block_q, block_k, device)),
                             as_4d(self.b.block_states(q_len, k_len, block_q, block_k, device)))

    def __repr__(self) -> str:
        return f"({self.a!r} | {self.b!r})"


class Not(Mask):
    def __init__(self, a: Mask):
        self.a = a

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        return ~self.a.tile(qs, qe, ks, ke, q_len, k_len, device)

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        return FULL - self.a.block_states(q_len, k_len, block_q, block_k, device)

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        self.a.check(batch, heads, q_len, k_len)

    def tile_key(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int) -> Hashable | None:
        a = self.a.tile_key(qs, qe, ks, ke, q_len, k_len)
        return None if a is None else ("Not", a)

    def length(self) -> int | None:
        return self.a.length()

    def __repr__(self) -> str:
        return f"~{self.a!r}"


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

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        check_broadcast("mask", self.mask, (batch, heads, q_len, k_len))

    def _full(self, q_len: int, k_len: int) -> Tensor:
        m = self.mask.reshape(shape4("mask", self.mask))
        return m.expand(-1, -1, q_len, k_len)

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        return self._full(q_len, k_len)[..., qs:qe, ks:ke].to(device)

    # block_states: the default, exact from the tensor's tiles

    def length(self) -> int:
        return self.mask.shape[-1]

    def __repr__(self) -> str:
        return f"dense({tuple(self.mask.shape)})"


def as_mask(mask: Mask | Tensor) -> Mask:
    """A Mask from a Mask or a bool tensor; anything else is a TypeError naming what was received."""
    if isinstance(mask, Mask):
        return mask
    if isinstance(mask, Tensor):
        return Dense(mask)
    raise TypeError(f"mask must be a bool tensor or an attnkit.masks mask, got {type(mask).__name__}")
