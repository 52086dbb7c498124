"""attnkit.hub on Llama-family decoder checkpoints (llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3), black-box
against ``transformers`` on the same weights: every expected value here comes from transformers, none from attnkit.

Each case is a tiny random model built from a transformers config (no download), its weights re-drawn so that attention
is peaked and greedy decoding does not repeat one token, saved with ``save_pretrained`` and read back by transformers as
the reference. ``test_the_reference_exercises_each_feature`` proves, from transformers alone, that each feature a case
is there for (window, softcaps, RoPE scaling, ...) changes the logits at these sizes, so that the parity tests can fail.

What transformers (5.x) does, that these cases pin down:
- sliding windows: ``sliding_window=W`` lets a token see itself and the W - 1 tokens before it
  (masking_utils.sliding_window_overlay: ``kv_idx > q_idx - W``);
- which layers slide: ``layer_types`` in config.json when present (any pattern; it wins over ``max_window_layers``);
  without it qwen2/qwen3 slide the layers ``i >= max_window_layers`` when ``use_sliding_window``, and
  ``use_sliding_window=False`` turns a stored ``sliding_window`` off; gemma2 alternates sliding/full from layer 0;
- RoPE: ``rope_parameters = {"rope_type": ..., "rope_theta": ..., "factor": ..., ...}``; gemma3 keeps one such dict
  per layer type (``{"sliding_attention": {...}, "full_attention": {...}}``, local and global bases);
- dynamic NTK's base and longrope's short/long factors follow ``max(position_ids) + 1`` of each forward call, over the
  whole batch. Under a KV cache, dynamic NTK's cached keys keep the frequencies they were rotated with (so cached and
  uncached generation differ once past max_position_embeddings), while Phi-3's generate drops the cache and re-reads
  the whole sequence when it first passes original_max_position_embeddings
  (``Phi3ForCausalLM.prepare_inputs_for_generation``). A transformers model also keeps grown dynamic frequencies from
  one call to the next (``max_seq_len_cached``), a history the tests do not ask for: each reference call uses a fresh
  copy, so a row's logits depend on its own call only;
- Gemma's RMSNorm scales by ``1 + weight`` and transformers initializes that weight to 0 (so it is re-drawn here).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from attnkit import hub
from attnkit.functional.registry import get_kernel, is_exact, kernels
from attnkit.hub import CheckpointError
from attnkit.models import GPT, GPTConfig
from attnkit.nn import set_kernel
from helpers import assert_close, load_with_memory_capped, magnitude, max_abs_error

transformers = pytest.importorskip("transformers")

VOCAB = 160
LENGTH = 40  # the test sequences: longer than every window (6-7) and every original context (16-32) below
PROMPT, NEW = 14, 12  # generation runs from 14 to 26 tokens: past dynamic's 24 and longrope's 16 on the way
# Tolerance against transformers' float32 logits, per case (Reference.atol): transformers' own float32 error against
# itself in float64 (measured 1e-6 to 1.4e-4 here: logits reach ~13 and longrope's and dynamic NTK's frequencies come
# from float32 products), times 3 (helpers' baseline rule lets attnkit be off float64 by twice that, on either side),
# plus FLOOR of the logits' magnitude (test_hub's ATOL for float32 through two layers)
FLOOR = 1e-5
SAVE_ATOL = 1e-5  # transformers on attnkit's saved copy against transformers on the original: the same weights
MARGIN = 10  # greedy decoding: transformers' top-2 logit gap at every step >= MARGIN x its own float32 error
KERNELS = [*(k.name for k in kernels() if is_exact(k)), "auto"]
DROP = object()  # in a config.json edit: remove the key

COMMON = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
              pad_token_id=None)  # no eos: transformers' generate runs the full NEW tokens
DEFAULT_ROPE = {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}


@dataclass(frozen=True)
class Case:
    """One checkpoint under test: a transformers config and how its weights are drawn and its config.json edited."""

    name: str
    config: Callable[[], Any]  # the transformers config
    std: float = 0.4  # every weight re-drawn from N(0, std); Llama-style RMSNorm gains from N(1, std)
    embedding_std: float | None = None  # the token embedding's, when not std (see the Gemma cases)
    edit: dict[str, Any] = field(default_factory=dict)  # config.json changes after save_pretrained
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # feature -> a config.json change that must
    # change transformers' logits on the test batch: the feature matters at these sizes
    per_call_rope: bool = False  # dynamic NTK: a padded row's frequencies depend on the longest row of its batch


def _llama(**overrides) -> Any:
    return transformers.LlamaConfig(**{**COMMON, **overrides})


def _qwen2(**overrides) -> Any:
    return transformers.Qwen2Config(**{**COMMON, "use_sliding_window": True, "sliding_window": 6,
                                       "max_window_layers": 1, **overrides})


SLIDE, FULL = "sliding_attention", "full_attention"
# Gemma ties its head to the embedding and scales the embedding by sqrt(hidden): at the common std the token's own
# embedding dominates the residual stream and greedy decoding repeats the last token
GEMMA_EMBEDDING_STD = 0.05
GEMMA3_ROPE = {SLIDE: {"rope_type": "default", "rope_theta": 10000.0},
               FULL: {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0}}
PHI3_ROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.5, 2.0],
             "long_factor": [2.0, 4.0, 8.0]}  # rotary dims 12 * 0.5 = 6: three factors each

CASES = [
    # GQA (4 query heads, 2 KV heads) with head_dim 16 != hidden / heads = 12, untied head, a non-default base
    Case("llama-gqa-head-dim", lambda: _llama(num_hidden_layers=2, head_dim=16,
                                              rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
         knobs={"rope_theta": DEFAULT_ROPE}),
    Case("llama-tied-biases", lambda: _llama(num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True,
                                             mlp_bias=True),
         knobs={"attention_bias": {"attention_bias": False}, "mlp_bias": {"mlp_bias": False}}),
    Case("llama-rope-linear", lambda: _llama(rope_parameters={"rope_type": "linear", "factor": 4.0,
                                                              "rope_theta": 10000.0}),
         knobs={"rope_scaling": DEFAULT_ROPE}),
    # dynamic NTK rescales the base once a call's longest position passes max_position_embeddings (24 < LENGTH)
    Case("llama-rope-dynamic", lambda: _llama(max_position_embeddings=24, rope_parameters={
        "rope_type": "dynamic", "factor": 3.0, "rope_theta": 10000.0}),
        knobs={"rope_scaling": DEFAULT_ROPE}, per_call_rope=True),
    # yarn over an original context of 16 (factor 4 = 64 / 16): per-frequency ramp, cos/sin scaled by 0.1 ln 4 + 1
    Case("llama-rope-yarn", lambda: _llama(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                                            "original_max_position_embeddings": 16}),
         knobs={"rope_scaling": DEFAULT_ROPE}),
    # head_dim 12 at base 1e4 and an original context of 32: wavelengths 6.3 (kept), 29 (smoothed), >= 136 (/ 8)
    Case("llama-rope-llama3", lambda: _llama(rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "rope_theta": 10000.0,
        "original_max_position_embeddings": 32}),
        knobs={"rope_scaling": DEFAULT_ROPE}),
    Case("mistral-window", lambda: transformers.MistralConfig(**COMMON, head_dim=16, sliding_window=7),
         knobs={"sliding_window": {"sliding_window": None}, "window_off_by_one": {"sliding_window": 8}}),
    Case("mistral-no-window", lambda: transformers.MistralConfig(**COMMON, sliding_window=None)),
    # q/k/v biases; layer_types as stored (slide, full, slide), not what max_window_layers=1 would give
    Case("qwen2-layer-types", lambda: _qwen2(layer_types=[SLIDE, FULL, SLIDE]),
         knobs={"sliding_window": {"layer_types": [FULL] * 3}, "layer_types": {"layer_types": DROP},
                "window_off_by_one": {"sliding_window": 7}}),
    # an older config.json without layer_types: layers 1 and 2 (>= max_window_layers) slide
    Case("qwen2-max-window-layers", lambda: _qwen2(), edit={"layer_types": DROP},
         knobs={"sliding_window": {"use_sliding_window": False}}),
    # as Qwen2.5 on the Hub: a sliding_window stored but use_sliding_window false, so no window at all
    Case("qwen2-window-off", lambda: _qwen2(use_sliding_window=False), edit={"layer_types": DROP, "sliding_window": 5},
         knobs={"use_sliding_window": {"use_sliding_window": True}}),
    Case("qwen3-qk-norm", lambda: transformers.Qwen3Config(**COMMON, head_dim=24)),
    # sandwich norms, GeGLU (tanh), layers slide/full/slide with a window of 6, both softcaps, a query scale of 24^-0.5
    Case("gemma2", lambda: transformers.Gemma2Config(
        **COMMON, head_dim=16, query_pre_attn_scalar=24, sliding_window=6, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0, hidden_activation="gelu_pytorch_tanh"),
        embedding_std=GEMMA_EMBEDDING_STD,
        knobs={"attn_logit_softcapping": {"attn_logit_softcapping": None},
               "final_logit_softcapping": {"final_logit_softcapping": None},
               "query_pre_attn_scalar": {"query_pre_attn_scalar": 16}, "sliding_window": {"sliding_window": 64},
               "window_off_by_one": {"sliding_window": 7}, "gelu_tanh": {"hidden_activation": "gelu"}}),
    Case("gemma3-text", lambda: transformers.Gemma3TextConfig(
        **COMMON, head_dim=16, query_pre_attn_scalar=20, sliding_window=6, layer_types=[SLIDE, SLIDE, FULL],
        rope_parameters=copy.deepcopy(GEMMA3_ROPE)),
        embedding_std=GEMMA_EMBEDDING_STD,
        knobs={"global_rope_scaling": {"rope_parameters": {**GEMMA3_ROPE, FULL: {"rope_type": "default",
                                                                                 "rope_theta": 1000000.0}}},
               "local_rope_base": {"rope_parameters": {**GEMMA3_ROPE, SLIDE: {"rope_type": "default",
                                                                              "rope_theta": 1000000.0}}},
               "sliding_window": {"sliding_window": 64}, "window_off_by_one": {"sliding_window": 7},
               "query_pre_attn_scalar": {"query_pre_attn_scalar": 16}}),
    # fused qkv_proj and gate_up_proj, half of each head rotated, longrope past an original context of 16
    Case("phi3", lambda: transformers.Phi3Config(
        **COMMON, partial_rotary_factor=0.5, original_max_position_embeddings=16, rope_parameters=dict(PHI3_ROPE)),
        knobs={"long_factor": {"rope_parameters": {**PHI3_ROPE, "long_factor": [1.0, 1.0, 1.0],
                                                   "partial_rotary_factor": 0.5,
                                                   "original_max_position_embeddings": 16}}}),
]


# --------------------------------------------------------------------------------------------------
# the references


def _randomize(model, case: Case) -> None:
    """Re-draw every parameter from N(0, std); Llama-style RMSNorm gains (x * w) from N(1, std). Gemma's (x * (1 + w))
    stay centred on 0 but are non-zero, so that an implementation forgetting the 1 fails."""
    gemma = model.config.model_type.startswith("gemma")
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                norm = "RMSNorm" in type(module).__name__ and name == "weight"
                p.normal_(1.0 if norm and not gemma else 0.0, case.std)
        if case.embedding_std is not None:
            model.get_input_embeddings().weight.normal_(0.0, case.embedding_std)


def _saved(model, directory: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(directory, safe_serialization=True)
    return directory


def _edit_config(directory: Path, changes: dict[str, Any]) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is DROP:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config, indent=2))


def _with_config(source: Path, directory: Path, changes: dict[str, Any]) -> Path:
    """A copy of checkpoint ``source`` whose config.json has ``changes``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, directory / name)
    _edit_config(directory, changes)
    return directory


def _from_pretrained(directory: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()


@dataclass
class Reference:
    case: Case
    directory: Path
    pristine: Any  # transformers' model read from directory, never called (see fresh)
    error: float = 0.0  # transformers' float32 logits against its float64 ones on the test batch, max abs
    atol: float = 0.0  # what attnkit's float32 logits may be off transformers' (see FLOOR)
    generated: dict = field(default_factory=dict)  # hf_generate's results

    def fresh(self):
        """A copy of the reference no call has changed (dynamic RoPE keeps grown frequencies between calls)."""
        return copy.deepcopy(self.pristine)

    @property
    def softcap(self) -> bool:
        return getattr(self.pristine.config, "attn_logit_softcapping", None) is not None


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread only adds synchronization (10x slower generation on a busy 2-core
    machine), as conftest.py notes for xdist workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.name)
def ref(request, tmp_path_factory) -> Reference:
    case = request.param
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = transformers.AutoModelForCausalLM.from_config(case.config(), attn_implementation="eager")
    _randomize(built, case)
    directory = _saved(built, tmp_path_factory.mktemp(case.name))
    _edit_config(directory, case.edit)
    ref = Reference(case, directory, _from_pretrained(directory))
    ids = random_ids(2, LENGTH, seed=1)
    truth = hf_logits(ref, ids, model=ref.fresh().double())
    ref.error = max_abs_error(hf_logits(ref, ids), truth)
    ref.atol = 3 * ref.error + FLOOR * magnitude(truth)
    return ref


def random_ids(batch: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def left_padded(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (B, max(lengths)) and mask (B, max(lengths)), 1 = token, each row left-padded to the longest; the padding
    holds random ids that only the mask hides."""
    n = max(lengths)
    mask = (torch.arange(n) >= n - torch.tensor(lengths)[:, None]).long()  # (B, N)
    return random_ids(len(lengths), n, seed), mask


def hf_logits(ref: Reference, ids: torch.Tensor, mask: torch.Tensor | None = None, model=None) -> torch.Tensor:
    """transformers' logits (B, N, vocab); with a mask, positions count the real tokens only (generate's rule)."""
    model = ref.fresh() if model is None else model
    positions = None if mask is None else (mask.cumsum(-1) - 1).clamp_min(0)  # transformers takes them from the caller
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """The generation prompts: 14, 10 and 5 tokens, left-padded (B=3, PROMPT) with their mask; row 0 has no padding."""
    return left_padded([PROMPT, PROMPT - 4, PROMPT - 9], seed=4)


def hf_generate(ref: Reference, ids: torch.Tensor, mask: torch.Tensor | None, use_cache: bool):
    """transformers' greedy continuation (B, N + NEW) and the scores (B, vocab) of each of its NEW steps; computed once
    per reference and arguments."""
    key = (ids.numpy().tobytes(), None if mask is None else mask.numpy().tobytes(), use_cache)
    if key not in ref.generated:
        with torch.no_grad():
            out = ref.fresh().generate(ids, attention_mask=torch.ones_like(ids) if mask is None else mask,
                                       max_new_tokens=NEW, do_sample=False, use_cache=use_cache, pad_token_id=0,
                                       output_scores=True, return_dict_in_generate=True)
        assert out.sequences.shape == (ids.shape[0], ids.shape[1] + NEW), "transformers stopped early"
        ref.generated[key] = out.sequences, out.scores
    return ref.generated[key]


def assert_same_tokens(got: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != expected {tuple(expected.shape)}"
    differ = (got != expected).nonzero()
    if len(differ):
        row, step = differ[0].tolist()
        raise AssertionError(f"{what}: {len(differ)} tokens differ, first at row {row} position {step}: "
                             f"got {got[row].tolist()}, expected {expected[row].tolist()}")


# --------------------------------------------------------------------------------------------------
# the references are worth testing against


def test_the_reference_exercises_each_feature(ref, tmp_path):
    """transformers' logits vary along the sequence, and turning off any of the case's features (or moving a window by
    one) changes them by far more than the tolerance."""
    ids = random_ids(2, LENGTH, seed=1)
    logits = hf_logits(ref, ids)
    assert len(set(logits[0].argmax(-1).tolist())) > 5, "degenerate reference: one token wins everywhere"
    for knob, change in ref.case.knobs.items():
        other = _from_pretrained(_with_config(ref.directory, tmp_path / knob, change))
        difference = max_abs_error(hf_logits(ref, ids, model=other), logits)
        assert difference > 10 * ref.atol, f"{knob}: {change} moves the logits by only {difference:.2e}"


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_the_reference_decodes_with_a_margin(ref, use_cache):
    """transformers' greedy choices are clear (so a float32 rounding elsewhere cannot flip one) and varied."""
    ids, mask = prompts()
    for batch, batch_mask in ((ids, mask), (ids[:1], None)):
        tokens, scores = hf_generate(ref, batch, batch_mask, use_cache)
        top2 = torch.stack(scores).topk(2, dim=-1).values  # (NEW, B, 2)
        gap = (top2[..., 0] - top2[..., 1]).min().item()
        assert gap > MARGIN * ref.error, f"a near tie: top-2 gap {gap:.2e}, float32 error {ref.error:.2e}"
        for row in tokens[:, PROMPT:].tolist():
            assert len(set(row)) > 3, f"degenerate test: greedy decoding repeats itself: {row}"


# --------------------------------------------------------------------------------------------------
# parity


@pytest.mark.parametrize("kernel", KERNELS)
def test_logits_match_transformers(ref, kernel):
    """Under each exact kernel, chosen when loading and switched afterwards; a kernel that declares no softcap support
    refuses a softcapped model, saying so."""
    ids = random_ids(2, LENGTH, seed=1)
    expected = hf_logits(ref, ids)
    if kernel == "auto":
        model, tokenizer = hub.load(ref.directory)
        assert tokenizer is None  # no tokenizer files in the directory
        builds = {"load": lambda: model}
    else:
        builds = {"load_model": lambda: hub.load_model(ref.directory, kernel=kernel),
                  "set_kernel": lambda: set_kernel(hub.load(ref.directory)[0], kernel)}
    refused = kernel != "auto" and ref.softcap and not get_kernel(kernel).capabilities.softcap
    for how, build in builds.items():
        with pytest.raises(ValueError, match="softcap") if refused else contextlib.nullcontext():
            model = build()
            assert isinstance(model, GPT) and not model.training
            with torch.no_grad():
                got = model(ids).logits
        if not refused:
            assert_close(got, expected, atol=ref.atol, what=f"logits ({kernel}, {how})")


def test_left_padding_changes_nothing(ref):
    """Each row of a left-padded batch gives, at its real positions, transformers' padded logits and (except where
    transformers' dynamic RoPE depends on the batch) attnkit's own for the row alone, which are transformers' too."""
    lengths = [LENGTH, LENGTH - 7, LENGTH - 15]
    ids, mask = left_padded(lengths, seed=2)
    expected = hf_logits(ref, ids, mask)
    model, _ = hub.load(ref.directory)
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
    for i, n in enumerate(lengths):
        row = ids[i:i + 1, -n:]
        with torch.no_grad():
            alone = model(row).logits[0]
        assert_close(got[i, -n:], expected[i, -n:], atol=ref.atol, what=f"row {i} ({n} tokens) padded")
        assert_close(alone, hf_logits(ref, row)[0], atol=ref.atol, what=f"row {i} ({n} tokens) alone")
        if not ref.case.per_call_rope:
            assert_close(got[i, -n:], alone, atol=ref.atol, what=f"row {i} ({n} tokens) padded vs alone")


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_greedy_tokens_match_transformers(ref, use_cache):
    """Greedy tokens equal transformers' in the same mode, with or without a KV cache (dynamic NTK's differ: its cached
    keys keep the frequencies they were rotated with; Phi-3 re-reads the sequence when longrope switches to its long
    factors), for one unpadded prompt and for a left-padded batch."""
    ids, mask = prompts()
    prompt = ids[:1]
    expected_one, _ = hf_generate(ref, prompt, None, use_cache)
    expected_batch, _ = hf_generate(ref, ids, mask, use_cache)
    model, _ = hub.load(ref.directory)
    with torch.no_grad():
        got_one = model.generate(prompt, NEW, use_cache=use_cache)
        got_batch = model.generate(ids, NEW, attention_mask=mask, use_cache=use_cache)
    assert_same_tokens(got_one, expected_one, "one prompt")
    assert_same_tokens(got_batch, expected_batch, "left-padded batch")


def test_save_round_trips_and_transformers_reads_it(ref, tmp_path):
    model, _ = hub.load(ref.directory)
    hub.save(model, tmp_path)
    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["model_type"] == ref.pristine.config.model_type
    reread = _from_pretrained(tmp_path)
    assert type(reread) is type(ref.pristine)
    ids = random_ids(2, LENGTH, seed=4)
    padded, mask = left_padded([LENGTH, LENGTH - 11], seed=5)
    for batch, batch_mask, what in ((ids, None, "batch"), (padded, mask, "left-padded batch")):
        assert_close(hf_logits(ref, batch, batch_mask, model=copy.deepcopy(reread)), hf_logits(ref, batch, batch_mask),
                     atol=SAVE_ATOL, what=f"transformers on the saved copy, {what}")
    again, _ = hub.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
        assert torch.equal(again(padded, attention_mask=mask).logits, model(padded, attention_mask=mask).logits)


def test_llama_tiny_preset_saves_as_a_llama_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("llama-tiny")).eval()
    with torch.no_grad():  # peaked attention; 1-D parameters are RMSNorm gains (the preset has no biases)
        for p in model.parameters():
            p.normal_(1.0 if p.ndim == 1 else 0.0, 0.1)
    hub.save(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    hf = _from_pretrained(tmp_path)
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 32000, (2, 24), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = hf(ids).logits
        error = max_abs_error(expected, hf.double()(ids).logits)
        got = model(ids).logits
    assert len(set(expected[0].argmax(-1).tolist())) > 5, "degenerate test: one token wins everywhere"
    assert_close(got, expected, atol=3 * error + FLOOR * magnitude(expected),
                 what="transformers' LlamaForCausalLM on attnkit's llama-tiny")


# --------------------------------------------------------------------------------------------------
# errors


def _wrong_shapes(directory: Path) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(name, shape transformers expects from config.json, shape stored) for every stored tensor that differs."""
    config = transformers.AutoConfig.from_pretrained(directory)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(directory / "model.safetensors", "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return sorted((k, expected[k], shape) for k, shape in stored.items() if expected[k] != shape)


def test_sizes_that_do_not_fit_the_tensors_are_all_listed(ref, tmp_path):
    directory = _with_config(ref.directory, tmp_path, {"intermediate_size": COMMON["intermediate_size"] + 8})
    wrong = _wrong_shapes(directory)
    assert len(wrong) >= 2 * ref.pristine.config.num_hidden_layers  # every layer's MLP projections
    with pytest.raises(CheckpointError) as info:
        hub.load(directory)
    error = info.value
    assert sorted(error.wrong_shapes) == wrong
    assert not error.missing and not error.unexpected
    assert "wrong shapes" in str(error)


def test_an_unknown_model_type_lists_the_supported_ones(tmp_path):
    built = transformers.LlamaForCausalLM(_llama(num_hidden_layers=1))
    directory = _saved(built, tmp_path)
    _edit_config(directory, {"model_type": "falcon_mamba"})
    with pytest.raises(CheckpointError, match=r"model_type='falcon_mamba' is not supported; supported model types: ") \
            as info:
        hub.load(directory)
    supported = str(info.value).split("supported model types: ", 1)[1].split("\n")[0]
    listed = {t.strip() for t in supported.split(",")}
    missing = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"} - listed
    assert not missing, f"not listed as supported: {sorted(missing)} in {supported!r}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="caps the address space through /proc and rlimit")
def test_a_config_asking_for_gigabytes_fails_before_allocating(tmp_path):
    """intermediate_size=10**8 asks for 3 x 48 x 10**8 floats a layer (~58 GB): the error comes from the headers."""
    directories = []
    for case in CASES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = transformers.AutoModelForCausalLM.from_config(case.config())
        directory = _saved(built, tmp_path / case.name)
        _edit_config(directory, {**case.edit, "intermediate_size": 10 ** 8})
        directories.append(directory)
    for case, (kind, text, seconds) in zip(CASES, load_with_memory_capped([str(d) for d in directories])):
        assert kind == "CheckpointError", f"{case.name}: {kind}: {text[:500]}"
        assert "wrong shapes" in text and "100000000" in text and "mlp" in text, f"{case.name}: {text[:500]}"
        assert seconds < 10, f"{case.name}: {seconds:.1f} s"
