"""Selective state-space block (Mamba, Gu & Dao 2023) in pure PyTorch.

The selective scan, per batch b, channel d and state n, with input-dependent Δ, B, C::

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t        (A < 0, so exp(Δ_t A) is a decay in (0, 1])
    y_t = C_t · h_t                                  (summed over the state)

``selective_scan_reference`` is that loop, the definition. ``selective_scan_chunked`` computes the same
thing in parallel inside chunks of ``chunk_size`` steps and carries h between chunks, so its memory is
bounded by the chunk, never N × N. ``SelectiveSSM`` is the block around it (in_proj -> causal depthwise
conv -> scan -> gate -> out_proj), with ``step`` for one-token decoding.

Layout: sequences are (B, N, ·) as elsewhere in attnkit (Mamba's reference uses (B, D, N)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.checks import check_int
from .linear import Linear

_DT_MIN, _DT_MAX, _DT_FLOOR = 1e-3, 1e-1, 1e-4  # Mamba's Δ initialisation range (dt_min, dt_max, dt_init_floor)


def _check_scan_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must have shape (B, N, D), got {tuple(u.shape)}")
    batch, length, inner = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape (B, N, D)={tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != inner:
        raise ValueError(f"A must have shape (D={inner}, S), got {tuple(A.shape)}")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, length, state):
            raise ValueError(f"{name} must have shape (B, N, S)={(batch, length, state)}, got {tuple(t.shape)}")
    if h0 is not None and h0.shape != (batch, inner, state):
        raise ValueError(f"h0 must have shape (B, D, S)={(batch, inner, state)}, got {tuple(h0.shape)}")


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The selective scan as a loop over time (the definition; runs in the inputs' dtype, float64 included).

    Args:
        u: (B, N, D) input. delta: (B, N, D) step sizes Δ > 0 (already through softplus).
        A: (D, S) state matrix, negative. B, C: (B, N, S) input and output projections of the state.
        h0: (B, D, S) initial state; None = zeros.
    Returns:
        y (B, N, D) and the final state h_N (B, D, S). No D-skip and no gate: the block adds those.

    >>> y, h = selective_scan_reference(torch.ones(1, 3, 2), torch.full((1, 3, 2), 0.5), -torch.ones(2, 1),
    ...                                 torch.ones(1, 3, 1), torch.ones(1, 3, 1))
    >>> y.shape, h.shape
    (torch.Size([1, 3, 2]), torch.Size([1, 2, 1]))
    """
    _check_scan_inputs(u, delta, A, B, C, h0)
    batch, length, inner = u.shape
    h = u.new_zeros(batch, inner, A.shape[1]) if h0 is None else h0
    ys = []
    for t in range(length):
        h, y_t = scan_step(h, delta[:, t], u[:, t], A, B[:, t], C[:, t])
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(batch, 0, inner)  # (B, N, D)
    return y, h


def scan_step(h: Tensor, delta_t: Tensor, u_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the recurrence: h (B, D, S) -> exp(delta_t A) h + delta_t u_t B_t, and y_t = h C_t (B, D)."""
    h = torch.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * B_t[:, None, :]  # (B, D, S)
    return h, torch.einsum("bds,bs->bd", h, C_t)


def segsum(a: Tensor) -> Tensor:
    """Segment sums of log-decays: a (..., L) -> (..., L, L) with [t, s] = a_{s+1} + ... + a_t for s <= t
    (0 on the diagonal) and -inf above it, so that exp() gives the causal decay matrix.

    Built by a masked cumsum rather than cumsum(a)[t] - cumsum(a)[s], which would cancel catastrophically
    once the running sum grows (Mamba-2's ``ssd_minimal``).

    >>> segsum(torch.tensor([1.0, 2.0, 3.0]))
    tensor([[0., -inf, -inf],
            [2., 0., -inf],
            [5., 3., 0.]])
    """
    length = a.shape[-1]
    grid = a[..., None].expand(*a.shape, length)  # (..., L, L): [i, s] = a_i
    ones = torch.ones(length, length, dtype=torch.bool, device=a.device)
    sums = torch.cumsum(grid.masked_fill(~ones.tril(-1), 0.0), dim=-2)  # (..., L, L): sum_{s < i <= t} a_i
    return sums.masked_fill(~ones.tril(0), float("-inf"))  # s > t: no path from s to t


def _scan_chunk(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk in parallel: u, delta (B, L, D); A (D, S); B, C (B, L, S); h0 (B, D, S) -> y (B, L, D), h_L."""
    log_decay = (delta[..., None] * A).permute(0, 2, 3, 1)  # (B, D, S, L): Δ_t A, each <= 0
    decay = torch.exp(segsum(log_decay))  # (B, D, S, L, L): [t, s] = prod_{s<i<=t} exp(Δ_i A), 0 for s > t
    inputs = (delta * u)[..., None] * B[:, :, None, :]  # (B, L, D, S): Δ_s B_s u_s
    h = torch.einsum("bdsti,bids->btds", decay, inputs)  # (B, L, D, S): state from this chunk's inputs
    from_start = torch.exp(torch.cumsum(log_decay, dim=-1))  # (B, D, S, L): decay of h0 up to step t
    h = h + (from_start * h0[..., None]).permute(0, 3, 1, 2)  # (B, L, D, S)
    y = torch.einsum("btds,bts->btd", h, C)  # (B, L, D)
    return y, h[:, -1]


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None,
                           *, chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """The selective scan, parallel within chunks of ``chunk_size`` steps, sequential across chunks.

    Same arguments and results as ``selective_scan_reference``. Inside a chunk of L steps the decays between
    every pair of steps form an L × L lower-triangular matrix per (batch, channel, state) — exp of
    ``segsum`` of Δ·A, every entry <= 1, so nothing overflows however long the chunk — which multiplies the
    chunk's inputs; the incoming state is decayed by the running product. Peak memory is
    O(B · D · S · chunk_size²) for one chunk, whatever N is; lower chunk_size for wide layers.

    >>> u, dt = torch.randn(2, 10, 3), torch.rand(2, 10, 3)
    >>> A, B, C = -torch.rand(3, 4), torch.randn(2, 10, 4), torch.randn(2, 10, 4)
    >>> y, h = selective_scan_chunked(u, dt, A, B, C, chunk_size=4)
    >>> torch.allclose(y, selective_scan_reference(u, dt, A, B, C)[0], atol=1e-5)
    True
    """
    check_int("chunk_size", chunk_size)
    _check_scan_inputs(u, delta, A, B, C, h0)
    batch, length, inner = u.shape
    h = u.new_zeros(batch, inner, A.shape[1]) if h0 is None else h0
    ys = []
    for start in range(0, length, chunk_size):
        part = slice(start, start + chunk_size)
        y, h = _scan_chunk(u[:, part], delta[:, part], A, B[:, part], C[:, part], h)
        ys.append(y)
    y = torch.cat(ys, dim=1) if ys else u.new_zeros(batch, 0, inner)  # (B, N, D)
    return y, h


@dataclass
class SSMState:
    """Decoding state of a ``SelectiveSSM``: what ``step`` needs to continue a sequence."""

    conv: Tensor  # (B, inner, conv_kernel - 1): the last pre-convolution inputs, oldest first
    ssm: Tensor  # (B, inner, state_dim): the recurrent state h


def _check_input(x: object, name: str, shape: str, ndim: int, dim: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape {shape}, got {type(x).__name__}")
    if x.dim() != ndim or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape {shape} with dim={dim}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _scan_dtype(dtype: torch.dtype) -> torch.dtype:
    """The scan runs in at least float32: a half-precision state would lose the decays."""
    return torch.promote_types(dtype, torch.float32)


class SelectiveSSM(nn.Module):
    """Mamba block: selective state-space mixing along the sequence, causal, (B, N, dim) -> (B, N, dim).

    Args:
        dim: model width.
        state_dim: S, the state size per channel (Mamba's d_state).
        expand: inner width = expand * dim.
        conv_kernel: width of the causal depthwise convolution before the scan (Mamba's d_conv).
        dt_rank: rank of the Δ projection; None = ceil(dim / 16).
        chunk_size: steps the parallel scan processes at once; memory grows with its square
            (see ``selective_scan_chunked``), the result does not depend on it.

    Data flow, inner = expand * dim::

        x, z  = in_proj(input).chunk(2)                 # (B, N, inner) each
        x     = silu(causal_depthwise_conv(x))          # (B, N, inner)
        dt, B, C = x_proj(x).split(dt_rank, S, S)       # Δ = softplus(dt_proj(dt)): (B, N, inner)
        y     = scan(x, Δ, A = -exp(A_log), B, C) + D * x
        out   = out_proj(y * silu(z))                   # (B, N, dim)

    ``forward`` scans whole sequences; ``prefill`` does the same from a given ``SSMState`` and returns the
    final one; ``step`` advances one token for decoding. All three compute the same function.

    >>> ssm = SelectiveSSM(dim=8, state_dim=4, chunk_size=16)
    >>> ssm(torch.randn(2, 20, 8)).shape
    torch.Size([2, 20, 8])
    >>> y, state = ssm.step(torch.randn(2, 8))  # state=None: the start of a sequence
    >>> y.shape, state.ssm.shape
    (torch.Size([2, 8]), torch.Size([2, 16, 4]))
    """

    def __init__(self, dim: int, state_dim: int = 16, *, expand: int = 2, conv_kernel: int = 4,
                 dt_rank: int | None = None, chunk_size: int = 16):
        super().__init__()
        for name, value in (("dim", dim), ("state_dim", state_dim), ("expand", expand),
                            ("conv_kernel", conv_kernel), ("chunk_size", chunk_size)):
            check_int(name, value)
        dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        check_int("dt_rank", dt_rank)
        self.dim, self.state_dim, self.inner = dim, state_dim, expand * dim
        self.conv_kernel, self.dt_rank, self.chunk_size = conv_kernel, dt_rank, chunk_size
        inner = self.inner
        self.in_proj = Linear(dim, 2 * inner, bias=False)
        # No padding here: the causal left context comes from the state (zeros at the start of a sequence).
        self.conv = nn.Conv1d(inner, inner, conv_kernel, groups=inner, bias=True)
        self.x_proj = Linear(inner, dt_rank + 2 * state_dim, bias=False)
        self.dt_proj = Linear(dt_rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(inner, state_dim))  # A = -exp(A_log): (inner, S)
        self.D = nn.Parameter(torch.empty(inner))  # skip connection around the scan
        self.out_proj = Linear(inner, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mamba's initialisation: S4D-real A = -(1..S), D = 1, Δ log-uniform in [1e-3, 1e-1] at init."""
        for layer in (self.in_proj, self.conv, self.x_proj, self.out_proj):
            layer.reset_parameters()
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        log_dt = torch.rand(self.inner) * (math.log(_DT_MAX) - math.log(_DT_MIN)) + math.log(_DT_MIN)
        dt = torch.exp(log_dt).clamp(min=_DT_FLOOR)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)
            self.A_log.copy_(torch.log(torch.arange(1, self.state_dim + 1, dtype=torch.float32)).expand_as(self.A_log))
            self.D.fill_(1.0)

    def initial_state(self, batch: int, *, dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None) -> SSMState:
        """Zeros, the state at the start of a sequence: conv (B, inner, conv_kernel - 1), ssm (B, inner, S)."""
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        device = self.in_proj.weight.device if device is None else device
        return SSMState(conv=torch.zeros(batch, self.inner, self.conv_kernel - 1, dtype=dtype, device=device),
                        ssm=torch.zeros(batch, self.inner, self.state_dim, dtype=_scan_dtype(dtype), device=device))

    def _check_state(self, state: object, batch: int) -> None:
        if not isinstance(state, SSMState):
            raise TypeError(f"state must be an SSMState or None, got {type(state).__name__}")
        conv, ssm = (batch, self.inner, self.conv_kernel - 1), (batch, self.inner, self.state_dim)
        if state.conv.shape != conv or state.ssm.shape != ssm:
            raise ValueError(f"state must have conv (B, inner, conv_kernel - 1)={conv} and ssm (B, inner, S)={ssm}, "
                             f"got conv {tuple(state.conv.shape)} and ssm {tuple(state.ssm.shape)}")

    def _selective_params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (..., inner) -> Δ (..., inner), B (..., S), C (..., S) and A (inner, S), in the scan dtype."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.state_dim, self.state_dim], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # (..., inner), > 0
        dtype = _scan_dtype(x.dtype)
        return delta.to(dtype), B.to(dtype), C.to(dtype), -torch.exp(self.A_log.to(dtype))

    def _start(self, x: Tensor, state: SSMState | None) -> SSMState:
        """The state to continue from: zeros for None (the start of a sequence), else ``state`` checked."""
        state = self.initial_state(x.shape[0], dtype=x.dtype, device=x.device) if state is None else state
        self._check_state(state, x.shape[0])
        return state

    def _conv_in(self, x: Tensor, state: SSMState) -> tuple[Tensor, Tensor, Tensor]:
        """in_proj, then the causal depthwise conv continued from ``state.conv``: x (B, N, dim) -> the scan's
        input silu(conv(x)) (B, N, inner), the gate z (B, N, inner) and the next conv state (B, inner, K - 1)."""
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, N, inner) each
        window = torch.cat([state.conv.to(xs.dtype), xs.transpose(1, 2)], dim=-1)  # (B, inner, K - 1 + N)
        xs = F.silu(F.conv1d(window, self.conv.weight, self.conv.bias, groups=self.inner)).transpose(1, 2)
        return xs, z, window[..., window.shape[-1] - (self.conv_kernel - 1):]

    def _gate_out(self, y: Tensor, u: Tensor, z: Tensor, dtype: torch.dtype) -> Tensor:
        """The D-skip around the scan, the silu(z) gate and out_proj: y, u (..., inner) in the scan dtype,
        z (..., inner) -> (..., dim) in ``dtype``."""
        y = (y + self.D.to(y.dtype) * u).to(dtype) * F.silu(z)  # (..., inner)
        return self.out_proj(y)

    def prefill(self, x: Tensor, state: SSMState | None = None) -> tuple[Tensor, SSMState]:
        """Run x (B, N, dim) on from ``state`` (None = start of sequence): (output (B, N, dim), final state).
        One token takes the plain recurrence (``step``), longer inputs the chunked scan."""
        _check_input(x, "x", "(B, N, dim)", 3, self.dim)
        if x.shape[1] == 1:
            y, state = self.step(x[:, 0], state)
            return y[:, None], state
        state = self._start(x, state)
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, self.dim), state
        xs, z, conv_state = self._conv_in(x, state)  # (B, N, inner), (B, N, inner), (B, inner, K - 1)
        delta, B, C, A = self._selective_params(xs)
        u = xs.to(delta.dtype)
        y, h = selective_scan_chunked(u, delta, A, B, C, state.ssm.to(delta.dtype), chunk_size=self.chunk_size)
        return self._gate_out(y, u, z, x.dtype), SSMState(conv=conv_state, ssm=h)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, N, dim) -> (B, N, dim), each sequence from a zero state."""
        return self.prefill(x)[0]

    def step(self, x_t: Tensor, state: SSMState | None = None) -> tuple[Tensor, SSMState]:
        """One decoding step by the plain recurrence: x_t (B, dim) -> (y_t (B, dim), next state)."""
        _check_input(x_t, "x_t", "(B, dim)", 2, self.dim)
        state = self._start(x_t, state)
        xs, z, conv_state = self._conv_in(x_t[:, None], state)  # (B, 1, inner), (B, 1, inner), (B, inner, K - 1)
        delta, B, C, A = self._selective_params(xs[:, 0])  # (B, inner), (B, S), (B, S), (inner, S)
        u = xs[:, 0].to(delta.dtype)
        h, y = scan_step(state.ssm.to(delta.dtype), delta, u, A, B, C)  # (B, inner, S), (B, inner)
        return self._gate_out(y, u, z[:, 0], x_t.dtype), SSMState(conv=conv_state, ssm=h)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, state_dim={self.state_dim}, inner={self.inner}, conv_kernel={self.conv_kernel}, "
                f"dt_rank={self.dt_rank}, chunk_size={self.chunk_size}")
