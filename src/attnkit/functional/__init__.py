"""Pure tensor code: ``attention`` and its kernels, masks, biases, classic mechanisms. No modules, no I/O."""

from . import bias, masks
from .attention import attention, attention_weights
from .classic import (HardAttention, additive_attention, additive_scores, hard_attention, luong_attention,
                      luong_scores)
from .kernels import (DenseKernel, LinearKernel, LinearState, PerformerKernel, SdpaKernel, TiledKernel,
                      linear_attention_step)
from .dispatch import auto_order, select_kernel
from .registry import Capabilities, Kernel, Rank, get_kernel, kernel, kernels, register_kernel
from .request import AttentionRequest

for _kernel in (DenseKernel(), SdpaKernel(), TiledKernel(), LinearKernel(), PerformerKernel()):
    if _kernel.name not in {k.name for k in kernels()}:
        register_kernel(_kernel)

__all__ = [
    "attention", "attention_weights", "masks", "bias", "kernel", "kernels", "register_kernel", "get_kernel",
    "linear_attention_step", "LinearState",
    "auto_order", "select_kernel", "Rank", "Capabilities", "Kernel", "AttentionRequest",
    "additive_attention", "additive_scores", "luong_attention", "luong_scores", "hard_attention", "HardAttention",
]
