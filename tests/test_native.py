"""The tiled kernel's native forward (attnkit/csrc/tiled_fwd.c, via kernels/native.py): float32, and
bfloat16 / float16 widened as read.

Every case checks three things: the native path really ran (a spy counts its calls), its output and
log-sum-exp match the float64 dense reference within the tolerance rule of helpers.py, and they match
the PyTorch path it replaces. The cases reach the C code's edges: head- and batch-dependent mask
tiles, grouped heads, head sizes that are not multiples of 16 or exceed one 64-wide register tile,
chunks that start off a 16-key boundary, rows that see nothing, strided inputs and one thread or two.
The broad kernel suite (test_kernels.py) also runs through the native path for every float32 case,
and again with it turned off ("tiled-torch").
"""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.functional.kernels import native
from helpers import assert_close, baseline_atol, magnitude, native_off, needs_native, randn, small_tiles

pytestmark = needs_native


def test_native_forward_is_available_where_required():
    """CI sets ATTNKIT_REQUIRE_NATIVE=1: there the extension must have been built, load and serve."""
    assert native.status() == "", native.status()


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the native forward."""
    calls = []
    forward = native.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(native, "forward", counting)
    return calls


def _qkv(B, H, Hkv, Nq, Nk, D, Dv, seed):
    return (randn(B, H, Nq, D, seed=seed), randn(B, Hkv, Nk, D, seed=seed + 1), randn(B, Hkv, Nk, Dv, seed=seed + 2))


def _head_mask(B, H, Nq, Nk, seed):
    """A random bool mask that differs per batch and head, with a few rows that see nothing."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, H, Nq, Nk, generator=g) < 0.3
    m[:, :, ::7] = False
    return masks.dense(m)


# (id, B, H, Hkv, Nq, Nk, D, Dv, options)
CASES = [
    ("dense", 2, 4, 4, 130, 200, 64, 64, {}),
    ("causal-odd", 2, 4, 2, 97, 1025, 59, 37, {"causal": True}),
    ("window", 1, 2, 2, 600, 600, 64, 64, {"window": (100, 0)}),
    ("window-both-sides", 1, 3, 1, 300, 300, 32, 80, {"window": (40, 23)}),
    ("document-per-batch", 2, 2, 2, 257, 257, 64, 64,
     {"mask": masks.document(torch.tensor([[0] * 100 + [1] * 157, [0] * 3 + [1] * 200 + [2] * 54]))}),
    ("padding", 3, 2, 1, 70, 90, 24, 24, {"mask": masks.padding([90, 17, 1], [70, 5, 0])}),
    ("head-dependent", 2, 4, 2, 150, 170, 64, 64, {"mask": _head_mask(2, 4, 150, 170, seed=7)}),
    ("bigbird", 1, 2, 2, 512, 512, 64, 64, {"mask": masks.bigbird(2, 1, 2, 32, seed=3)}),
    ("longformer", 1, 2, 2, 400, 400, 64, 64, {"mask": masks.longformer(64, [0, 200])}),
    ("strided", 1, 2, 2, 300, 300, 16, 16, {"mask": masks.strided(17)}),
    ("wide-heads", 1, 2, 2, 100, 120, 128, 96, {"causal": True}),
    ("value-tail-past-64", 1, 2, 1, 90, 110, 20, 100, {"window": (30, 30)}),
    ("per-head-mask-shared-by-batch", 2, 4, 4, 80, 96, 64, 64, {"mask": _head_mask(1, 4, 80, 96, seed=2)}),
    ("decode", 2, 8, 2, 1, 333, 64, 64, {"causal": True}),
    ("one-key", 1, 2, 2, 33, 1, 64, 64, {}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_native_matches_reference_and_pytorch_path(case, spy):
    _, B, H, Hkv, Nq, Nk, D, Dv, options = case
    q, k, v = _qkv(B, H, Hkv, Nq, Nk, D, Dv, seed=len(case[0]))
    want, want_lse = attnkit.attention(q, k, v, kernel="dense", return_lse=True, **options)
    base, _ = attnkit.attention(q.float(), k.float(), v.float(), kernel="dense", return_lse=True, **options)
    out, lse = attnkit.attention(q.float(), k.float(), v.float(), kernel="tiled", return_lse=True, **options)
    assert spy, "the native forward did not run"
    atol = baseline_atol(base, want, torch.float32)
    assert_close(out, want, atol=atol, what="out")
    assert_close(lse, want_lse, atol=atol, what="lse")
    with native_off():
        calls = len(spy)
        torch_out, torch_lse = attnkit.attention(q.float(), k.float(), v.float(), kernel="tiled", return_lse=True,
                                                 **options)
        assert len(spy) == calls, "ATTNKIT_NATIVE=0 did not turn the native forward off"
    assert_close(out, torch_out, atol=atol, what="out against the PyTorch path")
    assert_close(lse, torch_lse, atol=atol, what="lse against the PyTorch path")


HALF_CASES = [c for c in CASES if c[0] in ("causal-odd", "head-dependent", "bigbird", "value-tail-past-64", "decode")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("case", HALF_CASES, ids=[c[0] for c in HALF_CASES])
def test_half_precision_inputs_are_converted_as_c_reads_them(case, dtype, spy):
    """bfloat16 and float16 q, k, v (inference) are read and widened to float32 by the C code: the result
    is the float64 reference on the same rounded inputs, up to the output's own rounding."""
    _, B, H, Hkv, Nq, Nk, D, Dv, options = case
    q, k, v = (t.to(dtype) for t in _qkv(B, H, Hkv, Nq, Nk, D, Dv, seed=len(case[0])))
    want, want_lse = attnkit.attention(q.double(), k.double(), v.double(), kernel="dense", return_lse=True, **options)
    base = attnkit.attention(q, k, v, kernel="dense", **options)
    out, lse = attnkit.attention(q, k, v, kernel="tiled", return_lse=True, **options)
    assert len(spy) == 1, "the native forward did not run"
    assert out.dtype == dtype and lse.dtype == torch.float32
    atol = baseline_atol(base, want, dtype)
    assert_close(out, want, atol=atol, what="out")
    assert_close(lse, want_lse, atol=1e-4 * magnitude(want_lse), what="lse")  # computed in float32
    with native_off():
        torch_out = attnkit.attention(q, k, v, kernel="tiled", **options)
    assert len(spy) == 1
    assert_close(out, torch_out, atol=atol, what="out against the PyTorch path")


def test_half_precision_with_a_backward_takes_the_pytorch_forward(spy):
    """The backward recomputes scores in bfloat16, so its probabilities match only a log-sum-exp from the
    same arithmetic: with gradients, half-precision forwards stay in PyTorch; float32 ones do not."""
    for dtype, native_calls in ((torch.bfloat16, 0), (torch.float16, 0), (torch.float32, 1)):
        q, k, v = (t.to(dtype).requires_grad_() for t in _qkv(1, 2, 2, 40, 40, 16, 16, seed=1))
        spy.clear()
        attnkit.attention(q, k, v, kernel="tiled", causal=True).sum().backward()
        assert len(spy) == native_calls, dtype
        with torch.no_grad():
            attnkit.attention(q, k, v, kernel="tiled", causal=True)
        assert len(spy) == native_calls + 1, dtype


def test_unseen_nan_stays_out_of_half_precision_inputs(spy):
    q, k, v = (t.to(torch.bfloat16) for t in _qkv(1, 2, 2, 50, 60, 32, 32, seed=8))
    visible = torch.ones(50, 60, dtype=torch.bool)
    visible[:, 20:30] = False  # keys no query sees
    dirty_k, dirty_v = k.clone(), v.clone()
    dirty_k[..., 20:30, :], dirty_v[..., 20:30, :] = float("nan"), float("inf")
    got = attnkit.attention(q, dirty_k, dirty_v, kernel="tiled", mask=visible)
    want = attnkit.attention(q, k, v, kernel="tiled", mask=visible)
    assert len(spy) == 2 and torch.isfinite(got).all()
    assert torch.equal(got, want)


@pytest.mark.parametrize("tiles", [(24, 40, 80), (16, 16, 48), (7, 9, 27)], ids=lambda t: "x".join(map(str, t)))
def test_native_with_chunks_off_16_key_boundaries(tiles, spy):
    """Query blocks, key blocks and chunks of sizes that are not multiples of 16, so chunks start
    inside a packed 16-key block and panels end mid-block."""
    q, k, v = _qkv(2, 4, 2, 131, 157, 40, 24, seed=11)
    for options in ({"causal": True}, {"window": (30, 5)}, {"mask": _head_mask(2, 4, 131, 157, seed=1)}):
        want = attnkit.attention(q, k, v, kernel="dense", **options)
        base = attnkit.attention(q.float(), k.float(), v.float(), kernel="dense", **options)
        with small_tiles(*tiles):
            out = attnkit.attention(q.float(), k.float(), v.float(), kernel="tiled", **options)
        assert_close(out, want, atol=baseline_atol(base, want, torch.float32), what=f"out {options}")
    assert len(spy) == 3


class _Cells(masks.Mask):
    """A mask constant on cell x cell squares, per batch and query head, with a query offset: the native
    forward expands its tiles from the grid in C (chunk index -2) and never asks for element tiles."""

    def __init__(self, grid: torch.Tensor, cell: int, q_offset: int):
        self.grid, self.cell, self.q_offset, self.tiles_asked = grid, cell, q_offset, 0

    def cells(self, q_len, k_len):
        return self.cell, self.q_offset, self.grid

    def _tile(self, qs, qe, ks, ke):
        i, j = torch.arange(qs, qe)[:, None], torch.arange(ks, ke)[None, :]
        return self.grid[..., (i + self.q_offset) // self.cell, j // self.cell]

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        self.tiles_asked += 1
        return self._tile(qs, qe, ks, ke)

    def block_states(self, q_len, k_len, block_q, block_k, device=None):
        return torch.ones(1, 1, -(-q_len // block_q), -(-k_len // block_k), dtype=torch.int8)  # PARTIAL: allowed


def _cell_mask(b, h, Nq, Nk, cell, q_offset, seed):
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(b, h, (Nq - 1 + q_offset) // cell + 1, -(-Nk // cell), generator=g) < 0.4
    grid[..., 1, :] = False  # the rows of query cell 1 see nothing
    return _Cells(grid, cell, q_offset)


@pytest.mark.parametrize("grid_shape", [(2, 4), (1, 4), (2, 1), (1, 1)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell,q_offset,tiles",
                         [(7, 3, None), (20, 0, (7, 9, 27)), (64, 37, None), (16, 5, (24, 40, 80))])
def test_cell_grid_masks_are_expanded_in_c(grid_shape, cell, q_offset, tiles, spy):
    """Masks that declare a cell grid (BigBird) hand C the grid, which it expands per chunk: batch- and
    head-dependent grids over grouped heads, cells that are not multiples of 16, a query offset, rows
    that see nothing, chunks off 16-key boundaries."""
    q, k, v = _qkv(2, 4, 2, 141, 203, 32, 24, seed=cell)
    mask = _cell_mask(*grid_shape, 141, 203, cell, q_offset, seed=cell + q_offset)
    want, want_lse = attnkit.attention(q, k, v, kernel="dense", mask=mask, return_lse=True)
    base = attnkit.attention(q.float(), k.float(), v.float(), kernel="dense", mask=mask)
    mask.tiles_asked = 0
    with small_tiles(*(tiles or (128, 128, 1024))):
        out, lse = attnkit.attention(q.float(), k.float(), v.float(), kernel="tiled", mask=mask, return_lse=True)
    assert len(spy) == 1 and mask.tiles_asked == 0, "the native forward asked for element tiles"
    atol = baseline_atol(base, want, torch.float32)
    assert_close(out, want, atol=atol, what="out")
    assert_close(lse, want_lse, atol=atol, what="lse")
    first_rows = slice(max(cell - q_offset, 0), 2 * cell - q_offset)  # query cell 1
    assert (out[..., first_rows, :] == 0).all() and torch.isneginf(lse[..., first_rows]).all()


@pytest.mark.parametrize("bad", [
    lambda m: (m.cell, m.q_offset, m.grid.long()),  # not bool
    lambda m: (m.cell, m.q_offset, m.grid[0, 0]),  # 2-D
    lambda m: (m.cell, m.q_offset, m.grid[..., :-1]),  # too few key cells
    lambda m: (m.cell, m.q_offset, m.grid[..., :-1, :]),  # too few query cells
    lambda m: (m.cell, -1, m.grid),  # negative offset
    lambda m: (0, m.q_offset, m.grid),  # empty cells
    lambda m: (m.cell, m.q_offset, m.grid.expand(2, 3, -1, -1)),  # 3 heads for 4
], ids=["int64", "2-d", "few-key-cells", "few-query-cells", "negative-offset", "cell-0", "wrong-heads"])
def test_a_wrong_cell_grid_is_refused_before_c_reads_it(bad):
    q, k, v = (t.float() for t in _qkv(2, 4, 2, 50, 70, 16, 16, seed=2))
    mask = _cell_mask(1, 1, 50, 70, 10, 0, seed=1)
    mask.cells = lambda q_len, k_len: bad(mask)
    with pytest.raises(ValueError, match=r"cells\(50, 70\) returned .*expected cell >= 1"):
        attnkit.attention(q, k, v, kernel="tiled", mask=mask)


def test_unseen_nan_stays_out_of_cell_grid_masks(spy):
    q, k, v = (t.float() for t in _qkv(1, 2, 1, 90, 130, 16, 16, seed=12))
    mask = _cell_mask(1, 2, 90, 130, 10, 0, seed=4)
    mask.grid[..., [3, 7]] = False  # keys 30..39 and 70..79: no query of any head sees them
    unseen = ~mask._tile(0, 90, 0, 130).any(dim=-2).any(dim=0).any(dim=0)
    assert unseen.sum() == 20
    dirty_k, dirty_v = k.clone(), v.clone()
    dirty_k[..., unseen, :], dirty_v[..., unseen, :] = float("nan"), float("inf")
    with small_tiles(16, 16, 48):
        got = attnkit.attention(q, dirty_k, dirty_v, kernel="tiled", mask=mask)
        want = attnkit.attention(q, k, v, kernel="tiled", mask=mask)
    assert len(spy) == 2 and mask.tiles_asked == 0
    assert torch.equal(got, want)


def test_rows_that_see_nothing_give_zeros_and_minus_inf(spy):
    q, k, v = (t.float() for t in _qkv(1, 2, 2, 64, 80, 64, 64, seed=5))
    visible = torch.ones(1, 2, 64, 80, dtype=torch.bool)
    visible[:, :, 10:20] = False  # rows 10..19 see no key
    visible[:, 1, 40] = False  # one row of one head
    out, lse = attnkit.attention(q, k, v, mask=masks.dense(visible), kernel="tiled", return_lse=True)
    assert spy
    assert (out[:, :, 10:20] == 0).all() and (out[:, 1, 40] == 0).all()
    assert torch.isneginf(lse[:, :, 10:20]).all() and torch.isneginf(lse[:, 1, 40]).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse[:, 0, 21:]).all()


def test_unseen_nan_before_an_unmasked_chunk_start(spy):
    """Key blocks of 40: the fully visible chunk [40, 80) starts inside the packed 16-key block [32, 48),
    whose keys 32..39 no query sees and hold NaN / inf; none of it may reach the output."""
    q, k, v = (t.float() for t in _qkv(1, 2, 2, 40, 80, 16, 16, seed=6))
    visible = torch.zeros(1, 1, 40, 80, dtype=torch.bool)
    visible[..., :20] = True  # keys 0..19 and 40..79 are seen; 20..39 by nobody
    visible[..., 40:] = True
    poison = torch.tensor([float("nan"), float("inf"), float("-inf")])[torch.arange(20) % 3][:, None]
    dirty_k, dirty_v = k.clone(), v.clone()
    dirty_k[:, :, 20:40], dirty_v[:, :, 20:40] = poison, poison.flip(0)
    with small_tiles(40, 40, 40):
        want = attnkit.attention(q, k, v, mask=masks.dense(visible), kernel="tiled")
        got = attnkit.attention(q, dirty_k, dirty_v, mask=masks.dense(visible), kernel="tiled")
    assert len(spy) == 2
    assert torch.isfinite(got).all()
    assert torch.equal(got, want)


def test_nan_at_a_visible_key_gives_nan_as_the_pytorch_path_does(spy):
    q, k, v = (t.float() for t in _qkv(1, 2, 2, 20, 30, 16, 16, seed=3))
    v[0, 0, 7, 0] = float("nan")  # seen by every query of head 0
    got = attnkit.attention(q, k, v, kernel="tiled")
    assert spy
    with native_off():
        want = attnkit.attention(q, k, v, kernel="tiled")
    assert torch.isnan(got[0, 0, :, 0]).all() and torch.isnan(want[0, 0, :, 0]).all()
    assert torch.isfinite(got[0, 1]).all()


def test_keys_and_values_broadcast_over_batch_and_heads(spy):
    """k and v expanded (stride 0) over the batch and the k/v heads."""
    q = randn(2, 4, 50, 32, seed=1).float()
    k = randn(1, 1, 60, 32, seed=2).float().expand(2, 2, 60, 32)
    v = randn(1, 1, 60, 32, seed=3).float().expand(2, 2, 60, 32)
    out = attnkit.attention(q, k, v, kernel="tiled", causal=True)
    want = attnkit.attention(q.double(), k.double(), v.double(), kernel="dense", causal=True)
    base = attnkit.attention(q, k, v, kernel="dense", causal=True)
    assert spy
    assert_close(out, want, atol=baseline_atol(base, want, torch.float32), what="out")


def test_strided_inputs(spy):
    """q, k, v as views of (B, N, H, D) tensors, as a projection's output is usually laid out."""
    B, N, H, D = 2, 150, 4, 64
    q, k, v = (randn(B, N, H, D, seed=s).float().transpose(1, 2) for s in (1, 2, 3))
    assert not q.is_contiguous()
    out = attnkit.attention(q, k, v, kernel="tiled", window=(33, 0))
    want = attnkit.attention(q.double(), k.double(), v.double(), kernel="dense", window=(33, 0))
    base = attnkit.attention(q, k, v, kernel="dense", window=(33, 0))
    assert spy
    assert_close(out, want, atol=baseline_atol(base, want, torch.float32), what="out")


def test_thread_count_does_not_change_a_bit(spy):
    """Each (query block, batch, head) is computed whole by one thread, so the result is bitwise the
    same on one thread or two."""
    q, k, v = (t.float() for t in _qkv(1, 4, 4, 700, 700, 64, 64, seed=9))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = attnkit.attention(q, k, v, kernel="tiled", causal=True)
        torch.set_num_threads(2)
        two = attnkit.attention(q, k, v, kernel="tiled", causal=True)
    finally:
        torch.set_num_threads(threads)
    assert len(spy) == 2
    assert torch.equal(one, two)


def test_gradients_through_the_native_forward(spy):
    """Backward runs in PyTorch from the log-sum-exp the native forward saved: gradients match float64."""
    q, k, v = _qkv(1, 4, 2, 200, 230, 48, 40, seed=4)
    grad = randn(1, 4, 200, 40, seed=8)

    def grads(kernel, dtype):
        leaves = [t.to(dtype).detach().requires_grad_() for t in (q, k, v)]
        out = attnkit.attention(*leaves, kernel=kernel, window=(64, 8))
        (out.double() * grad).sum().backward()
        return [t.grad for t in leaves]

    want, base, got = grads("dense", torch.float64), grads("dense", torch.float32), grads("tiled", torch.float32)
    assert spy
    for name, g, w, b in zip("qkv", got, want, base):
        assert_close(g, w, atol=baseline_atol(b, w, torch.float32), what=f"grad {name}")


def test_what_the_native_forward_does_not_take_goes_to_the_pytorch_path(spy):
    """float64, bias, softcap and dropout stay on the PyTorch path (and still work)."""
    q, k, v = _qkv(1, 2, 2, 40, 50, 16, 16, seed=2)
    attnkit.attention(q, k, v, kernel="tiled")  # float64
    qf, kf, vf = q.float(), k.float(), v.float()
    attnkit.attention(qf, kf, vf, kernel="tiled", bias=torch.zeros(1, 2, 40, 50))
    attnkit.attention(qf, kf, vf, kernel="tiled", softcap=5.0)
    attnkit.attention(qf, kf, vf, kernel="tiled", dropout=0.1)
    assert not spy
    attnkit.attention(qf, kf, vf, kernel="tiled")
    assert len(spy) == 1


def test_status_names_the_switch(monkeypatch):
    monkeypatch.setenv("ATTNKIT_NATIVE", "0")
    assert "ATTNKIT_NATIVE=0" in native.status()
