"""The built-in kernels, registered in ``attnkit.functional`` at import."""

from .dense import DenseKernel, dense_attention
from .linear import LinearKernel, LinearState, PerformerKernel, linear_attention_step
from .sdpa import SdpaKernel, sdpa_attention
from .tiled import TiledKernel, tiled_attention

__all__ = ["DenseKernel", "SdpaKernel", "TiledKernel", "LinearKernel", "PerformerKernel", "dense_attention",
           "sdpa_attention", "tiled_attention", "LinearState", "linear_attention_step"]
