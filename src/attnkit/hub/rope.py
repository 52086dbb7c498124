"""RoPE settings in a Hugging Face config.json <-> attnkit's (base, :class:`~attnkit.nn.positions.RopeScaling`,
partial rotary factor), read the way transformers 5 reads them.

Two formats of config.json carry them:

    transformers 5                                   older checkpoints
    "rope_parameters": {"rope_type": "yarn",         "rope_theta": 1000000.0,
                        "rope_theta": 1000000.0,     "rope_scaling": {"type": "yarn", "factor": 4.0, ...},
                        "factor": 4.0, ...,          "partial_rotary_factor": 0.5,
                        "partial_rotary_factor": 0.5}
    Gemma 3: {"full_attention": {...},               Gemma 3: rope_scaling applies to the full-attention layers,
              "sliding_attention": {...}}             "rope_local_base_freq" is the sliding layers' base

The trained length (``RopeScaling.original_max_len``) is what transformers takes for each type: for "dynamic",
``max_position_embeddings``; for "yarn", "llama3" and "longrope", a top-level ``original_max_position_embeddings``
if there is one (Phi-3 always has one: 4096 by default), else the one in the RoPE parameters, else
``max_position_embeddings``. Where yarn and longrope have no ``factor``, it is max_position_embeddings / that length.

    >>> base, scaling, fraction = rope_from_hf(json.load(open("config.json")))
    >>> rope = RotaryEmbedding(head_dim, base, scaling, rotary_dim=int(head_dim * fraction))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..functional.checks import is_positive_finite
from ..nn.positions import RopeScaling

SUPPORTED = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")  # transformers' rope_type values
FULL, SLIDING = "full_attention", "sliding_attention"

# Model classes whose defaults differ from transformers' generic ones (rope_theta 10000, no top-level
# original_max_position_embeddings), among the families attnkit loads; config.json values override them.
_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {"rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0},
    "gemma3": {"rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0},
    "phi3": {"original_max_position_embeddings": 4096},
}
# Phi-3's config class reads its legacy names "su" and "yarn" as longrope.
_LEGACY_TYPES: dict[str, dict[str, str]] = {"phi3": {"su": "longrope", "yarn": "longrope"}}


def _keyed_by_layer(params: Mapping[str, Any]) -> bool:
    """Whether rope_parameters holds one dict per layer type (Gemma 3) rather than one set of parameters."""
    return bool(params) and all(isinstance(v, Mapping) or v is None for v in params.values())


def _parameters(hf: Mapping[str, Any], layer_type: str | None) -> tuple[dict[str, Any], bool]:
    """The one flat set of RoPE parameters for ``layer_type``, with rope_theta and partial_rotary_factor filled in
    from the top level where missing, and whether it came from a per-layer-type dict."""
    given = hf.get("rope_scaling") or hf.get("rope_parameters") or {}  # transformers: rope_scaling wins
    if _keyed_by_layer(given):
        if layer_type is None:
            raise ValueError(f"rope_parameters is keyed by layer type ({', '.join(given)}): pass layer_type= "
                             f"to say which layers' RoPE to read")
        if layer_type not in given:
            raise ValueError(f"layer_type {layer_type!r} is not in rope_parameters, which has {', '.join(given)}")
        if given[layer_type] is None:
            raise ValueError(f"rope_parameters[{layer_type!r}] is null: those layers have no RoPE")
        params, nested = dict(given[layer_type]), True
        if layer_type == SLIDING and "rope_local_base_freq" in hf:
            params.setdefault("rope_theta", hf["rope_local_base_freq"])
    elif layer_type == SLIDING and "rope_local_base_freq" in hf:  # Gemma 3's older format: no scaling there
        params, nested = {"rope_type": "default", "rope_theta": hf["rope_local_base_freq"]}, False
    else:
        params, nested = dict(given), False
    params.setdefault("rope_theta", hf.get("rope_theta", 10_000.0))
    params.setdefault("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    return params, nested


def _trained_length(hf: Mapping[str, Any], params: Mapping[str, Any], rope_type: str, nested: bool) -> int:
    """RopeScaling.original_max_len as transformers finds it for ``rope_type`` (see the module docstring)."""
    if rope_type == "dynamic":
        candidates = [("max_position_embeddings", hf.get("max_position_embeddings"))]
    else:
        candidates = [("original_max_position_embeddings", hf.get("original_max_position_embeddings")),
                      ("rope_parameters.original_max_position_embeddings",
                       params.get("original_max_position_embeddings")),
                      ("max_position_embeddings", hf.get("max_position_embeddings"))]
        if nested:  # transformers' per-layer-type path does not look at the top-level field
            candidates = candidates[1:]
    for _, value in candidates:
        if value is not None:
            return int(value)
    raise ValueError(f"rope_type {rope_type!r} needs the trained context length: config.json has none of "
                     f"{', '.join(name for name, _ in candidates)}")


def _required(params: Mapping[str, Any], rope_type: str, name: str) -> Any:
    if params.get(name) is None:
        raise ValueError(f"rope_type {rope_type!r} needs {name} in its RoPE parameters, config.json has none")
    return params[name]


def _implied_factor(hf: Mapping[str, Any], params: Mapping[str, Any], rope_type: str, trained: int) -> float:
    """yarn's and longrope's factor; without one, max_position_embeddings / the trained length."""
    if params.get("factor") is not None:
        return float(params["factor"])
    if hf.get("max_position_embeddings") is None:
        raise ValueError(f"rope_type {rope_type!r} without a factor needs max_position_embeddings "
                         f"(factor = max_position_embeddings / {trained}), config.json has neither")
    return float(hf["max_position_embeddings"]) / trained


def _scaling(hf: Mapping[str, Any], params: Mapping[str, Any], rope_type: str, nested: bool) -> RopeScaling | None:
    if rope_type == "default":
        return None
    if rope_type == "linear":
        return RopeScaling("linear", float(_required(params, rope_type, "factor")))
    trained = _trained_length(hf, params, rope_type, nested)
    if rope_type == "dynamic":
        return RopeScaling("dynamic", float(_required(params, rope_type, "factor")), original_max_len=trained)
    if rope_type == "llama3":
        return RopeScaling("llama3", float(_required(params, rope_type, "factor")), original_max_len=trained,
                           low_freq_factor=float(_required(params, rope_type, "low_freq_factor")),
                           high_freq_factor=float(_required(params, rope_type, "high_freq_factor")))
    factor = _implied_factor(hf, params, rope_type, trained)
    attention = params.get("attention_factor")
    attention = float(attention) if attention is not None else None
    if rope_type == "yarn":
        return RopeScaling(
            "yarn", factor, original_max_len=trained, attention_factor=attention,
            beta_fast=float(params.get("beta_fast") or 32), beta_slow=float(params.get("beta_slow") or 1),
            mscale=float(params["mscale"]) if params.get("mscale") else None,  # 0 reads as unset, as in transformers
            mscale_all_dim=float(params["mscale_all_dim"]) if params.get("mscale_all_dim") else None,
            # transformers reads truncate from the top rope_parameters dict, so per-layer-type entries never set it
            truncate=True if nested else bool(params.get("truncate", True)))
    return RopeScaling(  # longrope; its factor only sets the default attention factor, which is 1 for factor <= 1
        "longrope", max(factor, 1.0), original_max_len=trained, attention_factor=attention,
        short_factor=tuple(float(v) for v in _required(params, rope_type, "short_factor")),
        long_factor=tuple(float(v) for v in _required(params, rope_type, "long_factor")))


def rope_from_hf(hf: Mapping[str, Any], layer_type: str | None = None) -> tuple[float, RopeScaling | None, float]:
    """(base, scaling, partial_rotary_factor) of a config.json dict, in either format (module docstring).

    ``layer_type`` ("full_attention", "sliding_attention") picks the entry of a per-layer-type rope_parameters
    (Gemma 3), where it is required; for the older format, "sliding_attention" reads ``rope_local_base_freq``
    when the config has one. Unsupported rope types and missing fields raise a ValueError naming them.
    """
    model_type = hf.get("model_type", "")
    hf = {**_MODEL_DEFAULTS.get(model_type, {}), **hf}
    params, nested = _parameters(hf, layer_type)
    rope_type = params.get("rope_type", params.get("type", "default"))
    rope_type = _LEGACY_TYPES.get(model_type, {}).get(rope_type, rope_type)
    if rope_type not in SUPPORTED:
        raise ValueError(f"rope_type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED)}")
    base, fraction = params["rope_theta"], params["partial_rotary_factor"]
    if not is_positive_finite(base):
        raise ValueError(f"rope_theta must be a finite number > 0, got {base!r}")
    if not (is_positive_finite(fraction) and fraction <= 1):
        raise ValueError(f"partial_rotary_factor must be a number in (0, 1], got {fraction!r}")
    return float(base), _scaling(hf, params, rope_type, nested), float(fraction)


def rope_to_hf(base: float, scaling: RopeScaling | None = None, partial_rotary_factor: float = 1.0) -> dict[str, Any]:
    """The config.json fields from which transformers 5 builds the same rotary embedding: ``rope_parameters``,
    plus the trained length where transformers looks for it outside (``max_position_embeddings`` for "dynamic",
    ``original_max_position_embeddings`` for yarn, llama3 and longrope, which Phi-3's class would otherwise
    default). ``RopeScaling("ntk")`` has no transformers type: a ValueError.

        >>> rope_to_hf(500000.0, RopeScaling("llama3", 8.0, original_max_len=8192))
        {'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 500000.0, 'factor': 8.0, ...}, ...}
    """
    params: dict[str, Any] = {"rope_type": scaling.kind if scaling is not None else "default", "rope_theta": base}
    if partial_rotary_factor != 1.0:
        params["partial_rotary_factor"] = partial_rotary_factor
    fields: dict[str, Any] = {"rope_parameters": params}
    if scaling is None:
        return fields
    if scaling.kind == "ntk":
        raise ValueError("rope_type: transformers has no fixed NTK scaling (RopeScaling(kind='ntk')); save "
                         "base · factor^(d / (d - 2)) as the base with scaling=None instead")
    params["factor"] = scaling.factor
    if scaling.kind == "dynamic":
        fields["max_position_embeddings"] = scaling.original_max_len
    elif scaling.kind != "linear":
        params["original_max_position_embeddings"] = scaling.original_max_len
        fields["original_max_position_embeddings"] = scaling.original_max_len
    if scaling.kind == "yarn":
        params.update(beta_fast=scaling.beta_fast, beta_slow=scaling.beta_slow)
        optional = {"attention_factor": scaling.attention_factor, "mscale": scaling.mscale,
                    "mscale_all_dim": scaling.mscale_all_dim, "truncate": None if scaling.truncate else False}
        params.update({k: v for k, v in optional.items() if v is not None})
    elif scaling.kind == "llama3":
        params.update(low_freq_factor=scaling.low_freq_factor, high_freq_factor=scaling.high_freq_factor)
    elif scaling.kind == "longrope":
        params.update(short_factor=list(scaling.short_factor), long_factor=list(scaling.long_factor))
        if scaling.attention_factor is not None:
            params["attention_factor"] = scaling.attention_factor
    return fields


__all__ = ["rope_from_hf", "rope_to_hf", "SUPPORTED"]
