"""GPT: a decoder-only language model (Radford et al. 2019) and the Llama family's layout, with the modern options
in typed sub-configs (attention, feed-forward, norm, mixture of experts): RoPE (with its context-extension
scalings) or ALiBi instead of learned positions, grouped-query attention, RMSNorm (Gemma's 1 + weight form),
SwiGLU/GeGLU, per-layer sliding windows, soft-capping, q/k norms, sandwich norms, mixture-of-experts layers.
Generation with a KV cache, greedy or sampled.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ..functional.checks import check_int, is_positive_finite
from ..nn.activations import Activation, check_activation
from ..nn.attention import MultiHeadAttention
from ..nn.cache import CacheKind, KVCache, make_cache
from ..nn.layers import Block, FeedForward, dropped
from ..nn.linear import Linear
from ..nn.moe import MoE, check_routing
from ..nn.norms import NormConfig
from ..nn.positions import (
    ALiBiPositions,
    LearnedPositions,
    RopeScaling,
    RotaryEmbedding,
    default_position_ids,
    position_ids_from_mask,
)
from .base import (Config, Model, check_attention_mask, check_ids, init_weights, require_dropout, require_kernel,
                   require_positive, require_positive_float, sub_config)
from .heads import TaskConfig, TaskHead, task_config, task_loss
from .sampling import check_prompt, check_sampling, extend, next_token


@dataclass
class RopeConfig:
    """Rotary positions (``GPTConfig.positions == "rope"``).

    Args:
        base: the frequency base θ.
        scaling: a context-extension scheme (:class:`~attnkit.nn.positions.RopeScaling`: linear, dynamic NTK,
            YaRN, Llama 3, LongRoPE), or None.
        fraction: the share of each head's features that rotate (partial rotary, e.g. 0.5); the rest pass
            through unchanged.
    """

    base: float = 10000.0
    scaling: RopeScaling | None = None
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.scaling is not None:
            self.scaling = sub_config(RopeScaling, self.scaling, "RopeConfig.scaling")
        if not is_positive_finite(self.base):
            raise ValueError(f"RopeConfig.base must be > 0 and finite, got {self.base!r}")
        if not (isinstance(self.fraction, (int, float)) and 0.0 < self.fraction <= 1.0):
            raise ValueError(f"RopeConfig.fraction must be in (0, 1], got {self.fraction!r}")

    def rotary_dim(self, head_dim: int) -> int:
        """How many features of a ``head_dim``-wide head rotate (as transformers rounds: down)."""
        return int(head_dim * self.fraction)

    def make(self, head_dim: int) -> RotaryEmbedding:
        return RotaryEmbedding(head_dim, self.base, self.scaling, rotary_dim=self.rotary_dim(head_dim))


@dataclass
class AttentionConfig:
    """The attention of every :class:`GPT` layer.

    Args:
        num_heads: query heads.
        num_kv_heads: key/value heads (fewer = grouped-query attention; 1 = multi-query); None = num_heads.
        head_dim: each head's size; None = dim // num_heads (which must then divide).
        bias: biases on the q, k, v projections; out_bias: on the output projection (None = ``bias``).
        qk_norm: RMS-normalize each query and key head (Qwen 3, Gemma 3), with the model's norm settings.
        rope: the rotary positions (used when ``GPTConfig.positions == "rope"``).
        local_rope: the rotary positions of the windowed layers when they differ (Gemma 3); None = ``rope``.
        window: sliding window: each token sees itself and the ``window`` tokens before it; None = no window.
        window_layers: the layers that use ``window`` (Gemma's alternating local and global layers, Qwen 2's
            ``max_window_layers``); None = every layer.
        softcap: logits -> softcap · tanh(logits / softcap) (Gemma 2); None = off.
        scale: the logit scale; None = 1 / sqrt(head_dim) (Gemma: query_pre_attn_scalar ** -0.5).
    """

    num_heads: int = 12
    num_kv_heads: int | None = None
    head_dim: int | None = None
    bias: bool = True
    out_bias: bool | None = None
    qk_norm: bool = False
    rope: RopeConfig = field(default_factory=RopeConfig)
    local_rope: RopeConfig | None = None
    window: int | None = None
    window_layers: tuple[int, ...] | None = None
    softcap: float | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        self.rope = sub_config(RopeConfig, self.rope, "AttentionConfig.rope")
        if self.local_rope is not None:
            self.local_rope = sub_config(RopeConfig, self.local_rope, "AttentionConfig.local_rope")
        require_positive(self, "num_heads")
        for name in ("num_kv_heads", "head_dim", "window"):
            if getattr(self, name) is not None:
                require_positive(self, name)
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"AttentionConfig.num_kv_heads={self.num_kv_heads} must divide "
                             f"num_heads={self.num_heads}")
        if self.window_layers is not None:
            self.window_layers = tuple(self.window_layers)
        for name in ("softcap", "scale"):
            if getattr(self, name) is not None:
                require_positive_float(self, name)

    def windowed(self, layer: int) -> bool:
        """Whether ``layer`` attends through the sliding window."""
        return self.window is not None and (self.window_layers is None or layer in self.window_layers)


@dataclass
class FeedForwardConfig:
    """The feed-forward of every :class:`GPT` layer (see ``attnkit.nn.FeedForward``).

    Args:
        hidden: inner width; None = 4 * dim.
        activation: "gelu_tanh" (GPT-2), "gelu", "relu", "silu", or gated "swiglu" (Llama), "geglu",
            "geglu_tanh" (Gemma).
        bias: biases on the projections.
    """

    hidden: int | None = None
    activation: Activation = "gelu_tanh"
    bias: bool = True

    def __post_init__(self) -> None:
        if self.hidden is not None:
            require_positive(self, "hidden")
        check_activation(self.activation)


@dataclass
class MoEConfig:
    """Mixture-of-experts feed-forwards (``attnkit.nn.MoE``) in the layers ``layers``."""

    layers: tuple[int, ...] = ()
    num_experts: int = 8
    top_k: int = 2  # experts each token is routed to
    capacity_factor: float | None = 1.25  # expert capacity while training; None = unlimited

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        check_routing(self.num_experts, self.top_k, self.capacity_factor,
                      names=("MoEConfig.num_experts", "MoEConfig.top_k", "MoEConfig.capacity_factor"))


@dataclass
class GPTConfig(Config):
    """Configuration of :class:`GPT`; defaults are GPT-2 small's. The parts of each layer are typed
    sub-configs (a dict of their fields is accepted too, and presets take them as overrides):

        >>> GPTConfig(dim=256, attention=AttentionConfig(num_heads=8, num_kv_heads=2), positions="rope",
        ...           ffn=FeedForwardConfig(hidden=688, activation="swiglu", bias=False), norm=NormConfig("rms"))
        >>> GPTConfig.preset("llama-tiny", attention={"window": 128})    # merged into the preset's attention
    """

    vocab_size: int = 50257
    max_seq_len: int = 1024  # longest input; the learned position table's length
    dim: int = 768
    num_layers: int = 12
    positions: Literal["learned", "rope", "alibi"] = "learned"
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    ffn: FeedForwardConfig = field(default_factory=FeedForwardConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    moe: MoEConfig | None = None
    tie_embeddings: bool = True  # the output head shares the token embedding
    embedding_scale: float | None = None  # token embeddings are multiplied by it (Gemma: sqrt(dim))
    logit_softcap: float | None = None  # final logits -> cap · tanh(logits / cap) (Gemma 2)
    dropout: float = 0.0  # on embeddings, attention probabilities and residual branches
    kernel: str = "auto"  # handed to every attention layer unchanged
    # a sequence-classification head in place of the LM head (attnkit.models.heads; transformers'
    # *ForSequenceClassification): logits (B, num_labels) at each row's last token
    task: TaskConfig | None = None

    PRESETS = {
        "gpt2-small": dict(dim=768, num_layers=12, attention=dict(num_heads=12)),
        "gpt2-medium": dict(dim=1024, num_layers=24, attention=dict(num_heads=16)),
        "gpt2-large": dict(dim=1280, num_layers=36, attention=dict(num_heads=20)),
        "nano": dict(vocab_size=256, max_seq_len=256, dim=128, num_layers=4, attention=dict(num_heads=4)),
        # a Llama-style layout at a small size: RoPE, GQA, RMSNorm, SwiGLU, no biases, untied head
        "llama-tiny": dict(vocab_size=32000, max_seq_len=2048, dim=256, num_layers=4, positions="rope",
                           attention=dict(num_heads=8, num_kv_heads=2, bias=False),
                           ffn=dict(hidden=688, activation="swiglu", bias=False), norm=dict(kind="rms", eps=1e-6),
                           tie_embeddings=False),
    }

    def __post_init__(self) -> None:
        self.attention = sub_config(AttentionConfig, self.attention, "GPTConfig.attention")
        self.ffn = sub_config(FeedForwardConfig, self.ffn, "GPTConfig.ffn")
        self.norm = sub_config(NormConfig, self.norm, "GPTConfig.norm")
        if self.moe is not None:
            self.moe = sub_config(MoEConfig, self.moe, "GPTConfig.moe")
        require_positive(self, "vocab_size", "max_seq_len", "dim", "num_layers")
        require_dropout(self, "dropout")
        require_kernel(self)
        if self.positions not in ("learned", "rope", "alibi"):
            raise ValueError(f"GPTConfig.positions must be 'learned', 'rope' or 'alibi', got {self.positions!r}")
        a = self.attention
        if a.head_dim is None and self.dim % a.num_heads:
            raise ValueError(f"GPTConfig.attention.num_heads={a.num_heads} must divide dim={self.dim} "
                             f"(or set attention.head_dim)")
        if self.positions == "rope":
            for rope in (a.rope, a.local_rope):
                if rope is not None and rope.rotary_dim(self.head_dim) % 2:
                    raise ValueError(f"GPTConfig: RoPE rotates pairs, so the rotated part of each head "
                                     f"({rope.rotary_dim(self.head_dim)} of head_dim={self.head_dim}) must be even")
        layers = {"attention.window_layers": a.window_layers or (),
                  "moe.layers": self.moe.layers if self.moe is not None else ()}
        for name, indices in layers.items():
            bad = [i for i in indices if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"GPTConfig.{name} {bad} are not layer indices 0..{self.num_layers - 1}")
        for name in ("embedding_scale", "logit_softcap"):
            if getattr(self, name) is not None:
                require_positive_float(self, name)
        self.task = task_config(self.task, "GPTConfig", self.dropout, "last_token")
        if self.task is not None and (self.task.kind, self.task.pooling) != ("sequence_classification", "last_token"):
            raise ValueError(f"GPTConfig.task: a GPT takes a sequence-classification head at the last token "
                             f"(pooling='last_token'), got kind={self.task.kind!r}, pooling={self.task.pooling!r}")

    @property
    def head_dim(self) -> int:
        """The size of each attention head."""
        return self.attention.head_dim or self.dim // self.attention.num_heads


@dataclass
class GPTOutput:
    """What :meth:`GPT.forward` returns."""

    logits: Tensor  # (B, N, vocab_size); with config.task: (B, num_labels), each row's class logits
    last_hidden_state: Tensor  # (B, N, dim), after the final norm
    aux_loss: Tensor | None  # the MoE layers' load-balancing loss, summed; None without MoE
    loss: Tensor | None = None  # config.task's loss against forward's labels; None without labels


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
        self.token_embedding = nn.Embedding(c.vocab_size, c.dim)
        self.position_embedding = LearnedPositions(c.max_seq_len, c.dim) if c.positions == "learned" else None
        self.dropout = nn.Dropout(c.dropout)
        # one RotaryEmbedding shared by the layers it serves: its angle table (and dynamic scaling's state) is one
        rope = c.attention.rope.make(c.head_dim) if c.positions == "rope" else None
        local = c.attention.local_rope
        local_rope = local.make(c.head_dim) if rope is not None and local is not None else rope
        self.layers = nn.ModuleList(self._block(i, local_rope if c.attention.windowed(i) else rope)
                                    for i in range(c.num_layers))
        self.final_norm = c.norm.make(c.dim)
        # the LM head; with config.task a classification head takes its place (no vocab-sized matrix built)
        self.head: Linear | None = Linear(c.dim, c.vocab_size, bias=False) if c.task is None else None
        if self.head is not None and c.tie_embeddings:
            self.head.weight = self.token_embedding.weight
        self.task_head = TaskHead(c.task, c.dim) if c.task is not None else None
        self.apply(init_weights)

    def _block(self, index: int, rope: RotaryEmbedding | None) -> Block:
        c, a, f = self.config, self.config.attention, self.config.ffn
        positions = ALiBiPositions(a.num_heads) if c.positions == "alibi" else rope
        qk_norm = (NormConfig("rms", c.norm.eps, unit_offset=c.norm.unit_offset) if c.norm.kind == "rms"
                   else NormConfig("rms", 1e-6)) if a.qk_norm else False
        attn = MultiHeadAttention(c.dim, a.num_heads, num_kv_heads=a.num_kv_heads, head_dim=a.head_dim, bias=a.bias,
                                  out_bias=a.out_bias, dropout=c.dropout, qk_norm=qk_norm, positions=positions,
                                  kernel=c.kernel, scale=a.scale, softcap=a.softcap)
        hidden = f.hidden or 4 * c.dim
        moe = c.moe
        ffn: nn.Module = MoE(c.dim, hidden, moe.num_experts, moe.top_k, capacity_factor=moe.capacity_factor,
                             activation=f.activation, bias=f.bias) if moe is not None and index in moe.layers else \
            FeedForward(c.dim, hidden, activation=f.activation, bias=f.bias)
        def post() -> nn.Module | None:  # Gemma's norm of each branch's output
            return c.norm.make(c.dim) if c.norm.sandwich else None

        return Block(attn, ffn, c.norm.make(c.dim), c.norm.make(c.dim), post_attn_norm=post(),
                     post_ffn_norm=post(), dropout=c.dropout,
                     window=(a.window, 0) if a.window is not None and a.windowed(index) else None)

    def new_cache(self, kind: CacheKind = "static", *,
                  max_len: int | None = None) -> list[KVCache]:
        """One KV cache per layer. ``"static"`` holds ``max_len`` tokens (default ``max_seq_len``);
        ``"ring"`` needs ``config.attention.window`` and holds that many past tokens in the windowed layers
        (the others get a static cache)."""
        window = self.config.attention.window
        if kind == "ring" and window is None:
            raise ValueError("a ring cache serves sliding-window models; this GPTConfig has attention.window=None")
        max_len = self.config.max_seq_len if max_len is None else max_len
        return [make_cache("static" if kind == "ring" and not self.config.attention.windowed(i) else kind,
                           max_len=max_len, size=window) for i in range(len(self.layers))]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                cache: list[KVCache] | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None) -> GPTOutput:
        """input_ids (B, N) long; ``attention_mask`` (B, N_total) with 1 = token, 0 = padding (left padding
        for generation; bool or numbers, any other value is refused), covering the cached tokens too when
        ``cache`` is given. ``labels``: the targets of ``config.task`` (see ``attnkit.models.heads``) for
        ``loss``."""
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
        if self.config.embedding_scale is not None:  # rounded to x's dtype first, as Gemma does
            x = x * torch.tensor(self.config.embedding_scale, dtype=x.dtype)
        if self.position_embedding is not None:
            x = x + self.position_embedding(position_ids)
        x = dropped(self.dropout, x)
        aux: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            x = layer(x, causal=True, cache=None if cache is None else cache[i], position_ids=position_ids,
                      key_padding=attention_mask, aux_losses=aux)
        x = self.final_norm(x)
        if self.task_head is not None or labels is not None:
            return self._classified(x, input_ids, labels, torch.stack(aux).sum() if aux else None)
        assert self.head is not None  # built whenever there is no task head
        logits = self.head(x)
        cap = self.config.logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return GPTOutput(logits, x, torch.stack(aux).sum() if aux else None)

    def _classified(self, x: Tensor, input_ids: Tensor, labels: Tensor | None, aux_loss: Tensor | None) -> GPTOutput:
        """config.task's logits (B, num_labels) at each row's last token, and their loss against ``labels``."""
        if self.task_head is None:
            raise ValueError("labels need GPTConfig.task (a classification head); a language model's loss is not "
                             "computed here")
        logits = self.task_head(x, input_ids=input_ids)
        loss = task_loss(self.task_head.config, logits, labels) if labels is not None else None
        return GPTOutput(logits, x, aux_loss, loss)

    def _length_dependent_rope(self) -> bool:
        """Whether a key's rotation depends on the sequence's length (dynamic NTK, LongRoPE): keys cached for one
        prompt are then not those of a longer one, so a cache cannot be carried over."""
        a = self.config.attention
        return self.config.positions == "rope" and any(
            rope is not None and rope.scaling is not None and rope.scaling.kind in ("dynamic", "longrope")
            for rope in (a.rope, a.local_rope))

    def _rope_switch(self) -> int | None:
        """The trained context of a LongRoPE model, past which its frequencies change; None for any other."""
        a = self.config.attention
        for rope in (a.rope, a.local_rope):
            if self.config.positions == "rope" and rope is not None and rope.scaling is not None \
                    and rope.scaling.kind == "longrope":
                return rope.scaling.original_max_len
        return None

    @torch.no_grad()
    def stream(self, input_ids: Tensor, max_new_tokens: int, *, attention_mask: Tensor | None = None,
               temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               eos_token_id: int | None = None, use_cache: bool = True, cache_kind: CacheKind | None = None,
               generator: torch.Generator | None = None, cache: list[KVCache] | None = None) -> Iterator[Tensor]:
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
        past = 0  # the prompt's tokens the caller's cache holds already
        if cache is not None:
            past = self._check_reused(cache, n, use_cache)
            if past and self._length_dependent_rope():  # its keys were rotated for another length: encode anew
                for layer_cache in cache:
                    layer_cache.reset()
                past = 0
        elif use_cache:
            kind = cache_kind or ("ring" if self.config.attention.window is not None else "static")
            cache = self.new_cache(kind, max_len=total)
        ids, done = input_ids[:, past:], torch.zeros(b, dtype=torch.bool, device=input_ids.device)
        switch = self._rope_switch()
        history = input_ids if switch is not None and cache is not None else None  # every token so far
        for _ in range(max_new_tokens):
            if switch is not None and history is not None and cache is not None \
                    and 0 < cache[0].length <= switch < history.shape[1]:
                # LongRoPE changes every frequency once the sequence outgrows the trained context: the cached keys
                # were rotated with the short factors, so the whole sequence is encoded again (as transformers'
                # Phi-3 does), and the cache holds long-factor keys from then on
                for layer_cache in cache:
                    layer_cache.reset()
                ids, history = history, None  # encoded once: the cache holds long-factor keys from now on
            logits = self(ids, mask, cache=cache).logits[:, -1]  # (B, V)
            token = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if eos_token_id is not None:
                token = torch.where(done, torch.full_like(token, eos_token_id), token)
                done |= token == eos_token_id
            yield token
            # with a cache the next forward takes only the new token; without, the whole sequence again
            ids = token[:, None] if use_cache else torch.cat((ids, token[:, None]), dim=1)
            if history is not None and cache is not None and switch is not None:  # kept only until the switch
                history = None if cache[0].length > switch else torch.cat((history, token[:, None]), dim=1)
            if mask is not None:
                mask = torch.cat((mask, mask.new_ones(b, 1)), dim=1)
            if eos_token_id is not None and bool(done.all()):
                return

    def _check_reused(self, cache: list[KVCache], n: int, use_cache: bool) -> int:
        """How many of the prompt's ``n`` tokens the caller's ``cache`` holds already (see ``generate``)."""
        if not use_cache:
            raise ValueError("cache= holds earlier tokens' keys and values: it needs use_cache=True")
        if not isinstance(cache, list) or len(cache) != len(self.layers):
            raise ValueError(f"cache must be a list of {len(self.layers)} layer caches (GPT.new_cache), got "
                             f"{len(cache) if isinstance(cache, list) else type(cache).__name__}")
        lengths = {c.length for c in cache}
        if len(lengths) != 1:
            raise ValueError(f"the layer caches hold different numbers of tokens ({sorted(lengths)}): truncate them "
                             f"to the shortest first")
        past = lengths.pop()
        if past >= n:
            raise ValueError(f"cache holds {past} tokens, so input_ids must extend them by at least one; got {n} "
                             f"tokens (truncate the cache to {n - 1} to run the last again)")
        return past

    def generate(self, input_ids: Tensor, max_new_tokens: int, *, attention_mask: Tensor | None = None,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 eos_token_id: int | None = None, use_cache: bool = True, cache_kind: CacheKind | None = None,
                 generator: torch.Generator | None = None, cache: list[KVCache] | None = None) -> Tensor:
        """Extend ``input_ids`` (B, N >= 1) by up to ``max_new_tokens``: greedy for temperature 0 (default),
        otherwise sampled (``top_k``, ``top_p``; seeded by ``generator``; any finite temperature > 0, however
        small: see ``next_token``). Stops early once every sequence has produced ``eos_token_id``; finished
        sequences are padded with it. Left-pad batched prompts and pass ``attention_mask`` (1 = token).
        ``cache_kind``: "static" (default; preallocated for prompt + max_new_tokens), "growing", or "ring" (default
        for sliding-window models). ``cache``: the layers' caches of an earlier call instead of new ones (e.g.
        ``new_cache("growing")``), holding the keys and values of the first ``cache[0].length`` tokens of
        ``input_ids`` (a conversation's earlier turns; the caller vouches that they are these tokens, ``truncate``
        keeps a prefix): only the rest is encoded (all of it for a model whose rotary frequencies depend on the
        sequence's length, dynamic NTK or LongRoPE: its cached keys were rotated for another length), and the caches
        are updated in place, holding afterwards every token fed to the model (all but the last one returned).
        Returns (B, N + generated)."""
        return extend(input_ids, self.stream(input_ids, max_new_tokens, attention_mask=attention_mask,
                                             temperature=temperature, top_k=top_k, top_p=top_p,
                                             eos_token_id=eos_token_id, use_cache=use_cache, cache_kind=cache_kind,
                                             generator=generator, cache=cache))


__all__ = ["GPT", "GPTConfig", "GPTOutput", "AttentionConfig", "FeedForwardConfig", "MoEConfig", "RopeConfig"]
