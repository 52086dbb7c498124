"""BERT (Devlin et al. 2019): a post-norm Transformer encoder over word + position + token-type embeddings,
with a tanh pooler over the first ([CLS]) token and an optional head: masked-LM, or a task head
(:mod:`attnkit.models.heads`: sequence or token classification, question answering). The same model holds
RoBERTa, DistilBERT (no token types, no pooler) and ELECTRA's discriminator (embeddings narrower than the layers,
projected; no pooler).

The modules mirror Hugging Face's ``BertModel`` one to one, so its weights load by renaming:

    HF BertModel / BertForMaskedLM                  attnkit BERT
    embeddings.word_embeddings                      word_embeddings
    embeddings.position_embeddings                  position_embeddings.table
    embeddings.token_type_embeddings                token_type_embeddings
    embeddings.LayerNorm                            embedding_norm
    encoder.layer.{i}.attention.self.query|key|value   layers.{i}.attn.q_proj|k_proj|v_proj
    encoder.layer.{i}.attention.output.dense        layers.{i}.attn.out_proj
    encoder.layer.{i}.attention.output.LayerNorm    layers.{i}.attn_norm
    encoder.layer.{i}.intermediate.dense            layers.{i}.ffn.up
    encoder.layer.{i}.output.dense                  layers.{i}.ffn.down
    encoder.layer.{i}.output.LayerNorm              layers.{i}.ffn_norm
    pooler.dense                                    pooler
    cls.predictions.transform.dense                 mlm_head.dense
    cls.predictions.transform.LayerNorm             mlm_head.norm
    cls.predictions.bias (= decoder.bias)           mlm_head.decoder.bias  (weight tied to word_embeddings)
    classifier / qa_outputs                         task_head.out  (task heads: see attnkit.hub for every family)

    >>> model = BERT(BERTConfig.preset("tiny", mlm_head=True)).eval()
    >>> ids = torch.randint(1, 128, (2, 10))
    >>> out = model(ids)
    >>> out.last_hidden_state.shape, out.pooler_output.shape, out.mlm_logits.shape
    (torch.Size([2, 10, 32]), torch.Size([2, 32]), torch.Size([2, 10, 128]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.masks import Mask
from ..nn.layers import EncoderLayer
from ..nn.linear import Linear
from ..nn.positions import LearnedPositions, default_position_ids
from .base import (Config, Model, check_attention_mask, check_ids, check_range, init_weights, require_dropout,
                   require_heads, require_kernel, require_positive, require_positive_float, require_token_ids)
from .heads import TaskConfig, TaskHead, masked_lm_loss, task_config, task_loss


@dataclass
class BERTConfig(Config):
    """Configuration of :class:`BERT`; defaults are BERT-base (uncased)."""

    vocab_size: int = 30522
    max_seq_len: int = 512  # the learned position table's length (HF max_position_embeddings)
    type_vocab_size: int = 2  # token types (segments): 0 = first sentence, 1 = second; none at all: 0 (DistilBERT)
    dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    hidden: int = 3072  # feed-forward inner width (HF intermediate_size)
    dropout: float = 0.1  # on embeddings, sub-layer outputs and attention probabilities (HF's two dropouts)
    norm_eps: float = 1e-12
    pad_id: int = 0  # its embedding row starts at zero; the default padding (see BERT) is input_ids == pad_id
    mlm_head: bool = False  # build the masked-LM head (HF BertForMaskedLM's cls.predictions); else no mlm_logits
    kernel: str = "auto"  # handed to every attention layer unchanged
    # build the tanh pooler (pooler_output); None = as transformers' class for the head: with no head, the MLM head
    # or the "pooler" classifier, not with the other task heads (DistilBERT and ELECTRA never have one)
    pooler: bool | None = None
    # the embeddings' width when narrower than dim (ELECTRA's embedding_size): a Linear projects them to dim;
    # None = dim
    embedding_dim: int | None = None
    task: TaskConfig | None = None  # a task head (attnkit.models.heads); its dropout None = this dropout

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "bert-base": {"dim": 768, "num_layers": 12, "num_heads": 12, "hidden": 3072},
        "bert-large": {"dim": 1024, "num_layers": 24, "num_heads": 16, "hidden": 4096},
        # sentence-transformers' all-MiniLM-L6-v2: BERT's vocabulary, 6 narrow layers
        "minilm-l6": {"dim": 384, "num_layers": 6, "num_heads": 12, "hidden": 1536},
        "tiny": {"vocab_size": 128, "max_seq_len": 64, "dim": 32, "num_layers": 2, "num_heads": 4, "hidden": 64},
    }

    def __post_init__(self) -> None:
        require_positive(self, "vocab_size", "max_seq_len", "dim", "num_layers", "num_heads", "hidden")
        if isinstance(self.type_vocab_size, bool) or not isinstance(self.type_vocab_size, int) \
                or self.type_vocab_size < 0:
            raise ValueError(f"BERTConfig.type_vocab_size must be an int >= 0 (0: no token types), got "
                             f"{self.type_vocab_size!r}")
        require_heads(self, self.dim, self.num_heads)
        require_dropout(self, "dropout")
        require_positive_float(self, "norm_eps")
        require_token_ids(self, {"pad_id": self.vocab_size})
        require_kernel(self)
        if self.embedding_dim is not None:
            require_positive(self, "embedding_dim")
            self.embedding_dim = None if self.embedding_dim == self.dim else self.embedding_dim
        self.task = task_config(self.task, "BERTConfig", self.dropout, "pooler")
        if self.pooler is None:
            self.pooler = self.task is None or self.task.pooling == "pooler"
        if self.mlm_head and (self.task is not None or self.embedding_dim is not None):
            raise ValueError("BERTConfig: mlm_head=True takes neither a task head nor an embedding_dim other than "
                             "dim (the decoder shares the word embedding matrix)")
        pooling = self.task.pooling if self.task is not None else None
        if pooling == "last_token":
            raise ValueError("BERTConfig.task: pooling='last_token' is a decoder's (GPT); BERT classifies from the "
                             "first token: 'pooler', 'roberta', 'electra' or 'distilbert'")
        if pooling == "pooler" and not self.pooler:
            raise ValueError("BERTConfig.task: pooling='pooler' reads the pooler, but pooler=False")


@dataclass
class BERTOutput:
    """What :meth:`BERT.forward` returns."""

    last_hidden_state: Tensor  # (B, N, dim), after the last layer's LayerNorm
    pooler_output: Tensor | None  # (B, dim): tanh(Linear(last_hidden_state[:, 0])); None with pooler=False
    mlm_logits: Tensor | None  # (B, N, vocab_size) with config.mlm_head, else None
    logits: Tensor | None = None  # the head's: mlm_logits, or the task head's (see attnkit.models.heads)
    loss: Tensor | None = None  # the head's loss against forward's labels; None without labels


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: ``decoder(LayerNorm(gelu(dense(x))))``, the decoder's weight being the word
    embedding matrix (tied) and its bias its own. x (B, N, dim) -> logits (B, N, vocab_size)."""

    def __init__(self, word_embeddings: nn.Embedding, eps: float):
        super().__init__()
        vocab_size, dim = word_embeddings.weight.shape
        self.dense = Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = Linear(dim, vocab_size)
        self.decoder.weight = word_embeddings.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x))))


class BERT(Model):
    """Bidirectional Transformer encoder.

    ``forward(input_ids, attention_mask=None, token_type_ids=None)``:

    - input_ids (B, N) long, N <= ``max_seq_len``;
    - attention_mask (B, N), 1 = token, 0 = padding (Hugging Face's meaning). Default: ``input_ids != pad_id``
      for a plain padded batch; no padding at all when ``position_ids`` is given (packed rows, see
      :meth:`forward`: the caller who lays out the row says where padding is, and a key padding that hides
      nothing would still cost a dense mask in every layer). Positions count from 0 at the first column,
      as in ``BertModel``: pad on the right;
    - token_type_ids (B, N) in [0, type_vocab_size); default all 0;
    - labels: the head's targets (masked-LM: (B, N), -100 = not predicted; a task head: see
      :mod:`attnkit.models.heads`), for ``loss``.

    Returns :class:`BERTOutput`; ``mlm_logits`` only when built with ``BERTConfig(mlm_head=True)``, ``logits`` with
    either head.
    """

    config: BERTConfig  # Model.config, typed as this model's config

    def __init__(self, config: BERTConfig) -> None:
        super().__init__()
        if not isinstance(config, BERTConfig):
            raise TypeError(f"config must be a BERTConfig, got {type(config).__name__}")
        self.config = c = config
        width = c.embedding_dim or c.dim
        self.word_embeddings = nn.Embedding(c.vocab_size, width, padding_idx=c.pad_id)
        self.position_embeddings = LearnedPositions(c.max_seq_len, width)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, width) if c.type_vocab_size else None
        self.embedding_norm = nn.LayerNorm(width, eps=c.norm_eps)
        self.embedding_project = Linear(width, c.dim) if c.embedding_dim is not None else None
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(c.dim, c.num_heads, c.hidden, activation="gelu", norm_first=False, eps=c.norm_eps,
                         dropout=c.dropout, attn_dropout=c.dropout, kernel=c.kernel) for _ in range(c.num_layers))
        self.pooler = Linear(c.dim, c.dim) if c.pooler else None
        self.mlm_head = MaskedLMHead(self.word_embeddings, c.norm_eps) if c.mlm_head else None
        self.task_head = TaskHead(c.task, c.dim) if c.task is not None else None
        self.apply(init_weights)  # BERT's: N(0, 0.02) weights, zero biases, unit LayerNorms
        with torch.no_grad():
            self.word_embeddings.weight[c.pad_id].zero_()

    def _check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None,
                      packed: bool) -> tuple[Tensor | None, Tensor]:
        """(key padding (B, N) bool or None for none, token types (B, N) long); see the class docstring."""
        c = self.config
        b, n = check_ids(input_ids, c.vocab_size)
        if n < 1 or (n > c.max_seq_len and not packed):  # packed rows: the position ids are checked instead
            raise ValueError(f"input_ids must hold 1 to max_seq_len={c.max_seq_len} tokens per sequence, got {n}")
        for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
            if value is not None and tuple(value.shape) != (b, n):
                raise ValueError(f"{name} must have input_ids' shape {(b, n)}, got {tuple(value.shape)}")
        mask: Tensor | None
        if attention_mask is not None:
            mask = check_attention_mask(attention_mask)
        else:  # packed rows (position_ids given) hold no padding unless an attention_mask says so
            mask = None if packed else input_ids != c.pad_id
        if token_type_ids is None:
            return mask, torch.zeros_like(input_ids)
        check_range(token_type_ids, c.type_vocab_size, "token_type_ids", "type_vocab_size")
        return mask, token_type_ids.long()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, *, position_ids: Tensor | None = None,
                mask: Mask | Tensor | None = None, labels: Tensor | None = None) -> BERTOutput:
        """``position_ids`` (B, N) and ``mask`` (an ``attnkit.masks`` mask or bool tensor, True = may attend,
        ANDed with the padding) serve packed rows: several sequences in one row, each with positions from
        0 and ``masks.document(ids)`` keeping their attention apart. With ``position_ids`` the padding comes
        from ``attention_mask`` alone (none when it is None): a packed row's tokens are all real, even one
        equal to ``pad_id``."""
        key_padding, token_type_ids = self._check_inputs(input_ids, attention_mask, token_type_ids,
                                                         packed=position_ids is not None)
        b, n = input_ids.shape
        if position_ids is None:
            positions = default_position_ids(b, n, 0, input_ids.device)
        elif tuple(position_ids.shape) != (b, n):
            raise ValueError(f"position_ids must have input_ids' shape {(b, n)}, got {tuple(position_ids.shape)}")
        else:
            positions = position_ids
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, N, embedding width)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        x = self.dropout(self.embedding_norm(x))
        if self.embedding_project is not None:
            x = self.embedding_project(x)  # (B, N, dim)
        for layer in self.layers:
            x = layer(x, mask=mask, key_padding=key_padding)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # (B, dim)
        mlm_logits = self.mlm_head(x) if self.mlm_head is not None else None
        if self.task_head is not None:
            logits = self.task_head(x, pooled=pooled)
            loss = task_loss(self.task_head.config, logits, labels) if labels is not None else None
            return BERTOutput(x, pooled, None, logits, loss)
        if labels is not None and mlm_logits is None:
            raise ValueError("labels need a head: this BERT has neither an MLM head nor a task head (BERTConfig's "
                             "mlm_head, task)")
        loss = masked_lm_loss(mlm_logits, labels) if labels is not None and mlm_logits is not None else None
        return BERTOutput(x, pooled, mlm_logits, mlm_logits, loss)


__all__ = ["BERTConfig", "BERT", "BERTOutput", "MaskedLMHead"]
