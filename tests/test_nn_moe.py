"""MoE: routing against a per-token float64 loop, the load-balancing loss, capacity drops, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.nn.moe import MoE, MoEStats, expert_capacity, load_balancing_loss, route
from helpers import assert_close, assert_raises_naming, fit


def reference_moe(moe: MoE, x: torch.Tensor, capacity: int | None = None) -> tuple[torch.Tensor, int]:
    """The definition, one token at a time in float64: softmax router, top-k, renormalised gates, each chosen
    expert run on its own, slots dropped in token order once an expert has ``capacity`` of them.
    Returns (output (..., D), number of dropped slots)."""
    p = {name: t.detach().to(torch.float64) for name, t in moe.named_parameters()}
    flat = x.detach().to(torch.float64).reshape(-1, moe.dim)
    out = torch.zeros_like(flat)
    used, dropped = [0] * moe.num_experts, 0
    for t, token in enumerate(flat):
        probs = torch.softmax(token @ p["router.weight"].T, -1)  # (E,)
        top, experts = torch.topk(probs, moe.top_k)
        for gate, e in zip(top / top.sum(), experts.tolist()):
            if capacity is not None and used[e] >= capacity:
                used[e] += 1
                dropped += 1
                continue
            used[e] += 1
            h = token @ p["w1"][e] + (p["b1"][e] if "b1" in p else 0)
            if moe.activation == "swiglu":
                h = F.silu(h) * (token @ p["w3"][e] + (p["b3"][e] if "b3" in p else 0))
            else:
                h = F.gelu(h) if moe.activation == "gelu" else F.relu(h)
            out[t] += gate * (h @ p["w2"][e] + (p["b2"][e] if "b2" in p else 0))
    return out.reshape(x.shape), dropped


def one_expert_router(moe: MoE, first: int, second: int | None = None) -> None:
    """Make every token whose feature 0 is 1 prefer expert ``first`` (then ``second``), whatever else it holds."""
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[first, 0] = 20.0
        if second is not None:
            moe.router.weight[second, 0] = 10.0


def tokens_with_feature0(*shape: int, dim: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(*shape, dim, generator=torch.Generator().manual_seed(seed))
    x[..., 0] = 1.0
    return x


@pytest.mark.parametrize("activation", ["swiglu", "gelu", "relu"])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_matches_per_token_reference_without_capacity(activation, top_k):
    torch.manual_seed(top_k)
    moe = MoE(12, 20, 5, top_k, capacity_factor=None, activation=activation, bias=True).double()
    x = torch.randn(3, 11, 12, dtype=torch.float64)
    y, _ = moe(x)
    expected, dropped = reference_moe(moe, x)
    assert dropped == 0 and moe.last_stats.dropped == 0
    assert_close(y, expected, atol=1e-12, what=f"MoE {activation} top_k={top_k}")


def test_float32_matches_float64_reference():
    torch.manual_seed(1)
    moe = MoE(16, 24, 4, 2, capacity_factor=None)
    x = torch.randn(2, 9, 16)
    y, _ = moe(x)
    assert y.dtype == torch.float32
    assert_close(y, reference_moe(moe, x)[0], atol=1e-5, what="MoE float32")


def test_each_token_reaches_exactly_its_top_k_experts():
    """Zero every expert but one: a token's output is non-zero exactly when that expert is among its top k."""
    torch.manual_seed(2)
    moe = MoE(8, 16, 6, 2, capacity_factor=None).double()
    x = torch.randn(40, 8, dtype=torch.float64)
    chosen = torch.topk(moe.router(x), 2, dim=-1).indices  # (T, k)
    for e in range(6):
        isolated = MoE(8, 16, 6, 2, capacity_factor=None).double()
        isolated.load_state_dict(moe.state_dict())
        with torch.no_grad():
            isolated.w2[torch.arange(6) != e] = 0.0  # every other expert now outputs exactly 0
        y, _ = isolated(x)
        reached = y.abs().sum(-1) > 0
        assert torch.equal(reached, (chosen == e).any(-1)), f"expert {e} reached the wrong tokens"


def test_input_layouts_n_d_and_b_n_d_agree():
    torch.manual_seed(3)
    moe = MoE(8, 16, 4, 2, capacity_factor=None)
    x = torch.randn(2, 7, 8)
    y3, aux3 = moe(x)
    y2, aux2 = moe(x.reshape(14, 8))
    assert y3.shape == (2, 7, 8) and y2.shape == (14, 8) and aux3.shape == ()
    assert_close(y2, y3.reshape(14, 8), atol=1e-6, what="(N, D) vs (B, N, D)")
    assert_close(aux2, aux3, atol=1e-6, what="aux loss")
    assert moe.last_stats.tokens == 14


def test_aux_loss_is_one_for_a_uniform_router():
    moe = MoE(8, 16, 4, 2)
    with torch.no_grad():
        moe.router.weight.zero_()
    _, aux = moe(torch.randn(3, 10, 8))
    assert aux.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("top_k", [1, 2])
def test_aux_loss_above_one_for_a_skewed_router(top_k):
    moe = MoE(8, 16, 4, top_k)
    one_expert_router(moe, 0, 1)
    _, aux = moe(tokens_with_feature0(30, dim=8))
    assert aux.item() > 1.5
    # everything on one expert with probability ~1: the loss approaches its maximum E / top_k
    assert aux.item() == pytest.approx(4 / top_k, rel=1e-3)


def test_load_balancing_loss_formula():
    # worked by hand: top-2 of [[.5, .3, .2], [.1, .6, .3]] picks experts {0, 1} and {1, 2}: shares of the 4
    # assignments f = (1/4, 2/4, 1/4); mean probabilities P = (.3, .45, .25); E * sum f P = 3 * .3625
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
    experts = torch.topk(probs, 2, -1).indices
    assert load_balancing_loss(probs, experts).item() == pytest.approx(1.0875)


def test_capacity_drops_all_but_the_first_tokens_of_a_full_expert():
    moe = MoE(8, 16, 4, 1, capacity_factor=1.0).double()
    one_expert_router(moe, 2)
    x = tokens_with_feature0(10, dim=8).double()
    y, _ = moe(x)
    capacity = math.ceil(1.0 * 10 * 1 / 4)  # 3
    stats = moe.last_stats
    assert isinstance(stats, MoEStats)
    assert (stats.tokens, stats.dropped, stats.capacity) == (10, 10 - capacity, capacity)
    assert stats.expert_counts.tolist() == [0, 0, 10, 0]
    assert torch.all(y[capacity:] == 0), "dropped tokens must get a zero MoE output"
    assert torch.all(y[:capacity].abs().sum(-1) > 0)
    expected, dropped = reference_moe(moe, x, capacity)
    assert dropped == stats.dropped
    assert_close(y, expected, atol=1e-12, what="MoE with drops")


def test_capacity_top2_drops_both_slots_of_late_tokens():
    moe = MoE(8, 16, 4, 2, capacity_factor=1.0).double()
    one_expert_router(moe, 0, 1)
    x = tokens_with_feature0(2, 5, dim=8).double()  # 10 tokens, each to experts 0 and 1
    y, _ = moe(x)
    capacity = math.ceil(1.0 * 10 * 2 / 4)  # 5 slots each on experts 0 and 1
    assert moe.last_stats.dropped == 2 * (10 - capacity)
    assert moe.last_stats.expert_counts.tolist() == [10, 10, 0, 0]
    flat = y.reshape(10, 8)
    assert torch.all(flat[capacity:] == 0) and torch.all(flat[:capacity].abs().sum(-1) > 0)
    assert_close(y, reference_moe(moe, x, capacity)[0], atol=1e-12, what="MoE top-2 with drops")


def test_partial_drop_keeps_the_other_expert():
    """Capacity 2 on a 3-token batch where token 2's first choice is full: it keeps its second expert only."""
    routing = route(torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.7, 0.1, 0.2]]), top_k=2, capacity=2)
    assert routing.experts.tolist() == [[0, 1], [0, 1], [0, 2]]
    assert routing.keep.tolist() == [[True, True], [True, True], [False, True]]
    assert_close(routing.gates.sum(-1), torch.ones(3), atol=1e-6, what="gates sum to 1")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_capacity_matches_reference(seed):
    torch.manual_seed(seed)
    moe = MoE(8, 12, 4, 2, capacity_factor=0.6, activation="gelu").double()
    with torch.no_grad():
        moe.router.weight.mul_(4.0)  # sharpen the router so experts overflow unevenly
    x = torch.randn(3, 13, 8, dtype=torch.float64)
    y, _ = moe(x)
    expected, dropped = reference_moe(moe, x, expert_capacity(39, 2, 4, 0.6))
    assert dropped > 0 and moe.last_stats.dropped == dropped
    assert_close(y, expected, atol=1e-12, what=f"MoE capacity 0.6 seed {seed}")


def test_gradients_reach_router_and_every_used_expert():
    torch.manual_seed(4)
    moe = MoE(8, 16, 4, 2, capacity_factor=None, bias=True)
    x = torch.randn(4, 16, 8, requires_grad=True)
    y, aux = moe(x)
    (y.square().mean() + 0.01 * aux).backward()
    assert moe.last_stats.expert_counts.min() > 0, "test needs every expert used"
    for name, p in moe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        per_expert = p.grad.reshape(p.shape[0], -1).abs().sum(-1)
        assert torch.all(per_expert > 0), f"{name}: an expert or router row got no gradient"
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_aux_loss_alone_trains_the_router():
    moe = MoE(8, 16, 4, 2)
    moe(torch.randn(10, 8))[1].backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_unused_expert_gets_no_gradient_and_zero_tokens_is_fine():
    moe = MoE(8, 16, 4, 1)
    one_expert_router(moe, 3)
    y, aux = moe(tokens_with_feature0(6, dim=8))
    y.sum().backward()
    assert moe.w1.grad[:3].abs().sum() == 0 and moe.w1.grad[3].abs().sum() > 0
    y, aux = moe(torch.randn(0, 5, 8))
    assert y.shape == (0, 5, 8) and aux.item() == 0.0 and moe.last_stats.tokens == 0


def test_learns_a_small_regression():
    torch.manual_seed(5)
    moe = MoE(4, 16, 4, 2, capacity_factor=None, activation="relu")
    x = torch.randn(256, 4)
    target = torch.where(x[:, :1] > 0, x.roll(1, -1), -x)  # different maps in two halves of the space

    def loss_fn():
        y, aux = moe(x)
        return F.mse_loss(y, target) + 0.01 * aux

    first, loss = fit(moe, loss_fn, steps=150, lr=1e-2)
    assert loss < 0.2 * first


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"dim": 0, "hidden": 8, "num_experts": 4}, ValueError, ["dim", "0"]),
    ({"dim": 8, "hidden": -1, "num_experts": 4}, ValueError, ["hidden", "-1"]),
    ({"dim": 8, "hidden": 8, "num_experts": 0}, ValueError, ["num_experts", "0"]),
    ({"dim": 8.0, "hidden": 8, "num_experts": 4}, TypeError, ["dim", "8.0"]),
    ({"dim": 8, "hidden": 8, "num_experts": 4, "top_k": 0}, ValueError, ["top_k", "0"]),
    ({"dim": 8, "hidden": 8, "num_experts": 4, "top_k": 5}, ValueError, ["top_k", "num_experts=4", "5"]),
    ({"dim": 8, "hidden": 8, "num_experts": 4, "capacity_factor": 0.0}, ValueError, ["capacity_factor", "0.0"]),
    ({"dim": 8, "hidden": 8, "num_experts": 4, "capacity_factor": -1}, ValueError, ["capacity_factor", "-1"]),
    ({"dim": 8, "hidden": 8, "num_experts": 4, "activation": "tanh"}, ValueError, ["activation", "tanh"]),
], ids=["dim0", "hidden-neg", "experts0", "dim-float", "topk0", "topk-too-big", "cf0", "cf-neg", "activation"])
def test_constructor_errors(kwargs, exc, words):
    assert_raises_naming(exc, words, MoE, **kwargs)


def test_forward_errors():
    moe = MoE(8, 16, 4)
    with pytest.raises(ValueError, match=r"dim=8.*\(2, 5, 7\)"):
        moe(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"dim=8.*\(\)"):
        moe(torch.tensor(1.0))
    with pytest.raises(TypeError, match="floating-point.*int64"):
        moe(torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a Tensor"):
        moe([[0.0] * 8])


def test_eval_mode_drops_nothing_so_tokens_do_not_depend_on_each_other():
    torch.manual_seed(3)
    moe = MoE(8, 16, 4, top_k=2, capacity_factor=0.5).eval()
    x = torch.randn(1, 12, 8)
    together, _ = moe(x)
    assert moe.last_stats.dropped == 0 and moe.last_stats.capacity is None
    for i in range(12):
        alone, _ = moe(x[:, i:i + 1])
        torch.testing.assert_close(alone[0, 0], together[0, i])
    moe.train()
    moe(x)
    assert moe.last_stats.dropped > 0  # the same call while training is capacity-limited
