"""Masks and biases of the whole sequence, seen from one block of it.

A process computes attention between one block of queries and one block of keys at a time: rows ``q0 ..
q0 + nq`` and keys ``k0 .. k0 + nk`` of the global (Nq, Nk) problem, and under Ulysses only heads ``h0 .. h1``.
The kernels ask a mask for its tiles in the block's own coordinates; :func:`offset_mask` and
:func:`offset_bias` answer with the global mask's tiles at the global positions, so causal (bottom-right,
from the global lengths), windows, documents, padding, any structured mask and positional biases such as ALiBi
mean exactly what they mean on the whole sequence.

Tile states come from the global mask's own ``block_states`` (computed from its parameters, once per call and
tiling, then sliced) where the block starts on the tiling's grid, else exactly from the block's tiles: the
tiled kernel skips the same empty tiles it would skip on the whole sequence.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..functional.bias import Bias, ScoreFunction, TensorBias
from ..functional.masks import And, Device, Mask, Not
from ..functional.masks.base import as_4d, tile_states


@dataclass(frozen=True)
class Region:
    """Query rows q0 .. q0 + nq and keys k0 .. k0 + nk of a global (Nq, Nk) problem, and heads h0 .. h1 of H
    (``heads`` None: all)."""

    q0: int
    k0: int
    Nq: int
    Nk: int
    heads: tuple[int, int] | None = None

    def rows(self, q_len: int) -> slice:
        return slice(self.q0, self.q0 + q_len)

    def keys(self, k_len: int) -> slice:
        return slice(self.k0, self.k0 + k_len)

    def head_slice(self, t: Tensor, dim: int = 1) -> Tensor:
        """``t`` restricted to this region's heads along ``dim`` where it has one entry per head (else broadcast)."""
        if self.heads is None or t.shape[dim] == 1:
            return t
        return t.narrow(dim, self.heads[0], self.heads[1] - self.heads[0])


class OffsetMask(Mask):
    """The global mask ``base`` on one :class:`Region`. ``states`` caches the global block states per tiling
    (shared by every region of one call)."""

    def __init__(self, base: Mask, region: Region, states: dict[Hashable, Tensor]):
        self.base, self.region, self.states = base, region, states

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        r = self.region
        t = self.base.tile(r.q0 + qs, r.q0 + qe, r.k0 + ks, r.k0 + ke, r.Nq, r.Nk, device)
        return r.head_slice(as_4d(t))

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        r = self.region
        own = type(self.base).block_states is not Mask.block_states  # computed from parameters, not from tiles
        if not own or r.q0 % block_q or r.k0 % block_k:
            return tile_states(self.tile, q_len, k_len, block_q, block_k, device)
        key = (block_q, block_k, str(device))
        if key not in self.states:
            self.states[key] = as_4d(self.base.block_states(r.Nq, r.Nk, block_q, block_k, device))
        i, j = r.q0 // block_q, r.k0 // block_k
        # a last block cut short here is a whole block of the global grid, a superset: its state stays true
        states = self.states[key][..., i:i + -(-q_len // block_q), j:j + -(-k_len // block_k)]
        return r.head_slice(states)

    def tile_key(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int) -> Hashable | None:
        r = self.region
        return self.base.tile_key(r.q0 + qs, r.q0 + qe, r.k0 + ks, r.k0 + ke, r.Nq, r.Nk)

    def __repr__(self) -> str:
        r = self.region
        heads = "" if r.heads is None else f", heads {r.heads[0]}:{r.heads[1]}"
        return f"{self.base!r}[rows from {r.q0}, keys from {r.k0}{heads}]"


def offset_mask(mask: Mask | None, region: Region, states: dict[int, dict[Hashable, Tensor]]) -> Mask | None:
    """``mask`` (global) seen from ``region``; compositions are taken apart so that each part keeps its own
    block states. ``states`` holds each part's state cache, by id, for the call."""
    if mask is None:
        return None
    if isinstance(mask, And):  # And and Or
        a, b = offset_mask(mask.a, region, states), offset_mask(mask.b, region, states)
        assert a is not None and b is not None
        return type(mask)(a, b)
    if isinstance(mask, Not):
        a = offset_mask(mask.a, region, states)
        assert a is not None
        return Not(a)
    return OffsetMask(mask, region, states.setdefault(id(mask), {}))


class OffsetBias(Bias):
    """A structured global bias (ALiBi, any ``Bias`` with a ``tile``) on one :class:`Region`."""

    def __init__(self, base: Bias, region: Region):
        self.base, self.region = base, region

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None,
             dtype: torch.dtype = torch.float32) -> Tensor:
        r = self.region
        t = self.base.tile(r.q0 + qs, r.q0 + qe, r.k0 + ks, r.k0 + ke, r.Nq, r.Nk, device, dtype)
        return r.head_slice(as_4d(t))

    def __repr__(self) -> str:
        return f"{self.base!r}[rows from {self.region.q0}, keys from {self.region.k0}]"


def bias_block(tensor4: Tensor, region: Region, q_len: int, k_len: int) -> Tensor:
    """The part of a global bias tensor (b, h, Nq|1, Nk|1) that ``region`` of q_len x k_len reads (a view)."""
    t = region.head_slice(tensor4)
    if t.shape[2] > 1:
        t = t[:, :, region.rows(q_len)]
    if t.shape[3] > 1:
        t = t[..., region.keys(k_len)]
    return t


def offset_bias(bias: Bias | None, region: Region, q_len: int, k_len: int) -> Bias | Tensor | None:
    """What to pass as ``bias=`` for ``region``: the block of a tensor bias (a tensor), or a structured bias's view."""
    if bias is None:
        return None
    if isinstance(bias, TensorBias):
        return bias_block(bias.tensor4, region, q_len, k_len)
    if isinstance(bias, ScoreFunction):
        raise AssertionError("score functions are refused before any block is computed")
    return OffsetBias(bias, region)


__all__ = ["Region", "OffsetMask", "OffsetBias", "offset_mask", "offset_bias", "bias_block"]
