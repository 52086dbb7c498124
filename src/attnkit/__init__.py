"""attnkit: the attention mechanism in all its forms — one API, correct on every input, fast, visible.

    >>> import torch, attnkit
    >>> q = k = v = torch.randn(2, 8, 1024, 64)
    >>> out = attnkit.attention(q, k, v, causal=True)          # (2, 8, 1024, 64)
    >>> m = attnkit.masks.sliding_window(255) & attnkit.masks.causal()
    >>> out = attnkit.attention(q, k, v, mask=m, kernel="tiled")  # skips empty tiles
"""

from .functional import (AttentionRequest, Capabilities, Kernel, LinearState, Rank, additive_attention, attention,
                         attention_weights, auto_order, bias, get_kernel, hard_attention, kernel, kernels,
                         linear_attention_step, luong_attention, masks, register_kernel)

from . import models, nn  # noqa: E402  (after functional: they build on it)
from . import hub  # noqa: E402  (checkpoints: above models)
from .embeddings import embed  # noqa: E402
from . import inspect  # noqa: E402  (maps and explain: above models and hub)
from . import distributed  # noqa: E402  (context parallelism over torch.distributed: beside nn, above functional)

__version__ = "0.1.0"

__all__ = [
    "attention", "attention_weights", "kernel", "kernels", "register_kernel", "get_kernel", "auto_order", "masks",
    "bias", "linear_attention_step", "LinearState",
    "Capabilities", "Kernel", "Rank", "AttentionRequest", "additive_attention", "luong_attention", "hard_attention",
    "nn", "models", "hub", "embed", "inspect", "distributed",
]
