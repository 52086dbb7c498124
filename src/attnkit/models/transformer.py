"""The Transformer (Vaswani et al. 2017, "Attention Is All You Need"): an encoder of self-attention layers
and a decoder of masked self-attention + cross-attention layers, token embeddings scaled by sqrt(dim) plus
sinusoidal positions, and greedy and beam-search decoding over KV caches.

Conventions:

- ``src_mask`` / ``tgt_mask`` mean what Hugging Face's masks mean: (B, N), 1 or True = token, 0 or
  False = padding. ``forward`` defaults them to ``ids != pad_id``.
- ``tgt_ids`` are the *decoder inputs*: ``bos_id`` followed by the target tokens, so ``logits[:, t]``
  predicts the token after ``tgt_ids[:, t]``. Decoding returns sequences in the same form (``bos_id``
  first), so ``model(src, tokens[:, :-1])`` rescores them. Training on ``seq = [bos, y..., eos, pad...]``::

      logits = model(src, seq[:, :-1]).logits                              # (B, T, tgt_vocab_size)
      loss = F.cross_entropy(logits.transpose(1, 2), seq[:, 1:], ignore_index=config.pad_id)

    >>> model = Transformer(TransformerConfig.preset("tiny")).eval()
    >>> src, tgt = torch.randint(3, 16, (2, 7)), torch.randint(3, 16, (2, 5))
    >>> model(src, tgt).logits.shape
    torch.Size([2, 5, 16])
    >>> model.greedy_decode(src, max_len=10).shape[1] <= 11      # bos + at most 10 tokens
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..functional.checks import check_int
from ..nn.cache import ContextCache, StaticCache
from ..nn.linear import Linear
from ..nn.layers import DecoderLayer, EncoderLayer
from ..nn.positions import SinusoidalPositions, default_position_ids
from .base import (Config, Model, check_attention_mask, check_ids, require_dropout, require_heads, require_kernel,
                   require_positive, require_token_ids)


@dataclass
class TransformerConfig(Config):
    """Configuration of :class:`Transformer`; defaults are the paper's base model."""

    src_vocab_size: int
    tgt_vocab_size: int
    dim: int = 512  # d_model
    num_heads: int = 8
    hidden: int = 2048  # feed-forward inner width, d_ff
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.1  # P_drop: on embeddings + positions and on each sub-layer's output (not on attention)
    max_len: int | None = None  # longest source or decoder input accepted; None = no limit (sinusoids have none)
    norm_first: bool = False  # False: post-norm, as in the paper; True: pre-norm plus a final LayerNorm per stack
    # tie the output projection to the decoder's input embedding, and (paper, §3.4) the source embedding
    # too when both vocabularies have the same size (a shared BPE vocabulary)
    share_embeddings: bool = False
    pad_id: int = 0  # padding in both vocabularies
    bos_id: int = 1  # first decoder input
    eos_id: int = 2  # decoding ends a sequence after emitting it
    kernel: str = "auto"  # handed to every attention layer unchanged

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # WMT 2014 En-De: a shared source-target BPE vocabulary of about 37000 tokens
        "base": {"src_vocab_size": 37000, "tgt_vocab_size": 37000, "dim": 512, "num_heads": 8, "hidden": 2048,
                 "num_encoder_layers": 6, "num_decoder_layers": 6, "dropout": 0.1, "share_embeddings": True},
        "big": {"src_vocab_size": 37000, "tgt_vocab_size": 37000, "dim": 1024, "num_heads": 16, "hidden": 4096,
                "num_encoder_layers": 6, "num_decoder_layers": 6, "dropout": 0.3, "share_embeddings": True},
        "tiny": {"src_vocab_size": 16, "tgt_vocab_size": 16, "dim": 32, "num_heads": 4, "hidden": 64,
                 "num_encoder_layers": 2, "num_decoder_layers": 2, "dropout": 0.0},
    }

    def __post_init__(self) -> None:
        require_positive(self, "src_vocab_size", "tgt_vocab_size", "dim", "num_heads", "hidden",
                         "num_encoder_layers", "num_decoder_layers")
        require_heads(self, self.dim, self.num_heads)
        if self.dim % 2:
            raise ValueError(f"TransformerConfig.dim must be even for sinusoidal positions, got {self.dim}")
        require_dropout(self, "dropout")
        require_kernel(self)
        if self.max_len is not None:
            require_positive(self, "max_len")
        require_token_ids(self, {"pad_id": min(self.src_vocab_size, self.tgt_vocab_size),
                                 "bos_id": self.tgt_vocab_size, "eos_id": self.tgt_vocab_size})


@dataclass
class TransformerOutput:
    """What :meth:`Transformer.forward` returns."""

    logits: Tensor  # (B, T, tgt_vocab_size): logits[:, t] predicts the token after tgt_ids[:, t]
    encoder_last_hidden_state: Tensor  # (B, S, dim) the memory the decoder attends to


@dataclass
class BeamSearchOutput:
    """What :meth:`Transformer.beam_search` returns: the best hypothesis per input."""

    tokens: Tensor  # (B, T) long: bos_id, the hypothesis (eos_id included if emitted), then pad_id
    scores: Tensor  # (B,) float64: its summed log-probability divided by gnmt_length_penalty(its length)


@dataclass
class DecoderCache:
    """Per decoder layer: a ``StaticCache`` for masked self-attention, a ``ContextCache`` for cross-attention
    (the source's projected keys and values, computed at the first step and reused)."""

    self_attention: list[StaticCache]
    cross_attention: list[ContextCache]

    @property
    def length(self) -> int:
        """Decoder tokens seen so far: the position of the next one."""
        return self.self_attention[0].length

    def reorder(self, index: Tensor, *, same_sources: bool = False) -> None:
        """Keep batch rows ``index`` (B',) in every cache. ``same_sources``: each new row i comes from a row
        with the same source as row i had (beam search, whose beams never leave their input), so the
        cross-attention caches are already right and are not copied."""
        for cache in self.self_attention if same_sources else (*self.self_attention, *self.cross_attention):
            cache.reorder(index)


def gnmt_length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    """Wu et al. 2016 (GNMT): lp(len) = ((5 + len) / 6) ** alpha; alpha = 0 means no normalization.

    Beam search ranks hypotheses by log P(y) / lp(|y|), |y| counting the generated tokens with eos.
    """
    return ((5.0 + lengths.to(torch.float64)) / 6.0) ** alpha


def _init_weights(module: nn.Module) -> None:
    """Xavier-uniform projections with zero biases; embeddings N(0, dim^-1/2), so that the embeddings scaled
    by sqrt(dim) have unit variance, like the sinusoids they are added to (as in tensor2tensor and fairseq)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.embedding_dim ** -0.5)


def _bool_mask(name: str, mask: Tensor, shape: tuple[int, ...]) -> Tensor:
    mask = check_attention_mask(mask, name)  # a TypeError for a non-tensor, a ValueError for values but 0/1
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (1 = token, 0 = padding), got {tuple(mask.shape)}")
    return mask


@dataclass
class _Beams:
    """The ``K`` hypotheses kept for each of ``B`` inputs; a finished one keeps its slot and only appends pad."""

    tokens: Tensor  # (B*K, T) long: bos, generated tokens, pad after eos
    scores: Tensor  # (B, K) summed log-probabilities; -inf for slots not in use yet
    lengths: Tensor  # (B, K) long: generated tokens, eos included
    finished: Tensor  # (B, K) bool: has emitted eos

    @classmethod
    def start(cls, batch: int, size: int, bos_id: int, like: Tensor) -> _Beams:
        scores = torch.full((batch, size), float("-inf"), dtype=torch.float64, device=like.device)
        scores[:, 0] = 0.0  # one live slot at first: the others would only repeat it
        tokens = torch.full((batch * size, 1), bos_id, dtype=torch.long, device=like.device)
        zeros = torch.zeros(batch, size, dtype=torch.long, device=like.device)
        return cls(tokens, scores, zeros, zeros.bool())

    def normalized(self, alpha: float) -> Tensor:
        return self.scores / gnmt_length_penalty(self.lengths, alpha)  # (B, K)

    def advance(self, log_probs: Tensor, alpha: float, pad_id: int, eos_id: int) -> Tensor:
        """Extend by one token from ``log_probs`` (B*K, V); returns the parent row of each new beam (B*K,)."""
        b, k = self.scores.shape
        v = log_probs.shape[-1]
        log_probs = log_probs.to(torch.float64).view(b, k, v)
        stay = torch.full_like(log_probs[0, 0], float("-inf"))
        stay[pad_id] = 0.0  # (V,): a finished hypothesis continues only with pad, at no cost
        log_probs = torch.where(self.finished[..., None], stay, log_probs)
        lengths = self.lengths + (~self.finished).long()  # (B, K)
        candidates = self.scores[..., None] + log_probs  # (B, K, V)
        ranked = candidates / gnmt_length_penalty(lengths, alpha)[..., None]
        top = ranked.view(b, k * v).topk(k, dim=-1).indices  # (B, K)
        parent, token = top // v, top % v
        rows = (parent + k * torch.arange(b, device=top.device)[:, None]).view(-1)  # (B*K,)
        self.scores = candidates.view(b, k * v).gather(1, top)
        self.lengths = lengths.gather(1, parent)
        self.finished = self.finished.gather(1, parent) | (token == eos_id)
        self.tokens = torch.cat((self.tokens[rows], token.view(-1, 1)), dim=1)
        return rows

    def bound(self, alpha: float, max_len: int) -> Tensor:
        """(B,) the best normalized score any unfinished hypothesis could still reach: log-probabilities only
        fall, and the penalty is largest at one end of the lengths still possible (it is monotonic)."""
        now = self.tokens.shape[1] - 1
        ends = torch.tensor([min(now + 1, max_len), max_len])
        penalty = float(gnmt_length_penalty(ends, alpha).max())
        running = ~self.finished & torch.isfinite(self.scores)
        return torch.where(running, self.scores / penalty, float("-inf")).amax(dim=-1)


@dataclass
class _Best:
    """The best hypothesis found so far for each input."""

    tokens: Tensor  # (B, max_len + 1) long, pad-filled
    scores: Tensor  # (B,) float64 normalized score, -inf before any
    lengths: Tensor  # (B,) long: tokens including bos

    def update(self, beams: _Beams, alpha: float, *, include_unfinished: bool) -> None:
        b, k = beams.scores.shape
        eligible = beams.finished | include_unfinished
        score, slot = beams.normalized(alpha).masked_fill(~eligible, float("-inf")).max(dim=-1)  # (B,)
        better = score > self.scores  # strict: an earlier hypothesis wins ties
        rows = slot + k * torch.arange(b, device=slot.device)
        t = beams.tokens.shape[1]
        self.tokens[better, :t] = beams.tokens[rows[better]]
        self.lengths = torch.where(better, beams.lengths.gather(1, slot[:, None])[:, 0] + 1, self.lengths)
        self.scores = torch.where(better, score, self.scores)


class Transformer(Model):
    """Encoder-decoder Transformer.

    - ``encode(src_ids, src_mask=None) -> memory`` (B, S, dim);
    - ``decode(tgt_ids, memory, src_mask, *, tgt_mask=None, cache=None) -> logits`` (B, T, tgt_vocab_size);
    - ``forward(src_ids, tgt_ids, src_mask=None, tgt_mask=None) -> TransformerOutput``;
    - ``greedy_decode`` and ``beam_search``, over one ``StaticCache`` and one ``ContextCache`` per decoder
      layer (:class:`DecoderCache`). Call ``eval()`` before decoding a model with dropout.

    See the module docstring for the mask and ``tgt_ids`` conventions and a training example.
    """

    config: TransformerConfig  # Model.config, typed as this model's config

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = c = config
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.dim)
        self.tgt_embedding = nn.Embedding(c.tgt_vocab_size, c.dim)
        self.positions = SinusoidalPositions(c.dim)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(c.dim, c.num_heads, c.hidden, activation="relu", norm_first=c.norm_first,
                         dropout=c.dropout, kernel=c.kernel) for _ in range(c.num_encoder_layers))
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(c.dim, c.num_heads, c.hidden, activation="relu", norm_first=c.norm_first,
                         dropout=c.dropout, kernel=c.kernel) for _ in range(c.num_decoder_layers))
        # a pre-norm stack leaves its residual stream unnormalized: one LayerNorm closes each stack
        self.encoder_norm = nn.LayerNorm(c.dim) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.dim) if c.norm_first else nn.Identity()
        self.output = Linear(c.dim, c.tgt_vocab_size, bias=False)
        self.apply(_init_weights)
        if c.share_embeddings:
            self.output.weight = self.tgt_embedding.weight
            if c.src_vocab_size == c.tgt_vocab_size:
                self.src_embedding.weight = self.tgt_embedding.weight

    # ---------------------------------------------------------------------------------------------
    # inputs

    def _check_length(self, name: str, length: int) -> None:
        limit = self.config.max_len
        if limit is not None and length > limit:
            raise ValueError(f"{name} has {length} positions, more than TransformerConfig.max_len={limit}")

    def _check_decode_length(self, max_len: int) -> None:
        limit = self.config.max_len  # decoding feeds bos and up to max_len - 1 tokens to the decoder
        if limit is not None and max_len > limit:
            raise ValueError(f"max_len={max_len} would feed the decoder more than TransformerConfig.max_len="
                             f"{limit} inputs")

    def _source_padding(self, src_ids: Tensor, src_mask: Tensor | None) -> Tensor:
        """Validate ``src_ids`` (B, S) and return its padding as (B, S) bool, True = token."""
        check_ids(src_ids, self.config.src_vocab_size, "src_ids")
        self._check_length("src_ids", src_ids.shape[1])
        if src_mask is None:
            return src_ids != self.config.pad_id
        return _bool_mask("src_mask", src_mask, tuple(src_ids.shape))

    def _embed(self, ids: Tensor, table: nn.Embedding, offset: int) -> Tensor:
        b, n = ids.shape
        x = table(ids) * math.sqrt(self.config.dim)  # (B, N, dim)
        positions = default_position_ids(b, n, offset, ids.device).to(torch.float64)
        return self.dropout(x + self.positions(positions).to(x.dtype))  # sinusoids in float64, then cast

    # ---------------------------------------------------------------------------------------------
    # encoder and decoder

    def encode(self, src_ids: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """src_ids (B, S) -> memory (B, S, dim). Rows at padded positions hold values that nothing reads."""
        return self._encode(src_ids, self._source_padding(src_ids, src_mask))

    def _encode(self, src_ids: Tensor, src_padding: Tensor) -> Tensor:
        """``encode`` for inputs already checked (``src_padding`` from ``_source_padding``)."""
        x = self._embed(src_ids, self.src_embedding, 0)  # (B, S, dim)
        for layer in self.encoder_layers:
            x = layer(x, key_padding=src_padding)
        return self.encoder_norm(x)

    def new_cache(self, max_len: int) -> DecoderCache:
        """Empty caches for decoding up to ``max_len`` decoder inputs (bos included)."""
        layers = range(len(self.decoder_layers))
        return DecoderCache([StaticCache(max_len) for _ in layers], [ContextCache() for _ in layers])

    def decode(self, tgt_ids: Tensor, memory: Tensor, src_mask: Tensor | None, *, tgt_mask: Tensor | None = None,
               cache: DecoderCache | None = None) -> Tensor:
        """Decoder inputs ``tgt_ids`` (B, T) attending to ``memory`` (B, S, dim) -> logits (B, T, tgt_vocab).

        Args:
            src_mask: (B, S), 1 = source token; None = no padding.
            tgt_mask: (B, past + T), 1 = token, over the cached inputs too; None = no padding (causal only).
            cache: with a cache, ``tgt_ids`` are the new inputs only, at positions ``cache.length`` onwards;
                the caches are updated in place. Once its ``ContextCache`` is filled (the first call), the
                source's keys and values come from it and ``memory`` only has to have the right shape.
        """
        b, n = check_ids(tgt_ids, self.config.tgt_vocab_size, "tgt_ids")
        if not isinstance(memory, Tensor) or memory.dim() != 3 or memory.shape[0] != b \
                or memory.shape[2] != self.config.dim:
            got = tuple(memory.shape) if isinstance(memory, Tensor) else type(memory).__name__
            raise ValueError(f"memory must be (B={b}, S, dim={self.config.dim}), got {got}")
        past = 0 if cache is None else cache.length
        self._check_length("the decoder input", past + n)
        src_padding = None if src_mask is None else _bool_mask("src_mask", src_mask, tuple(memory.shape[:2]))
        tgt_padding = None if tgt_mask is None else _bool_mask("tgt_mask", tgt_mask, (b, past + n))
        x = self._embed(tgt_ids, self.tgt_embedding, past)  # (B, T, dim)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, memory, context_padding=src_padding, causal=True, key_padding=tgt_padding,
                      cache=None if cache is None else cache.self_attention[i],
                      context_cache=None if cache is None else cache.cross_attention[i])
        return self.output(self.decoder_norm(x))  # (B, T, tgt_vocab_size)

    def forward(self, src_ids: Tensor, tgt_ids: Tensor, src_mask: Tensor | None = None,
                tgt_mask: Tensor | None = None) -> TransformerOutput:
        """Teacher-forced pass: src_ids (B, S), decoder inputs tgt_ids (B, T) (bos first) -> logits
        (B, T, tgt_vocab_size). Masks: (B, S) and (B, T), 1 = token; default ``ids != pad_id``."""
        src_padding = self._source_padding(src_ids, src_mask)
        check_ids(tgt_ids, self.config.tgt_vocab_size, "tgt_ids")
        if tgt_ids.shape[0] != src_ids.shape[0]:
            raise ValueError(f"tgt_ids must have src_ids' batch size {src_ids.shape[0]}, got {tgt_ids.shape[0]}")
        tgt_padding = tgt_ids != self.config.pad_id if tgt_mask is None else \
            _bool_mask("tgt_mask", tgt_mask, tuple(tgt_ids.shape))
        memory = self._encode(src_ids, src_padding)
        logits = self.decode(tgt_ids, memory, src_padding, tgt_mask=tgt_padding)
        return TransformerOutput(logits, memory)

    # ---------------------------------------------------------------------------------------------
    # decoding

    @torch.no_grad()
    def greedy_decode(self, src_ids: Tensor, max_len: int, *, src_mask: Tensor | None = None,
                      use_cache: bool = True) -> Tensor:
        """Pick the most likely token at each step, up to ``max_len`` tokens after ``bos_id``.

        A sequence stops after emitting ``eos_id``; its later positions hold ``pad_id``; decoding ends once
        every sequence has stopped. ``use_cache=False`` recomputes the whole prefix at every step (same
        tokens, slower; kept as the reference for the cache).

        Returns:
            tokens (B, T) long, T <= max_len + 1, starting with ``bos_id``.
        """
        check_int("max_len", max_len, minimum=0)
        c = self.config
        src_padding = self._source_padding(src_ids, src_mask)
        self._check_decode_length(max_len)
        memory = self._encode(src_ids, src_padding)
        tokens = torch.full((src_ids.shape[0], 1), c.bos_id, dtype=torch.long, device=src_ids.device)
        done = torch.zeros(src_ids.shape[0], dtype=torch.bool, device=src_ids.device)
        cache = self.new_cache(max_len) if use_cache and max_len > 0 else None
        for _ in range(max_len):
            step = tokens[:, -1:] if cache is not None else tokens  # (B, 1) or (B, t)
            logits = self.decode(step, memory, src_padding, cache=cache)[:, -1]  # (B, V)
            token = torch.where(done, c.pad_id, logits.argmax(dim=-1))  # (B,)
            tokens = torch.cat((tokens, token[:, None]), dim=1)
            done |= token == c.eos_id
            if bool(done.all()):
                break
        return tokens

    @torch.no_grad()
    def beam_search(self, src_ids: Tensor, max_len: int, *, beam_size: int = 4, length_penalty: float = 1.0,
                    src_mask: Tensor | None = None) -> BeamSearchOutput:
        """Keep the ``beam_size`` best hypotheses per input, extending each by every token at every step.

        Hypotheses are ranked by log P(y) / lp(|y|) with the GNMT length penalty
        lp(n) = ((5 + n) / 6) ** length_penalty, |y| counting generated tokens with eos (see
        :func:`gnmt_length_penalty`); ``length_penalty=0`` ranks by log P(y) alone. A finished hypothesis
        keeps its slot (extended by pad at no cost) until better ones push it out; the best finished one
        ever seen is remembered. Hypotheses still unfinished after ``max_len`` tokens compete as they are.
        The search stops early once no unfinished hypothesis can beat the best finished one, which never
        changes the result. ``beam_size=1`` is greedy decoding; a beam as large as the number of possible
        sequences is exhaustive search.

        Returns:
            :class:`BeamSearchOutput`: tokens (B, T), T <= max_len + 1, ``bos_id`` first and ``pad_id``
            after eos, and their normalized scores (B,).
        """
        check_int("max_len", max_len, minimum=0)
        check_int("beam_size", beam_size)
        if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
                or not math.isfinite(length_penalty):
            raise ValueError(f"length_penalty must be a finite float, got {length_penalty!r}")
        c = self.config
        src_padding = self._source_padding(src_ids, src_mask)
        self._check_decode_length(max_len)
        b, k = src_ids.shape[0], beam_size
        memory = self._encode(src_ids, src_padding).repeat_interleave(k, dim=0)  # (B*K, S, dim)
        src_padding = src_padding.repeat_interleave(k, dim=0)  # (B*K, S): beams never leave their input
        beams = _Beams.start(b, k, c.bos_id, src_ids)
        best = _Best(torch.full((b, max_len + 1), c.pad_id, dtype=torch.long, device=src_ids.device),
                     torch.full((b,), float("-inf"), dtype=torch.float64, device=src_ids.device),
                     torch.ones(b, dtype=torch.long, device=src_ids.device))
        cache = self.new_cache(max_len) if max_len > 0 else None
        for _ in range(max_len):
            logits = self.decode(beams.tokens[:, -1:], memory, src_padding, cache=cache)[:, -1]  # (B*K, V)
            assert cache is not None  # made whenever max_len > 0, that is whenever this loop runs
            cache.reorder(beams.advance(logits.log_softmax(dim=-1), length_penalty, c.pad_id, c.eos_id),
                          same_sources=True)
            best.update(beams, length_penalty, include_unfinished=False)
            if bool((best.scores >= beams.bound(length_penalty, max_len)).all()):
                break
        if beams.tokens.shape[1] == max_len + 1:  # ran the full length: unfinished hypotheses compete too
            best.update(beams, length_penalty, include_unfinished=True)
        width = int(best.lengths.max()) if b else 1
        return BeamSearchOutput(best.tokens[:, :width], best.scores)


__all__ = ["TransformerConfig", "Transformer", "TransformerOutput", "BeamSearchOutput", "DecoderCache",
           "gnmt_length_penalty"]
