"""``attention`` and ``attention_weights``: one entry point for every exact form of attention."""

from __future__ import annotations

from functools import partial
from typing import Literal, overload

from torch import Tensor

from .kernels import dense
from .kernels.common import gib, over_budget
from .kernels.dense import dense_attention, dense_bytes
from .dispatch import select_kernel
from .registry import Kernel
from .request import AttentionRequest, BiasLike, MaskLike, Window


@overload
def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: MaskLike = ..., causal: bool = ...,
              window: Window | None = ..., bias: BiasLike = ..., scale: float | None = ...,
              softcap: float | None = ..., dropout: float = ..., kernel: str | Kernel = ...,
              return_lse: Literal[False] = ...) -> Tensor: ...


@overload
def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: MaskLike = ..., causal: bool = ...,
              window: Window | None = ..., bias: BiasLike = ..., scale: float | None = ...,
              softcap: float | None = ..., dropout: float = ..., kernel: str | Kernel = ...,
              return_lse: Literal[True]) -> tuple[Tensor, Tensor]: ...


@overload
def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: MaskLike = ..., causal: bool = ...,
              window: Window | None = ..., bias: BiasLike = ..., scale: float | None = ...,
              softcap: float | None = ..., dropout: float = ..., kernel: str | Kernel = ...,
              return_lse: bool = ...) -> Tensor | tuple[Tensor, Tensor]: ...


def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: MaskLike = None, causal: bool = False,
              window: Window | None = None, bias: BiasLike = None, scale: float | None = None,
              softcap: float | None = None, dropout: float = 0.0, kernel: str | Kernel = "auto",
              return_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention, exact, on every input.

    Args:
        q: (B, H, Nq, D) queries.
        k: (B, Hkv, Nk, D) keys; H must be a multiple of Hkv (grouped-query; Hkv = 1 is multi-query).
        v: (B, Hkv, Nk, Dv) values.
        mask: bool tensor with 2 to 4 dims broadcastable to (B, H, Nq, Nk), True = may attend, or an
            ``attnkit.masks`` mask.
        causal: query i sits at absolute position p = i + Nk - Nq and sees keys j <= p
            (bottom-right aligned, as KV-cache decoding needs)::

                Nq=2, Nk=5:   x x x x .
                              x x x x x
        window: (left, right): the query at position p sees keys p - left <= j <= p + right
            (None = unbounded side). ``mask``, ``causal`` and ``window`` combine by logical AND.
        bias: additive float tensor, 2 to 4 dims broadcastable to (B, H, Nq, Nk) (may require grad), or a structured
            bias such as ``attnkit.bias.alibi(H)``.
        scale: logit scale, default 1/sqrt(D).
        softcap: logits -> softcap * tanh(logits / softcap), applied before the bias and the mask.
        dropout: probability of dropping each attention probability (inverted scaling); uses torch's RNG.
        kernel: "auto" (default), a registered name ("dense", "sdpa", "tiled", ...) or a kernel object.
        return_lse: also return the log-sum-exp of each row's logits, (B, H, Nq) float32
            (float64 for float64 inputs); -inf for rows that may attend to nothing.

    Returns:
        (B, H, Nq, Dv) output in q's dtype, or (out, lse) when ``return_lse``. A row that may attend to
        nothing outputs zeros and gets zero gradients. NaN or inf stored in keys/values that no query
        may see (padding), in query rows that see nothing, or in masked bias entries never changes any
        output or gradient; a NaN value that some query may see reaches every row of that matmul
        (0 · NaN), as in every attention kernel.

    Example:
        >>> q = k = v = torch.randn(1, 8, 1024, 64)
        >>> out = attnkit.attention(q, k, v, causal=True, window=(255, 0))  # causal sliding window

    Equivalent PyTorch (no mask, no options)::

        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    """
    req = AttentionRequest.build(q, k, v, mask=mask, causal=causal, window=window, bias=bias, scale=scale,
                                 softcap=softcap, dropout=dropout, return_lse=return_lse)
    return select_kernel(req, kernel)(req)


def attention_weights(q: Tensor, k: Tensor, *, mask: MaskLike = None, causal: bool = False,
                      window: Window | None = None, bias: BiasLike = None,
                      scale: float | None = None, softcap: float | None = None) -> Tensor:
    """The attention probabilities (B, H, Nq, Nk) that ``attention`` would apply, from the reference
    kernel (same options, no dropout). Rows that may attend to nothing are all zeros.

    Builds the full matrix: for long sequences, ask for the rows and heads you need
    (``attention_weights(q[:, heads, rows], k[:, ...])``); a request over the dense kernel's memory
    budget raises and says so.
    """
    req = AttentionRequest.build(q, k, k[..., :0], mask=mask, causal=causal, window=window, bias=bias,
                                 scale=scale, softcap=softcap)
    over = over_budget(partial(dense_bytes, req, weights=True), dense.MAX_DENSE_BYTES)
    if over is not None:  # no kernel can help: the matrix is what was asked for
        B, H, _, Nq, Nk, _, _ = req.shape
        raise ValueError(f"attention_weights would materialize a ({B}, {H}, {Nq}, {Nk}) weight matrix: {gib(over[0])} "
                         f"at its peak (budget {gib(over[1])}); ask for fewer heads or query rows, e.g. "
                         "attention_weights(q[:, heads, rows], k[:, heads]) (attention(..., kernel='tiled') computes "
                         "the output without this matrix)")
    return dense_attention(req, return_weights=True)


__all__ = ["attention", "attention_weights"]
