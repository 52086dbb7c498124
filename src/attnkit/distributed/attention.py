"""``attention``: exact attention over a sequence split across the processes of a torch.distributed group."""

from __future__ import annotations

from typing import Literal, TypeAlias, overload

from torch import Tensor

from ..functional.bias import ScoreFunction, TensorBias
from ..functional.registry import Kernel, get_kernel
from ..functional.request import AttentionRequest, BiasLike, MaskLike, Window
from .comm import Group, group_rank, group_size
from .dropout import KeepMask, draw_seed
from .layout import Layout, LayoutName, all_shapes, check_layout
from .problem import Problem
from .ring import RingAttention
from .ulysses import check_heads, ulysses_attention

Strategy: TypeAlias = Literal["ring", "ulysses"]
STRATEGIES: tuple[Strategy, ...] = ("ring", "ulysses")


def check_strategy(strategy: object) -> Strategy:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(repr(s) for s in STRATEGIES)}, got {strategy!r}")
    return strategy


@overload
def attention(q: Tensor, k: Tensor, v: Tensor, *, group: Group = ..., strategy: Strategy = ...,
              layout: LayoutName = ..., causal: bool = ..., window: Window | None = ..., mask: MaskLike = ...,
              bias: BiasLike = ..., softcap: float | None = ..., dropout: float = ..., dropout_seed: int | None = ...,
              scale: float | None = ...,
              return_lse: Literal[False] = ..., kernel: str | Kernel = ...) -> Tensor: ...


@overload
def attention(q: Tensor, k: Tensor, v: Tensor, *, group: Group = ..., strategy: Strategy = ...,
              layout: LayoutName = ..., causal: bool = ..., window: Window | None = ..., mask: MaskLike = ...,
              bias: BiasLike = ..., softcap: float | None = ..., dropout: float = ..., dropout_seed: int | None = ...,
              scale: float | None = ...,
              return_lse: Literal[True], kernel: str | Kernel = ...) -> tuple[Tensor, Tensor]: ...


def attention(q: Tensor, k: Tensor, v: Tensor, *, group: Group = None, strategy: Strategy = "ring",
              layout: LayoutName = "zigzag", causal: bool = False, window: Window | None = None,
              mask: MaskLike = None, bias: BiasLike = None, softcap: float | None = None, dropout: float = 0.0,
              dropout_seed: int | None = None, scale: float | None = None, return_lse: bool = False,
              kernel: str | Kernel = "auto"
              ) -> Tensor | tuple[Tensor, Tensor]:
    """``attnkit.attention`` on a sequence split across processes: each process passes its shard and gets its shard
    of exactly what ``attnkit.attention`` gives on the whole sequence. A collective: every process of ``group`` calls
    it with the same options.

    Args:
        q: (B, H, nq, D) this process's queries: nq = Nq / P rows of the whole (B, H, Nq, D), laid out by ``layout``
            (``shard(q_whole, layout=layout)``).
        k: (B, Hkv, nk, D) this process's keys, likewise (H a multiple of Hkv: GQA). v: (B, Hkv, nk, Dv).
        group: the process group (None: the default group); P = its size.
        strategy: "ring" (keys and values travel hop by hop; any head count, every option) or "ulysses" (two
            all-to-alls turn sequence shards into head shards; H divisible by P).
        layout: "zigzag" (rank r holds chunks r and 2P - 1 - r of 2P: balanced under causal masks; Nq and Nk
            divisible by 2P) or "contiguous" (chunk r of P).
        causal, window, mask, bias, softcap, scale: as ``attnkit.attention``, in GLOBAL positions of the whole
            sequence: causal is bottom-right aligned from the global Nq and Nk; ``mask`` is a structured mask
            (``attnkit.masks.document(ids)`` with the whole sequence's ids, padding, ...) or a bool tensor
            broadcastable to (B, H, Nq, Nk); ``bias`` a float tensor broadcastable to (B, H, Nq, Nk), the same on every
            process (its gradient, summed over processes, arrives whole on each), or a structured bias (ALiBi).
            Score functions (``bias.from_function``) are not supported yet.
        dropout: probability of dropping each attention probability, decided by a hash of (batch, head, global query
            row, global key) and ``dropout_seed``: the result does not depend on P (see ``keep_mask``).
        dropout_seed: None: drawn from torch's generator on the group's first rank and broadcast.
        return_lse: also return the log-sum-exp of each row, (B, H, nq) float32 (float64 for float64 inputs).
        kernel: the local kernel for each block ("auto", a name, a kernel object); the ring needs one that returns
            the log-sum-exp ("tiled", "dense"); Ulysses takes any.

    Returns:
        (B, H, nq, Dv) in q's dtype, or (out, lse) with ``return_lse``. Gradients flow to q, k, v and a tensor bias.

    Raises:
        ValueError / TypeError naming the argument (checked against the whole sequence before anything large is
        allocated); ``PeerError`` when a peer fails or does not make the same call within the process group's timeout.

    Example (every process)::

        >>> q_part, k_part, v_part = (shard(t, layout="zigzag") for t in (q, k, v))
        >>> out_part = attnkit.distributed.attention(q_part, k_part, v_part, causal=True)
        >>> torch.allclose(gather(out_part, layout="zigzag"), attnkit.attention(q, k, v, causal=True))
        True
    """
    check_strategy(strategy)
    lay = Layout(check_layout(layout), group_size(group))
    _check_local(q, k, v)
    kernel = _check_kernel(kernel, strategy)
    shape = _global_shape(q, k, v, lay, group)
    B, H, Hkv, Nq, Nk, D, Dv = shape
    if strategy == "ulysses":
        check_heads(H, lay.world)
    whole = [t.new_zeros(()).expand(*s) for t, s in ((q, (B, H, Nq, D)), (k, (B, Hkv, Nk, D)), (v, (B, Hkv, Nk, Dv)))]
    req = AttentionRequest.build(*whole, mask=mask, causal=causal, window=window, bias=bias, scale=scale,
                                 softcap=softcap, dropout=dropout, return_lse=return_lse)  # every check, no allocation
    if isinstance(req.bias, ScoreFunction):
        raise ValueError("bias: score functions (attnkit.bias.from_function) are not supported by "
                         "attnkit.distributed yet; pass a float tensor or a structured bias such as attnkit.bias.alibi")
    keep = None
    if req.dropout > 0:
        seed = draw_seed(group, q.device) if dropout_seed is None else dropout_seed
        keep = KeepMask(req.dropout, seed, B, H)
    p = Problem(shape, lay, group_rank(group), group, req.mask, keep, req.bias, req.scale, req.softcap, req.dropout,
                kernel, q.dtype)
    if strategy == "ulysses":
        out, lse = ulysses_attention(p, q, k, v, return_lse)
    else:
        bias_tensor = req.bias.tensor if isinstance(req.bias, TensorBias) else None
        out, lse = RingAttention.apply(q, k, v, bias_tensor, p)
    if return_lse:
        assert lse is not None
        return out, lse
    return out


def _check_local(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, N, D) (4 dims: this process's shard of the sequence), "
                             f"got shape {tuple(t.shape)}")


def _check_kernel(kernel: str | Kernel, strategy: Strategy) -> str | Kernel:
    """Resolve a kernel name early (an unknown one fails before any communication); the ring merges blocks through
    their log-sum-exp, so a kernel that cannot return it is refused here."""
    chosen = get_kernel(kernel) if isinstance(kernel, str) and kernel != "auto" else kernel
    if strategy == "ring" and not isinstance(chosen, str) and not chosen.capabilities.return_lse:
        raise ValueError(f"kernel {chosen.name!r} cannot return the log-sum-exp, which strategy='ring' merges blocks "
                         "through: use kernel='auto', 'tiled' or 'dense', or strategy='ulysses'")
    return kernel


def _global_shape(q: Tensor, k: Tensor, v: Tensor, lay: Layout, group: Group
                  ) -> tuple[int, int, int, int, int, int, int]:
    """(B, H, Hkv, Nq, Nk, D, Dv) of the whole sequence, after checking that every process holds an equal shard
    (one small all_gather of the shapes) and that the shards split into the layout's chunks."""
    shapes = all_shapes(tuple(q.shape) + tuple(k.shape) + tuple(v.shape), group, q.device)
    for rank, s in enumerate(shapes):
        if s != shapes[0]:
            raise ValueError(
                "q, k and v must have the same shapes on every process (each holds an equal shard of the "
                f"sequence): rank 0 has q {shapes[0][:4]}, k {shapes[0][4:8]}, v {shapes[0][8:]}; rank {rank} has "
                f"q {s[:4]}, k {s[4:8]}, v {s[8:]}")
    lay.check_length("q", q.shape[2], whole=False)
    lay.check_length("k", k.shape[2], whole=False)
    B, H, nq, D = q.shape
    _, Hkv, nk, Dv = v.shape
    return B, H, Hkv, nq * lay.world, nk * lay.world, D, Dv


__all__ = ["attention", "check_strategy", "Strategy", "STRATEGIES"]
