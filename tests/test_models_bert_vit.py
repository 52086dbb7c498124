"""BERT (defaults, masked-LM training, errors) and ViT (shapes, training on a toy batch, errors).

BERT's parity with Hugging Face's BertModel and BertForMaskedLM on the same weights (token types, padding,
the pooler) is tested in test_hub.py, on checkpoints loaded through ``attnkit.hub``; published parameter
counts in test_models_catalog.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnkit.models.bert import BERT, BERTConfig, BERTOutput
from attnkit.models.vit import ViT, ViTConfig, ViTOutput
from helpers import assert_close, fit

MASK_ID = 3  # the [MASK] token of the toy masked-LM batch

# --------------------------------------------------------------------------------------------------
# BERT


def test_bert_shapes_defaults_and_tying():
    torch.manual_seed(0)
    model = BERT(BERTConfig.preset("tiny", mlm_head=True)).eval()
    assert model.mlm_head.decoder.weight is model.word_embeddings.weight
    ids = torch.randint(1, 128, (2, 10))
    out = model(ids)
    assert isinstance(out, BERTOutput)
    assert out.last_hidden_state.shape == (2, 10, 32) and out.pooler_output.shape == (2, 32)
    assert out.mlm_logits.shape == (2, 10, 128)
    # defaults: attention_mask = input_ids != pad_id, token types 0
    padded = ids.clone()
    padded[1, 6:] = 0
    explicit = model(padded, attention_mask=(padded != 0).long(), token_type_ids=torch.zeros_like(ids))
    assert_close(model(padded).last_hidden_state, explicit.last_hidden_state, atol=0, what="default mask")
    assert not torch.allclose(model(padded, attention_mask=torch.ones_like(ids)).last_hidden_state,
                              explicit.last_hidden_state)
    # with position_ids (packed rows) padding comes from attention_mask alone: none by default, so a token
    # equal to pad_id is attended like any other
    positions = torch.arange(10).expand(2, 10)
    unpadded = model(padded, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert_close(model(padded, position_ids=positions).last_hidden_state, unpadded, atol=1e-6,
                 what="position_ids, no attention_mask")
    assert_close(model(padded, (padded != 0).long(), position_ids=positions).last_hidden_state,
                 explicit.last_hidden_state, atol=1e-6, what="position_ids with attention_mask")
    assert BERT(BERTConfig.preset("tiny")).mlm_head is None


def mlm_batch(seed: int = 0):
    """8 sequences of 16 random tokens with ~20% replaced by [MASK]; labels -100 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (8, 16), generator=g)
    masked = torch.rand(8, 16, generator=g) < 0.2
    return torch.where(masked, MASK_ID, ids), torch.where(masked, ids, -100)


@pytest.mark.parametrize("kernel", ["dense", "tiled"])
def test_bert_mlm_overfits_a_tiny_batch(kernel):
    torch.manual_seed(0)
    model = BERT(BERTConfig.preset("tiny", mlm_head=True, dropout=0.0, kernel=kernel))
    inputs, labels = mlm_batch()
    _, loss = fit(model, lambda: F.cross_entropy(model(inputs).mlm_logits.transpose(1, 2), labels),  # -100 ignored
                  steps=60, lr=1e-2)
    assert loss < 0.05, f"masked-LM loss after 60 Adam steps: {loss:.4f} (measured ~0.008)"
    predicted = model(inputs).mlm_logits.argmax(-1)
    assert torch.equal(predicted[labels != -100], labels[labels != -100])


@pytest.mark.parametrize("overrides, match", [
    (dict(num_heads=5), "num_heads=5 must divide dim=32"),
    (dict(max_seq_len=0), "max_seq_len must be a positive int"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
    (dict(norm_eps=0.0), "norm_eps must be > 0"),
    (dict(pad_id=128), r"pad_id must be an int in \[0, 128\)"),
])
def test_bert_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        BERTConfig.preset("tiny", **overrides)


def test_bert_presets_and_input_errors():
    minilm = BERTConfig.preset("minilm-l6")
    assert (minilm.dim, minilm.num_layers, minilm.num_heads, minilm.hidden) == (384, 6, 12, 1536)
    model = BERT(BERTConfig.preset("tiny"))
    ids = torch.randint(1, 128, (2, 10))
    with pytest.raises(ValueError, match=r"1 to max_seq_len=64 tokens per sequence, got 65"):
        model(torch.randint(1, 128, (2, 65)))
    with pytest.raises(ValueError, match=r"attention_mask must have input_ids' shape \(2, 10\), got \(2, 9\)"):
        model(ids, attention_mask=torch.ones(2, 9))
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, type_vocab_size=2\), got .*\[0, 2\]"):
        model(ids, token_type_ids=torch.arange(10).expand(2, 10) % 3)
    with pytest.raises(TypeError, match="token_type_ids must be a tensor"):
        model(ids, token_type_ids=[0] * 10)
    with pytest.raises(TypeError, match="config must be a BERTConfig"):
        BERT(ViTConfig())


# --------------------------------------------------------------------------------------------------
# ViT


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_shapes(pool):
    torch.manual_seed(0)
    model = ViT(ViTConfig.preset("tiny", pool=pool)).eval()
    out = model(torch.randn(3, 3, 8, 8))
    assert isinstance(out, ViTOutput)
    assert out.logits.shape == (3, 4) and out.last_hidden_state.shape == (3, 5, 32)
    expected = out.last_hidden_state[:, 0] if pool == "cls" else out.last_hidden_state[:, 1:].mean(1)
    assert_close(out.logits, model.head(expected), atol=1e-6, what="head input")
    big = ViT(ViTConfig.preset("tiny", image_size=12, patch_size=3, channels=1, num_classes=7)).eval()
    assert big(torch.randn(2, 1, 12, 12)).last_hidden_state.shape == (2, 17, 32)


def test_vit_patches_and_positions():
    """A patch token depends on its own pixels only, and positions tell the patches apart."""
    torch.manual_seed(0)
    model = ViT(ViTConfig.preset("tiny")).eval()
    seen = []
    model.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    pixels = torch.randn(1, 3, 8, 8)
    changed = pixels.clone()
    changed[..., :4, 4:] += 1.0  # the top-right patch: number 1 in row-major order, token 2
    swapped = torch.cat((pixels[..., 4:], pixels[..., :4]), dim=-1)  # swap the patch columns
    model(pixels), model(changed), model(swapped)
    first, second, third = (s[0] for s in seen)  # (1 + P, dim) inputs of the first layer
    differs = (first - second).abs().amax(-1) > 1e-6
    assert differs.tolist() == [False, False, True, False, False]
    assert not torch.allclose(model(pixels).logits, model(swapped).logits)
    positions = model.position_embeddings.table.weight
    assert_close(third[1] - positions[1], first[2] - positions[2], atol=1e-6, what="patch embedding moved")


@pytest.mark.parametrize("kernel", ["dense", "tiled"])
def test_vit_overfits_a_tiny_batch(kernel):
    torch.manual_seed(0)
    model = ViT(ViTConfig.preset("tiny", kernel=kernel))
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    _, loss = fit(model, lambda: F.cross_entropy(model(images).logits, labels), steps=60, lr=3e-3)
    assert loss < 0.05, f"loss after 60 Adam steps: {loss:.4f} (measured ~0.017)"
    assert torch.equal(model(images).logits.argmax(-1), labels)


def test_vit_errors():
    with pytest.raises(ValueError, match="patch_size=16 must divide image_size=100"):
        ViTConfig(image_size=100)
    with pytest.raises(ValueError, match="num_heads=5 must divide dim=32"):
        ViTConfig.preset("tiny", num_heads=5)
    with pytest.raises(ValueError, match="pool must be 'cls' or 'mean', got 'max'"):
        ViTConfig.preset("tiny", pool="max")
    model = ViT(ViTConfig.preset("tiny"))
    with pytest.raises(ValueError, match=r"pixels must have shape \(B, 3, 8, 8\).*got \(2, 3, 16, 16\)"):
        model(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"got \(3, 8, 8\)"):
        model(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"got \(2, 1, 8, 8\)"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(TypeError, match="pixels must be a floating-point tensor, got torch.int64"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.long))
