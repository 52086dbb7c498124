"""Masks from one function (``masks.from_function``, FlexAttention's mask_mod) and the ``Mask`` base class's
defaults (a subclass that writes only ``tile``): every kernel, exact tile states, composition, printing."""

from __future__ import annotations

import doctest
import itertools

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.functional.masks import TileState, functions
from helpers import (KERNELS, Inputs, assert_close, baseline_atol, kernel_dtypes, naive_attention, randn, reference,
                     run, small_tiles)


def exact_states(visible: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """TileState per tile of a (b, h, q, k) bool tensor, by loops (independent of the code under test)."""
    b, h, nq, nk = visible.shape
    out = torch.empty(b, h, -(-nq // bq), -(-nk // bk), dtype=torch.int8)
    for x, y, i, j in itertools.product(range(b), range(h), range(out.shape[2]), range(out.shape[3])):
        t = visible[x, y, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
        out[x, y, i, j] = TileState.FULL if t.all() else TileState.EMPTY if not t.any() else TileState.PARTIAL
    return out


def by_loops(fn, batch: int, heads: int, nq: int, nk: int) -> torch.Tensor:
    """fn evaluated one entry at a time on scalar index tensors, as FlexAttention defines a mask_mod."""
    out = torch.empty(batch, heads, nq, nk, dtype=torch.bool)
    for b, h, i, j in itertools.product(range(batch), range(heads), range(nq), range(nk)):
        out[b, h, i, j] = bool(fn(torch.tensor(b), torch.tensor(h), torch.tensor(i), torch.tensor(j)))
    return out


DOC = torch.tensor([0] * 7 + [1] * 12 + [2] * 3 + [3] * 15)  # 37 positions, uneven documents
LENGTHS = torch.tensor([37, 20])  # per-batch valid keys


def causal_fn(b, h, q, kv):
    return q >= kv


def document_causal_fn(b, h, q, kv):
    return (DOC[q] == DOC[kv]) & (q >= kv)


def per_batch_head_fn(b, h, q, kv):  # padding per batch, a window whose width grows with the head
    return (kv < LENGTHS[b]) & ((q - kv).abs() <= 2 + 3 * h)


def empty_rows_fn(b, h, q, kv):  # rows 5..9 see nothing
    return ((q < 5) | (q > 9)) & (kv <= q + 3)


FUNCTIONS = {  # name: (fn, batch, heads)
    "causal": (causal_fn, None, None),
    "document-causal": (document_causal_fn, None, None),
    "per-batch-head": (per_batch_head_fn, 2, 4),
    "empty-rows": (empty_rows_fn, None, None),
}


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("q_len,k_len", [(37, 37), (11, 37), (1, 37)])
@pytest.mark.parametrize("block", [1, 5, 16, (7, 3), 64])
def test_states_and_materialize_are_exact(name, q_len, k_len, block):
    fn, batch, heads = FUNCTIONS[name]
    m = masks.from_function(fn, batch=batch, heads=heads)
    truth = by_loops(fn, batch or 1, heads or 1, q_len, k_len)
    assert torch.equal(m.materialize(q_len, k_len).expand_as(truth), truth)
    bq, bk = (block, block) if isinstance(block, int) else block
    layout = m.block_layout(q_len, k_len, block)
    assert layout.dtype == torch.int8
    assert torch.equal(layout, exact_states(truth, bq, bk))


@pytest.mark.parametrize("variant,dtype", kernel_dtypes((torch.float64, torch.float32)))
@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_kernel_equals_the_dense_bool_mask(variant, dtype, name):
    fn, batch, heads = FUNCTIONS[name]
    B, H, Hkv, N = 2, 4, 2, 37
    q, k, v = (randn(B, h, N, 24, seed=s) for s, h in ((1, H), (2, Hkv), (3, Hkv)))
    visible = by_loops(fn, batch or 1, heads or 1, N, N).expand(B, H, N, N)
    unseen = (~visible).all(dim=-2).view(B, Hkv, H // Hkv, N).all(dim=2)  # (B, Hkv, N): keys no query sees
    k[unseen], v[unseen] = float("inf"), float("nan")  # must change nothing ("per-batch-head" hides some)
    expected, _ = naive_attention(q, k, v, visible)
    grad_out = randn(B, H, N, 24, seed=4)
    inputs = Inputs(q, k, v, options={"mask": masks.from_function(fn, batch=batch, heads=heads)})
    got = run(variant, inputs.to(dtype), grad_out=grad_out)
    ref = reference(Inputs(q, k, v, options={"mask": visible}), grad_out=grad_out)
    base = run("dense", inputs.to(dtype), grad_out=grad_out)
    assert_close(got.out, expected, atol=baseline_atol(base.out, expected, dtype), what=f"{variant} out")
    for g in ("q", "k", "v"):
        assert_close(got.grads[g], ref.grads[g], atol=baseline_atol(base.grads[g], ref.grads[g], dtype),
                     what=f"{variant} d{g}")
    assert torch.isfinite(got.grads["q"]).all()


def test_tiled_skips_the_tiles_the_function_hides():
    """After the tile states, the tiled kernel asks the function only for PARTIAL tiles: never for an
    empty one (which would be computed and thrown away)."""
    calls = []

    def fn(b, h, q, kv):
        calls.append((int(q[0, 0]), int(q[-1, 0]) + 1, int(kv[0, 0]), int(kv[0, -1]) + 1))
        return (DOC[q] == DOC[kv]) & (q >= kv)

    m = masks.from_function(fn)
    q = k = v = randn(1, 2, 37, 16, seed=5)
    with small_tiles(8, 8, 8):
        layout = m.block_layout(37, 37, (8, 8))[0, 0]
        calls.clear()
        attnkit.attention(q, k, v, mask=m, kernel="tiled")
    assert calls, "the tiled kernel never asked the function for a partial tile"
    for qs, qe, ks, ke in calls:
        states = layout[qs // 8:(qe - 1) // 8 + 1, ks // 8:(ke - 1) // 8 + 1]
        assert (states != TileState.EMPTY).all(), f"asked for tile q {qs}:{qe} k {ks}:{ke}, which is empty"


def test_states_are_computed_once_per_length():
    count = [0]

    def fn(b, h, q, kv):
        count[0] += 1
        return q >= kv

    m = masks.from_function(fn)
    m.block_layout(40, 40, 8)
    first = count[0]
    m.block_layout(40, 40, 8)
    assert count[0] == first
    m.block_layout(41, 41, 8)
    assert count[0] > first


def test_composes_and_prints():
    m = masks.from_function(causal_fn) & masks.sliding_window(2)
    truth = masks.sliding_window(2).materialize(9)
    assert torch.equal(m.materialize(9), truth)
    assert torch.equal((~masks.from_function(causal_fn)).materialize(5), ~masks.causal().materialize(5))
    text = str(masks.from_function(causal_fn) | masks.global_tokens([0]))
    assert "from_function(causal_fn)" in text and "█" in text


def test_docstring_picture_is_a_doctest():
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(functions.from_function, globs={"torch": torch,
                                                                               "from_function": masks.from_function}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.parametrize("fn, error, words", [
    (lambda b, h, q, kv: (q >= kv).int(), TypeError, ["bool", "int32"]),
    (lambda b, h, q, kv: torch.ones(3, 3, dtype=torch.bool), ValueError, ["(3, 3)", "broadcast"]),
    (lambda b, h, q, kv: True, TypeError, ["bool tensor", "bool"]),
], ids=["int-result", "wrong-shape", "python-bool"])
def test_bad_function_results_are_named(fn, error, words):
    with pytest.raises(error) as info:
        masks.from_function(fn, name="mine").materialize(5)
    assert "'mine'" in str(info.value) and all(w in str(info.value) for w in words)


def test_bad_arguments():
    with pytest.raises(TypeError, match="callable"):
        masks.from_function("q >= kv")
    with pytest.raises(ValueError, match="heads"):
        masks.from_function(causal_fn, heads=0)
    q = k = v = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="batch=3 but the input has batch=2"):
        attnkit.attention(q, k, v, mask=masks.from_function(causal_fn, batch=3))


# --------------------------------------------------------------------------------------------------
# The Mask base class: a subclass that writes only ``tile``


class EveryThird(masks.Mask):
    """Query row i sees key j when (i + j) % 3 != 0: irregular, nothing but ``tile`` written."""

    def tile(self, qs, qe, ks, ke, q_len, k_len, device=None):
        i = torch.arange(qs, qe, device=device)[:, None]
        j = torch.arange(ks, ke, device=device)[None, :]
        return (i + j) % 3 != 0


@pytest.mark.parametrize("variant", KERNELS)
def test_a_subclass_with_only_tile_runs_on_every_kernel(variant):
    q, k, v = (randn(1, 2, 29, 8, seed=s) for s in (6, 7, 8))
    visible = EveryThird().materialize(29)
    expected, _ = naive_attention(q, k, v, visible)
    got = run(variant, Inputs(q, k, v, options={"mask": EveryThird()}))
    assert_close(got.out, expected, atol=1e-10, what=variant)


def test_a_subclass_with_only_tile_prints_and_has_exact_states():
    m = EveryThird()
    lines = m.to_string(12, block=3).splitlines()
    assert len(lines) == 1 + 4 and all(line == "░░░░" for line in lines[1:])
    assert torch.equal(m.block_layout(10, 10, 2), exact_states(m.materialize(10), 2, 2))
    assert (m.block_layout(10, 10, 1) != TileState.PARTIAL).all()  # one entry per tile: never partial


def test_a_subclass_without_tile_says_what_to_write():
    class Nothing(masks.Mask):
        pass

    with pytest.raises(NotImplementedError, match="Nothing must implement tile"):
        print(Nothing())


def test_tile_states_are_an_enum():
    layout = masks.causal().block_layout(8, 8, 4)
    assert layout[0, 0, 0, 1] == TileState.EMPTY and layout[0, 0, 1, 0] == TileState.FULL
    assert [s.name for s in TileState] == ["EMPTY", "PARTIAL", "FULL"]
    assert masks.EMPTY is TileState.EMPTY
