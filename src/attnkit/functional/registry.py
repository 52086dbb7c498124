"""Kernels register by name behind one signature and declare what they support as data.

A kernel is an object with ``name``, ``capabilities`` and two methods:

- ``not_supported_reasons(request) -> list[str]``: empty when it can serve the request;
- ``__call__(request) -> out`` or ``(out, lse)`` when ``request.return_lse``;

and optionally ``priority(request) -> int``: how strongly it wants this request under ``kernel="auto"``
(a :class:`Rank`; higher is tried first). The registry holds no policy of its own: ``dispatch.py`` orders
the registered kernels by their priorities, so a new kernel (a GPU kernel, a distributed one) takes its
place in ``auto`` by declaring its priority, without an edit here. Approximate kernels
(``capabilities.exact`` False, such as "linear" and "performer") are never chosen by "auto": only by name or
object. Users add their own with ``register_kernel``; ``kernel(name, **options)`` returns a configured copy
of a kernel that takes options.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol, runtime_checkable

from torch import Tensor

from .bias import ScoreFunction
from .request import AttentionRequest


class Rank(enum.IntEnum):
    """What a kernel's ``priority(request)`` returns; ``kernel="auto"`` tries higher ranks first, kernels of
    equal rank in registration order."""

    PREFERRED = 30  # the kernel knows it is the fastest for this request (e.g. tiled on a sparse mask)
    DEFAULT = 20  # a good general choice (sdpa)
    FALLBACK = 10  # serves what the default refuses
    REFERENCE = 0  # the reference kernel: anything, slowly
    UNRANKED = -10  # a kernel without a priority method: after the built-ins


@dataclass(frozen=True)
class Capabilities:
    """What a kernel supports, as data (printed by ``attnkit kernels``)."""

    dtypes: tuple[str, ...] = ("float16", "bfloat16", "float32", "float64")
    devices: tuple[str, ...] = ("cpu", "cuda")
    # "materialized": built as a dense tensor; "causal+padding": only causal and key-padding masks
    masks: Literal["any", "materialized", "causal+padding", "none"] = "any"
    tile_skipping: bool = False  # cost proportional to the visible part of a structured mask
    bias: bool = True
    bias_grad: bool = True
    score_functions: bool = True  # bias.from_function: a function of the logits, not an additive tensor
    softcap: bool = True
    dropout: bool = True
    return_lse: bool = True
    gradients: bool = True
    gqa: bool = True
    exact: bool = True  # False: an approximation of softmax attention, never chosen by kernel="auto"
    memory: str = "O(N^2)"

    def reasons(self, req: AttentionRequest) -> list[str]:
        """Reasons derived from the declared capabilities alone."""
        out = []
        dtype = str(req.q.dtype).removeprefix("torch.")
        if dtype not in self.dtypes:
            out.append(f"dtype {dtype} not supported (supports {', '.join(self.dtypes)})")
        if req.q.device.type not in self.devices:
            out.append(f"device {req.q.device.type} not supported (supports {', '.join(self.devices)})")
        if req.mask is not None and self.masks == "none":
            out.append("masks not supported")
        if req.bias is not None and not self.bias:
            out.append("bias not supported")
        if isinstance(req.bias, ScoreFunction) and self.bias and not self.score_functions:
            out.append("score functions (bias.from_function) not supported: only additive biases")
        if req.bias_requires_grad and req.needs_grad and not self.bias_grad:
            out.append("gradient with respect to bias not supported")
        if req.softcap is not None and not self.softcap:
            out.append("softcap not supported")
        if req.dropout > 0 and not self.dropout:
            out.append("dropout not supported")
        if req.return_lse and not self.return_lse:
            out.append("return_lse not supported")
        if req.needs_grad and not self.gradients:
            out.append("gradients not supported")
        B, H, Hkv, *_ = req.shape
        if H != Hkv and not self.gqa:
            out.append("grouped-query attention (Hkv != H) not supported")
        return out

    def as_row(self) -> dict[str, str]:
        return {f.name: _fmt(getattr(self, f.name)) for f in fields(self)}


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


@runtime_checkable
class Kernel(Protocol):
    name: str
    description: str
    capabilities: Capabilities

    def not_supported_reasons(self, req: AttentionRequest) -> list[str]: ...

    def __call__(self, req: AttentionRequest) -> Tensor | tuple[Tensor, Tensor]: ...


_REGISTRY: dict[str, Kernel] = {}


def register_kernel(kernel: Kernel, *, replace: bool = False) -> Kernel:
    """Add a kernel under ``kernel.name``; ``replace=True`` to overwrite an existing one."""
    if not isinstance(kernel, Kernel):
        raise TypeError("a kernel needs name, description, capabilities, not_supported_reasons() and __call__()")
    if kernel.name in _REGISTRY and not replace:
        raise ValueError(f"a kernel named {kernel.name!r} is already registered; pass replace=True")
    if kernel.name == "auto":
        raise ValueError("'auto' is reserved for kernel selection")
    _REGISTRY[kernel.name] = kernel
    return kernel


def is_exact(k: Kernel) -> bool:
    """Whether ``k`` computes softmax attention exactly (approximate kernels run only when named)."""
    return getattr(k.capabilities, "exact", True)


def get_kernel(name: str) -> Kernel:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; registered: {', '.join(_REGISTRY)} (or 'auto')") from None


def kernels() -> list[Kernel]:
    """The registered kernels, in registration order."""
    return list(_REGISTRY.values())


def kernel(name: str, **options: Any) -> Kernel:
    """The registered kernel ``name``, configured with ``options``, for ``attention(kernel=...)`` and
    ``MultiHeadAttention(kernel=...)``.

    Without options it is the registered kernel itself. A kernel that takes options has a ``configure(**options)``
    method returning a configured copy; unknown options are a TypeError listing the valid ones, invalid values a
    ValueError or TypeError naming the option.

    Example:
        >>> attnkit.kernel("performer", features=256, seed=0)
        kernel('performer', features=256, seed=0, redraw=False, chunk=64)
    """
    if not isinstance(name, str):
        raise TypeError(f"kernel name must be a str, got {type(name).__name__}")
    base = get_kernel(name)
    if not options:
        return base
    configure = getattr(base, "configure", None)
    if configure is None:
        raise TypeError(f"kernel {name!r} takes no options, got {', '.join(options)}")
    return configure(**options)


__all__ = ["Capabilities", "Kernel", "Rank", "register_kernel", "get_kernel", "kernel", "kernels", "is_exact"]
