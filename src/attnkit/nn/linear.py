"""``Linear``: ``torch.nn.Linear`` whose inference forward on CPU runs through oneDNN.

On the CPUs we measure on, ``torch.nn.functional.linear`` (MKL sgemm) reaches about half of what oneDNN's
matmul does for the shapes of transformer inference, at every batch size: 1.4-2.2x slower for one token
(decoding), about 2x for thousands (encoding); ``benchmarks/RESULTS.md``. PyTorch ships oneDNN's kernel as
``torch.ops.mkldnn._linear_pointwise`` (what ``torch.compile`` emits for CPU linears); this module calls it
when nothing needs a gradient — float32 or bfloat16 CPU tensors, under ``torch.no_grad()`` /
``torch.inference_mode()`` or with frozen weights — and ``F.linear`` otherwise, so training and autograd
are untouched. Results are float32 matmuls either way (they differ from MKL's in the last bits only).

A decoding step multiplies one to eight rows by each weight: there both read the weights at about half the
memory bandwidth, so those rows go to attnkit's own C matmul instead (``functional.kernels.native.gemv``: the
weight read once, front to back, by both threads), which reads them at about the speed of ``torch.sum``.

``use_onednn(False)`` turns every inference fast path off (e.g. to compare): oneDNN, the C matmul, the fused
decoding block (``nn.Block``) and the C RMSNorm of a decoding step (``nn.RMSNorm``); oneDNN's is off where the op
does not exist, the C ones where the extension was not built or the CPU lacks AVX-512 (or ``ATTNKIT_NATIVE=0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module  # its global hooks: module-level dicts, no public accessor

from ..functional.kernels import native

_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_switched_on = True  # use_onednn's setting: both inference paths (the C matmul and oneDNN)
_DTYPES = (torch.float32, torch.bfloat16)


def use_onednn(enabled: bool) -> bool:
    """Turn the inference fast paths (oneDNN, the C matmul, the fused decoding block, the C RMSNorm) on or off;
    returns the previous setting. oneDNN's stays off where PyTorch lacks the op."""
    global _switched_on
    previous, _switched_on = _switched_on, bool(enabled)  # the setting, so use_onednn(previous) restores it
    return previous


def switched_on() -> bool:
    """``use_onednn``'s setting: whether the inference paths (C matmul, fused decoding block, oneDNN) may run."""
    return _switched_on


def onednn_enabled() -> bool:
    """Whether oneDNN's path runs: switched on and available in this PyTorch."""
    return _switched_on and _AVAILABLE


def _large(x: Tensor, weight: Tensor) -> bool:
    """Whether the product is big enough to repay oneDNN's fixed ~18 us per call (measured crossover: a
    weight of 2^19 entries even for one row, or 2^22 multiply-adds)."""
    size = weight.numel()
    return size >= 1 << 19 or size * (x.numel() // max(1, x.shape[-1])) >= 1 << 22


def inference(x: Tensor, tensors: Sequence[Tensor | None]) -> bool:
    """No gradient is wanted from x or any of ``tensors`` (weights and biases; None skipped), and no
    ``torch.jit.trace`` is recording: a trace sees only PyTorch operations, so a C call would leave it empty."""
    return not (torch.is_grad_enabled()
                and (x.requires_grad or any(t is not None and t.requires_grad for t in tensors))) and not tracing()


def tracing() -> bool:
    """Whether ``torch.jit.trace`` is recording: a trace sees only PyTorch operations, so a C call would leave it
    empty."""
    return torch.jit.is_tracing()  # type: ignore[attr-defined]  # public, not re-exported in its stubs


def hooked(modules: Sequence[nn.Module | None]) -> bool:
    """Whether a forward hook would run on any of ``modules`` (None skipped), one of their own or a global one: a
    fused path that stands in for their forwards must then step aside."""
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m is not None and (m._forward_hooks or m._forward_pre_hooks) for m in modules)


def _rows(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None]) -> list[Tensor] | None:
    """``x @ w.T + b`` for each weight and bias, a decoding step's few rows through attnkit's C matmul (the weights
    read once, at memory speed; several in one call), or None when it does not take them. The caller has checked
    device, dtypes and that no gradient is wanted."""
    rows = x.numel() // x.shape[-1]
    if not 1 <= rows <= native.GEMV_ROWS:
        return None
    flat = x.reshape(rows, x.shape[-1])
    flat = flat if x.dtype == torch.float32 else flat.float()
    y = native.gemv(flat, weights[0]) if len(weights) == 1 else native.gemv_many(flat, weights)
    if y is None:
        return None
    out, start = [], 0
    for weight, bias in zip(weights, biases):
        end = start + weight.shape[0]
        part = y[:, start:end]
        if bias is not None:
            part += bias
        out.append(part.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0]))
        start = end
    return out


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; when no gradient is needed, a decoding step's few rows through attnkit's C
    matmul and large products through oneDNN (see the module docstring)."""
    if (_switched_on and x.device.type == "cpu" and x.dtype in _DTYPES and weight.dtype == x.dtype
            and (bias is None or bias.dtype == x.dtype) and x.numel() > 0 and weight.is_contiguous()
            and inference(x, (weight, bias))):
        y = _rows(x, (weight,), (bias,))
        if y is not None:
            return y[0]
        if _AVAILABLE and _large(x, weight):  # inside `if _switched_on`
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def linears(x: Tensor, layers: Sequence[nn.Linear]) -> list[Tensor] | None:
    """``[layer(x) for layer in layers]`` in one call of the C matmul when :func:`linear` would send each of them
    there (a decoding step's few rows, no gradient needed): a layer's q, k and v projections, or a gated
    feed-forward's gate and up, share one fork of the threads. The results are bitwise those of separate calls.
    None when that path does not apply (the caller then calls the layers)."""
    if not all(isinstance(layer, nn.Linear) for layer in layers) or hooked(layers):  # a wrapped layer (a LoRA
        return None  # adapter) or a hooked one adds its own computation to the weight's: only its forward runs it
    weights = [layer.weight for layer in layers]
    biases = [layer.bias for layer in layers]
    if (not _switched_on or not x.dim() or not x.shape[-1] or x.dtype not in _DTYPES or x.device.type != "cpu"
            or any(w.dtype != x.dtype for w in weights) or not inference(x, (*weights, *biases))):
        return None
    return _rows(x, weights, biases)


class Linear(nn.Linear):
    """``torch.nn.Linear`` (same parameters, state dict and initialization) with :func:`linear`'s forward."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


__all__ = ["Linear", "hooked", "linear", "linears", "onednn_enabled", "switched_on", "use_onednn"]
