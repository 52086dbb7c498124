"""Feed-forward blocks and the transformer layers: ``Block`` (self-attention + FFN from the modules given; with
``causal=True`` it is the decoder-only GPT block), ``EncoderLayer`` (a Block built from sizes) and ``DecoderLayer``
(masked self-attention + cross-attention + FFN), each with pre- or post-norm residuals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor, nn

from ..functional.kernels import native

from ..functional.bias import Bias
from ..functional.masks import Mask
from ..functional.registry import Kernel
from .activations import GATED, PLAIN, Activation, check_activation
from .attention import MultiHeadAttention, Window
from .cache import ContextCache, KVCache
from .linear import Linear, hooked, linears, switched_on as linear_switch, tracing
from .norms import NormKind, RMSNorm, make_norm, norm_parts
from .positions import RelativePositions


def dropped(dropout: nn.Dropout, x: Tensor) -> Tensor:
    """``dropout(x)``, skipped (not even called) where it does nothing: in eval mode or with p = 0. A decoding
    step passes through a few dropouts per layer; each module call costs more than the step's small tensors."""
    return dropout(x) if dropout.training and dropout.p > 0 else x


class FeedForward(nn.Module):
    """Position-wise MLP: ``down(act(up(x)))``, or gated ``down(act(gate(x)) * up(x))`` for SwiGLU/GeGLU
    (Shazeer 2020).

    Args:
        dim: input and output width; hidden: inner width.
        activation: "gelu" (exact), "gelu_tanh" (GPT-2's approximation), "relu", "silu", "swiglu", "geglu",
            "geglu_tanh" (GeGLU with the tanh approximation, Gemma's).
        bias: biases on the projections; dropout: on the output.
    """

    def __init__(self, dim: int, hidden: int, *, activation: Activation = "gelu", bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        check_activation(activation)
        self.activation = activation
        self.up = Linear(dim, hidden, bias=bias)
        self.gate = Linear(dim, hidden, bias=bias) if activation in GATED else None
        self.down = Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            both = linears(x, (self.gate, self.up))  # a decoding step: one call of the C matmul
            gate, up = both if both is not None else (self.gate(x), self.up(x))
            hidden = GATED[self.activation](gate) * up
        else:
            hidden = PLAIN[self.activation](self.up(x))
        return dropped(self.dropout, self.down(hidden))


def _ffn_output(ffn: nn.Module, x: Tensor, aux_losses: list[Tensor] | None) -> Tensor:
    """Run a FeedForward or an MoE (which returns (output, aux_loss)); collect the MoE's auxiliary loss."""
    out = ffn(x)
    if isinstance(out, tuple):
        out, aux = out
        if aux_losses is not None:
            aux_losses.append(aux)
    return out


class Block(nn.Module):
    """Self-attention then feed-forward, each in a residual branch, built from the modules it is given.

    ``norm_first=True`` (pre-norm, GPT-2 and most modern models): x + f(norm(x)); with ``post_attn_norm`` and
    ``post_ffn_norm`` (Gemma 2 and 3's "sandwich"), each branch's output is normalized too:
    x + post_norm(f(norm(x))). ``norm_first=False`` (post-norm, the 2017 Transformer and BERT): norm(x + f(x)).
    ``window``: this block's sliding window (``(left, right)`` as in ``attnkit.attention``), for models whose
    layers differ (Gemma's alternating local and global layers); a window passed to ``forward`` replaces it.
    ``ffn`` may be an ``attnkit.nn.MoE``: its auxiliary loss goes to the ``aux_losses`` list passed to forward.

        >>> block = Block(MultiHeadAttention(64, 4), FeedForward(64, 256), nn.LayerNorm(64), nn.LayerNorm(64))
        >>> block(torch.randn(2, 10, 64), causal=True).shape
        torch.Size([2, 10, 64])
    """

    def __init__(self, attn: MultiHeadAttention, ffn: nn.Module, attn_norm: nn.Module, ffn_norm: nn.Module, *,
                 post_attn_norm: nn.Module | None = None, post_ffn_norm: nn.Module | None = None,
                 norm_first: bool = True, dropout: float = 0.0, window: Window | None = None):
        super().__init__()
        if not norm_first and (post_attn_norm is not None or post_ffn_norm is not None):
            raise ValueError("post_attn_norm and post_ffn_norm (sandwich norms) need norm_first=True")
        self.norm_first, self.window = norm_first, window
        self.attn, self.attn_norm, self.ffn, self.ffn_norm = attn, attn_norm, ffn, ffn_norm
        self.post_attn_norm, self.post_ffn_norm = post_attn_norm, post_ffn_norm
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, mask: Tensor | Mask | None = None, causal: bool = False,
                window: Window | None = None, cache: KVCache | None = None, position_ids: Tensor | None = None,
                key_padding: Tensor | None = None, bias: Tensor | Bias | None = None,
                aux_losses: list[Tensor] | None = None) -> Tensor:
        """x (B, N, dim) -> (B, N, dim); the options (``bias``: an additive tensor, an ``attnkit.bias`` object or
        a score function) go to ``MultiHeadAttention.forward``."""
        window = self.window if window is None else window

        def attend(h: Tensor) -> Tensor:
            return dropped(self.dropout, self.attn(h, mask=mask, causal=causal, window=window, cache=cache,
                                          position_ids=position_ids, key_padding=key_padding, bias=bias))

        def feed(h: Tensor) -> Tensor:
            return dropped(self.dropout, _ffn_output(self.ffn, h, aux_losses))

        norm = self._fused_norm(x) if mask is None and bias is None else None
        if norm is not None:
            # the C calls add into y, float32 (a bfloat16 model's rows widened): the caller's x stays as it was
            y = x.clone() if x.dtype == torch.float32 else x.float()
            rest = self._ffn_call(y, norm)
            if self.attn.decode_step(y, self.attn_norm, rest, window=window, cache=cache,
                                     position_ids=position_ids, key_padding=key_padding) is not None:
                return y.to(x.dtype)  # the whole layer in one C call
            merged = self.attn.merged_heads(self.attn_norm(x), causal=causal, window=window, cache=cache,
                                            position_ids=position_ids, key_padding=key_padding)
            rows = rest.x.shape[0]
            if native.decode_ffn(replace(rest, attn=merged.float().reshape(rows, merged.shape[-1]).contiguous())):
                return y.to(x.dtype)
            return self._residuals(self.attn.out_proj(merged), x, feed)  # where the C call declines
        if not self.norm_first:
            x = self.attn_norm(x + attend(x))
            return self.ffn_norm(x + feed(x))
        return self._residuals(attend(self.attn_norm(x)), x, feed)

    def _residuals(self, h: Tensor, x: Tensor, feed: Callable[[Tensor], Tensor]) -> Tensor:
        """Pre-norm: x plus the attention branch ``h`` (through Gemma's post-attention norm), then plus the
        feed-forward branch (through its post norm)."""
        x = x + (h if self.post_attn_norm is None else self.post_attn_norm(h))
        f = feed(self.ffn_norm(x))
        return x + (f if self.post_ffn_norm is None else self.post_ffn_norm(f))


    def _fused_norm(self, x: Tensor) -> native.Norm | None:
        """The feed-forward's norm as the C calls read it when a decoding step's rest of the block (output
        projection, residuals, the feed-forward's norm and feed-forward) can run as one C call, else None. It can
        for inference of at most GEMV_ROWS float32 or bfloat16 rows, pre-norm, an RMSNorm or a LayerNorm before the
        feed-forward (Gemma's sandwich norms: RMSNorms like it), a FeedForward (gated or plain) of plain Linear layers
        (not wrapped, e.g. by a LoRA adapter), nothing that records, drops out or has a forward hook (the C calls
        stand in for those modules' forwards), and no torch.jit.trace recording."""
        ffn, attn = self.ffn, self.attn
        norm = norm_parts(self.ffn_norm)
        if not (linear_switch() and not self.training and not torch.is_grad_enabled() and not tracing()
                and self.norm_first and x.dtype in native.WEIGHT_DTYPES
                and x.dim() == 3 and x.shape[0] * x.shape[1] <= native.GEMV_ROWS and x.device.type == "cpu"
                and isinstance(ffn, FeedForward) and native.ffn_activation(ffn.activation, ffn.gate is not None)
                is not None
                and all(isinstance(m, nn.Linear) for m in (attn.out_proj, ffn.up, ffn.down))
                and (ffn.gate is None or isinstance(ffn.gate, nn.Linear))
                and norm is not None and not attn._recorders
                and all(post is None or (not norm.layer and isinstance(post, RMSNorm) and post.eps == norm.eps
                                         and post.unit_offset == norm.unit_offset)
                        for post in (self.post_attn_norm, self.post_ffn_norm))):
            return None
        hooks = hooked((attn, self.attn_norm, attn.q_proj, attn.k_proj, attn.v_proj, attn.q_norm, attn.k_norm,
                        attn.out_proj, ffn, ffn.gate, ffn.up, ffn.down, self.ffn_norm, self.post_attn_norm,
                        self.post_ffn_norm))
        return None if hooks else norm

    def _ffn_call(self, x: Tensor, norm: native.Norm) -> native.FFNCall:
        """The rest of the block after the attention as one C call (its ``attn``, the heads' outputs, None: a C
        attention's): x += the attention branch (through the output projection) and the feed-forward branch, in
        place; ``norm`` is the feed-forward's (``_fused_norm``)."""
        ffn, out = self.ffn, self.attn.out_proj
        assert isinstance(ffn, FeedForward)  # _fused_norm checked it
        rows = x.shape[0] * x.shape[1]
        return native.FFNCall(
            None, x.view(rows, x.shape[2]), out.weight, out.bias, _norm_weight(self.post_attn_norm), norm,
            None if ffn.gate is None else ffn.gate.weight, ffn.up.weight, ffn.down.weight,
            None if ffn.gate is None else ffn.gate.bias, ffn.up.bias, ffn.down.bias, ffn.activation,
            _norm_weight(self.post_ffn_norm))


def _norm_weight(norm: nn.Module | None) -> Tensor | None:
    """A sandwich norm's weight (``_fused_norm`` admitted only RMSNorms), or None."""
    assert norm is None or isinstance(norm, RMSNorm)
    return None if norm is None else norm.weight


class EncoderLayer(Block):
    """A :class:`Block` built from sizes: ``MultiHeadAttention`` and ``FeedForward`` (or the ``ffn`` given, e.g. an
    ``attnkit.nn.MoE``) with two norms of kind ``norm``. Pre-norm by default (``norm_first=True``); BERT and the
    2017 Transformer are post-norm.
    """

    def __init__(self, dim: int, num_heads: int, hidden: int, *, num_kv_heads: int | None = None,
                 head_dim: int | None = None, activation: Activation = "gelu", norm: NormKind = "layer",
                 norm_first: bool = True, eps: float = 1e-5, bias: bool = True, dropout: float = 0.0,
                 attn_dropout: float = 0.0, qk_norm: bool = False, positions: RelativePositions | None = None,
                 kernel: str | Kernel = "auto", ffn: nn.Module | None = None):
        attn = MultiHeadAttention(dim, num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, bias=bias,
                                  dropout=attn_dropout, qk_norm=qk_norm, positions=positions, kernel=kernel)
        ffn = ffn if ffn is not None else FeedForward(dim, hidden, activation=activation, bias=bias)
        super().__init__(attn, ffn, make_norm(norm, dim, eps), make_norm(norm, dim, eps), norm_first=norm_first,
                         dropout=dropout)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to ``context``, then feed-forward, each residual
    (Vaswani et al. 2017). Options as EncoderLayer's (without ``head_dim``, ``qk_norm`` and ``window``),
    plus ``context_dim`` (default ``dim``); the default is the paper's post-norm with ReLU."""

    def __init__(self, dim: int, num_heads: int, hidden: int, *, context_dim: int | None = None,
                 num_kv_heads: int | None = None, activation: Activation = "relu", norm: NormKind = "layer",
                 norm_first: bool = False, eps: float = 1e-5, bias: bool = True, dropout: float = 0.0,
                 attn_dropout: float = 0.0, positions: RelativePositions | None = None,
                 kernel: str | Kernel = "auto", ffn: nn.Module | None = None):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(dim, num_heads, num_kv_heads=num_kv_heads, bias=bias, dropout=attn_dropout,
                                            kernel=kernel, positions=positions)
        self.cross_attn = MultiHeadAttention(dim, num_heads, num_kv_heads=num_kv_heads, bias=bias, dropout=attn_dropout,
                                             kernel=kernel, context_dim=context_dim, cross_attention=True)
        self.ffn = ffn if ffn is not None else FeedForward(dim, hidden, activation=activation, bias=bias)
        self.self_norm, self.cross_norm, self.ffn_norm = (make_norm(norm, dim, eps) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None, *, context_padding: Tensor | None = None,
                mask: Tensor | Mask | None = None, causal: bool = True, cache: KVCache | None = None,
                context_cache: ContextCache | None = None, position_ids: Tensor | None = None,
                key_padding: Tensor | None = None, bias: Tensor | Bias | None = None,
                aux_losses: list[Tensor] | None = None) -> Tensor:
        """x (B, N, dim), context (B, M, context_dim) with ``context_padding`` (B, M) bool (True = token).

        With a filled ``context_cache`` the context may be None (its keys and values are reused). ``bias`` applies
        to the self-attention, as in ``EncoderLayer``.
        """
        def attend_self(h: Tensor) -> Tensor:
            return dropped(self.dropout, self.self_attn(h, mask=mask, causal=causal, cache=cache,
                                                        position_ids=position_ids, key_padding=key_padding, bias=bias))

        def attend_context(h: Tensor) -> Tensor:
            return dropped(self.dropout, self.cross_attn(h, context, cache=context_cache, key_padding=context_padding))

        def feed(h: Tensor) -> Tensor:
            return dropped(self.dropout, _ffn_output(self.ffn, h, aux_losses))

        for branch, norm in ((attend_self, self.self_norm), (attend_context, self.cross_norm),
                             (feed, self.ffn_norm)):
            x = x + branch(norm(x)) if self.norm_first else norm(x + branch(x))
        return x


__all__ = ["FeedForward", "Block", "EncoderLayer", "DecoderLayer", "Activation"]
