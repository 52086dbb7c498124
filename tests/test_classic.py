"""The classic mechanisms: Bahdanau (additive), Luong (dot, general) and hard attention, against
implementations written out with loops."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.functional import additive_attention, additive_scores, hard_attention, luong_attention, luong_scores
from attnkit.functional.classic import project_keys
from helpers import assert_close, randn

TOL = 1e-12  # float64 throughout


def loop_softmax_attend(scores, v, mask=None):
    """weights[..., i, :] = softmax over visible keys (zeros if none); out = weights @ v; by loops."""
    *lead, Nq, Nk = scores.shape
    weights = torch.zeros_like(scores)
    out = torch.zeros(*lead, Nq, v.shape[-1], dtype=scores.dtype)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in lead]).reshape(-1, len(lead)).tolist():
        for i in range(Nq):
            keys = [j for j in range(Nk) if mask is None or mask[tuple(idx) + (i, j)]]
            if not keys:
                continue
            z = sum(math.exp(scores[tuple(idx) + (i, j)]) for j in keys)
            for j in keys:
                w = math.exp(scores[tuple(idx) + (i, j)]) / z
                weights[tuple(idx) + (i, j)] = w
                out[tuple(idx) + (i,)] += w * v[tuple(idx) + (j,)]
    return out, weights


def test_additive_attention_matches_loops():
    B, Nq, Nk, Dq, Dk, Dv, A = 2, 3, 5, 4, 6, 3, 7
    q, k, v = randn(B, Nq, Dq, seed=1), randn(B, Nk, Dk, seed=2), randn(B, Nk, Dv, seed=3)
    w_q, w_k, w_score = randn(A, Dq, seed=4), randn(A, Dk, seed=5), randn(A, seed=6)
    scores = torch.zeros(B, Nq, Nk, dtype=torch.float64)
    for b in range(B):
        for i in range(Nq):
            for j in range(Nk):
                scores[b, i, j] = w_score @ torch.tanh(w_q @ q[b, i] + w_k @ k[b, j])
    assert_close(additive_scores(q, k, w_q, w_k, w_score), scores, atol=TOL, what="scores")
    mask = torch.tensor([[True, True, False, True, False]]).expand(B, Nq, Nk)
    expected_out, expected_w = loop_softmax_attend(scores, v, mask)
    out, weights = additive_attention(q, k, v, w_q, w_k, w_score, mask)
    assert_close(weights, expected_w, atol=TOL, what="weights")
    assert_close(out, expected_out, atol=TOL, what="out")


@pytest.mark.parametrize("method", ["dot", "general"])
def test_luong_matches_loops(method):
    B, Nq, Nk, D = 2, 4, 6, 5
    q, k, v = randn(B, Nq, D, seed=7), randn(B, Nk, D, seed=8), randn(B, Nk, 3, seed=9)
    W = randn(D, D, seed=10) if method == "general" else None
    scores = torch.zeros(B, Nq, Nk, dtype=torch.float64)
    for b in range(B):
        for i in range(Nq):
            for j in range(Nk):
                scores[b, i, j] = q[b, i] @ (k[b, j] if W is None else W @ k[b, j])
    assert_close(luong_scores(q, k, method, W), scores, atol=TOL, what="scores")
    expected_out, expected_w = loop_softmax_attend(scores, v)
    out, weights = luong_attention(q, k, v, method, W)
    assert_close(weights, expected_w, atol=TOL, what="weights")
    assert_close(out, expected_out, atol=TOL, what="out")


def test_luong_general_accepts_different_query_and_key_dims():
    q, k = randn(1, 2, 3, seed=1), randn(1, 4, 5, seed=2)
    W = randn(3, 5, seed=3)
    assert_close(luong_scores(q, k, "general", W), q @ W @ k.transpose(-2, -1), atol=TOL)


@pytest.mark.parametrize("mechanism", ["additive", "luong"])
def test_masked_rows_are_zero_and_unseen_values_cannot_leak(mechanism):
    B, Nq, Nk, D = 2, 3, 4, 5
    q, k, v = randn(B, Nq, D, seed=1), randn(B, Nk, D, seed=2), randn(B, Nk, D, seed=3)
    mask = torch.ones(B, Nq, Nk, dtype=torch.bool)
    mask[0, 1] = False  # a row that sees nothing
    mask[:, :, 3] = False  # a key nobody sees...
    v[:, 3] = float("nan")  # ...holding NaN
    if mechanism == "additive":
        out, weights = additive_attention(q, k, v, randn(6, D, seed=4), randn(6, D, seed=5), randn(6, seed=6), mask)
    else:
        out, weights = luong_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all()
    assert (out[0, 1] == 0).all() and (weights[0, 1] == 0).all()
    assert (weights[..., 3] == 0).all()
    assert_close(weights[mask.any(-1)].sum(-1), torch.ones(5, dtype=torch.float64), atol=TOL, what="row sums")


def _attend(mechanism, q, k, v, mask):
    """One of the classic mechanisms with fixed weights (additive-projected: keys through project_keys)."""
    D, A = q.shape[-1], 6
    if mechanism.startswith("additive"):
        w_q, w_k, w_score = randn(A, D, seed=4), randn(A, D, seed=5), randn(A, seed=6)
        if mechanism == "additive-projected":
            return additive_attention(q, project_keys(k, w_k, mask), v, w_q, None, w_score, mask)
        return additive_attention(q, k, v, w_q, w_k, w_score, mask)
    if mechanism == "luong-general":
        return luong_attention(q, k, v, "general", randn(D, D, seed=7), mask)
    return luong_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("mechanism", ["additive", "additive-projected", "luong-dot", "luong-general"])
def test_nan_at_masked_keys_and_values_leaves_outputs_and_gradients_as_the_clean_run(mechanism):
    B, Nq, Nk, D = 2, 3, 5, 4
    mask = torch.ones(B, Nq, Nk, dtype=torch.bool)
    mask[0, 1] = False  # a row that sees nothing
    mask[:, :, 3] = False  # a key nobody sees
    mask[1, :, 0] = False  # and one nobody in batch 1 sees
    runs = []
    for poison in (False, True):
        q = randn(B, Nq, D, seed=1).requires_grad_()
        k, v = randn(B, Nk, D, seed=2), randn(B, Nk, D, seed=3)
        if poison:
            unseen = ~mask.any(dim=-2)  # (B, Nk)
            k, v = k.masked_fill(unseen[..., None], float("nan")), v.masked_fill(unseen[..., None], float("inf"))
        k.requires_grad_(), v.requires_grad_()
        out, weights = _attend(mechanism, q, k, v, mask)
        (out * randn(*out.shape, seed=8)).sum().backward()
        runs.append((out, weights, q.grad, k.grad, v.grad))
    for name, clean, poisoned in zip(["out", "weights", "q.grad", "k.grad", "v.grad"], *runs):
        assert torch.isfinite(poisoned).all(), f"{name} is not finite"
        assert_close(poisoned, clean, atol=TOL, what=name)


def test_projected_keys_give_the_same_additive_attention():
    q, k, v = randn(2, 3, 4, seed=1), randn(2, 5, 6, seed=2), randn(2, 5, 3, seed=3)
    w_q, w_k, w_score = randn(7, 4, seed=4), randn(7, 6, seed=5), randn(7, seed=6)
    mask = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(7)) < 0.6
    projected = project_keys(k, w_k)
    assert_close(additive_scores(q, projected, w_q, None, w_score), additive_scores(q, k, w_q, w_k, w_score),
                 atol=TOL, what="scores")
    for got, expected in zip(additive_attention(q, projected, v, w_q, None, w_score, mask),
                             additive_attention(q, k, v, w_q, w_k, w_score, mask)):
        assert_close(got, expected, atol=TOL)


@pytest.mark.parametrize("call,pattern", [
    (lambda: luong_scores(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4)), "equal dims"),
    (lambda: luong_scores(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), "general"), "weight of shape"),
    (lambda: luong_scores(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), "concat"), "method"),
    (lambda: additive_scores(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(5, 3), torch.zeros(6, 4),
                             torch.zeros(5)), "attention sizes differ"),
    (lambda: additive_scores(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(5, 2), torch.zeros(5, 4),
                             torch.zeros(5)), "w_q"),
    (lambda: additive_scores(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(5, 3), None, torch.zeros(5)),
     "projected keys A=4"),
    (lambda: project_keys(torch.zeros(2, 4), torch.zeros(5, 3)), r"w_k must be \(A, Dk=4\)"),
    (lambda: luong_attention(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3),
                             mask=torch.ones(2, 2)), "bool"),
    (lambda: luong_attention(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 3),
                             mask=torch.ones(5, 2, dtype=torch.bool)), "does not broadcast"),
], ids=["dot-dims", "general-no-weight", "unknown-method", "attention-sizes", "w_q-dims", "projected-sizes",
        "project-keys-dims", "float-mask", "mask-shape"])
def test_classic_errors_are_named(call, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        call()


# --------------------------------------------------------------------------------------------------
# Hard attention


def test_argmax_picks_the_best_visible_key():
    scores = randn(2, 5, 7, seed=1)
    v = randn(2, 7, 3, seed=2)
    mask = torch.ones(2, 5, 7, dtype=torch.bool)
    mask[0, 0, scores[0, 0].argmax()] = False  # hide the best key: the second best must win
    mask[1, 2] = False  # nothing to pick
    res = hard_attention(scores, v, mode="argmax", mask=mask)
    for b in range(2):
        for i in range(5):
            visible = [j for j in range(7) if mask[b, i, j]]
            if not visible:
                assert res.index[b, i] == -1 and (res.output[b, i] == 0).all() and (res.weights[b, i] == 0).all()
                continue
            best = max(visible, key=lambda j: scores[b, i, j].item())
            assert res.index[b, i] == best
            assert torch.equal(res.output[b, i], v[b, best])
            assert res.weights[b, i].tolist() == [float(j == best) for j in range(7)]
    assert res.log_prob is None


def _frequencies(index: torch.Tensor, n: int) -> torch.Tensor:
    return torch.bincount(index.flatten(), minlength=n).double() / index.numel()


@pytest.mark.parametrize("mode", ["sample", "gumbel"])
def test_draws_follow_the_softmax(mode):
    """40000 draws of one row: each key's frequency within 0.01 of softmax (5 sigma at p = 0.5), and
    a masked key is never drawn. Gumbel-max draws have the same law as sampling."""
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    mask = torch.tensor([True, True, True, True, True, False])
    n = 40_000
    scores = logits.expand(n, 6)
    res = hard_attention(scores, torch.eye(6, dtype=torch.float64), mode=mode, mask=mask.expand(n, 6),
                         generator=torch.Generator().manual_seed(0))
    expected = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    assert_close(_frequencies(res.index, 6), expected, atol=0.01, what="frequencies")
    assert torch.equal(res.output, res.weights.detach())  # v = I: the output is the one-hot row


def test_sample_log_prob_has_the_reinforce_gradient():
    scores = randn(3, 4, 5, seed=3).requires_grad_()
    res = hard_attention(scores, randn(3, 5, 2, seed=4), mode="sample", generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(scores.detach(), dim=-1)
    assert_close(res.log_prob, probs.gather(-1, res.index[..., None]).squeeze(-1).log(), atol=TOL, what="log_prob")
    res.log_prob.sum().backward()
    one_hot = torch.nn.functional.one_hot(res.index, 5).double()
    assert_close(scores.grad, one_hot - probs, atol=TOL, what="d log_prob / d scores")


def test_straight_through_is_one_hot_forward_and_softmax_backward():
    scores = randn(2, 3, 6, seed=5).requires_grad_()
    v = randn(2, 6, 4, seed=6).requires_grad_()
    res = hard_attention(scores, v, mode="straight_through")
    one_hot = torch.nn.functional.one_hot(scores.detach().argmax(-1), 6).double()
    assert_close(res.weights, one_hot, atol=1e-15, what="weights")
    assert_close(res.output, one_hot @ v.detach(), atol=1e-15, what="output")
    g = randn(2, 3, 4, seed=7)
    (res.output * g).sum().backward()
    # backward as if the weights were softmax(scores): d/dscores of sum(g * (softmax(s) @ v))
    s2 = scores.detach().clone().requires_grad_()
    (torch.softmax(s2, -1) @ v.detach() * g).sum().backward()
    assert_close(scores.grad, s2.grad, atol=TOL, what="d scores")
    assert_close(v.grad, one_hot.transpose(-2, -1) @ g, atol=TOL, what="d v")


def test_gumbel_output_is_one_hot_with_gradient():
    scores = randn(4, 5, 8, seed=8).requires_grad_()
    res = hard_attention(scores, torch.eye(8, dtype=torch.float64), mode="gumbel", tau=0.5,
                         generator=torch.Generator().manual_seed(2))
    w = res.weights.detach()
    assert_close(w.sum(-1), torch.ones(4, 5, dtype=torch.float64), atol=1e-12, what="row sums")
    assert ((w - w.round()).abs() < 1e-12).all(), "gumbel weights must be one-hot in the forward pass"
    assert torch.equal(w.argmax(-1), res.index)
    res.output.pow(2).sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def test_hard_attention_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        hard_attention(torch.zeros(2, 3), torch.zeros(3, 1), mode="soft")
    with pytest.raises(ValueError, match="tau"):
        hard_attention(torch.zeros(2, 3), torch.zeros(3, 1), mode="gumbel", tau=0.0)
