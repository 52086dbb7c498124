"""The Hugging Face architectures attnkit reads and writes, and the heads on them: the BERT family (BERT, MiniLM,
RoBERTa, XLM-R, DistilBERT, ELECTRA; bert_family.py) as :class:`~attnkit.models.BERT`, GPT-2 (here) and the Llama
family (llama.py) as :class:`~attnkit.models.GPT`. For each: the config.json fields -> an attnkit config
(rejecting values that would compute something else), the tensor :class:`Layout`, and the way back.

    HF config.json (gpt2)     GPTConfig
    vocab_size                vocab_size
    n_embd                    dim
    n_layer                   num_layers
    n_head                    num_heads
    n_inner (null = 4 dim)    hidden
    n_positions               max_seq_len
    layer_norm_epsilon        norm_eps
    activation_function       activation: "gelu_new" -> "gelu_tanh", "gelu" -> "gelu"
    resid_pdrop               dropout
    tie_word_embeddings       tie_embeddings

Each architecture lists its transformers classes as :class:`Head` rows: the head each class puts on the base model
(none, BERT's masked-LM head, or a :class:`~attnkit.models.heads.TaskConfig`). A checkpoint's head is the class
config.json's ``architectures`` names, else the one whose tensors it holds (``Head.marker``); the task's fields
(``id2label``, ``problem_type``, the classifier's dropout, GPT's ``pad_token_id``) are read from config.json and
written back with the class's name.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeAlias

from ..models.base import Model
from ..models.bert import BERT, BERTConfig
from ..models.gpt import GPT, AttentionConfig, FeedForwardConfig, GPTConfig
from ..models.heads import Pooling, Task, TaskConfig
from ..nn.norms import NormConfig
from . import bert_family, llama
from .errors import CheckpointError
from .rules import Layout, causal_lm_output, fused, rename, transposed

HubConfig: TypeAlias = BERTConfig | GPTConfig  # the configs of the models a checkpoint loads into and saves from

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
    # GPT2ForSequenceClassification's score in place of the LM head; the causal-mask buffers older checkpoints stored
    output, skipped = causal_lm_output(task=config.task is not None, tied=config.tie_embeddings)
    rules += output
    skipped.append(r"(^|\.)attn\.(bias|masked_bias)$")
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
    return {"model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.max_seq_len, "n_embd": config.dim, "n_layer": config.num_layers,
            "n_head": config.attention.num_heads, "n_inner": config.ffn.hidden,
            "activation_function": _GPT2_NAMES.get(config.ffn.activation, config.ffn.activation),
            "layer_norm_epsilon": config.norm.eps, "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout, "tie_word_embeddings": config.tie_embeddings, "scale_attn_weights": True,
            "initializer_range": 0.02, "bos_token_id": eos, "eos_token_id": eos}


# --------------------------------------------------------------------------------------------------
# heads


@dataclass(frozen=True)
class Head:
    """One transformers class of an architecture: the head it puts on the base model."""

    hf_class: str  # config.json's "architectures" entry, e.g. "BertForSequenceClassification"
    task: Task | None = None  # the TaskConfig.kind it loads as; None: no task head
    pooling: Pooling | None = None  # sequence classification's (see attnkit.models.heads)
    mlm: bool = False  # BERT's masked-LM head (BERTConfig.mlm_head)
    pooler: bool = True  # BERT's pooler (BERTConfig.pooler); False: a stored one (older checkpoints) is ignored
    marker: str | None = None  # a regex only this head's tensor names match: the head when config.json names none
    dropout_key: str | None = None  # config.json's field for TaskConfig.dropout; None: transformers has no setting

    def holds(self, config: HubConfig) -> bool:
        """Whether this class has the head ``config`` describes."""
        task = config.task
        if (self.task, self.pooling) != ((task.kind, task.pooling) if task is not None else (None, None)):
            return False
        return not isinstance(config, BERTConfig) or (self.mlm, self.pooler) == (config.mlm_head, config.pooler)


def _bert_heads(prefix: str, family: str) -> tuple[Head, ...]:
    """The classes of a BERT-family model_type (``prefix``: transformers' class prefix, e.g. "Roberta")."""
    pooler = family in ("bert", "roberta")  # DistilBERT and ELECTRA have none
    distil = family == "distilbert"
    mlm = {"bert": r"^cls\.predictions\.", "roberta": r"^lm_head\.", "distilbert": r"^vocab_(transform|projector)\."}
    pooling: dict[str, Pooling] = {"bert": "pooler", "roberta": "roberta", "electra": "electra",
                                   "distilbert": "distilbert"}
    heads = [Head(f"{prefix}Model", pooler=pooler)]
    if family in mlm:  # the pooler stays (a stored one is read, else it is initialized and a warning says so)
        heads.append(Head(f"{prefix}ForMaskedLM", mlm=True, pooler=pooler, marker=mlm[family]))
    if family == "bert":
        heads.append(Head("BertForPreTraining", mlm=True))  # next-sentence head skipped
    sequence = {"bert": None, "roberta": r"^classifier\.out_proj\.", "electra": r"^classifier\.out_proj\.",
                "distilbert": r"^pre_classifier\."}
    return (*heads,
            Head(f"{prefix}ForSequenceClassification", "sequence_classification", pooling[family],
                 pooler=family == "bert", marker=sequence[family],
                 dropout_key="seq_classif_dropout" if distil else "classifier_dropout"),
            Head(f"{prefix}ForTokenClassification", "token_classification", pooler=False,
                 dropout_key=None if distil else "classifier_dropout"),
            Head(f"{prefix}ForQuestionAnswering", "question_answering", pooler=False, marker=r"^qa_outputs\.",
                 dropout_key="qa_dropout" if distil else None))


def _gpt_heads(lm_class: str, classifier_class: str) -> tuple[Head, ...]:
    return (Head(lm_class), Head(classifier_class, "sequence_classification", "last_token", marker=r"^score\."))


def _declared(hf: dict[str, Any]) -> str | None:
    names = hf.get("architectures")
    return names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None


def _named_head(heads: tuple[Head, ...], hf: dict[str, Any]) -> Head | None:
    """The head config.json's ``architectures`` names (another model_type's spelling of the class, such as
    XLMRobertaForSequenceClassification, counts; a class without "For", such as GPT2Model, is the bare model)."""
    declared = _declared(hf)
    if declared is None:
        return None
    if "For" not in declared:
        return heads[0]
    task = declared[declared.find("For"):]
    return next((h for h in heads if h.hf_class == declared or h.hf_class.endswith(task)), None)


def _head_of(heads: tuple[Head, ...], hf: dict[str, Any], names: set[str]) -> Head:
    """The head config.json names, else the one whose tensors ``names`` holds, else the bare model."""
    named = _named_head(heads, hf)
    if named is not None:
        return named
    return next((h for h in heads if h.marker and any(re.search(h.marker, n) for n in names)), heads[0])


def _task_from_hf(head: Head, hf: dict[str, Any]) -> TaskConfig | None:
    if head.task is None:
        return None
    id2label = hf.get("id2label") or {}
    return TaskConfig(head.task, num_labels=len(id2label) if id2label else hf.get("num_labels", 2),
                      problem_type=hf.get("problem_type"), id2label=id2label,
                      dropout=hf.get(head.dropout_key) if head.dropout_key else None, pooling=head.pooling,
                      pad_id=hf.get("pad_token_id") if head.pooling == "last_token" else None)


def _task_to_hf(head: Head, task: TaskConfig | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"architectures": [head.hf_class]}
    if task is None:
        return fields
    fields.update(id2label={str(i): name for i, name in task.id2label.items()},
                  label2id={name: i for i, name in task.id2label.items()}, problem_type=task.problem_type)
    if head.dropout_key is not None:
        fields[head.dropout_key] = task.dropout
    if task.pooling == "last_token":
        fields["pad_token_id"] = task.pad_id
    return fields


def _describe(config: HubConfig) -> str:
    if isinstance(config, BERTConfig) and config.mlm_head:
        return "a masked-LM head"
    head = f"a {config.task.kind} head (pooling={config.task.pooling!r})" if config.task else "no head"
    if not isinstance(config, BERTConfig):
        return head
    return f"{head} and {'a' if config.pooler else 'no'} pooler"


# --------------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class Architecture:
    """One Hugging Face ``model_type`` family and how it maps onto an attnkit model class."""

    name: str
    model_types: tuple[str, ...]
    model_class: type[Model]
    # (config.json's fields, the checkpoint's tensor names, kernel, source for messages) -> the base model's config
    read_base: Callable[[dict[str, Any], set[str], str, str], HubConfig]
    layout: Callable[[Any], Layout]  # attnkit config -> tensor layout (the head's tensors included)
    write_base: Callable[[Any], dict[str, Any]]  # attnkit config -> the base model's config.json fields
    # a layer's tensors in the checkpoint (group 1: the layer index), and config.json's field for their count
    layer_index: re.Pattern[str]
    layers_key: str
    heads: tuple[Head, ...]  # the transformers classes; the first is the default (no head, or GPT's LM head)
    normalize: Callable[[dict[str, Any]], dict[str, Any]] = field(default=lambda state: state)

    def config_from_hf(self, hf: dict[str, Any], names: set[str], kernel: str, source: str) -> HubConfig:
        """The attnkit config of config.json's fields ``hf`` and the checkpoint's tensor ``names``, with its head."""
        head = _head_of(self.heads, hf, names)
        base = self.read_base(hf, names, kernel, source)
        task = _task_from_hf(head, hf)
        if not isinstance(base, BERTConfig):
            return dataclasses.replace(base, task=task)
        if head.mlm and hf.get("tie_word_embeddings") is False:
            raise CheckpointError(source, problems=["tie_word_embeddings=false is not supported: attnkit's MLM "
                                                    "decoder shares the word embedding matrix"])
        return dataclasses.replace(base, mlm_head=head.mlm, pooler=head.pooler, task=task)

    def config_to_hf(self, config: HubConfig) -> dict[str, Any]:
        """``config`` as this architecture's config.json; a ValueError when none of its classes has the head."""
        head = next((h for h in self.heads if h.holds(config)), None)
        if head is None:
            raise ValueError(f"no transformers class of {self.model_types[0]} has {_describe(config)}; its classes: "
                             f"{', '.join(h.hf_class for h in self.heads)}")
        return {**self.write_base(config), **_task_to_hf(head, config.task)}

    def unknown_class(self, hf: dict[str, Any]) -> str | None:
        """config.json's ``architectures`` class when it is none of this architecture's (the head is then found
        from the tensors)."""
        declared = _declared(hf)
        return declared if declared is not None and _named_head(self.heads, hf) is None else None

    def layers_held(self, names: Iterable[str]) -> int:
        """How many distinct layers the checkpoint tensor ``names`` hold tensors of (at most one per name)."""
        return len({int(m.group(1)) for n in names if (m := self.layer_index.search(n))})

    def unsaved(self, config: HubConfig) -> list[str]:
        """What of ``config`` this architecture's config.json would lose: each field that reads back otherwise,
        as ``name=ours (model_type gives theirs)``; empty when it is expressed exactly."""
        model_type = self.model_types[0]
        try:
            back = self.config_from_hf(self.config_to_hf(config), set(), "auto", "config.json")
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
            flat[prefix + str(name)] = tuple(value) if isinstance(value, list) else value
    return flat


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative (a value written as 1/x² and read back as x^-1/2 may differ in its last bit)."""
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return bool(a == b)


def _bert_family(name: str, model_types: tuple[str, ...], family: str, prefix: str) -> Architecture:
    """BERT, RoBERTa, DistilBERT and ELECTRA: one model class, each family's names (bert_family.py)."""
    return Architecture(name, model_types, BERT, partial(bert_family.config_from_hf, family=family),
                        partial(bert_family.layout, family=family), partial(bert_family.config_to_hf, family=family),
                        bert_family.LAYER_INDEX[family], bert_family.LAYERS_KEY[family], _bert_heads(prefix, family),
                        partial(bert_family.normalize, family=family))


def _llama_family(name: str, family: llama.Family) -> Architecture:
    return Architecture(name, (family.model_type,), GPT, llama.config_from_hf, partial(llama.layout, family=family),
                        partial(llama.config_to_hf, family=family), llama.LAYER_INDEX, "num_hidden_layers",
                        _gpt_heads(family.hf_class, family.classifier_class))


ARCHITECTURES = (
    _bert_family("BERT", ("bert",), "bert", "Bert"),
    _bert_family("RoBERTa", ("roberta", "xlm-roberta"), "roberta", "Roberta"),
    _bert_family("DistilBERT", ("distilbert",), "distilbert", "DistilBert"),
    _bert_family("ELECTRA", ("electra",), "electra", "Electra"),
    Architecture("GPT-2", ("gpt2",), GPT, _gpt2_config, _gpt2_layout, _gpt2_to_hf, re.compile(r"(?:^|\.)h\.(\d+)\."),
                 "n_layer", _gpt_heads("GPT2LMHeadModel", "GPT2ForSequenceClassification")),
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
    the model's class that does: a BERT as BERT (a RoBERTa loaded as such stays one; a BERT without token types as
    DistilBERT, one without pooler as ELECTRA); a GPT as GPT-2 when GPT-2 expresses it, else as the first of the
    Llama family that does (llama, mistral, qwen2, ...).
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
        lost = named[0].unsaved(config)
        if lost:
            raise ValueError(f"model: this {type(model).__name__} cannot be saved as model_type={model_type!r}: "
                             f"{'; '.join(lost)}")
        return named[0]
    ordered = sorted(candidates, key=lambda a: preferred not in a.model_types)  # stable: the preferred first
    losses: dict[str, list[str]] = {}  # each candidate's read-back is computed only until one fits
    for arch in ordered:
        losses[arch.model_types[0]] = arch.unsaved(config)
        if not losses[arch.model_types[0]]:
            return arch
    # the format that keeps most; one whose config.json cannot even be read back (an unknown activation) last
    closest = min(losses, key=lambda t: (losses[t][0].startswith("config.json"), len(losses[t])))
    raise ValueError(f"model: this {type(model).__name__} cannot be saved as a Hugging Face checkpoint: no supported "
                     f"model_type ({', '.join(losses)}) expresses it; the closest, {closest}, would change "
                     f"{'; '.join(losses[closest])}")


__all__ = ["Architecture", "ARCHITECTURES", "Head", "HubConfig", "architecture_for", "architecture_of"]
