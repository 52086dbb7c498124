"""The feed-forward activations by name, shared by FeedForward and MoE experts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

Activation = Literal["gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu", "geglu_tanh"]
# plain: down(act(up(x)))
PLAIN: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu, "silu": F.silu}
# gated (Shazeer 2020): down(act(gate(x)) * up(x))
# "geglu_tanh": GeGLU with GPT-2's tanh approximation of GELU (Gemma's gelu_pytorch_tanh)
GATED: dict[str, Callable[[Tensor], Tensor]] = {"swiglu": F.silu, "geglu": F.gelu,
                                                "geglu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def check_activation(activation: str) -> None:
    if activation not in PLAIN and activation not in GATED:
        raise ValueError(f"activation must be one of {sorted({**PLAIN, **GATED})}, got {activation!r}")
