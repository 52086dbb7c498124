"""Exact blockwise attention with online softmax (the FlashAttention algorithm), in plain PyTorch.

Queries are cut into blocks of ``BLOCK_Q`` rows. For each query block, the mask's block layout
(EMPTY / PARTIAL / FULL per ``BLOCK_Q x BLOCK_K`` tile, computed from the structured mask without an
N×N tensor) gives the key blocks to visit; runs of consecutive visited blocks are merged into chunks
of up to ``MAX_CHUNK`` keys, and the mask is evaluated only on chunks that hold a PARTIAL tile. Empty
tiles cost nothing, so a sliding window or a document mask costs time proportional to what is visible.

Forward keeps a running max ``m``, normalizer ``l`` and accumulator per query row and saves only the
log-sum-exp; backward recomputes each chunk's probabilities from q, k and the LSE (FlashAttention-2),
so neither pass holds more than one (B, H, BLOCK_Q, MAX_CHUNK) score tile.

On CPUs with AVX-512, forward passes without bias, softcap or dropout run the same plan in C (``native.py``,
``attnkit/csrc/tiled_fwd.c``): register-tiled q·kᵀ and P·v fused with the online softmax, in float32, on
PyTorch's own threads, about twice this file's speed; float32 always, bfloat16 and float16 when no backward
follows (it recomputes scores in their precision, which must match the saved log-sum-exp).
``ATTNKIT_NATIVE=0`` turns it off. Backward is always this file's, from the log-sum-exp either forward saved.

Grouped-query attention folds the G query heads that share a k/v head into the rows of one matmul:
q block (B, Hkv, G * bq, D) against k chunk (B, Hkv, bk, D), so k and v are never repeated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeAlias, TypeVar

import torch
from torch import Tensor

from ..bias import ScoreFunction
from ..masks import EMPTY, Dense, Mask
from ..registry import Capabilities, Rank
from ..request import AttentionRequest, softmax_dtype
from . import native, plan
from .plan import Row, runs
from .common import finite

BLOCK_Q = 128  # query rows per block
BLOCK_K = 128  # key granularity of the block layout (tile skipping)
MAX_CHUNK = 1024  # most keys multiplied in one step
ALIGN = 64  # chunk widths are clipped to multiples of this
LOG2E, LN2 = math.log2(math.e), math.log(2.0)

# When kernel="auto" tries this kernel first (TiledKernel.priority):
# sparse-enough masks: when at least this share of tiles is empty and the score matrix is large, skipping
# tiles beats SDPA computing (and masking) all of them.
AUTO_MIN_EMPTY = 0.5
AUTO_MIN_ELEMENTS = 1 << 20
# Inference the native forward serves (float32, bfloat16 or float16, CPU, AVX-512, no gradient), with enough
# query rows and visible entries: about 1.0-2.5x SDPA from here up in float32 (B·H·Nq·Nk of 2^17, 32 rows),
# more in half precision, slower below (decoding 0.2x, 128 causal rows 0.6x): benchmarks/bench_auto.py.
AUTO_NATIVE_MIN_ROWS = 32
AUTO_NATIVE_MIN_WORK = 1 << 17
AUTO_NATIVE_MAX_KEYS_PER_ROW = 32  # each work item packs all its keys once: too few rows do not pay for it

TileArgs: TypeAlias = tuple[int, int, int, int, int, int]  # Mask.tile's (qs, qe, ks, ke, q_len, k_len)
Segments: TypeAlias = tuple[tuple[int, int, Tensor], ...]  # additive 0 / -inf column segments (c0, c1, tile)
# _Tiles._mask_tile's entry: (lo, hi, segments, hidden tile, keys seen or None, query rows seen or None)
MaskEntry: TypeAlias = tuple[int, int, Segments, Tensor, Tensor | None, Tensor | None]
_T = TypeVar("_T")


def make_plan(req: AttentionRequest) -> list[Row]:
    """The visiting schedule (``plan.make_plan``) with this module's BLOCK_Q, BLOCK_K and MAX_CHUNK, read at
    call time (the tests shrink them)."""
    return plan.make_plan(req, BLOCK_Q, BLOCK_K, MAX_CHUNK)


class _Tiles:
    """Recomputes one (query block, key chunk) tile of logits, identically in forward and backward."""

    def __init__(self, req: AttentionRequest, q5: Tensor, k: Tensor, v: Tensor, seed: int,
                 finite_inputs: tuple[bool, bool] | None = None):
        self.req, self.q5, self.k, self.v, self.seed = req, q5, k, v, seed
        B, H, Hkv, Nq, Nk, _, _ = req.shape
        self.B, self.Hkv, self.G, self.Nq, self.Nk = B, Hkv, H // Hkv, Nq, Nk
        self.stats = softmax_dtype(q5.dtype)
        self._cache: dict[Hashable, MaskEntry | None] = {}  # masking data (see _mask_tile) by tile_key
        self._visible: dict[Hashable, Tensor] = {}  # visibility tiles by tile_key (the native forward's)
        self._zero = torch.zeros((), dtype=q5.dtype, device=q5.device)
        self._buffer: Tensor | None = None
        if finite_inputs is not None:  # the backward pass hands over what the forward found
            self.finite_kv, self.finite_q = finite_inputs

    # NaN hygiene (zeroing masked k/v/q rows) costs a copy per chunk; it is needed only when the inputs
    # hold a non-finite value somewhere (see common.hide_unseen). Each check is a pass over its inputs,
    # made when first needed.
    @cached_property
    def finite_kv(self) -> bool:
        return self.req.mask is None or finite(self.k, self.v)

    @cached_property
    def finite_q(self) -> bool:
        return self.req.mask is None or finite(self.q5)

    def q_block(self, row: Row) -> Tensor:  # (B, Hkv, G * bq, D)
        return self.q5[..., row.qs:row.qe, :].reshape(self.B, self.Hkv, self.G * (row.qe - row.qs), self.q5.shape[-1])

    def chunk(self, row: Row, qb: Tensor, ks: int, ke: int, needs_mask: bool) -> _Chunk | None:
        """One chunk, clipped to the keys some query of the tile may see; None if nothing is visible.
        Keys no query of the tile may see are zeroed in k and v, and queries that see nothing in q,
        so NaN stored at masked positions stays out of every product, forward and backward."""
        if not needs_mask:
            return _Chunk(ks, ke, qb, self.k[..., ks:ke, :], self.v[..., ks:ke, :], None, None)
        entry = self._mask_tile(row, ks, ke)
        if entry is None:
            return None
        lo, hi, hidden, hidden_bool, keys_seen, rows_seen = entry
        ks, ke = ks + lo, ks + hi
        k, v = self.k[..., ks:ke, :], self.v[..., ks:ke, :]
        if keys_seen is not None and not self.finite_kv:
            k, v = torch.where(keys_seen, k, self._zero), torch.where(keys_seen, v, self._zero)
        if rows_seen is not None and not self.finite_q:
            qb = torch.where(rows_seen, qb, self._zero)
        return _Chunk(ks, ke, qb, k, v, hidden, hidden_bool)

    def _mask_tile(self, row: Row, ks: int, ke: int) -> MaskEntry | None:
        """Masking data for keys ks:ke clipped to the seen columns lo:hi, or None when nothing is visible:
        (lo, hi, additive 0/-inf segments (see _hidden_segments), bool hidden tile,
         keys seen (b, Hkv|1, bk, 1) or None if all, query rows seen (b, Hkv|1, G*bq, 1) or None if all).
        Cached for masks with a tile_key."""
        return self._cached(self._cache, row, ks, ke, self._masking)

    def visible(self, row: Row, ks: int, ke: int) -> Tensor:
        """The mask's visibility tile for queries row.qs:row.qe and keys ks:ke, (b, Hkv|1, G|1, bq, bk) bool;
        cached for masks with a tile_key."""
        return self._cached(self._visible, row, ks, ke, self._tile)

    def _cached(self, cache: dict[Hashable, _T], row: Row, ks: int, ke: int, make: Callable[[TileArgs], _T]) -> _T:
        """make(tile arguments), memoized in ``cache`` by the mask's tile_key when it has one."""
        args = (row.qs, row.qe, ks, ke, self.Nq, self.Nk)
        key = self._mask.tile_key(*args)
        if key is not None and key in cache:
            return cache[key]
        value = make(args)
        if key is not None:
            cache[key] = value
        return value

    def _masking(self, args: TileArgs) -> MaskEntry | None:  # _mask_tile's entry, uncached
        vis = self._tile(args)
        width = args[3] - args[2]
        keys_seen = vis.any(dim=-2).any(dim=2)  # (b, Hkv|1, bk)
        cols = keys_seen.flatten(0, -2).any(0).nonzero().flatten().tolist()
        if not cols:
            return None
        # clip to the seen columns, widened to multiples of 64: reductions over rows of other widths run up
        # to 3x slower on CPU
        lo, hi = cols[0] // ALIGN * ALIGN, min(-(-(cols[-1] + 1) // ALIGN) * ALIGN, width)
        vis = vis[..., lo:hi]
        keys_seen = keys_seen[..., lo:hi, None]
        rows_seen = vis.any(dim=-1).expand(-1, self.Hkv, self.G, -1)  # (b, Hkv, G, bq)
        rows_seen = rows_seen.reshape(rows_seen.shape[0], self.Hkv, -1, 1)
        hidden = ~vis
        return (lo, hi, _hidden_segments(hidden, self.stats), hidden,
                None if bool(keys_seen.all()) else keys_seen, None if bool(rows_seen.all()) else rows_seen)

    def _tile(self, args: TileArgs) -> Tensor:  # (b, Hkv|1, G|1, bq, bk) bool, uncached
        return _heads5(self._mask.tile(*args, self.k.device), self.Hkv, self.G)

    @property
    def _mask(self) -> Mask:
        """The request's mask: only chunks that need it are masked (a plan without a mask has none)."""
        assert self.req.mask is not None
        return self.req.mask

    def logits(self, c: _Chunk, row: Row, record: bool = False
               ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor] | None]:
        """(B, Hkv, G, bq, bk) logits in log2 units (scaled by scale·log2 e, so softmax runs on exp2,
        several times faster than exp on CPU) in the statistics dtype; the softcap's tanh (or None); and, for a
        score function when ``record`` (a backward through it follows), its input and output with their autograd
        graph (``ScoreFunction.recorded``: (B, H, bq, bk) in natural units), else None."""
        # (B * Hkv, G * bq, bk): alpha applies scale·log2 e inside the GEMM, no pass over q; a score function
        # sees natural units, so there the log2 e comes after it
        bias = self.req.bias
        log2e = 1.0 if isinstance(bias, ScoreFunction) else LOG2E
        q3, k3 = c.q.flatten(0, 1), c.k.flatten(0, 1)
        n = q3.shape[0] * q3.shape[1] * k3.shape[1]
        if self._buffer is None or self._buffer.numel() < n:  # one reused buffer: no page faults per tile
            self._buffer = torch.empty(max(n, 1 << 16), dtype=q3.dtype, device=q3.device)
        s = self._buffer[:n].view(q3.shape[0], q3.shape[1], k3.shape[1])
        torch.baddbmm(self._zero, q3, k3.transpose(-2, -1), beta=0.0, alpha=self.req.scale * log2e, out=s)
        s = s.to(self.stats)
        s = s.view(self.B, self.Hkv, self.G, row.qe - row.qs, c.ke - c.ks)
        tanh = recorded = None
        if self.req.softcap is not None:
            cap = self.req.softcap * log2e
            tanh = torch.tanh(s / cap)
            s = tanh * cap
        if isinstance(bias, ScoreFunction):  # (B, H, bq, bk); a view of the reused buffer: used before the next tile
            scores = s.view(self.B, self.Hkv * self.G, row.qe - row.qs, c.ke - c.ks)
            if record:
                recorded = bias.recorded(scores, row.qs, row.qe, c.ks, c.ke)
                y = recorded[1].detach()
            else:
                y = bias.apply(scores, row.qs, row.qe, c.ks, c.ke)
            s = y.mul(LOG2E).view_as(s)
        elif bias is not None:
            b = bias.tile(row.qs, row.qe, c.ks, c.ke, self.Nq, self.Nk, s.device, self.stats)
            s = torch.add(s, _heads5(b, self.Hkv, self.G), alpha=LOG2E)
        if bias is not None and c.hidden_bool is not None:  # the bias may hold NaN where masked: fill, do not add
            s = s.masked_fill_(c.hidden_bool, float("-inf"))
        elif c.hidden is not None:
            for c0, c1, segment in c.hidden:
                s[..., c0:c1].add_(segment)
        return s, tanh, recorded

    def keep(self, row: Row, ks: int, shape: torch.Size) -> Tensor | None:
        """Dropout keep-mask scaled by 1/(1-p), reproducible per tile from the call's seed."""
        p = self.req.dropout
        if p == 0:
            return None
        gen = torch.Generator(device=self.q5.device)
        gen.manual_seed(hash((self.seed, row.qs, ks)) & ((1 << 63) - 1))
        keep = torch.rand(shape, generator=gen, device=self.q5.device, dtype=self.stats) >= p
        return keep.to(self.stats) / (1 - p)


def _heads5(t: Tensor, Hkv: int, G: int) -> Tensor:
    """A (b, h, x, y) tile with h in {1, Hkv * G} -> (b, Hkv | 1, G | 1, x, y): the grouped-query layout
    the kernel folds q into (the G query heads that share a k/v head)."""
    t = t if t.dim() == 4 else t[None, None]
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.reshape(t.shape[0], Hkv, G, t.shape[-2], t.shape[-1])


def _hidden_segments(hidden: Tensor, dtype: torch.dtype, max_segments: int = 4) -> Segments:
    """The columns of a (b, h, g, bq, bk) bool tile that hold a hidden entry, as additive 0 / -inf
    tiles over their contiguous runs: (c0, c1, tile (b, h, g, bq, c1 - c0)). A sliding window's chunk
    is hidden only near its two edges, so masking touches two narrow strips instead of the whole tile
    (adding is used because add_ is far faster than masked_fill_ on CPU)."""
    spans = runs(hidden.flatten(0, -2).any(0).tolist())
    if len(spans) > max_segments:
        spans = [(spans[0][0], spans[-1][1])]
    zero = torch.zeros((), dtype=dtype, device=hidden.device)
    return tuple((c0, c1, torch.where(hidden[..., c0:c1], float("-inf"), zero)) for c0, c1 in spans)


@dataclass(frozen=True)
class _Chunk:
    ks: int
    ke: int
    q: Tensor  # (B, Hkv, G * bq, D) queries of the row block
    k: Tensor  # (B, Hkv, bk, D)
    v: Tensor  # (B, Hkv, bk, Dv)
    hidden: Segments | None  # additive 0 / -inf column segments (c0, c1, tile), or None: all visible
    hidden_bool: Tensor | None  # the same as bool (True = masked)


def _fold(t: Tensor) -> Tensor:
    """(B, Hkv, G, bq, x) -> (B, Hkv, G * bq, x)."""
    return t.reshape(t.shape[0], t.shape[1], t.shape[2] * t.shape[3], t.shape[4])


def _forward(tiles: _Tiles, plan: list[Row], backward: bool) -> tuple[Tensor, Tensor]:
    if native.serves(tiles.req, backward):
        req = tiles.req
        return native.forward(native.NativeCall(req.q, tiles.k, tiles.v, req.mask, plan, tiles.visible,
                                                guard_kv=not tiles.finite_kv, scale_log2=req.scale * LOG2E))
    B, Hkv, G, stats = tiles.B, tiles.Hkv, tiles.G, tiles.stats
    Dv = tiles.v.shape[-1]
    out = torch.empty(B, Hkv, G, tiles.Nq, Dv, dtype=stats, device=tiles.v.device)
    lse = torch.full((B, Hkv, G, tiles.Nq), float("-inf"), dtype=stats, device=tiles.v.device)
    lowest = torch.finfo(stats).min  # running max of a row with nothing visible yet: exp(-inf - lowest) = 0
    for row in plan:
        qb = tiles.q_block(row)
        m: Tensor | None = None  # running max, normalizer and accumulator of the rows, set together
        l: Tensor | None = None
        acc: Tensor | None = None
        for ks, ke, needs_mask in row.chunks:
            c = tiles.chunk(row, qb, ks, ke, needs_mask)
            if c is None:
                continue
            s, _, _ = tiles.logits(c, row)  # (B, Hkv, G, bq, bk)
            m_new = s.amax(dim=-1, keepdim=True).clamp_(min=lowest)
            if m is not None:
                m_new = torch.maximum(m, m_new)
            p = s.sub_(m_new).exp2_()
            keep = tiles.keep(row, c.ks, p.shape)
            pv = _fold(p if keep is None else p * keep).to(c.v.dtype) @ c.v  # (B, Hkv, G * bq, Dv)
            pv = pv.view(p.shape[:-1] + (Dv,)).to(stats)
            if m is None:
                l, acc = p.sum(dim=-1, keepdim=True), pv
            else:
                assert l is not None and acc is not None
                corr = torch.exp2(m - m_new)
                l, acc = l * corr + p.sum(dim=-1, keepdim=True), acc * corr + pv
            m = m_new
        if m is None:
            out[..., row.qs:row.qe, :] = 0
            continue
        assert l is not None and acc is not None
        # l >= 1 where anything is visible; l == 0 (acc == 0, lse = lowest + log 0 = -inf) where not
        # written in place, no temporary; a multiply by 1/l, as div with a strided out= runs ~8x slower on CPU
        torch.mul(acc, l.clamp(min=1.0).reciprocal_(), out=out[..., row.qs:row.qe, :])
        torch.add(m, torch.log2(l), out=lse[..., row.qs:row.qe, None])  # log2 units
    return out, lse


def _backward(tiles: _Tiles, plan: list[Row], out: Tensor, lse: Tensor, grad_out: Tensor,
              grad_bias: Tensor | None, grad_tensors: list[Tensor | None], grad_lse: Tensor | None = None
              ) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv; adds the bias tensor's gradient into ``grad_bias``, a score function's tensors' into
    ``grad_tensors`` (one entry per ``req.bias_tensors``, None until a gradient arrives). ``grad_lse``
    (B, Hkv, G, Nq, 1): dL/d(natural-log lse), zero on empty rows; d lse / d logits = P adds it to dS = P (dP - Delta)
    as Delta - grad_lse."""
    stats, req = tiles.stats, tiles.req
    dtype = tiles.q5.dtype
    lse_safe = torch.where(torch.isfinite(lse), lse, 0.0)[..., None]
    bias_grads = grad_bias is not None or len(grad_tensors) > 0
    if dtype != stats and bias_grads:
        delta = _delta_by_tiles(tiles, plan, lse_safe, grad_out)
    else:
        delta = _delta(grad_out, out, stats)  # (B, Hkv, G, Nq, 1)
    if grad_lse is not None:
        delta = delta - grad_lse
    dq = torch.zeros(tiles.q5.shape, dtype=stats, device=out.device)
    dk = torch.zeros(tiles.k.shape, dtype=stats, device=out.device)
    dv = torch.zeros(tiles.v.shape, dtype=stats, device=out.device)
    record = isinstance(req.bias, ScoreFunction)
    for row, c, do, t in _backward_tiles(tiles, plan, lse_safe, grad_out, record):
        rows, ks, ke = slice(row.qs, row.qe), c.ks, c.ke
        dv[..., ks:ke, :] += (_fold(t.p_kept).to(dtype).transpose(-2, -1) @ do).to(stats)
        ds = t.p * (t.dp - delta[..., rows, :])  # dL/d(logits after softcap and bias)
        if t.recorded is not None:  # through the score function, to its scores and the tensors it reads
            x, y = t.recorded
            ds_scores, grads = ScoreFunction.vjp(x, y, ds.view_as(x), req.bias_tensors)
            ds = ds_scores.view_as(ds)
            _accumulate(grad_tensors, grads)
        elif grad_bias is not None:
            _accumulate_bias_grad(grad_bias, ds, row, ks, ke)
        if t.tanh is not None:
            ds = ds * (1 - t.tanh * t.tanh)  # through the softcap, to scale·q·k
        ds_f = _fold(ds).to(dtype)  # (B, Hkv, G * bq, bk)
        dq[..., rows, :] += (ds_f @ c.k).view(t.p.shape[:-1] + (c.k.shape[-1],)).to(stats)
        dk[..., ks:ke, :] += (ds_f.transpose(-2, -1) @ c.q).to(stats)
    return dq * req.scale, dk * req.scale, dv


@dataclass(frozen=True)
class _BackwardTile:
    p: Tensor  # (B, Hkv, G, bq, bk) probabilities, recomputed from the log-sum-exp
    p_kept: Tensor  # p with dropout applied (p itself without dropout)
    dp: Tensor  # dL/dp = dO·vᵀ (times the dropout keep-mask), in the statistics dtype: see _delta
    tanh: Tensor | None  # the softcap's tanh
    recorded: tuple[Tensor, Tensor] | None  # a score function's input and output, graph kept (_Tiles.logits)


def _backward_tiles(tiles: _Tiles, plan: list[Row], lse_safe: Tensor, grad_out: Tensor, record: bool = False
                    ) -> Iterator[tuple[Row, _Chunk, Tensor, _BackwardTile]]:
    """(row, chunk, dO of the row (B, Hkv, G * bq, Dv) in the input dtype, _BackwardTile) for every visited tile;
    ``record``: keep a score function's graph for a vector-Jacobian product (see _Tiles.logits)."""
    stats, dtype = tiles.stats, tiles.q5.dtype
    for row in plan:
        qb = tiles.q_block(row)
        do = _fold(grad_out[..., row.qs:row.qe, :]).to(dtype)  # (B, Hkv, G * bq, Dv)
        do_stats = do.to(stats)
        for ks, ke, needs_mask in row.chunks:
            c = tiles.chunk(row, qb, ks, ke, needs_mask)
            if c is None:
                continue
            s, tanh, recorded = tiles.logits(c, row, record)
            p = s.sub_(lse_safe[..., row.qs:row.qe, :]).exp2_()  # (B, Hkv, G, bq, bk)
            keep = tiles.keep(row, c.ks, p.shape)
            dp = (do_stats @ c.v.to(stats).transpose(-2, -1)).view_as(p)
            if keep is not None:
                dp = dp * keep
            yield row, c, do, _BackwardTile(p, p if keep is None else p * keep, dp, tanh, recorded)


def _delta_by_tiles(tiles: _Tiles, plan: list[Row], lse_safe: Tensor, grad_out: Tensor) -> Tensor:
    """Delta = rowsum(P ∘ dP) (B, Hkv, G, Nq, 1), summed over the tiles themselves (a second pass).

    In half precision the output is a sum of probabilities rounded to the input dtype, so rowsum(dO * O)
    differs from rowsum(P ∘ dP) by that rounding, and the rows of dS = P (dP - Delta) no longer sum to 0
    as a softmax's gradient does: harmless for dq and dk, but a bias's gradient (a sum of dS over many
    entries, e.g. a per-head slope) then carries a systematic error (measured ~25% on a per-batch slope in
    bfloat16, against ~9% for the dense kernel). Used when a bias or score-function tensor wants a gradient."""
    delta = torch.zeros(grad_out.shape[:-1] + (1,), dtype=tiles.stats, device=grad_out.device)
    for row, _, _, t in _backward_tiles(tiles, plan, lse_safe, grad_out):
        delta[..., row.qs:row.qe, :] += (t.p * t.dp).sum(dim=-1, keepdim=True)
    return delta


def _delta(grad_out: Tensor, out: Tensor, stats: torch.dtype) -> Tensor:
    """Delta = rowsum(dO * O) (B, Hkv, G, Nq, 1) in the statistics dtype, for dS = P (dP - Delta), dP = dO·vᵀ.

    A row with one visible key has O = v_j exactly, and its exact gradient is 0: dP - Delta must cancel
    exactly. For half-precision inputs both are float32 matmuls of half-precision values, whose products
    are exact in float32, so both sum the same terms in the same order and do cancel (dP rounded to half
    precision left dq and dk ~1e-2 off zero, a .sum(-1) reducing in another order ~1e-7). Float32 products
    round (a GEMM fuses multiply and add, a small matmul may not): there the more accurate .sum(-1) is kept."""
    if grad_out.dtype == stats:
        return (grad_out * out).sum(dim=-1, keepdim=True)
    return (grad_out.to(stats)[..., None, :] @ out[..., :, None])[..., 0]


def _accumulate(totals: list[Tensor | None], grads: Sequence[Tensor | None]) -> None:
    """totals[i] += grads[i] where a gradient arrived (None: the tensor got none from this tile), summed in
    float32 at least: a half-precision tensor's gradient is the sum of many tiles'."""
    for i, g in enumerate(grads):
        if g is not None:
            g = g.float() if g.dtype in (torch.float16, torch.bfloat16) else g
            total = totals[i]
            totals[i] = g if total is None else total + g


def _accumulate_bias_grad(grad_bias: Tensor, ds: Tensor, row: Row, ks: int, ke: int) -> None:
    """Add a (B, Hkv, G, bq, bk) tile of dL/dlogits into grad_bias (b, h, nq|1, nk|1), summing over
    the dimensions the bias broadcasts along."""
    ds = ds.reshape(ds.shape[0], -1, ds.shape[-2], ds.shape[-1])  # (B, H, bq, bk)
    dims = [d for d in range(4) if grad_bias.shape[d] == 1 and ds.shape[d] != 1]
    if dims:
        ds = ds.sum(dim=dims, keepdim=True)
    qsl = slice(None) if grad_bias.shape[2] == 1 else slice(row.qs, row.qe)
    ksl = slice(None) if grad_bias.shape[3] == 1 else slice(ks, ke)
    grad_bias[:, :, qsl, ksl] += ds


class _TiledFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, bias_tensor: Tensor | None, req: AttentionRequest,
                plan: list[Row], backward: bool, *function_tensors: Tensor) -> tuple[Tensor, Tensor]:
        B, H, Hkv, Nq, Nk, D, Dv = req.shape
        seed = int(torch.randint(0, 2**62, (1,)).item()) if req.dropout > 0 else 0
        q5 = q.reshape(B, Hkv, H // Hkv, Nq, D)
        tiles = _Tiles(req, q5, k, v, seed)
        out5, lse5 = _forward(tiles, plan, backward)  # lse5 in log2 units
        ctx.save_for_backward(q, k, v, out5, lse5)
        ctx.req, ctx.plan, ctx.seed = req, plan, seed
        ctx.finite_inputs = (tiles.finite_kv, tiles.finite_q) if backward else None
        out = out5.reshape(B, H, Nq, Dv).to(q.dtype)
        lse = lse5.reshape(B, H, Nq) * LN2
        return out, lse

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, grad_lse: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out5, lse5 = ctx.saved_tensors
        req = ctx.req
        B, H, Hkv, Nq, Nk, D, Dv = req.shape
        q5 = q.reshape(B, Hkv, H // Hkv, Nq, D)
        tiles = _Tiles(req, q5, k, v, ctx.seed, ctx.finite_inputs)
        need_bias = ctx.needs_input_grad[3]
        grad_bias = None
        if need_bias:
            grad_bias = torch.zeros(req.bias.tensor4.shape, dtype=tiles.stats, device=q.device)
        function_tensors = req.bias_tensors if isinstance(req.bias, ScoreFunction) else ()
        grad_tensors: list[Tensor | None] = [None] * len(function_tensors)
        grad_out5 = grad_out.reshape(B, Hkv, H // Hkv, Nq, Dv)
        lse_grad5 = None
        if bool(grad_lse.any()):  # the lse was used (context parallelism merges blocks through it); -inf rows get 0
            lse_grad5 = torch.where(torch.isfinite(lse5), grad_lse.reshape(lse5.shape).to(tiles.stats), 0.0)[..., None]
        dq, dk, dv = _backward(tiles, ctx.plan, out5, lse5, grad_out5, grad_bias, grad_tensors, lse_grad5)
        if grad_bias is not None:  # need_bias
            grad_bias = grad_bias.reshape(req.bias.tensor.shape).to(req.bias.tensor.dtype)
        grad_tensors = [None if g is None else g.to(t.dtype) for g, t in zip(grad_tensors, function_tensors)]
        return (dq.reshape(q.shape).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), grad_bias, None, None, None,
                *grad_tensors)


def tiled_attention(req: AttentionRequest) -> Tensor | tuple[Tensor, Tensor]:
    bias_tensor = getattr(req.bias, "tensor", None)
    function_tensors = req.bias_tensors if isinstance(req.bias, ScoreFunction) else ()
    # req.needs_grad: whether a backward may follow (asked here: inside Function.forward autograd is off)
    out, lse = _TiledFunction.apply(req.q, req.k, req.v, bias_tensor, req, make_plan(req), req.needs_grad,
                                    *function_tensors)
    if req.return_lse:
        return out, lse.float() if lse.dtype != torch.float64 else lse
    return out


def _fastest(req: AttentionRequest) -> bool:
    """Whether this kernel beats SDPA on ``req`` (see the AUTO_* constants):

    1. a structured mask leaves >= 50% of its BLOCK_Q x BLOCK_K tiles empty and Nq·Nk >= 2^20 (sliding
       windows, documents, long causal prefixes): cost follows the visible part;
    2. inference the native forward serves (float32, bfloat16 or float16 on an AVX-512 CPU, no gradient
       recorded, no bias, softcap or dropout) with Nq >= 32, Nk <= 32·Nq and about 2^17 visible entries or more.
    """
    B, H, _, Nq, Nk, _, _ = req.shape
    structured = req.mask is not None and not isinstance(req.mask, Dense)
    layout = None
    if structured and Nq * Nk >= AUTO_MIN_ELEMENTS:
        layout = req.layout(BLOCK_Q, BLOCK_K)
        assert layout is not None  # there is a mask
        if (layout == EMPTY).all(dim=0).all(dim=0).float().mean().item() >= AUTO_MIN_EMPTY:
            return True
    if (req.needs_grad or Nq < AUTO_NATIVE_MIN_ROWS or Nk > AUTO_NATIVE_MAX_KEYS_PER_ROW * Nq
            or B * H * Nq * Nk < AUTO_NATIVE_MIN_WORK or not native.serves(req)):
        return False
    if req.mask is not None:  # visible share: FULL tiles count 1, PARTIAL ones 1/2, averaged over batch and
        # heads (the plan visits their union, so this errs towards SDPA)
        if layout is None and B * H * Nq * Nk < 2 * AUTO_NATIVE_MIN_WORK:
            return False  # too little work unless nearly all of it is visible: not worth computing the layout
        layout = req.layout(BLOCK_Q, BLOCK_K) if layout is None else layout
        assert layout is not None  # there is a mask
        return B * H * Nq * Nk * layout.float().mean().item() / 2 >= AUTO_NATIVE_MIN_WORK
    return True


class TiledKernel:
    name = "tiled"
    description = ("exact online-softmax tiles (FlashAttention algorithm); skips empty tiles; "
                   "native AVX-512 forward on CPU")
    capabilities = Capabilities(tile_skipping=True, memory="O(N) + one tile")

    def not_supported_reasons(self, req: AttentionRequest) -> list[str]:
        return self.capabilities.reasons(req)

    def priority(self, req: AttentionRequest) -> Rank:
        """First where it is the fastest (``_fastest``); otherwise after SDPA, for what SDPA refuses."""
        return Rank.PREFERRED if _fastest(req) else Rank.FALLBACK

    def __call__(self, req: AttentionRequest) -> Tensor | tuple[Tensor, Tensor]:
        return tiled_attention(req)
