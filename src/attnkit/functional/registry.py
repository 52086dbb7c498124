"""Kernels register by name behind one signature and declare what they support as data.

A kernel is an object with ``name``, ``capabilities`` and two methods:

- ``not_supported_reasons(request) -> list[str]``: empty when it can serve the request;
- ``__call__(request) -> out`` or ``(out, lse)`` when ``request.return_lse``.

``kernel="auto"`` walks ``auto_order(request)`` and takes the first kernel with no reasons; when none
fits, the error lists every kernel and its reasons. Approximate kernels (``capabilities.exact`` False, such
as "linear" and "performer") are never chosen by "auto": only by name or object. Users add their own with
``register_kernel``; ``kernel(name, **options)`` returns a configured copy of a kernel that takes options.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Protocol, runtime_checkable

from torch import Tensor

from .masks import EMPTY, Dense
from .request import AttentionRequest


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
        if req.bias is not None and req.bias.requires_grad and req.needs_grad and not self.bias_grad:
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


def _fmt(value) -> str:
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


def get_kernel(name: str) -> Kernel:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; registered: {', '.join(_REGISTRY)} (or 'auto')") from None


def kernels() -> list[Kernel]:
    """The registered kernels, in registration order."""
    return list(_REGISTRY.values())


def kernel(name: str, **options) -> Kernel:
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


# Sparse-enough masks go to the tiled kernel first: when at least this share of tiles is empty
# and the score matrix is large, skipping tiles beats SDPA computing (and masking) all of them.
AUTO_TILED_MIN_EMPTY = 0.5
AUTO_TILED_MIN_ELEMENTS = 1 << 20
# Inference the tiled kernel's native forward serves (float32, bfloat16 or float16, CPU, AVX-512, no
# gradient) goes to it first when there are enough query rows and visible entries: about 1.0-2.5x SDPA
# from here up in float32 (B·H·Nq·Nk of 2^17, 32 rows), more in half precision, slower below (decoding
# 0.2x, 128 causal rows 0.6x): benchmarks/bench_auto.py.
AUTO_NATIVE_MIN_ROWS = 32
AUTO_NATIVE_MIN_WORK = 1 << 17
AUTO_NATIVE_MAX_KEYS_PER_ROW = 32  # each work item packs all its keys once: too few rows do not pay for it


def auto_order(req: AttentionRequest) -> list[str]:
    """The order in which ``kernel="auto"`` tries kernels for this request.

    1. ``tiled`` first when a structured mask leaves >= 50% of its 128x128 tiles empty and
       Nq·Nk >= 2^20 (sliding windows, documents, long causal prefixes): cost follows the visible part;
    2. ``tiled`` first for inference its native forward serves (float32, bfloat16 or float16 on an AVX-512
       CPU, no gradient recorded, no bias, softcap or dropout) with Nq >= 32, Nk <= 32·Nq and about 2^17
       visible entries or more;
    3. otherwise ``sdpa`` (PyTorch's fused kernels), then ``tiled``, then ``dense``;
    then any user-registered exact kernels in registration order. Approximate kernels are never listed.
    """
    order = ["tiled", "sdpa", "dense"] if _tiled_first(req) else ["sdpa", "tiled", "dense"]
    order += [name for name in _REGISTRY if name not in order]
    return [name for name in order if name in _REGISTRY and _is_exact(_REGISTRY[name])]


def _tiled_first(req: AttentionRequest) -> bool:
    """Rules 1 and 2 of ``auto_order``."""
    from .kernels import native
    from .kernels.tiled import BLOCK_K, BLOCK_Q

    B, H, _, Nq, Nk, _, _ = req.shape
    structured = req.mask is not None and not isinstance(req.mask, Dense)
    layout = None
    if structured and Nq * Nk >= AUTO_TILED_MIN_ELEMENTS:
        layout = req.layout(BLOCK_Q, BLOCK_K)
        if (layout == EMPTY).all(dim=0).all(dim=0).float().mean().item() >= AUTO_TILED_MIN_EMPTY:
            return True
    if (req.needs_grad or Nq < AUTO_NATIVE_MIN_ROWS or Nk > AUTO_NATIVE_MAX_KEYS_PER_ROW * Nq
            or B * H * Nq * Nk < AUTO_NATIVE_MIN_WORK or not native.serves(req)):
        return False
    if req.mask is not None:  # visible share: FULL tiles count 1, PARTIAL ones 1/2, averaged over batch and
        # heads (the plan visits their union, so this errs towards SDPA)
        if layout is None and B * H * Nq * Nk < 2 * AUTO_NATIVE_MIN_WORK:
            return False  # too little work unless nearly all of it is visible: not worth computing the layout
        layout = req.layout(BLOCK_Q, BLOCK_K) if layout is None else layout
        return B * H * Nq * Nk * layout.float().mean().item() / 2 >= AUTO_NATIVE_MIN_WORK
    return True


def _is_exact(k: Kernel) -> bool:
    return getattr(k.capabilities, "exact", True)


def select_kernel(req: AttentionRequest, kernel) -> Kernel:
    """Resolve ``kernel`` (a name, "auto" or a kernel object) to a kernel that can serve ``req``."""
    if isinstance(kernel, str) and kernel == "auto":
        refusals = []
        for name in auto_order(req):
            reasons = _REGISTRY[name].not_supported_reasons(req)
            if not reasons:
                return _REGISTRY[name]
            refusals.append(f"  {name}: {'; '.join(reasons)}")
        approximate = [name for name, k in _REGISTRY.items() if not _is_exact(k)]
        if approximate:
            names = ", ".join(approximate)
            refusals.append(f"  (approximate kernels are never chosen by 'auto', only by name: {names})")
        raise ValueError("no attention kernel supports this request:\n" + "\n".join(refusals))
    chosen = get_kernel(kernel) if isinstance(kernel, str) else kernel
    if not isinstance(kernel, str) and not isinstance(chosen, Kernel):  # registered ones were checked at registration
        raise TypeError(f"kernel must be a name, 'auto' or a kernel object, got {type(kernel).__name__}")
    reasons = chosen.not_supported_reasons(req)
    if reasons:
        raise ValueError(f"kernel {chosen.name!r} cannot serve this request: {'; '.join(reasons)}")
    return chosen


__all__ = ["Capabilities", "Kernel", "register_kernel", "get_kernel", "kernel", "kernels", "auto_order",
           "select_kernel"]
