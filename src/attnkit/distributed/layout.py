"""Which part of the sequence each process holds, and ``shard`` / ``gather`` between whole and parts.

The sequence (dimension 2 of (B, H, N, D)) is cut into equal chunks:

- ``"contiguous"``: P chunks; rank r holds chunk r.
- ``"zigzag"``: 2P chunks; rank r holds chunks r and 2P - 1 - r, in that order. Under a causal mask every
  rank then has the same number of visible (query, key) pairs: an early chunk and a late one::

      N = 8, P = 2   positions 0 1 | 2 3 | 4 5 | 6 7
                     chunk      0     1     2     3
                     rank       0     1     1     0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch
import torch.distributed as dist
from torch import Tensor

from .comm import Group, group_rank, group_size, guarded

LayoutName: TypeAlias = Literal["zigzag", "contiguous"]
LAYOUTS: tuple[LayoutName, ...] = ("zigzag", "contiguous")


def check_layout(layout: object) -> LayoutName:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(repr(x) for x in LAYOUTS)}, got {layout!r}")
    return layout


@dataclass(frozen=True)
class Layout:
    """The chunks of a sequence split over ``world`` processes by ``name``."""

    name: LayoutName
    world: int

    @property
    def per_rank(self) -> int:
        """Chunks each rank holds."""
        return 2 if self.name == "zigzag" else 1

    @property
    def n_chunks(self) -> int:
        return self.world * self.per_rank

    def chunks(self, rank: int) -> tuple[int, ...]:
        """The global chunk indices rank ``rank`` holds, in the order its shard stores them."""
        if self.name == "zigzag":
            return (rank, 2 * self.world - 1 - rank)
        return (rank,)

    def owner(self, chunk: int) -> tuple[int, int]:
        """(rank, position of the chunk in that rank's shard) of global chunk ``chunk``."""
        if self.name == "contiguous" or chunk < self.world:
            return chunk, 0
        return 2 * self.world - 1 - chunk, 1

    def check_length(self, name: str, length: int, *, whole: bool) -> None:
        """ValueError unless a sequence of ``length`` (the whole one, or one shard) splits into this layout's chunks."""
        unit = self.n_chunks if whole else self.per_rank
        if length % unit:
            what = "the sequence" if whole else "each shard"
            raise ValueError(
                f"{name}: layout={self.name!r} over {self.world} processes cuts the sequence into {self.n_chunks} "
                f"equal chunks, so {what} must have a length divisible by {unit}; got {length}"
                + (" (pad it, or use layout='contiguous')" if self.name == "zigzag" else " (pad it)"))

    def to_global(self, parts: list[Tensor], dim: int) -> Tensor:
        """The whole sequence from every rank's shard (``parts[r]``, in rank order) along ``dim``."""
        chunks: list[Tensor | None] = [None] * self.n_chunks
        for rank, part in enumerate(parts):
            for chunk, piece in zip(self.chunks(rank), part.chunk(self.per_rank, dim=dim)):
                chunks[chunk] = piece
        return torch.cat([c for c in chunks if c is not None], dim=dim)

    def to_shards(self, whole: Tensor, dim: int) -> list[Tensor]:
        """Every rank's shard of ``whole`` along ``dim`` (contiguous tensors), in rank order."""
        pieces = whole.chunk(self.n_chunks, dim=dim) if whole.shape[dim] else [whole] * self.n_chunks
        return [torch.cat([pieces[c] for c in self.chunks(rank)], dim=dim).contiguous() for rank in range(self.world)]


def _dim(x: Tensor, dim: int) -> int:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for a tensor of shape {tuple(x.shape)}")
    return dim % x.dim()


def shard(x: Tensor, *, layout: LayoutName, group: Group = None, dim: int = 2) -> Tensor:
    """This process's part of the whole tensor ``x`` along ``dim`` (default 2, the sequence of (B, H, N, D)).

    ``layout="zigzag"``: chunks r and 2P - 1 - r of 2P; ``"contiguous"``: chunk r of P. Every process passes
    the same ``x``; nothing is communicated. Returns a new contiguous tensor.

    Example (2 processes, rank 1)::

        >>> x = torch.arange(8).view(1, 1, 8, 1)
        >>> shard(x, layout="zigzag").flatten().tolist()
        [2, 3, 4, 5]
    """
    dim = _dim(x, dim)
    lay = Layout(check_layout(layout), group_size(group))
    lay.check_length("x", x.shape[dim], whole=True)
    return lay.to_shards(x, dim)[group_rank(group)]


def gather(x_part: Tensor, *, layout: LayoutName, group: Group = None, dim: int = 2) -> Tensor:
    """The whole tensor, on every process, from each process's part ``x_part`` laid out by ``layout``
    (the inverse of :func:`shard`). A collective: every process of ``group`` calls it. No gradient flows
    through it."""
    dim = _dim(x_part, dim)
    lay = Layout(check_layout(layout), group_size(group))
    lay.check_length("x_part", x_part.shape[dim], whole=False)
    shapes = all_shapes(x_part.shape, group, x_part.device)
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"gather: the parts differ in shape across processes: {shapes} (rank order)")
    x_part = x_part.detach().contiguous()
    parts = [torch.empty_like(x_part) for _ in range(lay.world)]
    guarded(lambda: dist.all_gather(parts, x_part, group=group), "gather's all_gather", group)
    return lay.to_global(parts, dim)


def all_shapes(shape: torch.Size | tuple[int, ...], group: Group, device: torch.device) -> list[tuple[int, ...]]:
    """Every rank's ``shape`` (all of one length), in rank order: one small all_gather (on ``device``: NCCL
    takes only GPU tensors)."""
    mine = torch.tensor(list(shape), dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(group_size(group))]
    guarded(lambda: dist.all_gather(out, mine, group=group), "the shape check's all_gather", group)
    return [tuple(int(n) for n in t.tolist()) for t in out]


__all__ = ["LAYOUTS", "Layout", "LayoutName", "check_layout", "gather", "shard", "all_shapes"]
