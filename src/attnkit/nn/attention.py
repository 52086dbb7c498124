"""``MultiHeadAttention``: the projections around ``attnkit.attention`` (MHA, GQA, MQA; self or cross),
with KV caches, relative positions, and one hook point that recorders attach to.

The math is ``attnkit.functional.attention``; this module only projects, positions, caches and merges
heads. It never branches on the kernel: ``kernel=`` is handed down as given. The one exception is a decoding
step's C layer (``decode_step``), which stands in for ``kernel="auto"`` only: a kernel chosen by name is run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..distributed.setting import ContextParallel
from ..functional import attention as attention_fn
from ..functional import attention_weights
from ..functional import masks as structured_masks
from ..functional.bias import ALiBi, Bias, as_bias
from ..functional.checks import check_int
from ..functional.masks import Mask, shape4
from ..functional.kernels import native
from ..functional.registry import Kernel, get_kernel, is_exact, kernels
from .cache import CacheView, ContextCache, GrowingCache, KVCache, RingCache, StaticCache, stream_positions
from .linear import Linear, linears
from .norms import NormConfig, RMSNorm, norm_parts
from .positions import RelativePositions, RotaryEmbedding, default_position_ids
from .ssm import SelectiveSSM

Window = tuple[int | None, int | None]


@dataclass
class AttentionCall:
    """What a recorder receives from one attention call: enough to recompute its maps exactly.

    ``q`` is (B, H, Nq, D) and ``k`` (B, Hkv, Nk, D), after projections, positions and the cache, and ``v``
    (B, Hkv, Nk, Dv) the values they weigh; the other fields are
    the options handed to ``attnkit.attention``, and ``key_positions`` (Nk,) says which token each key column is
    (its stream position; -1 = an empty cache slot): a ring-buffer cache hands its keys over in slot order, not
    in token order.
    """

    q: Tensor
    k: Tensor
    mask: Tensor | Mask | None
    causal: bool
    window: Window | None
    bias: Tensor | Bias | None
    scale: float | None
    softcap: float | None
    key_positions: Tensor
    v: Tensor

    def weights(self, heads: list[int] | None = None) -> Tensor:
        """Attention probabilities (B, len(heads) or H, Nq, Nk), from the reference kernel."""
        q, k, mask, bias = self.q, self.k, self.mask, self.bias
        if heads is not None:
            index = torch.as_tensor(heads, dtype=torch.long, device=q.device)
            group = q.shape[1] // k.shape[1]
            q, k = q[:, index], k[:, index // group]  # (B, h, N, D) each
            mask = _select_heads(mask, index)
            bias = ALiBi(len(heads), bias.slopes[index.cpu()]) if isinstance(bias, ALiBi) else \
                _select_heads(bias, index)
        return attention_weights(q, k, mask=mask, causal=self.causal, window=self.window, bias=bias,
                                 scale=self.scale, softcap=self.softcap)


# a mask or a bias: _select_heads gives back the same kind
_MaskOrBias = TypeVar("_MaskOrBias", Tensor | Mask | None, Tensor | Bias | None)


def _select_heads(t: _MaskOrBias, index: Tensor) -> _MaskOrBias:
    """The heads ``index`` of a mask or bias tensor that has a head dimension; anything else unchanged."""
    if isinstance(t, Tensor):
        t = t.reshape(shape4("mask or bias", t))  # (b, h, nq, nk), each possibly 1
        return t[:, index.to(t.device)] if t.shape[1] > 1 else t
    return t


Recorder = Callable[["MultiHeadAttention", AttentionCall], None]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``num_kv_heads`` key/value heads (GQA; 1 = MQA), self or cross.

    Args:
        dim: model width (input and output features).
        num_heads: query heads.
        num_kv_heads: key/value heads, dividing ``num_heads`` (default ``num_heads``).
        head_dim: size of each head (default ``dim // num_heads``, which must then divide exactly).
        bias: whether the four projections have biases.
        out_bias: whether the output projection has one (default ``bias``; Qwen 2 biases q, k, v only).
        dropout: attention-probability dropout while training.
        qk_norm: normalize each query and key head before attention (OLMo-2, Qwen-3 style): True for an
            RMSNorm, or a :class:`~attnkit.nn.NormConfig` (Gemma 3: ``NormConfig("rms", eps, unit_offset=True)``).
        positions: a relative scheme applied in self-attention: ``RotaryEmbedding``, ``ALiBiPositions``,
            ``T5RelativeBias`` (absolute positions belong to the embedding, not here).
        kernel: handed to ``attnkit.attention`` unchanged: "auto", a registered name or a kernel object.
        context_dim: width of the cross-attention source (default ``dim``).
        cross_attention: this layer attends to a ``context`` and requires one.
        scale, softcap: handed to ``attnkit.attention`` (defaults 1/sqrt(head_dim) and off).

    Example:
        >>> mha = MultiHeadAttention(512, 8, num_kv_heads=2)
        >>> y = mha(torch.randn(2, 100, 512), causal=True)          # (2, 100, 512)
    """

    def __init__(self, dim: int, num_heads: int, *, num_kv_heads: int | None = None, head_dim: int | None = None,
                 bias: bool = True, out_bias: bool | None = None, dropout: float = 0.0,
                 qk_norm: bool | NormConfig = False, positions: RelativePositions | None = None,
                 kernel: str | Kernel = "auto", context_dim: int | None = None, cross_attention: bool = False,
                 scale: float | None = None, softcap: float | None = None):
        super().__init__()
        check_kernel(kernel)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        head_dim = _check_sizes(dim, num_heads, num_kv_heads, head_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        context_dim = dim if context_dim is None else context_dim
        self.dim, self.num_heads, self.num_kv_heads, self.head_dim = dim, num_heads, num_kv_heads, head_dim
        self.dropout, self.kernel, self.cross_attention = dropout, kernel, cross_attention
        self.scale, self.softcap = scale, softcap
        self.q_proj = Linear(dim, num_heads * head_dim, bias=bias)
        self.k_proj = Linear(context_dim, num_kv_heads * head_dim, bias=bias)
        self.v_proj = Linear(context_dim, num_kv_heads * head_dim, bias=bias)
        self.out_proj = Linear(num_heads * head_dim, dim, bias=bias if out_bias is None else out_bias)
        norm = NormConfig("rms", 1e-6) if qk_norm is True else qk_norm or None
        self.q_norm = norm.make(head_dim) if norm is not None else None
        self.k_norm = norm.make(head_dim) if norm is not None else None
        self.positions = positions
        self.context_parallel: ContextParallel | None = None  # set by use_context_parallel
        self._recorders: OrderedDict[int, Recorder] = OrderedDict()

    def attach(self, recorder: Recorder) -> RemovableHandle:
        """Call ``recorder(self, AttentionCall)`` on every forward; ``handle.remove()`` detaches it.

        This is the one hook point for attention maps (``attnkit.inspect.capture`` builds on it).
        """
        handle = RemovableHandle(self._recorders)
        self._recorders[handle.id] = recorder
        return handle

    def _heads(self, x: Tensor, proj: nn.Linear, heads: int, projected: Tensor | None = None) -> Tensor:
        """``proj(x)`` (or ``projected``, computed already) split into heads: (B, heads, N, Dh)."""
        b, n, _ = x.shape
        y = proj(x) if projected is None else projected
        return y.view(b, n, heads, self.head_dim).transpose(1, 2)

    def _keys_values(self, source: Tensor, projected: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """(B, Hkv, M, Dh) keys (normalized with qk_norm) and values of ``source`` (B, M, ·); ``projected``: the
        q, k and v projections of ``source``, computed already."""
        k = self._heads(source, self.k_proj, self.num_kv_heads, None if projected is None else projected[1])
        v = self._heads(source, self.v_proj, self.num_kv_heads, None if projected is None else projected[2])
        return (k if self.k_norm is None else self.k_norm(k)), v

    def forward(self, x: Tensor, context: Tensor | None = None, *, mask: Tensor | Mask | None = None,
                causal: bool = False, window: Window | None = None,
                cache: KVCache | ContextCache | None = None, position_ids: Tensor | None = None,
                key_padding: Tensor | None = None, bias: Tensor | Bias | None = None) -> Tensor:
        """Attend from ``x`` (B, N, dim) to itself, or to ``context`` (B, M, context_dim).

        Args:
            mask: bool tensor broadcastable to (B, H, N, Nk) (True = may attend) or an ``attnkit.masks``
                mask, over the keys attended (with a cache: all cached keys plus the new ones).
            causal, window: as in ``attnkit.attention``; bottom-right aligned, so they hold with a cache.
            cache: a KV cache (self-attention) or a ``ContextCache`` (cross-attention); updated in place.
                A filled ContextCache is reused and ``context`` is then ignored: ``reset()`` it for a new source.
            position_ids: (B, N) positions for RoPE (default: cache length + 0..N-1).
            key_padding: (B, Nk_total) bool, True = real token, over every key so far (with a cache: the
                cached tokens and the new ones), e.g. the Hugging Face ``attention_mask`` of left-padded
                prompts.
            bias: an additive float tensor broadcastable to (B, H, N, Nk) over the same keys as ``mask``, or an
                ``attnkit.bias`` object, added to the logits by ``attnkit.attention`` (and to the bias of
                ``positions``, if any). Not with a RingCache, whose keys are in slot order.

        Returns:
            (B, N, dim).
        """
        return self.out_proj(self.merged_heads(x, context, mask=mask, causal=causal, window=window, cache=cache,
                                               position_ids=position_ids, key_padding=key_padding, bias=bias))

    def merged_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Tensor | Mask | None = None,
                     causal: bool = False, window: Window | None = None,
                     cache: KVCache | ContextCache | None = None, position_ids: Tensor | None = None,
                     key_padding: Tensor | None = None, bias: Tensor | Bias | None = None) -> Tensor:
        """``forward`` without the output projection: the heads' outputs side by side, (B, N, H * head_dim)
        (a decoding step's block fuses the projection with what follows it)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, N, dim={self.dim}), got {tuple(x.shape)}")
        if isinstance(mask, Tensor) and mask.dtype != torch.bool:  # before key_padding is ANDed into it
            raise TypeError(f"mask must be a bool tensor (True = may attend) or an attnkit mask, got dtype "
                            f"{mask.dtype}; pass an additive float mask as bias=")
        if self.cross_attention and context is None and not (isinstance(cache, ContextCache) and cache.filled):
            raise ValueError("this is a cross-attention layer: pass context (B, M, context_dim)")
        # a decoding step's self-attention: q, k and v in one call of the C matmul (None where it does not apply)
        projected = None if context is not None or self.cross_attention else \
            linears(x, (self.q_proj, self.k_proj, self.v_proj))
        q = self._heads(x, self.q_proj, self.num_heads, None if projected is None else projected[0])  # (B, H, N, Dh)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if context is not None or self.cross_attention:
            k, v = self._context_kv(context, cache)
            mask = _with_key_padding(mask, key_padding, k.shape[2])
            call = AttentionCall(q, k, mask, causal, window, bias, self.scale, self.softcap,
                                 stream_positions(k.shape[2], k.device), v)
        else:
            call = self._self_call(x, q, mask, causal, window, cache, position_ids, key_padding, bias, projected)
        for recorder in list(self._recorders.values()):
            recorder(self, call)
        attend = attention_fn if self.context_parallel is None else self._sharded(context, cache, call)
        out = attend(call.q, call.k, call.v, mask=call.mask, causal=call.causal, window=call.window,
                     bias=call.bias, scale=self.scale, softcap=self.softcap,
                     dropout=self.dropout if self.training else 0.0, kernel=self.kernel)  # (B, H, N, Dh)
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)  # (B, N, H*Dh)

    def decode_step(self, x: Tensor, norm: nn.Module, ffn: native.FFNCall | None, *, window: Window | None,
                    cache: KVCache | ContextCache | None, position_ids: Tensor | None,
                    key_padding: Tensor | None) -> Tensor | None:
        """A decoding step's layer in one C call (``native.decode_layer``): ``self(norm(x))``'s heads for one new
        token per row, x (B, 1, dim) float32 (a bfloat16 model's rows widened: its weights and cache stay
        bfloat16), attending over ``cache``, and then ``ffn``'s half of the layer on them (``ffn.x`` updated in
        place); returns the heads' outputs (B, H * head_dim), the cache one token longer. None (nothing done, but a
        GrowingCache's buffer may have grown) where that path does not take the step: no StaticCache or
        GrowingCache (exactly: a subclass may do more in ``update``), a norm other than an RMSNorm or LayerNorm,
        positions other than RoPE (learned ones are the embedding's), a kernel chosen by name, a recorder attached,
        dropout in training mode, wrapped projections, q and k norms that differ, context parallelism,
        cross-attention, or what ``native.decode_layer`` refuses (including options ``attnkit.attention`` would
        refuse, which the PyTorch path then names). The caller checks that no gradient is wanted, that no hooks are
        set and that the fast paths are switched on."""
        b = x.shape[0]
        rope, qn, kn = self.positions, self.q_norm, self.k_norm
        if (x.dim() != 3 or x.shape[1] != 1 or type(cache) not in (StaticCache, GrowingCache)
                or (position_ids is not None and tuple(position_ids.shape) != (b, 1))
                or (parts := norm_parts(norm)) is None or self.kernel != "auto" or self._recorders
                or (self.training and self.dropout > 0) or self.context_parallel is not None
                or self.cross_attention
                or not (rope is None or (isinstance(rope, RotaryEmbedding) and rope.head_dim == self.head_dim))
                or not all(isinstance(p, nn.Linear) for p in (self.q_proj, self.k_proj, self.v_proj))
                or not (qn is None and kn is None or isinstance(qn, RMSNorm) and isinstance(kn, RMSNorm)
                        and (qn.eps, qn.unit_offset) == (kn.eps, kn.unit_offset))):
            return None
        assert isinstance(cache, (StaticCache, GrowingCache))  # for mypy: the exact types were checked
        rows = x.view(b, self.dim)
        like = rows.new_empty(b, self.num_kv_heads, 1, self.head_dim, dtype=self.k_proj.weight.dtype)
        k_buf, v_buf, slot = cache.reserve(like, like)
        cos = sin = None
        if isinstance(rope, RotaryEmbedding):
            if position_ids is None:
                position_ids = default_position_ids(b, 1, slot, x.device)
            cos, sin = (t.reshape(b, -1) for t in rope.rows(position_ids, torch.float32))
        if key_padding is not None and key_padding.dtype != torch.bool:
            key_padding = key_padding != 0
        call = native.AttnCall(  # the q and k norms: both or neither, alike (checked above)
            rows, parts, self.q_proj.weight, self.k_proj.weight,
            self.v_proj.weight, self.q_proj.bias, self.k_proj.bias, self.v_proj.bias,
            qn.weight if isinstance(qn, RMSNorm) else None, kn.weight if isinstance(kn, RMSNorm) else None,
            qn.eps if isinstance(qn, RMSNorm) else 1e-6, isinstance(qn, RMSNorm) and qn.unit_offset,
            cos, sin, k_buf, v_buf, slot,
            key_padding, None if window is None else window[0],
            self.head_dim ** -0.5 if self.scale is None else self.scale, self.softcap)
        out = native.decode_layer(call, ffn)
        if out is not None:
            cache.advance(1)
        return out

    def _sharded(self, context: Tensor | None, cache: KVCache | ContextCache | None,
                 call: AttentionCall) -> Callable[..., Tensor]:
        """The context-parallel attention of this call: q, k and v are this process's shard of the sequence, the
        mask and windows mean global positions. A cache, cross-attention, a padding mask and a bias (ALiBi's, or
        one passed in) hold local positions: refused."""
        assert self.context_parallel is not None
        if cache is not None or context is not None or self.cross_attention:
            raise ValueError("context parallelism runs self-attention over a whole sequence's shards: not with a "
                             "cache (decoding) or cross-attention")
        if call.mask is not None or call.bias is not None:
            raise ValueError("context parallelism takes causal attention and windows here, not a padding mask or a "
                             "bias (they would be in local positions): pack the sequences instead of padding them")
        return self.context_parallel.attention

    def _context_kv(self, context: Tensor | None, cache: KVCache | ContextCache | None) -> tuple[Tensor, Tensor]:
        if isinstance(cache, ContextCache) and cache.filled:
            return cache.keys_values()
        if cache is not None and not isinstance(cache, ContextCache):
            raise TypeError(f"cross-attention takes a ContextCache, got {type(cache).__name__}")
        assert context is not None  # forward raised unless a filled ContextCache stands in for the context
        if context.dim() != 3 or context.shape[-1] != self.k_proj.in_features:
            raise ValueError(f"context must be (B, M, context_dim={self.k_proj.in_features}), "
                             f"got {tuple(context.shape)}")
        k, v = self._keys_values(context)  # (B, Hkv, M, Dh)
        if isinstance(cache, ContextCache):
            cache.store(k, v)
        return k, v

    def _self_call(self, x: Tensor, q: Tensor, mask: Tensor | Mask | None, causal: bool, window: Window | None,
                   cache: KVCache | ContextCache | None, position_ids: Tensor | None, key_padding: Tensor | None,
                   bias: Tensor | Bias | None, projected: list[Tensor] | None) -> AttentionCall:
        if isinstance(cache, ContextCache):
            raise TypeError("a ContextCache serves cross-attention; self-attention takes a "
                            "StaticCache, GrowingCache or RingCache")
        k, v = self._keys_values(x, projected)  # (B, Hkv, N, Dh)
        b, n = x.shape[:2]
        if isinstance(cache, RingCache):  # checked before the cache takes the new keys
            _check_ring_window(cache, window)
            if bias is not None:
                raise ValueError("with a RingCache, a bias cannot follow the ring's slot order: pass bias= "
                                 "with a StaticCache or GrowingCache")
        if self.positions is not None:
            if position_ids is None:
                position_ids = default_position_ids(b, n, cache.length if cache is not None else 0, x.device)
            q, k = self.positions.rotate(position_ids, q, k)
        view = cache.update(k, v) if cache is not None else \
            CacheView(k, v, stream_positions(n, x.device), ordered=True)
        q_pos = view.positions[-n:]
        if view.ordered:
            mask = _with_key_padding(mask, key_padding, view.k.shape[2])
        else:
            mask = _ring_mask(mask, causal, window, view.positions, q_pos, key_padding)
            causal, window = False, None
        if self.positions is not None:
            scheme = self.positions.bias(self.num_heads, q_pos, view.positions, view.ordered)
            bias = _sum_biases(bias, scheme, (b, self.num_heads, n, view.k.shape[2]), q)
        call = AttentionCall(q, view.k, mask, causal, window, bias, self.scale, self.softcap, view.positions, view.v)
        return call

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention, *, kernel: str | Kernel = "auto") -> MultiHeadAttention:
        """A copy of ``torch.nn.MultiheadAttention``'s weights, dtype, device and train/eval mode: identical
        outputs. attnkit takes batch-first (B, N, E) inputs: for a module built with ``batch_first=False``,
        transpose its (N, B, E) inputs.

        Mind the mask conventions: torch's bool ``attn_mask``/``key_padding_mask`` mean True = *blocked*,
        attnkit's True = *may attend*: pass ``~attn_mask`` as ``mask`` and ``~key_padding_mask`` as
        ``key_padding``.
        """
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("from_torch does not support add_bias_kv or add_zero_attn")
        if module.kdim != module.vdim:
            raise ValueError(f"from_torch needs kdim == vdim, got {module.kdim} and {module.vdim}")
        has_bias = module.in_proj_bias is not None
        weight = module.out_proj.weight
        # in the source's dtype before copying: a float64 weight must not pass through float32
        new = cls(module.embed_dim, module.num_heads, bias=has_bias, dropout=module.dropout, kernel=kernel,
                  context_dim=module.kdim).to(device=weight.device, dtype=weight.dtype)
        if module._qkv_same_embed_dim:
            weights = module.in_proj_weight.chunk(3)
        else:
            weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        biases = module.in_proj_bias.chunk(3) if has_bias else (None, None, None)
        with torch.no_grad():
            for proj, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            new.out_proj.weight.copy_(module.out_proj.weight)
            if has_bias:
                new.out_proj.bias.copy_(module.out_proj.bias)
        return new.train(module.training)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, kernel={self.kernel!r}")


def _check_sizes(dim: int, num_heads: int, num_kv_heads: int, head_dim: int | None) -> int:
    for name, value in (("dim", dim), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
        check_int(name, value)
    if num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads} must divide num_heads={num_heads}")
    if head_dim is None:
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim} (or pass head_dim)")
        return dim // num_heads
    check_int("head_dim", head_dim)
    return head_dim


def _sum_biases(bias: Tensor | Bias | None, scheme: Tensor | Bias | None, shape: tuple[int, int, int, int],
                like: Tensor) -> Tensor | Bias | None:
    """The caller's ``bias`` plus the position scheme's, as one bias for ``attnkit.attention``; with both
    present each is materialized to (b, h, Nq, Nk) (b, h possibly 1), checked against ``shape`` first."""
    if bias is None or scheme is None:
        return scheme if bias is None else bias
    dtype = torch.promote_types(like.dtype, torch.float32)
    dense: list[Tensor] = []
    for one in (bias, scheme):
        structured = as_bias(one)  # a TypeError for a bool or non-tensor, as attnkit.attention gives
        structured.check(*shape)
        dense.append(structured.materialize(shape[2], shape[3], device=like.device, dtype=dtype))
    return dense[0] + dense[1]


def _with_key_padding(mask: Tensor | Mask | None, key_padding: Tensor | None, num_keys: int) -> Tensor | Mask | None:
    """AND a (B, >= Nk) key padding into the mask over the Nk keys attended."""
    if key_padding is None:
        return mask
    if key_padding.dim() != 2 or key_padding.shape[1] < num_keys:
        raise ValueError(f"key_padding must be (B, Nk) bool covering all {num_keys} keys, "
                         f"got {tuple(key_padding.shape)}")
    if key_padding.dtype != torch.bool:
        key_padding = key_padding != 0
    keys = key_padding[:, None, None, :num_keys]  # (B, 1, 1, Nk)
    if mask is None:
        return keys
    if isinstance(mask, Mask):
        return structured_masks.dense(keys) & mask
    return keys & mask


def _check_ring_window(cache: RingCache, window: Window | None) -> None:
    left = None if window is None else window[0]
    if left is None or left > cache.size:
        raise ValueError(f"RingCache(size={cache.size}) serves sliding-window attention with a left window of "
                         f"at most {cache.size}; this call has window={window}")


def _ring_mask(mask: Tensor | Mask | None, causal: bool, window: Window | None, k_pos: Tensor, q_pos: Tensor,
               key_padding: Tensor | None) -> Tensor:
    """A ring buffer's keys are out of order: mask by each key's stream position instead."""
    left, right = (None, None) if window is None else window
    assert left is not None  # _check_ring_window required a left window before the cache was updated
    if mask is not None:
        raise ValueError("with a RingCache, pass padding as key_padding; other masks cannot follow the ring")
    qp, kp = q_pos[:, None], k_pos[None, :]  # (Nq, 1), (1, Nk)
    visible = (kp >= 0) & (qp - kp <= left)
    if causal:
        visible &= kp <= qp
    if right is not None:
        visible &= kp - qp <= right
    visible = visible[None, None]  # (1, 1, Nq, Nk)
    if key_padding is not None:
        if key_padding.dim() != 2 or key_padding.shape[1] < int(k_pos.max()) + 1:
            raise ValueError(f"key_padding must be (B, N_total) bool covering all {int(k_pos.max()) + 1} tokens "
                             f"so far, got {tuple(key_padding.shape)}")
        visible = visible & (key_padding != 0)[:, k_pos.clamp_min(0)][:, None, None, :]  # (B, 1, Nq, Nk)
    return visible


def check_kernel(kernel: str | Kernel, name: str = "kernel") -> str | Kernel:
    """``kernel`` unchanged when it is "auto", a registered kernel's name or a kernel object: a bad choice is
    refused where it is made, with the registered names, not at the first forward."""
    if isinstance(kernel, str):
        if kernel != "auto":
            try:
                get_kernel(kernel)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        return kernel
    if not isinstance(kernel, Kernel):
        raise TypeError(f"{name} must be 'auto', a registered kernel's name or a kernel object, got "
                        f"{type(kernel).__name__}")
    return kernel


def check_exact_kernel(kernel: str | None, option: str = "kernel") -> None:
    """``kernel`` (None or "auto": the model's own choice) names a registered kernel that computes softmax attention
    exactly; an approximate one changes every later layer's input, so the maps would not be the model's."""
    if kernel is None or kernel == "auto":
        return
    if not isinstance(kernel, str):
        raise TypeError(f"{option} must be a kernel name (str) or None, got {type(kernel).__name__}")
    chosen = get_kernel(kernel)  # unknown: a ValueError listing the registered ones
    if not is_exact(chosen):
        exact = ", ".join(k.name for k in kernels() if is_exact(k))
        raise ValueError(f"{option} {kernel!r} is not exact ({chosen.description}): the model would compute "
                         f"something else and its maps would not explain it; exact kernels: {exact} (or auto)")


_Module = TypeVar("_Module", bound=nn.Module)


def set_kernel(module: _Module, kernel: str | Kernel) -> _Module:
    """Make every MultiHeadAttention inside ``module`` use ``kernel``; returns ``module``."""
    check_kernel(kernel)
    for sub in module.modules():
        if isinstance(sub, MultiHeadAttention):
            sub.kernel = kernel
    return module


def use_context_parallel(model: nn.Module, setting: ContextParallel | None) -> int:
    """Run every self-attention layer of ``model`` on sequence shards (``setting``), or again on whole sequences
    (None); returns how many layers it set. A model with a layer that mixes tokens outside attention
    (``SelectiveSSM``, an RNN, a ``Conv1d``) gets a ValueError, before any layer is set: on a shard, that layer would
    need the previous shard's state. Give the model this process's tokens and their global positions::

        cp = ContextParallel(layout="zigzag")
        use_context_parallel(model, cp)
        out = model(cp.shard(ids), position_ids=cp.positions(cp.shard(ids)))   # this process's part of model(ids)
    """
    if setting is not None and not isinstance(setting, ContextParallel):
        raise TypeError(f"setting must be an attnkit.distributed.ContextParallel or None, got {type(setting).__name__}")
    # refused before any layer is set: the model stays as it was
    layers = context_parallel_layers(model) if setting is not None else _self_attention_layers(model)
    for layer in layers:
        layer.context_parallel = setting
    return len(layers)


def context_parallel_layers(model: nn.Module) -> list[MultiHeadAttention]:
    """The self-attention layers ``use_context_parallel`` would set, without setting them; a ValueError for a model
    with a layer that mixes tokens outside attention (see there): a check to make before a process group is."""
    for name, module in model.named_modules():
        if isinstance(module, (SelectiveSSM, nn.RNNBase, nn.Conv1d)):
            raise ValueError(f"model has a {type(module).__name__} at {name or 'its top'}, which mixes tokens "
                             "along the sequence outside attention (on a shard it would need the previous "
                             "shard's state); only attention runs on sequence shards")
    return _self_attention_layers(model)


def _self_attention_layers(model: nn.Module) -> list[MultiHeadAttention]:
    return [m for m in model.modules() if isinstance(m, MultiHeadAttention) and not m.cross_attention]


__all__ = ["MultiHeadAttention", "AttentionCall", "Recorder", "check_kernel", "check_exact_kernel", "set_kernel",
           "use_context_parallel",
           "context_parallel_layers"]
