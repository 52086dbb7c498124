"""Training: a readable loop (:func:`fit`) over a :class:`Task`, atomic checkpoints that resume bitwise,
data and context parallelism on torch.distributed, and recipes that reproduce the field's classic applications on data
that installs offline (``attnkit train --list``).

    >>> task = Task(model, size=len(xs), batch=lambda idx: (xs[idx], ys[idx]),
    ...             loss=lambda m, b: Loss(F.cross_entropy(m(b[0]), b[1], reduction="sum"), len(b[1])))
    >>> fit(task, TrainConfig(steps=500, batch_size=64, lr=1e-3), "runs/mine")
"""

from .config import ContextParallelConfig, TrainConfig
from .loop import PeerFailure, Result, fit, read_metrics
from .task import Loss, Task

__all__ = ["TrainConfig", "ContextParallelConfig", "Task", "Loss", "fit", "Result", "PeerFailure", "read_metrics"]
