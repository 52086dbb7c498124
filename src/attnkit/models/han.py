"""Yang et al. 2016, "Hierarchical Attention Networks for Document Classification": word embeddings ->
:class:`~attnkit.nn.classic.HierarchicalAttention` (word GRU + attention, sentence GRU + attention) ->
a linear classifier over the document vector.

    >>> model = HAN(HANConfig.preset("tiny"))
    >>> ids = torch.randint(1, 64, (2, 3, 5))           # (B, S, W) token ids, 0 = padding
    >>> out = model(ids)
    >>> out.logits.shape, out.word_weights.shape, out.sentence_weights.shape
    (torch.Size([2, 4]), torch.Size([2, 3, 5]), torch.Size([2, 3]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..nn.classic import HierarchicalAttention
from .base import Config, Model, check_range, require_dropout, require_positive, require_token_ids


@dataclass
class HANConfig(Config):
    """Configuration of :class:`HAN`."""

    vocab_size: int
    num_classes: int
    embed_dim: int = 100
    hidden: int = 50  # GRU size per direction: sentence and document vectors have 2 * hidden
    attn_dim: int = 100  # size of the attention pooling's u vectors (and context vectors)
    pad_id: int = 0  # token id of padding words; a sentence of only padding is a padded sentence
    dropout: float = 0.0  # on the word embeddings and on the document vector

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # the paper's sizes; vocab_size depends on the corpus: HANConfig.preset("yang2016", vocab_size=...)
        "yang2016": {"embed_dim": 200, "hidden": 50, "attn_dim": 100, "num_classes": 5},
        "tiny": {"vocab_size": 64, "num_classes": 4, "embed_dim": 16, "hidden": 8, "attn_dim": 12},
    }

    def __post_init__(self) -> None:
        require_positive(self, "vocab_size", "num_classes", "embed_dim", "hidden", "attn_dim")
        require_token_ids(self, {"pad_id": self.vocab_size})
        require_dropout(self, "dropout")


@dataclass
class HANOutput:
    """What :meth:`HAN.forward` returns."""

    logits: Tensor  # (B, num_classes)
    word_weights: Tensor  # (B, S, W) attention over each sentence's words; 0 at padding
    sentence_weights: Tensor  # (B, S) attention over the document's sentences; 0 at padded sentences


class HAN(Model):
    """Hierarchical attention network for document classification.

    ``forward(input_ids)``: input_ids (B, S, W) long, ``config.pad_id`` marking padding words. Returns
    :class:`HANOutput`. A document made only of padding gets the classifier's bias as logits.
    """

    config: HANConfig  # Model.config, typed as this model's config

    def __init__(self, config: HANConfig) -> None:
        super().__init__()
        if not isinstance(config, HANConfig):
            raise TypeError(f"config must be a HANConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_id)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = HierarchicalAttention(config.embed_dim, config.hidden, config.attn_dim)
        self.classifier = nn.Linear(2 * config.hidden, config.num_classes)

    def forward(self, input_ids: Tensor) -> HANOutput:
        if not isinstance(input_ids, Tensor) or input_ids.dtype != torch.long:
            got = input_ids.dtype if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise TypeError(f"input_ids must be a torch.long tensor, got {got}")
        if input_ids.dim() != 3:
            raise ValueError(f"input_ids must have shape (B, S, W), got {tuple(input_ids.shape)}")
        check_range(input_ids, self.config.vocab_size)
        words = self.drop(self.embed(input_ids))  # (B, S, W, E)
        out = self.encoder(words, input_ids != self.config.pad_id)
        logits = self.classifier(self.drop(out.document))  # (B, num_classes)
        return HANOutput(logits, out.word_weights, out.sentence_weights)


__all__ = ["HANConfig", "HAN", "HANOutput"]
