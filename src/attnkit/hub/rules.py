"""How checkpoint tensors map onto attnkit parameters: one :class:`Rule` per checkpoint tensor, and the two
directions built from a list of them — ``to_ours`` (check everything, then convert) and ``to_checkpoint``.

A rule pairs one checkpoint tensor with one or more attnkit parameters and says how to get from one side
to the other: a plain copy (``rename``), a transpose (GPT-2's ``Conv1D`` stores weights as (in, out)),
a split along output features (GPT-2's fused ``c_attn`` -> q, k, v), or dropping leading rows (RoBERTa's
position table starts at padding_idx + 1).

    >>> rule = fused("h.0.attn.c_attn.weight", ("layers.0.attn.q_proj.weight", "layers.0.attn.k_proj.weight",
    ...              "layers.0.attn.v_proj.weight"), transpose=True)
    >>> q, k, v = rule.split(torch.randn(768, 3 * 768))       # each (768, 768), (out, in)
    >>> rule.join((q, k, v)).shape
    torch.Size([768, 2304])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import CheckpointError

Split = Callable[[Tensor], tuple[Tensor, ...]]
Join = Callable[[tuple[Tensor, ...]], Tensor]


def _identity(t: Tensor) -> tuple[Tensor, ...]:
    return (t,)


def _single(ts: tuple[Tensor, ...]) -> Tensor:
    return ts[0]


@dataclass(frozen=True)
class Rule:
    """One checkpoint tensor <-> the attnkit parameters ``ours`` (``split`` and ``join`` are inverses)."""

    hf: str  # the checkpoint's name, without the base model's prefix when in_base
    ours: tuple[str, ...]  # attnkit state_dict names
    split: Split = _identity  # checkpoint tensor -> one tensor per name in ours
    join: Join = _single  # our tensors -> the checkpoint tensor
    in_base: bool = True  # part of the base model, so task checkpoints nest it under a prefix ("bert.")
    optional: bool = False  # may be absent from a checkpoint; the parameters then keep their initialization


def rename(hf: str, ours: str, *, in_base: bool = True, optional: bool = False) -> Rule:
    """The same tensor under another name."""
    return Rule(hf, (ours,), in_base=in_base, optional=optional)


def transposed(hf: str, ours: str, *, in_base: bool = True, optional: bool = False) -> Rule:
    """A Conv1D weight (in, out) <-> a Linear weight (out, in)."""
    return Rule(hf, (ours,), lambda t: (t.t(),), lambda ts: ts[0].t(), in_base=in_base, optional=optional)


def fused(hf: str, ours: tuple[str, ...], *, transpose: bool, sizes: tuple[int, ...] | None = None) -> Rule:
    """One tensor holding several projections side by side along the output features, e.g. GPT-2's
    ``c_attn`` (dim, 3 * dim) = [q | k | v]; its bias (3 * dim,) splits the same way. ``sizes``: each part's
    output features when they differ (Phi-3's qkv_proj with fewer key/value heads); default equal parts."""
    def split(t: Tensor) -> tuple[Tensor, ...]:
        whole = t.t() if transpose else t
        # each (out, in) or (out,)
        return whole.split(list(sizes), dim=0) if sizes is not None else whole.chunk(len(ours), dim=0)

    def join(ts: tuple[Tensor, ...]) -> Tensor:
        whole = torch.cat(ts, dim=0)  # (n * out, in) or (n * out,)
        return whole.t() if transpose else whole

    return Rule(hf, ours, split, join)


def offset_rows(hf: str, ours: str, rows: int) -> Rule:
    """A table whose first ``rows`` rows attnkit does not use (RoBERTa's positions count from
    padding_idx + 1); saving puts zero rows back in front."""
    def join(ts: tuple[Tensor, ...]) -> Tensor:
        t = ts[0]
        return torch.cat((t.new_zeros(rows, *t.shape[1:]), t), dim=0)

    return Rule(hf, (ours,), lambda t: (t[rows:],), join)


def causal_lm_output(*, task: bool, tied: bool) -> tuple[list[Rule], list[str]]:
    """The rules and the ignored-name patterns of a causal LM checkpoint's output: a sequence classifier's
    ``score`` (attnkit's task head), a head tied to the embedding (the checkpoint's ``lm_head`` a copy, ignored),
    or an untied ``lm_head``."""
    if task:
        return [rename("score.weight", "task_head.out.weight", in_base=False)], []
    if tied:
        return [], [r"^lm_head\.weight$"]
    return [rename("lm_head.weight", "head.weight", in_base=False)], []


@dataclass(frozen=True)
class Layout:
    """Everything needed to move between one model and its checkpoint."""

    rules: list[Rule]
    ignore: re.Pattern[str]  # checkpoint names that hold no weights of the model (buffers, skipped heads)
    base_prefix: str  # the prefix task checkpoints put before base-model names ("bert.", "transformer.")
    save_prefix: str  # the prefix ``save`` writes (what the matching transformers class expects)


def _checkpoint_name(rule: Rule, prefix: str) -> str:
    return prefix + rule.hf if rule.in_base else rule.hf


def expected_shapes(layout: Layout, params: dict[str, Tensor], prefix: str) -> dict[str, tuple[int, ...]]:
    """The checkpoint tensor shapes the model ``params`` implies (computed on the meta device: no copies)."""
    shapes = {}
    for rule in layout.rules:
        metas = tuple(torch.empty(params[name].shape, device="meta") for name in rule.ours)
        shapes[_checkpoint_name(rule, prefix)] = tuple(rule.join(metas).shape)
    return shapes


def _prefix(layout: Layout, names: Iterable[str]) -> str:
    """The base prefix when the checkpoint uses it (a task checkpoint: "bert.embeddings..."), else ""."""
    return layout.base_prefix if any(n.startswith(layout.base_prefix) for n in names) else ""


def check_shapes(shapes: Mapping[str, Sequence[int]], layout: Layout, params: dict[str, Tensor], source: str,
                 problems: Sequence[str] = ()) -> None:
    """Compare a checkpoint's tensor ``shapes`` with those the model ``params`` imply (meta tensors will do:
    only shapes are read). Raises one :class:`CheckpointError` listing every missing, unexpected and
    wrong-shaped tensor, with ``problems`` found before; returns when there is nothing to list."""
    prefix = _prefix(layout, shapes)
    expected = expected_shapes(layout, params, prefix)
    optional = {_checkpoint_name(r, prefix) for r in layout.rules if r.optional}
    missing = [n for n in expected if n not in shapes and n not in optional]
    unexpected = [n for n in shapes if n not in expected and not layout.ignore.search(n)]
    wrong = [(n, shape, tuple(shapes[n])) for n, shape in expected.items()
             if n in shapes and tuple(shapes[n]) != shape]
    if problems or missing or unexpected or wrong:
        raise CheckpointError(source, missing=missing, unexpected=unexpected, wrong_shapes=wrong,
                              problems=list(problems))


def to_ours(state: dict[str, Tensor], layout: Layout, params: dict[str, Tensor],
            source: str) -> tuple[dict[str, Tensor], list[str]]:
    """Checkpoint ``state`` -> attnkit tensors by parameter name, after checking every name and shape
    (:func:`check_shapes`). Returns the converted tensors and the checkpoint names of optional tensors that
    were absent.
    """
    check_shapes({n: t.shape for n, t in state.items()}, layout, params, source)
    prefix = _prefix(layout, state)
    ours: dict[str, Tensor] = {}
    absent = []
    for rule in layout.rules:
        name = _checkpoint_name(rule, prefix)
        if name not in state:
            absent.append(name)
            continue
        ours.update(zip(rule.ours, rule.split(state[name])))
    return ours, absent


def to_checkpoint(layout: Layout, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """attnkit ``params`` -> checkpoint tensors under the names ``layout.save_prefix`` implies."""
    with torch.no_grad():
        return {_checkpoint_name(rule, layout.save_prefix): rule.join(tuple(params[n] for n in rule.ours))
                for rule in layout.rules}


__all__ = ["Rule", "Layout", "causal_lm_output", "rename", "transposed", "fused", "offset_rows", "expected_shapes",
           "check_shapes", "to_ours", "to_checkpoint"]
