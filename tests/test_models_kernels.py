"""Every attnkit model that runs scaled dot-product attention gives the same outputs with every exact
kernel: the same weights, float64, forced to dense, sdpa and tiled in turn (tiled with 16x16 tiles so that
small inputs cross tile edges), compared with the dense kernel's output.

HAN and RNNSeq2Seq use additive/dot attention from attnkit.functional.classic, not these kernels."""

from __future__ import annotations

import pytest
import torch

from attnkit import models

from helpers import small_tiles


def gpt():
    return models.GPT(models.GPTConfig.preset("nano", vocab_size=40, dim=32, num_layers=2, positions="alibi",
                                              attention=dict(window=5, num_kv_heads=2))), \
        (torch.randint(0, 40, (2, 19)),)


def gpt_padded():
    ids = torch.randint(0, 40, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, :4] = 0
    return models.GPT(models.GPTConfig.preset("nano", vocab_size=40, dim=32, num_layers=2, positions="rope")), \
        (ids, mask)


def hybrid():
    return models.HybridLM(models.HybridConfig.preset("tiny", vocab_size=40, dim=32)), \
        (torch.randint(0, 40, (2, 21)),)


def transformer():
    src = torch.randint(3, 40, (2, 17))
    src[1, 12:] = 0  # padding
    tgt = torch.randint(3, 40, (2, 9))
    config = models.TransformerConfig.preset("tiny", src_vocab_size=40, tgt_vocab_size=40)
    return models.Transformer(config), (src, tgt)


def bert():
    ids = torch.randint(1, 40, (2, 18))
    mask = torch.ones(2, 18, dtype=torch.long)
    mask[0, 11:] = 0
    return models.BERT(models.BERTConfig.preset("tiny", vocab_size=40)), (ids, mask)


def vit():
    config = models.ViTConfig.preset("tiny", image_size=24, patch_size=4)  # 36 patches + CLS
    size = config.image_size
    return models.ViT(config), (torch.randn(2, config.channels, size, size, dtype=torch.float64),)


MODELS = {"gpt": gpt, "gpt-left-padded": gpt_padded, "hybrid": hybrid, "transformer": transformer, "bert": bert,
          "vit": vit}


def first_tensor(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", MODELS)
def test_every_exact_kernel_gives_the_same_model_output(name):
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    model = model.double().eval()
    expected = first_tensor(model.set_kernel("dense")(*inputs))
    with small_tiles():
        for kernel in ("sdpa", "tiled"):
            actual = first_tensor(model.set_kernel(kernel)(*inputs))
            torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-10, msg=f"kernel {kernel}")
