"""``Linear``: ``torch.nn.Linear`` whose inference forward on CPU runs through oneDNN.

On the CPUs we measure on, ``torch.nn.functional.linear`` (MKL sgemm) reaches about half of what oneDNN's
matmul does for the shapes of transformer inference, at every batch size: 1.4-2.2x slower for one token
(decoding), about 2x for thousands (encoding); ``benchmarks/RESULTS.md``. PyTorch ships oneDNN's kernel as
``torch.ops.mkldnn._linear_pointwise`` (what ``torch.compile`` emits for CPU linears); this module calls it
when nothing needs a gradient — float32 or bfloat16 CPU tensors, under ``torch.no_grad()`` /
``torch.inference_mode()`` or with frozen weights — and ``F.linear`` otherwise, so training and autograd
are untouched. Results are float32 matmuls either way (they differ from MKL's in the last bits only).

``use_onednn(False)`` turns the path off (e.g. to compare); it is off where the op does not exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_enabled = _AVAILABLE
_DTYPES = (torch.float32, torch.bfloat16)


def use_onednn(enabled: bool) -> bool:
    """Turn the oneDNN inference path on or off for every ``Linear``; returns the previous setting. Turning it
    on where PyTorch lacks the op leaves it off."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled) and _AVAILABLE
    return previous


def onednn_enabled() -> bool:
    return _enabled


def _large(x: Tensor, weight: Tensor) -> bool:
    """Whether the product is big enough to repay oneDNN's fixed ~18 us per call (measured crossover: a
    weight of 2^19 entries even for one row, or 2^22 multiply-adds)."""
    size = weight.numel()
    return size >= 1 << 19 or size * (x.numel() // max(1, x.shape[-1])) >= 1 << 22


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; through oneDNN when no gradient is needed and the product is large
    enough to gain (see the module docstring)."""
    if (_enabled and x.device.type == "cpu" and x.dtype in _DTYPES and weight.dtype == x.dtype
            and (bias is None or bias.dtype == x.dtype) and x.numel() > 0 and weight.is_contiguous()
            and _large(x, weight)
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``torch.nn.Linear`` (same parameters, state dict and initialization) with :func:`linear`'s forward."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


__all__ = ["Linear", "linear", "onednn_enabled", "use_onednn"]
