"""Bahdanau, Cho & Bengio 2014, "Neural Machine Translation by Jointly Learning to Align and Translate":
a bidirectional GRU encoder and a GRU decoder that, at every step, attends over the encoder's states with
additive attention (:class:`~attnkit.nn.classic.AdditiveAttention`).

One decoder step, with s the decoder state, y the previous target token and h_1..h_S the annotations:

    c_t      = attention(query=s_{t-1}, keys=values=h, mask=real source tokens)   # (B, 2H)
    s_t      = GRU([emb(y_{t-1}); c_t], s_{t-1})
    logits_t = W_o [s_t; c_t; emb(y_{t-1})] + b_o                                # the paper's deep output,
                                                                                  # without its maxout layer
    s_0      = tanh(W_s h←_1)          # the backward encoder's state after reading the whole source

With ``context="fixed"`` the same network has no attention: every step reads one fixed vector,
c = [h→_S; h←_1] (both directions' last states), as in Cho et al. 2014's RNN encoder-decoder, the
paper's "RNNencdec" baseline whose quality falls as sentences grow.

    >>> model = RNNSeq2Seq(RNNSeq2SeqConfig.preset("tiny"))
    >>> src, tgt = torch.randint(3, 16, (2, 7)), torch.randint(3, 16, (2, 5))
    >>> out = model(src, tgt)
    >>> out.logits.shape, out.attention.shape
    (torch.Size([2, 5, 16]), torch.Size([2, 5, 7]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ..functional.checks import check_int
from ..nn.classic import AdditiveAttention, packed_rnn
from .base import Config, Model, check_ids, require_dropout, require_positive, require_token_ids


Context = Literal["attention", "fixed"]


@dataclass
class RNNSeq2SeqConfig(Config):
    """Configuration of :class:`RNNSeq2Seq`; defaults are the paper's sizes."""

    src_vocab_size: int
    tgt_vocab_size: int
    embed_dim: int = 620
    hidden: int = 1000  # GRU size (per direction in the encoder); annotations have 2 * hidden
    attn_dim: int = 1000  # size of the additive attention's hidden layer
    num_layers: int = 1  # GRU layers in the encoder and in the decoder
    dropout: float = 0.0  # on embeddings, before the output layer, and between GRU layers
    pad_id: int = 0  # padding in both vocabularies
    bos_id: int = 1  # first decoder input
    eos_id: int = 2  # greedy decoding stops a sequence after emitting it
    context: Context = "attention"  # "fixed": no attention, one summary of the source for every step

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "bahdanau2014": {"src_vocab_size": 30000, "tgt_vocab_size": 30000, "embed_dim": 620, "hidden": 1000,
                         "attn_dim": 1000},
        "tiny": {"src_vocab_size": 16, "tgt_vocab_size": 16, "embed_dim": 16, "hidden": 24, "attn_dim": 16},
    }

    def __post_init__(self) -> None:
        require_positive(self, "src_vocab_size", "tgt_vocab_size", "embed_dim", "hidden", "attn_dim",
                         "num_layers")
        require_token_ids(self, {"pad_id": min(self.src_vocab_size, self.tgt_vocab_size),
                                 "bos_id": self.tgt_vocab_size, "eos_id": self.tgt_vocab_size})
        require_dropout(self, "dropout")
        if self.context not in ("attention", "fixed"):
            raise ValueError(f"RNNSeq2SeqConfig.context must be 'attention' or 'fixed', got {self.context!r}")


@dataclass
class Seq2SeqOutput:
    """What :meth:`RNNSeq2Seq.forward` returns."""

    logits: Tensor  # (B, T, tgt_vocab_size), position t predicting tgt_ids[:, t]
    attention: Tensor  # (B, T, S) each row sums to 1 over the real source tokens; zeros for context="fixed"


@dataclass
class EncodedSource:
    """What every decoder step attends to, computed once per source by :meth:`RNNSeq2Seq.encode`."""

    annotations: Tensor  # (B, S, 2H) the encoder's states, zero at padding: the attention's keys and values
    keys: Tensor | None  # (B, S, A) W_k annotations, the query-independent half of the additive score
    mask: Tensor  # (B, S) bool, True = real source token
    summary: Tensor  # (B, 2H) [h→_S; h←_1]: the one context vector of context="fixed"


class RNNSeq2Seq(Model):
    """The RNN encoder-decoder with additive attention (Bahdanau et al. 2014).

    ``forward(src_ids, tgt_ids, src_mask=None)`` runs the decoder with teacher forcing: ``tgt_ids`` (B, T)
    are the targets, and the decoder reads ``bos_id`` followed by ``tgt_ids[:, :-1]``, so
    ``cross_entropy(logits.transpose(1, 2), tgt_ids, ignore_index=pad_id)`` is the training loss.
    ``src_mask`` (B, S) bool, True = real token, defaults to ``src_ids != pad_id``.
    """

    config: RNNSeq2SeqConfig  # Model.config, typed as this model's config

    def __init__(self, config: RNNSeq2SeqConfig) -> None:
        super().__init__()
        if not isinstance(config, RNNSeq2SeqConfig):
            raise TypeError(f"config must be a RNNSeq2SeqConfig, got {type(config).__name__}")
        self.config = c = config
        between = c.dropout if c.num_layers > 1 else 0.0  # nn.GRU warns about dropout with one layer
        self.src_embed = nn.Embedding(c.src_vocab_size, c.embed_dim, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.embed_dim, padding_idx=c.pad_id)
        self.encoder = nn.GRU(c.embed_dim, c.hidden, c.num_layers, batch_first=True, bidirectional=True,
                              dropout=between)
        self.init_state = nn.Linear(c.hidden, c.num_layers * c.hidden)  # W_s: one s_0 per decoder layer
        self.attention: AdditiveAttention | None = (AdditiveAttention(c.hidden, 2 * c.hidden, c.attn_dim)
                                                    if c.context == "attention" else None)
        self.decoder = nn.GRU(c.embed_dim + 2 * c.hidden, c.hidden, c.num_layers, batch_first=True,
                              dropout=between)
        self.output = nn.Linear(c.hidden + 2 * c.hidden + c.embed_dim, c.tgt_vocab_size)
        self.drop = nn.Dropout(c.dropout)

    def _source_mask(self, src_ids: Tensor, src_mask: Tensor | None) -> Tensor:
        check_ids(src_ids, self.config.src_vocab_size, "src_ids")
        if src_mask is None:
            return src_ids != self.config.pad_id
        if not isinstance(src_mask, Tensor) or src_mask.dtype != torch.bool:
            got = src_mask.dtype if isinstance(src_mask, Tensor) else type(src_mask).__name__
            raise TypeError(f"src_mask must be a bool tensor (True = real token), got {got}")
        if src_mask.shape != src_ids.shape:
            raise ValueError(f"src_mask must have src_ids' shape {tuple(src_ids.shape)}, got "
                             f"{tuple(src_mask.shape)}")
        return src_mask

    def encode(self, src_ids: Tensor, src_mask: Tensor) -> tuple[EncodedSource, Tensor]:
        """Returns the source as every decoder step reads it and the decoder's first state (L, B, H)."""
        B, L, H = src_ids.shape[0], self.config.num_layers, self.config.hidden
        annotations, h_n = packed_rnn(self.encoder, self.drop(self.src_embed(src_ids)), src_mask)
        backward_first = h_n[-1]  # (B, H): top layer, backward direction, having read the whole source
        state = torch.tanh(self.init_state(backward_first))  # (B, L * H)
        keys = None  # (B, S, A): once, not at every step
        if self.attention is not None:
            keys = self.attention.project_keys(annotations, mask=src_mask)
        source = EncodedSource(annotations, keys, src_mask, torch.cat([h_n[-2], backward_first], dim=-1))
        return source, state.reshape(B, L, H).transpose(0, 1).contiguous()  # (L, B, H)

    def _step(self, prev: Tensor, state: Tensor, source: EncodedSource) -> tuple[Tensor, Tensor, Tensor]:
        """One decoder step: prev (B,) tokens, state (L, B, H) -> logits (B, V), state (L, B, H), weights (B, S)."""
        embedded = self.drop(self.tgt_embed(prev))  # (B, E)
        if self.attention is None:  # Cho et al. 2014: the same summary at every step, no weights
            context, weights = source.summary, source.summary.new_zeros(source.mask.shape)  # (B, 2H), (B, S)
        else:
            context, weights = self.attention(state[-1], source.annotations, mask=source.mask,
                                              projected_keys=source.keys)  # (B, 2H), (B, S)
        out, state = self.decoder(torch.cat([embedded, context], dim=-1).unsqueeze(1), state)  # (B, 1, H)
        features = torch.cat([out.squeeze(1), context, embedded], dim=-1)  # (B, 3H + E)
        return self.output(self.drop(features)), state, weights

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, src_mask: Tensor | None = None) -> Seq2SeqOutput:
        src_mask = self._source_mask(src_ids, src_mask)
        check_ids(tgt_ids, self.config.tgt_vocab_size, "tgt_ids")
        if tgt_ids.shape[0] != src_ids.shape[0]:
            raise ValueError(f"tgt_ids must have src_ids' batch size {src_ids.shape[0]}, got {tgt_ids.shape[0]}")
        source, state = self.encode(src_ids, src_mask)
        bos = torch.full_like(tgt_ids[:, :1], self.config.bos_id)
        inputs = torch.cat([bos, tgt_ids[:, :-1]], dim=1)  # (B, T): shifted right
        logits, attention = [], []
        for t in range(inputs.shape[1]):
            step_logits, state, weights = self._step(inputs[:, t], state, source)
            logits.append(step_logits)
            attention.append(weights)
        B, T, S, V = src_ids.shape[0], tgt_ids.shape[1], src_ids.shape[1], self.config.tgt_vocab_size
        if T == 0:
            return Seq2SeqOutput(source.annotations.new_zeros(B, 0, V), source.annotations.new_zeros(B, 0, S))
        return Seq2SeqOutput(torch.stack(logits, dim=1), torch.stack(attention, dim=1))  # (B, T, V), (B, T, S)

    @torch.no_grad()
    def greedy_decode(self, src_ids: Tensor, max_len: int, src_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Pick the most likely token at each step, up to ``max_len`` tokens.

        A sequence stops after it emits ``eos_id`` (included); later positions hold ``pad_id`` and zero
        attention. Decoding ends early once every sequence has stopped. Call ``eval()`` first if the
        config has dropout.

        Returns tokens (B, T) long and attention (B, T, S), T <= max_len.
        """
        check_int("max_len", max_len, minimum=0)
        src_mask = self._source_mask(src_ids, src_mask)
        source, state = self.encode(src_ids, src_mask)
        B, S = src_ids.shape
        prev = torch.full((B,), self.config.bos_id, dtype=torch.long, device=src_ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=src_ids.device)
        tokens = [prev.new_zeros(B, 0)]
        attention = [source.annotations.new_zeros(B, 0, S)]
        for _ in range(max_len):
            logits, state, weights = self._step(prev, state, source)
            prev = torch.where(done, self.config.pad_id, logits.argmax(dim=-1))  # (B,)
            tokens.append(prev[:, None])
            attention.append(torch.where(done[:, None], 0.0, weights)[:, None])  # (B, 1, S)
            done = done | (prev == self.config.eos_id)
            if bool(done.all()):
                break
        return torch.cat(tokens, dim=1), torch.cat(attention, dim=1)


__all__ = ["RNNSeq2SeqConfig", "RNNSeq2Seq", "Seq2SeqOutput", "EncodedSource"]
