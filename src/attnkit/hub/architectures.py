"""The Hugging Face architectures attnkit reads and writes: the BERT family (BERT, MiniLM, RoBERTa) as
:class:`~attnkit.models.BERT` and GPT-2 as :class:`~attnkit.models.GPT`. For each: the config.json fields
-> an attnkit config (rejecting values that would compute something else), the tensor :class:`Layout`,
and the way back.

    HF config.json (bert)             BERTConfig            HF config.json (gpt2)     GPTConfig
    vocab_size                        vocab_size            vocab_size                vocab_size
    hidden_size                       dim                   n_embd                    dim
    num_hidden_layers                 num_layers            n_layer                   num_layers
    num_attention_heads               num_heads             n_head                    num_heads
    intermediate_size                 hidden                n_inner (null = 4 dim)    hidden
    max_position_embeddings           max_seq_len           n_positions               max_seq_len
    type_vocab_size                   type_vocab_size       layer_norm_epsilon        norm_eps
    layer_norm_eps                    norm_eps              activation_function       activation
    hidden_dropout_prob               dropout                 "gelu_new" -> "gelu_tanh", "gelu" -> "gelu"
    pad_token_id                      pad_id                resid_pdrop               dropout
    hidden_act: only "gelu" (exact)                         tie_word_embeddings       tie_embeddings

RoBERTa is BERT with positions counted from padding_idx + 1: its position table loses its first
padding_idx + 1 rows (so inputs must be right-padded, as for BERT), and it is saved back as a BERT.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeAlias

from ..models.base import Model
from ..models.bert import BERT, BERTConfig
from ..models.gpt import GPT, AttentionConfig, FeedForwardConfig, GPTConfig
from ..nn.norms import NormConfig
from . import llama
from .errors import CheckpointError
from .rules import Layout, Rule, fused, offset_rows, rename, transposed

HubConfig: TypeAlias = BERTConfig | GPTConfig  # the configs of the models a checkpoint loads into and saves from

# --------------------------------------------------------------------------------------------------
# BERT family

_BERT_EMBEDDINGS = (("word_embeddings.weight", "word_embeddings.weight"),
                    ("token_type_embeddings.weight", "token_type_embeddings.weight"),
                    ("LayerNorm.weight", "embedding_norm.weight"), ("LayerNorm.bias", "embedding_norm.bias"))
_BERT_LAYER = (("attention.self.query", "attn.q_proj"), ("attention.self.key", "attn.k_proj"),
               ("attention.self.value", "attn.v_proj"), ("attention.output.dense", "attn.out_proj"),
               ("attention.output.LayerNorm", "attn_norm"), ("intermediate.dense", "ffn.up"),
               ("output.dense", "ffn.down"), ("output.LayerNorm", "ffn_norm"))
# masked-LM heads: BERT's cls.predictions.* and RoBERTa's lm_head.*; their decoder weight is the (tied) word
# embedding matrix and their decoder bias the same tensor as the head's own bias
_MLM_HEADS = {
    "bert": {"transform.dense": "mlm_head.dense", "transform.LayerNorm": "mlm_head.norm"},
    "roberta": {"dense": "mlm_head.dense", "layer_norm": "mlm_head.norm"},
}
_MLM_PREFIX = {"bert": "cls.predictions.", "roberta": "lm_head."}
_EXACT_GELU = ("gelu", "gelu_python")  # both are erf-based GELU in transformers
_BERT_LAYER_INDEX = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")


def _position_offset(family: str, pad_id: int) -> int:
    """Rows of the checkpoint's position table before the first real position: RoBERTa counts positions from
    padding_idx + 1 (its pad_token_id, our pad_id), BERT from 0."""
    return pad_id + 1 if family == "roberta" else 0


def _bert_layout(config: BERTConfig, family: str) -> Layout:
    rules: list[Rule] = [rename(f"embeddings.{hf}", ours) for hf, ours in _BERT_EMBEDDINGS]
    positions = ("embeddings.position_embeddings.weight", "position_embeddings.table.weight")
    offset = _position_offset(family, config.pad_id)
    rules.append(offset_rows(*positions, offset) if offset else rename(*positions))
    for i in range(config.num_layers):
        rules += [rename(f"encoder.layer.{i}.{hf}.{kind}", f"layers.{i}.{ours}.{kind}")
                  for hf, ours in _BERT_LAYER for kind in ("weight", "bias")]
    rules += [rename(f"pooler.dense.{kind}", f"pooler.{kind}", optional=True) for kind in ("weight", "bias")]
    head = _MLM_PREFIX[family]
    if config.mlm_head:
        rules += [rename(f"{head}{hf}.{kind}", f"{ours}.{kind}", in_base=False)
                  for hf, ours in _MLM_HEADS[family].items() for kind in ("weight", "bias")]
        rules.append(rename(f"{head}bias", "mlm_head.decoder.bias", in_base=False))
    skipped = [r"(^|\.)embeddings\.position_ids$", rf"^{re.escape(head)}decoder\.(weight|bias)$"]
    if family == "bert":
        skipped.append(r"^cls\.seq_relationship\.")  # BertForPreTraining's next-sentence head: not modelled
    return Layout(rules, re.compile("|".join(skipped)), f"{family}.", "bert." if config.mlm_head else "")


def _legacy_bert_names(state: dict[str, Any], family: str) -> dict[str, Any]:
    """TF-era names (LayerNorm.gamma / .beta) as transformers renames them; a head bias stored only as
    ``decoder.bias`` under the head's own name."""
    state = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
             for k, v in state.items()}
    head = _MLM_PREFIX[family]
    if f"{head}decoder.bias" in state and f"{head}bias" not in state:
        state[f"{head}bias"] = state.pop(f"{head}decoder.bias")
    return state


def _bert_config(hf: dict[str, Any], names: set[str], kernel: str, source: str, family: str) -> BERTConfig:
    problems = []
    if hf.get("hidden_act", "gelu") not in _EXACT_GELU:
        problems.append(f"hidden_act={hf.get('hidden_act')!r} is not supported: attnkit BERT uses exact GELU "
                        f"(hidden_act 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type={hf['position_embedding_type']!r} is not supported "
                        f"(only 'absolute')")
    for flag in ("is_decoder", "add_cross_attention"):
        if hf.get(flag):
            problems.append(f"{flag}=true is not supported: attnkit BERT is an encoder without cross-attention")
    mlm = any(n.startswith(_MLM_PREFIX[family]) for n in names)
    if mlm and hf.get("tie_word_embeddings") is False:
        problems.append("tie_word_embeddings=false is not supported: attnkit's MLM decoder shares the word "
                        "embedding matrix")
    pad_id = hf.get("pad_token_id")
    pad_id = (1 if family == "roberta" else 0) if pad_id is None else pad_id
    if problems:
        raise CheckpointError(source, problems=problems)
    return BERTConfig(vocab_size=hf.get("vocab_size", 30522),
                      max_seq_len=hf.get("max_position_embeddings", 512) - _position_offset(family, pad_id),
                      type_vocab_size=hf.get("type_vocab_size", 2), dim=hf.get("hidden_size", 768),
                      num_layers=hf.get("num_hidden_layers", 12), num_heads=hf.get("num_attention_heads", 12),
                      hidden=hf.get("intermediate_size", 3072), dropout=hf.get("hidden_dropout_prob", 0.1),
                      norm_eps=hf.get("layer_norm_eps", 1e-12), pad_id=pad_id, mlm_head=mlm, kernel=kernel)


def _bert_to_hf(config: BERTConfig) -> dict[str, Any]:
    return {"architectures": ["BertForMaskedLM" if config.mlm_head else "BertModel"], "model_type": "bert",
            "vocab_size": config.vocab_size, "hidden_size": config.dim, "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads, "intermediate_size": config.hidden, "hidden_act": "gelu",
            "hidden_dropout_prob": config.dropout, "attention_probs_dropout_prob": config.dropout,
            "max_position_embeddings": config.max_seq_len, "type_vocab_size": config.type_vocab_size,
            "layer_norm_eps": config.norm_eps, "pad_token_id": config.pad_id, "position_embedding_type": "absolute",
            "initializer_range": 0.02, "tie_word_embeddings": True}


# --------------------------------------------------------------------------------------------------
# GPT-2

_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
                     "silu": "silu", "swish": "silu"}
_GPT2_NAMES = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


def _gpt2_layout(config: GPTConfig) -> Layout:
    rules = [rename("wte.weight", "token_embedding.weight"), rename("wpe.weight", "position_embedding.table.weight"),
             rename("ln_f.weight", "final_norm.weight"), rename("ln_f.bias", "final_norm.bias")]
    for i in range(config.num_layers):
        h, ours = f"h.{i}.", f"layers.{i}."
        qkv = tuple(f"{ours}attn.{p}_proj" for p in "qkv")
        rules += [fused(f"{h}attn.c_attn.weight", tuple(f"{n}.weight" for n in qkv), transpose=True),
                  fused(f"{h}attn.c_attn.bias", tuple(f"{n}.bias" for n in qkv), transpose=False),
                  transposed(f"{h}attn.c_proj.weight", f"{ours}attn.out_proj.weight"),
                  rename(f"{h}attn.c_proj.bias", f"{ours}attn.out_proj.bias"),
                  transposed(f"{h}mlp.c_fc.weight", f"{ours}ffn.up.weight"),
                  rename(f"{h}mlp.c_fc.bias", f"{ours}ffn.up.bias"),
                  transposed(f"{h}mlp.c_proj.weight", f"{ours}ffn.down.weight"),
                  rename(f"{h}mlp.c_proj.bias", f"{ours}ffn.down.bias")]
        rules += [rename(f"{h}{hf}.{kind}", f"{ours}{norm}.{kind}")
                  for hf, norm in (("ln_1", "attn_norm"), ("ln_2", "ffn_norm")) for kind in ("weight", "bias")]
    skipped = [r"(^|\.)attn\.(bias|masked_bias)$"]  # the causal-mask buffers older checkpoints stored
    if config.tie_embeddings:
        skipped.append(r"^lm_head\.weight$")  # a copy of wte
    else:
        rules.append(rename("lm_head.weight", "head.weight", in_base=False))
    return Layout(rules, re.compile("|".join(skipped)), "transformer.", "transformer.")


def _gpt2_config(hf: dict[str, Any], names: set[str], kernel: str, source: str) -> GPTConfig:
    problems = []
    activation = _GPT2_ACTIVATIONS.get(hf.get("activation_function", "gelu_new"))
    if activation is None:
        problems.append(f"activation_function={hf['activation_function']!r} is not supported; supported: "
                        f"{', '.join(_GPT2_ACTIVATIONS)}")
    if hf.get("scale_attn_weights", True) is False:
        problems.append("scale_attn_weights=false is not supported (attnkit scales by 1/sqrt(head_dim))")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if hf.get(flag):
            problems.append(f"{flag}=true is not supported")
    if problems:
        raise CheckpointError(source, problems=problems)
    return GPTConfig(vocab_size=hf.get("vocab_size", 50257), max_seq_len=hf.get("n_positions", 1024),
                     dim=hf.get("n_embd", 768), num_layers=hf.get("n_layer", 12),
                     attention=AttentionConfig(num_heads=hf.get("n_head", 12)),
                     ffn=FeedForwardConfig(hidden=hf.get("n_inner"), activation=activation),  # type: ignore[arg-type]
                     norm=NormConfig("layer", hf.get("layer_norm_epsilon", 1e-5)), dropout=hf.get("resid_pdrop", 0.1),
                     tie_embeddings=hf.get("tie_word_embeddings", True), kernel=kernel)


def _gpt2_to_hf(config: GPTConfig) -> dict[str, Any]:
    """GPT-2's config.json (what it cannot express is found by reading it back: see ``unsaved``)."""
    eos = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, when the vocabulary has it
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.max_seq_len, "n_embd": config.dim, "n_layer": config.num_layers,
            "n_head": config.attention.num_heads, "n_inner": config.ffn.hidden,
            "activation_function": _GPT2_NAMES.get(config.ffn.activation, config.ffn.activation),
            "layer_norm_epsilon": config.norm.eps, "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout, "tie_word_embeddings": config.tie_embeddings, "scale_attn_weights": True,
            "initializer_range": 0.02, "bos_token_id": eos, "eos_token_id": eos}


# --------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Architecture:
    """One Hugging Face ``model_type`` family and how it maps onto an attnkit model class."""

    name: str
    model_types: tuple[str, ...]
    model_class: type[Model]
    # (config.json's fields, the checkpoint's tensor names, kernel, source for messages) -> attnkit config
    config_from_hf: Callable[[dict[str, Any], set[str], str, str], HubConfig]
    layout: Callable[[Any], Layout]  # attnkit config -> tensor layout
    config_to_hf: Callable[[Any], dict[str, Any]]
    # a layer's tensors in the checkpoint (group 1: the layer index), and config.json's field for their count
    layer_index: re.Pattern[str]
    layers_key: str
    normalize: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda state: state)
    # whether ``save`` may choose this architecture for any model that ``config_to_hf`` expresses exactly (read
    # back to the same config); False: only the first architecture of the model's class is written (BERT)
    round_trips: bool = False

    def layers_held(self, names: Iterable[str]) -> int:
        """How many distinct layers the checkpoint tensor ``names`` hold tensors of (at most one per name)."""
        return len({int(m.group(1)) for n in names if (m := self.layer_index.search(n))})

    def unsaved(self, config: HubConfig) -> list[str]:
        """What of ``config`` this architecture's config.json would lose: each field that reads back otherwise,
        as ``name=ours (model_type gives theirs)``; empty when it is expressed exactly."""
        model_type = self.model_types[0]
        hf = self.config_to_hf(config)
        try:
            back = self.config_from_hf(hf, set(), "auto", "config.json")
        except (TypeError, ValueError) as error:  # CheckpointError included: a value the format cannot hold
            return [str(error).splitlines()[-1].strip()]
        ours, theirs = _flat(config.to_dict()), _flat(back.to_dict())
        return [f"{name}={ours.get(name)!r} ({model_type} gives {theirs.get(name)!r})"
                for name in sorted(set(ours) | set(theirs))
                if name != "kernel" and not _same(ours.get(name), theirs.get(name))]


def _flat(fields: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config fields as one dict with dotted names ("attention.rope.base")."""
    flat: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = tuple(value) if isinstance(value, list) else value
    return flat


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative (a value written as 1/x² and read back as x^-1/2 may differ in its last bit)."""
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return bool(a == b)


def _bert_family(name: str, model_types: tuple[str, ...], family: str) -> Architecture:
    """BERT and RoBERTa differ only in ``family``: head names, default pad id, position offset."""
    return Architecture(name, model_types, BERT, partial(_bert_config, family=family),
                        partial(_bert_layout, family=family), _bert_to_hf, _BERT_LAYER_INDEX, "num_hidden_layers",
                        partial(_legacy_bert_names, family=family))


def _llama_family(name: str, family: llama.Family) -> Architecture:
    return Architecture(name, (family.model_type,), GPT, llama.config_from_hf, partial(llama.layout, family=family),
                        partial(llama.config_to_hf, family=family), llama.LAYER_INDEX, "num_hidden_layers",
                        round_trips=True)


ARCHITECTURES = (
    _bert_family("BERT", ("bert",), "bert"),
    _bert_family("RoBERTa", ("roberta", "xlm-roberta"), "roberta"),
    Architecture("GPT-2", ("gpt2",), GPT, _gpt2_config, _gpt2_layout, _gpt2_to_hf, re.compile(r"(?:^|\.)h\.(\d+)\."),
                 "n_layer", round_trips=True),
    *(_llama_family(name, llama.FAMILIES[t]) for name, t in (
        ("Llama", "llama"), ("Mistral", "mistral"), ("Qwen 2", "qwen2"), ("Qwen 3", "qwen3"), ("Gemma 2", "gemma2"),
        ("Gemma 3", "gemma3_text"), ("Phi-3", "phi3"))),
)


def architecture_for(hf: dict[str, Any], source: str) -> Architecture:
    """The architecture of a config.json, or a CheckpointError naming the supported model types."""
    model_type = hf.get("model_type")
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    known = ", ".join(t for a in ARCHITECTURES for t in a.model_types)
    problem = f"model_type={model_type!r} is not supported; supported model types: {known}"
    raise CheckpointError(source, problems=[problem])


def architecture_of(model: Model, model_type: str | None = None, *, preferred: str | None = None) -> Architecture:
    """The architecture ``save`` writes ``model`` as.

    ``model_type`` names it (a ValueError if it cannot express the model); otherwise ``preferred`` (the
    model_type the model was loaded from) when it expresses the model exactly, else the first architecture of
    the model's class that does: a BERT is saved as BERT, never as RoBERTa; a GPT as GPT-2 when GPT-2 expresses
    it, else as the first of the Llama family that does (llama, mistral, qwen2, ...).
    """
    candidates = [a for a in ARCHITECTURES if type(model) is a.model_class]
    if not candidates:
        raise TypeError(f"model must be an attnkit BERT or GPT to save as a Hugging Face checkpoint, got "
                        f"{type(model).__name__}")
    config = model.config
    assert isinstance(config, (BERTConfig, GPTConfig))  # the configs of BERT and GPT
    if model_type is not None:
        named = [a for a in candidates if model_type in a.model_types]
        if not named:
            known = ", ".join(t for a in candidates for t in a.model_types)
            raise ValueError(f"model_type={model_type!r} cannot hold a {type(model).__name__}; choose one of {known}")
        lost = named[0].unsaved(config) if named[0].round_trips else []
        if lost:
            raise ValueError(f"model: this {type(model).__name__} cannot be saved as model_type={model_type!r}: "
                             f"{'; '.join(lost)}")
        return named[0]
    if not candidates[0].round_trips:
        return candidates[0]
    ordered = sorted(candidates, key=lambda a: preferred not in a.model_types)  # stable: the preferred first
    losses = {a.model_types[0]: a.unsaved(config) for a in ordered}
    for arch in ordered:
        if not losses[arch.model_types[0]]:
            return arch
    # the format that keeps most; one whose config.json cannot even be read back (an unknown activation) last
    closest = min(losses, key=lambda t: (losses[t][0].startswith("config.json"), len(losses[t])))
    raise ValueError(f"model: this {type(model).__name__} cannot be saved as a Hugging Face checkpoint: no supported "
                     f"model_type ({', '.join(losses)}) expresses it; the closest, {closest}, would change "
                     f"{'; '.join(losses[closest])}")


__all__ = ["Architecture", "ARCHITECTURES", "HubConfig", "architecture_for", "architecture_of"]
