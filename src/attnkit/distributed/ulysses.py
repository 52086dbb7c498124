"""DeepSpeed-Ulysses: an all-to-all turns sequence shards into head shards, any local kernel runs on the whole
sequence for H / P heads, and a second all-to-all turns the output back into sequence shards.

    q (B, H, N/P, D) on each rank  --all-to-all-->  (B, H/P, N, D)  --attention-->  (B, H/P, N, Dv)
                                                                     --all-to-all-->  (B, H, N/P, Dv)

Each all-to-all moves (P - 1)/P of its tensor. H must divide by P (otherwise ring attention serves); k and v
travel with their own head count when Hkv divides by P too, else they are repeated to H heads first. Autograd
runs through it: the backward of one all-to-all is the other. Masks and biases are seen on rank r's heads
(``Region.heads``), dropout's keep-mask at global heads and positions, so the result equals the ring's.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ..functional import attention as local_attention
from ..functional.bias import TensorBias
from ..functional.kernels.common import repeat_kv
from .comm import all_reduce_sum, all_to_all
from .problem import Problem, block_attention, weight
from .profile import Hop, record
from .views import Region, bias_block, offset_bias, offset_mask


def check_heads(heads: int, world: int) -> None:
    if heads % world:
        raise ValueError(f"strategy='ulysses' splits the H={heads} query heads over {world} processes, which needs H "
                         f"divisible by {world}; use strategy='ring', which splits the sequence only")


def seq_to_heads(p: Problem, x: Tensor) -> Tensor:
    """(B, h, n, d) sequence shard of every head -> (B, h/P, N, d) whole sequence of this rank's heads."""
    began = time.perf_counter()
    parts = all_to_all(list(x.chunk(p.world, dim=1)), p.group, "ulysses all-to-all (sequence to heads)")
    _record(x, began)
    return p.layout.to_global(parts, dim=2)


def heads_to_seq(p: Problem, y: Tensor) -> Tensor:
    """The inverse of :func:`seq_to_heads`: (B, h/P, N, d) -> (B, h, n, d)."""
    began = time.perf_counter()
    parts = all_to_all(p.layout.to_shards(y, dim=2), p.group, "ulysses all-to-all (heads to sequence)")
    _record(y, began)
    return torch.cat(parts, dim=1)


def _record(x: Tensor, began: float) -> None:
    moved = x.numel() * x.element_size()  # this rank's tensor, all but 1/P of it leaves
    record(Hop("ulysses", "all-to-all", 0, -1, 0, 0.0, 0.0, time.perf_counter() - began, moved, moved))


class _AllToAll(torch.autograd.Function):
    """Sequence shards -> head shards (``to_heads``) or back; the backward is the other direction."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, p: Problem, to_heads: bool) -> Tensor:
        ctx.problem, ctx.to_heads = p, to_heads
        return seq_to_heads(p, x) if to_heads else heads_to_seq(p, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        move = heads_to_seq if ctx.to_heads else seq_to_heads
        return move(ctx.problem, grad.contiguous()), None, None


class _SumGradOverRanks(torch.autograd.Function):
    """The identity; its backward sums the gradient over the group (a tensor every rank holds whole, such as a
    bias, gets each rank's heads' share of its gradient)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, p: Problem) -> Tensor:
        ctx.problem = p
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return all_reduce_sum(grad.contiguous().clone(), ctx.problem.group, "the bias gradient's all_reduce"), None


def ulysses_attention(p: Problem, q: Tensor, k: Tensor, v: Tensor, return_lse: bool) -> tuple[Tensor, Tensor | None]:
    """out (B, H, nq, Dv) and, when asked, lse (B, H, nq) for this rank's sequence shard."""
    B, H, Hkv, Nq, Nk, _, _ = p.shape
    check_heads(H, p.world)
    if Hkv % p.world:
        k, v = repeat_kv(k, H // Hkv), repeat_kv(v, H // Hkv)
    heads = H // p.world
    region = Region(0, 0, Nq, Nk, heads=(p.rank * heads, (p.rank + 1) * heads))
    qh, kh, vh = (_AllToAll.apply(t.contiguous(), p, True) for t in (q, k, v))  # (B, H/P, N, d)
    bias: Any = None
    if isinstance(p.bias, TensorBias):
        t4 = p.bias.tensor4 if not p.bias.tensor.requires_grad else _SumGradOverRanks.apply(p.bias.tensor4, p)
        bias = bias_block(t4, region, Nq, Nk)
    elif p.bias is not None:
        bias = offset_bias(p.bias, region, Nq, Nk)
    if p.keep is None and not return_lse:  # no log-sum-exp needed: any local kernel serves (sdpa included)
        out = local_attention(qh, kh, vh, mask=offset_mask(p.kept, region, p.states), bias=bias, scale=p.scale,
                              softcap=p.softcap, kernel=p.kernel)
        return _AllToAll.apply(out.contiguous(), p, False), None
    out, lse, lse_all = block_attention(p, qh, kh, vh, region, bias)
    if p.keep is not None:  # the kept probabilities renormalized: back to the whole row's (see block_attention)
        scale = weight(lse.to(lse_all.dtype), lse_all) / (1 - p.dropout)
        out = (out.to(scale.dtype) * scale[..., None]).to(q.dtype)
    out = _AllToAll.apply(out.contiguous(), p, False)
    if not return_lse:
        return out, None
    return out, _AllToAll.apply(lse_all.contiguous()[..., None], p, False)[..., 0]


__all__ = ["ulysses_attention", "seq_to_heads", "heads_to_seq", "check_heads"]
