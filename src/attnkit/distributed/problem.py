"""One context-parallel call as every process sees it: the global sizes and options, which (query chunk, key chunk)
pairs hold anything visible, and the attention of one block through the functional kernels.

The schedule asks the global mask for its state on a grid of whole chunks (``block_layout`` with one tile per
chunk pair: computed from the mask's parameters for the built-in masks) and keeps the pairs that are not EMPTY for
some batch entry and head. A rank needs another rank's keys only if one of its query chunks sees one of that rank's
key chunks: a sliding window needs its neighbours only (a halo exchange), packed documents only the ranks their
documents span, causal attention with zigzag chunks every rank but for half the pairs.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..functional import attention as local_attention
from ..functional.bias import Bias
from ..functional.masks import EMPTY, Mask
from ..functional.masks.base import shape4
from ..functional.registry import Kernel
from ..functional.request import softmax_dtype
from .comm import Group
from .layout import Layout
from .views import Region, bias_block, offset_bias, offset_mask


@dataclass(frozen=True, eq=False)
class Problem:
    """The global problem q (B, H, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv) and its options, and this rank."""

    shape: tuple[int, int, int, int, int, int, int]  # (B, H, Hkv, Nq, Nk, D, Dv), whole sequence
    layout: Layout
    rank: int
    group: Group
    mask: Mask | None  # mask, causal and window combined, in global positions
    keep: Mask | None  # the dropout keep-mask (global rows and keys), None without dropout
    bias: Bias | None
    scale: float
    softcap: float | None
    dropout: float
    kernel: str | Kernel
    dtype: torch.dtype  # of q, k, v
    states: dict[int, dict[Hashable, Tensor]] = field(default_factory=dict)  # views' block-state caches
    visible: list[list[bool]] = field(default_factory=list)  # [query chunk][key chunk]: anything visible

    def __post_init__(self) -> None:
        object.__setattr__(self, "visible", self._visible_chunks())

    @property
    def world(self) -> int:
        return self.layout.world

    @property
    def stats(self) -> torch.dtype:
        """Merging dtype: float32, float64 for float64 inputs."""
        return softmax_dtype(self.dtype)

    @property
    def chunk_q(self) -> int:
        return self.shape[3] // self.layout.n_chunks

    @property
    def chunk_k(self) -> int:
        return self.shape[4] // self.layout.n_chunks

    @property
    def kept(self) -> Mask | None:
        """What the dropped-out pass attends to: the mask and the keep-mask."""
        if self.keep is None:
            return self.mask
        return self.keep if self.mask is None else self.mask & self.keep

    def _visible_chunks(self) -> list[list[bool]]:
        n = self.layout.n_chunks
        if self.chunk_q == 0 or self.chunk_k == 0:
            return [[False] * n for _ in range(n)]
        if self.mask is None:
            return [[True] * n for _ in range(n)]
        _, _, _, Nq, Nk, _, _ = self.shape
        states = self.mask.block_layout(Nq, Nk, (self.chunk_q, self.chunk_k))  # (b, h, n, n) int8
        return (states != EMPTY).flatten(0, 1).any(dim=0).tolist()

    def pairs(self, q_rank: int, k_rank: int) -> list[tuple[int, int]]:
        """(a, b): chunk a of ``q_rank``'s queries sees something of chunk b of ``k_rank``'s keys (shard positions)."""
        chunks_q, chunks_k = self.layout.chunks(q_rank), self.layout.chunks(k_rank)
        return [(a, b) for a, qc in enumerate(chunks_q) for b, kc in enumerate(chunks_k) if self.visible[qc][kc]]

    def needs(self, q_rank: int, k_rank: int) -> bool:
        """Whether ``q_rank``'s queries see any of ``k_rank``'s keys."""
        return bool(self.pairs(q_rank, k_rank))

    def region(self, a: int, k_rank: int, b: int) -> Region:
        """The global rows and keys of this rank's query chunk a against ``k_rank``'s key chunk b."""
        _, _, _, Nq, Nk, _, _ = self.shape
        q0 = self.layout.chunks(self.rank)[a] * self.chunk_q
        k0 = self.layout.chunks(k_rank)[b] * self.chunk_k
        return Region(q0, k0, Nq, Nk)

    def rows(self, a: int) -> slice:
        """Chunk a's rows in this rank's query shard."""
        return slice(a * self.chunk_q, (a + 1) * self.chunk_q)

    def keys(self, b: int) -> slice:
        return slice(b * self.chunk_k, (b + 1) * self.chunk_k)


def weight(lse: Tensor, total: Tensor) -> Tensor:
    """exp(lse - total): a block's share of the row's whole softmax; 0 where total is -inf (a row that sees nothing),
    with finite gradients there too (the inputs are sanitized before the exp, not the result after it)."""
    empty = total == float("-inf")
    return torch.exp(torch.where(empty, float("-inf"), lse) - torch.where(empty, 0.0, total))


def block_attention(p: Problem, q: Tensor, k: Tensor, v: Tensor, region: Region, bias: Tensor | Bias | None
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """One block through the functional kernels: (out (B, H, nq, Dv), lse (B, H, nq)) over the probabilities dropout
    keeps (all of them without dropout), and the lse over all probabilities (the same tensor without dropout).

    With dropout, softmax over the kept entries renormalizes them; the whole row's output is recovered as
    out · exp(lse_kept - lse_all) / (1 - p), summed over blocks (see ``ring.merge``)."""
    def run(v: Tensor, mask: Mask | None) -> tuple[Tensor, Tensor]:
        return local_attention(q, k, v, mask=offset_mask(mask, region, p.states), bias=bias, scale=p.scale,
                               softcap=p.softcap, return_lse=True, kernel=p.kernel)

    out, lse = run(v, p.kept)
    if p.keep is None:
        return out, lse, lse
    _, lse_all = run(v[..., :0], p.mask)
    return out, lse, lse_all


def block_bias(p: Problem, bias_tensor: Tensor | None, region: Region, q_len: int, k_len: int
               ) -> Tensor | Bias | None:
    """The ``bias=`` of a block: the global tensor's block (``bias_tensor``, which may be a gradient leaf), or a
    structured bias's view."""
    if bias_tensor is not None:
        t4 = bias_tensor.reshape(shape4("bias", bias_tensor))
        return bias_block(t4, region, q_len, k_len)
    return offset_bias(p.bias, region, q_len, k_len)


__all__ = ["Problem", "block_attention", "block_bias"]
