"""KV caches for decoding: prefill with a prompt, then append one token per step.

Three self-attention caches share one interface, ``update(k, v) -> CacheView``:

- ``StaticCache(max_len)``: one buffer of ``max_len`` slots allocated at the first update; writing past
  it raises. Nothing is reallocated while decoding.
- ``GrowingCache()``: no limit; the buffer doubles when full (amortized O(1) per token).
- ``RingCache(size)``: the ``size`` most recent tokens for sliding-window attention; wraps by design.

``ContextCache`` keeps a cross-attention layer's projected keys and values, computed once per source.

Caches are for inference: use them under ``torch.no_grad()``. One cache object serves one layer; models
hand out a list with one per layer (e.g. ``GPT.new_cache``). Sequences in a batch advance together, so
left-pad prompts of different lengths and pass the padding as ``key_padding`` (see MultiHeadAttention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..functional.checks import check_int


_POSITIONS: dict[torch.device, Tensor] = {}


def stream_positions(n: int, device: torch.device) -> Tensor:
    """0 .. n-1 (long) on ``device``: a view of one shared table grown by doubling, so that every layer of every
    decoding step does not build its own. Read-only: do not write into it."""
    table = _POSITIONS.get(device)
    if table is None or table.shape[0] < n:
        table = _POSITIONS[device] = torch.arange(max(n, 2 * (0 if table is None else table.shape[0]), 1024),
                                                  device=device)
    return table[:n]


@dataclass
class CacheView:
    """The keys and values to attend over after an update."""

    k: Tensor  # (B, Hkv, Nk, D)
    v: Tensor  # (B, Hkv, Nk, Dv)
    positions: Tensor  # (Nk,) stream position of each key; -1 marks an empty slot
    ordered: bool  # positions == 0..Nk-1: causal/window masks align bottom-right as usual


def _check_new(cache: object, buffer: Tensor | None, k: Tensor, v: Tensor) -> None:
    if k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"{type(cache).__name__}.update expects k (B, Hkv, N, D) and v (B, Hkv, N, Dv) with "
                         f"equal B, Hkv, N; got {tuple(k.shape)} and {tuple(v.shape)}")
    if buffer is not None and (buffer.shape[:2] != k.shape[:2] or buffer.shape[3] != k.shape[3]):
        raise ValueError(f"{type(cache).__name__} holds (B, Hkv, ·, D) = {tuple(buffer.shape[:2])}, "
                         f"{buffer.shape[3]} but got keys {tuple(k.shape)}; call reset() for a new batch")


class _Stored:
    """What every cache holds: keys and values (None until the first update), batch first."""

    k: Tensor | None
    v: Tensor | None

    def _stored(self) -> tuple[Tensor, Tensor]:
        """Keys and values, once an update has set both (they are always set and cleared together)."""
        assert self.k is not None and self.v is not None, "nothing stored yet"
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam search)."""
        if self.k is not None:
            k, v = self._stored()
            self.k, self.v = k.index_select(0, index), v.index_select(0, index)


class _Buffered(_Stored):
    """Keys and values stored in order in preallocated buffers (B, Hkv, capacity, D)."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0  # tokens stored = stream position of the next token

    def reset(self) -> None:
        self.k = self.v = None
        self.length = 0

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` tokens (all of them when it holds fewer): the next update writes after them.
        A conversation's next turn keeps the tokens its prompt shares with what the cache holds."""
        check_int("length", length, minimum=0)
        self.length = min(self.length, length)

    def _allocate(self, k: Tensor, v: Tensor, capacity: int) -> None:
        new_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
        new_v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
        if self.k is not None and self.length:
            old_k, old_v = self._stored()
            new_k[:, :, : self.length] = old_k[:, :, : self.length]
            new_v[:, :, : self.length] = old_v[:, :, : self.length]
        self.k, self.v = new_k, new_v

    def _room(self, k: Tensor, v: Tensor) -> None:
        """Check the new keys and values (B, Hkv, N, D) against what is stored and make room for them."""
        raise NotImplementedError

    def update(self, k: Tensor, v: Tensor) -> CacheView:
        self._room(k, v)
        return self._append(k, v)

    def reserve(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """Make room for N new tokens shaped as ``k`` and ``v`` (B, Hkv, N, D; only their shapes, dtype and device
        are read) as ``update`` would, without writing them: the key and value buffers (B, Hkv, capacity, D) and the
        first slot to write. A C decoding step writes them itself, then calls ``advance(N)``."""
        self._room(k, v)
        k_buf, v_buf = self._stored()
        return k_buf, v_buf, self.length

    def advance(self, n: int) -> None:
        """Count the ``n`` tokens written into the slots ``reserve`` returned as stored."""
        self.length += n

    def _append(self, k: Tensor, v: Tensor) -> CacheView:
        end = self.length + k.shape[2]
        k_buf, v_buf = self._stored()
        k_buf[:, :, self.length: end] = k
        v_buf[:, :, self.length: end] = v
        self.length = end
        return CacheView(k_buf[:, :, :end], v_buf[:, :, :end], stream_positions(end, k.device), ordered=True)


class StaticCache(_Buffered):
    """A preallocated cache of ``max_len`` tokens; writing past it raises a ValueError."""

    def __init__(self, max_len: int):
        super().__init__()
        check_int("max_len", max_len)
        self.max_len = max_len

    def _room(self, k: Tensor, v: Tensor) -> None:
        _check_new(self, self.k, k, v)
        if self.length + k.shape[2] > self.max_len:
            raise ValueError(f"cache overflow: StaticCache(max_len={self.max_len}) holds {self.length} tokens and "
                             f"cannot take {k.shape[2]} more; build it with a larger max_len")
        if self.k is None:
            self._allocate(k, v, self.max_len)


class GrowingCache(_Buffered):
    """A cache without a length limit; its buffer doubles when full."""

    def _room(self, k: Tensor, v: Tensor) -> None:
        _check_new(self, self.k, k, v)
        needed = self.length + k.shape[2]
        if self.k is None or needed > self.k.shape[2]:
            capacity = 16 if self.k is None else self.k.shape[2]
            while capacity < needed:
                capacity *= 2
            self._allocate(k, v, capacity)


class RingCache(_Stored):
    """The ``size`` most recent tokens, for sliding-window attention whose left window is at most ``size``.

    ``update`` returns the ring's slots (in slot order, not stream order) followed by the new tokens, with
    each key's stream position, so MultiHeadAttention masks by position; then the newest ``size`` tokens
    overwrite the oldest slots.
    """

    def __init__(self, size: int):
        check_int("size", size)
        self.size = size
        self.reset()

    def reset(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.slot_positions: Tensor | None = None  # (size,) stream position held by each slot, -1 = empty
        self.length = 0

    def update(self, k: Tensor, v: Tensor) -> CacheView:
        _check_new(self, self.k, k, v)
        n = k.shape[2]
        new_positions = torch.arange(self.length, self.length + n, device=k.device)
        if self.k is None:
            view = CacheView(k, v, new_positions, ordered=True)  # nothing cached yet: the keys are in order
            self._allocate(k, v)
        else:
            ring_k, ring_v, slot_positions = self._ring()
            view = CacheView(torch.cat((ring_k, k), dim=2), torch.cat((ring_v, v), dim=2),
                             torch.cat((slot_positions, new_positions)), ordered=False)
        self._write(k, v, new_positions)
        self.length += n
        return view

    def _allocate(self, k: Tensor, v: Tensor) -> None:
        self.k = k.new_zeros(k.shape[0], k.shape[1], self.size, k.shape[3])
        self.v = v.new_zeros(v.shape[0], v.shape[1], self.size, v.shape[3])
        self.slot_positions = torch.full((self.size,), -1, dtype=torch.long, device=k.device)

    def _ring(self) -> tuple[Tensor, Tensor, Tensor]:
        ring_k, ring_v = self._stored()
        assert self.slot_positions is not None  # allocated together with k and v
        return ring_k, ring_v, self.slot_positions

    def _write(self, k: Tensor, v: Tensor, new_positions: Tensor) -> None:
        """Overwrite the oldest slots with the newest ``size`` of the new tokens."""
        n = k.shape[2]
        keep = min(n, self.size)  # only the newest `size` tokens can still be seen later
        slots = new_positions[n - keep:] % self.size
        ring_k, ring_v, slot_positions = self._ring()
        ring_k[:, :, slots] = k[:, :, n - keep:]
        ring_v[:, :, slots] = v[:, :, n - keep:]
        slot_positions[slots] = new_positions[n - keep:]


class ContextCache(_Stored):
    """A cross-attention layer's keys and values for one source, projected once and reused every step."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def filled(self) -> bool:
        return self.k is not None

    def keys_values(self) -> tuple[Tensor, Tensor]:
        """The stored keys (B, Hkv, M, D) and values (B, Hkv, M, Dv); only once ``filled``."""
        return self._stored()

    def store(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v = k, v

    def reset(self) -> None:
        self.k = self.v = None


KVCache = StaticCache | GrowingCache | RingCache
CacheKind = Literal["static", "growing", "ring"]


def make_cache(kind: CacheKind, *, max_len: int | None = None, size: int | None = None) -> KVCache:
    """One layer's cache: ``"static"`` needs ``max_len``, ``"ring"`` needs ``size``."""
    if kind == "static":
        if max_len is None:
            raise ValueError("a static cache needs max_len (the most tokens it will hold)")
        return StaticCache(max_len)
    if kind == "growing":
        return GrowingCache()
    if kind == "ring":
        if size is None:
            raise ValueError("a ring cache needs size (the sliding window it serves)")
        return RingCache(size)
    raise ValueError(f"cache kind must be 'static', 'growing' or 'ring', got {kind!r}")


__all__ = ["CacheView", "StaticCache", "GrowingCache", "RingCache", "ContextCache", "KVCache", "make_cache"]
