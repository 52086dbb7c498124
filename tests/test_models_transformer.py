"""The encoder-decoder Transformer: shapes, cached decoding against recomputation, beam search against greedy
decoding and against exhaustive search, training on a toy task, padding, positions, configs, size."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.models.transformer import (BeamSearchOutput, Transformer, TransformerConfig, TransformerOutput,
                                        gnmt_length_penalty)
from helpers import assert_close, fit

KERNELS = ("dense", "sdpa", "tiled")
PAD, BOS, EOS = 0, 1, 2


def tiny(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig.preset("tiny", **overrides)).to(dtype).eval()


def padded_sources(batch: int, length: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random source ids (B, S) in [3, vocab), right-padded to random lengths >= 1, and their mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = torch.arange(length) < lengths[:, None]  # (B, S)
    return torch.where(mask, ids, PAD), mask


def test_forward_shapes():
    model = tiny(dtype=torch.float32)
    src, tgt = torch.randint(3, 16, (2, 7)), torch.randint(3, 16, (2, 5))
    out = model(src, tgt)
    assert isinstance(out, TransformerOutput)
    assert out.logits.shape == (2, 5, 16) and out.logits.dtype == torch.float32
    assert out.encoder_last_hidden_state.shape == (2, 7, 32)
    memory = model.encode(src)
    assert memory.shape == (2, 7, 32)
    assert model.decode(tgt, memory, None).shape == (2, 5, 16)
    assert_close(model.decode(tgt, memory, src != PAD), out.logits, atol=1e-6, what="decode vs forward")


@pytest.mark.parametrize("kernel", KERNELS)
def test_cached_decoding_equals_recomputation(kernel):
    model = tiny(seed=1, kernel=kernel)
    src, mask = padded_sources(4, 9, 16, seed=1)
    tgt = torch.cat((torch.full((4, 1), BOS), torch.randint(3, 16, (4, 6))), dim=1)  # (B, 7)
    memory = model.encode(src, mask)
    full = model.decode(tgt, memory, mask)  # (B, 7, V)
    cache = model.new_cache(7)
    steps = [model.decode(tgt[:, :3], memory, mask, cache=cache)]  # a 3-token prefill, then one at a time
    steps += [model.decode(tgt[:, t:t + 1], memory, mask, cache=cache) for t in range(3, 7)]
    assert cache.length == 7
    assert_close(torch.cat(steps, dim=1), full, atol=1e-10, what="cached logits")

    cached = model.greedy_decode(src, 12, src_mask=mask)
    assert torch.equal(cached, model.greedy_decode(src, 12, src_mask=mask, use_cache=False))
    assert cached.shape[0] == 4 and 2 <= cached.shape[1] <= 13 and bool((cached[:, 0] == BOS).all())


def test_greedy_decode_stops_at_eos_and_pads():
    src = torch.randint(3, 16, (3, 5), generator=torch.Generator().manual_seed(0))
    free = tiny(seed=3).greedy_decode(src, 6)  # the default eos (2) is never produced here
    eos = next(t for t in free[0, 1:].tolist() if t > EOS)  # row 0's first ordinary token ends it: same weights
    model = tiny(seed=3, eos_id=eos)
    tokens = model.greedy_decode(src, 6)
    stopped = 0
    for row, unforced in zip(tokens.tolist(), free.tolist()):
        end = row.index(eos) if eos in row else len(row)
        assert row[:end + 1] == unforced[:end + 1]  # the same decode up to and including the first eos
        assert all(t == PAD for t in row[end + 1:])  # then padding only
        stopped += eos in row
    assert stopped >= 1 and tokens.shape[1] <= 7
    assert model.greedy_decode(src, 0).tolist() == [[BOS]] * 3


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_size_one_equals_greedy(seed, alpha):
    model = tiny(seed=seed, src_vocab_size=8, tgt_vocab_size=8)
    src, mask = padded_sources(5, 6, 8, seed=seed)
    beam = model.beam_search(src, 8, beam_size=1, length_penalty=alpha, src_mask=mask)
    greedy = model.greedy_decode(src, 8, src_mask=mask)
    assert isinstance(beam, BeamSearchOutput)
    assert torch.equal(beam.tokens, greedy), f"beam:\n{beam.tokens}\ngreedy:\n{greedy}"


def exhaustive(model: Transformer, src: torch.Tensor, max_len: int, alpha: float):
    """Every hypothesis of at most max_len tokens (ending at the first eos, or cut at max_len), scored by the
    model's log-probabilities in one teacher-forced pass; per source the list of (normalized score, tokens)."""
    vocab = model.config.tgt_vocab_size
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=max_len)))  # (V^L, L)
    inputs = torch.cat((torch.full((len(seqs), 1), BOS), seqs[:, :-1]), dim=1)  # (V^L, L)
    results = []
    for row in src:
        with torch.no_grad():
            log_probs = model(row.expand(len(seqs), -1), inputs).logits.log_softmax(-1)  # (V^L, L, V)
        token_lp = log_probs.gather(-1, seqs[..., None])[..., 0]  # (V^L, L)
        hypotheses = {}
        for seq, lp in zip(seqs.tolist(), token_lp.tolist()):
            n = seq.index(EOS) + 1 if EOS in seq else max_len
            score = sum(lp[:n]) / float(gnmt_length_penalty(torch.tensor(n), alpha))
            hypotheses[tuple(seq[:n])] = score
        results.append(sorted(((s, h) for h, s in hypotheses.items()), reverse=True))
    return results


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_large_beam_finds_the_best_sequence_where_greedy_does_not(alpha):
    # vocabulary {pad, bos, eos, 3, 4}, 3 tokens: 125 sequences, so a beam of 125 is exhaustive search
    model = tiny(seed=0, src_vocab_size=5, tgt_vocab_size=5)
    src = torch.randint(3, 5, (8, 4), generator=torch.Generator().manual_seed(0))
    ranked = exhaustive(model, src, 3, alpha)
    beam = model.beam_search(src, 3, beam_size=125, length_penalty=alpha)
    greedy = model.greedy_decode(src, 3)
    greedy_worse = 0
    for i, candidates in enumerate(ranked):
        (best_score, best), (second_score, _) = candidates[0], candidates[1]
        assert best_score - second_score > 1e-9, "near-tie: pick another seed"
        expected = [BOS, *best] + [PAD] * (3 - len(best))
        got = beam.tokens[i].tolist() + [PAD] * (4 - beam.tokens.shape[1])
        assert got == expected, f"source {i}: beam {got}, exhaustive best {expected}"
        assert math.isclose(float(beam.scores[i]), best_score, rel_tol=0, abs_tol=1e-9)
        greedy_hyp = tuple(greedy[i, 1:].tolist())
        greedy_hyp = greedy_hyp[:greedy_hyp.index(EOS) + 1] if EOS in greedy_hyp else greedy_hyp
        greedy_worse += {h: s for s, h in candidates}[greedy_hyp] < best_score - 1e-9
    assert greedy_worse > 0, "greedy decoding found the best sequence for every source: the test shows nothing"


def reverse_task(seed: int = 0, batch: int = 16, length: int = 6):
    """Sources of 3..length symbols in [3, 12), right-padded; targets [bos, reversed source, eos, pad...]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    src = torch.randint(3, 12, (batch, length), generator=g)
    src = torch.where(torch.arange(length) < lengths[:, None], src, PAD)
    seq = torch.full((batch, length + 2), PAD)
    seq[:, 0] = BOS
    for i, n in enumerate(lengths.tolist()):
        seq[i, 1:n + 1] = src[i, :n].flip(0)
        seq[i, n + 1] = EOS
    return src, seq


@pytest.mark.parametrize("kernel", ["dense", "tiled"])
def test_overfits_a_reverse_task_and_decodes_it(kernel):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", src_vocab_size=12, tgt_vocab_size=12, kernel=kernel))
    src, seq = reverse_task()
    _, loss = fit(model, lambda: F.cross_entropy(model(src, seq[:, :-1]).logits.transpose(1, 2), seq[:, 1:],
                                                 ignore_index=PAD), steps=60, lr=3e-3)
    assert loss < 0.05, f"loss after 60 Adam steps: {loss:.4f} (measured ~0.011)"
    model.eval()
    for tokens in (model.greedy_decode(src, 8), model.beam_search(src, 8, beam_size=3).tokens):
        assert torch.equal(tokens, seq[:, :tokens.shape[1]]) and tokens.shape[1] == seq.shape[1]


@pytest.mark.parametrize("kernel", KERNELS)
def test_padded_source_tokens_do_not_change_other_outputs(kernel):
    model = tiny(seed=4, kernel=kernel)
    g = torch.Generator().manual_seed(4)
    src = torch.randint(3, 16, (3, 8), generator=g)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[0, 5:] = False  # right padding
    mask[1, :3] = False  # left padding
    mask[2, 2:4] = False  # a hole
    tgt = torch.cat((torch.full((3, 1), BOS), torch.randint(3, 16, (3, 5), generator=g)), dim=1)
    other = torch.where(mask, src, torch.randint(0, 16, src.shape, generator=g))
    assert not torch.equal(other, src)
    a, b = model(src, tgt, src_mask=mask), model(other, tgt, src_mask=mask)
    assert_close(b.logits, a.logits, atol=1e-12, what="logits")
    assert_close(b.encoder_last_hidden_state[mask], a.encoder_last_hidden_state[mask], atol=1e-12,
                 what="memory at real tokens")
    # and without an explicit mask, pad ids are the padding
    padded = torch.where(mask, src, PAD)
    assert_close(model(padded, tgt).logits, a.logits, atol=1e-12, what="default mask")
    assert not torch.allclose(model(padded, tgt, src_mask=torch.ones_like(mask)).logits, a.logits)


def test_sinusoidal_positions_follow_the_paper():
    model = tiny(dtype=torch.float32)
    d = model.config.dim
    positions = torch.arange(60)
    expected = torch.zeros(60, d, dtype=torch.float64)
    for pos in range(60):
        for i in range(d // 2):
            expected[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / d))
            expected[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d))
    assert_close(model.positions(positions[None].double())[0], expected, atol=1e-12, what="PE")

    seen = []
    model.encoder_layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    src = torch.randint(3, 16, (2, 60))
    model(src, torch.full((2, 1), BOS))
    embedded = model.src_embedding(src) * math.sqrt(d) + expected.float()
    assert_close(seen[0], embedded, atol=1e-5, what="encoder input = sqrt(d) * embedding + PE")


@pytest.mark.parametrize("overrides, match", [
    (dict(num_heads=5), "num_heads=5 must divide dim=32"),
    (dict(dim=33, num_heads=3), "dim must be even"),
    (dict(dim=0), "dim must be a positive int"),
    (dict(num_encoder_layers=0), "num_encoder_layers must be a positive int"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(max_len=0), "max_len must be a positive int"),
    (dict(bos_id=0), "must differ"),
    (dict(eos_id=16), r"eos_id must be an int in \[0, 16\)"),
    (dict(pad_id=-1), r"pad_id must be an int in \[0, 16\)"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig.preset("tiny", **overrides)


def test_config_refuses_a_non_int_size():
    with pytest.raises(TypeError, match="hidden must be a positive int, got float 2.5"):
        TransformerConfig.preset("tiny", hidden=2.5)


def test_type_errors():
    with pytest.raises(TypeError, match="config must be a TransformerConfig"):
        Transformer({"dim": 32})


def test_input_errors():
    model = tiny(dtype=torch.float32, max_len=8)
    src, tgt = torch.randint(3, 16, (2, 7)), torch.randint(3, 16, (2, 5))
    with pytest.raises(TypeError, match="src_ids must be a \\(B, N\\) integer tensor"):
        model(src.float(), tgt)
    with pytest.raises(ValueError, match=r"tgt_ids must lie in \[0, vocab_size=16\)"):
        model(src, tgt + 20)
    with pytest.raises(TypeError, match="src_ids must be a \\(B, N\\) integer tensor, got list"):
        model.encode([[3, 4]])
    with pytest.raises(ValueError, match=r"src_mask must have shape \(2, 7\).*got \(2, 6\)"):
        model(src, tgt, src_mask=torch.ones(2, 6))
    with pytest.raises(TypeError, match="tgt_mask must be a tensor"):
        model(src, tgt, tgt_mask=[[1] * 5] * 2)
    with pytest.raises(ValueError, match="batch size 2, got 3"):
        model(src, torch.randint(3, 16, (3, 5)))
    with pytest.raises(ValueError, match="src_ids has 9 positions, more than TransformerConfig.max_len=8"):
        model(torch.randint(3, 16, (2, 9)), tgt)
    with pytest.raises(ValueError, match=r"memory must be \(B=2, S, dim=32\), got \(2, 7, 31\)"):
        model.decode(tgt, torch.zeros(2, 7, 31), None)
    with pytest.raises(ValueError, match="max_len must be a non-negative int, got -1"):
        model.greedy_decode(src, -1)
    with pytest.raises(ValueError, match="max_len=9 would feed the decoder more than"):
        model.greedy_decode(src, 9)
    with pytest.raises(ValueError, match="beam_size must be a positive int, got 0"):
        model.beam_search(src, 4, beam_size=0)
    with pytest.raises(ValueError, match="length_penalty must be a finite float, got nan"):
        model.beam_search(src, 4, length_penalty=float("nan"))


def expected_parameters(c: TransformerConfig) -> int:
    """Counted by hand from the paper's architecture."""
    d, h = c.dim, c.hidden
    attention = 4 * (d * d + d)  # q, k, v, out projections with biases
    ffn = (d * h + h) + (h * d + d)
    norm = 2 * d
    encoder = c.num_encoder_layers * (attention + ffn + 2 * norm)
    decoder = c.num_decoder_layers * (2 * attention + ffn + 3 * norm)
    final_norms = 2 * norm if c.norm_first else 0
    shared_source = c.share_embeddings and c.src_vocab_size == c.tgt_vocab_size
    embeddings = (0 if shared_source else c.src_vocab_size * d) + c.tgt_vocab_size * d
    output = 0 if c.share_embeddings else d * c.tgt_vocab_size  # no bias
    return encoder + decoder + final_norms + embeddings + output


@pytest.mark.parametrize("name, overrides", [
    ("base", {}), ("big", {}), ("tiny", {}), ("tiny", dict(norm_first=True, share_embeddings=True)),
    ("base", dict(share_embeddings=False, src_vocab_size=1000)),
])
def test_num_parameters_matches_a_hand_count(name, overrides):
    config = TransformerConfig.preset(name, **overrides)
    with torch.device("meta"):  # counts without allocating the 60M+ weights
        model = Transformer(config)
    assert model.num_parameters() == expected_parameters(config)
    if name == "base" and not overrides:
        # the paper's Table 3 says 65M for base; with its 37000 shared BPE tokens, all three matrices tied
        assert model.num_parameters() == 44_138_496 + 37000 * 512  # 63.1M
        assert model.output.weight is model.tgt_embedding.weight is model.src_embedding.weight
