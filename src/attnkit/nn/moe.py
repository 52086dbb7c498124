"""Mixture of experts: a token-choice top-k router over feed-forward experts (Switch Transformer, Fedus et
al. 2021; Mixtral, Jiang et al. 2024).

Each token picks its ``top_k`` most probable experts; its output is the sum of those experts' outputs,
weighted by their router probabilities renormalised to sum to 1. An expert takes at most ``capacity``
token slots per call; slots beyond that are dropped in token order (earlier tokens keep their place) and
contribute nothing. Only the tokens routed to an expert go through it.

Smallest part first: capacity -> routing (a pure function) -> load-balancing loss -> the module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..functional.checks import check_int, is_positive_finite
from .activations import GATED, PLAIN, Activation, check_activation


def expert_capacity(tokens: int, top_k: int, num_experts: int, capacity_factor: float | None) -> int | None:
    """Token slots per expert: ``ceil(capacity_factor * tokens * top_k / num_experts)``; None = unlimited.

    >>> expert_capacity(10, 2, 4, 1.25)
    7
    """
    if capacity_factor is None:
        return None
    return math.ceil(capacity_factor * tokens * top_k / num_experts)


def check_routing(num_experts: int, top_k: int, capacity_factor: float | None, *,
                  names: tuple[str, str, str] = ("num_experts", "top_k", "capacity_factor")) -> None:
    """Raise unless 1 <= top_k <= num_experts (ints) and capacity_factor is None or a finite number > 0;
    the messages use ``names`` (e.g. a config's field names). An infinite factor would only fail in forward."""
    experts_name, top_k_name, capacity_name = names
    check_int(experts_name, num_experts)
    check_int(top_k_name, top_k)
    if top_k > num_experts:
        raise ValueError(f"{top_k_name} must be between 1 and {experts_name}={num_experts}, got {top_k}")
    if capacity_factor is not None and not is_positive_finite(capacity_factor):
        raise ValueError(f"{capacity_name} must be None (no limit) or a finite number > 0, got {capacity_factor!r}")


@dataclass
class Routing:
    """Where each token goes: ``experts``, ``gates`` and ``keep`` are all (T, top_k), choice 0 = most probable."""

    experts: Tensor  # (T, k) long: the chosen experts, distinct within a row
    gates: Tensor  # (T, k): their probabilities renormalised to sum to 1 over the row
    keep: Tensor  # (T, k) bool: False where the slot was dropped because its expert was full


def route(probs: Tensor, top_k: int, capacity: int | None = None) -> Routing:
    """Top-k routing with capacity drops in token order.

    probs (T, E) router probabilities. A slot (token t, choice j) is kept when fewer than ``capacity``
    earlier tokens chose the same expert. Equivalent loop::

        used = [0] * E
        for t in range(T):
            for j in range(top_k):
                e = experts[t, j]; keep[t, j] = used[e] < capacity; used[e] += 1

    >>> r = route(torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]]), top_k=1, capacity=1)
    >>> r.experts.flatten().tolist(), r.keep.flatten().tolist()
    ([0, 0, 1], [True, False, True])
    """
    top_probs, experts = torch.topk(probs, top_k, dim=-1)  # (T, k) each
    gates = top_probs / top_probs.sum(-1, keepdim=True)  # Mixtral: renormalise over the chosen k
    if capacity is None:
        return Routing(experts, gates, torch.ones_like(experts, dtype=torch.bool))
    flat = experts.reshape(-1)  # (T*k,) token-major, so within one expert slots stay in token order
    order = torch.argsort(flat, stable=True)  # slots grouped by expert
    counts = torch.bincount(flat, minlength=probs.shape[-1])  # (E,)
    starts = torch.cumsum(counts, 0) - counts  # (E,) first sorted index of each expert's group
    position = torch.empty_like(flat)
    position[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    return Routing(experts, gates, (position < capacity).view_as(experts))


def load_balancing_loss(probs: Tensor, experts: Tensor, counts: Tensor | None = None) -> Tensor:
    """Switch Transformer auxiliary loss ``E * sum_e f_e * P_e``, a scalar.

    probs (T, E) router probabilities; experts (T, k) chosen experts. f_e is the share of the T*k
    assignments that chose e (before capacity drops), P_e the mean probability of e. It is exactly 1 when
    either f or P is uniform (e.g. a router with zero weights), which is its value at perfect balance;
    imbalance that the router is confident about raises it (up to E). It is not a hard lower bound on one
    batch: f and P are different statistics, and a batch where P leans against f can dip slightly below 1.
    ``counts`` (E,): the assignments per expert, when the caller has them already.
    """
    num_experts = probs.shape[-1]
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    if counts is None:
        counts = torch.bincount(experts.reshape(-1), minlength=num_experts)  # (E,)
    fraction = counts.to(probs.dtype) / experts.numel()  # (E,) sums to 1
    return num_experts * torch.sum(fraction * probs.mean(0))


@dataclass
class MoEStats:
    """What the last ``MoE.forward`` did with its tokens."""

    tokens: int  # tokens routed (all leading dims flattened)
    dropped: int  # token-slot assignments dropped because their expert was full
    expert_counts: Tensor  # (E,) long: assignments per expert before capacity drops
    capacity: int | None  # token slots per expert in that call; None = unlimited


class MoE(nn.Module):
    """Token-choice top-k mixture of feed-forward experts.

    Args:
        dim: model width D (input and output features).
        hidden: each expert's hidden width H.
        num_experts: E.
        top_k: experts per token, 1 <= top_k <= E (1 = Switch, 2 = Mixtral).
        capacity_factor: while training, each expert takes at most ``ceil(capacity_factor * T * top_k / E)``
            of the T tokens' slots per call, dropped in token order; None = no limit. In eval mode no slot is
            dropped (as Mixtral at inference), so a token's output never depends on the other tokens in the
            call: cached decoding equals the full forward, and padding does not change real tokens.
        activation: a FeedForward name: gated "swiglu"/"geglu" (``w2(act(w1 x) * w3 x)``), or "gelu",
                "gelu_tanh", "relu", "silu" (``w2(act(w1 x))``).
        bias: biases on the expert layers (the router never has one).

    ``forward(x (..., D))`` returns ``(output (..., D), aux_loss ())``: the raw Switch load-balancing loss
    (see ``load_balancing_loss``: 1.0 at perfect balance); scale it yourself before adding it to the task
    loss. After each call ``last_stats`` holds a ``MoEStats`` (tokens, dropped slots, per-expert counts).

    >>> moe = MoE(dim=8, hidden=16, num_experts=4, top_k=2)
    >>> y, aux = moe(torch.randn(2, 5, 8))
    >>> y.shape, aux.shape, moe.last_stats.tokens
    (torch.Size([2, 5, 8]), torch.Size([]), 10)
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int = 2, *,
                 capacity_factor: float | None = 1.25, activation: Activation = "swiglu", bias: bool = False):
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden)):
            check_int(name, value)
        check_routing(num_experts, top_k, capacity_factor)
        check_activation(activation)
        self.dim, self.hidden, self.num_experts, self.top_k = dim, hidden, num_experts, top_k
        self.capacity_factor, self.activation = capacity_factor, activation
        self.router = nn.Linear(dim, num_experts, bias=False)
        # Experts stacked along dim 0, stored (in, out) so that an expert is ``x @ w[e]``.
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden))  # (E, D, H)
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))  # (E, H, D)
        self.w3 = nn.Parameter(torch.empty(num_experts, dim, hidden)) if activation in GATED else None
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden)) if bias else None  # (E, H)
        self.b2 = nn.Parameter(torch.empty(num_experts, dim)) if bias else None  # (E, D)
        self.b3 = nn.Parameter(torch.empty(num_experts, hidden)) if bias and self.w3 is not None else None
        self.last_stats: MoEStats | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default per expert: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) on weights and biases."""
        self.router.reset_parameters()
        for weight, b in ((self.w1, self.b1), (self.w2, self.b2), (self.w3, self.b3)):
            if weight is None:
                continue
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            if b is not None:
                nn.init.uniform_(b, -bound, bound)

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on its tokens: x (n, D) -> (n, D)."""
        h = x @ self.w1[e] + (self.b1[e] if self.b1 is not None else 0)  # (n, H)
        if self.w3 is not None:
            h = GATED[self.activation](h) * (x @ self.w3[e] + (self.b3[e] if self.b3 is not None else 0))
        else:
            h = PLAIN[self.activation](h)
        return h @ self.w2[e] + (self.b2[e] if self.b2 is not None else 0)  # (n, D)

    def _dispatch(self, x: Tensor, routing: Routing) -> Tensor:
        """Run each expert on the kept slots routed to it and sum gate-weighted: x (T, D) -> (T, D)."""
        k = self.top_k
        slot_token = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)  # (T*k,)
        slot_expert = routing.experts.reshape(-1)  # (T*k,)
        slot_gate = routing.gates.reshape(-1).to(x.dtype)  # (T*k,)
        kept = routing.keep.reshape(-1).nonzero().squeeze(1)  # (S,) kept slot ids
        kept = kept[torch.argsort(slot_expert[kept], stable=True)]  # grouped by expert
        sizes = torch.bincount(slot_expert[kept], minlength=self.num_experts).tolist()
        out = torch.zeros_like(x)
        for e, slots in enumerate(kept.split(sizes)):
            if slots.numel() == 0:
                continue
            tokens = slot_token[slots]  # (n_e,)
            y = self.expert(e, x.index_select(0, tokens))  # (n_e, D)
            out.index_add_(0, tokens, y * slot_gate[slots, None])
        return out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (..., D) -> (output (..., D), aux_loss ()); sets ``last_stats``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor of shape (..., dim={self.dim}), got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., dim={self.dim}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        flat = x.reshape(-1, self.dim)  # (T, D)
        tokens = flat.shape[0]
        logits = self.router(flat)  # (T, E)
        probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (T, E)
        capacity = expert_capacity(tokens, self.top_k, self.num_experts, self.capacity_factor) \
            if self.training else None
        routing = route(probs, self.top_k, capacity)
        out = self._dispatch(flat, routing)
        counts = torch.bincount(routing.experts.reshape(-1), minlength=self.num_experts)
        dropped = 0 if capacity is None else int((~routing.keep).sum())  # nothing is dropped without a limit
        self.last_stats = MoEStats(tokens=tokens, dropped=dropped, expert_counts=counts, capacity=capacity)
        return out.reshape(x.shape), load_balancing_loss(probs, routing.experts, counts)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, num_experts={self.num_experts}, top_k={self.top_k}, "
                f"capacity_factor={self.capacity_factor}, activation={self.activation!r}")
