"""Issue 18, models and modules: from_torch keeps float64 weights bit for bit; configs refuse eps, RoPE bases,
MoE options and kernel names that would only fail (or give NaN) later; attention_mask holds 0/1 only;
generate refuses an empty prompt and bad sampling options and survives tiny temperatures;
MultiHeadAttention takes an additive ``bias=`` and hands it to ``attnkit.attention``."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import models
from attnkit.models.sampling import next_token
from attnkit.nn import MoE
from attnkit.nn.attention import MultiHeadAttention, set_kernel
from attnkit.nn.positions import ALiBiPositions, RotaryEmbedding

from helpers import max_abs_error


def tiny_gpt(**overrides) -> models.GPT:
    torch.manual_seed(0)
    return models.GPT(models.GPTConfig.preset("nano", vocab_size=41, num_layers=2, dim=32, **overrides)).eval()


def tiny_hybrid() -> models.HybridLM:
    torch.manual_seed(0)
    return models.HybridLM(models.HybridConfig.preset("tiny", vocab_size=41, dim=32)).eval()


def tiny_bert() -> models.BERT:
    torch.manual_seed(0)
    return models.BERT(models.BERTConfig.preset("tiny", vocab_size=41)).eval()


def tiny_transformer() -> models.Transformer:
    torch.manual_seed(0)
    return models.Transformer(models.TransformerConfig.preset("tiny", src_vocab_size=41,
                                                               tgt_vocab_size=41)).eval()


# --- 5: from_torch keeps the source's dtype -----------------------------------------------------------


@pytest.mark.parametrize("kdim", [None, 12], ids=["packed", "kdim"])
def test_from_torch_float64_weights_bitwise_and_outputs_identical(kdim):
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(16, 4, kdim=kdim, vdim=kdim, batch_first=True, dtype=torch.float64).eval()
    with torch.no_grad():
        for p in ref.parameters():  # every entry needs more than float32's 24 bits
            p.copy_(torch.randn_like(p))
    ours = MultiHeadAttention.from_torch(ref)
    if ref._qkv_same_embed_dim:
        sources = ref.in_proj_weight.chunk(3)
    else:
        sources = (ref.q_proj_weight, ref.k_proj_weight, ref.v_proj_weight)
    for proj, w, b in zip((ours.q_proj, ours.k_proj, ours.v_proj), sources, ref.in_proj_bias.chunk(3)):
        assert proj.weight.dtype == torch.float64 and torch.equal(proj.weight, w) and torch.equal(proj.bias, b)
    assert torch.equal(ours.out_proj.weight, ref.out_proj.weight)
    assert torch.equal(ours.out_proj.bias, ref.out_proj.bias)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    ctx = x if kdim is None else torch.randn(2, 9, kdim, dtype=torch.float64)
    expected, _ = ref(x, ctx, ctx, need_weights=False)
    got = ours(x) if kdim is None else ours(x, ctx)
    assert max_abs_error(got, expected) <= 1e-12

