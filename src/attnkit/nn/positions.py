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
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor, nn

from ..functional import bias as structured_bias
from ..functional.bias import Bias
from ..functional.checks import check_bool, check_int, is_positive_finite


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


RopeKind = Literal["linear", "ntk", "dynamic", "yarn", "llama3", "longrope"]

# The RopeScaling fields each kind reads besides kind and factor; the others must keep their defaults.
_KIND_FIELDS: dict[str, frozenset[str]] = {
    "linear": frozenset(),
    "ntk": frozenset(),
    "dynamic": frozenset({"original_max_len"}),
    "yarn": frozenset({"original_max_len", "beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim",
                       "truncate"}),
    "llama3": frozenset({"original_max_len", "low_freq_factor", "high_freq_factor"}),
    "longrope": frozenset({"original_max_len", "attention_factor", "short_factor", "long_factor"}),
}


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE reaches past the trained context: the scaling types of Hugging Face transformers' Llama family
    (``rope_type`` in config.json), plus ``"ntk"`` (a fixed NTK-aware base, which transformers lacks).

    - ``"linear"``: position interpolation, every frequency / ``factor``.
    - ``"ntk"``: base · factor^(d / (d - 2)), d the rotary dimension.
    - ``"dynamic"``: NTK with the factor grown from each input's length (see ``RotaryEmbedding``).
    - ``"yarn"``: frequencies that turn fewer than ``beta_slow`` times over the trained context are divided by
      ``factor``, those that turn more than ``beta_fast`` times are kept, a linear ramp between; cos and sin
      are multiplied by ``attention_factor``.
    - ``"llama3"``: wavelengths longer than original_max_len / low_freq_factor divided by ``factor``, shorter than
      original_max_len / high_freq_factor kept, smoothly between.
    - ``"longrope"``: frequency i divided by ``short_factor[i]`` for inputs up to ``original_max_len`` and by
      ``long_factor[i]`` beyond; cos and sin multiplied by ``attention_factor``.

    >>> RotaryEmbedding(128, 500000.0, RopeScaling("llama3", 8.0, original_max_len=8192))
    """

    kind: RopeKind
    factor: float = 1.0  # the context extension factor; longrope reads it only for the default attention_factor
    original_max_len: int | None = None  # the trained context length: required by dynamic, yarn, llama3, longrope
    beta_fast: float = 32.0  # yarn: turns over the trained context above which a frequency is kept as trained
    beta_slow: float = 1.0  # yarn: turns below which a frequency is divided by factor
    attention_factor: float | None = None  # yarn, longrope: multiplies cos and sin; None = transformers' default
    mscale: float | None = None  # yarn: with mscale_all_dim, the default attention_factor is their mscales' ratio
    mscale_all_dim: float | None = None  # yarn (DeepSeek): see mscale
    truncate: bool = True  # yarn: round the ramp's ends outwards to whole dimensions
    low_freq_factor: float = 1.0  # llama3: see the kind's description above
    high_freq_factor: float = 4.0  # llama3: > low_freq_factor
    short_factor: tuple[float, ...] = ()  # longrope: one divisor per frequency (rotary_dim / 2 of them)
    long_factor: tuple[float, ...] = ()  # longrope: as short_factor, for inputs longer than original_max_len

    def __post_init__(self) -> None:
        if self.kind not in _KIND_FIELDS:
            raise ValueError(f"RopeScaling.kind must be one of {', '.join(map(repr, _KIND_FIELDS))}, got {self.kind!r}")
        for name in ("short_factor", "long_factor"):  # a list from a config.json reads as the tuple
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for f in fields(self):
            name = f.name
            if name not in _KIND_FIELDS[self.kind] | {"kind", "factor"} and getattr(self, name) != f.default:
                raise ValueError(f"RopeScaling.{name} is not used by kind={self.kind!r}; leave it at its default")
        if not (is_positive_finite(self.factor) and self.factor >= 1):
            raise ValueError(f"RopeScaling.factor must be a finite number >= 1, got {self.factor!r}")
        if "original_max_len" in _KIND_FIELDS[self.kind]:
            if self.original_max_len is None:
                raise ValueError(f"RopeScaling.original_max_len (the trained context length) is required by "
                                 f"kind={self.kind!r}")
            check_int("RopeScaling.original_max_len", self.original_max_len)
        self._check_options()

    def __repr__(self) -> str:  # the fields the kind reads, in order
        read = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name in _KIND_FIELDS[self.kind]]
        return f"RopeScaling({', '.join([repr(self.kind), f'factor={self.factor!r}', *read])})"

    def _check_options(self) -> None:
        """The kind-specific fields: numbers in range, longrope's factor lists."""
        for name in ("beta_fast", "beta_slow", "low_freq_factor", "high_freq_factor"):
            if not is_positive_finite(getattr(self, name)):
                raise ValueError(f"RopeScaling.{name} must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("attention_factor", "mscale", "mscale_all_dim"):
            value = getattr(self, name)
            if value is not None and not is_positive_finite(value):
                raise ValueError(f"RopeScaling.{name} must be None or a finite number > 0, got {value!r}")
        check_bool("RopeScaling.truncate", self.truncate)
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"RopeScaling.high_freq_factor must be > low_freq_factor={self.low_freq_factor}, "
                             f"got {self.high_freq_factor}")
        if self.kind == "longrope":
            for name in ("short_factor", "long_factor"):
                values = getattr(self, name)
                if not values or not all(is_positive_finite(v) for v in values):
                    raise ValueError(f"RopeScaling.{name} must be a non-empty tuple of finite numbers > 0, "
                                     f"got {values!r}")
            if len(self.short_factor) != len(self.long_factor):
                raise ValueError(f"RopeScaling.long_factor must have as many entries as short_factor "
                                 f"({len(self.short_factor)}), got {len(self.long_factor)}")


def _plain_frequencies(dim: int, base: float) -> Tensor:
    """1 / base^(2i/dim), (dim/2,) float64, in transformers' order of operations: float64 results agree bitwise."""
    return 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def _ntk_base(dim: int, base: float, factor: float) -> float:
    return base * factor ** (dim / (dim - 2))


def _dynamic_frequencies(dim: int, base: float, s: RopeScaling, seq_len: float | None) -> Tensor:
    """NTK with the factor scaled to the longest input: factor · seq_len / trained - (factor - 1)."""
    trained = s.original_max_len
    assert trained is not None  # RopeScaling requires it for this kind
    longest = trained if seq_len is None else max(seq_len, trained)
    return _plain_frequencies(dim, _ntk_base(dim, base, s.factor * longest / trained - (s.factor - 1)))


def _yarn_frequencies(dim: int, base: float, s: RopeScaling) -> Tensor:
    """Peng et al. 2023, as transformers' ``_compute_yarn_parameters``."""
    trained = s.original_max_len
    assert trained is not None  # RopeScaling requires it for this kind

    def dimension(turns: float) -> float:  # the (fractional) dimension whose frequency turns `turns` times
        return dim * math.log(trained / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = dimension(s.beta_fast), dimension(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a ramp of zero width
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)  # (dim/2,)
    wavelengths = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,) / 2π
    kept = 1 - ramp  # the share of each frequency left as trained
    return 1.0 / (s.factor * wavelengths) * (1 - kept) + 1.0 / wavelengths * kept


def _llama3_frequencies(dim: int, base: float, s: RopeScaling) -> Tensor:
    """Llama 3.1's rule, as transformers' ``_compute_llama3_parameters``."""
    trained = s.original_max_len
    assert trained is not None  # RopeScaling requires it for this kind
    inv_freq = _plain_frequencies(dim, base)
    wavelength = 2 * math.pi / inv_freq
    long_wavelength, short_wavelength = trained / s.low_freq_factor, trained / s.high_freq_factor
    scaled = torch.where(wavelength > long_wavelength, inv_freq / s.factor, inv_freq)
    smooth = (trained / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelength < short_wavelength) * ~(wavelength > long_wavelength)
    return torch.where(medium, smoothed, scaled)


def _attention_factor(s: RopeScaling) -> float:
    """What yarn and longrope multiply cos and sin by (1 for the other kinds), defaults as in transformers."""
    if s.kind not in ("yarn", "longrope"):
        return 1.0
    if s.attention_factor is not None:
        return float(s.attention_factor)
    if s.kind == "yarn":
        def mscale(scale: float, m: float = 1.0) -> float:  # YaRN's Eq. 21
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if s.mscale and s.mscale_all_dim:
            return float(mscale(s.factor, s.mscale) / mscale(s.factor, s.mscale_all_dim))
        return mscale(s.factor)
    assert s.original_max_len is not None  # RopeScaling requires it for this kind
    return 1.0 if s.factor <= 1 else math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_len))


def rope_frequencies(dim: int, base: float, scaling: RopeScaling | None = None,
                     seq_len: float | None = None) -> tuple[Tensor, float]:
    """RoPE's inverse frequencies, (dim/2,) float64, and the factor cos and sin are multiplied by, for a rotary
    dimension ``dim``: what transformers' ``ROPE_INIT_FUNCTIONS[rope_type](config, seq_len=...)`` returns.

    ``seq_len`` is the longest input (max position + 1), read by "dynamic" and "longrope" only; None = the
    trained length.
    """
    if scaling is None:
        return _plain_frequencies(dim, base), 1.0
    kind, factor = scaling.kind, scaling.factor
    if kind == "linear":
        inv_freq = _plain_frequencies(dim, base) / factor
    elif kind == "ntk":
        inv_freq = _plain_frequencies(dim, _ntk_base(dim, base, factor))
    elif kind == "dynamic":
        inv_freq = _dynamic_frequencies(dim, base, scaling, seq_len)
    elif kind == "yarn":
        inv_freq = _yarn_frequencies(dim, base, scaling)
    elif kind == "llama3":
        inv_freq = _llama3_frequencies(dim, base, scaling)
    else:  # longrope
        assert scaling.original_max_len is not None  # RopeScaling requires it for this kind
        long = seq_len is not None and seq_len > scaling.original_max_len
        divisors = torch.tensor(scaling.long_factor if long else scaling.short_factor, dtype=torch.float64)
        inv_freq = 1.0 / (divisors * base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return inv_freq, _attention_factor(scaling)


class RotaryEmbedding(RelativePositions):
    """RoPE (Su et al. 2021), half-split layout as in GPT-NeoX and LLaMA: q·k after rotation depends only
    on the positions' difference. Equals transformers' rotary embedding + ``apply_rotary_pos_emb`` for every
    ``RopeScaling`` kind (Phi-3's for partial rotary), computed in float64 and cast.

    Args:
        head_dim: even size of each head.
        base: frequency base θ.
        scaling: None, a :class:`RopeScaling`, or the shorthands ``"linear"`` / ``"ntk"`` with ``factor``.
        factor: the context extension factor of the shorthands ``"linear"`` and ``"ntk"``.
        rotary_dim: partial rotary (GPT-NeoX, Phi): only the first ``rotary_dim`` (even, <= head_dim) features
            of each head rotate, half-split among themselves; the rest pass unchanged. Default head_dim.

    Each ``rotate`` call picks its frequencies from L = max(position_ids) + 1 alone: ``"dynamic"`` uses the trained
    ones while L <= original_max_len and frequencies grown for L beyond; ``"longrope"`` uses ``long_factor`` when
    L > original_max_len, else ``short_factor``. Keys already in a KV cache keep the rotation they were given.
    Decoding therefore gives what transformers' ``dynamic_rope_update`` gives (its positions only grow there),
    while a forward never depends on the calls before it (transformers keeps the longest L it has seen: a short
    input after a long one is rotated with the long input's frequencies).

        >>> rope = RotaryEmbedding(96, 10000.0, RopeScaling("longrope", 32.0, original_max_len=4096,
        ...                        short_factor=(1.0,) * 24, long_factor=(4.0,) * 24), rotary_dim=48)
        >>> q, k = torch.randn(1, 8, 5000, 96), torch.randn(1, 2, 5000, 96)  # (B, H, N, D)
        >>> q, k = rope.rotate(torch.arange(5000)[None], q, k)  # long_factor: 5000 > 4096; features 48.. unchanged
    """

    def __init__(self, head_dim: int, base: float = 10000.0,
                 scaling: RopeScaling | Literal["linear", "ntk"] | None = None, factor: float = 1.0, *,
                 rotary_dim: int | None = None):
        super().__init__()
        check_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim must be a positive even int for RoPE, got {head_dim}")
        if not is_positive_finite(base):
            raise ValueError(f"base must be a finite number > 0, got {base!r}")
        rotary_dim = head_dim if rotary_dim is None else check_int("rotary_dim", rotary_dim)
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim must be an even int <= head_dim={head_dim}, got {rotary_dim}")
        self.head_dim, self.rotary_dim, self.base = head_dim, rotary_dim, base
        self.scaling = _scaling(scaling, factor)
        _check_fits(self.scaling, rotary_dim, base)
        self.factor = self.scaling.factor if self.scaling is not None else 1.0
        # The frequency sets in use: "trained" (also longrope's short set), "long" (longrope), or the longest input
        # L (dynamic, grown past the trained length: new frequencies at every new L, so no table is kept for it).
        self._trained = rope_frequencies(rotary_dim, base, self.scaling)
        self._set: str | float = "trained"
        self._frequencies, self._scale = self._trained
        # cos and sin (already times the attention factor) of positions 0 .. P-1 per (frequency set, dtype,
        # device), computed in float64 and grown by doubling: every decoding step looks positions up instead of
        # recomputing float64 trigonometry. A plain attribute, not a buffer, so that module.half() cannot round it.
        self._tables: dict[tuple[str, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        # the last position_ids rotated by (and its version), their range, and their cos/sin rows by (set, dtype)
        self._memo: tuple[Tensor, int, float, float, dict[tuple[str | float, torch.dtype], tuple[Tensor, Tensor]]] \
            | None = None

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}, scaling={self.scaling}"

    def angles(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin, each (..., rotary_dim) float64 and times the attention factor, for positions (...), with
        the frequencies in use now."""
        freqs = position_ids.to(torch.float64)[..., None] * self._frequencies.to(position_ids.device)  # (..., R/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (..., R)
        return emb.cos() * self._scale, emb.sin() * self._scale

    def _follow(self, longest: float) -> None:
        """Pick the frequency set for a call whose longest position is ``longest - 1`` (transformers'
        ``dynamic_rope_update``)."""
        s = self.scaling
        if s is None or s.kind not in ("dynamic", "longrope"):
            return
        assert s.original_max_len is not None  # RopeScaling requires it for these kinds
        trained = s.original_max_len
        if s.kind == "longrope":
            chosen: str | float = "long" if longest > trained else "trained"
        else:  # dynamic: grown for this call's longest position only
            chosen = longest if longest > trained else "trained"
        if chosen != self._set:
            self._set = chosen
            self._frequencies, self._scale = self._trained if chosen == "trained" else \
                rope_frequencies(self.rotary_dim, self.base, s, trained + 1 if chosen == "long" else longest)

    def _lookup(self, position_ids: Tensor, dtype: torch.dtype, low: float, high: float) -> tuple[Tensor, Tensor]:
        """cos and sin (B, 1, N, R) in ``dtype`` for positions (B, N) in [low, high], from the cached table."""
        if position_ids.dtype.is_floating_point or low < 0 or not isinstance(self._set, str):
            cos, sin = self.angles(position_ids)  # positions or frequencies the table does not hold
            return cos[:, None].to(dtype), sin[:, None].to(dtype)
        key = (self._set, dtype, position_ids.device)
        needed = int(high) + 1
        if key not in self._tables or self._tables[key][0].shape[0] < needed:
            size = max(needed, 2 * self._tables[key][0].shape[0] if key in self._tables else 256)
            cos, sin = self.angles(torch.arange(size, device=position_ids.device))  # (P, R) float64
            self._tables[key] = cos.to(dtype), sin.to(dtype)
        cos, sin = self._tables[key]
        return cos[position_ids][:, None], sin[position_ids][:, None]  # (B, 1, N, R)

    def rows(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and signed sin, each (B, 1, N, rotary_dim) in ``dtype``, for positions (B, N):
        ``x · cos + [x2, x1] · sin`` rotates x = [x1, x2] (rotate_half's sign moved onto sin's first half). Every
        layer of a model rotates by the same position_ids tensor: its range and rows are looked up once per forward,
        not once per layer."""
        memo = self._memo
        version = -1 if position_ids.is_inference() else position_ids._version  # inference tensors keep none
        if memo is None or memo[0] is not position_ids or memo[1] != version:
            low, high = (float(v) for v in torch.aminmax(position_ids)) if position_ids.numel() else (0.0, 0.0)
            memo = self._memo = (position_ids, version, low, high, {})
        _, _, low, high, rows = memo
        if position_ids.numel():
            self._follow(high + 1)
        key = (self._set, dtype)
        if key not in rows:
            half = self.rotary_dim // 2
            cos, sin = self._lookup(position_ids, dtype, low, high)
            rows[key] = cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return rows[key]

    def rotate(self, position_ids: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
        for x in xs:
            if x.shape[-1] != self.head_dim:
                raise ValueError(f"RoPE was built for head_dim={self.head_dim}, got heads of size {x.shape[-1]}")
        out = []
        r, half = self.rotary_dim, self.rotary_dim // 2
        rows = {dtype: self.rows(position_ids, dtype) for dtype in {x.dtype for x in xs}}  # q and k share theirs
        for x in xs:
            cos, signed_sin = rows[x.dtype]
            turning = x[..., :r]  # (B, H, N, R)
            # rotate_half(x) · sin = [x2, x1] · [-sin, sin] (the sign moved onto sin: the same products, bitwise)
            swapped = torch.cat((turning[..., half:], turning[..., :half]), dim=-1)
            y = turning * cos + swapped * signed_sin
            out.append(y if r == self.head_dim else torch.cat((y, x[..., r:]), dim=-1))  # (B, H, N, D)
        return tuple(out)


def _scaling(scaling: RopeScaling | str | None, factor: float) -> RopeScaling | None:
    """RotaryEmbedding's ``scaling`` and ``factor`` as one RopeScaling (None: no scaling)."""
    if isinstance(scaling, RopeScaling):
        if factor != 1.0:
            raise ValueError(f"factor={factor} goes with scaling='linear' or 'ntk'; a RopeScaling carries its own "
                             f"factor (RopeScaling.factor={scaling.factor})")
        return scaling
    if scaling not in (None, "linear", "ntk"):
        raise ValueError(f"scaling must be None, a RopeScaling, 'linear' or 'ntk', got {scaling!r}")
    if not (is_positive_finite(factor) and factor >= 1.0):
        raise ValueError(f"factor must be >= 1, got {factor}")
    return None if scaling is None else RopeScaling("linear" if scaling == "linear" else "ntk", factor)


def _check_fits(s: RopeScaling | None, rotary_dim: int, base: float) -> None:
    """The checks of a RopeScaling that need the rotary dimension or the base."""
    if s is None:
        return
    if s.kind in ("ntk", "dynamic") and rotary_dim < 4:
        raise ValueError(f"RopeScaling(kind={s.kind!r}) needs rotary_dim >= 4 (its base grows as "
                         f"factor^(d / (d - 2))), got {rotary_dim}")
    if s.kind == "yarn" and base == 1:
        raise ValueError("RopeScaling(kind='yarn') needs base != 1 (its ramp divides by log(base))")
    if s.kind == "longrope" and len(s.short_factor) != rotary_dim // 2:
        raise ValueError(f"RopeScaling.short_factor and long_factor need rotary_dim / 2 = {rotary_dim // 2} entries "
                         f"(one per frequency), got {len(s.short_factor)}")


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
           "RopeScaling", "RopeKind", "rope_frequencies",
           "ALiBiPositions", "T5RelativeBias", "t5_bucket", "default_position_ids", "position_ids_from_mask"]
