"""attnkit's C matmul for decoding steps (csrc/gemv.c, through ``native.gemv``) and ``nn.Linear``'s use of it.

Expected values come from float64 (``x.double() @ w.double().T``), with bfloat16 weights widened first (exact),
so one tolerance serves both weight types. The tolerance follows tests/helpers.py: twice the error of PyTorch's
float32 matmul on the same inputs, plus the float32 rounding floor; a single wrong or missing term is far above it.
"""

from __future__ import annotations


import pytest
import torch
from torch import Tensor

from attnkit.functional.kernels import native
from attnkit.nn import Linear
from attnkit.nn.linear import linears
from helpers import DTYPE_IDS, assert_close, baseline_atol, magnitude, needs_native_symbol


needs_gemv = needs_native_symbol("attnkit_gemv_many")

OUTS = (1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 576, 1000)  # panels of 8/4/2 and their tails; bands of 64 a thread
INS = (1, 15, 16, 17, 33, 576, 1000, 1536)  # the masked tail of 16-wide loads: none, 1, 15 and 8 features


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weight(out: int, n_in: int, dtype: torch.dtype, seed: int) -> Tensor:
    return torch.randn(out, n_in, generator=_gen(seed)).to(dtype)


def _padded_x(rows: int, n_in: int, seed: int, pad: int = 5) -> Tensor:
    """x (rows, n_in) float32 as a slice of a wider tensor (row stride n_in + pad) whose extra columns hold NaN
    and inf: a load past the input's end would turn rows into NaN."""
    wide = torch.full((rows, n_in + pad), float("nan"))
    wide[:, n_in + 1:] = float("inf")
    wide[:, :n_in] = torch.randn(rows, n_in, generator=_gen(seed))
    return wide[:, :n_in]


def _check(y: Tensor | None, x: Tensor, w: Tensor, what: str) -> None:
    """y against x · wᵀ in float64, within 2x PyTorch's float32 error plus the float32 floor."""
    assert y is not None, f"{what}: gemv refused inputs it takes"
    assert y.dtype == torch.float32 and y.shape == (x.shape[0], w.shape[0]), f"{what}: {y.dtype} {tuple(y.shape)}"
    reference = x.double() @ w.double().T
    baseline = x @ w.float().T  # PyTorch's float32 matmul on the same values
    assert_close(y, reference, atol=baseline_atol(baseline, reference, torch.float32), what=what)


@pytest.fixture
def threads():
    """Sets torch's thread count (gemv hands it to C) for the test, then restores it."""
    saved = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(saved)


# ----------------------------------------------------------------------------------------------------------------
# native.gemv


@needs_gemv
@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"{n}thr")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("n_in", INS, ids=lambda n: f"in{n}")
def test_gemv_every_row_count_and_shape(n_in, dtype, n_threads, threads):
    """B = 1..8 rows (panels of 8, 4 or 2 rows, then single rows) for every out, from a strided x."""
    threads(n_threads)
    for out in OUTS:
        w = _weight(out, n_in, dtype, seed=out * 7919 + n_in)
        w_before = w.clone()
        for rows in range(1, native.GEMV_ROWS + 1):
            x = _padded_x(rows, n_in, seed=rows * 104729 + out * 31 + n_in)
            x_before = x.clone()
            y = native.gemv(x, w)
            _check(y, x, w, f"out={out} in={n_in} rows={rows} {DTYPE_IDS[dtype]} threads={n_threads}")
            assert torch.equal(x, x_before), f"out={out} in={n_in} rows={rows}: gemv changed x"
        assert torch.equal(w, w_before), f"out={out} in={n_in}: gemv changed the weight"


@needs_gemv
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_gemv_odd_strides_and_empty_sizes(dtype, threads):
    """x rows that share memory (stride 0, an expanded row), a weight slice with a storage offset, rows of a
    (B, N, in) batch at N - 1 (a decoding step's last positions), and empty out / in."""
    threads(2)
    w = _weight(130, 40, dtype, seed=1)
    row = torch.randn(1, 40, generator=_gen(2))
    _check(native.gemv(row.expand(8, 40), w), row.expand(8, 40), w, "expanded row (stride 0)")
    offset = _weight(300, 40, dtype, seed=3)[170:]  # contiguous, not at its storage's start
    _check(native.gemv(row.expand(3, 40), offset), row.expand(3, 40), offset, "weight with a storage offset")
    hidden = torch.randn(6, 11, 40, generator=_gen(4))
    last = hidden[:, -1]  # (6, 40), rows 11 * 40 floats apart
    _check(native.gemv(last, w), last, w, "last positions of a batch")
    assert torch.equal(native.gemv(row, torch.zeros(0, 40, dtype=dtype)), torch.zeros(1, 0))
    assert torch.equal(native.gemv(torch.zeros(3, 0), torch.zeros(5, 0, dtype=dtype)), torch.zeros(3, 5))


@needs_gemv
def test_c_function_writes_only_its_rows_and_refuses_other_row_counts():
    """attnkit_gemv called directly with rows of y inside a NaN-filled buffer (row stride wider than out): only
    y[:B, :out] changes; B = 0 and B = 9 return 1 and write nothing."""
    lib = native._library()[0]
    out, n_in = 37, 21
    w = _weight(out, n_in, torch.float32, seed=5)
    x = _padded_x(native.GEMV_ROWS + 1, n_in, seed=6)
    for rows in (0, 1, 3, 8, 9):
        buffer = torch.full((native.GEMV_ROWS + 3, out + 6), float("nan"))  # y starts at row 1, column 2
        y_ptr = buffer.data_ptr() + (buffer.stride(0) + 2) * buffer.element_size()
        status = lib.attnkit_gemv(w.data_ptr(), 0, out, n_in, x.data_ptr(), x.stride(0), rows, y_ptr,
                                  buffer.stride(0), 2)
        assert status == (0 if 1 <= rows <= native.GEMV_ROWS else 1), f"rows={rows}: status {status}"
        written = torch.zeros_like(buffer, dtype=torch.bool)
        if status == 0:
            written[1:1 + rows, 2:2 + out] = True
            _check(buffer[1:1 + rows, 2:2 + out], x[:rows], w, f"direct call, rows={rows}")
        assert buffer[~written].isnan().all(), f"rows={rows}: written outside y[:{rows}, :{out}]"


@needs_gemv
@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"{n}thr")
def test_nan_and_inf_stay_in_their_rows(n_threads, threads):
    """A NaN in row 0 of x makes row 0 NaN only; an inf in row 1 gives row 1 the float64 reference's signed
    infinities; +inf and -inf in row 2 give NaN wherever the reference has it; a NaN weight row makes its column
    NaN. Other entries as usual."""
    threads(n_threads)
    out, n_in = 200, 35
    w = _weight(out, n_in, torch.float32, seed=7)
    x = _padded_x(5, n_in, seed=8).clone()
    x[0, 3] = float("nan")
    x[1, 34] = float("inf")  # in the masked tail
    x[2, 0], x[2, 20] = float("inf"), float("-inf")
    w_nan = w.clone()
    w_nan[150, 16] = float("nan")
    for weight, what in ((w, "finite weight"), (w_nan, "NaN in weight row 150")):
        y = native.gemv(x, weight)
        reference = x.double() @ weight.double().T
        assert y is not None and torch.equal(y.isnan(), reference.isnan()), f"{what}: NaN where float64 has none"
        infinite = reference.isinf()
        assert torch.equal(y[infinite].double(), reference[infinite]), f"{what}: infinities differ from float64"
        finite_w = weight.isfinite().all(dim=1)  # the other columns of rows 3 and 4 are ordinary products
        _check(y[3:][:, finite_w].contiguous(), x[3:], weight[finite_w], f"{what}, rows 3-4")


@needs_gemv
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_gemv_lm_head_of_smollm2(dtype, threads):
    """SmolLM2-135M's LM head: 49152 x 576, for one row and for eight (bands of many panels over two threads)."""
    threads(2)
    w = _weight(49152, 576, dtype, seed=9)
    for rows in (1, 8):
        x = torch.randn(rows, 576, generator=_gen(rows))
        _check(native.gemv(x, w), x, w, f"49152 x 576, rows={rows}, {DTYPE_IDS[dtype]}")


def _refusals() -> list:
    x, w = torch.randn(2, 16), torch.randn(24, 16)
    cases = {
        "0-rows": (torch.randn(0, 16), w),
        "9-rows": (torch.randn(9, 16), w),
        "x-1d": (torch.randn(16), w),
        "x-3d": (torch.randn(1, 2, 16), w),
        "x-float64": (x.double(), w),
        "x-bfloat16": (x.bfloat16(), w.bfloat16()),
        "weight-float16": (x, w.half()),
        "weight-float64": (x, w.double()),
        "weight-transposed": (x, torch.randn(16, 24).T),
        "weight-1d": (x, torch.randn(16)),
        "x-last-stride-2": (torch.randn(2, 32)[:, ::2], w),
        "in-mismatch": (torch.randn(2, 15), w),
        "weight-in-mismatch": (x, torch.randn(24, 17)),
    }
    return [pytest.param(*inputs, id=name) for name, inputs in cases.items()]


@needs_gemv
@pytest.mark.parametrize("x, weight", _refusals())
def test_gemv_refuses_what_it_does_not_take(x, weight):
    assert native.gemv(torch.randn(2, 16), torch.randn(24, 16)) is not None  # the valid base case is taken
    assert native.gemv(x, weight) is None


@needs_gemv
def test_gemv_refuses_a_scalar_x():
    assert native.gemv(torch.tensor(1.0), torch.randn(24, 16)) is None


@needs_gemv
def test_gemv_is_off_with_attnkit_native_0(monkeypatch):
    x, w = torch.randn(2, 16), torch.randn(24, 16)
    assert native.gemv(x, w) is not None  # taken until it is turned off
    monkeypatch.setenv("ATTNKIT_NATIVE", "0")
    assert native.gemv(x, w) is None


# ----------------------------------------------------------------------------------------------------------------
# nn.Linear / nn.linear.linear


@pytest.fixture
def gemv_calls(monkeypatch):
    """Counts native.gemv's calls (what linear calls), passing them through."""
    calls = []
    real = native.gemv

    def counting(x: Tensor, weight: Tensor) -> Tensor | None:
        calls.append(tuple(x.shape))
        return real(x, weight)

    monkeypatch.setattr(native, "gemv", counting)
    return calls


def _layer(n_in: int, n_out: int, bias: bool, seed: int) -> Linear:
    torch.manual_seed(seed)
    layer = Linear(n_in, n_out, bias=bias)
    with torch.no_grad():  # biases as large as the products, so a bias left out or added twice shows
        if layer.bias is not None:
            layer.bias.normal_()
    return layer


def _reference(x: Tensor, layer: Linear) -> Tensor:
    """x · Wᵀ + b in float64 from the layer's own (possibly bf16-rounded) values."""
    y = x.double() @ layer.weight.double().T
    return y if layer.bias is None else y + layer.bias.double()


def _check_linear(y: Tensor, x: Tensor, layer: Linear, what: str) -> None:
    reference = _reference(x, layer)
    baseline = (x.float() @ layer.weight.float().T).double()
    if layer.bias is not None:
        baseline = baseline + layer.bias.double()
    assert y.shape == reference.shape and y.dtype == x.dtype, f"{what}: {y.dtype} {tuple(y.shape)}"
    atol = baseline_atol(baseline, reference, torch.float32)
    rtol = 2.0**-8 if x.dtype == torch.bfloat16 else 0.0  # the float32 result rounded once to bfloat16
    assert_close(y, reference, atol=atol, rtol=rtol, what=what)


@needs_gemv
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_linear_decoding_rows_take_gemv_and_match_float64(bias, gemv_calls):
    """(B, 1, in) for B = 1..8 under no_grad, inference_mode and with frozen weights: each call goes through
    gemv once, and the result (bias included) equals float64."""
    layer = _layer(100, 129, bias, seed=10)
    for rows in range(1, native.GEMV_ROWS + 1):
        x = torch.randn(rows, 1, 100, generator=_gen(rows))
        with torch.no_grad():
            _check_linear(layer(x), x, layer, f"no_grad, B={rows}")
        with torch.inference_mode():
            _check_linear(layer(x), x, layer, f"inference_mode, B={rows}")
    layer.requires_grad_(False)
    x = torch.randn(4, 1, 100, generator=_gen(11))
    y = layer(x)  # grad mode on, nothing requires grad
    assert y.grad_fn is None
    _check_linear(y, x, layer, "frozen weights")
    assert len(gemv_calls) == 2 * native.GEMV_ROWS + 1, gemv_calls


@needs_gemv
def test_linear_rows_are_counted_over_all_leading_dims(gemv_calls):
    """Rows are x.numel() // in: (2, 4, in) and (8, in) take gemv, (3, 3, in) and (9, 1, in) do not; a last
    position sliced from a longer sequence (row stride N * in) takes it too."""
    layer = _layer(64, 96, True, seed=12)
    hidden = torch.randn(8, 5, 64, generator=_gen(13))
    with torch.no_grad():
        for x, takes in ((hidden[:2, :4], True), (hidden[:, 0], True), (hidden[:3, :3], False),
                         (torch.randn(9, 1, 64, generator=_gen(14)), False), (hidden[:, -1:], True)):
            before = len(gemv_calls)
            _check_linear(layer(x), x, layer, f"x {tuple(x.shape)}")
            assert (len(gemv_calls) > before) == takes, f"x {tuple(x.shape)}: gemv called {gemv_calls[before:]}"


@needs_gemv
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_bfloat16_linear_matches_float64_of_its_bf16_weights(bias, gemv_calls):
    layer = _layer(576, 200, bias, seed=15).to(torch.bfloat16)
    for rows in (1, 3, 8):
        x = torch.randn(rows, 1, 576, generator=_gen(rows)).bfloat16()
        with torch.no_grad():
            _check_linear(layer(x), x, layer, f"bf16, B={rows}")
    assert len(gemv_calls) == 3


def test_training_never_takes_gemv_and_has_float64_gradients(monkeypatch):
    """With gradients wanted (weights or x requiring grad), linear is F.linear: a grad_fn, and backward's
    gradients equal float64's. gemv raises if called."""

    def forbidden(x: Tensor, weight: Tensor) -> Tensor | None:
        raise AssertionError("native.gemv called while gradients are needed")

    monkeypatch.setattr(native, "gemv", forbidden)
    layer = _layer(70, 90, True, seed=16)
    for rows in (1, 8):
        x = torch.randn(rows, 1, 70, generator=_gen(rows), requires_grad=True)
        g = torch.randn(rows, 1, 90, generator=_gen(100 + rows))
        layer.zero_grad()
        y = layer(x)
        assert y.grad_fn is not None
        _check_linear(y.detach(), x.detach(), layer, f"training forward, B={rows}")
        y.backward(g)
        g64, x64, w64 = g.double().reshape(rows, 90), x.detach().double().reshape(rows, 70), layer.weight.double()
        expected_grads = {"x": g64 @ w64, "weight": g64.T @ x64, "bias": g64.sum(0)}
        for name, grad in (("x", x.grad.reshape(rows, 70)), ("weight", layer.weight.grad), ("bias", layer.bias.grad)):
            expected = expected_grads[name]
            # float32 sums of at most 90 products: ~1e-6 of their scale; 1e-5 leaves room, catches any wrong term
            assert_close(grad, expected, atol=1e-5 * magnitude(expected), what=f"grad of {name}, B={rows}")
    x = torch.randn(2, 70, generator=_gen(17), requires_grad=True)
    frozen = _layer(70, 90, False, seed=18).requires_grad_(False)
    assert frozen(x).grad_fn is not None  # x alone requiring grad also keeps autograd


# ----------------------------------------------------------------------------------------------------------------
# several weights in one call: native.gemv_many and nn.linear.linears


@needs_gemv
@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"{n}thr")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_IDS.get)
def test_gemv_many_is_the_separate_products_side_by_side(dtype, n_threads, threads):
    """Each weight's columns of the result are bitwise what gemv gives it alone (every row runs the same sums,
    whatever band or panel it falls in), and all of them match float64."""
    threads(n_threads)
    for outs, n_in in (((64, 16, 16), 48), ((7, 9, 130), 33), ((576, 192, 192), 576), ((1,), 1)):
        weights = [_weight(out, n_in, dtype, seed=20 + i) for i, out in enumerate(outs)]
        for rows in range(1, native.GEMV_ROWS + 1):
            x = _padded_x(rows, n_in, seed=rows)
            y = native.gemv_many(x, weights)
            assert y is not None and y.shape == (rows, sum(outs)), f"outs={outs}, rows={rows}"
            start = 0
            for w in weights:
                alone = native.gemv(x, w)
                assert alone is not None
                assert torch.equal(y[:, start:start + w.shape[0]], alone), f"outs={outs}, rows={rows}"
                _check(y[:, start:start + w.shape[0]].contiguous(), x, w, f"outs={outs}, rows={rows}")
                start += w.shape[0]


@needs_gemv
def test_gemv_many_refuses_mixed_weights():
    x = torch.randn(2, 16)
    assert native.gemv_many(x, [torch.randn(8, 16), torch.randn(8, 16)]) is not None  # two alike are taken
    assert native.gemv_many(x, []) is None
    assert native.gemv_many(x, [torch.randn(8, 16), torch.randn(8, 16).bfloat16()]) is None  # two dtypes
    assert native.gemv_many(x, [torch.randn(8, 16), torch.randn(8, 17)]) is None  # two widths
    assert native.gemv_many(x, [torch.randn(8, 16), torch.randn(16, 8).T]) is None  # one not contiguous


@needs_gemv
def test_linears_equal_the_layers_and_stay_out_of_training():
    layers = [_layer(40, out, bias, seed=30 + out) for out, bias in ((24, True), (8, False), (8, True))]
    for rows in (1, 3, 8):
        x = torch.randn(rows, 1, 40, generator=_gen(rows))
        with torch.no_grad():
            together = linears(x, layers)
            assert together is not None
            for layer, y in zip(layers, together):
                assert torch.equal(y, layer(x)) and y.shape == (rows, 1, layer.out_features)
    x = torch.randn(9, 1, 40)
    with torch.no_grad():
        assert linears(x, layers) is None  # more rows than a decoding step: the caller calls the layers
    assert linears(torch.randn(2, 1, 40), layers) is None  # the weights want gradients


# ---- the attention norm of a decoding step (native.rms_rows, RMSNorm's inference path) ----------------------

needs_rms = needs_native_symbol("attnkit_rms_rows")


def rms_float64(x: Tensor, weight: Tensor, eps: float, unit_offset: bool) -> Tensor:
    x64 = x.double()
    normed = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps)
    return normed * ((1.0 + weight.double()) if unit_offset else weight.double())


@needs_rms
@pytest.mark.parametrize("unit_offset", [False, True], ids=["weight", "gemma-1+weight"])
@pytest.mark.parametrize("shape", [(1, 576), (8, 576), (2, 4, 17), (3, 1, 1)])
def test_rms_rows_match_float64(shape, unit_offset):
    from attnkit.nn import RMSNorm

    x = 3 * torch.randn(*shape, generator=_gen(1))
    x.view(-1, shape[-1])[0] *= 1e-3  # a row where eps is a third of mean(x^2): a wrong or missing eps shows
    if x.numel() // shape[-1] > 1:
        x.view(-1, shape[-1])[-1] = 0.0  # all zeros: exactly 0 (eps keeps it from 0 / 0)
    norm = RMSNorm(shape[-1], eps=1e-5, unit_offset=unit_offset)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1], generator=_gen(2)))
        direct = native.rms_rows(x, norm.weight, 1e-5, unit_offset)
        through_module = norm(x)
    assert direct is not None and torch.equal(direct, through_module)  # the module's inference path is this call
    expected = rms_float64(x, norm.weight, 1e-5, unit_offset)
    torch.testing.assert_close(direct.double(), expected, rtol=2e-6, atol=1e-6)


@needs_rms
def test_rms_rows_declines_what_it_does_not_take():
    w = torch.ones(16)
    assert native.rms_rows(torch.randn(9, 16), w, 1e-6, False) is None  # more rows than a decoding step's
    assert native.rms_rows(torch.randn(2, 16).double(), w.double(), 1e-6, False) is None
    assert native.rms_rows(torch.randn(16, 2).t(), w, 1e-6, False) is None  # not contiguous
    assert native.rms_rows(torch.randn(2, 16), torch.ones(8), 1e-6, False) is None


@needs_rms
def test_rms_norm_keeps_pytorch_where_gradients_are_wanted(monkeypatch):
    from attnkit.nn import RMSNorm

    calls = []
    real = native.rms_rows
    monkeypatch.setattr(native, "rms_rows", lambda *a: calls.append(1) or real(*a))
    norm = RMSNorm(16)
    x = torch.randn(2, 16, requires_grad=True)
    norm(x).sum().backward()  # training: PyTorch, differentiable
    assert not calls and x.grad is not None
    with torch.no_grad():
        norm(x)
    assert calls == [1]


@needs_rms
def test_a_traced_frozen_model_records_pytorch_operations():
    """torch.jit.trace sees only PyTorch operations: the C paths step aside while it records, or the trace would
    replay an empty output."""
    from attnkit.nn import RMSNorm

    model = torch.nn.Sequential(RMSNorm(64), Linear(64, 32)).requires_grad_(False)
    traced = torch.jit.trace(model, torch.randn(2, 64))
    x = torch.randn(2, 64, generator=_gen(7))
    torch.testing.assert_close(traced(x), model(x))
