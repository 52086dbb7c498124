"""Ready models built only from ``attnkit.nn``, each with a typed config and named presets; swap the
attention kernel of any of them with ``model.set_kernel(name)`` or the config's ``kernel`` field.

    >>> model = attnkit.models.GPT(attnkit.models.GPTConfig.preset("nano"))
    >>> model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=8)
"""

from .base import Config, Model
from .bert import BERT, BERTConfig, BERTOutput
from .gpt import GPT, AttentionConfig, FeedForwardConfig, GPTConfig, GPTOutput, MoEConfig, RopeConfig
from .han import HAN, HANConfig, HANOutput
from .heads import TaskConfig, TaskHead
from .hybrid import HybridConfig, HybridLM, HybridOutput
from .rnn import RNNSeq2Seq, RNNSeq2SeqConfig, Seq2SeqOutput
from .transformer import BeamSearchOutput, Transformer, TransformerConfig, TransformerOutput
from .vit import ViT, ViTConfig, ViTOutput

__all__ = [
    "Config", "Model", "GPT", "GPTConfig", "GPTOutput", "AttentionConfig", "FeedForwardConfig", "MoEConfig",
    "RopeConfig", "HybridLM", "HybridConfig", "HybridOutput",
    "HAN", "HANConfig", "HANOutput", "RNNSeq2Seq", "RNNSeq2SeqConfig", "Seq2SeqOutput",
    "Transformer", "TransformerConfig", "TransformerOutput", "BeamSearchOutput", "BERT", "BERTConfig", "BERTOutput",
    "ViT", "ViTConfig", "ViTOutput", "TaskConfig", "TaskHead",
]
