"""One validated attention request: what every kernel receives.

``AttentionRequest.build`` checks every argument (rank, sizes, dtypes, devices, mask and bias shapes)
before any large allocation, and folds ``mask``, ``causal`` and ``window`` into a single structured
mask, so kernels see one mask object (or None) and one bias object (or None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeAlias

import torch
from torch import Tensor

from . import masks as M
from .checks import is_positive_finite
from .bias import Bias, ScoreFunction, TensorBias, as_bias

MaskLike: TypeAlias = Tensor | M.Mask | None  # a bool tensor (True = may attend) or a structured mask
BiasLike: TypeAlias = Tensor | Bias | None  # an additive float tensor or a structured bias
Window: TypeAlias = tuple[int | None, int | None]  # (left, right) keys around the query; None: unbounded

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, N, D) (4 dims), got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    (B, H, _, D), (Bk, Hkv, Nk, Dk), (Bv, Hv, Nv, _) = q.shape, k.shape, v.shape
    if not (B == Bk == Bv):
        raise ValueError(f"batch sizes differ: q has B={B}, k has B={Bk}, v has B={Bv}")
    if D != Dk:
        raise ValueError(f"q and k head dims differ: q (B, H, Nq, D={D}), k (B, Hkv, Nk, D={Dk})")
    if Nk != Nv:
        raise ValueError(f"k and v lengths differ: k has Nk={Nk}, v has Nk={Nv}")
    if Hkv != Hv:
        raise ValueError(f"k and v head counts differ: k has Hkv={Hkv}, v has {Hv}")
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"q's head count H={H} must be a multiple of k/v's head count Hkv={Hkv} (GQA)")


def _combine_masks(mask: MaskLike, causal: bool, window: Window | None, num_queries: int) -> M.Mask | None:
    parts: list[M.Mask] = []
    if mask is not None:
        parts.append(M.as_mask(mask))
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal and num_queries > 1:  # bottom-right aligned: a single query (a decoding step) sees every key
        parts.append(M.causal())
    if window is not None:
        if not (isinstance(window, (tuple, list)) and len(window) == 2):
            raise ValueError(f"window must be a pair (left, right) of non-negative ints or None, got {window!r}")
        parts.append(M.sliding_window(*window))
    if not parts:
        return None
    combined = parts[0]
    for part in parts[1:]:
        combined = combined & part
    return combined


@dataclass(frozen=True, eq=False)
class AttentionRequest:
    """Validated inputs of one attention call. q (B, H, Nq, D), k (B, Hkv, Nk, D), v (B, Hkv, Nk, Dv)."""

    q: Tensor
    k: Tensor
    v: Tensor
    mask: M.Mask | None  # mask, causal and window combined by AND
    bias: Bias | None
    scale: float
    softcap: float | None  # logits -> softcap * tanh(logits / softcap)
    dropout: float  # probability of dropping an attention probability
    return_lse: bool
    bias_tensors: tuple[Tensor, ...] = ()  # the bias's tensors that want gradients (see _bias_tensors)
    _layouts: dict[tuple[int, int], Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, q: Tensor, k: Tensor, v: Tensor, *, mask: MaskLike = None, causal: bool = False,
              window: Window | None = None, bias: BiasLike = None, scale: float | None = None,
              softcap: float | None = None, dropout: float = 0.0, return_lse: bool = False) -> AttentionRequest:
        _check_qkv(q, k, v)
        B, H, Nq, D = q.shape
        Nk = k.shape[2]
        combined = _combine_masks(mask, causal, window, Nq)
        if combined is not None:
            combined.check(B, H, Nq, Nk)
            if isinstance(mask, Tensor) and mask.device != q.device:
                raise ValueError(f"mask is on {mask.device} but q is on {q.device}")
        bias_obj = None if bias is None else as_bias(bias)
        if bias_obj is not None:
            bias_obj.check(B, H, Nq, Nk)
            if isinstance(bias, Tensor) and bias.device != q.device:
                raise ValueError(f"bias is on {bias.device} but q is on {q.device}")
        if scale is None:
            scale = 1.0 / math.sqrt(D) if D else 1.0
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"scale must be a float or None (1/sqrt(D)), got {scale!r}")
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale!r}")
        if softcap is not None and not is_positive_finite(softcap):
            # inf would make every logit inf * tanh(x / inf) = inf * 0 = NaN
            raise ValueError(f"softcap must be a positive finite float or None (off), got {softcap!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        return cls(q, k, v, combined, bias_obj, float(scale), None if softcap is None else float(softcap),
                   float(dropout), bool(return_lse), _bias_tensors(bias_obj, q, H, Nk))

    @property
    def shape(self) -> tuple[int, int, int, int, int, int, int]:
        """(B, H, Hkv, Nq, Nk, D, Dv)."""
        B, H, Nq, D = self.q.shape
        _, Hkv, Nk, Dv = self.v.shape
        return B, H, Hkv, Nq, Nk, D, Dv

    @property
    def bias_requires_grad(self) -> bool:
        """Whether a gradient with respect to the bias is wanted (of its tensor, or a score function's tensors)."""
        return bool(self.bias_tensors) or (self.bias is not None and self.bias.requires_grad)

    @property
    def needs_grad(self) -> bool:
        return torch.is_grad_enabled() and (
            self.q.requires_grad or self.k.requires_grad or self.v.requires_grad or self.bias_requires_grad)

    def layout(self, block_q: int, block_k: int) -> Tensor | None:
        """Block states (b, h, nqb, nkb) of the combined mask, cached per tiling; None without a mask."""
        if self.mask is None:
            return None
        key = (block_q, block_k)
        if key not in self._layouts:
            _, _, _, Nq, Nk, _, _ = self.shape
            self._layouts[key] = self.mask.block_layout(Nq, Nk, (block_q, block_k), device=self.q.device)
        return self._layouts[key]

    def dense_mask(self) -> Tensor | None:
        """The combined mask as a bool tensor broadcastable to (B, H, Nq, Nk)."""
        if self.mask is None:
            return None
        _, _, _, Nq, Nk, _, _ = self.shape
        return self.mask.materialize(Nq, Nk, device=self.q.device)

    def dense_bias(self, dtype: torch.dtype) -> Tensor | None:
        if self.bias is None:
            return None
        _, _, _, Nq, Nk, _, _ = self.shape
        return self.bias.materialize(Nq, Nk, device=self.q.device, dtype=dtype)


def _bias_tensors(bias: Bias | None, q: Tensor, heads: int, k_len: int) -> tuple[Tensor, ...]:
    """The tensors of ``bias`` that want gradients: a tensor bias's own; the leaves of a score function's graph,
    looked for (one run of the function on a 1 x 1 tile) only when gradients are on."""
    if isinstance(bias, TensorBias):
        return (bias.tensor,) if bias.tensor.requires_grad else ()
    if isinstance(bias, ScoreFunction) and torch.is_grad_enabled() and q.shape[2] and k_len:
        return bias.leaves(q.shape[0], heads, q.device, softmax_dtype(q.dtype))
    return ()


def softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics are accumulated in float32 for half-precision inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


__all__ = ["AttentionRequest", "softmax_dtype", "MaskLike", "BiasLike", "Window"]
