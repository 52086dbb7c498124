"""Task heads on an encoder's or decoder's last hidden states, as transformers' ``*ForSequenceClassification``,
``*ForTokenClassification`` and ``*ForQuestionAnswering`` put them, with their losses computed as transformers
computes them. A model takes one through its config (``BERTConfig.task``, ``GPTConfig.task``) and returns the
head's ``logits`` and, given ``labels``, its ``loss``.

    task                      logits            labels                       loss
    sequence_classification   (B, num_labels)   (B,) long: single label      cross-entropy
                                                (B, num_labels) float: multi  binary cross-entropy with logits
                                                (B,) or (B, num_labels) float mean squared error (regression)
    token_classification      (B, N, labels)    (B, N) long, -100 = ignored  cross-entropy
    question_answering        (B, N, 2)         (B, 2) long: start, end      mean of the start and end
                                                                              cross-entropies; positions outside
                                                                              [0, N) are ignored

Sequence classification reads one vector per sequence; ``pooling`` says how (x: the last hidden states
(B, N, dim), x0 = x[:, 0]; ``drop``: the head's dropout):

    pooling        logits                                              transformers
    "pooler"       out(drop(tanh(pooler(x0))))  (the model's pooler)   BertForSequenceClassification
    "roberta"      out(drop(tanh(dense(drop(x0)))))                    RobertaForSequenceClassification
    "electra"      out(drop(gelu(dense(drop(x0)))))                    ElectraForSequenceClassification
    "distilbert"   out(drop(relu(dense(x0))))                          DistilBertForSequenceClassification
    "last_token"   out(x[b, last token that is not pad_id]), no bias    GPT2 / Llama ...ForSequenceClassification

    >>> head = TaskConfig("sequence_classification", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
    >>> model = BERT(BERTConfig.preset("tiny", task=head)).eval()
    >>> out = model(torch.randint(1, 128, (2, 10)), labels=torch.tensor([0, 2]))
    >>> out.logits.shape, out.loss.shape                                   # (2, 3), ()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.linear import Linear
from .base import sub_config

Task = Literal["sequence_classification", "token_classification", "question_answering"]
ProblemType = Literal["regression", "single_label_classification", "multi_label_classification"]
Pooling = Literal["pooler", "roberta", "electra", "distilbert", "last_token"]
IGNORE_INDEX = -100  # labels with this value add nothing to a cross-entropy (transformers' ignore_index)

# the poolings with a dense layer, and its activation
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"roberta": torch.tanh, "electra": F.gelu, "distilbert": F.relu}
_DROPOUT_FIRST = ("roberta", "electra")  # they drop out x0 before their dense layer too


@dataclass
class TaskConfig:
    """A task head (see the module docstring for what each computes).

    Args:
        kind: the task.
        num_labels: classes (1 = a regression); question answering: 2 (start, end).
        problem_type: sequence classification's loss; None = as transformers infers it per batch: regression
            for one label, else single-label for integer labels, multi-label for float labels.
        id2label: the labels' names by index (config.json's id2label); empty = LABEL_0, LABEL_1, ...
        dropout: before the last linear layer; None = the model's dropout for classification, none for question
            answering and "last_token" (as in transformers). The model's config replaces None by the value.
        pooling: sequence classification only; None = the model's own ("pooler" for BERT, "last_token" for GPT).
        pad_id: "last_token" only: each row is classified at its last token that is not ``pad_id`` (transformers'
            pad_token_id, read from input_ids whatever the attention mask); None = the last token, and then a
            batch must hold one row (as transformers refuses more).
    """

    kind: Task
    num_labels: int = 2
    problem_type: ProblemType | None = None
    id2label: dict[int, str] = field(default_factory=dict)
    dropout: float | None = None
    pooling: Pooling | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        _one_of("kind", self.kind, Task)
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 1:
            raise ValueError(f"TaskConfig.num_labels must be a positive int, got {self.num_labels!r}")
        if self.kind == "question_answering" and self.num_labels != 2:
            raise ValueError(f"TaskConfig: question answering has num_labels=2 (start, end), got {self.num_labels}")
        if self.problem_type is not None:
            _one_of("problem_type", self.problem_type, ProblemType)
            if self.kind != "sequence_classification":
                raise ValueError(f"TaskConfig.problem_type applies to sequence classification, not {self.kind}")
        self.id2label = _labels(self.id2label, self.num_labels)
        if self.dropout is not None and (isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float))
                                         or not 0.0 <= self.dropout < 1.0):
            raise ValueError(f"TaskConfig.dropout must be in [0, 1) or None, got {self.dropout!r}")
        if self.pooling is not None:
            _one_of("pooling", self.pooling, Pooling)
            if self.kind != "sequence_classification":
                raise ValueError(f"TaskConfig.pooling applies to sequence classification, not {self.kind}")
        if self.pad_id is not None and (self.pooling not in (None, "last_token") or isinstance(self.pad_id, bool)
                                        or not isinstance(self.pad_id, int) or self.pad_id < 0):
            raise ValueError(f"TaskConfig.pad_id must be None or a token id >= 0 with pooling='last_token', got "
                             f"pad_id={self.pad_id!r}, pooling={self.pooling!r}")

    def resolved(self, model_dropout: float, pooling: Pooling) -> TaskConfig:
        """This head with ``dropout`` and ``pooling`` filled in for a model (``pooling``: the model's own)."""
        own = (pooling if self.pooling is None else self.pooling) if self.kind == "sequence_classification" else None
        if self.pad_id is not None and own != "last_token":
            raise ValueError(f"TaskConfig.pad_id applies to pooling='last_token', not {own!r}")
        none = self.kind == "question_answering" or own == "last_token"  # transformers has no dropout there
        dropout = (0.0 if none else float(model_dropout)) if self.dropout is None else float(self.dropout)
        return dataclasses.replace(self, pooling=own, dropout=dropout)


def _one_of(name: str, value: object, choices: object) -> None:
    if value not in get_args(choices):
        raise ValueError(f"TaskConfig.{name} must be one of {', '.join(map(repr, get_args(choices)))}, got {value!r}")


def _labels(id2label: object, num_labels: int) -> dict[int, str]:
    """``id2label`` with int keys 0..num_labels-1 (JSON's string keys accepted); empty = LABEL_i."""
    if not isinstance(id2label, dict):
        raise TypeError(f"TaskConfig.id2label must be a dict of label index -> name, got {type(id2label).__name__}")
    if not id2label:
        return {i: f"LABEL_{i}" for i in range(num_labels)}
    try:
        labels = {int(k): str(v) for k, v in id2label.items()}
    except ValueError:
        raise ValueError(f"TaskConfig.id2label's keys must be label indices, got {sorted(map(str, id2label))}") \
            from None
    if sorted(labels) != list(range(num_labels)):
        raise ValueError(f"TaskConfig.id2label must name labels 0..{num_labels - 1} (num_labels={num_labels}), got "
                         f"indices {sorted(labels)}")
    return dict(sorted(labels.items()))


def task_config(value: object, owner: str, model_dropout: float, pooling: Pooling) -> TaskConfig | None:
    """A model config's ``task`` field (a TaskConfig, a dict of its fields, or None), resolved for the model."""
    return None if value is None else sub_config(TaskConfig, value, f"{owner}.task").resolved(model_dropout, pooling)


def last_tokens(input_ids: Tensor, pad_id: int | None) -> Tensor:
    """(B,) the index of each row's last token that is not ``pad_id``, as transformers picks it (0 for a row of
    padding only); the last index when ``pad_id`` is None, which needs a batch of one row."""
    b, n = input_ids.shape
    if pad_id is None:
        if b != 1:
            raise ValueError(f"a sequence-classification head with pad_id=None classifies each row at its last "
                             f"token, so it takes one row at a time (as transformers); got {b} rows: set "
                             f"TaskConfig.pad_id (config.json's pad_token_id)")
        return torch.full((1,), n - 1, dtype=torch.long, device=input_ids.device)
    positions = torch.arange(n, device=input_ids.device)
    return (positions * (input_ids != pad_id)).argmax(-1)  # the rightmost non-pad position


class TaskHead(nn.Module):
    """The head of a :class:`TaskConfig`: ``dense`` (the poolings "roberta", "electra", "distilbert" only) and
    ``out`` (dim -> num_labels). ``forward(x, pooled=None, input_ids=None)``: x (B, N, dim), the last hidden
    states; ``pooled`` (B, dim), the model's pooler output (pooling "pooler"); ``input_ids`` (B, N) (pooling
    "last_token"). Returns the logits (see the module docstring for their shapes)."""

    def __init__(self, config: TaskConfig, dim: int):
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout or 0.0)
        self.dense = Linear(dim, dim) if config.pooling in _ACTIVATIONS else None
        self.out = Linear(dim, config.num_labels, bias=config.pooling != "last_token")

    def forward(self, x: Tensor, *, pooled: Tensor | None = None, input_ids: Tensor | None = None) -> Tensor:
        c = self.config
        if c.kind != "sequence_classification":
            return self.out(self.dropout(x))  # (B, N, num_labels)
        if c.pooling == "last_token":
            if input_ids is None:
                raise ValueError("pooling='last_token' needs the input_ids, to find each row's last token")
            return self.out(x[torch.arange(x.shape[0], device=x.device), last_tokens(input_ids, c.pad_id)])
        if c.pooling == "pooler":
            if pooled is None:
                raise ValueError("pooling='pooler' needs the model's pooler output")
            return self.out(self.dropout(pooled))  # (B, num_labels)
        first = x[:, 0]  # (B, dim)
        if c.pooling in _DROPOUT_FIRST:
            first = self.dropout(first)
        assert self.dense is not None and c.pooling is not None  # built for these poolings
        return self.out(self.dropout(_ACTIVATIONS[c.pooling](self.dense(first))))


def task_loss(config: TaskConfig, logits: Tensor, labels: Tensor) -> Tensor:
    """The loss of ``logits`` (the head's output) against ``labels``, as transformers computes it for the task."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
    labels = labels.to(logits.device)
    if config.kind == "token_classification":
        return F.cross_entropy(logits.reshape(-1, config.num_labels).float(), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)
    if config.kind == "question_answering":
        return _span_loss(logits, labels)
    problem = config.problem_type
    if problem is None:  # transformers' inference (it then stores it in its config; this decides per batch)
        integer = labels.dtype in (torch.long, torch.int)
        problem = "regression" if config.num_labels == 1 else \
            "single_label_classification" if integer else "multi_label_classification"
    if problem == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1), ignore_index=IGNORE_INDEX)
    return F.binary_cross_entropy_with_logits(logits, labels)


def _span_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Question answering: logits (B, N, 2), labels (B, 2) of start and end positions; positions outside [0, N)
    are clamped to N and ignored (transformers' rule)."""
    if labels.dim() != 2 or labels.shape[-1] != 2:
        raise ValueError(f"question answering's labels must be (B, 2): each row's start and end position, got shape "
                         f"{tuple(labels.shape)}")
    n = logits.shape[1]
    positions = labels.clamp(0, n)
    start = F.cross_entropy(logits[..., 0], positions[:, 0], ignore_index=n)
    end = F.cross_entropy(logits[..., 1], positions[:, 1], ignore_index=n)
    return (start + end) / 2


def masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of masked-LM logits (B, N, vocab) against labels (B, N), -100 = not predicted."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1),
                           ignore_index=IGNORE_INDEX)


__all__ = ["Task", "ProblemType", "Pooling", "TaskConfig", "TaskHead", "task_config", "task_loss", "masked_lm_loss",
           "last_tokens", "IGNORE_INDEX"]
