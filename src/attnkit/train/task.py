"""What the loop trains: a :class:`Task` (a model, examples by index, a loss), and the order of the examples.

The order is a pure function of the seed and the step, never a stateful iterator: step ``s`` reads the
examples at positions ``s * batch_size ...`` of an endless stream of shuffled epochs, so a run resumed at
step ``s`` reads exactly what the uninterrupted run read, whatever the number of processes.

    >>> task = Task(model, size=len(xs), batch=lambda idx: (xs[idx], ys[idx]),
    ...             loss=lambda model, b: Loss(F.cross_entropy(model(b[0]), b[1], reduction="sum"), len(b[1])))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..distributed import ContextParallel
from ..functional.checks import check_int


@dataclass
class Loss:
    """A summed loss and how many items it sums over (examples, or tokens that count): the loop divides by the
    count over the whole global batch, so that splitting the batch over processes changes nothing."""

    total: Tensor  # scalar, the sum of the per-item losses
    count: int | Tensor  # the number of items summed


@dataclass
class Task:
    """A model, ``size`` training examples reached by index, and what to compute on a batch of them.

    ``batch(indices)`` builds a batch from a (n,) long tensor of example indices; ``loss(model, batch)``
    returns a :class:`Loss`; ``evaluate(model)`` (optional) returns named numbers, logged as evaluation rows.
    ``unit`` names what the progress bar counts per second ("samples", or "tokens" with ``items``).

    ``split(batch, setting)`` (optional) makes the task trainable with context parallelism: it returns this
    process's part of every sequence in ``batch`` — ``setting.shard`` of the tokens and targets, and
    ``setting.positions`` of them for the model — which ``loss`` then takes; the loop has already set ``setting``
    on the model's attention layers (``attnkit.nn.use_context_parallel``). ``loss`` sums over this part's items
    only and counts them; the loop sums over the processes.
    """

    model: nn.Module
    size: int
    batch: Callable[[Tensor], Any]
    loss: Callable[[nn.Module, Any], Loss]
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    unit: str = "samples"
    items: Callable[[Any], int] | None = None  # the batch's count of ``unit`` (default: its examples)
    split: Callable[[Any, ContextParallel], Any] | None = None  # this process's part of each sequence (see above)

    def __post_init__(self) -> None:
        check_int("Task.size", self.size, minimum=1)
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"Task.model must be a torch.nn.Module, got {type(self.model).__name__}")


class Order:
    """The example indices of every step: epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._epochs: dict[int, Tensor] = {}

    def _epoch(self, epoch: int) -> Tensor:
        if epoch not in self._epochs:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epochs = {epoch: torch.randperm(self.size, generator=generator)}  # one epoch kept at a time
        return self._epochs[epoch]

    def step(self, step: int) -> Tensor:
        """(batch_size,) long: the global batch of optimizer step ``step`` (0-based)."""
        start = step * self.batch_size
        positions = torch.arange(start, start + self.batch_size)
        parts = [self._epoch(int(e))[positions[positions // self.size == e] % self.size]
                 for e in torch.unique(positions // self.size)]
        return torch.cat(parts)



def shard(indices: Tensor, replica: int, replicas: int, accumulation: int) -> list[Tensor]:
    """This process's micro-batches of a global batch: data-parallel replica r (rank r, or context-parallel group
    r) takes the r-th contiguous part, cut in ``accumulation`` equal pieces."""
    local = indices.chunk(replicas)[replica]
    return list(local.chunk(accumulation))


__all__ = ["Loss", "Task", "Order", "shard"]
