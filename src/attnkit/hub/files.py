"""The files of a Hugging Face-style checkpoint directory: ``config.json`` and the weights, either
``model.safetensors`` or ``pytorch_model.bin`` (each possibly sharded, with an ``.index.json`` naming the
shard of every tensor). Reading and writing only; which tensor goes where is ``rules.py``'s business.

    >>> config = read_config(directory)                  # dict, as written by transformers
    >>> files, source = weight_files(directory)          # the weight files, and the file to name in errors
    >>> read_shapes(files)                               # {"encoder.layer.0...": (384, 384), ...}: headers only
    >>> read_tensors(files)                              # {"encoder.layer.0...": Tensor, ...}
    >>> write_checkpoint(directory, config, tensors)     # config.json + model.safetensors

Every file that cannot be read — not JSON, not safetensors, not a pickle of tensors, a shard outside the
directory — is a :class:`CheckpointError` naming it, in one line.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..files import atomic_path, write_text
from .errors import CheckpointError

# In the order they are looked for: safetensors before pickles, one file before shards.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
Shape = tuple[int, ...]


def _parse_json(path: Path) -> Any:
    """The JSON value in ``path``; a CheckpointError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        problem = f"not a UTF-8 text file ({error.reason} at byte {error.start})"
        raise CheckpointError(str(path), problems=[problem]) from None
    except json.JSONDecodeError as error:
        raise CheckpointError(str(path), problems=[f"not valid JSON ({error})"]) from None
    except RecursionError:
        raise CheckpointError(str(path), problems=["not readable: its JSON is nested too deeply"]) from None


def read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
    """The JSON object in ``path``; {} when the file does not exist (unless ``required``). Anything but a
    JSON object is a CheckpointError naming the file."""
    if not required and not path.is_file():
        return {}
    value = _parse_json(path)
    if not isinstance(value, dict):
        raise CheckpointError(str(path), problems=[f"must hold a JSON object, got a JSON {type(value).__name__}"])
    return value


def read_config(directory: Path) -> dict[str, Any]:
    """``directory/config.json`` as a dict; a clear error when it is absent or not a JSON object."""
    path = directory / "config.json"
    if not path.is_file():
        present = ", ".join(sorted(p.name for p in directory.iterdir())[:12]) or "nothing"
        raise FileNotFoundError(f"name_or_path={str(directory)!r} is not a Hugging Face-style checkpoint: "
                                f"expected a config.json in it, found {present}")
    return read_json(path, required=True)


def _torch_reason(error: BaseException) -> str:
    """torch.load's message without its advice to load with weights_only=False (arbitrary code execution:
    attnkit never suggests it), and without the paragraphs of explanation around the cause."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    unsafe = ("weights_only", "torch.load", "file an issue")
    kept = [line for line in lines if not any(word in line for word in unsafe)]
    reason = " ".join(kept).split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {reason}" if reason else f"{type(error).__name__}, the file is empty or cut short"


def _load_pickle(path: Path) -> dict[str, Tensor]:
    """A pytorch_model.bin: only tensors and plain containers are unpickled, never arbitrary objects. The
    zip format is memory-mapped (shapes cost nothing; data is read when copied into the model)."""
    try:
        # weights_only: a pickle may only hold tensors and plain containers, never arbitrary code
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except MemoryError:
        raise
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... with advice attached
        problem = f"not a readable PyTorch file of tensors ({_torch_reason(error)})"
        raise CheckpointError(str(path), problems=[problem]) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(str(path), problems=["expected a dict of tensor name -> tensor"])
    return state


def _safetensors_error(path: Path, error: SafetensorError) -> CheckpointError:
    return CheckpointError(str(path), problems=[f"not a valid safetensors file ({error})"])


def _shapes_of(path: Path) -> dict[str, Shape]:
    if path.suffix != ".safetensors":
        return {name: tuple(t.shape) for name, t in _load_pickle(path).items()}
    try:
        with safe_open(str(path), framework="pt") as file:  # reads the header only
            return {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}
    except SafetensorError as error:
        raise _safetensors_error(path, error) from None


def _tensors_of(path: Path) -> dict[str, Tensor]:
    if path.suffix != ".safetensors":
        return _load_pickle(path)
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as error:
        raise _safetensors_error(path, error) from None


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    try:
        real = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte in the name
        return False
    return any(real.is_relative_to(root) for root in roots)


def _shards(index: Path, directory: Path) -> list[Path]:
    """The shard files an ``.index.json`` names, each checked to lie inside the checkpoint directory.

    A shard's name is resolved (links followed) and must land inside ``directory`` — or beside the index
    file itself where that is a link, as in the Hugging Face cache, where every file of a snapshot links to
    ``../../blobs/<hash>`` — and be a regular file: ``../other/x.safetensors``, ``/dev/zero`` or a link
    leading out are refused, so an index can never make ``load`` read a file its directory does not hold.
    """
    weight_map = read_json(index, required=True).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        got = "nothing" if weight_map is None else f"a JSON {type(weight_map).__name__}"
        problem = f"weight_map must be a non-empty JSON object of tensor name -> shard file, got {got}"
        raise CheckpointError(str(index), problems=[problem])
    bad = sorted({repr(v) for v in weight_map.values() if not isinstance(v, str)})
    if bad:
        raise CheckpointError(str(index), problems=[f"weight_map's shard names must be strings, got {', '.join(bad)}"])
    roots = (directory.resolve(), index.resolve().parent)
    shards = []
    for name in sorted(set(weight_map.values())):
        path = directory / name
        if not _inside(path, roots):
            problem = f"shard {name!r} lies outside the checkpoint directory; refused"
            raise CheckpointError(str(index), problems=[problem])
        if not path.is_file():
            raise CheckpointError(str(index), problems=[f"shard {name!r} does not exist or is not a regular file"])
        shards.append(path)
    return shards


def weight_files(directory: Path) -> tuple[list[Path], Path]:
    """The files holding the checkpoint's tensors, and the file to name in messages (the single weight file,
    or the index of the shards); the first of ``WEIGHT_FILES`` present wins."""
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            return (_shards(path, directory) if name.endswith(".index.json") else [path]), path
    raise FileNotFoundError(f"{str(directory)!r} has a config.json but no weights: expected one of "
                            f"{', '.join(WEIGHT_FILES)}")


def read_shapes(files: list[Path]) -> dict[str, Shape]:
    """Every tensor's shape by name, from the files' headers (safetensors) or a memory map (zip pickles):
    nothing as large as the weights is read or allocated."""
    return {name: shape for path in files for name, shape in _shapes_of(path).items()}


def read_tensors(files: list[Path]) -> dict[str, Tensor]:
    """Every tensor of the checkpoint by name."""
    return {name: tensor for path in files for name, tensor in _tensors_of(path).items()}


def write_checkpoint(directory: Path, config: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Write ``model.safetensors`` (one file; contiguous copies, no shared storage), then ``config.json``;
    each whole or not at all. ``attnkit.hub.save`` calls it on a fresh directory that replaces the old one as
    a whole; called on an existing directory, files this does not write stay there."""
    # one copy each, contiguous whatever the source's strides, owning its storage (safetensors refuses shared)
    flat = {name: t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True) for name, t in tensors.items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(flat, str(tmp), metadata={"format": "pt"})
    write_text(directory / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


__all__ = ["CheckpointError", "read_config", "read_json", "weight_files", "read_shapes", "read_tensors",
           "write_checkpoint", "WEIGHT_FILES"]
