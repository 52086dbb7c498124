"""The parts of attnkit.distributed that need no process group: the differentiable log-sum-exp the ring backward
relies on, dropout's keep-mask, the layouts' chunk arithmetic, masks seen from a block, and the hop schedule."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.distributed import keep_mask
from attnkit.distributed.layout import Layout
from attnkit.distributed.problem import Problem
from attnkit.distributed.views import Region, offset_mask
from attnkit.functional.masks import EMPTY, FULL
from helpers import kernel_context, kernel_name, randn

# --------------------------------------------------------------------------------------------------
# return_lse's log-sum-exp is differentiable (the ring backward differentiates each block through it)


@pytest.mark.parametrize("variant", ["dense", "tiled", "tiled-16"])
@pytest.mark.parametrize("options", ["causal", "padding", "softcap-window"])
def test_lse_gradient(variant, options):
    """gradcheck of (out, lse) together (fast mode: random projections), GQA and a bias tensor, with query rows that
    see nothing (their -inf lse is left out of the checked function: its gradient must be, and is, zero)."""
    opts = {"causal": {"causal": True}, "padding": {"mask": masks.padding([5, 0], q_lengths=[6, 3])},
            "softcap-window": {"softcap": 2.0, "window": (3, 1)}}[options]
    q, k, v = (randn(2, 4, 7, 5, seed=1), randn(2, 2, 9, 5, seed=2), randn(2, 2, 9, 3, seed=3))
    bias = randn(2, 4, 7, 9, seed=4)
    inputs = tuple(t.requires_grad_() for t in (q, k, v, bias))

    def f(q, k, v, bias):
        with kernel_context(variant):
            out, lse = attnkit.attention(q, k, v, bias=bias, return_lse=True, kernel=kernel_name(variant), **opts)
        return out, torch.where(torch.isfinite(lse), lse, 0.0)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_lse_gradient_is_the_softmax():
    """d lse_i / d logits_ij = P_ij: with v = I and scale 1, dlse/dk follows from the weights directly."""
    q, k = randn(1, 1, 4, 3, seed=5).requires_grad_(), randn(1, 1, 6, 3, seed=6).requires_grad_()
    _, lse = attnkit.attention(q, k, k, scale=1.0, return_lse=True, kernel="tiled")
    lse.sum().backward()
    w = attnkit.attention_weights(q.detach(), k.detach(), scale=1.0)[0, 0]  # (4, 6)
    torch.testing.assert_close(q.grad[0, 0], w @ k.detach()[0, 0], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# dropout's keep-mask


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_drop_rate(p):
    keep = keep_mask(p, 7, batch=2, heads=4).materialize(256, 256)  # 524288 draws: std of the rate < 0.001
    assert keep.shape == (2, 4, 256, 256)
    assert abs(1 - keep.double().mean().item() - p) < 0.005


def test_keep_mask_is_a_function_of_global_coordinates():
    """A tile at any offset is the slice of the whole mask (what makes the result independent of P); seeds, heads and
    batch entries draw different patterns."""
    m = keep_mask(0.3, 11, batch=2, heads=3)
    whole = m.materialize(40, 50)
    assert torch.equal(m.tile(7, 19, 23, 41, 40, 50), whole[..., 7:19, 23:41])
    assert not torch.equal(whole, keep_mask(0.3, 12, batch=2, heads=3).materialize(40, 50))
    assert not torch.equal(whole[:, 0], whole[:, 1]) and not torch.equal(whole[0], whole[1])
    neighbours = (whole[..., 1:, :] == whole[..., :-1, :]).double().mean().item()  # independent: p² + (1 - p)²
    assert abs(neighbours - 0.58) < 0.03


def test_keep_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dropout p"):
        keep_mask(1.0, 1, batch=1, heads=1)
    with pytest.raises(ValueError, match="seed"):
        keep_mask(0.1, -1, batch=1, heads=1)


# --------------------------------------------------------------------------------------------------
# layouts


def test_zigzag_chunks():
    """P = 2, N = 8: positions 0 1 | 2 3 | 4 5 | 6 7 -> rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2."""
    x = torch.arange(8).view(1, 1, 8, 1)
    shards = Layout("zigzag", 2).to_shards(x, dim=2)
    assert [s.flatten().tolist() for s in shards] == [[0, 1, 6, 7], [2, 3, 4, 5]]
    contiguous = Layout("contiguous", 2).to_shards(x, dim=2)
    assert [s.flatten().tolist() for s in contiguous] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("name", ["zigzag", "contiguous"])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_put_back_together(name, world):
    lay = Layout(name, world)
    x = torch.randn(2, 3, 2 * world * 5, 4)
    assert torch.equal(lay.to_global(lay.to_shards(x, dim=2), dim=2), x)
    for chunk in range(lay.n_chunks):
        rank, position = lay.owner(chunk)
        assert lay.chunks(rank)[position] == chunk


def test_layout_length_errors():
    with pytest.raises(ValueError, match="divisible by 6; got 10"):
        Layout("zigzag", 3).check_length("q", 10, whole=True)
    with pytest.raises(ValueError, match="each shard must have a length divisible by 2; got 3"):
        Layout("zigzag", 3).check_length("q", 3, whole=False)


# --------------------------------------------------------------------------------------------------
# masks seen from a block


def _masks(Nq: int, Nk: int) -> dict[str, masks.Mask]:
    ids = torch.tensor([[0] * 11 + [1] * 20 + [2] * (Nk - 31), [0] * (Nk - 3) + [1] * 3])
    dense = torch.rand(2, 1, Nq, Nk, generator=torch.Generator().manual_seed(0)) < 0.5
    return {
        "causal": masks.causal(),
        "window": masks.sliding_window(5, 3),
        "document&causal": masks.document(ids) & masks.causal(),
        "padding": masks.padding([Nk - 9, 17], q_lengths=[Nq, Nq - 5]),
        "prefix|window": masks.prefix_lm([4, 9]) | masks.sliding_window(2, 0),
        "~global": ~masks.global_tokens([0, 17]),
        "dense": masks.dense(dense),
        "function": masks.from_function(lambda b, h, q, kv: (q + kv) % 3 != 0),
    }


@pytest.mark.parametrize("name", list(_masks(48, 64)))
@pytest.mark.parametrize("q0,k0", [(16, 32), (13, 7), (0, 48)], ids=["aligned", "unaligned", "corner"])
def test_offset_mask_is_the_global_mask_on_the_block(name, q0, k0):
    """Tiles equal the slice of the global mask; block states are never wrong (EMPTY / FULL only where the block's
    entries are all hidden / all visible), with the global tiling's own states where the block is aligned."""
    Nq, Nk, nq, nk = 48, 64, 16, 16
    mask = _masks(Nq, Nk)[name]
    view = offset_mask(mask, Region(q0, k0, Nq, Nk), {})
    assert view is not None
    expected = mask.materialize(Nq, Nk)[..., q0:q0 + nq, k0:k0 + nk]
    got = view.materialize(nq, nk)
    assert torch.equal(got.expand_as(expected) if got.dim() == expected.dim() else got, expected)
    states = view.block_layout(nq, nk, (8, 8))  # (b, h, 2, 2)
    tiles = expected.expand(states.shape[0], states.shape[1], nq, nk).unflatten(-1, (2, 8)).unflatten(-3, (2, 8))
    visible = tiles.sum(dim=(-3, -1))  # (b, h, 2, 2) visible entries per tile
    assert not ((states == EMPTY) & (visible > 0)).any(), "a tile with visible entries called EMPTY"
    assert not ((states == FULL) & (visible < 64)).any(), "a tile with hidden entries called FULL"


def test_offset_mask_heads():
    """Under Ulysses a rank sees heads h0:h1 of a per-head mask."""
    per_head = torch.rand(1, 4, 6, 6, generator=torch.Generator().manual_seed(1)) < 0.5
    view = offset_mask(masks.dense(per_head), Region(0, 0, 6, 6, heads=(2, 4)), {})
    assert view is not None
    assert torch.equal(view.materialize(6, 6), per_head[:, 2:4])


# --------------------------------------------------------------------------------------------------
# the hop schedule


def _problem(mask: masks.Mask | None, layout: str, world: int, Nq: int, Nk: int) -> Problem:
    return Problem((1, 2, 2, Nq, Nk, 4, 4), Layout(layout, world), 0, None, mask, None, None, 0.5, None, 0.0, "auto",
                   torch.float64)


@pytest.mark.parametrize("name", list(_masks(48, 96)))
@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_schedule_never_skips_a_visible_pair(name, layout):
    """A (query chunk, key chunk) pair is skipped only when the global mask hides all of it; causal pairs wholly
    above the diagonal are skipped (computed here from positions: bottom-right, Nq != Nk)."""
    Nq, Nk, world = 48, 96, 3
    mask = _masks(Nq, Nk)[name]
    p = _problem(mask, layout, world, Nq, Nk)
    dense = mask.materialize(Nq, Nk)
    n = p.layout.n_chunks
    cq, ck = Nq // n, Nk // n
    for qc in range(n):
        for kc in range(n):
            seen = bool(dense[..., qc * cq:(qc + 1) * cq, kc * ck:(kc + 1) * ck].any())
            assert p.visible[qc][kc] or not seen, f"chunk pair ({qc}, {kc}) skipped but visible"
            if name == "causal":
                first_key, last_position = kc * ck, (qc + 1) * cq - 1 + Nk - Nq
                assert p.visible[qc][kc] == (first_key <= last_position)
