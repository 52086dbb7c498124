"""Structured attention masks: small typed objects that explain themselves.

Every mask can build its dense bool tensor (``materialize``), tell per tile whether it is empty, partial
or full (``block_layout``, without the N×N tensor for the built-in masks) and print itself as a block
grid; masks compose with ``& | ~``. Positions are bottom-right aligned when q_len != k_len.

- ``base``: the ``Mask`` class, ``TileState``, composition, ``Dense`` (a bool tensor);
- ``basic``: causal and sliding windows, padding, packed documents, prefix-LM, global tokens;
- ``sparse``: the patterns of the literature (Sparse Transformer, Longformer, BigBird);
- ``functions``: a mask from one function ``fn(b, h, q_idx, kv_idx)`` (FlexAttention's mask_mod).

A new mask subclasses :class:`Mask` and writes ``tile``; or it is a function given to ``from_function``.
"""

from .base import EMPTY, FULL, PARTIAL, And, Dense, Device, Mask, Not, Or, TileState, as_mask, check_broadcast, shape4
from .basic import (Document, GlobalTokens, Padding, PrefixLM, SlidingWindow, causal, dense, document,
                    global_tokens, padding, prefix_lm, sliding_window)
from .functions import FunctionMask, from_function
from .sparse import BigBird, Fixed, Longformer, Strided, bigbird, fixed, longformer, strided

__all__ = [
    "EMPTY", "PARTIAL", "FULL", "TileState", "Mask", "causal", "sliding_window", "padding", "document",
    "prefix_lm", "global_tokens", "dense", "as_mask", "strided", "fixed", "longformer", "bigbird",
    "from_function",
    # the classes behind the factories, for isinstance checks and subclassing
    "And", "Or", "Not", "Dense", "SlidingWindow", "Padding", "Document", "PrefixLM", "GlobalTokens", "Strided",
    "Fixed", "Longformer", "BigBird", "FunctionMask", "check_broadcast", "shape4",
    "Device",  # the type of every mask method's device argument
]
