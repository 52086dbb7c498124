"""Checkpoints that resume bitwise: the model, the optimizer, every random generator (one per process), the
step (the data position, see :class:`~attnkit.train.task.Order`; the learning rate follows from it) and the
config, in one file written whole or not at all (a temporary beside it, fsynced, renamed).

    DIR/checkpoint.pt    the last one; `kill -9` at any moment leaves either the previous or the new file
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import atomic_path

FORMAT = 1
NAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """Every generator a training step may draw from, in this process."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts of them) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return path


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; a ValueError naming the file if it is not one."""
    try:
        # weights_only=False: the RNG states hold Python and numpy objects; only files this loop wrote are read
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which and why, in one line
        raise ValueError(f"{path}: not a readable attnkit checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an attnkit training checkpoint (format {FORMAT})")
    return state


__all__ = ["rng_state", "set_rng_state", "save", "load", "NAME"]
