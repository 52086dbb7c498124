"""Shared test helpers: the float64 reference, tolerances derived from a baseline, a locating
``assert_close``, and a switch that makes the tiled kernel use small tiles.

Tolerance rule (STYLE.md "Tests"): a kernel run in dtype X may be off the float64 reference by at most
twice what the dense kernel run in dtype X is off, plus a rounding floor for X. The dense kernel itself
cannot be judged by that rule (it would compare with itself), so it meets a fixed bound. Both the floors
and the fixed bounds sit in the one ``TOLERANCE`` table.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

import attnkit
from attnkit.functional.kernels import native
from attnkit.functional.kernels import tiled as tiled_module
from attnkit.models import GPT, GPTConfig

DTYPES = (torch.float64, torch.float32, torch.bfloat16)
DTYPE_IDS = {torch.float64: "f64", torch.float32: "f32", torch.bfloat16: "bf16"}

# The one table of fixed tolerances, keyed by (kernel, dtype); each is relative to the magnitude of the
# compared tensor, max(1, max |expected|).
#   ("floor", X): the rounding floor any kernel in X may add to 2x the dense kernel's own error in X.
#   ("dense", X): the dense kernel in X against the float64 reference. The baseline rule cannot judge
#                 the dense kernel (it would compare it with itself), so it meets a fixed bound.
TOLERANCE = {
    # ~4500 ulps of 2.2e-16: a different summation order over ~1e3 keys and the online-softmax
    # rescaling exp(m_old - m_new) each add a few ulps per step; still catches any real mistake.
    ("floor", torch.float64): 1e-12,
    # ~8 ulps of 1.2e-7: reductions in a different order than the dense kernel's matmul.
    ("floor", torch.float32): 1e-6,
    # ~1 ulp of 7.8e-3 for O(1) values: one extra rounding of the output or of a probability.
    ("floor", torch.bfloat16): 1e-2,
    # ~1 ulp of 9.8e-4 for O(1) values, as for bfloat16.
    ("floor", torch.float16): 1e-3,
    # against an independent float64 implementation (naive_attention): only summation order differs
    # (measured ~5e-15).
    ("dense", torch.float64): 1e-12,
    # float32 logits from a float32 matmul (rel. error ~ sqrt(D) * 6e-8 of |q||k|), softmax, and a second
    # matmul over up to ~1e3 keys: measured <= 1.2e-6 over test_kernels' cases; 1e-5 leaves ~8x.
    ("dense", torch.float32): 1e-5,
    # bfloat16 logits (8-bit mantissa: 4e-3 relative), probabilities rounded to bf16 again before the
    # value matmul: measured <= 1.5e-2 over test_kernels' cases; 5e-2 leaves ~3x.
    ("dense", torch.bfloat16): 5e-2,
}


def magnitude(t: Tensor) -> float:
    """max(1, max |t|) over finite entries: the scale the relative tables are applied to."""
    t = t.detach().to(torch.float64)
    finite = t[torch.isfinite(t)]
    return max(1.0, finite.abs().max().item()) if finite.numel() else 1.0


def _abs_diff(a: Tensor, e: Tensor) -> Tensor:
    """|a - e| elementwise, where equal infinities count as 0 and a NaN on either side as inf."""
    diff = torch.where(a == e, torch.zeros_like(a), (a - e).abs())  # inf == inf is no error
    return torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)  # NaN always is


def max_abs_error(actual: Tensor, expected: Tensor) -> float:
    """Largest |actual - expected|, where equal infinities count as 0 and a NaN on one side as inf."""
    a, e = actual.detach().to(torch.float64), expected.detach().to(torch.float64)
    return _abs_diff(a, e).max().item() if a.numel() else 0.0


def assert_close(actual: Tensor, expected: Tensor, *, atol: float, rtol: float = 0.0, what: str = "tensor") -> None:
    """Assert |actual - expected| <= atol + rtol * |expected| elementwise; equal infinities match.

    On failure the message gives the share of elements off, the largest difference, where it is, and
    the two values there (xFormers' ``assert_allclose``).
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a, e = actual.detach().to(torch.float64), expected.detach().to(torch.float64)
    if a.numel() == 0:
        return
    diff = _abs_diff(a, e)
    allowed = atol + rtol * e.abs().nan_to_num(posinf=0.0, neginf=0.0)
    bad = diff > allowed
    if not bad.any():
        return
    worst = int(torch.argmax(torch.where(bad, diff, torch.zeros_like(diff))).item())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
    n_bad = int(bad.sum().item())
    raise AssertionError(
        f"{what}: {n_bad}/{a.numel()} elements ({100 * n_bad / a.numel():.2f}%) off; "
        f"max abs diff {diff.flatten()[worst].item():.3e} at index {index} "
        f"(actual {a[index].item():.6g}, expected {e[index].item():.6g}); atol={atol:.3e} rtol={rtol:.3e}")


def baseline_atol(baseline: Tensor, reference: Tensor, dtype: torch.dtype) -> float:
    """2x the dense kernel's error in ``dtype`` plus the rounding floor, scaled to the reference."""
    return 2 * max_abs_error(baseline, reference) + TOLERANCE["floor", dtype] * magnitude(reference)


def dense_atol(reference: Tensor, dtype: torch.dtype) -> float:
    """The dense kernel's fixed tolerance in ``dtype``, scaled to the reference."""
    return TOLERANCE["dense", dtype] * magnitude(reference)


# --------------------------------------------------------------------------------------------------
# Running a kernel: forward, lse and gradients in one go


@dataclass
class Inputs:
    """Attention inputs; ``bias`` is a float tensor, an attnkit bias object, or None."""

    q: Tensor
    k: Tensor
    v: Tensor
    bias: object = None
    options: dict | None = None  # mask, causal, window, softcap, scale, ...

    def to(self, dtype: torch.dtype) -> Inputs:
        bias = self.bias.to(dtype) if isinstance(self.bias, Tensor) else self.bias
        return Inputs(self.q.to(dtype), self.k.to(dtype), self.v.to(dtype), bias, self.options)


@dataclass
class Result:
    out: Tensor
    lse: Tensor | None
    grads: dict[str, Tensor]  # "q", "k", "v" and "bias" when asked for


@contextlib.contextmanager
def small_tiles(block_q: int = 16, block_k: int = 16, max_chunk: int = 32):
    """Make the tiled kernel plan with small tiles, so small inputs span several query blocks, key
    blocks and chunks (multi-chunk online softmax)."""
    saved = tiled_module.BLOCK_Q, tiled_module.BLOCK_K, tiled_module.MAX_CHUNK
    tiled_module.BLOCK_Q, tiled_module.BLOCK_K, tiled_module.MAX_CHUNK = block_q, block_k, max_chunk
    try:
        yield
    finally:
        tiled_module.BLOCK_Q, tiled_module.BLOCK_K, tiled_module.MAX_CHUNK = saved


@contextlib.contextmanager
def native_off():
    """Make the tiled kernel's forward take its PyTorch path even where the native one would serve."""
    saved = os.environ.get("ATTNKIT_NATIVE")
    os.environ["ATTNKIT_NATIVE"] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["ATTNKIT_NATIVE"]
        else:
            os.environ["ATTNKIT_NATIVE"] = saved


# Kernel variants under test: the registered kernels, plus the tiled kernel with 16x16 tiles and
# 32-key chunks so that small cases exercise its multi-tile paths.
KERNELS = ("dense", "sdpa", "tiled", "tiled-16")
# "tiled-torch": the tiled kernel with its native forward turned off, so the PyTorch path it falls back
# to is held to the same tests. It differs from "tiled" only where the native forward serves: float32
# without bias, softcap or dropout, on a machine where the extension runs.
NATIVE_OFF = () if native.status() else ("tiled-torch",)
# Tests of the native forward itself: skipped where it cannot serve, except in CI, which sets
# ATTNKIT_REQUIRE_NATIVE=1 so that a build without it fails there.
needs_native = pytest.mark.skipif(bool(native.status()) and os.environ.get("ATTNKIT_REQUIRE_NATIVE") != "1",
                                  reason=f"native forward unavailable: {native.status()}")


def needs_native_symbol(symbol: str) -> pytest.MarkDecorator:
    """Skip where the extension cannot run ``symbol`` (a C function of attnkit._native), except in CI, which sets
    ATTNKIT_REQUIRE_NATIVE=1 so that a build without it fails there, as needs_native."""
    lib = native._library()[0]
    why = native.status() or ("" if lib is not None and hasattr(lib, symbol) else
                              f"the native extension predates {symbol}")
    return pytest.mark.skipif(bool(why) and os.environ.get("ATTNKIT_REQUIRE_NATIVE") != "1",
                              reason=f"{symbol} unavailable: {why}")


def kernel_dtypes(dtypes=DTYPES) -> list:
    """(variant, dtype) parameters: every kernel of KERNELS in every dtype, and "tiled-torch" in float32."""
    pairs = [(variant, dtype) for variant in KERNELS for dtype in dtypes]
    pairs += [(variant, torch.float32) for variant in NATIVE_OFF if torch.float32 in dtypes]
    return [pytest.param(variant, dtype, id=f"{variant}-{DTYPE_IDS[dtype]}") for variant, dtype in pairs]


def kernel_context(variant: str):
    if variant == "tiled-16":
        return small_tiles()
    return native_off() if variant == "tiled-torch" else contextlib.nullcontext()


def kernel_name(variant: str) -> str:
    return "tiled" if variant.startswith("tiled") else variant


def run(variant: str, inputs: Inputs, *, grad_out: Tensor | None = None, bias_grad: bool = True,
        return_lse: bool = False, **extra) -> Result:
    """Run ``attnkit.attention`` with kernel ``variant`` on leaf copies of the inputs; when ``grad_out``
    is given, backpropagate it and collect the gradients (the bias's too if it is a tensor and
    ``bias_grad``)."""
    q, k, v = (t.detach().clone().requires_grad_(grad_out is not None) for t in (inputs.q, inputs.k, inputs.v))
    bias = inputs.bias
    if isinstance(bias, Tensor):
        bias = bias.detach().clone().requires_grad_(grad_out is not None and bias_grad)
    with kernel_context(variant):
        res = attnkit.attention(q, k, v, bias=bias, kernel=kernel_name(variant), return_lse=return_lse,
                                **(inputs.options or {}), **extra)
    out, lse = res if return_lse else (res, None)
    grads = {}
    if grad_out is not None:
        (out.to(torch.float64) * grad_out.to(torch.float64)).sum().backward()
        grads = {"q": q.grad, "k": k.grad, "v": v.grad}
        if isinstance(bias, Tensor) and bias.requires_grad:
            grads["bias"] = bias.grad
    return Result(out.detach(), lse, grads)


def reference(inputs: Inputs, *, grad_out: Tensor | None = None, return_lse: bool = False, **extra) -> Result:
    """The reference: the dense kernel on float64 copies of the inputs."""
    return run("dense", inputs.to(torch.float64), grad_out=grad_out, return_lse=return_lse, **extra)


# --------------------------------------------------------------------------------------------------
# An independent implementation, to check the reference itself


def naive_attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor | None = None, bias: Tensor | None = None,
                    scale: float | None = None, softcap: float | None = None) -> tuple[Tensor, Tensor]:
    """Textbook attention in float64 from an explicit bool ``visible`` (broadcastable to (B, H, Nq, Nk)):
    returns (out (B, H, Nq, Dv), lse (B, H, Nq)); rows with nothing visible give zeros and -inf."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if bias is not None:
        logits = logits + bias.double()
    if visible is not None:
        logits = logits.masked_fill(~visible, float("-inf"))
        v = torch.where(visible.any(dim=-2)[..., None], v, 0.0)  # unseen keys may hold NaN
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lse[..., None]).nan_to_num(0.0)  # -inf - -inf = NaN for empty rows
    return probs @ v, lse


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype) * scale


def padded_batch(vocab: int, n: int, padding: str) -> tuple[Tensor, Tensor | None]:
    """Token ids (2, n) drawn from 3..vocab-1 (seeded) and an attention mask (2, n), 1 = token: row 1 is full,
    row 0 has 3 pad tokens on the ``padding`` side ("left" or "right"); "none": no mask at all."""
    ids = torch.randint(3, vocab, (2, n), generator=torch.Generator().manual_seed(1))
    if padding == "none":
        return ids, None
    mask = torch.ones(2, n, dtype=torch.long)
    if padding == "left":
        mask[0, :3] = 0
    else:
        mask[0, -3:] = 0
    return ids, mask


__all__ = [
    "DTYPES", "DTYPE_IDS", "TOLERANCE", "KERNELS", "dense_atol", "Inputs", "Result", "assert_close", "baseline_atol",
    "kernel_context", "kernel_name", "magnitude", "max_abs_error", "naive_attention", "randn", "reference", "run",
    "small_tiles", "padded_batch",
]


def fit(model: torch.nn.Module, loss_fn, *, steps: int, lr: float) -> tuple[float, float]:
    """``steps`` Adam steps on ``loss_fn()``; returns (first loss, last loss). The last step's gradients
    stay on the parameters, for ``parameters_without_gradient``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return first, loss.item()


def parameters_without_gradient(model: torch.nn.Module) -> list[str]:
    """Names of parameters whose last gradient is missing or all zero."""
    return [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def assert_raises_naming(exc: type[Exception], words: list[str], fn, *args, **kwargs) -> None:
    """``fn(*args, **kwargs)`` raises ``exc`` whose message names every one of ``words``."""
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    missing = [w for w in words if w not in str(info.value)]
    assert not missing, f"{exc.__name__} message {str(info.value)!r} does not name {missing}"


_LOAD_CAPPED = """
import json, resource, sys, time
from attnkit import hub
# cap the address space at what is mapped now + 1 GiB: an allocation of the config's size fails
mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (mapped + 2 ** 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
results = []
for directory in sys.argv[1:]:
    start = time.perf_counter()
    try:
        hub.load(directory)
        results.append(["loaded", "", 0.0])
    except BaseException as error:
        results.append([type(error).__name__, str(error), time.perf_counter() - start])
print(json.dumps(results))
"""


def load_with_memory_capped(directories: list[str]) -> list[tuple[str, str, float]]:
    """``hub.load`` of each directory in one child process whose address space is capped at what it maps after its
    imports + 1 GiB (Linux): for each, ("loaded", "", 0) or (the error's class name, its message, seconds taken)."""
    import json
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _LOAD_CAPPED, *directories], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return [tuple(result) for result in json.loads(run.stdout)]



def default_sigint() -> None:
    """``preexec_fn`` for a child a test will Ctrl-C: SIGINT at its default disposition and unblocked, as a terminal's
    Ctrl-C finds a process, whatever the test worker's own disposition or mask (an ignored or blocked SIGINT is
    inherited across exec, and then Python never sees the signal)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def softmax_maps(*shape: int, seed: int = 0, causal: bool = False, first: float = 0.0) -> torch.Tensor:
    """Seeded random probabilities of ``shape`` (..., Nq, Nk); ``causal``: later keys (bottom-right) get exactly 0;
    ``first``: added to every logit of the first key (an attention sink)."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*shape, generator=g)
    logits[..., 0] += first
    if causal:
        nq, nk = shape[-2:]
        logits = logits.masked_fill(torch.ones(nq, nk, dtype=torch.bool).triu(nk - nq + 1), float("-inf"))
    return logits.softmax(-1)


def embedded(page: str) -> dict:
    """The data an attnkit HTML page carries (its JSON element)."""
    import json
    import re

    match = re.search(r'<script type="application/json" id="attnkit-data">(.*?)</script>', page, re.DOTALL)
    assert match, "no data element"
    return json.loads(match.group(1))


def unpack(packed: dict):
    """A map the page packed as base64 integers, back as float64 (numpy)."""
    import base64

    import numpy as np

    raw = np.frombuffer(base64.b64decode(packed["data"]), dtype="<u1" if packed["bytes"] == 1 else "<u2")
    return raw.reshape(packed["shape"]).astype(np.float64) / packed["scale"]


def words(n: int) -> list[str]:
    return [f"w{i}" for i in range(n)]


class RecordedPage:
    """A local file opened in the browser with every console error, page error, request and dialog recorded, and
    any request that leaves the file:// scheme blocked (the view's pages must work offline)."""

    def __init__(self, browser, path, **page_options):
        self.uri = path.resolve().as_uri()
        self.errors, self.requests, self.blocked, self.dialogs = [], [], [], []
        self.page = browser.new_page(**{"viewport": {"width": 1300, "height": 900}, **page_options})
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.route("**/*", self._route)

    def _route(self, route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def clean(self) -> None:
        """No error, no dialog, no injected code ran, no request but the file itself (and about: frames)."""
        assert not self.errors, self.errors
        assert not self.dialogs, f"a dialog opened: {self.dialogs}"
        assert self.page.evaluate("() => window.__pwned") is None, "injected code ran"
        others = [r for r in self.requests if r != self.uri and not r.startswith("about:")]
        assert not others and not self.blocked, f"requests {self.requests}, blocked {self.blocked}"


def small_decoder(**config) -> GPT:
    """A seeded 2-layer attnkit GPT of width 32 over 71 tokens with rotary positions (unless ``config`` says
    otherwise) and ``config`` (the attention, feed-forward and norm settings), in eval mode, its norms' weights (and
    LayerNorms' biases) drawn away from their initial values so that a norm read wrongly shows."""
    torch.manual_seed(0)
    config = {"vocab_size": 71, "max_seq_len": 64, "dim": 32, "num_layers": 2, "positions": "rope", **config}
    model = GPT(GPTConfig(**config)).eval()
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__ in ("RMSNorm", "LayerNorm"):
                module.weight.normal_(0.0, 0.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0.0, 0.5)
    return model
