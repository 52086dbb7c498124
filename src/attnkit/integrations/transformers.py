"""attnkit as an attention implementation of Hugging Face ``transformers``.

    >>> from attnkit.integrations.transformers import register
    >>> name = register(kernel="auto")                      # "attnkit"
    >>> model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=name)
    >>> model.set_attn_implementation(name)                 # or switch a loaded model

``register`` adds one function to ``transformers.AttentionInterface`` and, under the same name, transformers'
boolean ``sdpa_mask`` to ``AttentionMaskInterface``: the model then builds boolean masks (True = may attend,
padding and sliding windows included) or none at all when plain causal attention is enough, which is the form
attnkit's kernels skip tiles from. ``transformers`` is imported inside ``register`` only.

What the attention function receives from a model, and what it makes of it:

- ``query`` (B, H, Nq, D), ``key`` / ``value`` (B, Hkv, Nk, D|Dv): passed as they are (attnkit takes fewer
  key/value heads, so nothing is repeated).
- ``attention_mask``: a bool (B, 1|H, Nq, Nk) mask goes in as ``mask=``; an additive float mask becomes a bool
  mask of its entries above the dtype's minimum (eager's "-inf"), and its other entries, when any is nonzero,
  a ``bias=`` (masked bias entries never count in attnkit).
- ``is_causal`` (a keyword, else ``module.is_causal``): used only without a mask and with Nq > 1, as in
  transformers' SDPA path. Transformers' mask-free causal call is top-left aligned (an empty static cache
  at prefill: keys past the last query are empty slots); attnkit's causal is bottom-right aligned, so those
  keys are cropped first, as transformers' SDPA path does. The two alignments agree when Nq == Nk, and a
  single decoding query sees every key under both.
- ``scaling``, ``softcap`` (Gemma 2), ``position_bias`` (T5-style, added to the float part of the mask),
  ``dropout`` (only while the module trains). ``sliding_window`` is already inside the mask transformers
  builds (it leaves the mask out only when the window covers every key), so it is not applied again.
- Attention sinks (``s_aux``, gpt-oss) are refused with a ``ValueError``: attnkit has no such term.

The output is (B, Nq, H, Dv), contiguous, and no attention weights (``None``: with ``output_attentions=True``
the model returns no maps). The maps come through a hook point instead, as in attnkit's own layers:
``attach(module, recorder)`` calls ``recorder(module, AttentionCall)`` on each call of that attention module,
with exactly the q, k, mask, causality, bias, scale and soft-cap handed to ``attnkit.attention`` (after the
static-cache crop); ``attnkit.inspect.capture`` builds on it, and ``attention_modules(model)`` finds the modules.
"""

from __future__ import annotations

import inspect
import weakref
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..functional import Kernel, attention, get_kernel
from ..nn.attention import AttentionCall

# the recorders attached to each transformers attention module; an entry goes with its module
_RECORDERS: weakref.WeakKeyDictionary[nn.Module, OrderedDict[int, Callable[[nn.Module, AttentionCall], None]]] = \
    weakref.WeakKeyDictionary()
_REGISTERED: set[str] = set()  # the implementation names ``register`` gave attnkit in this process


def attach(module: nn.Module, recorder: Callable[[nn.Module, AttentionCall], None]) -> RemovableHandle:
    """Call ``recorder(module, AttentionCall)`` on every attnkit attention call of the transformers ``module``.

    ``handle.remove()`` detaches it. The call holds q (B, H, Nq, D), k (B, Hkv, Nk, D) and the options handed
    to ``attnkit.attention``; ``key_positions`` is ``arange(Nk)``. Modules with no recorder pay nothing.
    """
    recorders = _RECORDERS.setdefault(module, OrderedDict())
    handle = RemovableHandle(recorders)
    recorders[handle.id] = recorder
    return handle


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of a transformers ``model`` that call its attention implementation, in ``named_modules()`` order.

    The rule, checked on Llama, Gemma 2, Qwen3 and BERT (its ``BertSelfAttention``): a module with a ``config``
    whose class's ``forward`` reads transformers' ``ALL_ATTENTION_FUNCTIONS`` (the registry of attention
    implementations) by name — how every model of transformers 5 picks its implementation (decorators such as
    ``deprecate_kwarg`` are unwrapped first). Wrapping modules (a decoder layer, ``BertAttention``) do not read
    it, so each attention call belongs to one module. Nothing runs: the rule reads code objects only.
    """
    found = []
    for name, module in model.named_modules():
        forward = getattr(type(module), "forward", None)
        forward = inspect.unwrap(forward) if callable(forward) else None
        names = getattr(getattr(forward, "__code__", None), "co_names", ())
        if "ALL_ATTENTION_FUNCTIONS" in names and hasattr(module, "config"):
            found.append((name, module))
    return found


def uses_attnkit(model: nn.Module) -> bool:
    """Whether ``model.config._attn_implementation`` is a name ``register`` gave attnkit."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) in _REGISTERED


def _mask_and_bias(attention_mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """transformers' ``attention_mask`` as attnkit's (bool mask, additive bias), either may be None."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        return attention_mask, None
    if not attention_mask.is_floating_point():
        raise TypeError(f"attention_mask must be a bool or float tensor, got {attention_mask.dtype}")
    # eager masks hold 0 where a key is seen and finfo(dtype).min (or -inf) where it is not
    visible = attention_mask > torch.finfo(attention_mask.dtype).min
    if not attention_mask.masked_fill(~visible, 0).any():
        return visible, None  # only 0 / -inf: a bool mask keeps tiles skippable and the result exact
    return visible, attention_mask


def _combine_biases(float_mask: Tensor | None, position_bias: Tensor | None) -> Tensor | None:
    if position_bias is None:
        return float_mask
    return position_bias if float_mask is None else position_bias + float_mask


def attnkit_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      softcap: float | None = None, is_causal: bool | None = None,
                      position_bias: Tensor | None = None, *, kernel: str | Kernel = "auto",
                      **kwargs: Any) -> tuple[Tensor, None]:
    """One attention call of a transformers model, computed by ``attnkit.attention``.

    Args:
        module: the calling attention module (read for ``is_causal`` and ``training``).
        query: (B, H, Nq, D). key: (B, Hkv, Nk, D). value: (B, Hkv, Nk, Dv); H a multiple of Hkv.
        attention_mask: None, bool (True = may attend) or additive float, broadcastable to (B, H, Nq, Nk).
        dropout, scaling, softcap, is_causal, position_bias: as transformers passes them (see the module doc).
        kernel: attnkit's kernel choice, fixed by ``register``.

    Returns:
        ((B, Nq, H, Dv) contiguous output in query's dtype, None).
    """
    if kwargs.get("s_aux") is not None:
        raise ValueError("attnkit cannot serve attention sinks (s_aux): use attn_implementation='eager' for this model")
    mask, float_mask = _mask_and_bias(attention_mask)
    bias = _combine_biases(float_mask, position_bias)
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    n_q, n_k = query.shape[2], key.shape[2]
    causal = bool(is_causal) and mask is None and n_q > 1
    if causal and n_k > n_q:  # top-left causal in transformers: the keys after the last query are unseen slots
        key, value = key[:, :, :n_q], value[:, :, :n_q]
        if bias is not None and bias.shape[-1] > 1:
            bias = bias[..., :n_q]
    recorders = _RECORDERS.get(module)
    if recorders:
        call = AttentionCall(q=query, k=key, mask=mask, causal=causal, window=None, bias=bias, scale=scaling,
                             softcap=softcap, key_positions=torch.arange(key.shape[2], device=key.device), v=value)
        for recorder in list(recorders.values()):
            recorder(module, call)
    out = attention(query, key, value, mask=mask, causal=causal, bias=bias, scale=scaling, softcap=softcap,
                    dropout=dropout if module.training else 0.0, kernel=kernel)  # (B, H, Nq, Dv)
    return out.transpose(1, 2).contiguous(), None  # (B, Nq, H, Dv)


_RESERVED = ("sdpa", "flash", "flex", "paged", "/")  # transformers checks or loads these implementations itself


def register(kernel: str | Kernel = "auto", name: str = "attnkit") -> str:
    """Register attnkit with ``transformers`` as the attention implementation ``name``, running ``kernel``.

    Afterwards ``from_pretrained(..., attn_implementation=name)``, ``model.set_attn_implementation(name)`` or
    ``config._attn_implementation = name`` send every attention call of a model through
    ``attnkit.attention(..., kernel=kernel)``. Registering again (the same or another kernel) replaces the
    earlier registration. Raises ``ValueError`` for an unknown kernel name, listing the registered kernels.

    Returns:
        ``name``.
    """
    if isinstance(kernel, str) and kernel != "auto":
        get_kernel(kernel)  # raises, naming the registered kernels
    elif not isinstance(kernel, (str, Kernel)):
        raise TypeError(f"kernel must be 'auto', a kernel name or a kernel object, got {type(kernel).__name__}")
    if not isinstance(name, str) or not name or name == "eager" or any(part in name for part in _RESERVED):
        raise ValueError(f"name must be an attention implementation name transformers does not treat specially "
                         f"(not 'eager', nor containing any of {_RESERVED}), got {name!r}")
    import transformers  # lazily: attnkit never needs transformers until it is asked to serve it
    from transformers import masking_utils

    transformers.AttentionInterface.register(name, partial(attnkit_attention, kernel=kernel))
    mask_interface = getattr(masking_utils, "AttentionMaskInterface", None)
    if mask_interface is not None:  # boolean masks, or None where plain causal attention is enough
        mask_interface.register(name, masking_utils.sdpa_mask)
    _REGISTERED.add(name)
    return name


__all__ = ["attach", "attention_modules", "attnkit_attention", "register", "uses_attnkit"]
