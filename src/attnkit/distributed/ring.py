"""Ring attention: every process keeps its queries; the keys and values visit it hop by hop.

At hop t rank r works on the keys of rank r - t (mod P), which that rank sends straight to it; the transfer of hop
t + 1 is in flight (``batch_isend_irecv``) while hop t is computed. Hops whose (query chunk, key chunk) pairs are
all empty (``Problem.pairs``) are neither sent nor computed. Only k and v travel, with their own (GQA) head count.

Forward: each block goes through a functional kernel with ``return_lse=True``; the blocks of a row merge through
their log-sum-exps in float32 (float64 for float64 inputs)::

    L   = logsumexp over blocks of lse_all_h                     (B, H, nq)
    out = sum over blocks of exp(lse_h - L) / (1 - p) * out_h    (lse_h = lse_all_h without dropout)

Backward, hop by hop in the same order: each block is recomputed by the kernel with autograd on, and
differentiated against the global statistics saved by the forward — dL/dout_h = exp(lse_h - L) / (1 - p) · dO and
dL/dlse_h from the merge above (the kernels' log-sum-exp is differentiable) — so dq stays here and the block's
dk, dv go back to the rank that owns those keys, overlapped with the next hop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..functional.masks.base import shape4
from .comm import TAG_DKV, TAG_KV, Transfer, all_reduce_sum, exchange
from .problem import Problem, block_attention, block_bias, weight
from .profile import Hop, record
from .views import bias_block

NEG_INF = float("-inf")


def merge(acc: Tensor, total: Tensor, out: Tensor, lse: Tensor, lse_all: Tensor) -> None:
    """Fold one block into the running (acc (B, H, n, Dv), total (B, H, n)), in place; acc stays normalized by
    exp(total): acc = sum of exp(lse_h - total) · out_h."""
    new_total = torch.logaddexp(total, lse_all.to(total.dtype))
    acc.mul_(weight(total, new_total)[..., None]).add_(weight(lse.to(total.dtype), new_total)[..., None] * out)
    total.copy_(new_total)


def kv_hops(p: Problem, k: Tensor, v: Tensor, phase: str) -> Iterator[tuple[int, int, Tensor | None, Tensor | None]]:
    """(hop, source rank, k, v) for hops 0 .. P - 1; k and v are None where this rank needs nothing of the source.
    Hop t + 1's transfer starts before hop t is handed out, so it overlaps with the caller's compute."""
    P, r = p.world, p.rank

    def start(t: int) -> Transfer | None:
        if t >= P:
            return None
        src, dst = (r - t) % P, (r + t) % P
        recv = [torch.empty_like(k), torch.empty_like(v)] if p.needs(r, src) else []
        send = [k, v] if p.needs(dst, r) else []
        return exchange(send, dst, recv, src, group=p.group, tag=TAG_KV,
                        what=f"ring {phase} hop {t} (k/v from rank {src}, to rank {dst})")

    pending = start(1)
    mine = p.needs(r, r)
    for t in range(P):
        waited = 0.0
        if t == 0:
            kv: tuple[Tensor | None, Tensor | None] = (k, v) if mine else (None, None)
            sent = received = 0
        else:
            assert pending is not None
            transfer, pending = pending, start(t + 1)
            began = time.perf_counter()
            got = transfer.wait()
            waited = time.perf_counter() - began
            kv = (got[0], got[1]) if got else (None, None)
            sent, received = transfer.bytes_sent, transfer.bytes_received
        began, cpu = time.perf_counter(), time.thread_time()
        yield t, (r - t) % P, kv[0], kv[1]
        blocks = len(p.pairs(r, (r - t) % P))
        record(Hop("ring", phase, t, (r - t) % P, blocks, time.perf_counter() - began, time.thread_time() - cpu,
                   waited, sent, received))


def ring_forward(p: Problem, q: Tensor, k: Tensor, v: Tensor, bias_tensor: Tensor | None) -> tuple[Tensor, Tensor]:
    """(out (B, H, nq, Dv) in the merging dtype, lse (B, H, nq)) of this rank's queries over the whole sequence."""
    B, H, _, _, _, _, Dv = p.shape
    nq = q.shape[2]
    acc = torch.zeros(B, H, nq, Dv, dtype=p.stats, device=q.device)
    total = torch.full((B, H, nq), NEG_INF, dtype=p.stats, device=q.device)
    for _, src, kb, vb in kv_hops(p, k, v, "forward"):
        if kb is None or vb is None:
            continue
        for a, b in p.pairs(p.rank, src):
            region = p.region(a, src, b)
            rows, keys = p.rows(a), p.keys(b)
            bias = block_bias(p, bias_tensor, region, p.chunk_q, p.chunk_k)
            out, lse, lse_all = block_attention(p, q[:, :, rows], kb[:, :, keys], vb[:, :, keys], region, bias)
            merge(acc[:, :, rows], total[:, :, rows], out.to(p.stats), lse, lse_all)
    if p.dropout:
        acc /= 1 - p.dropout
    return acc, total


class _Grads:
    """The gradients one rank accumulates in backward, in the merging dtype."""

    def __init__(self, p: Problem, q: Tensor, k: Tensor, v: Tensor, bias_tensor: Tensor | None, need_bias: bool):
        self.dq = torch.zeros(q.shape, dtype=p.stats, device=q.device)
        self.dk = torch.zeros(k.shape, dtype=p.stats, device=q.device)
        self.dv = torch.zeros(v.shape, dtype=p.stats, device=q.device)
        self.dbias = None
        if need_bias and bias_tensor is not None:
            self.dbias = torch.zeros(bias_tensor.shape, dtype=p.stats, device=q.device)


def _block_backward(p: Problem, q: Tensor, k: Tensor, v: Tensor, bias_tensor: Tensor | None, need_bias: bool,
                    rows: tuple[Tensor, Tensor, Tensor, Tensor], a: int, src: int, b: int
                    ) -> tuple[Tensor | None, ...]:
    """(dq, dk, dv, dbias-block) of block (a, src, b): recomputed with autograd, differentiated against the global
    statistics. ``rows``: the chunk's dO (B, H, n, Dv), Delta = rowsum(dO · out), L and dL/dL (B, H, n)."""
    grad_out, delta, total, grad_total = rows
    region = p.region(a, src, b)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        bias_leaf = None
        bias: Any = block_bias(p, None if bias_tensor is None else bias_tensor.detach(), region, p.chunk_q, p.chunk_k)
        if need_bias and isinstance(bias, Tensor):
            bias = bias_leaf = bias.requires_grad_()
        out, lse, lse_all = block_attention(p, leaves[0], leaves[1], leaves[2], region, bias)
    if not lse.requires_grad:
        raise ValueError(f"kernel {p.kernel!r} returns a log-sum-exp without a gradient; the ring backward "
                         "differentiates through it: use kernel='auto', 'tiled' or 'dense'")
    w = weight(lse.to(total.dtype), total) / (1 - p.dropout)
    grad_block = (w[..., None] * grad_out).to(out.dtype)  # dL/dout_h
    grad_lse = w * (grad_out * out.to(total.dtype)).sum(dim=-1)  # through out_h's weight
    grad_lse_all = weight(lse_all.to(total.dtype), total) * (grad_total - delta)  # through L
    if p.keep is None:  # lse_all is lse
        outputs, grads = [out, lse], [grad_block, (grad_lse + grad_lse_all).to(lse.dtype)]
    else:
        outputs, grads = [out, lse, lse_all], [grad_block, grad_lse.to(lse.dtype), grad_lse_all.to(lse.dtype)]
    inputs = leaves + ([bias_leaf] if bias_leaf is not None else [])
    found = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
    return (*found, None) if bias_leaf is None else tuple(found)


def _add(total: Tensor, part: Tensor | None) -> None:
    if part is not None:
        total += part.to(total.dtype)


def ring_backward(p: Problem, q: Tensor, k: Tensor, v: Tensor, bias_tensor: Tensor | None, need_bias: bool,
                  out: Tensor, total: Tensor, grad_out: Tensor, grad_lse: Tensor | None) -> _Grads:
    """dq, dk, dv (and the bias tensor's gradient, summed over ranks) of this rank's shard."""
    g = _Grads(p, q, k, v, bias_tensor, need_bias)
    grad_out = grad_out.to(p.stats)
    delta = (grad_out * out).sum(dim=-1)  # (B, H, nq)
    grad_total = torch.zeros_like(total) if grad_lse is None else torch.where(total == NEG_INF, 0.0, grad_lse)
    returning: Transfer | None = None  # the previous hop's dk/dv on their way home
    for t, src, kb, vb in kv_hops(p, k, v, "backward"):
        dk = dv = None
        if kb is not None and vb is not None:
            dk, dv = torch.zeros_like(g.dk), torch.zeros_like(g.dv)
            for a, b in p.pairs(p.rank, src):
                rows, keys = p.rows(a), p.keys(b)
                stats = (grad_out[:, :, rows], delta[:, :, rows], total[:, :, rows], grad_total[:, :, rows])
                dq_a, dk_b, dv_b, dbias = _block_backward(p, q[:, :, rows], kb[:, :, keys], vb[:, :, keys],
                                                          bias_tensor, need_bias, stats, a, src, b)
                _add(g.dq[:, :, rows], dq_a)
                _add(dk[:, :, keys], dk_b)
                _add(dv[:, :, keys], dv_b)
                if g.dbias is not None and dbias is not None:
                    t4 = g.dbias.view(shape4("bias", g.dbias))
                    _add(bias_block(t4, p.region(a, src, b), p.chunk_q, p.chunk_k), dbias)
        if t == 0:
            if dk is not None and dv is not None:
                g.dk += dk
                g.dv += dv
            continue
        returning = _return_kv_grads(p, t, g, dk, dv, returning)
    _collect(g, returning)
    if g.dbias is not None:
        all_reduce_sum(g.dbias, p.group, "the bias gradient's all_reduce")
    return g


def _return_kv_grads(p: Problem, t: int, g: _Grads, dk: Tensor | None, dv: Tensor | None,
                     previous: Transfer | None) -> Transfer:
    """Send hop t's dk, dv to the rank that owns those keys and receive this rank's own from rank + t; then add
    what the previous hop brought (so its transfer overlapped with this hop's compute)."""
    P, r = p.world, p.rank
    src, dst = (r - t) % P, (r + t) % P
    send = [dk, dv] if dk is not None and dv is not None else []
    recv = [torch.empty_like(g.dk), torch.empty_like(g.dv)] if p.needs(dst, r) else []
    transfer = exchange(send, src, recv, dst, group=p.group, tag=TAG_DKV,
                        what=f"ring backward hop {t} (dk/dv to rank {src}, from rank {dst})")
    _collect(g, previous)
    return transfer


def _collect(g: _Grads, transfer: Transfer | None) -> None:
    if transfer is None:
        return
    got = transfer.wait()
    if got:
        g.dk += got[0]
        g.dv += got[1]


class RingAttention(torch.autograd.Function):
    """Ring forward and backward over ``Problem``; autograd sees q, k, v and the bias tensor."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias_tensor: Tensor | None, p: Problem
                ) -> tuple[Tensor, Tensor]:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, total = ring_forward(p, q, k, v, bias_tensor)
        ctx.save_for_backward(q, k, v, bias_tensor, out, total)
        ctx.problem = p
        return out.to(q.dtype), total

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, grad_lse: Tensor | None) -> tuple[Tensor | None, ...]:
        q, k, v, bias_tensor, out, total = ctx.saved_tensors
        p: Problem = ctx.problem
        need_bias = bool(ctx.needs_input_grad[3])
        g = ring_backward(p, q, k, v, bias_tensor, need_bias, out, total, grad_out, grad_lse)
        dbias = None if g.dbias is None else g.dbias.to(bias_tensor.dtype)
        return g.dq.to(q.dtype), g.dk.to(k.dtype), g.dv.to(v.dtype), dbias, None


__all__ = ["RingAttention", "ring_forward", "ring_backward", "merge", "weight"]
