"""Positions (sinusoidal, learned, RoPE, ALiBi, T5 buckets) and KV caches (static, growing, ring):
decoding one token at a time through a cache equals attending over the whole sequence at once."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.nn.attention import MultiHeadAttention
from attnkit.nn.cache import GrowingCache, RingCache, StaticCache, make_cache
from attnkit.nn.positions import (ALiBiPositions, LearnedPositions, RotaryEmbedding, SinusoidalPositions,
                                  T5RelativeBias, position_ids_from_mask, t5_bucket)


def test_sinusoidal_matches_the_paper():
    pe = SinusoidalPositions(6)(torch.tensor([[0, 1, 7, 300]]))  # (1, 4, 6)
    for row, pos in enumerate([0, 1, 7, 300]):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert pe[0, row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[0, row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_learned_positions_refuse_beyond_the_table():
    table = LearnedPositions(8, 4)
    assert table(torch.arange(8)[None]).shape == (1, 8, 4)
    with pytest.raises(ValueError, match="position 8 is beyond .* max_len=8"):
        table(torch.arange(9)[None])


@pytest.mark.parametrize("scaling", [None, "linear", "ntk"])
def test_rope_scores_depend_only_on_relative_offset(scaling):
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, scaling=scaling, factor=4.0)
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        qr = rope.rotate(torch.tensor([[m]]), q)[0]
        kr = rope.rotate(torch.tensor([[n]]), k)[0]
        return (qr * kr).sum().item()

    for m, n in [(0, 0), (5, 2), (3, 9), (1000, 997)]:
        for shift in (1, 17, 4096):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-9)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-6)  # and it does depend on the offset
    norms = rope.rotate(torch.tensor([[123]]), q)[0].norm()
    assert norms.item() == pytest.approx(q.norm().item())  # a rotation


def test_rope_linear_scaling_interpolates_positions():
    x = torch.randn(1, 2, 3, 8, dtype=torch.float64)
    scaled = RotaryEmbedding(8, scaling="linear", factor=2.0).rotate(torch.tensor([[2, 4, 6]]), x)[0]
    plain = RotaryEmbedding(8).rotate(torch.tensor([[1, 2, 3]]), x)[0]
    torch.testing.assert_close(scaled, plain)


def test_t5_buckets():
    rel = torch.arange(-200, 201)
    bi = t5_bucket(rel, True, 32, 128)
    assert bi[rel == 0].item() == 0 and bi[rel == -3].item() == 3 and bi[rel == 3].item() == 16 + 3
    assert bi.max().item() == 31 and bi.min().item() == 0
    uni = t5_bucket(rel, False, 32, 128)
    assert (uni[rel >= 0] == 0).all() and uni[rel == -5].item() == 5
    assert (uni[rel <= -128] == 31).all()
    assert (uni[rel <= 0].flip(0).diff() >= 0).all()  # non-decreasing as the distance grows


def test_position_ids_ignore_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


POSITIONS = {
    "none": lambda: None,
    "rope": lambda: RotaryEmbedding(4),
    "alibi": lambda: ALiBiPositions(4),
    "t5": lambda: T5RelativeBias(4, bidirectional=False),
}
CACHES = {
    "static": (lambda: StaticCache(20), None),
    "growing": (lambda: GrowingCache(), None),
    "ring": (lambda: RingCache(4), (3, 0)),
    "ring-exact": (lambda: RingCache(3), (3, 0)),  # window left == size: the smallest ring that serves it
}


@pytest.mark.parametrize("cache_kind", CACHES)
@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("kernel", ["dense", "tiled"])
def test_cached_decoding_equals_full_attention(cache_kind, positions, kernel):
    torch.manual_seed(1)
    make, window = CACHES[cache_kind]
    m = MultiHeadAttention(16, 4, num_kv_heads=2, positions=POSITIONS[positions](), kernel=kernel).double().eval()
    x = torch.randn(3, 14, 16, dtype=torch.float64)
    pad = torch.ones(3, 14, dtype=torch.bool)
    pad[1, :3] = False  # left padding
    pad[2, :6] = False
    pos = position_ids_from_mask(pad)
    full = m(x, causal=True, window=window, key_padding=pad, position_ids=pos)
    cache = make()
    with torch.no_grad():
        steps = [m(x[:, :6], causal=True, window=window, cache=cache, key_padding=pad[:, :6],
                   position_ids=pos[:, :6])]
        for i in range(6, 14):
            steps.append(m(x[:, i:i + 1], causal=True, window=window, cache=cache, key_padding=pad[:, :i + 1],
                           position_ids=pos[:, i:i + 1]))
    cached = torch.cat(steps, dim=1)
    real = pad[:, :, None]  # padding rows see nothing (zeros through attention); compare real tokens
    torch.testing.assert_close(cached * real, full * real, atol=1e-10, rtol=1e-10)
    assert cache.length == 14


def test_static_cache_overflow_names_the_limit():
    cache = StaticCache(4)
    k = torch.randn(1, 2, 3, 8)
    cache.update(k, k)
    with pytest.raises(ValueError, match=r"cache overflow: StaticCache\(max_len=4\) holds 3 tokens"):
        cache.update(k[:, :, :2], k[:, :, :2])


def test_growing_cache_grows_and_ring_wraps():
    grow, ring = GrowingCache(), RingCache(5)
    for step in range(40):
        t = torch.full((1, 1, 1, 2), float(step))
        view = grow.update(t, t)
        ring_view = ring.update(t, t)
    assert view.k.shape[2] == 40 and view.k[0, 0, :, 0].tolist() == [float(i) for i in range(40)]
    assert ring.length == 40 and sorted(ring.slot_positions.tolist()) == [35, 36, 37, 38, 39]
    assert ring_view.positions[-1].item() == 39 and not ring_view.ordered


def test_ring_cache_refuses_a_window_it_cannot_serve():
    m = MultiHeadAttention(8, 2).eval()
    cache = RingCache(3)
    x = torch.randn(1, 4, 8)
    with torch.no_grad():
        m(x, causal=True, window=(3, 0), cache=cache)
        with pytest.raises(ValueError, match=r"RingCache\(size=3\) .* at most 3"):
            m(x[:, :1], causal=True, window=(4, 0), cache=cache)
        with pytest.raises(ValueError, match=r"RingCache\(size=3\)"):
            m(x[:, :1], causal=True, cache=cache)


def test_cache_checks():
    with pytest.raises(ValueError, match="max_len must be a positive int"):
        StaticCache(0)
    with pytest.raises(ValueError, match="needs max_len"):
        make_cache("static")
    with pytest.raises(ValueError, match="cache kind must be"):
        make_cache("paged")
    cache = StaticCache(8)
    cache.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
    with pytest.raises(ValueError, match="call reset"):
        cache.update(torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4))
    cache.reorder(torch.tensor([1, 1]))
    assert cache.length == 1


def test_half_precision_modules_keep_exact_frequencies_and_slopes():
    x = torch.randn(1, 2, 3, 64, dtype=torch.float64)
    pos = torch.tensor([[5, 900, 2000]])
    exact = RotaryEmbedding(64).rotate(pos, x)[0]
    torch.testing.assert_close(RotaryEmbedding(64).bfloat16().rotate(pos, x)[0], exact, atol=0, rtol=0)
    alibi = ALiBiPositions(8)
    before = alibi.bias(8, torch.arange(3), torch.tensor([2, 0, 1]), ordered=False)
    torch.testing.assert_close(alibi.half().bias(8, torch.arange(3), torch.tensor([2, 0, 1]), ordered=False), before)


def test_ring_cache_records_key_positions_and_checks_window_on_prefill():
    m = MultiHeadAttention(8, 2).eval()
    calls = []
    m.attach(lambda module, call: calls.append(call))
    cache = RingCache(3)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"RingCache\(size=3\)"):
            m(torch.randn(1, 4, 8), causal=True, cache=RingCache(3))  # no window: refused at once
        m(torch.randn(1, 5, 8), causal=True, window=(3, 0), cache=cache)
        m(torch.randn(1, 1, 8), causal=True, window=(3, 0), cache=cache)
    # slots hold tokens 3, 4, 2 (token 5 wrote nothing yet), then the new token 5
    assert calls[-1].key_positions.tolist() == [3, 4, 2, 5]


def test_cache_reorder_keeps_the_chosen_rows():
    cache = GrowingCache()
    k = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 1)
    cache.update(k, k)
    cache.reorder(torch.tensor([2, 2, 0]))
    view = cache.update(torch.zeros(3, 1, 1, 1), torch.zeros(3, 1, 1, 1))
    assert view.k[:, 0, :2, 0].tolist() == [[2.0, 2.0], [2.0, 2.0], [0.0, 0.0]]


@pytest.mark.parametrize("build, exc, message", [
    (lambda: RotaryEmbedding(8.0), TypeError, "head_dim must be a positive int"),
    (lambda: RotaryEmbedding(0), ValueError, "head_dim must be a positive int"),
    (lambda: RotaryEmbedding(6 + 1), ValueError, "positive even int"),
    (lambda: ALiBiPositions(2.0), TypeError, "num_heads must be a positive int"),
    (lambda: T5RelativeBias(0), ValueError, "num_heads must be a positive int"),
    (lambda: LearnedPositions(16.0, 8), TypeError, "max_len must be a positive int"),
])
def test_position_schemes_refuse_bad_sizes_when_built(build, exc, message):
    with pytest.raises(exc, match=message):
        build()
