"""A GGUF file (llama.cpp's one-file checkpoint: metadata, tokenizer, quantized tensors) in Hugging Face form:
config.json's fields as transformers' ``LlamaConfig`` names them, a float32 state dict under ``LlamaForCausalLM``'s
tensor names, and an attnkit :class:`Tokenizer` with the file's chat template. The Llama loader takes it from there.

llama.cpp's ``gguf`` package does the reading (``GGUFReader``, through a memory map) and the dequantization
(``gguf.quants.dequantize``); this module maps names, undoes llama.cpp's reordering of the q/k rows, builds the
tokenizer with the ``tokenizers`` library, and checks everything before converting anything: an unsupported
architecture, tokenizer or quantization, missing metadata, and missing, unexpected or wrong-shaped tensors are one
:class:`CheckpointError` naming the file, one line per problem. Tensors are converted one at a time, so the peak
memory is the float32 weights plus one tensor's temporaries.

    >>> ckpt = read_gguf(resolve("SmolLM2-135M-Instruct"))
    >>> ckpt.config["num_hidden_layers"], ckpt.tensors["model.layers.0.self_attn.k_proj.weight"].shape
    (30, torch.Size([192, 576]))
    >>> ckpt.tokenizer.ids(["Hello world!"])
    [[19556, 905, 17]]
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, TokenType
from gguf.gguf_reader import ReaderTensor
from gguf.quants import dequantize
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from torch import Tensor

from .errors import CheckpointError, grouped
from .tokenizer import Tokenizer

SUPPORTED_ARCHITECTURES = ("llama",)  # general.architecture values read_gguf converts
SUPPORTED_TOKENIZERS = ("gpt2",)  # tokenizer.ggml.model values: "gpt2" is byte-level BPE (GPT-2, SmolLM2, ...)
# tokenizer.ggml.pre (how text is cut into words before BPE) -> the splits llama.cpp makes before GPT-2's regex
# (llama-vocab.cpp's llm_tokenizer_bpe): none, or each number character on its own
_DIGITS = r"\p{N}"
_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais"), ()),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell"), (_DIGITS,)),
}
# GGUF tensor name -> LlamaForCausalLM's; per layer, "blk.{i}.<gguf>.weight" -> "model.layers.{i}.<hf>.weight"
_GLOBAL_TENSORS = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}
_LAYER_TENSORS = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                  "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                  "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                  "ffn_down": "mlp.down_proj"}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
# what a tensor that fits no Llama parameter is, where it is known, to say why it is refused
_REFUSED = {"rope_freqs.weight": "per-frequency RoPE factors (Llama 3.1's rope scaling), which this reader does not "
                                 "convert"}
_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                "pad_token": "padding_token_id"}  # attnkit's special token name -> tokenizer.ggml.<key>


@dataclass
class GGUFCheckpoint:
    """What :func:`read_gguf` reads from a GGUF file."""

    config: dict[str, Any]  # config.json's fields, as transformers' LlamaConfig names them
    tensors: dict[str, Tensor]  # float32, under LlamaForCausalLM's state_dict names (no lm_head when tied)
    tokenizer: Tokenizer  # its config holds add_bos_token / add_eos_token and the chat template
    chat_template: str | None  # tokenizer.chat_template (Jinja), None when the file has none


def _unpermute(weight: Tensor, heads: int) -> Tensor:
    """Undo llama.cpp's reordering of q_proj / k_proj rows (convert_hf_to_gguf.py's ``LlamaModel.permute``):
    within each head, Hugging Face keeps the two halves that ``rotate_half`` pairs apart, llama.cpp interleaves them.

    weight: (heads * head_dim, in) -> the same shape, rows of each head from (head_dim/2, 2) to (2, head_dim/2) order.
    """
    rows, *rest = weight.shape
    per_head = weight.reshape(heads, rows // heads // 2, 2, *rest)  # (H, D/2, 2, in): llama.cpp's order
    return per_head.transpose(1, 2).reshape(weight.shape)  # (H, 2, D/2, in) -> (H * D, in)


@functools.cache
def _dequantizable(kind: GGMLQuantizationType) -> bool:
    """Whether the installed ``gguf`` package can dequantize tensors of this type: asked with one zero block,
    since the package keeps its table of types private."""
    _, block_bytes = GGML_QUANT_SIZES[kind]
    try:
        dequantize(np.zeros((1, block_bytes), dtype=np.uint8), kind)
    except Exception:  # NotImplementedError for the integer types; anything else means the same here
        return False
    return True


def _dequantized(tensor: ReaderTensor, shape: tuple[int, ...]) -> Tensor:
    """One tensor as float32 (``shape``, numpy order), in memory of its own: the memory-mapped file is read-only,
    so an F32 tensor (which dequantizes to a view of the map) is copied; the others are fresh arrays already.
    The data goes in as a plain ndarray view of the map: np.memmap's per-slice bookkeeping made dequantizing 3x
    slower."""
    values = dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(shape)
    return torch.from_numpy(np.require(values, dtype=np.float32, requirements=["C", "W"]))


def _open(path: Path) -> tuple[list[ReaderTensor], dict[str, Any]]:
    """The file's tensors (their data memory-mapped) and every metadata value (``{"llama.block_count": 30,
    ...}``); a file that is no GGUF, or a truncated or corrupt one, is a CheckpointError naming it. The reader
    itself is dropped: its parsed fields (four numpy arrays per vocabulary entry) take ~170 MB for SmolLM2."""
    with path.open("rb") as file:
        magic = file.read(4)
    if magic != b"GGUF":
        raise CheckpointError(str(path), problems=[f"not a GGUF file (it starts with {magic!r}, not b'GGUF')"])
    try:
        reader = GGUFReader(path)
        return reader.tensors, {name: field.contents() for name, field in reader.fields.items()}
    except Exception as error:  # the reader fails on a short file with whatever numpy says (reshape, view, index)
        reason = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(str(path), problems=[
            f"truncated or corrupt GGUF file ({path.stat().st_size} bytes; the reader stopped with "
            f"{type(error).__name__}: {reason})"]) from error


def _positive(meta: dict[str, Any], key: str, kind: type[int] | type[float], problems: list[str],
              default: Any = None) -> Any:
    """``meta[key]`` (else ``default``) when it is a positive ``kind`` (an int does for a float); else None,
    with the problem appended."""
    value = meta.get(key, default)
    if value is None:
        problems.append(f"metadata {key} is missing")
        return None
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and (kind is float or isinstance(value, int)) and value > 0:
        return value
    got = f"a list of {len(value)} values" if isinstance(value, list) else repr(value)
    problems.append(f"metadata {key} must be a positive {kind.__name__}, got {got}")
    return None


def _rope_scaling(meta: dict[str, Any], arch: str, problems: list[str]) -> dict[str, Any] | None:
    """config.json's rope_scaling from {arch}.rope.scaling.* (or the older {arch}.rope.scale_linear)."""
    legacy = meta.get(f"{arch}.rope.scale_linear")
    kind = meta.get(f"{arch}.rope.scaling.type", "none" if legacy is None else "linear")
    if kind == "none":
        return None
    if kind not in ("linear", "yarn"):
        problems.append(f"metadata {arch}.rope.scaling.type is {kind!r}; supported: 'none', 'linear', 'yarn'")
        return None
    factor = _positive(meta, f"{arch}.rope.scaling.factor", float, problems, default=legacy)
    scaling = {"rope_type": kind, "factor": factor}
    if kind == "yarn":
        scaling["original_max_position_embeddings"] = _positive(
            meta, f"{arch}.rope.scaling.original_context_length", int, problems)
    return scaling


def _config(meta: dict[str, Any], arch: str, tied: bool, problems: list[str]) -> dict[str, Any]:
    """config.json's fields from the metadata under ``{arch}.``; each missing or bad value appends a problem."""
    def number(key: str, kind: type[int] | type[float], default: Any = None) -> Any:
        return _positive(meta, f"{arch}.{key}", kind, problems, default)

    hidden, heads = number("embedding_length", int), number("attention.head_count", int)
    kv_heads = number("attention.head_count_kv", int, default=heads)
    derived = hidden // heads if hidden and heads and hidden % heads == 0 else None
    head_dim = number("attention.key_length", int, default=meta.get(f"{arch}.rope.dimension_count", derived))
    if heads and kv_heads and heads % kv_heads:
        problems.append(f"metadata {arch}.attention.head_count={heads} is not a multiple of "
                        f"{arch}.attention.head_count_kv={kv_heads}")
    value_dim, rope_dim = (meta.get(f"{arch}.{key}", head_dim) for key in ("attention.value_length",
                                                                            "rope.dimension_count"))
    if head_dim and value_dim != head_dim:
        problems.append(f"metadata {arch}.attention.value_length={value_dim} differs from the key length "
                        f"{head_dim}, which LlamaConfig cannot express")
    if head_dim and rope_dim != head_dim:
        problems.append(f"metadata {arch}.rope.dimension_count={rope_dim}: RoPE on part of each head of {head_dim}, "
                        f"which LlamaConfig cannot express")
    if head_dim and head_dim % 2:
        problems.append(f"the head size {head_dim} is odd; RoPE rotates pairs of dimensions")
    tokens = meta.get("tokenizer.ggml.tokens")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": number("vocab_size", int, default=len(tokens) if isinstance(tokens, list) else None),
        "hidden_size": hidden, "intermediate_size": number("feed_forward_length", int),
        "num_hidden_layers": number("block_count", int), "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "max_position_embeddings": number("context_length", int),
        "rms_norm_eps": number("attention.layer_norm_rms_epsilon", float),
        "rope_theta": number("rope.freq_base", float, default=10000.0),  # llama.cpp's default
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": tied,
    }
    scaling = _rope_scaling(meta, arch, problems)
    if scaling is not None:
        config["rope_scaling"] = scaling
    for name in ("bos", "eos", "pad"):
        key = "padding" if name == "pad" else name
        if f"tokenizer.ggml.{key}_token_id" in meta:
            config[f"{name}_token_id"] = meta[f"tokenizer.ggml.{key}_token_id"]
    return config


def _expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors a Llama GGUF file holds for ``config``, by GGUF name, with their shapes in numpy (PyTorch)
    order: (out, in) for each projection; ``output.weight`` only when the embeddings are not tied."""
    hidden, inner, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q_rows = config["num_attention_heads"] * config["head_dim"]
    kv_rows = config["num_key_value_heads"] * config["head_dim"]
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if not config["tie_word_embeddings"]:
        shapes["output.weight"] = (vocab, hidden)
    per_layer = {"attn_norm": (hidden,), "attn_q": (q_rows, hidden), "attn_k": (kv_rows, hidden),
                 "attn_v": (kv_rows, hidden), "attn_output": (hidden, q_rows), "ffn_norm": (hidden,),
                 "ffn_gate": (inner, hidden), "ffn_up": (inner, hidden), "ffn_down": (hidden, inner)}
    for i in range(config["num_hidden_layers"]):
        shapes.update({f"blk.{i}.{name}.weight": shape for name, shape in per_layer.items()})
    return shapes


def _hf_name(name: str) -> str:
    """LlamaForCausalLM's name for one of the GGUF tensors :func:`_expected_shapes` lists."""
    match = _LAYER_NAME.fullmatch(name)
    if match:
        return f"model.layers.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}.weight"
    return _GLOBAL_TENSORS[name]


def _tensor_plan(tensors: list[ReaderTensor], config: dict[str, Any], source: str,
                 problems: list[str]) -> list[ReaderTensor]:
    """The tensors to convert, after checking names, shapes and quantization types: every mismatch, with
    ``problems`` found before, in one CheckpointError (tensors named as the file names them)."""
    expected = _expected_shapes(config)
    plan, unexpected, wrong = [], [], []
    undequantizable: dict[str, list[str]] = {}  # type name -> tensors
    for tensor in tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
        if tensor.name not in expected:
            if tensor.name in _REFUSED:
                problems.append(f"{tensor.name}: {_REFUSED[tensor.name]}")
            else:
                unexpected.append(tensor.name)
        elif shape != expected[tensor.name]:
            wrong.append((tensor.name, expected[tensor.name], shape))
        elif not _dequantizable(tensor.tensor_type):
            undequantizable.setdefault(tensor.tensor_type.name, []).append(tensor.name)
        else:
            plan.append(tensor)
    present = {t.name for t in tensors}
    missing = [name for name in expected if name not in present]
    for kind, names in undequantizable.items():
        problems.append(f"tensors of type {kind}, which gguf {importlib.metadata.version('gguf')} cannot dequantize: "
                        f"{', '.join(grouped(names))}")
    if problems or missing or unexpected or wrong:
        raise CheckpointError(source, missing=missing, unexpected=unexpected, wrong_shapes=wrong, problems=problems)
    return plan


def _converted(tensor: ReaderTensor, config: dict[str, Any]) -> Tensor:
    """One file tensor as LlamaForCausalLM holds it: float32, q/k rows back in Hugging Face's order."""
    weight = _dequantized(tensor, tuple(int(n) for n in reversed(tensor.shape)))
    kind = tensor.name.split(".")[-2]  # "blk.3.attn_q.weight" -> "attn_q"
    if kind == "attn_q":
        return _unpermute(weight, config["num_attention_heads"])
    if kind == "attn_k":
        return _unpermute(weight, config["num_key_value_heads"])
    return weight


def _tokenizer_problems(meta: dict[str, Any]) -> list[str]:
    """What keeps the file's tokenizer from being built (an unsupported kind, missing or inconsistent lists)."""
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "gpt-2")
    if kind not in SUPPORTED_TOKENIZERS:
        return [f"tokenizer.ggml.model is {kind!r}; supported: 'gpt2' (byte-level BPE)"]
    problems = []
    if pre not in _PRE_SPLITS:
        problems.append(f"tokenizer.ggml.pre is {pre!r}, a pre-tokenizer this reader does not know; supported: "
                        f"{', '.join(sorted(_PRE_SPLITS))}")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not tokens:
        return [*problems, "metadata tokenizer.ggml.tokens (the vocabulary) is missing"]
    if len(set(tokens)) != len(tokens):
        problems.append(f"tokenizer.ggml.tokens lists {len(tokens) - len(set(tokens))} tokens twice")
    if not isinstance(merges, list) or any(len(m.split(" ")) != 2 for m in merges):
        problems.append("metadata tokenizer.ggml.merges must be a list of 'left right' pairs")
    if len(meta.get("tokenizer.ggml.token_type", tokens)) != len(tokens):
        problems.append("tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length")
    for key in _SPECIAL_IDS.values():
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if token_id is not None and not 0 <= token_id < len(tokens):
            problems.append(f"tokenizer.ggml.{key}={token_id} is outside the vocabulary of {len(tokens)} tokens")
    return problems


def _tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """The byte-level BPE tokenizer the metadata describes, built as transformers' GPT2Tokenizer builds one (and
    llama.cpp tokenizes): the file's vocabulary, merges and pre-tokenizer; CONTROL tokens as special tokens,
    USER_DEFINED ones as added tokens, both matched whole; BOS/EOS added when the file says so."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    backend = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False,
                                              continuing_subword_prefix="", end_of_word_suffix=""))
    splits = _PRE_SPLITS[meta.get("tokenizer.ggml.pre", "gpt-2")]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*(pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])  # GPT-2's regex
    backend.decoder = decoders.ByteLevel()
    kinds = meta.get("tokenizer.ggml.token_type", [TokenType.NORMAL] * len(tokens))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, kinds) if k == TokenType.CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, k in zip(tokens, kinds) if k == TokenType.USER_DEFINED])
    special = {name: tokens[meta[f"tokenizer.ggml.{key}"]] for name, key in _SPECIAL_IDS.items()
               if f"tokenizer.ggml.{key}" in meta}
    add_bos, add_eos = (bool(meta.get(f"tokenizer.ggml.add_{end}_token", False)) for end in ("bos", "eos"))
    if (add_bos and "bos_token" in special) or (add_eos and "eos_token" in special):
        bos = f"{special['bos_token']}:0 " if add_bos and "bos_token" in special else ""
        eos = f" {special['eos_token']}:0" if add_eos and "eos_token" in special else ""
        ids = [(special[n], backend.token_to_id(special[n])) for n in ("bos_token", "eos_token") if n in special]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}$A:0{eos}", pair=f"{bos}$A:0{eos} {bos.replace(':0', ':1')}$B:1{eos.replace(':0', ':1')}",
            special_tokens=list(dict.fromkeys(ids)))
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    config = {"add_bos_token": add_bos, "add_eos_token": add_eos, "chat_template": meta.get("tokenizer.chat_template")}
    return Tokenizer(backend, special_tokens=special, config={k: v for k, v in config.items() if v is not None})


def read_gguf(path: str | os.PathLike[str]) -> GGUFCheckpoint:
    """Read a GGUF file of a Llama-architecture model into Hugging Face form (see the module docstring).

    Args:
        path: a ``.gguf`` file, e.g. ``resolve("SmolLM2-135M-Instruct")``.

    Returns:
        :class:`GGUFCheckpoint`: ``config`` (config.json's fields), ``tensors`` (float32, LlamaForCausalLM's
        names, q/k rows in Hugging Face's order; ``lm_head.weight`` only when the file has its own ``output.weight``),
        ``tokenizer`` and ``chat_template``.

    Raises:
        CheckpointError: naming the file, one line per problem: not a GGUF file, truncated or corrupt, an
            architecture other than :data:`SUPPORTED_ARCHITECTURES`, a tokenizer other than byte-level BPE,
            missing metadata, a quantization type the ``gguf`` package cannot dequantize, missing, unexpected or
            wrong-shaped tensors.
        FileNotFoundError: no such file.

    Example:
        >>> ckpt = read_gguf(resolve("SmolLM2-135M-Instruct"))
        >>> ckpt.config["hidden_size"], len(ckpt.tensors)            # tied embeddings: no lm_head.weight
        (576, 272)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: no such file")
    file_tensors, meta = _open(path)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(str(path), problems=[
            f"general.architecture is {arch!r}; supported: {', '.join(map(repr, SUPPORTED_ARCHITECTURES))}"])
    problems: list[str] = []
    config = _config(meta, arch, all(t.name != "output.weight" for t in file_tensors), problems)
    problems += _tokenizer_problems(meta)
    if any(value is None for value in config.values()):  # shapes cannot be checked without every size
        raise CheckpointError(str(path), problems=problems)
    plan = _tensor_plan(file_tensors, config, str(path), problems)
    try:
        tokenizer = _tokenizer(meta)
    except Exception as error:  # tokenizers raises plain Exception, naming no file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(str(path), problems=[f"a tokenizer the tokenizers library cannot build ({reason})"]
                              ) from error
    # one tensor at a time: the file stays memory-mapped, only the float32 results accumulate
    tensors = {_hf_name(tensor.name): _converted(tensor, config) for tensor in plan}
    return GGUFCheckpoint(config, tensors, tokenizer, meta.get("tokenizer.chat_template"))


__all__ = ["GGUFCheckpoint", "read_gguf", "SUPPORTED_ARCHITECTURES", "SUPPORTED_TOKENIZERS"]
