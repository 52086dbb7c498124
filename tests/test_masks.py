"""Structured masks: dense materialization against hand-written definitions, block layouts that are
never wrong (and exact where promised), composition, printing and argument checks."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnkit import masks
EMPTY, PARTIAL, FULL = masks.EMPTY, masks.PARTIAL, masks.FULL

B, H = 2, 3
SIZES = [(24, 24), (9, 30), (1, 17)]  # (q_len, k_len): square, bottom-right offset, single query
SIZE_IDS = ["square", "offset", "one-query"]


# --------------------------------------------------------------------------------------------------
# Hand-written definitions: loops over (b, i, j) with the absolute query position p = i + k_len - q_len


def by_hand(q_len: int, k_len: int, visible) -> torch.Tensor:
    """(B, H, q_len, k_len) from visible(b, h, i, p, j) -> bool."""
    out = torch.zeros(B, H, q_len, k_len, dtype=torch.bool)
    for b, h, i, j in itertools.product(range(B), range(H), range(q_len), range(k_len)):
        out[b, h, i, j] = bool(visible(b, h, i, i + k_len - q_len, j))
    return out


K_LENGTHS, Q_LENGTHS = [13, 30], [5, 24]
DOC_IDS = torch.tensor([[0] * 7 + [1] * 10 + [2] * 13, [0] * 3 + [4] * 20 + [9] * 7])  # sorted, (B, 30)
SHUFFLED_IDS = torch.tensor([[i % 3 for i in range(30)], [(i * 7) % 4 for i in range(30)]])
PREFIX = [6, 0]
GLOBALS = [0, 5, 20]
DENSE = torch.rand(B, 1, 24, 30, generator=torch.Generator().manual_seed(0)) < 0.5


def doc_ids(k_len: int, ids=DOC_IDS) -> torch.Tensor:
    return ids[:, -k_len:]


# name -> (mask factory (k_len) -> Mask, definition (k_len) -> visible(b, h, i, p, j))
STRUCTURED = {
    "causal": (lambda n: masks.causal(), lambda n: lambda b, h, i, p, j: j <= p),
    "window-left": (lambda n: masks.sliding_window(3), lambda n: lambda b, h, i, p, j: p - 3 <= j <= p),
    "window-both": (lambda n: masks.sliding_window(2, 4), lambda n: lambda b, h, i, p, j: p - 2 <= j <= p + 4),
    "window-right-only": (lambda n: masks.sliding_window(None, 1), lambda n: lambda b, h, i, p, j: j <= p + 1),
    "window-unbounded": (lambda n: masks.sliding_window(None, None), lambda n: lambda b, h, i, p, j: True),
    "padding-keys": (lambda n: masks.padding(K_LENGTHS), lambda n: lambda b, h, i, p, j: j < K_LENGTHS[b]),
    "padding-both": (lambda n: masks.padding(K_LENGTHS, q_lengths=Q_LENGTHS),
                     lambda n: lambda b, h, i, p, j: j < K_LENGTHS[b] and i < Q_LENGTHS[b]),
    "padding-scalar": (lambda n: masks.padding(11), lambda n: lambda b, h, i, p, j: j < 11),
    "document": (lambda n: masks.document(doc_ids(n)),
                 lambda n: lambda b, h, i, p, j: doc_ids(n)[b, p] == doc_ids(n)[b, j]),
    "document-unsorted": (lambda n: masks.document(doc_ids(n, SHUFFLED_IDS)),
                          lambda n: lambda b, h, i, p, j: (doc_ids(n, SHUFFLED_IDS)[b, p]
                                                           == doc_ids(n, SHUFFLED_IDS)[b, j])),
    "prefix-lm": (lambda n: masks.prefix_lm(PREFIX), lambda n: lambda b, h, i, p, j: j <= p or j < PREFIX[b]),
    "global-tokens": (lambda n: masks.global_tokens(GLOBALS),
                      lambda n: lambda b, h, i, p, j: p in GLOBALS or j in GLOBALS),
}


def _sizes_for(name: str):
    for (q_len, k_len), size_id in zip(SIZES, SIZE_IDS):
        if name.startswith("document") and q_len > k_len:
            continue
        yield pytest.param(name, q_len, k_len, id=f"{name}-{size_id}")


MATERIALIZE_PARAMS = [p for name in STRUCTURED for p in _sizes_for(name)]


@pytest.mark.parametrize("name,q_len,k_len", MATERIALIZE_PARAMS)
def test_materialize_matches_definition(name, q_len, k_len):
    make, definition = STRUCTURED[name]
    got = make(k_len).materialize(q_len, k_len)
    assert got.dtype == torch.bool and got.dim() == 4
    expected = by_hand(q_len, k_len, definition(k_len))
    assert torch.equal(got.expand(B, H, q_len, k_len), expected)


def test_document_with_query_ids():
    q_ids = torch.tensor([[2, 0, 1], [9, 9, 4]])
    got = masks.document(DOC_IDS, q_ids=q_ids).materialize(3, 30)
    expected = by_hand(3, 30, lambda b, h, i, p, j: q_ids[b, i] == DOC_IDS[b, j])
    assert torch.equal(got.expand(B, H, 3, 30), expected)


def test_dense_materializes_itself():
    assert torch.equal(masks.dense(DENSE).materialize(24, 30), DENSE)
    two_d = DENSE[0, 0]
    assert torch.equal(masks.dense(two_d).materialize(24, 30).expand(1, 1, 24, 30), two_d[None, None])


def test_causal_is_bottom_right_aligned():
    """The docstring's picture: q_len=2, k_len=5."""
    got = masks.causal().materialize(2, 5)[0, 0].int().tolist()
    assert got == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_no_global_tokens_is_the_empty_mask():
    """An empty index list is a list of ints like any other: nothing is global, nothing visible."""
    mask = masks.global_tokens([])
    assert not mask.materialize(4, 6).any()
    assert (mask.block_layout(4, 6, 2) == EMPTY).all()


# --------------------------------------------------------------------------------------------------
# Block layouts


def exact_layout(dense: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """EMPTY/PARTIAL/FULL per tile from a dense (b, h, q_len, k_len) bool tensor, by loops."""
    b, h, q_len, k_len = dense.shape
    nqb, nkb = -(-q_len // bq), -(-k_len // bk)
    out = torch.empty(b, h, nqb, nkb, dtype=torch.int8)
    for x, y, qi, ki in itertools.product(range(b), range(h), range(nqb), range(nkb)):
        tile = dense[x, y, qi * bq:(qi + 1) * bq, ki * bk:(ki + 1) * bk]
        out[x, y, qi, ki] = FULL if tile.all() else EMPTY if not tile.any() else PARTIAL
    return out


def check_layout(mask: masks.Mask, q_len: int, k_len: int, block, *, exact: bool) -> None:
    bq, bk = (block, block) if isinstance(block, int) else block
    dense = mask.materialize(q_len, k_len)
    layout = mask.block_layout(q_len, k_len, block)
    assert layout.dtype == torch.int8
    assert layout.shape[-2:] == (-(-q_len // bq), -(-k_len // bk))
    shape = torch.broadcast_shapes(dense.shape[:2], layout.shape[:2])
    dense = dense.expand(*shape, q_len, k_len)
    layout = layout.expand(*shape, *layout.shape[-2:])
    truth = exact_layout(dense, bq, bk)
    wrong = (layout != PARTIAL) & (layout != truth)
    assert not wrong.any(), (f"{int(wrong.sum())} tiles wrong, first at {wrong.nonzero()[0].tolist()}: "
                             f"layout says {int(layout[wrong][0])}, truth is {int(truth[wrong][0])}")
    if exact:
        assert torch.equal(layout, truth), f"layout is not exact: {int((layout != truth).sum())} tiles conservative"


BLOCKS = [1, 4, 7, 16, 64, (5, 3)]  # 7, (5, 3): do not divide the lengths; 64: one tile covers all
EXACT = {"causal", "window-left", "window-both", "window-right-only", "window-unbounded", "padding-keys",
         "padding-both", "padding-scalar", "document"}


@pytest.mark.parametrize("block", BLOCKS, ids=str)
@pytest.mark.parametrize("name,q_len,k_len", MATERIALIZE_PARAMS)
def test_block_layout_never_wrong(name, q_len, k_len, block):
    make, _ = STRUCTURED[name]
    check_layout(make(k_len), q_len, k_len, block, exact=name in EXACT)


DENSE_PATTERNS = {
    "random": DENSE,
    "diagonal": torch.eye(24, 30, dtype=torch.bool),  # one True per row: a tile holds exactly block_k Trues
    "first-row": torch.zeros(24, 30, dtype=torch.bool).index_fill_(0, torch.tensor([0]), True),
    "upper": torch.ones(24, 30, dtype=torch.bool).triu(),
    "per-head": torch.rand(1, 3, 24, 30, generator=torch.Generator().manual_seed(1)) < 0.2,
}


@pytest.mark.parametrize("block", BLOCKS, ids=str)
@pytest.mark.parametrize("pattern", sorted(DENSE_PATTERNS))
def test_dense_block_layout_never_wrong(pattern, block):
    check_layout(masks.dense(DENSE_PATTERNS[pattern]), 24, 30, block, exact=False)


def test_layout_marks_empty_and_full_tiles():
    """Small known grid: causal, 4x4 tiles of a 12x12 mask."""
    expected = torch.tensor([[PARTIAL, EMPTY, EMPTY], [FULL, PARTIAL, EMPTY], [FULL, FULL, PARTIAL]])
    assert torch.equal(masks.causal().block_layout(12, 12, 4)[0, 0], expected.to(torch.int8))


# --------------------------------------------------------------------------------------------------
# Composition


def _parts(k_len: int):
    return {name: make(k_len) for name, (make, _) in STRUCTURED.items() if not name.startswith("document")}


COMPOSITIONS = {
    "window&padding": (lambda m: m["window-both"] & m["padding-both"],
                       lambda d: d["window-both"] & d["padding-both"]),
    "window|global": (lambda m: m["window-left"] | m["global-tokens"],
                      lambda d: d["window-left"] | d["global-tokens"]),
    "~causal": (lambda m: ~m["causal"], lambda d: ~d["causal"]),
    "~(prefix|global)&padding": (lambda m: ~(m["prefix-lm"] | m["global-tokens"]) & m["padding-keys"],
                                 lambda d: ~(d["prefix-lm"] | d["global-tokens"]) & d["padding-keys"]),
    "causal&dense-tensor": (lambda m: m["causal"] & DENSE, lambda d: d["causal"] & DENSE),
    "dense|window": (lambda m: masks.dense(DENSE) | m["window-both"], lambda d: DENSE | d["window-both"]),
}


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_composition_matches_dense_logic(name):
    q_len, k_len = 24, 30
    compose, logic = COMPOSITIONS[name]
    parts = _parts(k_len)
    dense_parts = {k: by_hand(q_len, k_len, STRUCTURED[k][1](k_len)) for k in parts}
    expected = logic(dense_parts)
    mask = compose(parts)
    got = mask.materialize(q_len, k_len)
    assert torch.equal(got.expand(B, H, q_len, k_len), expected.expand(B, H, q_len, k_len))
    for block in (4, 7):
        check_layout(mask, q_len, k_len, block, exact=False)


# --------------------------------------------------------------------------------------------------
# Printing


def test_str_shows_a_block_grid():
    text = masks.causal().to_string(8, 8, block=1)
    lines = text.splitlines()
    assert "causal" in lines[0]
    assert lines[1:] == ["█" * (i + 1) + "·" * (7 - i) for i in range(8)]


def test_str_of_a_composed_mask_marks_partial_tiles():
    lines = str(masks.sliding_window(3) & masks.causal()).splitlines()
    grid = lines[1:]
    assert len(grid) == 16 and all(len(row) == 16 for row in grid)  # default: 16 positions, 1 per tile
    assert grid[10] == "·" * 7 + "█" * 4 + "·" * 5
    coarse = (masks.sliding_window(3) & masks.causal()).to_string(16, 16, block=4).splitlines()[1:]
    assert coarse[0] == "░···" and coarse[1] == "░░··"


# --------------------------------------------------------------------------------------------------
# Bad arguments


BAD_ARGUMENTS = [
    (lambda: masks.sliding_window(-1), ValueError, "left"),
    (lambda: masks.sliding_window(2, -3), ValueError, "right"),
    (lambda: masks.sliding_window(2.5), ValueError, "left"),
    (lambda: masks.padding([3.0, 4.0]), TypeError, "k_lengths"),
    (lambda: masks.padding([[3, 4]]), TypeError, "k_lengths"),
    (lambda: masks.padding([3, -1]), ValueError, "k_lengths"),
    (lambda: masks.padding([3, 4], q_lengths=[True, False]), TypeError, "q_lengths"),
    (lambda: masks.document(torch.rand(2, 5)), TypeError, "ids"),
    (lambda: masks.document(torch.zeros(2, 2, 5, dtype=torch.long)), TypeError, "ids"),
    (lambda: masks.document([0, 1], q_ids=[0.5]), TypeError, "q_ids"),
    (lambda: masks.prefix_lm([1.5]), TypeError, "prefix_lengths"),
    (lambda: masks.prefix_lm([-2]), ValueError, "prefix_lengths"),
    (lambda: masks.global_tokens([0.5]), TypeError, "indices"),
    (lambda: masks.global_tokens([-1]), ValueError, "indices"),
    (lambda: masks.dense(torch.ones(3, 3)), TypeError, "bool"),
    (lambda: masks.dense(torch.ones(3, dtype=torch.bool)), ValueError, "mask"),
    (lambda: masks.dense([[True]]), TypeError, "mask"),
    (lambda: masks.causal() & 3, TypeError, "mask"),
]


@pytest.mark.parametrize("make,error,name", BAD_ARGUMENTS,
                         ids=[f"{i}-{name}" for i, (_, _, name) in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_name_the_argument(make, error, name):
    with pytest.raises(error, match=name):
        make()
