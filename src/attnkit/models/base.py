"""What every attnkit model shares: typed configs with named presets, and ``num_parameters``."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import Tensor, nn

from ..functional.checks import check_int, is_positive_finite
from ..functional.registry import Kernel
from ..nn.attention import check_kernel, set_kernel

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base of every model config: a dataclass whose ``PRESETS`` maps a name to field overrides.

        >>> GPTConfig.preset("gpt2-small", num_layers=2)   # a preset, with overrides
        >>> GPTConfig.preset("nano", attention={"num_kv_heads": 2})   # a dict updates a sub-config's fields
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def preset(cls: type[C], name: str, **overrides: Any) -> C:
        if name not in cls.PRESETS:
            known = ", ".join(sorted(cls.PRESETS)) or "none"
            raise ValueError(f"{cls.__name__} has no preset {name!r}; presets: {known}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        merged = dict(cls.PRESETS[name])
        for key, value in overrides.items():  # a sub-config given as a dict updates the preset's fields
            base = merged.get(key)
            merged[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_S = TypeVar("_S")


def sub_config(cls: type[_S], value: object, name: str) -> _S:
    """A config's part given as itself or as a dict of its fields (what ``to_dict`` and presets hold); a
    TypeError naming ``name`` and any unknown field otherwise."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - fields)
        if unknown:
            raise TypeError(f"{name}: {cls.__name__} has no field(s) {', '.join(unknown)}")
        return cls(**value)
    raise TypeError(f"{name} must be a {cls.__name__} or a dict of its fields, got {type(value).__name__}")


def require_positive(config: object, *names: str) -> None:
    """Raise a ValueError naming the first field of ``config`` that is not a positive int."""
    for name in names:
        check_int(f"{type(config).__name__}.{name}", getattr(config, name))


def require_heads(config: object, dim: int, num_heads: int, num_kv_heads: int | None = None, *,
                  rope: bool = False) -> None:
    """``num_heads`` must divide ``dim``, ``num_kv_heads`` (if set) must divide ``num_heads``, and with
    ``rope`` the head size must be even (RoPE rotates pairs)."""
    name = type(config).__name__
    if dim % num_heads:
        raise ValueError(f"{name}.num_heads={num_heads} must divide dim={dim}")
    if rope and (dim // num_heads) % 2:
        raise ValueError(f"{name}: RoPE needs an even head size, got dim / num_heads = {dim // num_heads}")
    if num_kv_heads is not None:
        check_int(f"{name}.num_kv_heads", num_kv_heads)
    if num_kv_heads is not None and num_heads % num_kv_heads:
        raise ValueError(f"{name}.num_kv_heads={num_kv_heads!r} must be a positive int dividing "
                         f"num_heads={num_heads}")


def require_positive_float(config: object, *names: str) -> None:
    """Raise a ValueError naming the first field of ``config`` that is not a finite number > 0."""
    for name in names:
        value = getattr(config, name)
        if not is_positive_finite(value):
            raise ValueError(f"{type(config).__name__}.{name} must be > 0 and finite, got {value!r}")


class _WithKernel(Protocol):
    @property
    def kernel(self) -> str | Kernel: ...


def require_kernel(config: _WithKernel) -> None:
    """``config.kernel`` must be "auto", a registered kernel's name or a kernel object (ValueError listing the
    registered names otherwise)."""
    check_kernel(config.kernel, f"{type(config).__name__}.kernel")


def require_dropout(config: object, *names: str) -> None:
    """Raise a ValueError naming the first field of ``config`` that is not a probability in [0, 1)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{type(config).__name__}.{name} must be in [0, 1), got {value!r}")


def require_token_ids(config: object, limits: dict[str, int]) -> None:
    """Each named field must be an int id in [0, limit); two or more named ids must differ."""
    for name, limit in limits.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
            raise ValueError(f"{type(config).__name__}.{name} must be an int in [0, {limit}), got {value!r}")
    values = [getattr(config, name) for name in limits]
    if len(set(values)) != len(values):
        raise ValueError(f"{type(config).__name__} {', '.join(limits)} must differ, got "
                         f"{', '.join(map(str, values))}")


class Model(nn.Module):
    """Base of every attnkit model."""

    config: Config

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        """Number of parameters, each shared (tied) tensor counted once."""
        return sum(p.numel() for p in self.parameters()  # parameters() yields a tied tensor once
                   if p.requires_grad or not trainable_only)

    def set_kernel(self, kernel: str | Kernel) -> Model:
        """Run every attention layer with ``kernel`` ("auto", "dense", "sdpa", "tiled", or a kernel object)."""
        return set_kernel(self, kernel)


def check_ids(input_ids: Tensor, vocab_size: int, name: str = "input_ids") -> tuple[int, int]:
    """Raise unless ``input_ids`` is a (B, N) integer tensor of ids in [0, vocab_size); returns (B, N)."""
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"{name} must be a (B, N) integer tensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.long, torch.int32):
        raise TypeError(f"{name} must be a (B, N) integer tensor, got dtype {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must be a (B, N) integer tensor, got shape {tuple(input_ids.shape)}")
    check_range(input_ids, vocab_size, name)
    return input_ids.shape[0], input_ids.shape[1]


def check_range(ids: Tensor, limit: int, name: str = "input_ids", limit_name: str = "vocab_size") -> None:
    """Raise unless every id lies in [0, limit); the message names the values found."""
    if ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= limit:
            raise ValueError(f"{name} must lie in [0, {limit_name}={limit}), got values in [{low}, {high}]")


def check_attention_mask(mask: Tensor, name: str = "attention_mask") -> Tensor:
    """``mask`` (1 = token, 0 = padding; bool or any number dtype) as a bool tensor, True = token.

    Any other value (2, -1, 0.5, NaN) is a ValueError naming the values found: read as "not 0" it would count
    as a token, and summed into positions it would shift them. A bool mask is returned as it is, unread.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a tensor (1 = token, 0 = padding), got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    token = mask != 0
    if not torch.equal(token.to(mask.dtype), mask):  # the values are gathered only to report them
        found = torch.unique(mask[token & (mask != 1)]).tolist()
        shown = ", ".join(map(str, found[:8])) + (", ..." if len(found) > 8 else "")
        raise ValueError(f"{name} must hold only 0 (padding) and 1 (token), found {shown}")
    return token


def init_weights(module: nn.Module) -> None:
    """GPT-2's initialization: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
