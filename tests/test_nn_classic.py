"""attnkit.nn.classic: the modules against the functional code called with their own weights, masking
hygiene (fully-masked rows, NaN at padding), the HAN core's padding invariance, and input validation."""

from __future__ import annotations

import pytest
import torch

from attnkit.functional.classic import additive_attention, luong_attention
from attnkit.nn.classic import (AdditiveAttention, AttentionPooling, HierarchicalAttention, LuongAttention,
                                packed_rnn)
from helpers import assert_close, randn

TOL = 1e-12  # float64 throughout


def rand_mask(*shape, seed, p=0.6):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p


def make(module_cls, *args, seed=0, **kwargs):
    torch.manual_seed(seed)
    return module_cls(*args, **kwargs).double()


# ---- AdditiveAttention / LuongAttention against the functional code -------------------------------------

def _functional(module, q, k, v, mask):
    if isinstance(module, AdditiveAttention):
        return additive_attention(q, k, v, module.query_proj.weight, module.key_proj.weight, module.score, mask)
    return luong_attention(q, k, v, module.method, module.weight, mask)


MODULES = {
    "additive": lambda: make(AdditiveAttention, 5, 7, 9),
    "luong-general": lambda: make(LuongAttention, 5, 7, method="general"),
}


@pytest.mark.parametrize("name", MODULES)
def test_multi_query_matches_functional(name):
    module = MODULES[name]()
    q, k, v = randn(2, 3, 5, seed=1), randn(2, 11, 7, seed=2), randn(2, 11, 4, seed=3)
    full = rand_mask(2, 3, 11, seed=4)
    out, w = module(q, k, v, mask=full)
    ref_out, ref_w = _functional(module, q, k, v, full)
    assert out.shape == (2, 3, 4) and w.shape == (2, 3, 11)
    assert_close(out, ref_out, atol=TOL)
    assert_close(w, ref_w, atol=TOL)
    key_mask = rand_mask(2, 11, seed=5)  # (B, Nk): the same keys for every query
    out, w = module(q, k, v, mask=key_mask)
    ref_out, ref_w = _functional(module, q, k, v, key_mask[:, None, :])
    assert_close(out, ref_out, atol=TOL)
    assert_close(w, ref_w, atol=TOL)


@pytest.mark.parametrize("name", MODULES)
def test_single_query_drops_the_query_dim(name):
    module = MODULES[name]()
    q, k = randn(2, 5, seed=1), randn(2, 11, 7, seed=2)
    key_mask = rand_mask(2, 11, seed=5)
    out, w = module(q, k, mask=key_mask)  # values default to keys
    ref_out, ref_w = _functional(module, q[:, None, :], k, k, key_mask[:, None, :])
    assert out.shape == (2, 7) and w.shape == (2, 11)
    assert_close(out, ref_out[:, 0], atol=TOL)
    assert_close(w, ref_w[:, 0], atol=TOL)
    assert torch.all(w[~key_mask] == 0)


def test_luong_dot_matches_functional():
    module = make(LuongAttention, 6, 6)
    q, k, v = randn(3, 4, 6, seed=1), randn(3, 5, 6, seed=2), randn(3, 5, 2, seed=3)
    out, w = module(q, k, v)
    ref_out, ref_w = luong_attention(q, k, v, "dot")
    assert_close(out, ref_out, atol=TOL)
    assert_close(w, ref_w, atol=TOL)
    assert module.weight is None and sum(p.numel() for p in module.parameters()) == 0


@pytest.mark.parametrize("name", MODULES)
def test_fully_masked_row_gives_zeros_and_finite_gradients(name):
    module = MODULES[name]()
    q = randn(2, 3, 5, seed=1).requires_grad_()
    k = randn(2, 6, 7, seed=2).requires_grad_()
    v = randn(2, 6, 4, seed=3).requires_grad_()
    mask = rand_mask(2, 3, 6, seed=4, p=0.7)
    mask[0, 1] = False  # query 1 of batch 0 may attend to nothing
    out, w = module(q, k, v, mask=mask)
    assert torch.all(out[0, 1] == 0) and torch.all(w[0, 1] == 0)
    (out.sum() + w.sum()).backward()
    for t in (q, k, v, *module.parameters()):
        assert torch.isfinite(t.grad).all()
    assert torch.all(q.grad[0, 1] == 0)


@pytest.mark.parametrize("name", MODULES)
def test_nan_at_masked_keys_and_values_changes_nothing(name):
    module = MODULES[name]()
    q, k, v = randn(2, 3, 5, seed=1), randn(2, 6, 7, seed=2), randn(2, 6, 4, seed=3)
    key_mask = rand_mask(2, 6, seed=4)
    key_mask[:, 0] = True
    clean_out, clean_w = module(q, k, v, mask=key_mask)
    k_bad = k.masked_fill(~key_mask[..., None], float("nan")).requires_grad_()
    v_bad = v.masked_fill(~key_mask[..., None], float("nan")).requires_grad_()
    out, w = module(q, k_bad, v_bad, mask=key_mask)
    assert_close(out, clean_out, atol=TOL)
    assert_close(w, clean_w, atol=TOL)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())
    assert torch.isfinite(k_bad.grad).all() and torch.isfinite(v_bad.grad).all()


@pytest.mark.parametrize("mask_kind", ["key", "full"])
def test_additive_projected_keys_match_forward(mask_kind):
    module = MODULES["additive"]()
    q, k, v = randn(2, 3, 5, seed=1), randn(2, 11, 7, seed=2), randn(2, 11, 4, seed=3)
    mask = rand_mask(2, 11, seed=5) if mask_kind == "key" else rand_mask(2, 3, 11, seed=4)
    projected = module.project_keys(k, mask=mask)
    assert projected.shape == (2, 11, 9)
    out, w = module(q, k, v, mask=mask, projected_keys=projected)
    ref_out, ref_w = module(q, k, v, mask=mask)
    assert_close(out, ref_out, atol=TOL)
    assert_close(w, ref_w, atol=TOL)
    single, single_w = module(q[:, 0], k, mask=mask[:, 0] if mask_kind == "full" else mask,
                              projected_keys=module.project_keys(k))
    ref_single, ref_single_w = module(q[:, 0], k, mask=mask[:, 0] if mask_kind == "full" else mask)
    assert_close(single, ref_single, atol=TOL)
    assert_close(single_w, ref_single_w, atol=TOL)


def test_additive_projected_keys_keep_nan_at_masked_keys_out_of_gradients():
    module = MODULES["additive"]()
    q, k, v = randn(2, 3, 5, seed=1), randn(2, 6, 7, seed=2), randn(2, 6, 4, seed=3)
    key_mask = rand_mask(2, 6, seed=4)
    key_mask[:, 0] = True
    clean_out, clean_w = module(q, k, v, mask=key_mask)
    k_bad = k.masked_fill(~key_mask[..., None], float("nan")).requires_grad_()
    out, w = module(q, k_bad, v, mask=key_mask, projected_keys=module.project_keys(k_bad, mask=key_mask))
    assert_close(out, clean_out, atol=TOL)
    assert_close(w, clean_w, atol=TOL)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())
    assert torch.isfinite(k_bad.grad).all()


# ---- AttentionPooling -----------------------------------------------------------------------------------

def test_attention_pooling_is_yang_et_al():
    pool = make(AttentionPooling, 6, 4)
    h, mask = randn(3, 5, 6, seed=1), rand_mask(3, 5, seed=2)
    mask[:, 0] = True
    pooled, w = pool(h, mask)
    u = torch.tanh(h @ pool.proj.weight.T + pool.proj.bias)  # (B, N, A), written out
    scores = (u @ pool.context).masked_fill(~mask, float("-inf"))  # (B, N)
    ref_w = torch.softmax(scores, dim=-1)
    assert_close(w, ref_w, atol=TOL)
    assert_close(pooled, (ref_w[..., None] * h).sum(-2), atol=TOL)
    assert torch.allclose(w.sum(-1), torch.ones(3, dtype=torch.float64), atol=TOL)


def test_attention_pooling_empty_sequence_and_nan_padding():
    pool = make(AttentionPooling, 6, 4)
    h = randn(2, 4, 6, seed=1)
    mask = torch.tensor([[True, False, True, False], [False] * 4])
    clean, clean_w = pool(h, mask)
    bad = h.masked_fill(~mask[..., None], float("nan")).requires_grad_()
    pooled, w = pool(bad, mask)
    assert_close(pooled, clean, atol=TOL)
    assert_close(w, clean_w, atol=TOL)
    assert torch.all(pooled[1] == 0) and torch.all(w[1] == 0)
    pooled.sum().backward()
    assert torch.isfinite(bad.grad).all() and all(torch.isfinite(p.grad).all() for p in pool.parameters())


def test_attention_pooling_extra_leading_dims():
    pool = make(AttentionPooling, 3, 2)
    h, mask = randn(2, 3, 5, 3, seed=1), rand_mask(2, 3, 5, seed=2)
    pooled, w = pool(h, mask)
    ref, ref_w = pool(h.reshape(6, 5, 3), mask.reshape(6, 5))
    assert_close(pooled, ref.reshape(2, 3, 3), atol=TOL)
    assert_close(w, ref_w.reshape(2, 3, 5), atol=TOL)


# ---- packed_rnn -----------------------------------------------------------------------------------------

def test_packed_rnn_reads_only_real_items():
    gru = make(torch.nn.GRU, 3, 4, batch_first=True, bidirectional=True)
    x = randn(3, 6, 3, seed=1)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    out, h_n = packed_rnn(gru, x.masked_fill(~mask[..., None], float("nan")), mask)
    assert out.shape == (3, 6, 8) and h_n.shape == (2, 3, 4)
    for row in (0, 2):
        alone, h_alone = gru(x[row, mask[row]][None])  # the real items only, as one sequence
        assert_close(out[row, mask[row]], alone[0], atol=TOL)
        assert_close(h_n[:, row], h_alone[:, 0], atol=TOL)
    assert torch.all(out[~mask] == 0) and torch.all(h_n[:, 1] == 0)


# ---- HierarchicalAttention ------------------------------------------------------------------------------

def _documents():
    words = randn(3, 4, 5, 6, seed=1)  # (B, S, W, word_dim)
    mask = rand_mask(3, 4, 5, seed=2, p=0.6)
    mask[0, 1] = False  # a padded sentence between real ones
    mask[0, 0, 0] = True
    mask[2] = False  # a document without any word
    return words, mask


@pytest.mark.parametrize("encoder", ["gru", None])
def test_hierarchical_weights_sum_to_one_and_zero_at_padding(encoder):
    han = make(HierarchicalAttention, 6, 4, 5, encoder=encoder)
    words, mask = _documents()
    out = han(words, mask)
    D = 8 if encoder == "gru" else 6
    assert out.document.shape == (3, D) and out.sentences.shape == (3, 4, D)
    assert out.word_weights.shape == (3, 4, 5) and out.sentence_weights.shape == (3, 4)
    sentence_mask = mask.any(-1)
    one = torch.ones((), dtype=torch.float64)
    assert torch.allclose(out.word_weights.sum(-1)[sentence_mask], one, atol=TOL)
    assert torch.all(out.word_weights[~mask] == 0)
    assert torch.allclose(out.sentence_weights.sum(-1)[:2], one, atol=TOL)
    assert torch.all(out.sentence_weights[~sentence_mask] == 0)
    assert torch.all(out.document[2] == 0) and torch.all(out.sentences[~sentence_mask] == 0)


@pytest.mark.parametrize("fill", [1e6, float("nan")], ids=["large", "nan"])
def test_hierarchical_padding_never_changes_outputs(fill):
    han = make(HierarchicalAttention, 6, 4, 5)
    words, mask = _documents()
    clean = han(words, mask)
    noisy = torch.where(mask[..., None], words, randn(*words.shape, seed=9) * fill).requires_grad_()
    out = han(noisy, mask)
    for name in ("document", "sentences", "word_weights", "sentence_weights"):
        assert_close(getattr(out, name), getattr(clean, name), atol=TOL)
    out.document.sum().backward()
    assert torch.isfinite(noisy.grad).all() and torch.all(noisy.grad[~mask] == 0)
    assert all(torch.isfinite(p.grad).all() for p in han.parameters())


def test_hierarchical_padded_document_equals_document_alone():
    han = make(HierarchicalAttention, 6, 4, 5)
    words, mask = _documents()
    mask[1] = False
    mask[1, :2, :3] = True  # document 1: two sentences of three words, padded to (4, 5)
    batched = han(words, mask).document[1]
    alone = han(words[1:2, :2, :3]).document[0]  # no padding at all
    assert_close(batched, alone, atol=TOL)


# ---- validation -----------------------------------------------------------------------------------------

def test_constructor_validation():
    with pytest.raises(ValueError, match="attn_dim"):
        AdditiveAttention(4, 4, 0)
    with pytest.raises(ValueError, match="query_dim == key_dim"):
        LuongAttention(4, 5, method="dot")
    with pytest.raises(ValueError, match="method"):
        LuongAttention(4, 4, method="concat")
    with pytest.raises(ValueError, match="encoder"):
        HierarchicalAttention(4, 4, 4, encoder="lstm")
    with pytest.raises(ValueError, match="dim"):
        AttentionPooling(-1, 4)


def test_forward_validation():
    attn = make(AdditiveAttention, 5, 7, 3)
    q, k = randn(2, 3, 5, seed=1), randn(2, 6, 7, seed=2)
    with pytest.raises(ValueError, match=r"query must have shape .*query_dim=5"):
        attn(randn(2, 3, 4, seed=1), k)
    with pytest.raises(ValueError, match=r"keys must have shape .*key_dim=7"):
        attn(q, randn(2, 6, 8, seed=2))
    with pytest.raises(ValueError, match=r"values must have shape .*Nk=6"):
        attn(q, k, randn(2, 5, 3, seed=3))
    with pytest.raises(ValueError, match="leading dims"):
        attn(q, randn(3, 6, 7, seed=2))
    with pytest.raises(TypeError, match="mask must be a bool"):
        attn(q, k, mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match=r"mask .*\(2, 5\)"):
        attn(q, k, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not broadcast"):
        attn(q, k, mask=torch.ones(2, 4, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="query must be a torch.Tensor"):
        attn([1.0] * 5, k)
    with pytest.raises(ValueError, match=r"projected_keys must have shape .*\(2, 6, 3\)"):
        attn(q, k, projected_keys=randn(2, 6, 7, seed=3))
    with pytest.raises(ValueError, match=r"keys must have shape .*key_dim=7"):
        attn.project_keys(randn(2, 6, 8, seed=2))
    with pytest.raises(ValueError, match=r"mask must be a key mask"):
        attn.project_keys(k, mask=torch.ones(2, 5, dtype=torch.bool))
    pool = make(AttentionPooling, 6, 4)
    with pytest.raises(ValueError, match=r"items must have shape"):
        pool(randn(2, 5, 7, seed=1))
    with pytest.raises(ValueError, match=r"mask must have shape \(\.\.\., N\)"):
        pool(randn(2, 5, 6, seed=1), torch.ones(2, 4, dtype=torch.bool))
    han = make(HierarchicalAttention, 6, 4, 5)
    with pytest.raises(ValueError, match=r"words must have shape \(B, S, W, word_dim=6\)"):
        han(randn(2, 5, 6, seed=1))
    with pytest.raises(TypeError, match="bool"):
        han(randn(2, 3, 5, 6, seed=1), torch.ones(2, 3, 5))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, S, W\)"):
        han(randn(2, 3, 5, 6, seed=1), torch.ones(2, 3, 4, dtype=torch.bool))
