"""HybridLM: a language model whose layers are attention or selective state-space (Mamba) mixers, in
the order a layer pattern gives (Jamba, Lieber et al. 2024; Zamba; Samba). Each layer is a pre-norm
mixer followed by a pre-norm feed-forward. Decoding keeps a KV cache for attention layers and a
recurrent state for SSM layers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..functional.checks import check_int
from ..nn.cache import StaticCache
from ..nn.layers import Activation, EncoderLayer, FeedForward
from ..nn.linear import Linear
from ..nn.norms import NormKind, make_norm
from ..nn.positions import RotaryEmbedding, default_position_ids
from ..nn.ssm import SelectiveSSM, SSMState
from .base import (Config, Model, check_ids, init_weights, require_heads, require_kernel, require_positive,
                   require_positive_float)
from .sampling import check_prompt, check_sampling, extend, next_token


@dataclass
class HybridConfig(Config):
    """Configuration of :class:`HybridLM`."""

    vocab_size: int = 32000
    dim: int = 512
    pattern: str = "MMAM" * 2  # one letter per layer: A = attention, M = selective SSM (Mamba)
    num_heads: int = 8
    num_kv_heads: int | None = None
    hidden: int | None = None  # feed-forward width; None = 4 * dim
    state_dim: int = 16  # SSM state size per channel
    expand: int = 2  # SSM inner width = expand * dim
    activation: Activation = "swiglu"
    norm: NormKind = "rms"
    norm_eps: float = 1e-6
    rope_base: float = 10000.0  # attention layers use RoPE
    tie_embeddings: bool = True
    kernel: str = "auto"

    PRESETS = {
        "jamba-tiny": dict(vocab_size=256, dim=128, pattern="MMMA" * 2, num_heads=4, num_kv_heads=2),
        "tiny": dict(vocab_size=256, dim=64, pattern="MAM", num_heads=4, state_dim=8),
    }

    def __post_init__(self) -> None:
        require_positive(self, "vocab_size", "dim", "num_heads", "state_dim", "expand")
        require_heads(self, self.dim, self.num_heads, self.num_kv_heads, rope=True)
        require_positive_float(self, "norm_eps", "rope_base")
        require_kernel(self)
        if not self.pattern or set(self.pattern) - {"A", "M"}:
            raise ValueError(f"HybridConfig.pattern must be a non-empty string of 'A' (attention) and "
                             f"'M' (SSM) layers, got {self.pattern!r}")


class SSMLayer(nn.Module):
    """Pre-norm SSM mixer then pre-norm feed-forward, each residual."""

    def __init__(self, dim: int, hidden: int, state_dim: int, expand: int, activation: Activation,
                 norm: NormKind, eps: float):
        super().__init__()
        self.mixer_norm, self.ffn_norm = make_norm(norm, dim, eps), make_norm(norm, dim, eps)
        self.mixer = SelectiveSSM(dim, state_dim, expand=expand)
        self.ffn = FeedForward(dim, hidden, activation=activation, bias=False)

    def forward(self, x: Tensor, state: SSMState | None = None) -> tuple[Tensor, SSMState | None]:
        """x (B, N, dim); with a ``state`` (decoding) the block continues from it and returns the new one."""
        h = self.mixer_norm(x)  # (B, N, dim)
        if state is None:
            y = self.mixer(h)
        else:
            y, state = self.mixer.prefill(h, state)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), state


LayerState = StaticCache | SSMState | None  # an attention layer's KV cache; an SSM layer's state (None: not yet)


@dataclass
class HybridOutput:
    """What :meth:`HybridLM.forward` returns."""

    logits: Tensor  # (B, N, vocab_size)
    last_hidden_state: Tensor  # (B, N, dim)


class HybridLM(Model):
    """Attention and SSM layers by pattern.

        >>> model = HybridLM(HybridConfig.preset("tiny"))            # layers M, A, M
        >>> model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5)
    """

    config: HybridConfig  # Model.config, typed as this model's config

    def __init__(self, config: HybridConfig):
        super().__init__()
        self.config = c = config
        hidden = c.hidden or 4 * c.dim
        self.token_embedding = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(
            EncoderLayer(c.dim, c.num_heads, hidden, num_kv_heads=c.num_kv_heads, activation=c.activation,
                         norm=c.norm, eps=c.norm_eps, bias=False, kernel=c.kernel,
                         positions=RotaryEmbedding(c.dim // c.num_heads, c.rope_base))
            if kind == "A" else SSMLayer(c.dim, hidden, c.state_dim, c.expand, c.activation, c.norm, c.norm_eps)
            for kind in c.pattern)
        self.final_norm = make_norm(c.norm, c.dim, c.norm_eps)
        self.head = Linear(c.dim, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.head.weight = self.token_embedding.weight
        mamba = {id(m) for layer in self.layers if isinstance(layer, SSMLayer) for m in layer.mixer.modules()}
        for module in self.modules():
            if id(module) not in mamba:  # the SSM keeps Mamba's own initialization
                init_weights(module)

    def new_state(self, max_len: int) -> list[LayerState]:
        """Decoding state per layer: a KV cache of ``max_len`` tokens for attention layers, an SSM state
        (created at the first step) for SSM layers."""
        return [StaticCache(max_len) if kind == "A" else None for kind in self.config.pattern]

    def forward(self, input_ids: Tensor, *, state: list[LayerState] | None = None) -> HybridOutput:
        """input_ids (B, N). With ``state`` (from ``new_state``), continue a decoding stream and update it."""
        b, n = check_ids(input_ids, self.config.vocab_size)
        past = 0 if state is None else next((s.length for s in state if isinstance(s, StaticCache)), 0)
        position_ids = default_position_ids(b, n, past, input_ids.device)
        x = self.token_embedding(input_ids)  # (B, N, dim)
        for i, layer in enumerate(self.layers):
            if isinstance(layer, SSMLayer):
                layer_state = None
                if state is not None:
                    layer_state = state[i] or layer.mixer.initial_state(b, dtype=x.dtype, device=x.device)
                x, layer_state = layer(x, layer_state)
                if state is not None:
                    state[i] = layer_state
            else:
                x = layer(x, causal=True, cache=None if state is None else state[i], position_ids=position_ids)
        x = self.final_norm(x)
        return HybridOutput(self.head(x), x)

    @torch.no_grad()
    def stream(self, input_ids: Tensor, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None) -> Iterator[Tensor]:
        """Yield each step's new tokens (B,). Prompts in a batch must have equal lengths (an SSM has no
        padding mask)."""
        check_sampling(temperature, top_k, top_p)
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        check_prompt(input_ids, self.config.vocab_size)
        state = self.new_state(input_ids.shape[1] + max_new_tokens)
        step = input_ids
        for _ in range(max_new_tokens):
            logits = self(step, state=state).logits[:, -1]  # (B, V)
            token = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            yield token
            step = token[:, None]

    def generate(self, input_ids: Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Extend ``input_ids`` (B, N) by ``max_new_tokens``; greedy unless ``temperature`` > 0."""
        return extend(input_ids, self.stream(input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                             top_p=top_p, generator=generator))


__all__ = ["HybridLM", "HybridConfig", "HybridOutput", "SSMLayer"]
