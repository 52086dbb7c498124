"""Bad input gets a ValueError/TypeError naming the argument, what was expected and what was received."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import masks
from attnkit.functional.kernels import dense as dense_module


def qkv(B=2, H=4, Hkv=4, Nq=6, Nk=7, D=8, Dv=8, dtype=torch.float32):
    return torch.randn(B, H, Nq, D, dtype=dtype), torch.randn(B, Hkv, Nk, D, dtype=dtype), \
        torch.randn(B, Hkv, Nk, Dv, dtype=dtype)


def _replace(which: str, tensor):
    q, k, v = qkv()
    return {"q": (tensor, k, v), "k": (q, tensor, v), "v": (q, k, tensor)}[which]


BAD_INPUTS = {
    # id: (args (q, k, v), options, error, pattern the message must match)
    "q-rank-3": (_replace("q", torch.randn(2, 6, 8)), {}, ValueError,
                 r"q must have shape \(B, H, N, D\).*\(2, 6, 8\)"),
    "k-rank-5": (_replace("k", torch.randn(1, 2, 4, 7, 8)), {}, ValueError, r"k must have shape.*\(1, 2, 4, 7, 8\)"),
    "q-not-a-tensor": (_replace("q", [[1.0]]), {}, TypeError, r"q must be a torch.Tensor, got list"),
    "v-integer-dtype": (_replace("v", torch.ones(2, 4, 7, 8, dtype=torch.long)), {}, TypeError,
                        r"v must be float.*int64"),
    "batch-mismatch": (_replace("k", torch.randn(3, 4, 7, 8)), {}, ValueError, r"batch sizes differ.*B=2.*B=3"),
    "head-dim-mismatch": (_replace("k", torch.randn(2, 4, 7, 5)), {}, ValueError, r"head dims differ.*D=8.*D=5"),
    "length-mismatch-k-v": (_replace("v", torch.randn(2, 4, 9, 8)), {}, ValueError,
                            r"k and v lengths differ.*Nk=7.*Nk=9"),
    "heads-mismatch-k-v": (_replace("v", torch.randn(2, 2, 7, 8)), {}, ValueError, r"k and v head counts differ"),
    "heads-not-multiple": (qkv(H=6, Hkv=4), {}, ValueError, r"H=6 must be a multiple of .*Hkv=4"),
    "mixed-dtypes": (_replace("k", torch.randn(2, 4, 7, 8, dtype=torch.float64)), {}, TypeError,
                     r"share one dtype.*float32.*float64"),
    "mask-does-not-broadcast": (qkv(), {"mask": torch.ones(6, 5, dtype=torch.bool)}, ValueError,
                                r"mask of shape \(6, 5\) does not broadcast to .*\(2, 4, 6, 7\)"),
    "mask-wrong-batch": (qkv(), {"mask": torch.ones(3, 1, 6, 7, dtype=torch.bool)}, ValueError, r"mask of shape"),
    "float-mask": (qkv(), {"mask": torch.zeros(6, 7)}, TypeError, r"mask must be a bool tensor.*float32.*bias="),
    "mask-not-a-mask": (qkv(), {"mask": "causal"}, TypeError, r"mask must be .*got str"),
    "negative-window-left": (qkv(), {"window": (-1, 0)}, ValueError, r"window left must be a non-negative.*-1"),
    "negative-window-right": (qkv(), {"window": (3, -2)}, ValueError, r"window right must be a non-negative.*-2"),
    "window-not-a-pair": (qkv(), {"window": 3}, ValueError, r"window must be a pair"),
    "causal-not-bool": (qkv(), {"causal": 1}, TypeError, r"causal must be a bool"),
    "dropout-negative": (qkv(), {"dropout": -0.1}, ValueError, r"dropout must be a probability in \[0, 1\).*-0.1"),
    "dropout-one": (qkv(), {"dropout": 1.0}, ValueError, r"dropout must be a probability.*1.0"),
    "softcap-zero": (qkv(), {"softcap": 0.0}, ValueError, r"softcap must be a positive"),
    "scale-nan": (qkv(), {"scale": float("nan")}, ValueError, r"scale must be finite"),
    "scale-bool": (qkv(), {"scale": True}, TypeError, r"scale must be a float"),
    "bias-does-not-broadcast": (qkv(), {"bias": torch.zeros(4, 6, 3)}, ValueError,
                                r"bias of shape \(4, 6, 3\) does not broadcast"),
    "bool-bias": (qkv(), {"bias": torch.ones(6, 7, dtype=torch.bool)}, TypeError,
                  r"bias must be a floating-point.*mask="),
    "alibi-wrong-heads": (qkv(), {"bias": attnkit.bias.alibi(8)}, ValueError,
                          r"alibi bias was built for 8 heads.*4 heads"),
    "padding-wrong-batch": (qkv(), {"mask": masks.padding([1, 2, 3])}, ValueError,
                            r"k_lengths has 3 entries.*batch size is 2"),
    "document-wrong-length": (qkv(), {"mask": masks.document(torch.zeros(2, 9, dtype=torch.long))}, ValueError,
                              r"document ids cover 9 positions but k_len is 7"),
    "document-more-queries": (qkv(Nq=9, Nk=7), {"mask": masks.document(torch.zeros(7, dtype=torch.long))},
                              ValueError, r"q_ids"),
    "unknown-kernel": (qkv(), {"kernel": "flash9"}, ValueError, r"unknown kernel 'flash9'; registered: .*dense"),
    "kernel-wrong-type": (qkv(), {"kernel": 3}, TypeError, r"kernel must be a name"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_named(case):
    args, options, error, pattern = BAD_INPUTS[case]
    with pytest.raises(error, match=pattern):
        attnkit.attention(*args, **options)


def test_value_dim_may_differ_from_head_dim():
    out = attnkit.attention(*qkv(Dv=3))
    assert out.shape == (2, 4, 6, 3)


REFUSALS = {
    # forced kernel, options, the option the message must name
    "sdpa-softcap": ("sdpa", {"softcap": 5.0}, r"kernel 'sdpa' cannot serve this request: softcap not supported"),
    "sdpa-return-lse": ("sdpa", {"return_lse": True}, r"kernel 'sdpa' cannot serve.*return_lse not supported"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_forced_kernel_names_the_option_it_cannot_serve(case):
    kernel, options, pattern = REFUSALS[case]
    with pytest.raises(ValueError, match=pattern):
        attnkit.attention(*qkv(), kernel=kernel, **options)


def test_sdpa_refuses_a_bias_that_requires_grad():
    q, k, v = (t.requires_grad_() for t in qkv())
    bias = torch.zeros(6, 7, requires_grad=True)
    with pytest.raises(ValueError, match=r"kernel 'sdpa' cannot serve.*gradient with respect to bias"):
        attnkit.attention(q, k, v, bias=bias, kernel="sdpa")
    with torch.no_grad():  # no gradient wanted: nothing to refuse
        attnkit.attention(q, k, v, bias=bias, kernel="sdpa")


def test_dense_over_its_memory_budget_names_tiled(monkeypatch):
    monkeypatch.setattr(dense_module, "MAX_DENSE_BYTES", 1024)  # below the weights alone (2*4*6*7 float32 = 1344 bytes)
    with pytest.raises(ValueError, match=r"kernel 'dense' cannot serve.*\(2, 4, 6, 7\) weight matrix.*'tiled'"):
        attnkit.attention(*qkv(), kernel="dense")
    with pytest.raises(ValueError, match=r"tiled"):
        attnkit.attention_weights(qkv()[0], qkv()[1])
    out = attnkit.attention(*qkv(), kernel="auto", softcap=2.0)  # auto still finds a kernel that fits
    assert out.shape == (2, 4, 6, 8)


def test_dense_within_its_budget_runs(monkeypatch):
    monkeypatch.setattr(dense_module, "MAX_DENSE_BYTES", 4032)  # its peak: 3 float32 planes of 2*4*6*7 entries
    assert attnkit.attention(*qkv(), kernel="dense").shape == (2, 4, 6, 8)


def test_validation_happens_before_any_large_allocation(monkeypatch):
    """A bad mask on a request whose dense weights would be enormous fails on the mask, fast, without
    trying to build anything of size Nq x Nk."""
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 200_000, 8)  # expanded: no memory behind it
    k = torch.randn(1, 1, 1, 8).expand(1, 1, 200_000, 8)
    with pytest.raises(ValueError, match=r"mask of shape"):
        attnkit.attention(q, k, k, mask=torch.ones(3, 1, 1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"would materialize a \(1, 1, 200000, 200000\) weight matrix.*tiled"):
        attnkit.attention(q, k, k, kernel="dense")
