"""Building blocks: attention modules, positions, feed-forward, norms, layers, MoE, SSM, KV caches.

Every module calls ``attnkit.attention`` for the attention math and passes ``kernel=`` down unchanged.

    >>> mha = attnkit.nn.MultiHeadAttention(512, 8, num_kv_heads=2, positions=attnkit.nn.RotaryEmbedding(64))
    >>> y = mha(torch.randn(2, 100, 512), causal=True)
"""

from .activations import Activation
from .attention import (AttentionCall, MultiHeadAttention, Recorder, context_parallel_layers, set_kernel,
                        use_context_parallel)
from .cache import CacheView, ContextCache, GrowingCache, KVCache, RingCache, StaticCache, make_cache
from .classic import AdditiveAttention, AttentionPooling, HierarchicalAttention, HierarchicalOutput, LuongAttention
from .layers import Block, DecoderLayer, EncoderLayer, FeedForward
from .linear import Linear, use_onednn
from .moe import MoE, MoEStats
from .norms import NormConfig, RMSNorm, make_norm
from .positions import (
                        ALiBiPositions,
                        LearnedPositions,
                        RelativePositions,
                        RopeScaling,
                        RotaryEmbedding,
                        SinusoidalPositions,
                        T5RelativeBias,
                        position_ids_from_mask,
                        sinusoidal_table,
)
from .ssm import SelectiveSSM, SSMState, selective_scan_chunked, selective_scan_reference

__all__ = [
    "MultiHeadAttention", "AttentionCall", "Recorder", "set_kernel", "use_context_parallel", "context_parallel_layers",
    "StaticCache", "GrowingCache", "RingCache", "ContextCache", "CacheView", "KVCache", "make_cache",
    "Linear", "use_onednn",
    "FeedForward", "Block", "EncoderLayer", "DecoderLayer", "RMSNorm", "NormConfig", "make_norm",
    "SinusoidalPositions", "LearnedPositions", "RelativePositions", "RotaryEmbedding", "RopeScaling", "ALiBiPositions",
    "T5RelativeBias", "sinusoidal_table", "position_ids_from_mask", "Activation",
    "MoE", "MoEStats", "SelectiveSSM", "SSMState", "selective_scan_chunked", "selective_scan_reference",
    "AdditiveAttention", "LuongAttention", "AttentionPooling", "HierarchicalAttention", "HierarchicalOutput",
]
