"""Positions: absolute (sinusoidal, learned), added to token embeddings, and relative (RoPE, ALiBi, T5
buckets), applied inside attention through ``MultiHeadAttention(positions=...)``.

Relative schemes see two kinds of positions:
- ``position_ids`` (B, N): each token's position in its own sequence (left padding does not count), which
  RoPE rotates by; the caller passes them, default ``offset + arange(N)``;
- stream positions (N,): each key's slot in the (cached) stream, shared by the batch, from which biases
  measure distances — unchanged by left padding because the padding is contiguous.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ..functional import bias as structured_bias
from ..functional.bias import Bias
from ..functional.checks import check_int, is_positive_finite


def inverse_frequencies(dim: int, base: float, device: torch.device | None = None) -> Tensor:
    """base^(-2i/dim) for i = 0 .. dim/2 - 1, float64: the frequencies of sinusoidal positions and RoPE."""
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def sinusoidal_table(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(p / base^(2i/dim)).

    positions (...) -> (..., dim) float32 (float64 for float64 positions).
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even int for sinusoidal positions, got {dim}")
    dtype = torch.float64 if positions.dtype == torch.float64 else torch.float32
    angles = positions.to(torch.float64)[..., None] * inverse_frequencies(dim, base, positions.device)  # (..., dim/2)
    table = torch.stack((angles.sin(), angles.cos()), dim=-1)  # (..., dim/2, 2): sin, cos interleaved
    return table.flatten(-2).to(dtype)


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal embeddings, no length limit: ``forward(position_ids (B, N)) -> (B, N, dim)``."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        sinusoidal_table(torch.zeros(1), dim, base)  # validates dim
        self.dim, self.base = dim, base

    def forward(self, position_ids: Tensor) -> Tensor:
        return sinusoidal_table(position_ids, self.dim, self.base)


class LearnedPositions(nn.Module):
    """Learned absolute embeddings (GPT-2, BERT): a table of ``max_len`` rows."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        check_int("max_len", max_len)
        self.max_len = max_len
        self.table = nn.Embedding(max_len, dim)

    def forward(self, position_ids: Tensor) -> Tensor:
        if position_ids.numel() and int(position_ids.max()) >= self.max_len:
            raise ValueError(f"position {int(position_ids.max())} is beyond the learned position table's "
                             f"length max_len={self.max_len}; shorten the input or raise max_len")
        return self.table(position_ids)


def default_position_ids(batch: int, length: int, offset: int, device: torch.device) -> Tensor:
    """(B, N) positions offset .. offset + N - 1 for every sequence."""
    return torch.arange(offset, offset + length, device=device).expand(batch, length)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """(B, N) positions counting only real tokens (1 = token): left padding does not shift positions.
    Padding slots get position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


class RelativePositions(nn.Module):
    """Base of the schemes ``MultiHeadAttention(positions=...)`` applies; the default does nothing."""

    def rotate(self, position_ids: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
        """Each x (B, H, N, D) at positions (B, N), rotated where the scheme rotates (RoPE); e.g. q and k
        in one call, so that the positions are looked up once."""
        return xs

    def bias(self, num_heads: int, q_pos: Tensor, k_pos: Tensor, ordered: bool) -> Tensor | Bias | None:
        """Logit bias for queries at stream positions q_pos (Nq,) and keys at k_pos (Nk,).

        ``ordered`` says k_pos = 0..Nk-1 and q_pos its last Nq entries, so a structured bias may be used.
        Returns None, a (1, H, Nq, Nk) float tensor, or an ``attnkit.bias`` object.
        """
        return None


RopeScaling = Literal["linear", "ntk"]


class RotaryEmbedding(RelativePositions):
    """RoPE (Su et al. 2021), half-split layout as in GPT-NeoX and LLaMA: q·k after rotation depends only
    on the positions' difference.

    Args:
        head_dim: even size of each head.
        base: frequency base θ.
        scaling: None, ``"linear"`` (position interpolation: positions / factor) or ``"ntk"``
            (NTK-aware: base · factor^(d / (d - 2))), for contexts ``factor`` times the trained length.
        factor: the context extension factor for ``scaling``.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, scaling: RopeScaling | None = None,
                 factor: float = 1.0):
        super().__init__()
        check_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim must be a positive even int for RoPE, got {head_dim}")
        if not is_positive_finite(base):
            raise ValueError(f"base must be a finite number > 0, got {base!r}")
        if scaling not in (None, "linear", "ntk"):
            raise ValueError(f"scaling must be None, 'linear' or 'ntk', got {scaling!r}")
        if not factor >= 1.0:
            raise ValueError(f"factor must be >= 1, got {factor}")
        if scaling == "ntk":
            base = base * factor ** (head_dim / (head_dim - 2))
        self.head_dim, self.base, self.scaling, self.factor = head_dim, base, scaling, factor
        # cos and sin of positions 0 .. P-1 per (dtype, device), computed in float64 and grown by doubling:
        # every layer and decoding step looks positions up instead of recomputing float64 trigonometry.
        # A plain attribute, not a buffer, so that module.half() cannot round the angles.
        self._tables: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def angles(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin, each (..., D) float64, for positions (...)."""
        pos = position_ids.to(torch.float64)
        if self.scaling == "linear":
            pos = pos / self.factor
        freqs = pos[..., None] * inverse_frequencies(self.head_dim, self.base, pos.device)  # (..., D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (..., D)
        return emb.cos(), emb.sin()

    def _lookup(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin (B, 1, N, D) in ``dtype`` for integer positions (B, N), from the cached table."""
        if position_ids.dtype.is_floating_point or (position_ids.numel() and int(position_ids.min()) < 0):
            cos, sin = self.angles(position_ids)  # positions the table does not hold
            return cos[:, None].to(dtype), sin[:, None].to(dtype)
        key = (dtype, position_ids.device)
        needed = int(position_ids.max()) + 1 if position_ids.numel() else 1
        if key not in self._tables or self._tables[key][0].shape[0] < needed:
            size = max(needed, 2 * self._tables[key][0].shape[0] if key in self._tables else 256)
            cos, sin = self.angles(torch.arange(size, device=position_ids.device))  # (P, D) float64
            self._tables[key] = cos.to(dtype), sin.to(dtype)
        cos, sin = self._tables[key]
        return cos[position_ids][:, None], sin[position_ids][:, None]  # (B, 1, N, D)

    def rotate(self, position_ids: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
        for x in xs:
            if x.shape[-1] != self.head_dim:
                raise ValueError(f"RoPE was built for head_dim={self.head_dim}, got heads of size {x.shape[-1]}")
        tables: dict[torch.dtype, tuple[Tensor, Tensor]] = {}
        out = []
        for x in xs:
            if x.dtype not in tables:
                tables[x.dtype] = self._lookup(position_ids, x.dtype)
            cos, sin = tables[x.dtype]
            half = x.shape[-1] // 2
            rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
            out.append(x * cos + rotated * sin)  # (B, H, N, D)
        return tuple(out)


class ALiBiPositions(RelativePositions):
    """ALiBi (Press et al. 2022): a per-head linear distance penalty; no embedding at all."""

    def __init__(self, num_heads: int):
        super().__init__()
        check_int("num_heads", num_heads)
        self.num_heads = num_heads
        self.slopes = structured_bias.alibi_slopes(num_heads)  # float64, not a buffer: .half() keeps it exact

    def bias(self, num_heads: int, q_pos: Tensor, k_pos: Tensor, ordered: bool) -> Tensor | Bias:
        if num_heads != self.num_heads:
            raise ValueError(f"ALiBi was built for {self.num_heads} heads, the layer has {num_heads}")
        if ordered:
            return structured_bias.alibi(num_heads, self.slopes)  # computed per tile, never N×N
        distance = (q_pos[:, None] - k_pos[None, :]).abs().to(torch.float32)  # (Nq, Nk)
        return -self.slopes.to(device=distance.device, dtype=torch.float32)[None, :, None, None] * distance


def t5_bucket(relative: Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bucket of each relative position (key - query): exact for small distances, logarithmic up to
    ``max_distance``, as in Raffel et al. 2020 / the Mesh TensorFlow reference."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket += (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp_min(0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = torch.log(distance.float().clamp_min(1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp_max(num_buckets - 1)
    return bucket + torch.where(is_small, distance, large)


class T5RelativeBias(RelativePositions):
    """T5's learned relative position buckets: one scalar per (bucket, head) added to the logits."""

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        for name, value in (("num_heads", num_heads), ("num_buckets", num_buckets), ("max_distance", max_distance)):
            check_int(name, value)
        if num_buckets < 4 or max_distance <= num_buckets // 4:
            raise ValueError(f"need num_buckets >= 4 and max_distance > num_buckets / 4, got {num_buckets}, "
                             f"{max_distance}")
        self.num_heads, self.num_buckets, self.max_distance = num_heads, num_buckets, max_distance
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def bias(self, num_heads: int, q_pos: Tensor, k_pos: Tensor, ordered: bool) -> Tensor:
        if num_heads != self.num_heads:
            raise ValueError(f"T5RelativeBias was built for {self.num_heads} heads, the layer has {num_heads}")
        relative = k_pos[None, :].long() - q_pos[:, None].long()  # (Nq, Nk)
        buckets = t5_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]  # (1, H, Nq, Nk)


__all__ = ["sinusoidal_table", "SinusoidalPositions", "LearnedPositions", "RelativePositions", "RotaryEmbedding",
           "ALiBiPositions", "T5RelativeBias", "t5_bucket", "default_position_ids", "position_ids_from_mask"]
