"""HAN (Yang et al. 2016) and the RNN encoder-decoder with additive attention (Bahdanau et al. 2014):
overfitting a tiny fixed batch, attention that sums to 1 over real items, greedy decoding, parameter
counts by hand, presets and validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.models.han import HAN, HANConfig
import attnkit.nn.classic
from attnkit.models.rnn import RNNSeq2Seq, RNNSeq2SeqConfig
from attnkit.nn.classic import packed_rnn
from helpers import assert_close, fit

OVERFIT_LOSS = 0.1  # cross-entropy a few dozen Adam steps must reach on a tiny batch, from ~log(classes)


def gru_params(input_size, hidden, directions=1):
    return directions * 3 * hidden * (input_size + hidden + 2)  # W_ih, W_hh, b_ih, b_hh per direction


# ---- HAN ------------------------------------------------------------------------------------------------

def han_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (6, 3, 5), generator=g)  # (B, S, W), 0 = padding
    ids[0, 2] = 0  # a padded sentence
    ids[1, :, 3:] = 0  # padded words
    ids[2, 1, 1:4] = 0
    labels = torch.tensor([0, 1, 2, 3, 1, 2])
    return ids, labels


def test_han_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = HAN(HANConfig.preset("tiny"))
    ids, labels = han_batch()
    first, loss = fit(model, lambda: F.cross_entropy(model(ids).logits, labels), steps=40, lr=1e-2)
    assert abs(first - math.log(4)) < 0.3
    assert loss < OVERFIT_LOSS, f"loss {loss:.3f} after 40 steps (started at {first:.3f})"
    assert torch.equal(model(ids).logits.argmax(-1), labels)


def test_han_attention_sums_to_one_over_real_items_and_ignores_padding():
    torch.manual_seed(0)
    model = HAN(HANConfig.preset("tiny"))
    ids, _ = han_batch()
    out = model(ids)
    word_mask = ids != 0
    sentence_mask = word_mask.any(-1)
    assert torch.allclose(out.word_weights.sum(-1)[sentence_mask], torch.ones(()), atol=1e-6)
    assert torch.all(out.word_weights[~word_mask] == 0)
    assert torch.allclose(out.sentence_weights.sum(-1), torch.ones(()), atol=1e-6)
    assert torch.all(out.sentence_weights[~sentence_mask] == 0)
    wider = torch.cat([ids, torch.zeros(6, 3, 2, dtype=torch.long)], dim=-1)  # more padding changes nothing
    assert torch.allclose(model(wider).logits, out.logits, atol=1e-6)


def test_han_num_parameters_by_hand():
    c = HANConfig.preset("tiny")
    V, C, E, H, A = c.vocab_size, c.num_classes, c.embed_dim, c.hidden, c.attn_dim
    expected = (V * E  # embedding
                + gru_params(E, H, 2) + (2 * H * A + A) + A  # word GRU, pooling projection, context vector
                + gru_params(2 * H, H, 2) + (2 * H * A + A) + A  # sentence level
                + 2 * H * C + C)  # classifier
    assert HAN(c).num_parameters() == expected


def test_han_config_presets_and_validation():
    c = HANConfig.preset("yang2016", vocab_size=1000)
    assert (c.embed_dim, c.hidden, c.attn_dim, c.vocab_size) == (200, 50, 100, 1000)
    assert HANConfig.preset("tiny", hidden=3).hidden == 3
    with pytest.raises(ValueError, match="HANConfig.hidden must be a positive int"):
        HANConfig(vocab_size=10, num_classes=2, hidden=0)
    with pytest.raises(ValueError, match="pad_id"):
        HANConfig(vocab_size=10, num_classes=2, pad_id=10)
    with pytest.raises(ValueError, match="dropout"):
        HANConfig(vocab_size=10, num_classes=2, dropout=1.0)
    model = HAN(HANConfig.preset("tiny"))
    with pytest.raises(TypeError, match="input_ids must be a torch.long"):
        model(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"input_ids must have shape \(B, S, W\)"):
        model(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"vocab_size=64"):
        model(torch.full((2, 3, 4), 64))


# ---- RNN seq2seq ----------------------------------------------------------------------------------------

PAD, BOS, EOS = 0, 1, 2


def seq2seq_batch():
    """Reverse the source; sequences of different lengths, padded; targets end with EOS then PAD."""
    g = torch.Generator().manual_seed(0)
    lengths = [5, 3, 4, 2]
    src = torch.full((4, 5), PAD)
    tgt = torch.full((4, 6), PAD)
    for i, n in enumerate(lengths):
        tokens = torch.randint(3, 16, (n,), generator=g)
        src[i, :n] = tokens
        tgt[i, :n] = tokens.flip(0)
        tgt[i, n] = EOS
    return src, tgt


def test_rnn_seq2seq_overfits_and_greedy_decode_reproduces_targets():
    torch.manual_seed(0)
    model = RNNSeq2Seq(RNNSeq2SeqConfig.preset("tiny"))
    src, tgt = seq2seq_batch()
    first, loss = fit(model, lambda: F.cross_entropy(model(src, tgt).logits.transpose(1, 2), tgt, ignore_index=PAD),
                      steps=60, lr=2e-2)
    assert abs(first - math.log(16)) < 0.5
    assert loss < OVERFIT_LOSS, f"loss {loss:.3f} after 60 steps (started at {first:.3f})"
    tokens, attention = model.eval().greedy_decode(src, max_len=10)
    assert torch.equal(tokens, tgt)  # stops after EOS (the longest target has 6 tokens), PAD after
    assert attention.shape == (4, 6, 5)
    produced = tokens != PAD
    assert torch.allclose(attention.sum(-1)[produced], torch.ones(()), atol=1e-6)
    assert torch.all(attention[~produced] == 0) and torch.all(attention.transpose(1, 2)[src == PAD] == 0)
    short, short_attention = model.greedy_decode(src, max_len=2)
    assert torch.equal(short, tgt[:, :2]) and short_attention.shape == (4, 2, 5)


def test_rnn_seq2seq_attention_and_source_padding():
    torch.manual_seed(0)
    model = RNNSeq2Seq(RNNSeq2SeqConfig.preset("tiny", num_layers=2))
    src, tgt = seq2seq_batch()
    out = model(src, tgt)
    assert out.logits.shape == (4, 6, 16) and out.attention.shape == (4, 6, 5)
    assert torch.allclose(out.attention.sum(-1), torch.ones(()), atol=1e-6)
    assert torch.all(out.attention.transpose(1, 2)[src == PAD] == 0)
    mask = src != PAD
    scrambled = torch.where(mask, src, torch.randint(3, 16, src.shape))  # other ids under the mask
    again = model(scrambled, tgt, src_mask=mask)
    assert torch.allclose(again.logits, out.logits, atol=1e-6)
    assert torch.allclose(again.attention, out.attention, atol=1e-6)


def test_rnn_seq2seq_projects_the_keys_once_and_decodes_as_the_paper(monkeypatch):
    """The decoder attends through keys projected once per source; the logits and attention are those of the
    paper's step written out, attending over the raw annotations at every step."""
    torch.manual_seed(0)
    model = RNNSeq2Seq(RNNSeq2SeqConfig.preset("tiny", num_layers=2)).double()
    src, tgt = seq2seq_batch()
    projections, key_weights = [], []
    project_keys, additive_attention = model.attention.project_keys, attnkit.nn.classic.additive_attention
    def counted_projection(*args, **kwargs):
        projections.append(1)
        return project_keys(*args, **kwargs)

    def recorded_attention(q, k, v, w_q, w_k, *args):
        key_weights.append(w_k)  # None: the keys came projected
        return additive_attention(q, k, v, w_q, w_k, *args)

    monkeypatch.setattr(model.attention, "project_keys", counted_projection)
    monkeypatch.setattr(attnkit.nn.classic, "additive_attention", recorded_attention)
    out = model(src, tgt)
    assert len(projections) == 1 and len(key_weights) == tgt.shape[1] and all(w is None for w in key_weights)
    monkeypatch.undo()

    c, (B, T) = model.config, tgt.shape
    mask = src != PAD
    annotations, h_n = packed_rnn(model.encoder, model.src_embed(src), mask)
    state = torch.tanh(model.init_state(h_n[-1])).reshape(B, c.num_layers, c.hidden).transpose(0, 1).contiguous()
    inputs = torch.cat([torch.full((B, 1), c.bos_id), tgt[:, :-1]], dim=1)
    logits, attention = [], []
    for t in range(T):
        embedded = model.tgt_embed(inputs[:, t])
        context, weights = model.attention(state[-1], annotations, mask=mask)  # keys projected here, every step
        h, state = model.decoder(torch.cat([embedded, context], dim=-1).unsqueeze(1), state)
        logits.append(model.output(torch.cat([h.squeeze(1), context, embedded], dim=-1)))
        attention.append(weights)
    assert_close(out.logits, torch.stack(logits, dim=1), atol=1e-12, what="logits")
    assert_close(out.attention, torch.stack(attention, dim=1), atol=1e-12, what="attention")


def test_rnn_seq2seq_fixed_context_is_cho_2014_one_summary_for_every_step():
    """context="fixed": no attention parameters; every step reads [h->_S; h<-_1], written out here by hand
    from a plain bidirectional GRU over each row's real tokens."""
    torch.manual_seed(0)
    model = RNNSeq2Seq(RNNSeq2SeqConfig.preset("tiny", context="fixed")).double()
    assert model.attention is None
    with_attention = RNNSeq2Seq(RNNSeq2SeqConfig.preset("tiny"))
    c = model.config
    assert with_attention.num_parameters() - model.num_parameters() == c.attn_dim * (3 * c.hidden + 1)
    src, tgt = seq2seq_batch()
    out = model(src, tgt)
    assert torch.all(out.attention == 0)
    B, T = tgt.shape
    logits = []
    for i in range(B):
        real = src[i][src[i] != PAD][None]  # (1, n): this row alone, no padding
        _, h_n = model.encoder(model.src_embed(real))  # (2, 1, H): forward's last state, backward's (read all)
        summary = torch.cat([h_n[0], h_n[1]], dim=-1)  # (1, 2H)
        state = torch.tanh(model.init_state(h_n[1]))[None]  # (1, 1, H)
        inputs = torch.cat([torch.tensor([c.bos_id]), tgt[i, :-1]])
        for t in range(T):
            embedded = model.tgt_embed(inputs[t:t + 1])  # (1, E)
            h, state = model.decoder(torch.cat([embedded, summary], dim=-1).unsqueeze(1), state)
            logits.append(model.output(torch.cat([h.squeeze(1), summary, embedded], dim=-1)))
    assert_close(out.logits, torch.cat(logits).reshape(B, T, -1), atol=1e-12, what="logits")
    tokens, attention = model.eval().greedy_decode(src, max_len=4)
    assert tokens.shape[1] <= 4 and torch.all(attention == 0)
    with pytest.raises(ValueError, match="context must be 'attention' or 'fixed'"):
        RNNSeq2SeqConfig.preset("tiny", context="none")


@pytest.mark.parametrize("layers", [1, 2])
def test_rnn_seq2seq_num_parameters_by_hand(layers):
    c = RNNSeq2SeqConfig.preset("tiny", num_layers=layers)
    Vs, Vt, E, H, A, L = c.src_vocab_size, c.tgt_vocab_size, c.embed_dim, c.hidden, c.attn_dim, c.num_layers
    encoder = gru_params(E, H, 2) + (L - 1) * gru_params(2 * H, H, 2)
    decoder = gru_params(E + 2 * H, H) + (L - 1) * gru_params(H, H)
    expected = (Vs * E + Vt * E + encoder
                + H * L * H + L * H  # s_0 = tanh(W_s h<-_1), one per decoder layer
                + A * H + A * 2 * H + A  # additive attention W_q, W_k, w
                + decoder
                + (3 * H + E) * Vt + Vt)  # output layer over [s_t; c_t; emb(y_{t-1})]
    assert RNNSeq2Seq(c).num_parameters() == expected


def test_rnn_seq2seq_config_presets_and_validation():
    c = RNNSeq2SeqConfig.preset("bahdanau2014")
    assert (c.embed_dim, c.hidden, c.attn_dim) == (620, 1000, 1000)
    assert RNNSeq2SeqConfig.preset("tiny", hidden=8).hidden == 8
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        RNNSeq2SeqConfig.preset("tiny", num_layers=0)
    with pytest.raises(ValueError, match="eos_id"):
        RNNSeq2SeqConfig.preset("tiny", eos_id=16)
    with pytest.raises(ValueError, match="must differ"):
        RNNSeq2SeqConfig.preset("tiny", bos_id=0)
    model = RNNSeq2Seq(RNNSeq2SeqConfig.preset("tiny"))
    src, tgt = seq2seq_batch()
    with pytest.raises(TypeError, match=r"src_ids must be a \(B, N\) integer tensor, got dtype torch.float32"):
        model(src.float(), tgt)
    with pytest.raises(ValueError, match=r"tgt_ids must lie in \[0, vocab_size=16\)"):
        model(src, tgt + 16)
    with pytest.raises(ValueError, match="batch size"):
        model(src, tgt[:2])
    with pytest.raises(TypeError, match="src_mask must be a bool"):
        model(src, tgt, src_mask=torch.ones(4, 5))
    with pytest.raises(ValueError, match="src_mask must have src_ids' shape"):
        model(src, tgt, src_mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_len"):
        model.greedy_decode(src, max_len=-1)
