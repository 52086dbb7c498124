"""Head importance and head pruning (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?").

Layer ``i`` is the i-th ``MultiHeadAttention`` of a model in ``named_modules()`` order (``attention_layers``);
head ``h`` of a layer is its h-th query head. Importance is the expected |∂L/∂ξ_h| for a gate ξ_h = 1 on each
head's output; pruning removes heads physically, so that the smaller model runs faster and has fewer weights.

    >>> scores = head_importance(model, batches, lambda m, b: loss(m(b.x), b.y))   # (layers, max heads)
    >>> order = scores.nan_to_num(float("inf")).flatten().argsort()                # least important first
    >>> prune_heads(model, {0: [2, 5], 3: [1]})
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..functional.checks import check_index
from ..nn.attention import MultiHeadAttention
from ..nn.positions import ALiBiPositions, RelativePositions, RotaryEmbedding, T5RelativeBias
from .capture import attention_layers, multi_head_layers

LossFn = Callable[[nn.Module, Any], Tensor]


# --------------------------------------------------------------------------------------------------
# Importance: gates on each head's output, differentiated


def _gate_hook(gate: Tensor) -> Callable[[nn.Module, tuple], tuple]:
    """A forward pre-hook for ``out_proj`` that scales head h of its input by ``gate[h]``."""
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]  # (..., H*Dv): the heads side by side, as MultiHeadAttention merges them
        gated = x.unflatten(-1, (gate.shape[0], -1)) * gate.to(x.dtype)[:, None]  # (..., H, Dv)
        return (gated.flatten(-2), *args[1:])
    return hook


@contextmanager
def _gated(layers: list[tuple[str, MultiHeadAttention]]) -> Iterator[list[Tensor]]:
    """One gate of ones (H,) per layer, multiplied onto each head's output; the hooks go on exit."""
    gates = [torch.ones(m.num_heads, dtype=m.out_proj.weight.dtype, device=m.out_proj.weight.device,
                        requires_grad=True) for _, m in layers]
    handles = [m.out_proj.register_forward_pre_hook(_gate_hook(g)) for (_, m), g in zip(layers, gates)]
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


def _scalar_loss(loss: object) -> Tensor:
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn(model, batch) must return a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1 or not loss.dtype.is_floating_point:
        raise ValueError(f"loss_fn(model, batch) must return a scalar float tensor, got shape "
                         f"{tuple(loss.shape)} and dtype {loss.dtype}")
    if not loss.requires_grad:
        raise ValueError("loss_fn(model, batch) returned a loss that depends on no attention head (no gradient "
                         "flows to them): was it computed under torch.no_grad() or detached?")
    return loss.reshape(())


def _padded(scores: list[Tensor]) -> Tensor:
    """Per-layer (H_i,) scores -> (layers, max H_i), NaN where a layer has fewer heads."""
    out = torch.full((len(scores), max(s.numel() for s in scores)), float("nan"), dtype=torch.float64)
    for i, s in enumerate(scores):
        out[i, : s.numel()] = s
    return out


def head_importance(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, *, normalize: bool = True,
                    progress: bool = False) -> Tensor:
    """Each head's importance I_h = mean over batches of |∂L/∂ξ_h| (Michel et al. 2019, eq. 2).

    A gate ξ_h = 1 multiplies head h's output (each attention layer's input to ``out_proj``, split into its
    H heads), so ∂L/∂ξ_h is the first-order change of the loss if the head were removed; its magnitude,
    averaged over ``batches``, ranks the heads. Per batch this is one forward and one backward pass.

    Args:
        model: any module holding attnkit ``MultiHeadAttention`` layers (numbered as in ``attention_layers``).
        batches: an iterable of batches, each handed to ``loss_fn`` as it is (tensors, tuples, dicts ...).
        loss_fn: ``loss_fn(model, batch) -> scalar loss`` (e.g. the mean cross-entropy of the batch).
        normalize: divide each layer's scores by their L2 norm, as the paper does before comparing heads
            across layers (a layer whose scores are all 0 stays 0).
        progress: print one line per batch to stderr.

    Returns:
        (num_layers, max_heads) float64 on the CPU: ``scores[i, h]`` for head h of layer i; NaN past the
        last head of a layer with fewer heads than ``max_heads``. A layer the loss never reaches scores 0.

    The model is left as found: the gates' hooks are removed (also when ``loss_fn`` raises), the
    parameters' ``.grad`` are untouched (only the gates are differentiated) and the train/eval mode is
    not changed — call ``model.eval()`` first so that dropout does not randomize the scores.

    Equivalent PyTorch, for one layer ``attn`` and one batch::

        gate = torch.ones(attn.num_heads, requires_grad=True)
        hook = attn.out_proj.register_forward_pre_hook(
            lambda mod, args: (args[0].unflatten(-1, (attn.num_heads, -1)).mul(gate[:, None]).flatten(-2),))
        score = torch.autograd.grad(loss_fn(model, batch), gate)[0].abs()
        hook.remove()
    """
    layers = multi_head_layers(model)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
    if not isinstance(batches, Iterable):
        raise TypeError(f"batches must be an iterable of batches (a list, a DataLoader ...), got "
                        f"{type(batches).__name__}")
    totals = [torch.zeros(m.num_heads, dtype=torch.float64) for _, m in layers]
    count = 0
    with _gated(layers) as gates, torch.enable_grad():
        for batch in batches:
            loss = _scalar_loss(loss_fn(model, batch))
            grads = torch.autograd.grad(loss, gates, allow_unused=True)  # only the gates: no .grad is touched
            for total, grad in zip(totals, grads):
                if grad is not None:
                    total += grad.detach().abs().to("cpu", torch.float64)
            count += 1
            if progress:
                print(f"head_importance: batch {count}, loss {loss.item():.4g}", file=sys.stderr, flush=True)
    if count == 0:
        raise ValueError("batches is empty: head_importance needs at least one batch")
    scores = [t / count for t in totals]
    if normalize:
        scores = [s / s.norm().clamp_min(torch.finfo(torch.float64).tiny) for s in scores]
    return _padded(scores)


# --------------------------------------------------------------------------------------------------
# Pruning: validate the whole request, then slice


@dataclass
class _LayerPlan:
    """What one layer keeps: query heads and key/value heads, in their original order."""

    attn: MultiHeadAttention
    keep_q: list[int]
    keep_kv: list[int]


def _slice_parameter(module: nn.Module, name: str, index: Tensor, dim: int) -> None:
    """Replace parameter ``name`` of ``module`` by its entries ``index`` along ``dim`` (a new Parameter)."""
    old = getattr(module, name)
    if old is None:
        return
    new = old.detach().index_select(dim, index.to(old.device)).clone()
    setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))


def _slice_linear(linear: nn.Linear, index: Tensor, *, outputs: bool) -> None:
    """Keep features ``index`` of a Linear: output features (weight rows and bias) or input features."""
    _slice_parameter(linear, "weight", index, dim=0 if outputs else 1)
    if outputs:
        _slice_parameter(linear, "bias", index, dim=0)
    linear.out_features, linear.in_features = linear.weight.shape


def _features(heads: list[int], head_dim: int) -> Tensor:
    """The feature indices (len(heads) * head_dim,) of heads laid out side by side."""
    h = torch.as_tensor(heads, dtype=torch.long)
    return (h[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _slice_alibi(positions: ALiBiPositions, keep: Tensor) -> None:
    positions.slopes = positions.slopes[keep]  # the kept heads keep their own slopes
    positions.num_heads = len(keep)


def _slice_t5(positions: T5RelativeBias, keep: Tensor) -> None:
    _slice_parameter(positions.embedding, "weight", keep, dim=1)  # (num_buckets, H)
    positions.embedding.embedding_dim = positions.num_heads = len(keep)


_SLICE_POSITIONS: dict[type, Callable[[Any, Tensor], None]] = {ALiBiPositions: _slice_alibi,
                                                                T5RelativeBias: _slice_t5}


_HEAD_AGNOSTIC = (type(None), RelativePositions, RotaryEmbedding)  # exact types: nothing stored per head


def _check_positions(plans: dict[int, _LayerPlan], layers: list[tuple[str, MultiHeadAttention]]) -> None:
    """Each pruned layer's positions must be sliceable, and a per-head scheme shared by several layers must
    lose the same heads in all of them (it is sliced once)."""
    for i, plan in plans.items():
        positions = plan.attn.positions
        if type(positions) not in _HEAD_AGNOSTIC and type(positions) not in _SLICE_POSITIONS:
            raise ValueError(f"layer {i} uses positions {type(positions).__name__}, which prune_heads cannot "
                             f"slice per head (it knows {', '.join(t.__name__ for t in _SLICE_POSITIONS)} and "
                             f"head-independent RotaryEmbedding)")
        if type(positions) not in _SLICE_POSITIONS:
            continue
        sharing = [j for j, (_, m) in enumerate(layers) if m.positions is positions]
        keeps = {j: plans[j].keep_q if j in plans else list(range(layers[j][1].num_heads)) for j in sharing}
        if len({tuple(k) for k in keeps.values()}) > 1:
            raise ValueError(f"layers {sharing} share one {type(positions).__name__} (per-head position "
                             f"parameters): prune the same heads in all of them, or none")


def _head_list(layer: int, attn: MultiHeadAttention, values: object) -> list[int]:
    """Validated head indices of one layer: ints in range, distinct, not every head."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"heads[{layer}] must be a list of head indices, got {type(values).__name__}")
    heads = list(values)
    for h in heads:
        check_index(f"heads[{layer}]: head", h, attn.num_heads, f"layer {layer}", "heads")
    repeated = sorted({h for h in heads if heads.count(h) > 1})
    if repeated:
        raise ValueError(f"heads[{layer}] lists head(s) {repeated} more than once")
    if len(heads) == attn.num_heads:
        raise ValueError(f"heads[{layer}] would remove all {attn.num_heads} heads of layer {layer}; at least one "
                         f"must stay (to drop a layer, remove the layer itself)")
    return heads


def _plan_layer(layer: int, attn: MultiHeadAttention, heads: list[int]) -> _LayerPlan:
    """Which heads stay; a key/value head goes only with its whole group of query heads."""
    group = attn.num_heads // attn.num_kv_heads  # query heads per key/value head, contiguous
    removed = set(heads)
    kept = [[h for h in range(g * group, (g + 1) * group) if h not in removed] for g in range(attn.num_kv_heads)]
    sizes = sorted({len(k) for k in kept if k})
    if len(sizes) > 1:
        raise ValueError(
            f"heads[{layer}] = {sorted(removed)} would leave key/value groups of unequal sizes {sizes} in layer "
            f"{layer} (num_heads={attn.num_heads}, num_kv_heads={attn.num_kv_heads}: query heads "
            f"{group}g..{group}g+{group - 1} share key/value head g); grouped-query attention needs equal groups: "
            f"remove whole groups, or the same number of heads from every group")
    return _LayerPlan(attn, [h for k in kept for h in k], [g for g, k in enumerate(kept) if k])


def _apply(plan: _LayerPlan) -> None:
    attn, d = plan.attn, plan.attn.head_dim
    q_index, kv_index = _features(plan.keep_q, d), _features(plan.keep_kv, d)
    _slice_linear(attn.q_proj, q_index, outputs=True)
    _slice_linear(attn.out_proj, q_index, outputs=False)
    if len(plan.keep_kv) < attn.num_kv_heads:
        _slice_linear(attn.k_proj, kv_index, outputs=True)
        _slice_linear(attn.v_proj, kv_index, outputs=True)
    attn.num_heads, attn.num_kv_heads = len(plan.keep_q), len(plan.keep_kv)


def prune_heads(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> nn.Module:
    """Remove query heads for good: ``heads[i]`` lists the heads of layer ``i`` (``attention_layers`` order)
    to delete, by their current indices; returns ``model``, changed in place.

    Each pruned head's rows leave ``q_proj`` (weight and bias) and its columns leave ``out_proj``; with
    ``num_kv_heads == num_heads`` its key and value rows go too. Under grouped-query attention (query heads
    ``g*G .. g*G+G-1`` share key/value head g) a key/value head goes only with its whole group, and the
    groups left must be of equal size. Per-head position parameters go with their heads (ALiBi slopes,
    T5 relative-bias columns); ``num_heads`` and ``num_kv_heads`` are updated. The remaining heads compute
    exactly what they did: the output equals the unpruned layer's with the pruned heads' output set to zero.

    Everything is checked before anything changes: a layer or head out of range, a head listed twice, all
    heads of a layer, unequal key/value groups, or a per-head position scheme shared by layers pruned
    differently raise ``ValueError`` (``TypeError`` for non-int indices) and leave the model as it was.

    Mind:
        - The pruned projections get new ``Parameter`` objects: build optimizers after pruning.
        - KV caches filled before pruning hold the old heads: start new ones.
        - A model's ``config`` keeps the head count it was built with (``num_heads`` — ``config.attention.num_heads``
          for a GPT — sets every layer alike; a pruned model's layers differ and keep their head size, which no
          config field can say). The config therefore describes the model before pruning: a
          pruned model cannot be rebuilt from its config, nor saved with ``attnkit.hub.save`` and loaded
          again. Keep it with ``torch.save(model)``, or save the unpruned model and re-apply the pruning.

    Example:
        >>> model = GPT(GPTConfig.preset("nano"))
        >>> prune_heads(model, {0: [1, 3], 2: [0]}).layers[0].attn.num_heads
        2
    """
    layers = multi_head_layers(model)
    if not isinstance(heads, Mapping):
        raise TypeError(f"heads must be a dict {{layer index: [head indices]}}, got {type(heads).__name__}")
    plans: dict[int, _LayerPlan] = {}
    for layer, values in heads.items():
        check_index("heads key: layer", layer, len(layers), type(model).__name__, "attention layers")
        attn = layers[layer][1]
        removed = _head_list(layer, attn, values)
        if removed:
            plans[layer] = _plan_layer(layer, attn, removed)
    _check_positions(plans, layers)
    with torch.no_grad():
        sliced: set[int] = set()
        for plan in plans.values():
            positions = plan.attn.positions
            if type(positions) in _SLICE_POSITIONS and id(positions) not in sliced:
                _SLICE_POSITIONS[type(positions)](positions, torch.as_tensor(plan.keep_q, dtype=torch.long))
                sliced.add(id(positions))
            _apply(plan)
    return model


__all__ = ["attention_layers", "head_importance", "prune_heads"]
