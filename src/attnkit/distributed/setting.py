"""``ContextParallel``: the setting that makes a model's attention layers run on sequence shards.

    >>> cp = ContextParallel(layout="zigzag")                 # the default process group, ring attention
    >>> attnkit.nn.use_context_parallel(model, cp)             # every self-attention layer of the model
    >>> ids_part = cp.shard(ids, dim=1)                        # (B, N/P) this process's tokens
    >>> out = model(ids_part, position_ids=cp.positions(ids_part))  # this process's part of model(ids)

Each layer's attention then sees the whole sequence (``attention`` below); everything else in a Transformer is
per token, so the forward and backward of the shards are those of the whole sequence. The gradients of the
weights are each process's share: sum them over the group (DDP does) to get the whole sequence's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .attention import Strategy, attention, check_strategy
from .comm import Group, group_size
from .layout import LayoutName, check_layout, shard


@dataclass(frozen=True)
class ContextParallel:
    """Where and how attention is split: the process ``group`` (None = the default one), the ``layout`` of the
    sequence over its processes and the ``strategy`` (ring or Ulysses)."""

    group: Group = None
    layout: LayoutName = "zigzag"
    strategy: Strategy = "ring"

    def __post_init__(self) -> None:
        check_layout(self.layout)  # the errors attention() gives, at construction
        check_strategy(self.strategy)

    def shard(self, x: Tensor, dim: int = 1) -> Tensor:
        """This process's part of the whole ``x`` along ``dim`` (default 1: the tokens of (B, N) ids)."""
        return shard(x, layout=self.layout, group=self.group, dim=dim)

    def positions(self, ids_part: Tensor) -> Tensor:
        """(B, N/P) the global positions of this process's tokens (``position_ids`` for the model)."""
        b, n = ids_part.shape[:2]
        whole = torch.arange(n * group_size(self.group), device=ids_part.device)
        return self.shard(whole, dim=0).expand(b, n)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, **options: Any) -> Tensor:
        """``attnkit.distributed.attention`` with this setting (the options as ``attnkit.attention``'s)."""
        return attention(q, k, v, group=self.group, strategy=self.strategy, layout=self.layout, **options)


__all__ = ["ContextParallel"]
