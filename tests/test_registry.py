"""The kernel registry: what is registered and declared, what ``kernel="auto"`` picks and why, user
kernels, and the error when nothing fits."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import AttentionRequest, Capabilities, masks
from attnkit.functional import dispatch, registry
from attnkit.functional.kernels import dense as dense_module
from helpers import assert_close, native_off, needs_native, randn


@pytest.fixture
def private_registry(monkeypatch):
    """A copy of the registry for this test, so registrations do not leak into other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def qkv(B=1, H=2, N=16, D=8, dtype=torch.float64):
    return randn(B, H, N, D, seed=1, dtype=dtype), randn(B, H, N, D, seed=2, dtype=dtype), \
        randn(B, H, N, D, seed=3, dtype=dtype)


def test_builtin_kernels_are_listed_with_capabilities():
    by_name = {k.name: k for k in attnkit.kernels()}
    assert {"dense", "sdpa", "tiled"} <= set(by_name)
    for kernel in by_name.values():
        assert isinstance(kernel.capabilities, Capabilities) and kernel.description
        assert attnkit.get_kernel(kernel.name) is kernel
    sdpa = by_name["sdpa"].capabilities
    assert (sdpa.softcap, sdpa.return_lse, sdpa.bias_grad) == (False, False, False)
    assert by_name["tiled"].capabilities.tile_skipping and not by_name["dense"].capabilities.tile_skipping
    for name in ("dense", "tiled"):
        caps = by_name[name].capabilities
        assert caps.softcap and caps.return_lse and caps.bias_grad and caps.dropout and caps.gqa
        assert set(caps.dtypes) >= {"float32", "float64", "bfloat16", "float16"}
    row = by_name["sdpa"].capabilities.as_row()
    assert row["softcap"] == "no" and row["dropout"] == "yes"


def _order(N, **options):  # float64: the native forward (rule 2, tested below) does not serve it
    q = torch.zeros(1, 1, N, 8, dtype=torch.float64)
    return attnkit.auto_order(AttentionRequest.build(q, q, q, **options))


def _selected(N, **options):
    q = torch.zeros(1, 1, N, 8, dtype=torch.float64)
    return dispatch.select_kernel(AttentionRequest.build(q, q, q, **options), "auto").name


@pytest.mark.parametrize("N,options,first", [
    (2048, {"window": (128, 0)}, "tiled"),  # 88% of the 128x128 tiles are empty
    (2048, {"mask": masks.document(torch.arange(2048) // 256)}, "tiled"),  # 8 documents: 7/8 empty
    (2048, {}, "sdpa"),  # plain attention
    (2048, {"window": (1500, 1500)}, "sdpa"),  # a window that hides little
    (2048, {"mask": torch.eye(2048, dtype=torch.bool)}, "sdpa"),  # a dense tensor: no structure to skip
    (256, {"window": (8, 0)}, "sdpa"),  # sparse but small: not worth the tiles
], ids=["long-window", "documents", "plain", "wide-window", "dense-tensor", "short-window"])
def test_auto_order(N, options, first):
    order = _order(N, **options)
    assert order[0] == first
    assert sorted(order[:3]) == ["dense", "sdpa", "tiled"]
    assert _selected(N, **options) == first


def _first(B, H, Nq, Nk, D=64, dtype=torch.float32, grad=False, **options):
    q, k, v = (torch.zeros(B, H, n, D, dtype=dtype, requires_grad=grad) for n in (Nq, Nk, Nk))
    return attnkit.auto_order(AttentionRequest.build(q, k, v, **options))[0]


@needs_native
@pytest.mark.parametrize("shape,options,first", [
    ((1, 8, 512, 512), {}, "tiled"),  # 2M entries: 1.8x SDPA measured
    ((1, 8, 512, 512), {"causal": True}, "tiled"),
    ((32, 12, 40, 40, 32), {"mask": masks.padding([40, 30] * 16)}, "tiled"),  # a batch of short sentences
    ((1, 8, 128, 128), {}, "tiled"),  # 2^17 entries
    ((1, 8, 128, 128), {"causal": True}, "sdpa"),  # 2^17 entries, about half of them visible
    ((1, 1, 512, 512), {"window": (15, 0)}, "sdpa"),  # 2^18 entries, 7 of 16 tiles partial, the rest empty
    ((1, 2, 512, 512), {"window": (300, 0)}, "tiled"),  # 2^19 entries, 40% of them visible
    ((1, 8, 64, 64), {}, "sdpa"),  # too little work to pay for the plan
    ((1, 12, 1, 1024), {"causal": True}, "sdpa"),  # decoding: one row per head
    ((1, 12, 16, 1024), {"causal": True}, "sdpa"),  # too few rows per head
    ((1, 8, 32, 2048), {"causal": True}, "sdpa"),  # 64 keys a row: packing them is not paid for
    ((1, 8, 64, 2048), {"causal": True}, "tiled"),
], ids=["512", "512-causal", "sentences", "128", "128-causal", "narrow-window", "wide-window", "64", "decode",
        "16-rows", "32-rows-2048-keys", "64-rows-2048-keys"])
def test_auto_runs_float32_inference_through_the_native_forward(shape, options, first):
    assert _first(*shape, **options) == first


@needs_native
def test_auto_keeps_sdpa_where_the_native_forward_does_not_serve_or_gradients_are_recorded():
    assert _first(1, 8, 512, 512) == "tiled"
    assert _first(1, 8, 512, 512, grad=True) == "sdpa"  # its backward is PyTorch's, slower than SDPA's
    with torch.no_grad():
        assert _first(1, 8, 512, 512, grad=True) == "tiled"
    assert _first(1, 8, 512, 512, dtype=torch.float64) == "sdpa"
    assert _first(1, 8, 512, 512, dropout=0.1) == "sdpa"
    with native_off():
        assert _first(1, 8, 512, 512) == "sdpa"


@needs_native
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_auto_runs_half_precision_inference_through_the_native_forward(dtype):
    assert _first(1, 8, 512, 512, dtype=dtype) == "tiled"
    assert _first(1, 8, 512, 512, dtype=dtype, grad=True) == "sdpa"
    assert _first(1, 8, 64, 64, dtype=dtype) == "sdpa"


def test_auto_falls_through_to_a_kernel_that_can_serve():
    assert _selected(64, softcap=2.0) == "tiled"  # sdpa refuses softcap
    assert _selected(64, return_lse=True) == "tiled"
    q, k, v = (t.requires_grad_() for t in qkv(N=64, dtype=torch.float32))
    req = AttentionRequest.build(q, k, v, bias=torch.zeros(64, 64, requires_grad=True))
    assert dispatch.select_kernel(req, "auto").name == "tiled"


def test_auto_result_matches_the_forced_kernels():
    q, k, v = qkv(N=2048, H=1, D=4)
    out = attnkit.attention(q, k, v, window=(128, 0))
    assert_close(out, attnkit.attention(q, k, v, window=(128, 0), kernel="dense"), atol=1e-12)


class Recording:
    """A user kernel: the dense reference, counting its calls; optionally refusing with a reason."""

    description = "test kernel"
    capabilities = Capabilities(dtypes=("float64",), memory="O(Nq*Nk)")

    def __init__(self, name="recording", refuse: str | None = None):
        self.name, self.refuse, self.calls = name, refuse, 0

    def not_supported_reasons(self, req):
        return self.capabilities.reasons(req) + ([self.refuse] if self.refuse else [])

    def __call__(self, req):
        self.calls += 1
        return attnkit.get_kernel("dense")(req)


def test_register_a_custom_kernel(private_registry):
    mine = attnkit.register_kernel(Recording())
    assert mine in attnkit.kernels() and attnkit.get_kernel("recording") is mine
    q, k, v = qkv()
    out = attnkit.attention(q, k, v, causal=True, kernel="recording")
    assert mine.calls == 1
    assert_close(out, attnkit.attention(q, k, v, causal=True, kernel="dense"), atol=0.0)
    assert attnkit.auto_order(AttentionRequest.build(q, k, v))[-1] == "recording"  # after the built-ins


class Preferring(Recording):
    """A user kernel that declares where it wants to run: first for float64 requests with a causal mask."""

    def priority(self, req):
        return attnkit.Rank.PREFERRED + 1 if req.mask is not None else attnkit.Rank.UNRANKED


def test_a_kernel_takes_its_place_in_auto_by_its_priority(private_registry):
    """No edit of the registry or the dispatch: the kernel's own priority puts it first where it asks."""
    mine = attnkit.register_kernel(Preferring("preferring"))
    q, k, v = qkv()
    assert attnkit.auto_order(AttentionRequest.build(q, k, v, causal=True))[0] == "preferring"
    attnkit.attention(q, k, v, causal=True)
    assert mine.calls == 1
    assert attnkit.auto_order(AttentionRequest.build(q, k, v))[-1] == "preferring"
    attnkit.attention(q, k, v)
    assert mine.calls == 1
    q32, k32, v32 = (t.float() for t in (q, k, v))  # preferred but refuses float32: auto goes on
    attnkit.attention(q32, k32, v32, causal=True)
    assert mine.calls == 1


def test_built_in_ranks():
    q, k, v = qkv()
    req = AttentionRequest.build(q, k, v)
    ranks = {kern.name: dispatch.priority(kern, req) for kern in attnkit.kernels() if kern.capabilities.exact}
    assert ranks == {"sdpa": attnkit.Rank.DEFAULT, "tiled": attnkit.Rank.FALLBACK, "dense": attnkit.Rank.REFERENCE}


def test_pass_a_kernel_object_without_registering(private_registry):
    mine = Recording("unregistered")
    q, k, v = qkv()
    attnkit.attention(q, k, v, kernel=mine)
    assert mine.calls == 1 and "unregistered" not in {k.name for k in attnkit.kernels()}


def test_a_forced_custom_kernel_gives_its_reasons(private_registry):
    attnkit.register_kernel(Recording(refuse="needs a GPU"))
    q, k, v = qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"kernel 'recording' cannot serve this request: dtype float32 not "
                                         r"supported \(supports float64\); needs a GPU"):
        attnkit.attention(q, k, v, kernel="recording")


def test_registration_errors(private_registry):
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        attnkit.register_kernel(Recording("dense"))
    replacement = attnkit.register_kernel(Recording("dense"), replace=True)
    assert attnkit.get_kernel("dense") is replacement
    with pytest.raises(ValueError, match="'auto' is reserved"):
        attnkit.register_kernel(Recording("auto"))
    with pytest.raises(TypeError, match="a kernel needs name"):
        attnkit.register_kernel(object())


def test_auto_with_nothing_suitable_lists_every_kernel_and_its_reasons(monkeypatch):
    """Only sdpa and a refusing user kernel registered, dense over budget: a softcap request fits none."""
    monkeypatch.setattr(registry, "_REGISTRY", {})
    attnkit.register_kernel(attnkit.functional.SdpaKernel())
    attnkit.register_kernel(attnkit.functional.DenseKernel())
    attnkit.register_kernel(Recording(refuse="never"))
    monkeypatch.setattr(dense_module, "MAX_DENSE_BYTES", 16)
    q, k, v = qkv()
    with pytest.raises(ValueError) as err:
        attnkit.attention(q, k, v, softcap=3.0)
    lines = str(err.value).splitlines()
    assert lines[0] == "no attention kernel supports this request:"
    assert lines[1] == "  sdpa: softcap not supported"
    assert lines[2].startswith("  dense: would materialize a (1, 2, 16, 16) weight matrix") and "tiled" in lines[2]
    assert lines[3] == "  recording: never"
    assert len(lines) == 4


def test_a_single_causal_query_needs_no_mask():
    """Bottom-right aligned, one query sits at the last position and sees every key (each decoding step):
    the request carries no mask, so no kernel builds or checks one; a window still applies."""
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 9, 8)
    assert AttentionRequest.build(q, k, k, causal=True).mask is None
    assert AttentionRequest.build(q, k, k, causal=True, window=(3, 0)).mask.materialize(1, 9).sum() == 4
    assert AttentionRequest.build(torch.randn(1, 2, 2, 8), k, k, causal=True).mask is not None
