"""Record attention probabilities through ``MultiHeadAttention``'s hook point, for any model and any kernel.

The hook hands over q, k and the attention options (an ``AttentionCall``), never a weights tensor: kernels
such as ``tiled`` and ``sdpa`` never build one. The recorder recomputes exactly the layers and heads that
were asked for, with the reference kernel, so a long forward builds no N x N map nobody requested.

    >>> with capture(model, layers=[0, 5], heads=[3]) as rec:
    ...     model(ids, attention_mask)
    >>> rec.maps[5].shape          # (B, 1, N, N); rec.maps[1] is None

A ``transformers`` model running with ``attn_implementation="attnkit"`` (``attnkit.integrations.transformers``)
is captured the same way, through that integration's own hook point on each of its attention modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..functional.checks import check_index
from ..integrations import transformers as hf
from ..nn.attention import AttentionCall, MultiHeadAttention

Reduce = Callable[[int, Tensor], Any]


def _own_layers(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


def multi_head_layers(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    """Every ``MultiHeadAttention`` of ``model`` with its name, in ``named_modules()`` order.

    This order numbers the layers for ``capture``, ``head_importance`` and ``prune_heads``; in every
    attnkit model it is the forward order (an encoder-decoder: encoder layers, then each decoder layer's
    self- and cross-attention).
    """
    found = _own_layers(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no attnkit MultiHeadAttention layer to inspect")
    return found


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The attention layers ``capture`` records, with their names, in ``named_modules()`` order.

    An attnkit model's ``MultiHeadAttention`` layers (:func:`multi_head_layers`); for a ``transformers`` model
    running with an attention implementation registered by ``attnkit.integrations.transformers.register``, its
    attention modules (``attention_modules``: e.g. each ``LlamaAttention``, each ``BertSelfAttention``).
    """
    found: list[tuple[str, nn.Module]] = [*_own_layers(model)]
    if not found and hf.uses_attnkit(model):
        found = hf.attention_modules(model)
    if found:
        return found
    if not hf.uses_attnkit(model) and hasattr(getattr(model, "config", None), "_attn_implementation"):
        raise ValueError(f"{type(model).__name__} runs with attn_implementation="
                         f"{model.config._attn_implementation!r}, whose attention maps attnkit cannot see: call "
                         f"attnkit.integrations.transformers.register() and model.set_attn_implementation('attnkit')")
    raise ValueError(f"{type(model).__name__} has no attnkit MultiHeadAttention layer to inspect")


def _num_heads(module: nn.Module) -> int:
    """Query heads of an attention layer: attnkit's own, or a transformers module's config."""
    return module.num_heads if isinstance(module, MultiHeadAttention) else module.config.num_attention_heads


def _attach(module: nn.Module, recorder: Callable[[nn.Module, AttentionCall], None]) -> RemovableHandle:
    return module.attach(recorder) if isinstance(module, MultiHeadAttention) else hf.attach(module, recorder)


def _indices(name: str, values: Sequence[int] | None, limit: int, what: str) -> list[int] | None:
    """Validated, sorted, distinct indices in [0, limit); None stays None (= all)."""
    if values is None:
        return None
    if isinstance(values, int):
        values = [values]
    for v in values:
        check_index(name, v, limit, "the model", what)
    if not values:
        raise ValueError(f"{name} is empty; pass None for all {what}")
    return sorted(set(values))


class Capture:
    """The maps one ``capture`` context recorded.

    Attributes:
        names: each attention layer's module name, in layer order.
        maps: one entry per attention layer: the probabilities (B, h, Nq, Nk) of its latest call, where h
            counts the requested heads (``heads``, in ascending order; all by default); ``reduce(layer, map)``
            instead when a ``reduce`` was given; None for layers not requested or not called.
        calls: how many times each layer ran inside the context (generation runs each layer once per step;
            ``maps`` keeps the latest).
        heads: the recorded head indices per layer (None = all of that layer's heads).
        causal: per requested layer, whether its latest call was causal (``AttentionCall.causal``; a ring
            cache's calls carry their causality in the mask and read False); None for layers not requested or
            not called.
    """

    def __init__(self, names: list[str], layers: list[int] | None, heads: list[int] | None,
                 reduce: Reduce | None):
        self.names = names
        self.layers = set(range(len(names))) if layers is None else set(layers)
        self.heads = [heads if i in self.layers else None for i in range(len(names))]
        self.maps: list[Any] = [None] * len(names)
        self.calls = [0] * len(names)
        self.causal: list[bool | None] = [None] * len(names)
        self._reduce = reduce

    def _recorder(self, layer: int) -> Callable[[nn.Module, AttentionCall], None]:
        def record(module: nn.Module, call: AttentionCall) -> None:
            self.calls[layer] += 1
            if layer in self.layers:
                with torch.no_grad():
                    probs = call.weights(self.heads[layer])  # the training-mode maps are before dropout
                self.maps[layer] = probs if self._reduce is None else self._reduce(layer, probs)
                self.causal[layer] = call.causal
        return record

    def __repr__(self) -> str:
        shapes = [None if m is None else tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                  for m in self.maps]
        return f"Capture({len(self.names)} layers, maps={shapes})"


@contextmanager
def capture(model: nn.Module, layers: Sequence[int] | int | None = None, heads: Sequence[int] | int | None = None,
            *, reduce: Reduce | None = None) -> Iterator[Capture]:
    """Record the attention probabilities of ``model``'s forward passes inside the ``with`` block.

    Args:
        model: any module built from ``attnkit.nn.MultiHeadAttention`` (every attnkit model), or a
            ``transformers`` model running with ``attn_implementation="attnkit"``; any kernel.
        layers: attention-layer indices to record (see :func:`attention_layers`); None = all.
        heads: head indices to record in each requested layer; None = all. Only these are computed.
        reduce: ``reduce(layer, probs) -> anything`` applied to each map as it is recorded, to keep less
            than (B, h, N, N) per layer (e.g. one query's row, or a pooled map); ``maps`` holds its results.

    Yields:
        A :class:`Capture`; its ``maps`` are filled as the model runs. The hooks are removed on exit,
        also when the block raises.
    """
    found = attention_layers(model)
    layers = _indices("layer", layers, len(found), "attention layers")
    smallest = min(_num_heads(m) for i, (_, m) in enumerate(found) if layers is None or i in layers)
    heads = _indices("head", heads, smallest, "heads in the requested layers")
    record = Capture([name for name, _ in found], layers, heads, reduce)
    handles = [_attach(m, record._recorder(i)) for i, (_, m) in enumerate(found)]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()
