"""The files of a Hugging Face-style checkpoint directory: ``config.json`` and the weights, either
``model.safetensors`` or ``pytorch_model.bin`` (each possibly sharded, with an ``.index.json`` naming the
shard of every tensor). Reading and writing only; which tensor goes where is ``rules.py``'s business.

    >>> config = read_config(directory)                  # dict, as written by transformers
    >>> tensors = read_weights(directory)                # {"encoder.layer.0...": Tensor, ...}
    >>> write_checkpoint(directory, config, tensors)     # config.json + model.safetensors
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..files import atomic_path, write_text

# In the order they are looked for: safetensors before pickles, one file before shards.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it describes. The lists name the tensors in the
    checkpoint's own spelling; the message shows all of them at once.

    Attributes:
        missing: tensors the model needs that the checkpoint lacks.
        unexpected: tensors in the checkpoint that no part of the model takes.
        wrong_shapes: ``(name, expected shape, shape in the checkpoint)`` for each tensor of the wrong shape.
    """

    def __init__(self, source: str, *, missing: list[str] | None = None, unexpected: list[str] | None = None,
                 wrong_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
                 problems: list[str] | None = None):
        self.source = source
        self.missing = sorted(missing or [])
        self.unexpected = sorted(unexpected or [])
        self.wrong_shapes = sorted(wrong_shapes or [])
        self.problems = list(problems or [])
        lines = [f"{source}: the checkpoint does not fit the model"]
        lines += [f"  {p}" for p in self.problems]
        if self.missing:
            lines.append(f"  missing tensors ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected tensors ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.wrong_shapes:
            shapes = ", ".join(f"{n} expected {tuple(e)} got {tuple(g)}" for n, e, g in self.wrong_shapes)
            lines.append(f"  wrong shapes ({len(self.wrong_shapes)}): {shapes}")
        super().__init__("\n".join(lines))


def read_config(directory: Path) -> dict[str, Any]:
    """``directory/config.json`` as a dict; a clear error when it is absent or not a JSON object."""
    path = directory / "config.json"
    if not path.is_file():
        present = ", ".join(sorted(p.name for p in directory.iterdir())[:12]) or "nothing"
        raise FileNotFoundError(f"name_or_path={str(directory)!r} is not a Hugging Face-style checkpoint: "
                                f"expected a config.json in it, found {present}")
    config = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        problem = f"config.json must hold a JSON object, got {type(config).__name__}"
        raise CheckpointError(str(path), problems=[problem])
    return config


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or {} when the file does not exist."""
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    return value if isinstance(value, dict) else {}


def _read_one(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    # weights_only: a pickle may only hold tensors and plain containers, never arbitrary code
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(str(path), problems=["expected a dict of tensor name -> tensor"])
    return state


def read_weights(directory: Path) -> tuple[dict[str, Tensor], Path]:
    """Every tensor of the checkpoint in ``directory`` by name, and the file (or index) read."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read_one(path), path
        shards = sorted(set(read_json(path).get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(str(path), problems=["the index has no weight_map"])
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(_read_one(directory / shard))
        return state, path
    raise FileNotFoundError(f"{str(directory)!r} has a config.json but no weights: expected one of "
                            f"{', '.join(WEIGHT_FILES)}")


def write_checkpoint(directory: Path, config: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Write ``model.safetensors`` (one file; contiguous copies, no shared storage), then ``config.json``;
    each whole or not at all, so a failed save never leaves a config beside missing or partial weights."""
    # one copy each, contiguous whatever the source's strides, owning its storage (safetensors refuses shared)
    flat = {name: t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True) for name, t in tensors.items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(flat, str(tmp), metadata={"format": "pt"})
    write_text(directory / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


__all__ = ["CheckpointError", "read_config", "read_json", "read_weights", "write_checkpoint", "WEIGHT_FILES"]
