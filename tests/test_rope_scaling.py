"""RoPE scaling (RopeScaling) and partial rotary in RotaryEmbedding, and config.json's RoPE fields (hub/rope.py),
against Hugging Face transformers' own rotary embeddings and ``apply_rotary_pos_emb``.

Expected values always come from transformers. Its rotary embeddings compute in float32 whatever the inputs, so
the float64 expectations run transformers' own code with every float32 turned into float64 (``transformers_in_
float64``); the float32 checks compare both sides with that reference, ours allowed twice transformers' error
(tests/helpers.py's baseline rule).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import Gemma3TextConfig, LlamaConfig, Phi3Config
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_apply
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as phi3_apply

from attnkit.hub.rope import rope_from_hf, rope_to_hf
from attnkit.nn.positions import RopeScaling, RotaryEmbedding

from helpers import TOLERANCE, assert_close, baseline_atol, magnitude

D, H, T = 16, 2, 64  # head size, heads, the trained context of most cases


class _Float64(TorchFunctionMode):
    """Every torch call sees float64 where it asked for float32 (``.float()``, ``dtype=torch.float``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.float:
            return args[0].double()

        def swap(a: Any) -> Any:
            return torch.float64 if a is torch.float32 else a

        return func(*(swap(a) for a in args), **{k: swap(v) for k, v in (kwargs or {}).items()})


@contextlib.contextmanager
def transformers_in_float64() -> Iterator[None]:
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with _Float64():
            yield
    finally:
        torch.set_default_dtype(saved)


def hf_rotate(module: torch.nn.Module, position_ids: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
              float64: bool = True, layer_type: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' rotary embedding + apply_rotary_pos_emb (Phi-3's, which rotates the first cos.shape[-1]
    features, where that is less than the head)."""
    with transformers_in_float64() if float64 else contextlib.nullcontext():
        extra = {} if layer_type is None else {"layer_type": layer_type}
        cos, sin = module(q, position_ids, **extra)
        apply = llama_apply if cos.shape[-1] == q.shape[-1] else phi3_apply
        return apply(q, k, cos, sin)


def hf_module(config: Any, float64: bool = True) -> torch.nn.Module:
    """The rotary embedding of ``config`` (Phi-3's where partial: Llama's ignores partial_rotary_factor for the
    default type), built in float64 (so are its frequencies) or as transformers builds it."""
    partial = config.rope_parameters.get("partial_rotary_factor", 1.0) != 1.0
    cls = Phi3RotaryEmbedding if isinstance(config, Phi3Config) or partial else LlamaRotaryEmbedding
    with transformers_in_float64() if float64 else contextlib.nullcontext():
        return cls(config)


def qk(n: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, H, n, D, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(2, H, n, D, generator=g, dtype=torch.float64).to(dtype))


def check_float64(ours: RotaryEmbedding, hf: torch.nn.Module, position_ids: torch.Tensor, what: str,
                  layer_type: str | None = None) -> None:
    q, k = qk(position_ids.shape[1], seed=position_ids.shape[1])
    expected = hf_rotate(hf, position_ids, q, k, layer_type=layer_type)
    for name, got, want in zip("qk", ours.rotate(position_ids, q, k), expected):
        assert_close(got, want, atol=TOLERANCE["floor", torch.float64] * magnitude(want), what=f"{what}: {name}")


# --------------------------------------------------------------------------------------------------
# Every scaling type and partial rotary against transformers


@dataclass
class Case:
    rope_parameters: dict[str, Any]
    ours: RopeScaling | None
    max_position_embeddings: int = 4 * T
    phi3: bool = False  # build a Phi3Config (Phi-3's longrope; partial rotary of the default type)
    top_level: dict[str, Any] = field(default_factory=dict)

    @property
    def rotary_dim(self) -> int:
        return int(D * self.rope_parameters.get("partial_rotary_factor", 1.0))

    @property
    def trained(self) -> int:
        return self.ours.original_max_len or T if self.ours is not None else T

    def config(self) -> Any:
        cls = Phi3Config if self.phi3 else LlamaConfig
        extra = {"original_max_position_embeddings": self.trained} if self.phi3 else {"head_dim": D}
        return cls(hidden_size=D * H, num_attention_heads=H, max_position_embeddings=self.max_position_embeddings,
                   rope_parameters=copy.deepcopy(self.rope_parameters), **extra, **self.top_level)

    def rope(self) -> RotaryEmbedding:
        return RotaryEmbedding(D, self.rope_parameters["rope_theta"], self.ours, rotary_dim=self.rotary_dim)


_g = torch.Generator().manual_seed(7)
SHORT, LONG = (tuple((1 + 3 * torch.rand(D // 2, generator=_g, dtype=torch.float64)).tolist()) for _ in range(2))
YARN_T = 256  # a trained length at which the yarn ramp spans several of the 8 frequencies (dimensions 0..4)

CASES = {
    "default": Case({"rope_type": "default", "rope_theta": 10000.0}, None),
    "linear": Case({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, RopeScaling("linear", 4.0)),
    "dynamic": Case({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
                    RopeScaling("dynamic", 4.0, original_max_len=T), max_position_embeddings=T),
    "yarn": Case({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                  "original_max_position_embeddings": YARN_T},
                 RopeScaling("yarn", 4.0, original_max_len=YARN_T), max_position_embeddings=4 * YARN_T),
    "yarn-deepseek": Case({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "beta_fast": 16.0,
                           "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 1.0, "truncate": False,
                           "original_max_position_embeddings": YARN_T},
                          RopeScaling("yarn", 40.0, original_max_len=YARN_T, beta_fast=16.0, beta_slow=2.0,
                                      mscale=0.707, mscale_all_dim=1.0, truncate=False)),
    "yarn-attention-factor": Case({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                                   "attention_factor": 1.25, "original_max_position_embeddings": YARN_T},
                                  RopeScaling("yarn", 2.0, original_max_len=YARN_T, attention_factor=1.25)),
    "llama3": Case({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": T},  # wavelengths in all 3 bands
                   RopeScaling("llama3", 8.0, original_max_len=T), max_position_embeddings=8 * T),
    "longrope": Case({"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": list(SHORT),
                      "long_factor": list(LONG)},  # no factor: max_position_embeddings / T, as Phi-3 writes it
                     RopeScaling("longrope", 4.0, original_max_len=T, short_factor=SHORT, long_factor=LONG),
                     phi3=True),
    "partial-default": Case({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}, None,
                            phi3=True),
    "partial-yarn": Case({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "partial_rotary_factor": 0.5,
                          "original_max_position_embeddings": YARN_T},
                         RopeScaling("yarn", 4.0, original_max_len=YARN_T)),
    "partial-dynamic": Case({"rope_type": "dynamic", "rope_theta": 500.0, "factor": 2.0,
                             "partial_rotary_factor": 0.75},
                            RopeScaling("dynamic", 2.0, original_max_len=T), max_position_embeddings=T),
    "partial-longrope": Case({"rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0,
                              "attention_factor": 1.1, "partial_rotary_factor": 0.5,
                              "short_factor": list(SHORT[:4]), "long_factor": list(LONG[:4])},
                             RopeScaling("longrope", 4.0, original_max_len=T, attention_factor=1.1,
                                         short_factor=SHORT[:4], long_factor=LONG[:4]), phi3=True),
}


def positions(trained: int, n: int = 97, seed: int = 0) -> torch.Tensor:
    """(2, n) sorted positions from 0 to 3x the trained length: inside it and beyond."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 3 * trained, (2, n), generator=g).sort(dim=-1).values
    pos[:, 0] = 0
    return pos


@pytest.mark.parametrize("name", CASES)
def test_rotation_equals_transformers_in_float64(name):
    case = CASES[name]
    check_float64(case.rope(), hf_module(case.config()), positions(case.trained), name)


@pytest.mark.parametrize("name", CASES)
def test_rotation_in_float32_is_at_least_as_exact_as_transformers(name):
    case = CASES[name]
    pos = positions(case.trained, seed=1)
    q, k = qk(pos.shape[1])
    reference = hf_rotate(hf_module(case.config()), pos, q, k)
    theirs = hf_rotate(hf_module(case.config(), float64=False), pos, q.float(), k.float(), float64=False)
    ours = case.rope().rotate(pos, q.float(), k.float())
    for name_, got, baseline, want in zip("qk", ours, theirs, reference):
        assert got.dtype == torch.float32
        assert_close(got, want, atol=baseline_atol(baseline, want, torch.float32), what=f"{name}: {name_}")


def test_frequencies_change_where_the_cases_say():
    """Guards the cases above: each scaled one computes other frequencies than plain RoPE (so that the parity
    tests could fail), and partial rotary leaves the other features untouched."""
    plain = hf_module(CASES["default"].config()).inv_freq
    for name, case in CASES.items():
        module = hf_module(case.config())
        if case.ours is not None and case.ours.kind not in ("dynamic", "longrope") and case.rotary_dim == D:
            assert not torch.allclose(module.inv_freq, plain), name
    x = torch.randn(1, 1, 5, D, dtype=torch.float64)
    y = CASES["partial-yarn"].rope().rotate(torch.arange(5)[None] * 1000, x)[0]
    assert torch.equal(y[..., D // 2:], x[..., D // 2:]) and not torch.allclose(y[..., :D // 2], x[..., :D // 2])


# --------------------------------------------------------------------------------------------------
# Stateful kinds: a generation-like sequence of calls on one instance, as on transformers' one module


def _calls(trained: int) -> list[torch.Tensor]:
    """A short input (fills the cached table), a prefill past the trained length, single-token steps, a short
    input again, then inputs of exactly the trained length and within the longest seen."""
    def span(a: int, b: int) -> torch.Tensor:
        row = torch.arange(a, b)
        return torch.stack((row, (row - 3).clamp_min(0)))  # (2, n): the second row left-padded by 3

    return [span(0, 5), span(0, trained + 10), span(trained + 10, trained + 11), span(trained + 11, trained + 12),
            span(trained + 12, trained + 13), span(0, 5), span(0, trained), span(0, trained + 20), span(0, trained),
            span(trained + 4, trained + 5), span(trained - 1, trained), span(0, 3)]


# Whether transformers' frequencies differ from the trained ones after each call of _calls: longrope picks long or
# short afresh at every call.
LONGROPE_STATE = [0, 1, 1, 1, 1, 0, 0, 1, 0, 1, 0, 0]


@pytest.mark.parametrize("name", ["longrope", "partial-longrope"])
def test_longrope_follows_transformers_through_calls(name):
    case = CASES[name]
    ours, hf = case.rope(), hf_module(case.config())
    changed = []
    for step, position_ids in enumerate(_calls(case.trained)):
        check_float64(ours, hf, position_ids, f"{name}, call {step} (positions up to {int(position_ids.max())})")
        changed.append(int(not torch.equal(hf.inv_freq, hf.original_inv_freq)))
    assert changed == LONGROPE_STATE


@pytest.mark.parametrize("name", ["dynamic", "partial-dynamic"])
def test_dynamic_follows_transformers_through_generation(name):
    """Decoding: a prefill shorter than the trained length, then one token per call past it; positions only grow,
    so one transformers module (which keeps the longest length it has seen) and ours agree at every step."""
    case = CASES[name]
    ours, hf = case.rope(), hf_module(case.config())
    calls = [torch.arange(case.trained - 3)[None]] + [torch.tensor([[t]]) for t in range(case.trained - 3,
                                                                                          case.trained + 6)]
    for step, position_ids in enumerate(calls):
        check_float64(ours, hf, position_ids, f"{name}, step {step} (position {int(position_ids.max())})")
    assert not torch.equal(hf.inv_freq, hf.original_inv_freq)  # the steps went past the trained length


@pytest.mark.parametrize("name", ["dynamic", "partial-dynamic"])
def test_dynamic_depends_on_each_call_alone(name):
    """Unlike transformers' module, ours keeps no history: each call equals a fresh transformers module's, also
    a short input after a long one (which transformers would rotate with the long input's frequencies)."""
    case = CASES[name]
    ours = case.rope()
    for step, position_ids in enumerate(_calls(case.trained)):
        check_float64(ours, hf_module(case.config()), position_ids,
                      f"{name}, call {step} (positions up to {int(position_ids.max())})")


def counting_angles(rope: RotaryEmbedding) -> list[int]:
    """The number of positions of each float64 cos/sin computation ``rope`` makes from now on."""
    computed: list[int] = []
    angles = rope.angles
    rope.angles = lambda p: computed.append(p.numel()) or angles(p)
    return computed


def test_decoding_looks_cos_and_sin_up_without_trigonometry():
    """After a prefill, single-token steps read the cached table (no float64 cos/sin per call); longrope computes
    each set's table once however often it switches."""
    q, k = qk(1)
    for rope in (RotaryEmbedding(D), CASES["longrope"].rope(), CASES["dynamic"].rope()):
        computed = counting_angles(rope)
        rope.rotate(torch.arange(8)[None], torch.zeros(1, H, 8, D, dtype=torch.float64))  # the trained table
        for t in range(8, 20):
            rope.rotate(torch.tensor([[t]]), q[:1], k[:1])
        assert len(computed) == 1, computed
    rope = CASES["longrope"].rope()
    computed = counting_angles(rope)
    for t in [*range(T - 2, T + 3), 3, T + 5]:  # short, long, short, long
        rope.rotate(torch.arange(t + 1)[None], torch.zeros(1, 1, t + 1, D))
    assert len(computed) == 2, computed


def test_old_constructor_calls_keep_their_meaning():
    x = torch.randn(1, 2, 3, 64, dtype=torch.float64)
    pos = torch.tensor([[3, 500, 9000]])
    plain = RotaryEmbedding(64).rotate(pos, x)[0]
    hf = hf_module(LlamaConfig(hidden_size=128, num_attention_heads=2, head_dim=64,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    assert_close(plain, hf_rotate(hf, pos, x, x)[0], atol=1e-12, what="RotaryEmbedding(64)")
    linear = RotaryEmbedding(64, 10000.0, scaling="linear", factor=4.0)
    assert linear.scaling == RopeScaling("linear", 4.0)
    # "ntk" (no transformers type): plain RoPE whose base is base · factor^(d / (d - 2))
    ntk = RotaryEmbedding(64, 10000.0, scaling="ntk", factor=4.0).rotate(pos, x)[0]
    hf = hf_module(LlamaConfig(hidden_size=128, num_attention_heads=2, head_dim=64,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * 4.0 ** (64 / 62)}))
    assert_close(ntk, hf_rotate(hf, pos, x, x)[0], atol=1e-12, what="ntk")


# --------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("build, exc, message", [
    (lambda: RopeScaling("cubic"), ValueError, r"RopeScaling\.kind must be one of 'linear', 'ntk', 'dynamic'"),
    (lambda: RopeScaling("linear", 0.5), ValueError, r"RopeScaling\.factor must be a finite number >= 1"),
    (lambda: RopeScaling("linear", math.nan), ValueError, r"RopeScaling\.factor must be"),
    (lambda: RopeScaling("yarn", 4.0), ValueError, r"RopeScaling\.original_max_len .* is required by kind='yarn'"),
    (lambda: RopeScaling("dynamic", 2.0, original_max_len=0), ValueError,
     r"RopeScaling\.original_max_len must be a positive int"),
    (lambda: RopeScaling("llama3", 2.0, original_max_len=64.0), TypeError,
     r"RopeScaling\.original_max_len must be a positive int"),
    (lambda: RopeScaling("linear", 2.0, original_max_len=64), ValueError,
     r"RopeScaling\.original_max_len is not used by kind='linear'"),
    (lambda: RopeScaling("llama3", 8.0, original_max_len=64, short_factor=(1.0,)), ValueError,
     r"RopeScaling\.short_factor is not used by kind='llama3'"),
    (lambda: RopeScaling("yarn", 4.0, original_max_len=64, beta_fast=0.0), ValueError,
     r"RopeScaling\.beta_fast must be a finite number > 0"),
    (lambda: RopeScaling("yarn", 4.0, original_max_len=64, attention_factor=-1.0), ValueError,
     r"RopeScaling\.attention_factor must be None or a finite number > 0"),
    (lambda: RopeScaling("yarn", 4.0, original_max_len=64, truncate="no"), TypeError,
     r"RopeScaling\.truncate must be a bool"),
    (lambda: RopeScaling("llama3", 8.0, original_max_len=64, low_freq_factor=4.0, high_freq_factor=4.0),
     ValueError, r"RopeScaling\.high_freq_factor must be > low_freq_factor=4\.0"),
    (lambda: RopeScaling("longrope", 2.0, original_max_len=64), ValueError,
     r"RopeScaling\.short_factor must be a non-empty tuple"),
    (lambda: RopeScaling("longrope", 2.0, original_max_len=64, short_factor=(1.0,), long_factor=(1.0, 2.0)),
     ValueError, r"RopeScaling\.long_factor must have as many entries as short_factor \(1\)"),
    (lambda: RotaryEmbedding(16, rotary_dim=7), ValueError, r"rotary_dim must be an even int <= head_dim=16"),
    (lambda: RotaryEmbedding(16, rotary_dim=18), ValueError, r"rotary_dim must be an even int <= head_dim=16"),
    (lambda: RotaryEmbedding(16, rotary_dim=0), ValueError, r"rotary_dim must be a positive int"),
    (lambda: RotaryEmbedding(16, scaling="yarn"), ValueError, r"scaling must be None, a RopeScaling, 'linear'"),
    (lambda: RotaryEmbedding(16, scaling="linear", factor=0.5), ValueError, r"factor must be >= 1"),
    (lambda: RotaryEmbedding(16, scaling=RopeScaling("linear", 2.0), factor=2.0), ValueError,
     r"factor=2\.0 goes with scaling='linear' or 'ntk'; a RopeScaling carries its own"),
    (lambda: RotaryEmbedding(16, scaling=CASES["longrope"].ours, rotary_dim=8), ValueError,
     r"need rotary_dim / 2 = 4 entries .*, got 8"),
    (lambda: RotaryEmbedding(16, scaling=RopeScaling("dynamic", 2.0, original_max_len=8), rotary_dim=2), ValueError,
     r"RopeScaling\(kind='dynamic'\) needs rotary_dim >= 4"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_settings_are_refused_naming_the_field(build, exc, message):
    with pytest.raises(exc, match=message):
        build()


# --------------------------------------------------------------------------------------------------
# config.json <-> (base, RopeScaling, partial_rotary_factor)


def _old_format(case: Case) -> dict[str, Any]:
    """The case's RoPE as older checkpoints write it: rope_theta, rope_scaling, partial_rotary_factor on top."""
    params = dict(case.rope_parameters)
    hf: dict[str, Any] = {"rope_theta": params.pop("rope_theta")}
    if "partial_rotary_factor" in params:
        hf["partial_rotary_factor"] = params.pop("partial_rotary_factor")
    rope_type = params.pop("rope_type")
    hf["rope_scaling"] = None if rope_type == "default" else {"type": rope_type, **params}
    return hf


def _config_json(case: Case, old: bool) -> dict[str, Any]:
    hf = {"model_type": "phi3" if case.phi3 else "llama", "hidden_size": D * H, "num_attention_heads": H,
          "max_position_embeddings": case.max_position_embeddings, **case.top_level}
    if case.phi3:
        hf["original_max_position_embeddings"] = case.trained
    else:
        hf["head_dim"] = D
    hf.update(_old_format(case) if old else {"rope_parameters": copy.deepcopy(case.rope_parameters)})
    return hf


def _from_hf_config(hf: dict[str, Any]) -> Any:
    return (Phi3Config if hf["model_type"] == "phi3" else LlamaConfig).from_dict(copy.deepcopy(hf))


HUB_CASES = {**CASES,
             # transformers prefers a top-level original_max_position_embeddings to the one in the parameters
             "yarn-top-level-original": Case({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                              "original_max_position_embeddings": 128},
                                             RopeScaling("yarn", 4.0, original_max_len=YARN_T),
                                             max_position_embeddings=4 * YARN_T,
                                             top_level={"original_max_position_embeddings": YARN_T}),
             "yarn-no-factor": Case({"rope_type": "yarn", "rope_theta": 10000.0, "factor": None,
                                     "original_max_position_embeddings": YARN_T},
                                    RopeScaling("yarn", 8.0, original_max_len=YARN_T),
                                    max_position_embeddings=8 * YARN_T)}


@pytest.mark.parametrize("old", [False, True], ids=["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("name", HUB_CASES)
def test_rope_from_hf_reads_config_json_as_transformers_does(name, old):
    case = HUB_CASES[name]
    hf = _config_json(case, old)
    base, scaling, fraction = rope_from_hf(hf)
    assert (base, scaling, int(D * fraction)) == (case.rope_parameters["rope_theta"], case.ours, case.rotary_dim)
    ours = RotaryEmbedding(D, base, scaling, rotary_dim=int(D * fraction))
    check_float64(ours, hf_module(_from_hf_config(hf)), positions(case.trained), f"{name} from config.json")


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not n.startswith("yarn-attention")])
def test_rope_to_hf_round_trips_through_transformers(name):
    case = CASES[name]
    base, fraction = case.rope_parameters["rope_theta"], case.rotary_dim / D
    fields = rope_to_hf(base, case.ours, fraction)
    hf = {"model_type": "phi3" if case.phi3 else "llama", "hidden_size": D * H, "num_attention_heads": H,
          "max_position_embeddings": 4 * case.trained, **({} if case.phi3 else {"head_dim": D}), **fields}
    assert rope_from_hf(hf) == (base, case.ours, fraction)
    check_float64(case.rope(), hf_module(_from_hf_config(hf)), positions(case.trained), f"{name} through config.json")


GEMMA = {"model_type": "gemma3_text", "hidden_size": D * H, "num_attention_heads": H, "num_key_value_heads": 1,
         "head_dim": D, "max_position_embeddings": 4 * T, "num_hidden_layers": 2,
         "layer_types": ["sliding_attention", "full_attention"]}


LINEAR_GLOBAL = {"full_attention": (1e6, RopeScaling("linear", 8.0)), "sliding_attention": (1e4, None)}


@pytest.mark.parametrize("hf, expected", [
    ({**GEMMA, "rope_parameters": {"full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, LINEAR_GLOBAL),
    ({**GEMMA, "rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
     LINEAR_GLOBAL),
    ({**GEMMA, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, LINEAR_GLOBAL),  # Gemma 3's default bases
    # per layer type, transformers ignores a top-level original_max_position_embeddings, and yarn's truncate
    # (it reads truncate from the top of rope_parameters)
    ({**GEMMA, "original_max_position_embeddings": 512,
      "rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "beta_fast": 16.0,
                                             "beta_slow": 2.0, "truncate": False,
                                             "original_max_position_embeddings": 256},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     {"full_attention": (1e4, RopeScaling("yarn", 4.0, original_max_len=256, beta_fast=16.0, beta_slow=2.0)),
      "sliding_attention": (1e4, None)}),
], ids=["per-layer-type", "older", "older-defaults", "per-layer-type-yarn"])
def test_gemma3_rope_per_layer_type(hf, expected):
    with transformers_in_float64():
        module = Gemma3RotaryEmbedding(Gemma3TextConfig.from_dict(copy.deepcopy(hf)))
    for layer_type, (base, scaling) in expected.items():
        assert rope_from_hf(hf, layer_type=layer_type) == (base, scaling, 1.0)
        check_float64(RotaryEmbedding(D, base, scaling), module, positions(4 * T), layer_type, layer_type=layer_type)


def test_rope_scaling_wins_over_rope_parameters_as_in_transformers():
    hf = {**_config_json(CASES["linear"], old=False), "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    assert rope_from_hf(hf) == (10000.0, RopeScaling("linear", 2.0), 1.0)
    check_float64(RotaryEmbedding(D, 10000.0, RopeScaling("linear", 2.0)), hf_module(_from_hf_config(hf)),
                  positions(T), "rope_scaling and rope_parameters")


def test_phi3_without_a_top_level_trained_length_uses_its_class_default():
    """Phi3Config's original_max_position_embeddings defaults to 4096 and overrides the RoPE parameters' own;
    with max_position_embeddings below it, the implied factor is < 1 and the attention factor 1."""
    hf = _config_json(CASES["longrope"], old=True)
    del hf["original_max_position_embeddings"]
    hf["rope_scaling"]["original_max_position_embeddings"] = T
    expected = RopeScaling("longrope", 1.0, original_max_len=4096, short_factor=SHORT, long_factor=LONG)
    assert rope_from_hf(hf) == (10000.0, expected, 1.0)
    ours = RotaryEmbedding(D, 10000.0, expected)
    hf_rope = hf_module(_from_hf_config(hf))
    for position_ids in (positions(T), positions(4096)):  # short, then long
        check_float64(ours, hf_rope, position_ids, "phi3 default trained length")


def test_phi3_legacy_rope_type_su_reads_as_longrope():
    hf = _config_json(CASES["longrope"], old=True)
    hf["rope_scaling"]["type"] = "su"
    assert rope_from_hf(hf)[1] == CASES["longrope"].ours
    check_float64(CASES["longrope"].rope(), hf_module(_from_hf_config(hf)), positions(T), "su")


@pytest.mark.parametrize("hf, layer_type, message", [
    ({"rope_parameters": {"rope_type": "proportional", "rope_theta": 1e4}}, None,
     r"rope_type 'proportional' is not supported; supported: default, linear, dynamic, yarn, llama3, longrope"),
    ({"rope_scaling": {"type": "mrope"}}, None, r"rope_type 'mrope' is not supported"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, None,
     r"rope_parameters is keyed by layer type \(full_attention\): pass layer_type="),
    ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, "sliding_attention",
     r"layer_type 'sliding_attention' is not in rope_parameters, which has full_attention"),
    ({"rope_parameters": {"rope_type": "linear"}}, None, r"rope_type 'linear' needs factor"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, None,
     r"rope_type 'dynamic' needs the trained context length: .* max_position_embeddings"),
    ({"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0],
                          "original_max_position_embeddings": 64}}, None,
     r"rope_type 'longrope' without a factor needs max_position_embeddings"),
    ({"rope_theta": -1.0}, None, r"rope_theta must be a finite number > 0"),
    ({"rope_theta": 1e4, "partial_rotary_factor": 1.5}, None, r"partial_rotary_factor must be a number in \(0, 1\]"),
], ids=["unknown", "unknown-old", "per-layer", "no-such-layer", "no-factor", "no-length", "no-longrope-factor",
        "theta", "fraction"])
def test_rope_from_hf_refuses_what_it_cannot_read(hf, layer_type, message):
    with pytest.raises(ValueError, match=message):
        rope_from_hf(hf, layer_type=layer_type)


def test_rope_to_hf_refuses_ntk():
    with pytest.raises(ValueError, match=r"rope_type: transformers has no fixed NTK scaling"):
        rope_to_hf(1e4, RopeScaling("ntk", 2.0))
