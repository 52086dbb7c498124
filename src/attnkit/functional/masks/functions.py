"""A mask from one function, as FlexAttention's ``mask_mod``: ``fn(b, h, q_idx, kv_idx) -> bool``.

attnkit calls the function on broadcast index tensors (no compiler, no vmap), so the function must be
written with tensor operations (``&``, ``|``, ``torch.where``, indexing a captured tensor) rather than
Python ``if``/``and`` on its arguments, which is what FlexAttention's mask_mods are too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..checks import check_int
from .base import Device, Mask, tile_states

MaskFunction = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class FunctionMask(Mask):
    """See :func:`from_function`."""

    def __init__(self, fn: MaskFunction, batch: int | None, heads: int | None, name: str | None):
        if not callable(fn):
            raise TypeError(f"mask function must be callable as fn(b, h, q_idx, kv_idx), got {type(fn).__name__}")
        self.fn = fn
        self.batch = None if batch is None else check_int("batch", batch)
        self.heads = None if heads is None else check_int("heads", heads)
        self.name = name or getattr(fn, "__name__", "mask_mod")
        self._states: dict[tuple[int, int, int, int, str], Tensor] = {}  # per (q_len, k_len, block_q, block_k, device)

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        for what, mine, theirs in (("batch", self.batch, batch), ("heads", self.heads, heads)):
            if mine is not None and mine not in (1, theirs):
                raise ValueError(f"mask function {self.name!r} was built for {what}={mine} but the input has "
                                 f"{what}={theirs}")

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        b = torch.arange(self.batch or 1, device=device)[:, None, None, None]  # (b, 1, 1, 1)
        h = torch.arange(self.heads or 1, device=device)[None, :, None, None]  # (1, h, 1, 1)
        q = torch.arange(qs, qe, device=device)[:, None]  # (nq, 1) query rows
        kv = torch.arange(ks, ke, device=device)[None, :]  # (1, nk)
        out = self.fn(b, h, q, kv)
        if not isinstance(out, Tensor) or out.dtype != torch.bool:
            got = out.dtype if isinstance(out, Tensor) else type(out).__name__
            raise TypeError(f"mask function {self.name!r} must return a bool tensor (True = may attend), got {got}")
        try:
            return torch.broadcast_to(out, (b.shape[0], h.shape[1], qe - qs, ke - ks))
        except RuntimeError:
            raise ValueError(f"mask function {self.name!r} returned shape {tuple(out.shape)}, which does not "
                             f"broadcast to (b, h, q, kv) = ({b.shape[0]}, {h.shape[1]}, {qe - qs}, {ke - ks})"
                             ) from None

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        key = (q_len, k_len, block_q, block_k, str(torch.device(device or "cpu")))
        if key not in self._states:  # exact, from every entry once per length and tiling
            self._states[key] = tile_states(self.tile, q_len, k_len, block_q, block_k, device)
        return self._states[key]

    def __repr__(self) -> str:
        return f"from_function({self.name})"


def from_function(fn: MaskFunction, *, batch: int | None = None, heads: int | None = None,
                  name: str | None = None) -> Mask:
    """A mask from ``fn(b, h, q_idx, kv_idx) -> bool`` (True = may attend), FlexAttention's ``mask_mod``.

    ``fn`` is called on index tensors that broadcast against each other: ``b`` (batch, 1, 1, 1),
    ``h`` (1, heads, 1, 1), ``q_idx`` (n_q, 1) and ``kv_idx`` (1, n_k), and returns a bool tensor that
    broadcasts to (batch, heads, n_q, n_k). ``q_idx`` is the query's row, 0 .. Nq - 1, as in FlexAttention
    (attnkit's own masks use bottom-right positions ``q_idx + Nk - Nq`` when Nq != Nk). ``batch`` and
    ``heads`` (None: the function does not depend on them, and gets 0) fix the sizes ``b`` and ``h`` run over.

    The result is a full :class:`Mask`: every kernel takes it, it composes with ``& | ~`` and prints. Its tile
    states are exact, computed from every entry the first time a length is used (cached on the mask), so
    the tiled kernel skips the tiles the function hides.

    Example:
        >>> doc = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
        >>> def same_doc_causal(b, h, q_idx, kv_idx):
        ...     return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)
        >>> print(from_function(same_doc_causal).to_string(8, block=1))
        from_function(same_doc_causal)  q_len=8 k_len=8 block=1
        █·······
        ██······
        ███·····
        ···█····
        ···██···
        ·····█··
        ·····██·
        ·····███
    """
    return FunctionMask(fn, batch, heads, name)


__all__ = ["FunctionMask", "MaskFunction", "from_function"]
