"""Attention biases: a dense float tensor, a structured bias computed per tile, or a score function.

A bias is added to the (scaled, soft-capped) logits before masking. Structured biases such as ALiBi
are computed tile by tile, so the tiled kernel never builds the N×N matrix. A score function
(``from_function``, FlexAttention's ``score_mod``) maps the logits to new logits, tile by tile too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .masks import Device, check_broadcast, shape4


class Bias:
    """Base class: ``tile`` returns float logits offsets broadcastable to (B, H, qe - qs, ke - ks) in ``dtype``,
    computed in float32 or better whatever ``dtype`` is (kernels ask for half precision tiles)."""

    requires_grad = False  # subclasses holding tensors that want gradients override it (a read-only property)

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None,
             dtype: torch.dtype = torch.float32) -> Tensor:
        raise NotImplementedError

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        """Raise ValueError if this bias cannot apply to the given sizes."""

    def materialize(self, q_len: int, k_len: int | None = None, device: Device = None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
        k_len = q_len if k_len is None else k_len
        return self.tile(0, q_len, 0, k_len, q_len, k_len, device, dtype)


class TensorBias(Bias):
    """A float tensor broadcastable to (B, H, Nq, Nk); may require grad (the kernels return its gradient)."""

    def __init__(self, bias: Tensor):
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be a float tensor or an attnkit.bias object, got {type(bias).__name__}")
        if not bias.dtype.is_floating_point:
            raise TypeError(f"bias must be a floating-point tensor, got dtype {bias.dtype}; "
                            "pass a bool mask as mask=")
        self.tensor = bias
        self.tensor4 = bias.reshape(shape4("bias", bias))  # (b, h, nq|1, nk|1)

    @property
    def requires_grad(self) -> bool:  # type: ignore[override]  # read-only here: kernels only read it
        return self.tensor.requires_grad

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        check_broadcast("bias", self.tensor, (batch, heads, q_len, k_len))

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None,
             dtype: torch.dtype = torch.float32) -> Tensor:
        t = self.tensor4.expand(-1, -1, q_len, k_len)[..., qs:qe, ks:ke]
        return t.to(device=device, dtype=dtype)

    def __repr__(self) -> str:
        return f"bias_tensor({tuple(self.tensor.shape)})"


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head ALiBi slopes (Press et al. 2022): a geometric sequence 2^(-8/n), interleaved for
    head counts that are not powers of two, as in the reference implementation."""
    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads <= 0:
        raise ValueError(f"num_heads must be positive, got {num_heads}")
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_2(closest)
    if closest != num_heads:
        slopes += power_of_2(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float64)


class ALiBi(Bias):
    """Linear distance penalty: bias[h, i, j] = -slope_h · |p_i - j|, p_i the query's absolute position.

    For causal attention this equals ALiBi's slope_h · (j - p_i) on every visible key.
    """

    def __init__(self, num_heads: int, slopes: Tensor | None = None):
        self.slopes = alibi_slopes(num_heads) if slopes is None else torch.as_tensor(slopes, dtype=torch.float64)
        if self.slopes.shape != (num_heads,):
            raise ValueError(f"alibi slopes must have shape ({num_heads},), got {tuple(self.slopes.shape)}")

    def check(self, batch: int, heads: int, q_len: int, k_len: int) -> None:
        if self.slopes.numel() != heads:
            raise ValueError(f"alibi bias was built for {self.slopes.numel()} heads but q has {heads} heads")

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None,
             dtype: torch.dtype = torch.float32) -> Tensor:
        # positions counted and scaled in float32 (exact to 2^24; float64 for float64), rounded to ``dtype``
        # once at the end: bfloat16 holds integers exactly only up to 256 (float16: 2048), so positions
        # counted in it put keys at the wrong distance
        exact = torch.float64 if dtype == torch.float64 else torch.float32
        p = torch.arange(qs, qe, device=device, dtype=exact)[:, None] + (k_len - q_len)  # (nq, 1)
        j = torch.arange(ks, ke, device=device, dtype=exact)[None, :]  # (1, nk)
        slopes = self.slopes.to(device=device, dtype=exact)[None, :, None, None]
        return (-slopes * (p - j).abs()).to(dtype)  # (1, H, nq, nk)

    def __repr__(self) -> str:
        return f"alibi(num_heads={self.slopes.numel()})"


def alibi(num_heads: int, slopes: Tensor | None = None) -> Bias:
    """ALiBi bias for ``num_heads`` heads (default slopes from the paper)."""
    return ALiBi(num_heads, slopes)


ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


class ScoreFunction(Bias):
    """See :func:`from_function`. Kernels call ``apply`` on a tile of logits, and ``vjp`` in backward."""

    def __init__(self, fn: ScoreMod, name: str | None):
        if not callable(fn):
            raise TypeError(f"score function must be callable as fn(score, b, h, q_idx, kv_idx), "
                            f"got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "score_mod")

    def tile(self, qs: int, qe: int, ks: int, ke: int, q_len: int, k_len: int, device: Device = None,
             dtype: torch.dtype = torch.float32) -> Tensor:
        raise TypeError(f"{self!r} maps logits to logits: it has no additive tile to materialize; kernels apply "
                        "it to the logits (use kernel='dense' or 'tiled')")

    def apply(self, scores: Tensor, qs: int, qe: int, ks: int, ke: int) -> Tensor:
        """fn on logits (B, H, qe - qs, ke - ks) of query rows qs:qe and keys ks:ke, in their dtype."""
        B, H = scores.shape[:2]
        device = scores.device
        b = torch.arange(B, device=device)[:, None, None, None]  # (B, 1, 1, 1)
        h = torch.arange(H, device=device)[None, :, None, None]  # (1, H, 1, 1)
        q = torch.arange(qs, qe, device=device)[:, None]  # (nq, 1) query rows
        kv = torch.arange(ks, ke, device=device)[None, :]  # (1, nk)
        out = self.fn(scores, b, h, q, kv)
        if not isinstance(out, Tensor) or not out.is_floating_point():
            got = out.dtype if isinstance(out, Tensor) else type(out).__name__
            raise TypeError(f"score function {self.name!r} must return a float tensor of scores, got {got}")
        try:
            return torch.broadcast_to(out, scores.shape).to(scores.dtype)
        except RuntimeError:
            raise ValueError(f"score function {self.name!r} returned shape {tuple(out.shape)}, which does not "
                             f"broadcast to the scores' {tuple(scores.shape)}") from None

    def leaves(self, batch: int, heads: int, device: Device, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """The tensors requiring grad that fn's result depends on, other than the scores: the leaves of its
        autograd graph after one run on a (batch, heads, 1, 1) tile with gradients on. Wherever fn keeps them
        (closure, default argument, global, dict, object, module, another function), they are in that graph;
        a tensor computed from parameters before the call leads to those parameters."""
        x = torch.zeros(batch, heads, 1, 1, dtype=dtype, device=device, requires_grad=True)
        with torch.enable_grad():
            y = self.apply(x, 0, 1, 0, 1)
        return _graph_leaves(y, x)

    def recorded(self, scores: Tensor, qs: int, qe: int, ks: int, ke: int) -> tuple[Tensor, Tensor]:
        """``apply`` with its autograd graph kept, for a backward: (x, y), x the scores as a leaf that requires
        grad, y = apply(x); ``vjp`` then differentiates y without running the function again."""
        with torch.enable_grad():
            x = scores.detach().requires_grad_()
            return x, self.apply(x, qs, qe, ks, ke)

    @staticmethod
    def vjp(x: Tensor, y: Tensor, grad: Tensor, tensors: Sequence[Tensor]) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        """Backward through one tile's ``recorded`` (x, y): dL/dx and dL/dt for each of ``tensors`` (``leaves``;
        None where this tile does not reach t), given dL/dy ``grad``."""
        # retain_graph: the part of the graph recorded before the call (a tensor computed from parameters)
        # is walked again by the next tile and by the caller's own backward
        grads = torch.autograd.grad(y, [x, *tensors], grad, allow_unused=True, retain_graph=True)
        assert grads[0] is not None  # y is a function of x: apply broadcasts, never drops the scores
        return grads[0], grads[1:]

    def __repr__(self) -> str:
        return f"from_function({self.name})"


def _graph_leaves(y: Tensor, skip: Tensor) -> tuple[Tensor, ...]:
    """The leaf tensors (AccumulateGrad nodes) that ``y``'s autograd graph reaches, except ``skip``."""
    found: dict[int, Tensor] = {}
    seen: set[int] = set()
    stack = [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        leaf = getattr(node, "variable", None)
        if isinstance(leaf, Tensor):
            if leaf is not skip:
                found[id(leaf)] = leaf
            continue
        stack += [next_node for next_node, _ in node.next_functions]
    return tuple(found.values())


def from_function(fn: ScoreMod, *, name: str | None = None) -> Bias:
    """A score function, FlexAttention's ``score_mod``: ``fn(score, b, h, q_idx, kv_idx) -> score``.

    ``score`` holds logits (after ``scale`` and ``softcap``, before the mask) for some tile of queries and
    keys, shape (B, H, nq, nk), in the statistics dtype (float32 for half-precision inputs); ``b`` (B, 1, 1, 1),
    ``h`` (1, H, 1, 1), ``q_idx`` (nq, 1) and ``kv_idx`` (1, nk) are int64 index tensors that broadcast against
    it (``q_idx`` counts query rows 0 .. Nq - 1, as in FlexAttention). ``fn`` returns new logits that broadcast
    to ``score``'s shape; the mask is applied after it, so what it returns at masked positions (NaN too) is
    never used. Write it with tensor operations, as a FlexAttention score_mod.

    Runs in plain PyTorch with no compile step (tested on the CPU), forward and backward, on the ``dense`` and
    ``tiled`` kernels (``sdpa`` takes only additive biases and refuses it; ``kernel="auto"`` picks one that serves).
    Gradients flow to q, k, v and to every tensor requiring grad that ``fn``'s result depends on, wherever ``fn``
    keeps it (closure, default, global, dict, object, module): they are found in the autograd graph of one run
    of ``fn`` on a 1 x 1 tile when the call is made with gradients on.

    Example: a learned relative-position bias per head, trained through attention::

        >>> table = torch.zeros(8, 2 * 1024 - 1, requires_grad=True)          # (H, 2N - 1)
        >>> rel = attnkit.bias.from_function(lambda s, b, h, q, kv: s + table[h, q - kv + 1023])
        >>> out = attnkit.attention(q, k, v, bias=rel, causal=True)           # tiled or dense
        >>> out.sum().backward()                                              # table.grad is filled
    """
    return ScoreFunction(fn, name)


def as_bias(bias: Bias | Tensor) -> Bias:
    if isinstance(bias, Bias):
        return bias
    return TensorBias(bias)


__all__ = ["Bias", "TensorBias", "ScoreFunction", "alibi", "alibi_slopes", "as_bias", "from_function"]
