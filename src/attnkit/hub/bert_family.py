"""The BERT family as :class:`~attnkit.models.BERT`: BERT (and MiniLM), RoBERTa (and XLM-R), DistilBERT and
ELECTRA's discriminator. For each: config.json's fields -> a :class:`BERTConfig` (rejecting values that would
compute something else), the tensor :class:`Layout` with the heads', and the way back. Which head a checkpoint
has (``architectures`` in config.json) is read in architectures.py; here each head's tensors are named.

    config.json (bert, roberta, electra)   BERTConfig        config.json (distilbert)
    vocab_size                             vocab_size        vocab_size
    hidden_size                            dim               dim
    num_hidden_layers                      num_layers        n_layers
    num_attention_heads                    num_heads         n_heads
    intermediate_size                      hidden            hidden_dim
    max_position_embeddings                max_seq_len       max_position_embeddings
    type_vocab_size                        type_vocab_size   (none: 0)
    layer_norm_eps                         norm_eps          (1e-12)
    hidden_dropout_prob                    dropout           dropout
    pad_token_id                           pad_id            pad_token_id
    embedding_size (electra)               embedding_dim
    hidden_act: only "gelu" (exact)                          activation: only "gelu"

RoBERTa is BERT with positions counted from padding_idx + 1: its position table loses its first padding_idx + 1
rows (so inputs must be right-padded, as for BERT), and saving puts zero rows back. DistilBERT is BERT without
token types or pooler, its tensors under other names. ELECTRA is BERT without pooler, its embeddings
``embedding_size`` wide and projected to ``hidden_size`` (``embeddings_project``) when that differs.

    heads (outside the base model)       BERT                       attnkit
    masked LM (bert)                     cls.predictions.transform.dense, .LayerNorm, .bias -> mlm_head.dense,
    masked LM (roberta)                  lm_head.dense, .layer_norm, .bias                     .norm, .decoder.bias
    masked LM (distilbert)               vocab_transform, vocab_layer_norm, vocab_projector.bias
    sequence classification              classifier (pooling "pooler": BERT)          -> task_head.out
                                         classifier.dense, .out_proj (RoBERTa, ELECTRA) -> task_head.dense, .out
                                         pre_classifier, classifier (DistilBERT)        -> task_head.dense, .out
    token classification                 classifier                                    -> task_head.out
    question answering                   qa_outputs                                    -> task_head.out
"""

from __future__ import annotations

import re
from typing import Any

from ..models.bert import BERTConfig
from .errors import CheckpointError
from .rules import Layout, Rule, offset_rows, rename

LAYER_INDEX = {"distilbert": re.compile(r"(?:^|\.)transformer\.layer\.(\d+)\."),
               **{f: re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.") for f in ("bert", "roberta", "electra")}}
LAYERS_KEY = {"bert": "num_hidden_layers", "roberta": "num_hidden_layers", "electra": "num_hidden_layers",
              "distilbert": "n_layers"}

_BERT_EMBEDDINGS = (("word_embeddings.weight", "word_embeddings.weight"),
                    ("LayerNorm.weight", "embedding_norm.weight"), ("LayerNorm.bias", "embedding_norm.bias"))
_BERT_LAYER = (("attention.self.query", "attn.q_proj"), ("attention.self.key", "attn.k_proj"),
               ("attention.self.value", "attn.v_proj"), ("attention.output.dense", "attn.out_proj"),
               ("attention.output.LayerNorm", "attn_norm"), ("intermediate.dense", "ffn.up"),
               ("output.dense", "ffn.down"), ("output.LayerNorm", "ffn_norm"))
_DISTILBERT_LAYER = (("attention.q_lin", "attn.q_proj"), ("attention.k_lin", "attn.k_proj"),
                     ("attention.v_lin", "attn.v_proj"), ("attention.out_lin", "attn.out_proj"),
                     ("sa_layer_norm", "attn_norm"), ("ffn.lin1", "ffn.up"), ("ffn.lin2", "ffn.down"),
                     ("output_layer_norm", "ffn_norm"))
# masked-LM heads: their decoder weight is the (tied) word embedding matrix, their decoder bias the head's own
_MLM_HEADS = {
    "bert": (("cls.predictions.transform.dense", "mlm_head.dense"), ("cls.predictions.transform.LayerNorm",
                                                                     "mlm_head.norm")),
    "roberta": (("lm_head.dense", "mlm_head.dense"), ("lm_head.layer_norm", "mlm_head.norm")),
    "distilbert": (("vocab_transform", "mlm_head.dense"), ("vocab_layer_norm", "mlm_head.norm")),
}
_MLM_BIAS = {"bert": "cls.predictions.bias", "roberta": "lm_head.bias", "distilbert": "vocab_projector.bias"}
_MLM_TIED = {"bert": r"^cls\.predictions\.decoder\.(weight|bias)$", "roberta": r"^lm_head\.decoder\.(weight|bias)$",
             "distilbert": r"^vocab_projector\.weight$"}
# sequence classification's tensors by pooling (token classification: classifier; question answering: qa_outputs)
_SEQUENCE_HEADS = {"pooler": (("classifier", "task_head.out"),),
                   "roberta": (("classifier.dense", "task_head.dense"), ("classifier.out_proj", "task_head.out")),
                   "electra": (("classifier.dense", "task_head.dense"), ("classifier.out_proj", "task_head.out")),
                   "distilbert": (("pre_classifier", "task_head.dense"), ("classifier", "task_head.out"))}
_EXACT_GELU = ("gelu", "gelu_python")  # both are erf-based GELU in transformers


def position_offset(family: str, pad_id: int) -> int:
    """Rows of the checkpoint's position table before the first real position: RoBERTa counts positions from
    padding_idx + 1 (its pad_token_id, our pad_id), the others from 0."""
    return pad_id + 1 if family == "roberta" else 0


def _linear(hf: str, ours: str, *, in_base: bool = True, optional: bool = False) -> list[Rule]:
    return [rename(f"{hf}.{kind}", f"{ours}.{kind}", in_base=in_base, optional=optional) for kind in ("weight", "bias")]


def _base_rules(config: BERTConfig, family: str) -> list[Rule]:
    """The base model's tensors (the embeddings and the layers; the pooler when built)."""
    positions = ("embeddings.position_embeddings.weight", "position_embeddings.table.weight")
    offset = position_offset(family, config.pad_id)
    rules = [rename(f"embeddings.{hf}", ours) for hf, ours in _BERT_EMBEDDINGS]
    rules.append(offset_rows(*positions, offset) if offset else rename(*positions))
    if config.type_vocab_size:
        rules.append(rename("embeddings.token_type_embeddings.weight", "token_type_embeddings.weight"))
    if config.embedding_dim is not None:
        rules += _linear("embeddings_project", "embedding_project")
    layer, names = ("transformer.layer", _DISTILBERT_LAYER) if family == "distilbert" else \
        ("encoder.layer", _BERT_LAYER)
    for i in range(config.num_layers):
        rules += [r for hf, ours in names for r in _linear(f"{layer}.{i}.{hf}", f"layers.{i}.{ours}")]
    if config.pooler:  # needed by the "pooler" classification head; else optional (BertForMaskedLM has none)
        pooled = config.task is not None and config.task.pooling == "pooler"
        rules += _linear("pooler.dense", "pooler", optional=not pooled)
    return rules


def _head_rules(config: BERTConfig, family: str) -> list[Rule]:
    """The head's tensors, which sit outside the base model (no prefix)."""
    if config.mlm_head:
        return [r for hf, ours in _MLM_HEADS.get(family, ()) for r in _linear(hf, ours, in_base=False)] + \
            [rename(_MLM_BIAS.get(family, "cls.predictions.bias"), "mlm_head.decoder.bias", in_base=False)]
    task = config.task
    if task is None:
        return []
    names = _SEQUENCE_HEADS[task.pooling or "pooler"] if task.kind == "sequence_classification" else \
        (("qa_outputs" if task.kind == "question_answering" else "classifier", "task_head.out"),)
    return [r for hf, ours in names for r in _linear(hf, ours, in_base=False)]


def layout(config: BERTConfig, family: str) -> Layout:
    """The tensors of a ``<Family>Model`` / ``<Family>For<Head>`` checkpoint and the BERT parameters they hold."""
    skipped = [r"(^|\.)embeddings\.(position_ids|token_type_ids)$"]  # buffers older checkpoints stored
    if config.mlm_head:
        skipped.append(_MLM_TIED.get(family, _MLM_TIED["bert"]))
    if family == "bert":
        skipped.append(r"^cls\.seq_relationship\.")  # BertForPreTraining's next-sentence head: not modelled
    if not config.pooler:
        skipped.append(r"(^|\.)pooler\.dense\.")  # a pooler the head does not read (older task checkpoints)
    headed = config.mlm_head or config.task is not None
    return Layout(_base_rules(config, family) + _head_rules(config, family), re.compile("|".join(skipped)),
                  f"{family}.", f"{family}." if headed else "")


def normalize(state: dict[str, Any], family: str) -> dict[str, Any]:
    """TF-era names (LayerNorm.gamma / .beta) as transformers renames them; a masked-LM bias stored only as
    ``decoder.bias`` under the head's own name."""
    state = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
             for k, v in state.items()}
    bias = _MLM_BIAS.get(family)
    if bias is not None and family != "distilbert":
        stored = bias.removesuffix("bias") + "decoder.bias"
        if stored in state and bias not in state:
            state[bias] = state.pop(stored)
    return state


def _problems(hf: dict[str, Any], family: str) -> list[str]:
    act_key = "activation" if family == "distilbert" else "hidden_act"
    act = hf.get(act_key, "gelu")
    problems = [] if act in _EXACT_GELU else [
        f"{act_key}={act!r} is not supported: attnkit BERT uses exact GELU ({act_key} 'gelu')"]
    if hf.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type={hf['position_embedding_type']!r} is not supported "
                        f"(only 'absolute')")
    for flag in ("is_decoder", "add_cross_attention"):
        if hf.get(flag):
            problems.append(f"{flag}=true is not supported: attnkit BERT is an encoder without cross-attention")
    if family != "distilbert" and hf.get("type_vocab_size", 2) == 0:
        problems.append("type_vocab_size=0 is not supported: transformers' BERT embeds a token type (DistilBERT has "
                        "none)")
    return problems


def config_from_hf(hf: dict[str, Any], names: set[str], kernel: str, source: str, family: str) -> BERTConfig:
    """The BERTConfig of the base model config.json describes (architectures.py adds the head)."""
    problems = _problems(hf, family)
    if problems:
        raise CheckpointError(source, problems=problems)
    pad_id = hf.get("pad_token_id")
    pad_id = (1 if family == "roberta" else 0) if pad_id is None else pad_id
    if family == "distilbert":  # sinusoidal_pos_embds: the table is stored all the same, and read as learned
        return BERTConfig(vocab_size=hf.get("vocab_size", 30522), max_seq_len=hf.get("max_position_embeddings", 512),
                          type_vocab_size=0, dim=hf.get("dim", 768), num_layers=hf.get("n_layers", 6),
                          num_heads=hf.get("n_heads", 12), hidden=hf.get("hidden_dim", 3072),
                          dropout=hf.get("dropout", 0.1), norm_eps=1e-12, pad_id=pad_id, pooler=False, kernel=kernel)
    dim = hf.get("hidden_size", 256 if family == "electra" else 768)
    return BERTConfig(vocab_size=hf.get("vocab_size", 30522),
                      max_seq_len=hf.get("max_position_embeddings", 512) - position_offset(family, pad_id),
                      type_vocab_size=hf.get("type_vocab_size", 2), dim=dim,
                      num_layers=hf.get("num_hidden_layers", 12),
                      num_heads=hf.get("num_attention_heads", 4 if family == "electra" else 12),
                      hidden=hf.get("intermediate_size", 1024 if family == "electra" else 3072),
                      dropout=hf.get("hidden_dropout_prob", 0.1), norm_eps=hf.get("layer_norm_eps", 1e-12),
                      pad_id=pad_id, kernel=kernel,
                      embedding_dim=hf.get("embedding_size", 128) if family == "electra" else None)


def config_to_hf(config: BERTConfig, family: str) -> dict[str, Any]:
    """``config``'s base model as the family's config.json (architectures.py adds the head); what it cannot
    express is found by reading it back (``unsaved``)."""
    if family == "distilbert":
        return {"model_type": "distilbert", "vocab_size": config.vocab_size, "dim": config.dim,
                "n_layers": config.num_layers, "n_heads": config.num_heads, "hidden_dim": config.hidden,
                "activation": "gelu", "dropout": config.dropout, "attention_dropout": config.dropout,
                "max_position_embeddings": config.max_seq_len, "pad_token_id": config.pad_id,
                "sinusoidal_pos_embds": False, "initializer_range": 0.02, "tie_word_embeddings": True}
    hf = {"model_type": family, "vocab_size": config.vocab_size, "hidden_size": config.dim,
          "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
          "intermediate_size": config.hidden, "hidden_act": "gelu", "hidden_dropout_prob": config.dropout,
          "attention_probs_dropout_prob": config.dropout,
          "max_position_embeddings": config.max_seq_len + position_offset(family, config.pad_id),
          "type_vocab_size": config.type_vocab_size, "layer_norm_eps": config.norm_eps, "pad_token_id": config.pad_id,
          "position_embedding_type": "absolute", "initializer_range": 0.02, "tie_word_embeddings": True}
    if family == "electra":
        hf["embedding_size"] = config.embedding_dim or config.dim
    return hf


__all__ = ["LAYER_INDEX", "LAYERS_KEY", "position_offset", "layout", "normalize", "config_from_hf",
           "config_to_hf"]
