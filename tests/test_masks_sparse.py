"""Sparse attention patterns: Sparse Transformer strided and fixed, Longformer, BigBird.

Materialization against the papers' formulas written here as Python loops, block layouts that are never
wrong (and exact or tight where promised), tile keys that only ever join equal tiles, reproducible random
blocks, the tiled kernel against the float64 dense reference, ``kernel="auto"`` choosing the tiled kernel
for a long BigBird mask, printing, and argument checks.
"""

from __future__ import annotations

import doctest
import itertools
import random

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import masks
from attnkit.functional.kernels import tiled as tiled_module
from helpers import (TOLERANCE, Inputs, assert_close, assert_raises_naming, baseline_atol, magnitude, randn, reference,
                     run, small_tiles)

EMPTY, PARTIAL, FULL = masks.EMPTY, masks.PARTIAL, masks.FULL

# (q_len, k_len): odd square, bottom-right offset, a single (decoding) query, more queries than keys
SIZES = {"square": (37, 37), "offset": (23, 61), "one-query": (1, 50), "more-queries": (45, 20)}


# --------------------------------------------------------------------------------------------------
# Definitions from the papers: visible(p, j) on Python ints, p the query's absolute position


def strided_def(stride: int, causal: bool = True):
    if causal:
        return lambda p, j: j <= p and (p - stride < j or (p - j) % stride == 0)
    return lambda p, j: abs(p - j) < stride or (p - j) % stride == 0


def fixed_def(block: int, summary: int, causal: bool = True):
    def visible(p, j):
        return (j // block == p // block or j % block >= block - summary) and (j <= p or not causal)
    return visible


def longformer_def(window: int, global_indices):
    return lambda p, j: p - window // 2 <= j <= p + window // 2 or p in global_indices or j in global_indices


def bigbird_def(window: int, num_global: int, block: int, random_blocks: torch.Tensor):
    """``random_blocks`` (n_blocks, r) is the mask's own draw, checked on its own in
    ``test_random_blocks_are_distinct_unseen_and_as_many_as_asked``."""
    picks = {qb: set(row) for qb, row in enumerate(random_blocks.tolist())}

    def visible(p, j):
        qb, kb = p // block, j // block
        return abs(qb - kb) <= window or qb < num_global or kb < num_global or kb in picks.get(qb, ())
    return visible


def by_hand(q_len: int, k_len: int, visible) -> torch.Tensor:
    """(q_len, k_len) bool from visible(p, j), with p = i + k_len - q_len."""
    return torch.tensor([[bool(visible(i + k_len - q_len, j)) for j in range(k_len)] for i in range(q_len)],
                        dtype=torch.bool).reshape(q_len, k_len)


# name -> (mask, definition (k_len) -> visible(p, j)); BigBird's random blocks depend on k_len
CASES = {
    "strided-4": (masks.strided(4), lambda n: strided_def(4)),
    "strided-1": (masks.strided(1), lambda n: strided_def(1)),
    "strided-5-bidirectional": (masks.strided(5, causal=False), lambda n: strided_def(5, causal=False)),
    "fixed-4": (masks.fixed(4), lambda n: fixed_def(4, 1)),
    "fixed-5-summary-2-bidirectional": (masks.fixed(5, summary=2, causal=False),
                                        lambda n: fixed_def(5, 2, causal=False)),
    "fixed-6-no-summary": (masks.fixed(6, summary=0), lambda n: fixed_def(6, 0)),
    "fixed-3-all-summary": (masks.fixed(3, summary=3), lambda n: fixed_def(3, 3)),
    "longformer-6": (masks.longformer(6, [0, 17]), lambda n: longformer_def(6, [0, 17])),
    "longformer-5-no-globals": (masks.longformer(5, []), lambda n: longformer_def(5, [])),
    "longformer-0": (masks.longformer(0, [3]), lambda n: longformer_def(0, [3])),
    "global_tokens": (masks.global_tokens([2, 30]), lambda n: lambda p, j: p in (2, 30) or j in (2, 30)),
}
BIGBIRD = {  # name -> (window, num_global, num_random_blocks, block, seed)
    "bigbird-1-1-2-b4": (1, 1, 2, 4, 0),
    "bigbird-0-0-3-b5-seed3": (0, 0, 3, 5, 3),
    "bigbird-2-2-0-b3": (2, 2, 0, 3, 0),
    "bigbird-too-many-random": (1, 1, 50, 4, 1),  # more than there are blocks: every block visible
}
for _name, (_w, _g, _r, _b, _s) in BIGBIRD.items():
    _m = masks.bigbird(_w, _g, _r, _b, seed=_s)
    CASES[_name] = (_m, lambda n, w=_w, g=_g, b=_b, m=_m: bigbird_def(w, g, b, m.random_blocks(n)))


def _params(names=CASES, sizes=SIZES):
    for name, size_id in itertools.product(names, sizes):
        q_len, k_len = sizes[size_id]
        if not (name.startswith("bigbird") and q_len > k_len):  # refused by BigBird.check
            yield pytest.param(name, q_len, k_len, id=f"{name}-{size_id}")


@pytest.mark.parametrize("name,q_len,k_len", list(_params()))
def test_materialize_matches_definition(name, q_len, k_len):
    mask, definition = CASES[name]
    got = mask.materialize(q_len, k_len)
    assert got.dtype == torch.bool and got.shape == (1, 1, q_len, k_len)
    expected = by_hand(q_len, k_len, definition(k_len))
    wrong = got[0, 0] != expected
    assert not wrong.any(), f"{int(wrong.sum())} entries differ, first at (i, j) = {wrong.nonzero()[0].tolist()}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_decoding_rows_are_the_last_rows_of_the_full_mask(name):
    """Bottom-right alignment: q_len < k_len gives the last q_len rows of the k_len x k_len mask."""
    mask, _ = CASES[name]
    full = mask.materialize(61, 61)
    for q_len in (1, 23):
        assert torch.equal(mask.materialize(q_len, 61), full[..., 61 - q_len:, :])


def test_bigbird_sees_whole_blocks():
    """A worked example: window=1, one global block, no random blocks, 4 positions per block."""
    grid = masks.bigbird(1, 1, 0, 4).materialize(20, 20)[0, 0, ::4, ::4].int().tolist()  # one entry per block
    assert grid == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 1, 1, 1], [1, 0, 0, 1, 1]]


@pytest.mark.parametrize("name,q_len,k_len", [p for p in _params() if p.values[0].startswith("bigbird")])
def test_bigbird_cells_expand_to_the_materialization(name, q_len, k_len):
    """The cell grid the native forward expands in C: row i sees key j iff grid[(i + q_offset) // cell, j // cell]."""
    mask, _ = CASES[name]
    cell, q_offset, grid = mask.cells(q_len, k_len)
    i, j = torch.arange(q_len)[:, None], torch.arange(k_len)[None, :]
    assert torch.equal(grid[..., (i + q_offset) // cell, j // cell], mask.materialize(q_len, k_len))


def test_bigbird_has_no_cells_when_the_grid_would_be_too_large():
    assert masks.bigbird(1, 1, 1, 1).cells(5000, 5000) is None  # 25M cells
    assert masks.bigbird(1, 1, 1, 2).cells(5000, 5000) is not None
    assert masks.bigbird(1, 1, 1, 1).cells(1, 100_000)[2].shape == (1, 1, 1, 100_000)  # decoding: one row of cells


@pytest.mark.parametrize("name,q_len,k_len", list(_params(sizes={"offset": (23, 61), "square": (37, 37)})))
def test_tile_is_the_slice_of_the_materialization(name, q_len, k_len):
    mask, _ = CASES[name]
    full = mask.materialize(q_len, k_len)[0, 0]
    gen = torch.Generator().manual_seed(len(name))
    for _ in range(6):
        qs, qe = sorted(torch.randint(0, q_len + 1, (2,), generator=gen).tolist())
        ks, ke = sorted(torch.randint(0, k_len + 1, (2,), generator=gen).tolist())
        got = mask.tile(qs, qe, ks, ke, q_len, k_len)
        assert torch.equal(got.expand(qe - qs, ke - ks), full[qs:qe, ks:ke]), f"tile {qs}:{qe} x {ks}:{ke}"


# --------------------------------------------------------------------------------------------------
# Block layouts


def true_layout(dense: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """EMPTY/PARTIAL/FULL per tile of a dense (q_len, k_len) bool mask, by padding and reshaping."""
    q_len, k_len = dense.shape
    nq, nk = -(-q_len // bq), -(-k_len // bk)

    def tiles(fill: int) -> torch.Tensor:  # (nq, bq, nk, bk), padded with a value neutral for the test
        padded = F.pad(dense.to(torch.uint8), (0, nk * bk - k_len, 0, nq * bq - q_len), value=fill)
        return padded.reshape(nq, bq, nk, bk).bool()

    seen, full = tiles(0).any(-1).any(1), tiles(1).all(-1).all(1)
    return torch.where(full, FULL, torch.where(seen, PARTIAL, EMPTY)).to(torch.int8)


def check_layout(mask, q_len: int, k_len: int, tile: tuple[int, int], *, exact: bool,
                 dense: torch.Tensor | None = None) -> None:
    """Never wrong; EMPTY always exact (what tile skipping needs); everything exact if ``exact``."""
    layout = mask.block_layout(q_len, k_len, tile)[0, 0]
    dense = mask.materialize(q_len, k_len)[0, 0] if dense is None else dense
    truth = true_layout(dense, *tile)
    where = f"{mask!r} q_len={q_len} k_len={k_len} tiles {tile}"
    assert layout.dtype == torch.int8 and layout.shape == truth.shape, where
    wrong = (layout != PARTIAL) & (layout != truth)
    assert not wrong.any(), (f"{where}: {int(wrong.sum())} tiles wrong, first at {wrong.nonzero()[0].tolist()}: "
                             f"layout says {int(layout[wrong][0])}, truth is {int(truth[wrong][0])}")
    missed = (truth == EMPTY) & (layout != EMPTY)
    assert not missed.any(), f"{where}: {int(missed.sum())} empty tiles not marked EMPTY, first at " \
                             f"{missed.nonzero()[0].tolist()}"
    if exact:
        assert torch.equal(layout, truth), f"{where}: {int((layout != truth).sum())} tiles conservative"


TILES = [(16, 16), (128, 128), (13, 29), (64, 128), (1, 1)]  # (1, 1): the layout is the mask itself
LAYOUT_SIZES = {"square": (200, 200), "offset": (77, 263), "one-query": (1, 50), "more-queries": (90, 40)}


@pytest.mark.parametrize("name,q_len,k_len", list(_params(sizes=LAYOUT_SIZES)))
def test_block_layout_is_never_wrong(name, q_len, k_len):
    """For every tiling in TILES; strided layouts are exact, the others exact for EMPTY."""
    mask, _ = CASES[name]
    dense = mask.materialize(q_len, k_len)[0, 0]
    for tile in TILES:
        check_layout(mask, q_len, k_len, tile, exact=name.startswith("strided"), dense=dense)


def test_bigbird_layout_at_its_own_block_size_has_the_expected_empty_tiles():
    """N=4096, 64 blocks of 64: row qb (not global) sees its 3-block window, the 2 global blocks and 3
    more random blocks; every other 64x64 tile is EMPTY and must be marked so."""
    n, block, window, num_global, num_random = 4096, 64, 1, 2, 3
    mask = masks.bigbird(window, num_global, num_random, block)
    n_blocks = n // block
    seen = 0
    for qb in range(n_blocks):
        fixed_part = {kb for kb in range(n_blocks) if abs(qb - kb) <= window or kb < num_global}
        seen += n_blocks if qb < num_global else len(fixed_part) + num_random
    layout = mask.block_layout(n, n, block)[0, 0]
    assert int((layout == EMPTY).sum()) == n_blocks ** 2 - seen
    assert int((layout == PARTIAL).sum()) == 0  # every tile is one cell: wholly visible or not
    check_layout(mask, n, n, (block, block), exact=True)


@pytest.mark.parametrize("name,q_len,k_len", list(_params(sizes={"square": (200, 200), "offset": (77, 263)})))
def test_tiles_with_equal_keys_are_equal(name, q_len, k_len):
    """The tiled kernel caches mask tiles by ``tile_key``: equal keys must mean equal tiles."""
    mask, _ = CASES[name]
    full = mask.materialize(q_len, k_len)[0, 0]
    for bq, bk in ((16, 16), (13, 29)):
        seen: dict = {}
        for qs, ks in itertools.product(range(0, q_len, bq), range(0, k_len, bk)):
            qe, ke = min(qs + bq, q_len), min(ks + bk, k_len)
            key = mask.tile_key(qs, qe, ks, ke, q_len, k_len)
            if key is None:
                continue
            tile = full[qs:qe, ks:ke]
            if key in seen:
                assert torch.equal(seen[key][1], tile), f"tiles {seen[key][0]} and {(qs, ks)} share key {key}"
            else:
                seen[key] = ((qs, ks), tile)
        if name != "bigbird-too-many-random":  # random blocks everywhere: no tile is relative-only
            assert seen, "no tile has a key: nothing would be cached"


def test_strided_tiles_off_the_band_share_one_key():
    """Off the local band the strided pattern repeats with period ``stride``: few distinct tiles."""
    mask, n = masks.strided(16), 512
    keys = {mask.tile_key(qs, qs + 16, ks, ks + 16, n, n) for qs in range(0, n, 16) for ks in range(0, qs, 16)}
    assert len(keys) <= 3


def random_case(kind: str, rng: random.Random):
    """A mask of ``kind`` with random parameters, its definition, and sizes (q_len <= k_len for BigBird)."""
    q_len, k_len = rng.randint(1, 90), rng.randint(1, 90)
    if kind == "strided":
        stride, causal = rng.randint(1, 9), rng.random() < 0.5
        return masks.strided(stride, causal=causal), strided_def(stride, causal), q_len, k_len
    if kind == "fixed":
        block, causal = rng.randint(1, 9), rng.random() < 0.5
        summary = rng.randint(0, block)
        return masks.fixed(block, summary=summary, causal=causal), fixed_def(block, summary, causal), q_len, k_len
    if kind == "longformer":
        window, globals_ = rng.randint(0, 12), rng.sample(range(100), rng.randint(0, 4))
        return masks.longformer(window, globals_), longformer_def(window, globals_), q_len, k_len
    window, num_global, num_random, block = rng.randint(0, 3), rng.randint(0, 3), rng.randint(0, 4), rng.randint(1, 9)
    mask = masks.bigbird(window, num_global, num_random, block, seed=rng.randint(0, 99))
    return mask, bigbird_def(window, num_global, block, mask.random_blocks(k_len)), min(q_len, k_len), k_len


@pytest.mark.parametrize("kind", ["strided", "fixed", "longformer", "bigbird"])
def test_random_parameters(kind):
    """Seeded random parameters, sizes and tilings: definition, layout and tile keys all hold."""
    rng = random.Random(kind)
    for _ in range(25):
        mask, definition, q_len, k_len = random_case(kind, rng)
        dense = mask.materialize(q_len, k_len)[0, 0]
        assert torch.equal(dense, by_hand(q_len, k_len, definition)), f"{mask!r} q_len={q_len} k_len={k_len}"
        for tile in [(rng.randint(1, 40), rng.randint(1, 40)) for _ in range(2)]:
            check_layout(mask, q_len, k_len, tile, exact=kind == "strided", dense=dense)
            tiles: dict = {}
            for qs, ks in itertools.product(range(0, q_len, tile[0]), range(0, k_len, tile[1])):
                qe, ke = min(qs + tile[0], q_len), min(ks + tile[1], k_len)
                key = mask.tile_key(qs, qe, ks, ke, q_len, k_len)
                if key is not None:
                    first = tiles.setdefault(key, dense[qs:qe, ks:ke])
                    assert torch.equal(first, dense[qs:qe, ks:ke]), f"{mask!r}: key {key} joins unequal tiles"


# --------------------------------------------------------------------------------------------------
# BigBird's random blocks


@pytest.mark.parametrize("params", [(1, 2, 3, 4, 7), *BIGBIRD.values()], ids=["1-2-3-b4-seed7", *BIGBIRD])
@pytest.mark.parametrize("k_len", [61, 64])
def test_random_blocks_are_distinct_unseen_and_as_many_as_asked(params, k_len):
    """The draws that the definition tests take from the mask, checked against what BigBird asks of them."""
    window, num_global, num_random, block, seed = params
    picks = masks.bigbird(window, num_global, num_random, block, seed=seed).random_blocks(k_len)
    n_blocks = -(-k_len // block)
    assert picks.shape == (n_blocks, num_random) and picks.dtype == torch.long
    for qb, row in enumerate(picks.tolist()):
        chosen = [kb for kb in row if kb >= 0]
        if qb < num_global:
            assert not chosen, f"global query block {qb} draws {chosen}"
            continue
        unseen = [kb for kb in range(n_blocks) if abs(qb - kb) > window and kb >= num_global]
        assert len(set(chosen)) == len(chosen) == min(num_random, len(unseen)), f"row {qb}: {row}"
        assert set(chosen) <= set(unseen), f"row {qb} draws visible blocks: {row}"


def test_random_blocks_stop_when_no_block_is_left_unseen():
    few = masks.bigbird(1, 1, 3, 4).random_blocks(20)  # 5 blocks, block 0 global: at most 2 left unseen
    assert (few >= 0).sum(dim=1).tolist() == [0, 2, 1, 1, 2] and (few[:, 2:] == -1).all()


def test_same_seed_same_mask_other_seed_other_mask():
    first = masks.bigbird(1, 1, 2, 4, seed=5).materialize(64, 64)
    again = masks.bigbird(1, 1, 2, 4, seed=5).materialize(64, 64)
    assert torch.equal(first, again)
    others = [masks.bigbird(1, 1, 2, 4, seed=s).materialize(64, 64) for s in (6, 7)]
    assert all(not torch.equal(first, other) for other in others)


def test_random_blocks_do_not_depend_on_the_query_length():
    picks = masks.bigbird(1, 1, 2, 4, seed=2).random_blocks(64)
    fresh = masks.bigbird(1, 1, 2, 4, seed=2)
    rows = fresh.materialize(5, 64)  # the draws are made while serving only the last 5 query rows
    assert torch.equal(fresh.random_blocks(64), picks)
    assert torch.equal(rows, masks.bigbird(1, 1, 2, 4, seed=2).materialize(64, 64)[..., -5:, :])


def test_bigbird_refuses_more_queries_than_keys():
    q = torch.zeros(1, 1, 30, 4)
    k = torch.zeros(1, 1, 20, 4)
    assert_raises_naming(ValueError, ["bigbird", "q_len=30", "k_len=20"], attnkit.attention, q, k, k,
                         mask=masks.bigbird(1, 1, 1, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_are_the_same_on_cuda():
    for name, (mask, _) in CASES.items():
        cpu = mask.materialize(77, 263)
        assert torch.equal(mask.materialize(77, 263, device="cuda").cpu(), cpu), name
        layout = mask.block_layout(77, 263, (16, 16))
        assert torch.equal(mask.block_layout(77, 263, (16, 16), device="cuda").cpu(), layout), name


# --------------------------------------------------------------------------------------------------
# The tiled kernel skips tiles and matches the float64 dense reference, forward and backward

KERNEL_CASES = {
    "strided": masks.strided(7),
    "strided-bidirectional": masks.strided(6, causal=False),
    "fixed": masks.fixed(8, summary=2),
    "longformer": masks.longformer(10, [0, 33]),
    "bigbird": masks.bigbird(1, 1, 2, 8, seed=1),
    "bigbird&causal": masks.bigbird(1, 1, 2, 8, seed=1) & masks.causal(),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("Nq,Nk", [(83, 83), (37, 83)], ids=["square", "offset"])
@pytest.mark.parametrize("name", sorted(KERNEL_CASES))
def test_tiled_kernel_matches_the_dense_reference(name, Nq, Nk, dtype):
    inputs = Inputs(randn(2, 2, Nq, 16, seed=Nq, scale=2.0), randn(2, 2, Nk, 16, seed=Nk + 1),
                    randn(2, 2, Nk, 16, seed=Nk + 2), options={"mask": KERNEL_CASES[name]})
    grad_out = randn(2, 2, Nq, 16, seed=Nq + 3)
    expected = reference(inputs, grad_out=grad_out)
    baseline = run("dense", inputs.to(dtype), grad_out=grad_out.to(dtype))
    with small_tiles(16, 16, 32):
        got = run("tiled", inputs.to(dtype), grad_out=grad_out.to(dtype))
    for what, a, b, e in [("out", got.out, baseline.out, expected.out)] + [
            (f"d{x}", got.grads[x], baseline.grads[x], expected.grads[x]) for x in "qkv"]:
        atol = baseline_atol(b, e, dtype) if dtype != torch.float64 else TOLERANCE["floor", dtype] * magnitude(e)
        assert_close(a, e, atol=atol, what=f"{name} {what}")


def test_tiled_kernel_skips_the_empty_tiles():
    """The plan visits only tiles the layout leaves non-empty: far fewer than all of them."""
    q = torch.zeros(1, 1, 512, 4)
    req = attnkit.AttentionRequest.build(q, q, q, mask=masks.bigbird(1, 1, 1, 16))
    with small_tiles(16, 16, 32):
        plan = tiled_module.make_plan(req)
    visited = sum(-(-(ke - ks) // 16) for row in plan for ks, ke, _ in row.chunks)
    assert visited < 0.25 * 32 * 32


def test_auto_picks_the_tiled_kernel_for_a_long_bigbird_mask():
    q = torch.zeros(1, 1, 4096, 8, dtype=torch.float64)  # float64: the rule for sparse masks alone (no native forward)
    sparse = attnkit.AttentionRequest.build(q, q, q, mask=masks.bigbird(1, 2, 3, 64))
    assert attnkit.auto_order(sparse)[0] == "tiled"
    wide = attnkit.AttentionRequest.build(q, q, q, mask=masks.bigbird(40, 2, 3, 64))  # mostly visible
    assert attnkit.auto_order(wide)[0] != "tiled"


# --------------------------------------------------------------------------------------------------
# Printing and bad arguments


@pytest.mark.parametrize("factory", [masks.strided, masks.fixed, masks.longformer, masks.bigbird],
                         ids=lambda f: f.__name__)
def test_docstring_pictures_are_true(factory):
    """The pictures in the docstrings are doctests of ``to_string``: they show what the mask does."""
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(factory, globs={factory.__name__: factory}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries >= 1


@pytest.mark.parametrize("name", sorted(CASES))
def test_print_shows_the_parameters_and_a_grid(name, capsys):
    mask, _ = CASES[name]
    print(mask)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(name.split("-")[0] + "(") and "q_len=16" in lines[0]
    assert len(lines) == 17 and all(len(row) == 16 and set(row) <= set("█░·") for row in lines[1:])


BAD_ARGUMENTS = [
    (lambda: masks.strided(0), ValueError, ["stride", "0"]),
    (lambda: masks.strided(2.0), TypeError, ["stride", "float"]),
    (lambda: masks.strided(3, causal=1), TypeError, ["causal", "bool"]),
    (lambda: masks.fixed(0), ValueError, ["block", "positive int", "0"]),
    (lambda: masks.fixed(4, summary=5), ValueError, ["summary", "[0, 4]", "5"]),
    (lambda: masks.fixed(4, summary=-1), ValueError, ["summary", "-1"]),
    (lambda: masks.longformer(-2, [0]), ValueError, ["window", "-2"]),
    (lambda: masks.longformer(True, [0]), TypeError, ["window", "bool"]),
    (lambda: masks.longformer(4, [0.5]), TypeError, ["global_indices", "float"]),
    (lambda: masks.longformer(4, [-1]), ValueError, ["global_indices", "-1"]),
    (lambda: masks.bigbird(-1, 0, 0, 4), ValueError, ["window", "-1"]),
    (lambda: masks.bigbird(1, -1, 0, 4), ValueError, ["num_global", "-1"]),
    (lambda: masks.bigbird(1, 0, 1.5, 4), TypeError, ["num_random_blocks", "1.5"]),
    (lambda: masks.bigbird(1, 0, 0, 0), ValueError, ["block", "positive int", "0"]),
    (lambda: masks.bigbird(1, 0, 0, 4, seed=-1), ValueError, ["seed", "-1"]),
    (lambda: masks.bigbird(1, 0, 0, 4, seed="a"), TypeError, ["seed", "str"]),
]


@pytest.mark.parametrize("make,error,words", BAD_ARGUMENTS,
                         ids=[f"{i}-{words[0]}" for i, (_, _, words) in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_name_the_argument(make, error, words):
    assert_raises_naming(error, words, make)
