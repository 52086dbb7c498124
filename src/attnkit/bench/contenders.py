"""What a benchmark times: one mask at one length (a ``Case``), the inputs, and each contender's call.

Contenders are named ``attnkit:<kernel>`` (any registered kernel, or ``auto``), ``torch:sdpa``
(``F.scaled_dot_product_attention``, given a dense bool mask built once outside the timing for the
sparse patterns) and ``torch:flex`` (``torch.compile(flex_attention)`` with a block mask; its
``create_block_mask`` and compile times are kept apart from its steady state).

Masks, all bottom-right aligned causal variants except ``dense`` (no mask) and ``document``:

    causal     query i sees keys j <= i
    window     causal sliding window of WINDOW keys: window=(WINDOW - 1, 0)
    document   DOCUMENTS packed documents of random lengths (seeded): i sees j iff same document
    bigbird    attnkit.masks.bigbird(**BIGBIRD): window + global tokens + random blocks
"""

from __future__ import annotations

import atexit
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import functional as AF
from ..functional import masks
from ..functional.masks import Mask
from ..functional.dispatch import select_kernel
from ..functional.request import AttentionRequest
from .measure import call_peak, mem_available

B, H, D = 1, 8, 64
DTYPE = torch.float32
WINDOW = 512  # keys visible to a query, itself included: window=(511, 0)
DOCUMENTS = 4
# in blocks: the paper's ITC form
BIGBIRD = {"window": 1, "num_global": 2, "num_random_blocks": 3, "block": 64, "seed": 0}
MASKS = ("dense", "causal", "window", "document", "bigbird")
MODES = ("fwd", "fwdbwd")
UNMASKED = ("dense", "causal")  # the only masks an approximate kernel (capabilities.exact False) is run on


class Skip(Exception):
    """This contender does not run on this configuration (reason in the message)."""


# --------------------------------------------------------------------------------------------------
# Masks


def causal_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def window_mod(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx <= WINDOW - 1)


def document_ids(n: int, documents: int = DOCUMENTS, seed: int = 0) -> Tensor:
    """(n,) document id of each position: ``documents`` packed documents of random lengths >= 1."""
    documents = max(1, min(documents, n))
    g = torch.Generator().manual_seed(seed)
    starts = (torch.randperm(n - 1, generator=g)[:documents - 1] + 1).sort().values  # first position of docs 1..
    ids = torch.zeros(n, dtype=torch.long)
    for s in starts.tolist():
        ids[s:] += 1
    return ids


@dataclass
class Case:
    """One mask at one length, in the form each contender takes."""

    name: str
    n: int
    mask: Mask | None  # the attnkit mask: counting and materializing
    attnkit_kw: dict  # keyword arguments of attnkit.attention
    sdpa_kw: dict | None  # SDPA's own arguments; None: SDPA gets the materialized mask
    mask_mod: Callable | None = None  # FlexAttention's, in closed form; None: looked up in the materialized mask

    def dense_mask(self) -> Tensor:
        """(n, n) bool, True = may attend."""
        t = self.mask.materialize(self.n, self.n)
        while t.dim() > 2:
            t = t[0]
        return t

    def flex_mask_mod(self) -> Callable | None:
        """FlexAttention's mask_mod; None without a mask (no block mask)."""
        if self.mask is None or self.mask_mod is not None:
            return self.mask_mod
        dense = self.dense_mask()
        return lambda b, h, q_idx, kv_idx: dense[q_idx, kv_idx]


def mask_case(name: str, n: int) -> Case:
    """The mask called ``name`` (one of MASKS) at length ``n``."""
    if name == "dense":
        return Case(name, n, None, {}, {})
    if name == "causal":
        return Case(name, n, masks.causal(), {"causal": True}, {"is_causal": True}, causal_mod)
    if name == "window":
        return Case(name, n, masks.sliding_window(WINDOW - 1, 0), {"window": (WINDOW - 1, 0)}, None, window_mod)
    if name == "document":
        ids = document_ids(n)
        mask = masks.document(ids)
        return Case(name, n, mask, {"mask": mask}, None, lambda b, h, q_idx, kv_idx: ids[q_idx] == ids[kv_idx])
    if name == "bigbird":
        mask = masks.bigbird(**BIGBIRD)
        return Case(name, n, mask, {"mask": mask}, None)
    raise ValueError(f"unknown mask {name!r}; choose from {', '.join(MASKS)}")


# --------------------------------------------------------------------------------------------------
# Inputs and calls


@dataclass
class Inputs:
    n: int
    mode: str
    q: Tensor  # (B, H, N, D)
    k: Tensor
    v: Tensor
    do: Tensor | None  # gradient of the output, for fwdbwd
    dense_mask: Tensor | None = None  # (N, N) for torch SDPA on a sparse pattern, built outside the timing


def make_inputs(case: Case, mode: str, need_dense_mask: bool) -> Inputs:
    """Seeded q, k, v (and dout for ``fwdbwd``, with q, k, v requiring grad), float32 (B, H, N, D)."""
    n = case.n
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(B, H, n, D, generator=g, dtype=DTYPE) for _ in range(3))
    do = None
    if mode == "fwdbwd":
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        do = torch.randn(B, H, n, D, generator=g, dtype=DTYPE)
    dm = case.dense_mask() if need_dense_mask and case.sdpa_kw is None else None
    return Inputs(n, mode, q, k, v, do, dm)


def make_call(fn: Callable[[Tensor, Tensor, Tensor], Tensor], inp: Inputs) -> Callable[[], None]:
    """One timed unit: a forward under no_grad, or a forward and backward with cleared gradients."""
    q, k, v, do = inp.q, inp.k, inp.v, inp.do
    if inp.mode == "fwd":
        def call():
            with torch.no_grad():
                fn(q, k, v)
    else:
        def call():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(do)
    return call


def label(kernel: str, mask: str) -> str:
    """How a contender is named in tables."""
    if kernel == "torch:sdpa":
        return {"dense": "torch sdpa", "causal": "torch sdpa is_causal"}.get(mask, "torch sdpa+bool mask")
    if kernel == "torch:flex":
        return "torch flex (compiled)"
    return f"attnkit {kernel.split(':')[1]}"


def _attnkit_fn(name: str, case: Case, inp: Inputs):
    kw = case.attnkit_kw
    req = AttentionRequest.build(inp.q, inp.k, inp.v, **kw)
    note = ""
    if name == "auto":
        note = "auto -> " + select_kernel(req, "auto").name
    else:
        kernel = AF.get_kernel(name)
        if not kernel.capabilities.exact and case.name not in UNMASKED:
            raise Skip(f"approximate kernel: timed on {' and '.join(UNMASKED)} only")
        reasons = kernel.not_supported_reasons(req)
        if reasons:
            raise Skip("refused by the kernel: " + "; ".join(reasons))
    if name == "dense":
        # logits, masked logits, exp, probs (+ saved tensors for backward) in float32
        need = B * H * case.n ** 2 * 4 * (4 if inp.mode == "fwd" else 6)
        avail = mem_available()
        if avail is not None and need > 0.8 * avail:
            raise Skip(f"would need ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available")
    return (lambda q, k, v: AF.attention(q, k, v, kernel=name, **kw)), note


def _sdpa_fn(case: Case, inp: Inputs):
    if case.sdpa_kw is not None:
        kw = case.sdpa_kw
        return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw)), ""
    dm = inp.dense_mask
    return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dm)), \
        f"dense bool mask {case.n}x{case.n} built once, outside the timing"


def make_fn(kernel: str, case: Case, inp: Inputs, flex_setup: FlexSetup | None = None,
            flex_steady_reps: int = 3):
    """fn(q, k, v) -> out for one contender, and a note; raises Skip."""
    if kernel.startswith("attnkit:"):
        return _attnkit_fn(kernel.split(":", 1)[1], case, inp)
    if kernel == "torch:sdpa":
        return _sdpa_fn(case, inp)
    if kernel == "torch:flex":
        if inp.mode == "fwdbwd" and inp.q.device.type == "cpu":
            raise Skip(f"FlexAttention has no CPU backward in torch {torch.__version__}: forward only")
        setup = flex_setup or FlexSetup(case.n, case.name)
        try:
            fn = setup_flex(case, inp, setup, flex_steady_reps)
        except Exception as e:  # noqa: BLE001 - record, don't crash
            setup.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            raise Skip("FlexAttention failed on this CPU: " + setup.error) from None
        return fn, f"compile (first call) {setup.compile_first_call_s:.2f} s"
    raise ValueError(f"unknown contender {kernel!r}")


# --------------------------------------------------------------------------------------------------
# FlexAttention: block mask and compile timed apart


def fresh_inductor_cache() -> None:
    """Unless the caller named a cache, compile into a fresh one, removed at exit, so that "compile time"
    means a cold compile in every run (child processes inherit the variable and reuse it)."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    path = tempfile.mkdtemp(prefix="attnkit-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    os.environ["ATTNKIT_BENCH_FRESH_INDUCTOR_CACHE"] = "1"
    atexit.register(shutil.rmtree, path, True)


def inductor_cache_note() -> str:
    if os.environ.get("ATTNKIT_BENCH_FRESH_INDUCTOR_CACHE"):
        return "fresh (per run)"
    return os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")


@dataclass
class FlexSetup:
    n: int
    mask: str
    block_mask_first_s: float | None = None
    block_mask_steady_s: float | None = None
    compile_first_call_s: float | None = None
    compile_kind: str = ""  # "cold" for the run's first compile on a fresh inductor cache
    error: str | None = None


# Process-wide on purpose: it describes the inductor cache, which is the process's (fresh_inductor_cache
# names one per process), so a second sweep in the same process compiles into a cache the first one filled.
_FLEX_COMPILES: list[tuple[int, str]] = []  # (N, mask) of each FlexAttention compiled in this process


def _block_mask(case: Case, setup: FlexSetup, steady_reps: int):
    from torch.nn.attention.flex_attention import create_block_mask

    mod = case.flex_mask_mod()
    if mod is None:
        return None
    n = case.n
    t0 = time.perf_counter()
    bm = create_block_mask(mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device="cpu")
    setup.block_mask_first_s = time.perf_counter() - t0
    steady = []
    for _ in range(min(steady_reps, 2) if setup.block_mask_first_s > 1.0 else steady_reps):
        t0 = time.perf_counter()
        create_block_mask(mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device="cpu")
        steady.append(time.perf_counter() - t0)
    setup.block_mask_steady_s = statistics.median(steady) if steady else None
    return bm


def setup_flex(case: Case, inp: Inputs, setup: FlexSetup, steady_reps: int = 3):
    """create_block_mask (timed: first call and steady state), then torch.compile(flex_attention) and its
    first call (timed: compile). Returns fn(q, k, v)."""
    from torch.nn.attention.flex_attention import flex_attention

    bm = _block_mask(case, setup, steady_reps)
    torch._dynamo.reset()  # every configuration compiles from scratch: the first call is the compile time
    compiled = torch.compile(flex_attention)
    fresh = os.environ.get("ATTNKIT_BENCH_FRESH_INDUCTOR_CACHE") and not _FLEX_COMPILES
    t0 = time.perf_counter()
    with torch.no_grad():
        compiled(inp.q, inp.k, inp.v, block_mask=bm)
    setup.compile_first_call_s = time.perf_counter() - t0
    setup.compile_kind = "cold (fresh inductor cache)" if fresh else \
        "inductor cache holds this run's earlier compiles" if _FLEX_COMPILES else "user's inductor cache"
    _FLEX_COMPILES.append((case.n, case.name))
    return lambda q, k, v: compiled(q, k, v, block_mask=bm)


# --------------------------------------------------------------------------------------------------
# Peak memory: run in a process of its own (measure.MemoryServer)


def memory_of(spec: dict) -> dict:
    """Build the inputs (and the dense mask or the compiled FlexAttention), then the peak of one call
    above the RSS before it. ``spec``: n, case, mode, kernel, warm, threads."""
    torch.set_num_threads(spec["threads"])
    case = mask_case(spec["case"], spec["n"])
    inp = make_inputs(case, spec["mode"], need_dense_mask=spec["kernel"] == "torch:sdpa")
    fn, _ = make_fn(spec["kernel"], case, inp, flex_steady_reps=0)
    return call_peak(make_call(fn, inp), spec["warm"])
