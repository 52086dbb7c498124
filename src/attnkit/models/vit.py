"""The Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"): cut the image into
patches, embed each linearly, prepend a learned [CLS] token, add learned position embeddings, run pre-norm
Transformer encoder layers, normalize, and classify the [CLS] token (or the mean of the patch tokens).

    >>> model = ViT(ViTConfig.preset("tiny")).eval()
    >>> out = model(torch.randn(2, 3, 8, 8))               # (B, C, H, W)
    >>> out.logits.shape, out.last_hidden_state.shape      # 1 + (8/4)^2 = 5 tokens
    (torch.Size([2, 4]), torch.Size([2, 5, 32]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..nn.layers import EncoderLayer
from ..nn.linear import Linear
from ..nn.positions import LearnedPositions, default_position_ids
from .base import (Config, Model, init_weights, require_dropout, require_heads, require_kernel, require_positive,
                   require_positive_float)

Pool = Literal["cls", "mean"]


@dataclass
class ViTConfig(Config):
    """Configuration of :class:`ViT`; defaults are ViT-B/16 at 224x224."""

    image_size: int = 224  # height = width of the input images, in pixels
    patch_size: int = 16  # side of each square patch; must divide image_size
    channels: int = 3
    num_classes: int = 1000
    dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    hidden: int = 3072  # feed-forward inner width (the paper's MLP size)
    dropout: float = 0.0  # on embeddings, sub-layer outputs and attention probabilities
    norm_eps: float = 1e-6
    pool: Pool = "cls"  # what the head classifies: the [CLS] token, or the mean of the patch tokens
    kernel: str = "auto"  # handed to every attention layer unchanged

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "vit-b/16": {"dim": 768, "num_layers": 12, "num_heads": 12, "hidden": 3072},
        "vit-l/16": {"dim": 1024, "num_layers": 24, "num_heads": 16, "hidden": 4096},
        "vit-s/16": {"dim": 384, "num_layers": 12, "num_heads": 6, "hidden": 1536},  # DeiT-S / timm's ViT-S
        "tiny": {"image_size": 8, "patch_size": 4, "num_classes": 4, "dim": 32, "num_layers": 2, "num_heads": 4,
                 "hidden": 64},
    }

    def __post_init__(self) -> None:
        require_positive(self, "image_size", "patch_size", "channels", "num_classes", "dim", "num_layers",
                         "num_heads", "hidden")
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig.patch_size={self.patch_size} must divide image_size={self.image_size}")
        require_heads(self, self.dim, self.num_heads)
        require_dropout(self, "dropout")
        require_positive_float(self, "norm_eps")
        require_kernel(self)
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"ViTConfig.pool must be 'cls' or 'mean', got {self.pool!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class ViTOutput:
    """What :meth:`ViT.forward` returns."""

    logits: Tensor  # (B, num_classes)
    last_hidden_state: Tensor  # (B, 1 + num_patches, dim) after the final LayerNorm; [CLS] first


class ViT(Model):
    """Vision Transformer classifier: ``forward(pixels (B, channels, image_size, image_size)) -> ViTOutput``.

    Patches are numbered row by row (the order of ``Conv2d`` output flattened), position 0 being [CLS].
    """

    config: ViTConfig  # Model.config, typed as this model's config

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = c = config
        # one linear map per patch: a convolution whose kernel and stride are the patch size
        self.patch_embedding = nn.Conv2d(c.channels, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.position_embeddings = LearnedPositions(1 + c.num_patches, c.dim)
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(c.dim, c.num_heads, c.hidden, activation="gelu", norm_first=True, eps=c.norm_eps,
                         dropout=c.dropout, attn_dropout=c.dropout, kernel=c.kernel) for _ in range(c.num_layers))
        self.final_norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.head = Linear(c.dim, c.num_classes)
        self.apply(init_weights)
        nn.init.normal_(self.cls_token, std=0.02)

    def _check_pixels(self, pixels: Tensor) -> None:
        c = self.config
        if not isinstance(pixels, Tensor) or not pixels.is_floating_point():
            got = pixels.dtype if isinstance(pixels, Tensor) else type(pixels).__name__
            raise TypeError(f"pixels must be a floating-point tensor, got {got}")
        expected = (c.channels, c.image_size, c.image_size)
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(f"pixels must have shape (B, {', '.join(map(str, expected))}) = (B, channels, "
                             f"image_size, image_size), got {tuple(pixels.shape)}")

    def forward(self, pixels: Tensor) -> ViTOutput:
        self._check_pixels(pixels)
        patches = self.patch_embedding(pixels)  # (B, dim, H/p, W/p)
        x = patches.flatten(2).transpose(1, 2)  # (B, P, dim), row-major patch order
        b, p, _ = x.shape
        x = torch.cat((self.cls_token.expand(b, -1, -1).to(x.dtype), x), dim=1)  # (B, 1 + P, dim)
        x = self.dropout(x + self.position_embeddings(default_position_ids(b, 1 + p, 0, x.device)))
        for layer in self.layers:
            x = layer(x)
        x = self.final_norm(x)
        pooled = x[:, 0] if self.config.pool == "cls" else x[:, 1:].mean(dim=1)  # (B, dim)
        return ViTOutput(self.head(pooled), x)


__all__ = ["ViTConfig", "ViT", "ViTOutput"]
