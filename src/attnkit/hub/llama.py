"""The Llama family of decoders as :class:`~attnkit.models.GPT`: Llama (SmolLM2, TinyLlama, Llama 2/3), Mistral,
Qwen 2 and 3, Gemma 2 and 3 (text), Phi-3. They share one layout — pre-norm blocks of RMSNorm, rotary
attention with grouped-query heads and a gated feed-forward — and differ in a few switches, which
:class:`Family` lists; everything else is the same code for all of them.

    config.json                          GPTConfig
    hidden_size, num_hidden_layers       dim, num_layers
    num_attention_heads                  attention.num_heads
    num_key_value_heads, head_dim        attention.num_kv_heads, attention.head_dim
    rope_parameters (or rope_theta +     attention.rope (base, scaling, fraction); Gemma 3's sliding layers:
      rope_scaling, partial_rotary_...)    attention.local_rope
    sliding_window, layer_types          attention.window (= sliding_window - 1: transformers counts the token
      (or use_sliding_window +             itself), attention.window_layers
      max_window_layers, the pattern)
    attention_bias                       attention.bias (Qwen 2: q, k, v biased, o not: out_bias=False)
    query_pre_attn_scalar                attention.scale = query_pre_attn_scalar ** -0.5 (Gemma)
    attn_logit_softcapping               attention.softcap; final_logit_softcapping: logit_softcap (Gemma 2)
    intermediate_size, hidden_act        ffn.hidden, ffn.activation (gated: silu -> swiglu, gelu_pytorch_tanh ->
      (Gemma: hidden_activation)           geglu_tanh), mlp_bias: ffn.bias
    rms_norm_eps                         norm = NormConfig("rms", eps); Gemma: unit_offset, sandwich
    tie_word_embeddings                  tie_embeddings; Gemma: embedding_scale = sqrt(hidden_size)

    model.layers.{i}.                    layers.{i}.
      self_attn.{q,k,v}_proj               attn.{q,k,v}_proj (Phi-3: one fused qkv_proj)
      self_attn.o_proj                     attn.out_proj
      self_attn.{q,k}_norm                 attn.{q,k}_norm
      mlp.{gate,up,down}_proj              ffn.{gate,up,down} (Phi-3: one fused gate_up_proj)
      input_layernorm                      attn_norm
      post_attention_layernorm             ffn_norm (Gemma: post_attn_norm)
      pre/post_feedforward_layernorm       Gemma: ffn_norm, post_ffn_norm
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..models.gpt import AttentionConfig, FeedForwardConfig, GPTConfig, RopeConfig
from ..nn.norms import NormConfig
from .errors import CheckpointError
from .rope import FULL, SLIDING, rope_from_hf, rope_to_hf
from .rules import Layout, Rule, causal_lm_output, fused, rename

# transformers' hidden_act of the gated feed-forward -> attnkit's gated activation
_GATED = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu_tanh",
          "gelu_new": "geglu_tanh"}
_ACT_NAMES = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_pytorch_tanh"}


@dataclass(frozen=True)
class Family:
    """What sets one model_type apart from Llama."""

    model_type: str
    hf_class: str  # transformers' causal-LM class, written to config.json's "architectures"
    windows: str = "none"  # "none", "all" (Mistral, Phi-3), "max_window_layers" (Qwen), "pattern" (Gemma)
    pattern: int = 0  # Gemma: every pattern-th layer is global, the others sliding
    qkv_bias_only: bool = False  # Qwen 2: q, k, v projections biased, o_proj not
    qk_norm: bool = False  # Qwen 3, Gemma 3
    gemma: bool = False  # 1 + weight norms, sandwich norms, sqrt(dim) embedding scale, query_pre_attn_scalar
    local_rope: bool = False  # Gemma 3: the sliding layers have RoPE parameters of their own
    fused: bool = False  # Phi-3: qkv_proj and gate_up_proj
    tie_default: bool = False  # tie_word_embeddings when config.json does not say

    @property
    def act_key(self) -> str:
        return "hidden_activation" if self.gemma else "hidden_act"

    @property
    def classifier_class(self) -> str:
        """transformers' sequence-classification class (``score`` on the last token; Gemma 3's text-only one)."""
        name = self.hf_class.removesuffix("ForCausalLM")
        return f"{name}{'Text' if self.model_type == 'gemma3_text' else ''}ForSequenceClassification"


FAMILIES = {f.model_type: f for f in (
    Family("llama", "LlamaForCausalLM"),
    Family("mistral", "MistralForCausalLM", windows="all"),
    Family("qwen2", "Qwen2ForCausalLM", windows="max_window_layers", qkv_bias_only=True),
    Family("qwen3", "Qwen3ForCausalLM", windows="max_window_layers", qk_norm=True),
    Family("gemma2", "Gemma2ForCausalLM", windows="pattern", pattern=2, gemma=True, tie_default=True),
    Family("gemma3_text", "Gemma3ForCausalLM", windows="pattern", pattern=6, gemma=True, qk_norm=True,
           local_rope=True, tie_default=True),
    Family("phi3", "Phi3ForCausalLM", windows="all", fused=True),
)}
LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _layer_types(hf: dict[str, Any], family: Family, num_layers: int) -> list[str]:
    """Which layers slide, as transformers decides: config.json's layer_types when written, else the family's
    rule."""
    if isinstance(hf.get("layer_types"), list):
        return list(hf["layer_types"])
    if family.windows == "all":
        return [SLIDING] * num_layers
    if family.windows == "max_window_layers":
        first = hf.get("max_window_layers", 28)
        return [SLIDING if i >= first else FULL for i in range(num_layers)]
    if family.windows == "pattern":
        pattern = hf.get("sliding_window_pattern", family.pattern)
        return [SLIDING if (i + 1) % pattern else FULL for i in range(num_layers)]
    return [FULL] * num_layers


def _sliding_window(hf: dict[str, Any], family: Family) -> int | None:
    """config.json's effective sliding window (Qwen's applies only with use_sliding_window)."""
    if family.windows == "none":
        return None
    if family.windows == "max_window_layers" and not hf.get("use_sliding_window", False):
        return None
    window = hf.get("sliding_window")
    return int(window) if window is not None else None


def _rope(hf: dict[str, Any], layer_type: str | None) -> RopeConfig:
    base, scaling, fraction = rope_from_hf(hf, layer_type=layer_type)
    return RopeConfig(base=base, scaling=scaling, fraction=fraction)


def config_from_hf(hf: dict[str, Any], names: set[str], kernel: str, source: str) -> GPTConfig:
    """The GPTConfig of a Llama-family config.json (the family is its model_type)."""
    family = FAMILIES[hf["model_type"]]
    problems = []
    act = hf.get(family.act_key, hf.get("hidden_act", "gelu_pytorch_tanh" if family.gemma else "silu"))
    activation = _GATED.get(act)
    if activation is None:
        problems.append(f"{family.act_key}={act!r} is not supported; supported: {', '.join(_GATED)}")
    if hf.get("use_bidirectional_attention"):
        problems.append("use_bidirectional_attention=true is not supported (attnkit decoders are causal)")
    if problems:
        raise CheckpointError(source, problems=problems)
    dim, heads, layers = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
    types = _layer_types(hf, family, layers)
    window = _sliding_window(hf, family)
    sliding = tuple(i for i, t in enumerate(types) if t == SLIDING) if window is not None else ()
    biased = bool(hf.get("attention_bias", False))
    head_dim = hf.get("head_dim")
    head_dim = None if head_dim == dim // heads else head_dim  # the default is left unsaid, as GPTConfig does
    attention = AttentionConfig(
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=head_dim,
        bias=True if family.qkv_bias_only else biased, out_bias=False if family.qkv_bias_only else None,
        qk_norm=family.qk_norm,
        rope=_rope(hf, FULL if family.local_rope else None),
        local_rope=_rope(hf, SLIDING) if family.local_rope else None,
        window=window - 1 if sliding and window is not None else None,
        window_layers=None if len(sliding) == layers else sliding or None,
        softcap=hf.get("attn_logit_softcapping") if family.gemma else None,
        scale=hf.get("query_pre_attn_scalar", 256) ** -0.5 if family.gemma else None)
    return GPTConfig(
        vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048), dim=dim, num_layers=layers,
        positions="rope", attention=attention,
        ffn=FeedForwardConfig(hidden=hf["intermediate_size"], activation=activation,  # type: ignore[arg-type]
                              bias=bool(hf.get("mlp_bias", False))),
        norm=NormConfig("rms", hf.get("rms_norm_eps", 1e-6), unit_offset=family.gemma, sandwich=family.gemma),
        tie_embeddings=hf.get("tie_word_embeddings", family.tie_default),
        embedding_scale=math.sqrt(dim) if family.gemma else None,
        logit_softcap=hf.get("final_logit_softcapping") if family.gemma else None,
        dropout=float(hf.get("attention_dropout", 0.0)), kernel=kernel)


def config_to_hf(config: GPTConfig, family: Family) -> dict[str, Any]:
    """``config`` as the family's config.json; what it cannot express is found by reading it back
    (``unsaved`` in architectures.py), so this writes the family's view without judging."""
    a, n = config.attention, config.num_layers
    sliding = [a.windowed(i) for i in range(n)]
    hf: dict[str, Any] = {
        "model_type": family.model_type, "vocab_size": config.vocab_size,
        "hidden_size": config.dim, "intermediate_size": config.ffn.hidden or 4 * config.dim, "num_hidden_layers": n,
        "num_attention_heads": a.num_heads, "num_key_value_heads": a.num_kv_heads or a.num_heads,
        "head_dim": config.head_dim, "max_position_embeddings": config.max_seq_len,
        family.act_key: _ACT_NAMES.get(config.ffn.activation, config.ffn.activation),
        "rms_norm_eps": config.norm.eps, "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": a.bias, "attention_dropout": config.dropout, "initializer_range": 0.02,
        # unknown here (save fills bos and eos from a tokenizer); said, so no family default (Phi-3's pad id
        # 32000) points outside a small vocabulary
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    }
    if family.model_type == "llama":
        hf["mlp_bias"] = config.ffn.bias
    if family.local_rope:
        local = a.local_rope or a.rope
        hf["rope_parameters"] = {FULL: _rope_parameters(a.rope), SLIDING: _rope_parameters(local)}
    else:
        hf.update(rope_to_hf(a.rope.base, a.rope.scaling, a.rope.fraction))
    window = a.window + 1 if a.window is not None else None
    if family.windows != "none":
        hf["sliding_window"] = window
    if family.windows == "max_window_layers":
        hf["use_sliding_window"] = window is not None
        hf["max_window_layers"] = sliding.index(True) if any(sliding) else n
    if family.windows in ("max_window_layers", "pattern"):
        hf["layer_types"] = [SLIDING if s and window is not None else FULL for s in sliding]
    if family.gemma:
        scalar = (a.scale or config.head_dim ** -0.5) ** -2
        hf["query_pre_attn_scalar"] = round(scalar) if math.isclose(scalar, round(scalar)) else scalar  # an int field
        hf["attn_logit_softcapping"] = a.softcap
        hf["final_logit_softcapping"] = config.logit_softcap
    return hf


def _rope_parameters(rope: RopeConfig) -> dict[str, Any]:
    """One layer type's entry of Gemma 3's per-layer-type rope_parameters."""
    return dict(rope_to_hf(rope.base, rope.scaling, rope.fraction)["rope_parameters"])


def layout(config: GPTConfig, family: Family) -> Layout:
    """The tensors of a ``<Family>ForCausalLM`` checkpoint and the GPT parameters they hold."""
    a, f = config.attention, config.ffn
    rules: list[Rule] = [rename("embed_tokens.weight", "token_embedding.weight"),
                         rename("norm.weight", "final_norm.weight")]
    qkv_bias, out_bias = a.bias, a.bias if a.out_bias is None else a.out_bias
    for i in range(config.num_layers):
        hf, ours = f"layers.{i}.", f"layers.{i}."
        attn, mlp = f"{hf}self_attn.", f"{hf}mlp."
        if family.fused:
            kv = (a.num_kv_heads or a.num_heads) * config.head_dim
            sizes = (a.num_heads * config.head_dim, kv, kv)
            rules.append(fused(f"{attn}qkv_proj.weight", tuple(f"{ours}attn.{p}_proj.weight" for p in "qkv"),
                               transpose=False, sizes=sizes))
            if qkv_bias:
                rules.append(fused(f"{attn}qkv_proj.bias", tuple(f"{ours}attn.{p}_proj.bias" for p in "qkv"),
                                   transpose=False, sizes=sizes))
            rules.append(fused(f"{mlp}gate_up_proj.weight", (f"{ours}ffn.gate.weight", f"{ours}ffn.up.weight"),
                               transpose=False))
        else:
            for p in "qkv":
                rules.append(rename(f"{attn}{p}_proj.weight", f"{ours}attn.{p}_proj.weight"))
                if qkv_bias:
                    rules.append(rename(f"{attn}{p}_proj.bias", f"{ours}attn.{p}_proj.bias"))
            rules += [rename(f"{mlp}gate_proj.weight", f"{ours}ffn.gate.weight"),
                      rename(f"{mlp}up_proj.weight", f"{ours}ffn.up.weight")]
            if f.bias:
                rules += [rename(f"{mlp}gate_proj.bias", f"{ours}ffn.gate.bias"),
                          rename(f"{mlp}up_proj.bias", f"{ours}ffn.up.bias")]
        rules.append(rename(f"{attn}o_proj.weight", f"{ours}attn.out_proj.weight"))
        if out_bias:
            rules.append(rename(f"{attn}o_proj.bias", f"{ours}attn.out_proj.bias"))
        rules.append(rename(f"{mlp}down_proj.weight", f"{ours}ffn.down.weight"))
        if f.bias:
            rules.append(rename(f"{mlp}down_proj.bias", f"{ours}ffn.down.bias"))
        if a.qk_norm:
            rules += [rename(f"{attn}{p}_norm.weight", f"{ours}attn.{p}_norm.weight") for p in "qk"]
        norms = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
        if config.norm.sandwich:
            norms = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attn_norm",
                     "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffn_norm"}
        rules += [rename(f"{hf}{theirs}.weight", f"{ours}{mine}.weight") for theirs, mine in norms.items()]
    # <Family>ForSequenceClassification's score in place of the LM head; older checkpoints stored rotary_emb's buffer
    output, skipped = causal_lm_output(task=config.task is not None, tied=config.tie_embeddings)
    rules += output
    skipped.append(r"(^|\.)rotary_emb\.inv_freq$")
    return Layout(rules, re.compile("|".join(skipped)), "model.", "model.")


__all__ = ["Family", "FAMILIES", "LAYER_INDEX", "config_from_hf", "config_to_hf", "layout"]
