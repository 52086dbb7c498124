"""Selective SSM: the chunked scan against the sequential reference, forward == prefill == step, gradients,
errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnkit.nn.ssm import SelectiveSSM, segsum, selective_scan_chunked, selective_scan_reference
from helpers import assert_close, assert_raises_naming, magnitude, max_abs_error


def scan_inputs(batch: int, length: int, inner: int, state: int, *, seed: int, slow_decay: bool = False,
                dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """u, Δ, A, B, C, h0 as a Mamba layer makes them: Δ = softplus(·) > 0, A = -(1..S) (S4D-real) or, with
    ``slow_decay``, A in (-0.05, 0) so that the state remembers across many chunks."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, inner, generator=g, dtype=torch.float64)
    delta = F.softplus(torch.randn(batch, length, inner, generator=g, dtype=torch.float64) - 1.0)
    if slow_decay:
        A = -0.05 * torch.rand(inner, state, generator=g, dtype=torch.float64)
    else:
        A = -torch.arange(1, state + 1, dtype=torch.float64).expand(inner, state).clone()
    B = torch.randn(batch, length, state, generator=g, dtype=torch.float64)
    C = torch.randn(batch, length, state, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, inner, state, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (u, delta, A, B, C, h0))


CASES = [  # (length, chunk_size): N not a multiple of the chunk, N < chunk, N == chunk, one-step chunks
    (37, 8), (5, 8), (16, 16), (9, 1), (64, 13)]


@pytest.mark.parametrize("slow_decay", [False, True], ids=["s4d", "slow"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("length, chunk", CASES, ids=[f"N{n}-chunk{c}" for n, c in CASES])
def test_chunked_matches_reference_float64(length, chunk, with_h0, slow_decay):
    u, delta, A, B, C, h0 = scan_inputs(2, length, 6, 5, seed=length + chunk, slow_decay=slow_decay)
    h0 = h0 if with_h0 else None
    y, h = selective_scan_chunked(u, delta, A, B, C, h0, chunk_size=chunk)
    y_ref, h_ref = selective_scan_reference(u, delta, A, B, C, h0)
    assert_close(y, y_ref, atol=1e-10 * magnitude(y_ref), what="y")
    assert_close(h, h_ref, atol=1e-10 * magnitude(h_ref), what="final state")


@pytest.mark.parametrize("length, chunk", [(37, 8), (5, 8), (200, 64)])
def test_chunked_float32_within_baseline(length, chunk):
    """float32 chunked scan vs the float64 reference: at most 2x the float32 reference loop's own error plus
    a 1e-5 relative floor (STYLE.md: tolerances from a baseline)."""
    inputs64 = scan_inputs(2, length, 6, 5, seed=7, slow_decay=True)
    inputs32 = tuple(t.float() for t in inputs64)
    y_ref, _ = selective_scan_reference(*inputs64)
    y_naive, _ = selective_scan_reference(*inputs32)
    y, _ = selective_scan_chunked(*inputs32, chunk_size=chunk)
    assert y.dtype == torch.float32
    atol = 2 * max_abs_error(y_naive, y_ref) + 1e-5 * magnitude(y_ref)
    assert_close(y, y_ref, atol=atol, what="float32 chunked scan")


def test_segsum_is_stable_for_long_chunks():
    """exp(segsum) must match the product of decays even when the cumulative log-decay reaches -1e4, where
    cumsum differences would be off by ~1e-12 * 1e4 and exp(-cumsum) would overflow."""
    a = -torch.rand(500, dtype=torch.float64) * 40
    decay = torch.exp(segsum(a))  # (L, L)
    assert torch.isfinite(decay).all() and (decay <= 1).all()
    assert torch.equal(decay.triu(1), torch.zeros_like(decay))
    t, s = 7, 3
    assert decay[t, s].item() == pytest.approx(torch.exp(a[s + 1:t + 1].sum()).item(), rel=1e-13)
    assert torch.all(decay.diagonal() == 1)


def test_chunked_does_not_depend_on_chunk_size():
    inputs = scan_inputs(1, 50, 4, 3, seed=3, slow_decay=True)
    outputs = [selective_scan_chunked(*inputs, chunk_size=c)[0] for c in (1, 7, 50, 128)]
    for c, y in zip((7, 50, 128), outputs[1:]):
        assert_close(y, outputs[0], atol=1e-12, what=f"chunk {c} vs chunk 1")


def test_gradcheck_chunked_scan():
    u, delta, A, B, C, h0 = (t.requires_grad_() for t in scan_inputs(1, 5, 2, 3, seed=11, slow_decay=True))
    assert torch.autograd.gradcheck(lambda *args: selective_scan_chunked(*args, chunk_size=2),
                                    (u, delta, A, B, C, h0), eps=1e-6, atol=1e-8)


def test_gradients_match_reference():
    inputs = [t.requires_grad_() for t in scan_inputs(2, 19, 4, 3, seed=12)]
    y, h = selective_scan_chunked(*inputs, chunk_size=6)
    grads = torch.autograd.grad((y.sin().sum() + h.square().sum()), inputs)
    y_ref, h_ref = selective_scan_reference(*inputs)
    grads_ref = torch.autograd.grad((y_ref.sin().sum() + h_ref.square().sum()), inputs)
    for name, g, g_ref in zip(("u", "delta", "A", "B", "C", "h0"), grads, grads_ref):
        assert torch.isfinite(g).all(), name
        assert_close(g, g_ref, atol=1e-10 * magnitude(g_ref), what=f"grad {name}")


def test_empty_sequence_returns_h0():
    u, delta, A, B, C, h0 = scan_inputs(2, 0, 3, 4, seed=0)
    for scan in (selective_scan_reference, lambda *a: selective_scan_chunked(*a, chunk_size=4)):
        y, h = scan(u, delta, A, B, C, h0)
        assert y.shape == (2, 0, 3) and torch.equal(h, h0)


def make_ssm(seed: int = 0, **kwargs) -> SelectiveSSM:
    torch.manual_seed(seed)
    options = {"state_dim": 5, "expand": 2, "conv_kernel": 4, "chunk_size": 8} | kwargs
    return SelectiveSSM(6, **options).double()


@pytest.mark.parametrize("conv_kernel", [1, 4])
def test_forward_matches_token_by_token_steps(conv_kernel):
    ssm = make_ssm(conv_kernel=conv_kernel)
    x = torch.randn(2, 21, 6, dtype=torch.float64)
    y = ssm(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        y_t, state = ssm.step(x[:, t], state)
        steps.append(y_t)
    assert_close(y, torch.stack(steps, 1), atol=1e-12, what="forward vs step")


def test_forward_matches_module_built_on_reference_scan():
    """Recompute the block by hand around the sequential reference scan (Mamba's data flow)."""
    ssm = make_ssm(seed=1, chunk_size=4)
    x = torch.randn(3, 11, 6, dtype=torch.float64)
    xs, z = ssm.in_proj(x).chunk(2, -1)
    xs = F.silu(ssm.conv(F.pad(xs.transpose(1, 2), (ssm.conv_kernel - 1, 0))).transpose(1, 2))  # causal conv
    dt, B, C = ssm.x_proj(xs).split([ssm.dt_rank, 5, 5], -1)
    y, _ = selective_scan_reference(xs, F.softplus(ssm.dt_proj(dt)), -torch.exp(ssm.A_log), B, C)
    expected = ssm.out_proj((y + ssm.D * xs) * F.silu(z))
    assert_close(ssm(x), expected, atol=1e-12, what="SelectiveSSM vs hand-built block")


def test_prefix_then_steps_continue_the_sequence():
    ssm = make_ssm(seed=2)
    x = torch.randn(2, 30, 6, dtype=torch.float64)
    full = ssm(x)
    prefix = 19
    y_prefix, state = ssm.prefill(x[:, :prefix])
    assert_close(y_prefix, full[:, :prefix], atol=1e-12, what="prefill outputs")
    stepped = None
    for t in range(prefix):
        _, stepped = ssm.step(x[:, t], stepped)
    assert_close(state.conv, stepped.conv, atol=1e-12, what="conv state: prefill vs steps")
    assert_close(state.ssm, stepped.ssm, atol=1e-12, what="ssm state: prefill vs steps")
    for t in range(prefix, x.shape[1]):
        y_t, stepped = ssm.step(x[:, t], stepped)
        assert_close(y_t, full[:, t], atol=1e-12, what=f"step {t} after prefix")
    y_rest, _ = ssm.prefill(x[:, prefix:], state)  # a second prefill continues as well
    assert_close(y_rest, full[:, prefix:], atol=1e-12, what="prefill continued from state")


def test_is_causal():
    ssm = make_ssm(seed=3)
    x = torch.randn(1, 16, 6, dtype=torch.float64)
    changed = x.clone()
    changed[:, 10:] += 1.0
    assert torch.equal(ssm(x)[:, :10], ssm(changed)[:, :10])


def test_gradients_reach_every_parameter():
    torch.manual_seed(4)
    ssm = SelectiveSSM(8, state_dim=4, chunk_size=4)
    x = torch.randn(2, 10, 8, requires_grad=True)
    ssm(x).square().sum().backward()
    for name, p in ssm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_gradcheck_tiny_module():
    ssm = SelectiveSSM(3, state_dim=2, expand=1, conv_kernel=2, chunk_size=3).double()
    x = torch.randn(1, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ssm, (x,), eps=1e-6, atol=1e-8)


def test_initialisation_and_defaults():
    ssm = SelectiveSSM(40)
    assert (ssm.inner, ssm.state_dim, ssm.dt_rank, ssm.chunk_size) == (80, 16, 3, 16)
    assert torch.allclose(-torch.exp(ssm.A_log[0]), -torch.arange(1.0, 17.0))
    assert torch.equal(ssm.D, torch.ones(80))
    dt = F.softplus(ssm.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6


def test_bfloat16_runs_scan_in_float32():
    ssm = make_ssm(seed=5).float()
    x = torch.randn(2, 12, 6)
    expected = ssm(x)
    y, state = ssm.to(torch.bfloat16).prefill(x.bfloat16())
    assert y.dtype == torch.bfloat16 and state.ssm.dtype == torch.float32
    assert_close(y, expected, atol=5e-2 * magnitude(expected), what="bf16 block")


def test_empty_sequence():
    ssm = make_ssm()
    y, state = ssm.prefill(torch.zeros(2, 0, 6, dtype=torch.float64))
    assert y.shape == (2, 0, 6) and torch.equal(state.ssm, torch.zeros(2, 12, 5, dtype=torch.float64))


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"dim": 0}, ValueError, ["dim", "0"]),
    ({"dim": 8, "state_dim": 0}, ValueError, ["state_dim", "0"]),
    ({"dim": 8, "chunk_size": -2}, ValueError, ["chunk_size", "-2"]),
    ({"dim": 8, "chunk_size": 4.0}, TypeError, ["chunk_size", "4.0"]),
    ({"dim": 8, "expand": 0}, ValueError, ["expand", "0"]),
    ({"dim": 8, "conv_kernel": 0}, ValueError, ["conv_kernel", "0"]),
    ({"dim": 8, "dt_rank": 0}, ValueError, ["dt_rank", "0"]),
], ids=["dim0", "state0", "chunk-neg", "chunk-float", "expand0", "conv0", "dtrank0"])
def test_constructor_errors(kwargs, exc, words):
    assert_raises_naming(exc, words, SelectiveSSM, **kwargs)


def test_input_shape_errors():
    ssm = make_ssm()
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, dim\) with dim=6, got \(2, 5, 7\)"):
        ssm(torch.randn(2, 5, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, dim\).*got \(5, 6\)"):
        ssm(torch.randn(5, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, dim\).*got \(2, 1, 6\)"):
        ssm.step(torch.randn(2, 1, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        ssm(torch.ones(1, 3, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"state must have conv.*\(3, 12, 3\).*got conv \(2, 12, 3\)"):
        ssm.step(torch.randn(3, 6, dtype=torch.float64), ssm.initial_state(2))
    with pytest.raises(TypeError, match="state must be an SSMState"):
        ssm.step(torch.randn(3, 6, dtype=torch.float64), (None, None))


def test_scan_shape_errors():
    u, delta, A, B, C, h0 = scan_inputs(2, 7, 3, 4, seed=0)
    with pytest.raises(ValueError, match=r"delta must have u's shape"):
        selective_scan_chunked(u, delta[:, :5], A, B, C)
    with pytest.raises(ValueError, match=r"A must have shape \(D=3, S\), got \(4, 4\)"):
        selective_scan_reference(u, delta, torch.zeros(4, 4), B, C)
    with pytest.raises(ValueError, match=r"C must have shape \(B, N, S\)=\(2, 7, 4\), got \(2, 7, 5\)"):
        selective_scan_chunked(u, delta, A, B, torch.zeros(2, 7, 5))
    with pytest.raises(ValueError, match=r"h0 must have shape"):
        selective_scan_chunked(u, delta, A, B, C, h0[:1])
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        selective_scan_chunked(u, delta, A, B, C, chunk_size=0)
