"""GPT: a decoder-only language model (Radford et al. 2019), with the modern options as config fields:
RoPE or ALiBi instead of learned positions, grouped-query attention, RMSNorm, SwiGLU, sliding windows,
mixture-of-experts layers. Generation with a KV cache, greedy or sampled.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..functional.checks import check_int
from ..nn.cache import CacheKind, KVCache, make_cache
from ..nn.layers import Activation, EncoderLayer
from ..nn.linear import Linear
from ..nn.moe import MoE, check_routing
from ..nn.norms import NormKind, make_norm
from ..nn.positions import (
    ALiBiPositions,
    LearnedPositions,
    RotaryEmbedding,
    default_position_ids,
    position_ids_from_mask,
)
from .base import (Config, Model, check_attention_mask, check_ids, init_weights, require_dropout, require_heads,
                   require_kernel, require_positive, require_positive_float)
from .sampling import check_prompt, check_sampling, extend, next_token


@dataclass
class GPTConfig(Config):
    """Configuration of :class:`GPT`; defaults are GPT-2 small's."""

    vocab_size: int = 50257
    max_seq_len: int = 1024  # longest input; the learned position table's length
    dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int | None = None  # fewer key/value heads = grouped-query attention; None = num_heads
    hidden: int | None = None  # feed-forward width; None = 4 * dim
    positions: Literal["learned", "rope", "alibi"] = "learned"
    rope_base: float = 10000.0  # RoPE's frequency base θ (positions="rope")
    window: int | None = None  # sliding window: each token sees itself and the `window` tokens before it
    activation: Activation = "gelu_tanh"
    norm: NormKind = "layer"
    norm_eps: float = 1e-5
    bias: bool = True  # biases in projections
    qk_norm: bool = False  # RMS-normalize query and key heads before attention
    tie_embeddings: bool = True  # the output head shares the token embedding
    dropout: float = 0.0
    moe_layers: tuple[int, ...] = ()  # indices of layers whose feed-forward is a mixture of experts
    num_experts: int = 8  # experts per MoE layer
    moe_top_k: int = 2  # experts each token is routed to
    capacity_factor: float | None = 1.25  # MoE expert capacity while training; None = unlimited
    kernel: str = "auto"  # handed to every attention layer unchanged

    PRESETS = {
        "gpt2-small": dict(dim=768, num_layers=12, num_heads=12),
        "gpt2-medium": dict(dim=1024, num_layers=24, num_heads=16),
        "gpt2-large": dict(dim=1280, num_layers=36, num_heads=20),
        "nano": dict(vocab_size=256, max_seq_len=256, dim=128, num_layers=4, num_heads=4),
        # a LLaMA-style layout at a small size: RoPE, GQA, RMSNorm, SwiGLU, no biases, untied head
        "llama-tiny": dict(vocab_size=32000, max_seq_len=2048, dim=256, num_layers=4, num_heads=8, num_kv_heads=2,
                           hidden=688, positions="rope", activation="swiglu", norm="rms", norm_eps=1e-6,
                           bias=False, tie_embeddings=False),
    }

    def __post_init__(self) -> None:
        require_positive(self, "vocab_size", "max_seq_len", "dim", "num_layers", "num_heads")
        require_heads(self, self.dim, self.num_heads, self.num_kv_heads, rope=self.positions == "rope")
        require_dropout(self, "dropout")
        require_positive_float(self, "norm_eps", "rope_base")  # <= 0 gives NaN logits
        require_kernel(self)
        self.moe_layers = tuple(self.moe_layers)
        bad = [i for i in self.moe_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"GPTConfig.moe_layers {bad} are not layer indices 0..{self.num_layers - 1}")
        check_routing(self.num_experts, self.moe_top_k, self.capacity_factor,
                      names=("GPTConfig.num_experts", "GPTConfig.moe_top_k", "GPTConfig.capacity_factor"))
        if self.positions not in ("learned", "rope", "alibi"):
            raise ValueError(f"GPTConfig.positions must be 'learned', 'rope' or 'alibi', got {self.positions!r}")
        if self.window is not None:
            require_positive(self, "window")


@dataclass
class GPTOutput:
    """What :meth:`GPT.forward` returns."""

    logits: Tensor  # (B, N, vocab_size)
    last_hidden_state: Tensor  # (B, N, dim), after the final norm
    aux_loss: Tensor | None  # the MoE layers' load-balancing loss, summed; None without MoE


class GPT(Model):
    """Decoder-only transformer.

        >>> model = GPT(GPTConfig.preset("nano"))
        >>> out = model(torch.randint(0, 256, (2, 16)))          # out.logits: (2, 16, 256)
        >>> tokens = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=10)
    """

    config: GPTConfig  # Model.config, typed as this model's config

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        head_dim = c.dim // c.num_heads
        self.token_embedding = nn.Embedding(c.vocab_size, c.dim)
        self.position_embedding = LearnedPositions(c.max_seq_len, c.dim) if c.positions == "learned" else None
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(self._layer(i, head_dim) for i in range(c.num_layers))
        self.final_norm = make_norm(c.norm, c.dim, c.norm_eps)
        self.head = Linear(c.dim, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.head.weight = self.token_embedding.weight
        self.apply(init_weights)

    def _layer(self, index: int, head_dim: int) -> EncoderLayer:
        c = self.config
        hidden = c.hidden or 4 * c.dim
        positions = RotaryEmbedding(head_dim, c.rope_base) if c.positions == "rope" else \
            ALiBiPositions(c.num_heads) if c.positions == "alibi" else None
        ffn = MoE(c.dim, hidden, c.num_experts, c.moe_top_k, capacity_factor=c.capacity_factor,
                  activation=c.activation, bias=c.bias) if index in c.moe_layers else None
        return EncoderLayer(c.dim, c.num_heads, hidden, num_kv_heads=c.num_kv_heads, activation=c.activation,
                            norm=c.norm, eps=c.norm_eps, bias=c.bias, dropout=c.dropout, attn_dropout=c.dropout,
                            qk_norm=c.qk_norm, positions=positions, kernel=c.kernel, ffn=ffn)

    def new_cache(self, kind: CacheKind = "static", *,
                  max_len: int | None = None) -> list[KVCache]:
        """One KV cache per layer. ``"static"`` holds ``max_len`` tokens (default ``max_seq_len``);
        ``"ring"`` needs ``config.window`` and holds that many past tokens."""
        if kind == "ring" and self.config.window is None:
            raise ValueError("a ring cache serves sliding-window models; this GPTConfig has window=None")
        max_len = self.config.max_seq_len if max_len is None else max_len
        return [make_cache(kind, max_len=max_len, size=self.config.window) for _ in self.layers]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                cache: list[KVCache] | None = None, position_ids: Tensor | None = None) -> GPTOutput:
        """input_ids (B, N) long; ``attention_mask`` (B, N_total) with 1 = token, 0 = padding (left padding
        for generation; bool or numbers, any other value is refused), covering the cached tokens too when
        ``cache`` is given."""
        b, n = check_ids(input_ids, self.config.vocab_size)
        past = cache[0].length if cache else 0
        if attention_mask is not None:
            attention_mask = check_attention_mask(attention_mask)  # (B, N_total) bool; a bool mask is not read
            if tuple(attention_mask.shape) != (b, past + n):
                raise ValueError(f"attention_mask must be (B, cached + new tokens) = {(b, past + n)} (1 = token, "
                                 f"0 = padding), got {tuple(attention_mask.shape)}")
        if self.position_embedding is not None and past + n > self.config.max_seq_len:
            raise ValueError(f"{past + n} tokens exceed GPTConfig.max_seq_len={self.config.max_seq_len}, the "
                             f"length of the learned position table")
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)[:, -n:] if attention_mask is not None else \
                default_position_ids(b, n, past, input_ids.device)
        x = self.token_embedding(input_ids)  # (B, N, dim)
        if self.position_embedding is not None:
            x = x + self.position_embedding(position_ids)
        x = self.dropout(x)
        window = None if self.config.window is None else (self.config.window, 0)
        aux: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            x = layer(x, causal=True, window=window, cache=None if cache is None else cache[i],
                      position_ids=position_ids, key_padding=attention_mask, aux_losses=aux)
        x = self.final_norm(x)
        return GPTOutput(self.head(x), x, torch.stack(aux).sum() if aux else None)

    @torch.no_grad()
    def stream(self, input_ids: Tensor, max_new_tokens: int, *, attention_mask: Tensor | None = None,
               temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               eos_token_id: int | None = None, use_cache: bool = True, cache_kind: CacheKind | None = None,
               generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """Yield each step's new tokens (B,) as they are produced; sequences that reached
        ``eos_token_id`` keep yielding it. Options as in ``generate``."""
        check_sampling(temperature, top_k, top_p)
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        b, n = check_prompt(input_ids, self.config.vocab_size)
        total = n + max_new_tokens
        if self.config.positions == "learned" and total > self.config.max_seq_len:
            raise ValueError(f"prompt ({n}) + max_new_tokens ({max_new_tokens}) = {total} exceeds the learned "
                             f"position table's max_seq_len={self.config.max_seq_len}")
        # None without padding: no mask tensor is built or grown per step; bool, so checked once here
        mask = None if attention_mask is None else check_attention_mask(attention_mask)
        cache = None
        if use_cache:
            kind = cache_kind or ("ring" if self.config.window is not None else "static")
            cache = self.new_cache(kind, max_len=total)
        ids, done = input_ids, torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            logits = self(ids, mask, cache=cache).logits[:, -1]  # (B, V)
            token = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if eos_token_id is not None:
                token = torch.where(done, torch.full_like(token, eos_token_id), token)
                done |= token == eos_token_id
            yield token
            # with a cache the next forward takes only the new token; without, the whole sequence again
            ids = token[:, None] if use_cache else torch.cat((ids, token[:, None]), dim=1)
            if mask is not None:
                mask = torch.cat((mask, mask.new_ones(b, 1)), dim=1)
            if eos_token_id is not None and bool(done.all()):
                return

    def generate(self, input_ids: Tensor, max_new_tokens: int, *, attention_mask: Tensor | None = None,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 eos_token_id: int | None = None, use_cache: bool = True, cache_kind: CacheKind | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Extend ``input_ids`` (B, N >= 1) by up to ``max_new_tokens``: greedy for temperature 0 (default),
        otherwise sampled (``top_k``, ``top_p``; seeded by ``generator``; any finite temperature > 0, however
        small: see ``next_token``). Stops early once every sequence has produced ``eos_token_id``; finished
        sequences are padded with it. Left-pad batched prompts and pass ``attention_mask`` (1 = token).
        ``cache_kind``: "static" (default; preallocated for prompt + max_new_tokens), "growing", or "ring" (default
        for sliding-window models). Returns (B, N + generated)."""
        return extend(input_ids, self.stream(input_ids, max_new_tokens, attention_mask=attention_mask,
                                             temperature=temperature, top_k=top_k, top_p=top_p,
                                             eos_token_id=eos_token_id, use_cache=use_cache, cache_kind=cache_kind,
                                             generator=generator))


__all__ = ["GPT", "GPTConfig", "GPTOutput"]
