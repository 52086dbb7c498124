"""What every recipe does around the loop: seeding, one sub-directory per trained model, the main process."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..config import ContextParallelConfig, TrainConfig
from ..loop import Result, fit
from ..task import Task
from . import Interrupted, Options


def seed_everything(seed: int) -> None:
    """The same models and data on every process and in every run with this seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def train_config(options: Options, steps: int, **settings: Any) -> TrainConfig:
    """A recipe's TrainConfig: ``steps`` and its own ``settings``, and what every recipe takes from the command
    line (the seed, --checkpoint-every, --context-parallel; a row every 10 steps, every 2 with --quick)."""
    return TrainConfig(steps=steps, seed=options.seed, log_every=2 if options.quick else 10,
                       checkpoint_every=options.checkpoint_every,
                       context_parallel=(ContextParallelConfig(size=options.context_parallel)
                                         if options.context_parallel > 1 else None), **settings)


def fit_part(options: Options, name: str, task: Task, config: TrainConfig) -> Result:
    """Train one of a recipe's models in ``options.out / name`` (its own metrics, checkpoint and loss curve)."""
    out = options.out / name
    result = fit(task, config, out, resume=options.resume, progress=options.progress, name=name)
    if result.interrupted:
        raise Interrupted(out)
    return result
