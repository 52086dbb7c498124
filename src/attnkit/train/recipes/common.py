"""What every recipe does around the loop: seeding, one sub-directory per trained model, the main process."""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist

from ..config import TrainConfig
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


def fit_part(options: Options, name: str, task: Task, config: TrainConfig) -> Result:
    """Train one of a recipe's models in ``options.out / name`` (its own metrics, checkpoint and loss curve)."""
    out = options.out / name
    result = fit(task, config, out, resume=options.resume, progress=options.progress, name=name)
    if result.interrupted:
        raise Interrupted(out)
    return result
