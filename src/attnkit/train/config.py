"""What a training run is told: :class:`TrainConfig`, the loop's settings, and the schedule it implies."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..distributed.attention import Strategy, check_strategy
from ..distributed.setting import ContextParallel
from ..distributed.layout import LayoutName, check_layout
from ..functional.checks import check_int, is_positive_finite

Precision = Literal["float32", "bfloat16"]


@dataclass(frozen=True)
class ContextParallelConfig:
    """Context parallelism: every sequence of a batch split over ``size`` processes (``attnkit.distributed``).

    The processes of a run form groups of ``size`` consecutive ranks; a group shares one micro-batch, each process
    holding its part of every sequence (``layout``), and the groups are the data-parallel replicas. ``size`` = the
    number of processes: every process holds a part of every sequence. Whole sequences are
    ``TrainConfig(context_parallel=None)``.
    """

    size: int  # processes that share one sequence, 2 or more; must divide the number of processes
    # ContextParallel's defaults: zigzag balances causal attention's work over the processes; strategy "ulysses" is
    # an all-to-all over heads (the head count must divide by size)
    layout: LayoutName = ContextParallel.layout
    strategy: Strategy = ContextParallel.strategy

    def __post_init__(self) -> None:
        try:
            check_int("ContextParallelConfig.size", self.size, minimum=2)
        except ValueError as error:
            raise ValueError(f"{error} (whole sequences: TrainConfig(context_parallel=None))") from None
        _named("layout", check_layout, self.layout)
        _named("strategy", check_strategy, self.strategy)


def _named(field: str, check: Callable[[object], object], value: object) -> None:
    """``check(value)``'s ValueError naming the field (the distributed checks name their own argument)."""
    try:
        check(value)
    except ValueError as error:
        raise ValueError(f"ContextParallelConfig.{field}: {error}") from None


@dataclass
class TrainConfig:
    """Settings of :func:`attnkit.train.fit`. One step consumes ``batch_size`` examples (the *global* batch:
    split over the data-parallel processes, then into ``accumulation`` micro-batches on each)."""

    steps: int = 1000
    batch_size: int = 64  # examples per optimizer step, over all processes together
    accumulation: int = 1  # micro-batches per step on each process (the gradients are summed)
    lr: float = 1e-3  # peak learning rate, reached after the warm-up
    warmup: int = 0  # steps of linear warm-up from 0 to lr
    min_lr: float = 0.1  # the cosine decay ends at min_lr * lr on the last step
    weight_decay: float = 0.01  # AdamW's, on weight matrices and embeddings only (not norms or biases)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0  # clip the global gradient norm to this; None = no clipping
    precision: Precision = "float32"  # "bfloat16": autocast on CPU and CUDA, weights and optimizer in float32
    seed: int = 0  # the model's initialization, the data order and dropout all follow from it
    log_every: int = 10  # a metrics.jsonl row every this many steps (and the last)
    eval_every: int | None = None  # evaluate every this many steps; None = only at the end
    checkpoint_every: int | None = None  # write DIR/checkpoint.pt every this many steps (and at the end)
    timeout_s: float = 120.0  # a collective that waits longer (a process died or hangs) raises
    context_parallel: ContextParallelConfig | None = None  # split each sequence over processes; None = whole

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "accumulation", "log_every"):
            check_int(f"TrainConfig.{name}", getattr(self, name), minimum=1)
        check_int("TrainConfig.warmup", self.warmup, minimum=0)
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) is not None:
                check_int(f"TrainConfig.{name}", getattr(self, name), minimum=1)
        check_int("TrainConfig.seed", self.seed, minimum=0)
        if not is_positive_finite(self.lr):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr}")
        if not 0 <= self.min_lr <= 1:
            raise ValueError(f"TrainConfig.min_lr must be in [0, 1] (a fraction of lr), got {self.min_lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not is_positive_finite(self.grad_clip):
            raise ValueError(f"TrainConfig.grad_clip must be positive or None, got {self.grad_clip}")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"TrainConfig.precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if not is_positive_finite(self.timeout_s):
            raise ValueError(f"TrainConfig.timeout_s must be positive, got {self.timeout_s}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.context_parallel is not None and not isinstance(self.context_parallel, ContextParallelConfig):
            raise TypeError("TrainConfig.context_parallel must be a ContextParallelConfig or None, got "
                            f"{type(self.context_parallel).__name__}")

    @property
    def context_size(self) -> int:
        """Processes that share one sequence (1 without context parallelism)."""
        return 1 if self.context_parallel is None else self.context_parallel.size

    def learning_rate(self, step: int) -> float:
        """The rate of optimizer step ``step`` (0-based): linear warm-up, then cosine down to min_lr * lr."""
        if step < self.warmup:
            return self.lr * (step + 1) / (self.warmup + 1)
        decay_steps = max(1, self.steps - 1 - self.warmup)
        progress = min(1.0, (step - self.warmup) / decay_steps)
        return self.lr * (self.min_lr + (1 - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress)))

    def micro_batch(self, replicas: int) -> int:
        """Examples per forward on each process, given the data-parallel ``replicas`` (the processes, or their
        context-parallel groups); a ValueError when the global batch does not split evenly."""
        parts = replicas * self.accumulation
        if self.batch_size % parts:
            what = "process(es)" if self.context_parallel is None else "context-parallel group(s)"
            raise ValueError(f"batch_size={self.batch_size} must split evenly over {replicas} {what} x "
                             f"{self.accumulation} accumulation step(s)")
        return self.batch_size // parts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        fields: dict[str, Any] = {k: (tuple(v) if k == "betas" else v) for k, v in values.items() if k in known}
        if isinstance(fields.get("context_parallel"), dict):  # asdict() wrote the sub-config as a dict
            fields["context_parallel"] = ContextParallelConfig(**fields["context_parallel"])
        return cls(**fields)
