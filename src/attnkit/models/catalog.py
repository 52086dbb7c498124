"""The catalog of models and their named presets, with parameter counts computed without allocating
(on PyTorch's meta device): what ``attnkit models`` prints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .base import Config, Model
from .bert import BERT, BERTConfig
from .gpt import GPT, GPTConfig
from .han import HAN, HANConfig
from .hybrid import HybridConfig, HybridLM
from .rnn import RNNSeq2Seq, RNNSeq2SeqConfig
from .transformer import Transformer, TransformerConfig
from .vit import ViT, ViTConfig

MODELS: dict[type[Model], type[Config]] = {
    GPT: GPTConfig, BERT: BERTConfig, Transformer: TransformerConfig, ViT: ViTConfig, HybridLM: HybridConfig,
    HAN: HANConfig, RNNSeq2Seq: RNNSeq2SeqConfig,
}
# Fields some configs leave to the user (they depend on the data); the catalog counts with these.
ASSUMED = {"vocab_size": 32000, "src_vocab_size": 32000, "tgt_vocab_size": 32000, "num_classes": 2}


@dataclass
class Entry:
    model: str
    preset: str
    num_parameters: int
    assumed: dict[str, int]  # fields the preset leaves open, filled from ASSUMED to count parameters


def catalog() -> list[Entry]:
    """Every model's presets with their parameter counts (shared weights counted once)."""
    entries = []
    for model_cls, config_cls in MODELS.items():
        required = {f.name for f in dataclasses.fields(config_cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        for name, overrides in config_cls.PRESETS.items():
            assumed = {k: ASSUMED[k] for k in sorted(required - set(overrides))}
            config = config_cls.preset(name, **assumed)
            with torch.device("meta"):
                count = model_cls(config).num_parameters()
            entries.append(Entry(model_cls.__name__, name, count, assumed))
    return entries


__all__ = ["catalog", "Entry", "MODELS"]
