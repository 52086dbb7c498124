"""The built-in kernels, registered in ``attnkit.functional`` at import."""

from .dense import DenseKernel, dense_attention
from .sdpa import SdpaKernel, sdpa_attention
from .tiled import TiledKernel, tiled_attention

__all__ = ["DenseKernel", "SdpaKernel", "TiledKernel", "dense_attention", "sdpa_attention", "tiled_attention"]
