"""attnkit.nn.Linear: the oneDNN inference path equals F.linear; training and float64 never take it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnkit.nn import Linear, use_onednn
from attnkit.nn import linear as linear_module

needs_onednn = pytest.mark.skipif(not linear_module._AVAILABLE, reason="this PyTorch build has no oneDNN linear")


def _layer(n_in: int, n_out: int, bias: bool = True, dtype=torch.float32) -> Linear:
    torch.manual_seed(0)
    return Linear(n_in, n_out, bias=bias).to(dtype)


@needs_onednn
@pytest.mark.parametrize("shape, n_out", [((1, 768), 2304), ((3, 5, 384), 1536), ((2, 3, 4, 512), 1024),
                                          ((7, 1536), 384), ((1, 1, 3072), 768)])
@pytest.mark.parametrize("bias", [True, False])
def test_inference_path_equals_f_linear(shape, n_out, bias):
    layer = _layer(shape[-1], n_out, bias)
    x = torch.randn(*shape)
    assert linear_module._large(x, layer.weight)  # these sizes take the oneDNN path
    with torch.no_grad():
        ours = layer(x)
        expected = F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    assert ours.shape == (*shape[:-1], n_out) and ours.dtype == torch.float32
    # float32 rounding of a K-term dot product: well under 1e-5 of the output's scale
    assert (ours.double() - expected).abs().max() <= 1e-5 * expected.abs().max()


@needs_onednn
def test_non_contiguous_input_bfloat16_and_empty_batches():
    layer = _layer(768, 1024)
    x = torch.randn(768, 6).T  # (6, 768), transposed strides
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-4, rtol=1e-5)
        half = layer.to(torch.bfloat16)
        xb = x.bfloat16()
        torch.testing.assert_close(half(xb).float(), F.linear(xb, half.weight, half.bias).float(), atol=0.1,
                                   rtol=0.02)
        assert half(torch.randn(0, 768, dtype=torch.bfloat16)).shape == (0, 1024)


def test_gradients_small_sizes_float64_and_switched_off_take_f_linear():
    layer = _layer(768, 1024)
    x = torch.randn(4, 768, requires_grad=True)
    out = layer(x)  # autograd on: exactly F.linear, with its gradients
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias)) and out.grad_fn is not None
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    small = _layer(32, 32)
    tiny = torch.randn(9, 32)  # more rows than a decoding step's C matmul takes
    with torch.no_grad():
        assert not linear_module._large(tiny, small.weight)  # below the crossover: F.linear
        assert torch.equal(small(tiny), F.linear(tiny, small.weight, small.bias))
        double = _layer(768, 1024, dtype=torch.float64)
        xd = torch.randn(3, 768, dtype=torch.float64)  # float64: neither the C matmul nor oneDNN
        assert torch.equal(double(xd), F.linear(xd, double.weight, double.bias))
        previous = use_onednn(False)
        try:
            xf = torch.randn(3, 768)
            assert torch.equal(layer(xf), F.linear(xf, layer.weight, layer.bias))
        finally:
            use_onednn(previous)
    assert linear_module.onednn_enabled() == linear_module._AVAILABLE


def test_state_dict_is_a_torch_linear_state_dict():
    ours, theirs = _layer(16, 8), torch.nn.Linear(16, 8)
    theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.Linear) and list(ours.state_dict()) == ["weight", "bias"]
