"""The sparse attention patterns of the literature as structured masks: Sparse Transformer's ``strided``
and ``fixed`` (Child et al. 2019), ``longformer`` (Beltagy et al. 2020) and ``bigbird`` (Zaheer et al. 2020).

Each is a :class:`attnkit.masks.Mask` like the others (``tile``, exact or conservative ``block_states``
computed from its parameters, ``tile_key`` where tiles repeat), re-exported from ``attnkit.masks``;
the factories' docstrings hold a picture of each pattern.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from ..checks import check_bool, check_int
from .base import Blocks, Device, Mask, Or, positions, states
from .basic import GlobalTokens, Positions, SlidingWindow


def _rectangles(shape: tuple[int, int], r1: Tensor, r2: Tensor, c1: Tensor, c2: Tensor) -> Tensor:
    """Bool ``shape``: True inside any of the rectangles [r1, r2] x [c1, c2] (inclusive), by 2-D prefix
    sums of corner marks, so the cost is one pass over ``shape`` whatever the number of rectangles."""
    marks = torch.zeros(shape[0] + 1, shape[1] + 1, dtype=torch.int32)
    for rows, cols, sign in ((r1, c1, 1), (r1, c2 + 1, -1), (r2 + 1, c1, -1), (r2 + 1, c2 + 1, 1)):
        marks.index_put_((rows, cols), torch.full_like(rows, sign, dtype=torch.int32), accumulate=True)
    return marks.cumsum(0, dtype=torch.int32).cumsum(1, dtype=torch.int32)[:-1, :-1] > 0


class Strided(Mask):
    """Sparse Transformer strided pattern (see ``strided``): a function of the distance d = p - j only."""

    def __init__(self, stride: int, causal: bool = True):
        self.stride = check_int("strided stride", stride, 1)
        self.causal = check_bool("strided causal", causal)

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        p, j = positions(qs, qe, ks, ke, q_len, k_len, device)
        d, s = p - j, self.stride
        if self.causal:
            return (d >= 0) & ((d < s) | (d % s == 0))
        return (d.abs() < s) | (d % s == 0)

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        # A tile holds every distance from its smallest to its largest, so these states are exact.
        b = Blocks.make(q_len, k_len, block_q, block_k, device)
        lo, hi, s = b.p_first - (b.ke - 1), b.p_last - b.ks, self.stride  # (nqb, nkb) distance range
        lone_multiple = (lo == hi) & (lo % s == 0)
        if self.causal:
            lo0 = lo.clamp(min=0)
            seen = (hi >= 0) & ((lo0 < s) | (hi // s * s >= lo0))
            full = (lo >= 0) & ((hi <= s) | lone_multiple | (s == 1))
        else:  # the local band |d| < s, or a multiple of s in [lo, hi]
            seen = ((lo < s) & (hi > -s)) | (hi // s * s >= lo)
            full = ((lo >= -s) & (hi <= s)) | lone_multiple | (s == 1)
        return states(full, ~seen)

    def tile_key(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int) -> Hashable | None:
        d0 = qs + k_len - q_len - ks  # distance at the tile's first row and first key
        far = d0 - (ke - ks - 1) >= self.stride or (not self.causal and d0 + qe - qs - 1 <= -self.stride)
        if far:  # off the local band only d mod stride matters: one cached tile serves them all
            d0 %= self.stride
        return ("strided", self.stride, self.causal, far, d0, qe - qs, ke - ks)

    def __repr__(self) -> str:
        return f"strided(stride={self.stride}, causal={self.causal})"


class Fixed(Mask):
    """Sparse Transformer fixed pattern (see ``fixed``): own block, plus the summary cells of every block."""

    def __init__(self, block: int, summary: int = 1, causal: bool = True):
        self.block = check_int("fixed block", block, 1)
        self.summary = check_int("fixed summary", summary, 0, self.block)
        self.causal = check_bool("fixed causal", causal)

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        p, j = positions(qs, qe, ks, ke, q_len, k_len, device)
        bl = self.block
        visible = (p // bl == j // bl) | (j % bl >= bl - self.summary)
        return visible & (j <= p) if self.causal else visible

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        b = Blocks.make(q_len, k_len, block_q, block_k, device)
        bl, s = self.block, self.summary
        p0, p1, k0, k1 = b.p_first, b.p_last, b.ks, b.ke - 1

        def summaries(first: Tensor, last: Tensor) -> Tensor:  # summary keys in [first, last]
            def before(x: Tensor) -> Tensor:  # summary positions in [0, x)
                return x // bl * s + (x % bl - (bl - s)).clamp(min=0)
            return (before(last + 1) - before(first)).clamp(min=0)

        in_tile = summaries(k0, k1)  # summary keys among the tile's columns
        if self.causal:  # the first query that may see a key of the tile must share a block with one
            first = torch.maximum(p0, k0)
            same_block = (first <= p1) & (first // bl <= k1 // bl)
            summary_seen = summaries(k0, torch.minimum(k1, p1)) > 0
        else:
            same_block = (p0 // bl <= k1 // bl) & (k0 // bl <= p1 // bl)
            summary_seen = in_tile > 0
        one_block = (p0 // bl == k1 // bl) & (k0 // bl == p1 // bl)
        full = (in_tile == k1 - k0 + 1) | one_block  # exact EMPTY; FULL may be conservative
        if self.causal:
            full &= k1 <= p0
        return states(full, ~(same_block | summary_seen))

    def tile_key(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int) -> Hashable | None:
        bl, p0 = self.block, qs + k_len - q_len
        head = ("fixed", bl, self.summary, self.causal)
        if p0 // bl > (ke - 1) // bl or (not self.causal and (qe - 1 + k_len - q_len) // bl < ks // bl):
            return head + ("summary only", ks % bl, qe - qs, ke - ks)  # no block shared: a column pattern
        return head + (p0 % bl, ks % bl, p0 // bl - ks // bl, qe - qs, ke - ks)

    def __repr__(self) -> str:
        return f"fixed(block={self.block}, summary={self.summary}, causal={self.causal})"


class Longformer(Or):
    """Longformer (see ``longformer``): ``SlidingWindow(w // 2, w // 2) | GlobalTokens(global_indices)``.

    Block states are those of the union (max of the parts' states): never wrong, PARTIAL where only the
    two parts together would fill a tile."""

    def __init__(self, window: int, global_indices: Positions):
        self.window = check_int("longformer window", window, 0)
        try:
            tokens = GlobalTokens(global_indices)
        except (TypeError, ValueError) as error:
            raise type(error)(f"longformer global_indices: {error}") from None
        super().__init__(SlidingWindow(self.window // 2, self.window // 2), tokens)
        self.tokens = tokens  # self.b, as its own type

    def __repr__(self) -> str:
        indices = self.tokens.indices.tolist()
        shown = ", ".join(map(str, indices[:8])) + (", ..." if len(indices) > 8 else "")
        return f"longformer(window={self.window}, global_indices=[{shown}])"


def _row_seed(seed: int, row: int) -> int:
    """A 32-bit generator seed from (seed, row): torch's CPU generator keeps only the low 32 bits of a
    seed, so ``(seed << 32) + row`` would ignore ``seed``. Murmur3's finalizer (a bijection) spreads
    seed * golden-ratio + row; distinct rows of one seed never share a stream."""
    x = (seed * 0x9E3779B1 + row) & 0xFFFFFFFF
    for shift, factor in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        x = ((x ^ (x >> shift)) * factor) & 0xFFFFFFFF
    return x ^ (x >> 16)


class BigBird(Mask):
    """BigBird block-sparse pattern, ITC form (see ``bigbird``). Block states are exact for EMPTY (a tile
    is empty iff every (query block, key block) cell it touches is hidden); FULL where the window, the
    global rows or the global columns alone cover the tile or the tile lies inside one visible cell,
    PARTIAL for other mixes."""

    _MEMO_ROWS = 1 << 16  # drawn rows kept before the memo is cleared
    _MAX_CELLS = 1 << 24  # largest grid ``cells`` returns (one byte per cell; building it takes int64
    # temporaries 8x that): 16 MiB, e.g. N = 262144 in blocks of 64

    def __init__(self, window: int, num_global: int, num_random_blocks: int, block: int, seed: int = 0):
        self.window = check_int("bigbird window", window, 0)
        self.num_global = check_int("bigbird num_global", num_global, 0)
        self.num_random = check_int("bigbird num_random_blocks", num_random_blocks, 0)
        self.block = check_int("bigbird block", block, 1)
        self.seed = check_int("bigbird seed", seed, 0, 2**31 - 1)
        self._memo: dict[tuple[int, int], Tensor] = {}  # (n_key_blocks, query block) -> (r,) key blocks
        self._cells: tuple[tuple[int, int], tuple[int, int, Tensor]] | None = None  # the last cells() answer

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        if q_len > k_len:
            raise ValueError(f"bigbird with q_len={q_len} > k_len={k_len}: blocks are laid over absolute key "
                             "positions and queries before the first key have none")

    def _draw(self, qb: int, n_kb: int) -> Tensor:
        """(r,) random key blocks of query block qb among those it does not see yet, sorted, -1 padded.
        Drawn on the CPU from a generator seeded with (seed, qb): the same on every device."""
        picks = torch.full((self.num_random,), -1, dtype=torch.long)
        if qb < self.num_global or not self.num_random:
            return picks  # a global query block sees every key already
        keys = torch.rand(n_kb, generator=torch.Generator().manual_seed(_row_seed(self.seed, qb)))
        kb = torch.arange(n_kb)
        keys[((kb - qb).abs() <= self.window) | (kb < self.num_global)] = 2.0  # visible: never drawn
        values, chosen = keys.topk(min(self.num_random, n_kb), largest=False)
        chosen = chosen[values < 2.0].sort().values
        picks[:chosen.numel()] = chosen
        return picks

    def _random_rows(self, n_kb: int, first: int, last: int) -> Tensor:
        """(last - first + 1, r) random key blocks of query blocks first..last (>= 0), memoized."""
        if len(self._memo) > self._MEMO_ROWS:
            self._memo.clear()
        rows = []
        for qb in range(first, last + 1):
            if (n_kb, qb) not in self._memo:
                self._memo[n_kb, qb] = self._draw(qb, n_kb)
            rows.append(self._memo[n_kb, qb])
        return torch.stack(rows) if rows else torch.empty(0, self.num_random, dtype=torch.long)

    def random_blocks(self, k_len: int) -> Tensor:
        """(n_blocks, num_random_blocks) with n_blocks = ceil(k_len / block): row qb lists the random key
        blocks of query block qb (absolute positions qb*block ...), -1 where there are none (global rows,
        or fewer blocks left unseen than asked for)."""
        n_kb = -(-k_len // self.block)
        return self._random_rows(n_kb, 0, n_kb - 1)

    def _grid(self, q_first: int, q_last: int, k_first: int, k_last: int, n_kb: int) -> Tensor:
        """Visibility (bool, CPU) of query blocks q_first..q_last x key blocks k_first..k_last."""
        qb = torch.arange(q_first, q_last + 1)[:, None]
        kb = torch.arange(k_first, k_last + 1)[None, :]
        g = self.num_global
        visible = ((qb - kb).abs() <= self.window) | ((qb >= 0) & (qb < g)) | (kb < g)
        first = max(q_first, 0)  # query blocks before position 0 (q_len > k_len) draw nothing
        if self.num_random and q_last >= first:
            picks = self._random_rows(n_kb, first, q_last)  # (nq, r)
            rows = torch.arange(first - q_first, q_last + 1 - q_first)[:, None].expand_as(picks)
            hit = (picks >= k_first) & (picks <= k_last)
            visible[rows[hit], picks[hit] - k_first] = True
        return visible

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None) -> Tensor:
        if qe <= qs or ke <= ks:
            return torch.zeros(max(qe - qs, 0), max(ke - ks, 0), dtype=torch.bool, device=device)
        bl, offset = self.block, k_len - q_len
        q_first, k_first = (qs + offset) // bl, ks // bl
        grid = self._grid(q_first, (qe - 1 + offset) // bl, k_first, (ke - 1) // bl, -(-k_len // bl))
        p, j = positions(qs, qe, ks, ke, q_len, k_len, device)
        return grid.to(device)[p[:, 0] // bl - q_first][:, j[0] // bl - k_first]

    def cells(self, q_len: int, k_len: int) -> tuple[int, int, Tensor] | None:
        bl, offset = self.block, k_len - q_len
        n_kb, first = -(-k_len // bl), offset // bl  # rows 0 .. q_len - 1 lie in query cells first .. n_kb - 1
        if q_len <= 0 or k_len <= 0 or (n_kb - first) * n_kb > self._MAX_CELLS:
            return None
        if self._cells is None or self._cells[0] != (q_len, k_len):
            grid = self._grid(first, n_kb - 1, 0, n_kb - 1, n_kb)[None, None]
            self._cells = ((q_len, k_len), (bl, offset - first * bl, grid))
        return self._cells[1]

    def block_states(self, q_len: int, k_len: int, block_q: int, block_k: int, device: Device = None) -> Tensor:
        b = Blocks.make(q_len, k_len, block_q, block_k, device)
        bl, g, w = self.block, self.num_global, self.window
        q1, q2 = b.p_first // bl, b.p_last // bl  # (nqt, 1) query blocks of each row
        k1, k2 = b.ks // bl, (b.ke - 1) // bl  # (1, nkt) key blocks of each column of tiles
        seen = ((q1 < g) & (q2 >= 0)) | (k1 < g) | ((k1 - q2 <= w) & (q1 - k2 <= w))
        full = ((q2 < g) & (q1 >= 0)) | (k2 < g) | ((k2 - q1 <= w) & (q2 - k1 <= w))
        if self.num_random and q_len and k_len:
            seen = seen | self._random_tiles(q_len, k_len, block_q, block_k).to(seen.device)
        full = full | (seen & (q1 == q2) & (k1 == k2))  # a tile inside one cell is all of it
        return states(full, ~seen)

    def _random_tiles(self, q_len: int, k_len: int, block_q: int, block_k: int) -> Tensor:
        """(nqt, nkt) bool: the tiles that touch a (query block, random key block) cell."""
        bl, offset = self.block, k_len - q_len
        first, last = max(offset, 0) // bl, (k_len - 1) // bl  # query blocks holding a query row
        picks = self._random_rows(-(-k_len // bl), first, last)  # (nq, r)
        qb = torch.arange(first, last + 1)[:, None].expand_as(picks)
        hit = picks >= 0
        qb, kb = qb[hit], picks[hit]
        r1 = (qb * bl - offset).clamp(min=0) // block_q  # tile rows of the block's first and last query
        r2 = (qb * bl + bl - 1 - offset).clamp(max=q_len - 1) // block_q
        c1, c2 = kb * bl // block_k, (kb * bl + bl - 1).clamp(max=k_len - 1) // block_k
        return _rectangles((-(-q_len // block_q), -(-k_len // block_k)), r1, r2, c1, c2)

    def tile_key(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int) -> Hashable | None:
        if qe <= qs or ke <= ks:
            return None
        bl, p0 = self.block, qs + k_len - q_len
        q1, q2, k1, k2 = p0 // bl, (qe - 1 + k_len - q_len) // bl, ks // bl, (ke - 1) // bl
        if (q1 < self.num_global and q2 >= 0) or k1 < self.num_global:
            return None  # global rows and columns sit at absolute blocks
        if self.num_random and q2 >= 0:
            picks = self._random_rows(-(-k_len // bl), max(q1, 0), q2)
            if ((picks >= k1) & (picks <= k2)).any():
                return None  # so do random blocks
        return ("bigbird window", bl, self.window, p0 % bl, ks % bl, q1 - k1, qe - qs, ke - ks)

    def __repr__(self) -> str:
        return (f"bigbird(window={self.window}, num_global={self.num_global}, "
                f"num_random_blocks={self.num_random}, block={self.block}, seed={self.seed})")


def strided(stride: int, *, causal: bool = True) -> Mask:
    """Sparse Transformer strided pattern (Child et al. 2019), the union of its two factorized heads:
    the query at absolute position p sees key j if ``p - stride < j <= p`` (local) or
    ``(p - j) % stride == 0`` (strided). ``causal=False``: ``|p - j| < stride`` or a multiple, both sides.

        >>> print(strided(3).to_string(8, block=1))
        strided(stride=3, causal=True)  q_len=8 k_len=8 block=1
        █·······
        ██······
        ███·····
        ████····
        ·████···
        ··████··
        █··████·
        ·█··████

    Block states are exact; tiles depend only on p - j (cached by the tiled kernel).
    """
    return Strided(stride, causal)


def fixed(block: int, *, summary: int = 1, causal: bool = True) -> Mask:
    """Sparse Transformer fixed pattern: p sees j if ``j // block == p // block`` (same block) or
    ``j % block >= block - summary`` (the last ``summary`` positions of every block are summary cells
    that everyone sees), and ``j <= p`` when ``causal``. ``0 <= summary <= block``.

        >>> print(fixed(3, summary=1).to_string(8, block=1))
        fixed(block=3, summary=1, causal=True)  q_len=8 k_len=8 block=1
        █·······
        ██······
        ███·····
        ··██····
        ··███···
        ··████··
        ··█··██·
        ··█··███

    Blocks are laid over absolute positions (bottom-right aligned when q_len != k_len).
    """
    return Fixed(block, summary, causal)


def longformer(window: int, global_indices: Positions) -> Mask:
    """Longformer: a symmetric sliding window, ``p - window // 2 <= j <= p + window // 2`` (the paper's
    even ``window`` w: w/2 keys on each side plus the query's own), or global tokens: the absolute
    positions in ``global_indices`` see every key and are seen by every query.
    Equivalent to ``sliding_window(window // 2, window // 2) | global_tokens(global_indices)``.

        >>> print(longformer(4, [0]).to_string(9, block=1))
        longformer(window=4, global_indices=[0])  q_len=9 k_len=9 block=1
        █████████
        ████·····
        █████····
        ██████···
        █·█████··
        █··█████·
        █···█████
        █····████
        █·····███
    """
    return Longformer(window, global_indices)


def bigbird(window: int, num_global: int, num_random_blocks: int, block: int, *, seed: int = 0) -> Mask:
    """BigBird block-sparse attention (Zaheer et al. 2020, ITC form) over blocks of ``block`` positions:
    key j is in block ``j // block``, the query at absolute position p in block ``p // block``. Query
    block qb sees key block kb if

    - ``|qb - kb| <= window`` (``window`` blocks on each side: ``window=1`` is the paper's 3-block window),
    - ``qb < num_global`` or ``kb < num_global`` (the first blocks are global: see all, seen by all),
    - or kb is one of qb's ``num_random_blocks`` random blocks, drawn among the blocks qb does not see
      otherwise (fewer when fewer remain) from a CPU generator seeded with ``(seed, qb)``: the same seed
      and k_len give the same mask on every device; ``random_blocks(k_len)`` lists them.

    Blocks are absolute key positions, so with q_len < k_len (decoding) the rows are the last q_len
    rows of the k_len x k_len mask; q_len > k_len is refused. Each grid character below is one block:

        >>> print(bigbird(1, 1, 1, block=2, seed=1).to_string(16, block=2))
        bigbird(window=1, num_global=1, num_random_blocks=1, block=2, seed=1)  q_len=16 k_len=16 block=2
        ████████
        ███···█·
        ████·█··
        █·███·█·
        █·████··
        ██··███·
        █·█··███
        ██····██
    """
    return BigBird(window, num_global, num_random_blocks, block, seed)


__all__ = ["strided", "fixed", "longformer", "bigbird", "Strided", "Fixed", "Longformer", "BigBird"]
