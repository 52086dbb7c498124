"""attnkit.distributed against single-process attnkit.attention, with 2, 3 and 4 processes (gloo on CPU).

Each world size starts one process group (``_spawn``) that runs every case of that size in turn; each rank
compares its shard of the distributed result — output, log-sum-exp, dq, dk, dv and the bias's gradient — with its
shard of the reference: ``attnkit.attention`` with the dense kernel on the whole sequence in float64, computed in
the same process from the same seeded tensors. Dropout's reference is built from the attention weights of the whole
sequence and the keep-mask's global coordinates: (W * keep / (1 - p)) @ v.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attnkit
from attnkit import distributed as cp
from attnkit import masks
from helpers import assert_close, baseline_atol, dense_atol, randn

# --------------------------------------------------------------------------------------------------
# Running a function in a process group


# every test here runs process groups: one xdist worker takes them all, one after another, so that two groups never
# share the two cores (or race for a free port) and each world's group is spawned once per session
pytestmark = pytest.mark.xdist_group("processes")

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_DEVICE = torch.device("cpu")  # where a child builds its tensors: its GPU under NCCL


def _child(rank: int, world: int, port: int, target: str, payload: object, outdir: str, timeout_s: float,
           backend: str) -> None:
    global _DEVICE
    torch.set_num_threads(1)
    if backend == "nccl":
        _DEVICE = torch.device("cuda", rank)
        torch.cuda.set_device(_DEVICE)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    try:
        result = TARGETS[target](rank, world, payload)
    except BaseException:  # reported to the parent, which fails the test with it
        result = {"crash": traceback.format_exc()}
    with open(os.path.join(outdir, f"{rank}.json"), "w") as f:
        json.dump(result, f)
    os._exit(0)  # no destroy_process_group: after a PeerError the group is broken and would wait for its peers


def _spawn(world: int, target: str, payload: object = None, *, timeout_s: float = 60, deadline_s: float = 300,
           backend: str = "gloo") -> list[dict | None]:
    """Run TARGETS[target](rank, world, payload) in ``world`` fresh processes of one gloo group; each rank's JSON
    result (None for a rank that wrote none)."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    with tempfile.TemporaryDirectory() as outdir:
        procs = [ctx.Process(target=_child, args=(rank, world, port, target, payload, outdir, timeout_s, backend))
                 for rank in range(world)]
        for proc in procs:
            proc.start()
        end = time.monotonic() + deadline_s
        for proc in procs:
            proc.join(max(0.0, end - time.monotonic()))
        hung = [rank for rank, proc in enumerate(procs) if proc.is_alive()]
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        assert not hung, f"ranks {hung} of {world} still running after {deadline_s} s"
        results = []
        for rank in range(world):
            path = os.path.join(outdir, f"{rank}.json")
            results.append(json.load(open(path)) if os.path.exists(path) else None)
    for rank, result in enumerate(results):
        assert not (result and "crash" in result), f"rank {rank} crashed:\n{result['crash']}"  # type: ignore[index]
    return results


# --------------------------------------------------------------------------------------------------
# The cases


@dataclass(frozen=True)
class Case:
    name: str
    options: str = "none"  # a key of OPTIONS
    strategy: str = "ring"
    layout: str = "zigzag"
    Nq: int = 24  # divisible by 2P for P = 2, 3, 4
    Nk: int = 24
    B: int = 2
    H: int = 4  # Ulysses cases use 2P heads
    Hkv: int = 2
    D: int = 8
    Dv: int = 6
    dtype: str = "f64"  # "f32": against the reference with the single-process float32 error as baseline
    kernel: str = "auto"
    bias_grad: bool = False
    lse: bool = False  # return_lse, and a loss that uses it

    def heads(self, world: int) -> tuple[int, int]:
        return (2 * world, self.Hkv) if self.strategy == "ulysses" else (self.H, self.Hkv)


def _document_ids(B: int, N: int) -> torch.Tensor:
    """(B, N) ids: row 0 three documents crossing chunk edges, row 1 one long document and a short one."""
    ids = torch.zeros(B, N, dtype=torch.long)
    ids[0, 7:], ids[0, 17:] = 1, 2
    ids[1:, N - 4:] = 1
    return ids


def _options(kind: str, B: int, H: int, Nq: int, Nk: int) -> dict:
    """The attention options of a case, for the whole sequence, with its tensors on this process's device."""
    return {name: x.to(_DEVICE) if isinstance(x, torch.Tensor) else x
            for name, x in _cpu_options(kind, B, H, Nq, Nk).items()}


def _cpu_options(kind: str, B: int, H: int, Nq: int, Nk: int) -> dict:
    gen = torch.Generator().manual_seed(5)
    if kind == "none":
        return {}
    if kind == "causal":
        return {"causal": True}
    if kind == "window":
        return {"window": (5, 2)}
    if kind == "causal-window":
        return {"causal": True, "window": (3, 0)}
    if kind == "document":
        return {"mask": masks.document(_document_ids(B, Nk)) & masks.causal()}
    if kind == "padding":  # fully masked query rows, and NaN stored in the keys no query sees (see _tensors)
        return {"mask": masks.padding([Nk - 5, 9], q_lengths=[Nq, Nq - 7]), "causal": True}
    if kind == "prefix":
        return {"mask": masks.prefix_lm([5, 13])}
    if kind == "dense-mask":
        m = torch.rand(B, 1, Nq, Nk, generator=gen) < 0.6
        m[0, 0, 3] = False  # a row that sees nothing
        return {"mask": m}
    if kind == "bias":
        return {"bias": torch.randn(B, H, Nq, Nk, generator=gen, dtype=torch.float64), "causal": True}
    if kind == "bias-broadcast":
        return {"bias": torch.randn(1, H, 1, Nk, generator=gen, dtype=torch.float64)}
    if kind == "alibi":
        return {"bias": attnkit.bias.alibi(H), "causal": True}
    if kind == "softcap":
        return {"softcap": 1.5, "scale": 0.9, "causal": True}
    if kind == "dropout":
        return {"dropout": 0.3, "dropout_seed": 1234, "causal": True}
    if kind == "dropout-window":
        return {"dropout": 0.5, "dropout_seed": 99, "window": (4, 4)}
    raise KeyError(kind)


def _tensors(case: Case, world: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    H, Hkv = case.heads(world)
    t = {"q": randn(case.B, H, case.Nq, case.D, seed=1, dtype=dtype, scale=2.0),
         "k": randn(case.B, Hkv, case.Nk, case.D, seed=2, dtype=dtype),
         "v": randn(case.B, Hkv, case.Nk, case.Dv, seed=3, dtype=dtype),
         "dout": randn(case.B, H, case.Nq, case.Dv, seed=4, dtype=dtype),
         "dlse": randn(case.B, H, case.Nq, seed=6, dtype=torch.float64)}
    if case.options == "padding":  # keys past each row's length hold NaN: they must change nothing
        t["k"][0, :, case.Nk - 5:] = float("nan")
        t["v"][1, :, 9:] = float("nan")
    return {name: x.to(_DEVICE) for name, x in t.items()}


def _loss(out: torch.Tensor, lse: torch.Tensor | None, dout: torch.Tensor, dlse: torch.Tensor) -> torch.Tensor:
    loss = (out.double() * dout.double()).sum()
    if lse is not None:  # -inf on rows that see nothing: left out of the loss
        loss = loss + (torch.where(torch.isfinite(lse), lse.double(), 0.0) * dlse).sum()
    return loss


def _reference(case: Case, world: int, dtype: torch.dtype, kernel: str = "dense") -> dict[str, torch.Tensor]:
    """Whole-sequence attnkit.attention (dense kernel) on one process: out, lse, grads of q, k, v and the bias."""
    H, _ = case.heads(world)
    t = _tensors(case, world, dtype)
    opts = _options(case.options, case.B, H, case.Nq, case.Nk)
    q, k, v = (t[n].clone().requires_grad_() for n in "qkv")
    if isinstance(opts.get("bias"), torch.Tensor):
        opts["bias"] = opts["bias"].to(dtype).requires_grad_(case.bias_grad)
    lse = None
    if "dropout" in opts:
        p, seed = opts.pop("dropout"), opts.pop("dropout_seed")
        weights = attnkit.attention_weights(q, k, **opts)  # (B, H, Nq, Nk)
        keep = cp.keep_mask(p, seed, batch=case.B, heads=H).materialize(case.Nq, case.Nk)
        out = (weights * keep / (1 - p)) @ v.repeat_interleave(H // v.shape[1], dim=1)
    else:
        res = attnkit.attention(q, k, v, kernel=kernel, return_lse=case.lse, **opts)
        out, lse = res if case.lse else (res, None)
    _loss(out, lse, t["dout"], t["dlse"]).backward()
    return _outcome(case, out, lse, (q, k, v), opts)


def _outcome(case: Case, out: torch.Tensor, lse: torch.Tensor | None, qkv: tuple[torch.Tensor, ...],
             opts: dict) -> dict[str, torch.Tensor]:
    """What a case compares, after its backward: the output, the gradients, the lse and the bias gradient if any."""
    q, k, v = qkv
    outcome = {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}
    if lse is not None:
        outcome["lse"] = lse.detach()
    if case.bias_grad:
        outcome["dbias"] = opts["bias"].grad
    return outcome


def _distributed(case: Case, world: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """This rank's shard of everything _reference returns (the bias gradient whole), from attnkit.distributed."""
    H, _ = case.heads(world)
    t = _tensors(case, world, dtype)
    opts = _options(case.options, case.B, H, case.Nq, case.Nk)
    shard = {name: cp.shard(x, layout=case.layout) for name, x in t.items() if name != "dlse"}
    shard["dlse"] = cp.shard(t["dlse"], layout=case.layout, dim=2)
    q, k, v = (shard[n].requires_grad_() for n in "qkv")
    if isinstance(opts.get("bias"), torch.Tensor):
        opts["bias"] = opts["bias"].to(dtype).requires_grad_(case.bias_grad)
    res = cp.attention(q, k, v, strategy=case.strategy, layout=case.layout, kernel=case.kernel, return_lse=case.lse,
                       **opts)
    out, lse = res if case.lse else (res, None)
    _loss(out, lse, shard["dout"], shard["dlse"]).backward()
    return _outcome(case, out, lse, (q, k, v), opts)


def _check_case(case: Case, world: int) -> None:
    dtype = torch.float64 if case.dtype == "f64" else torch.float32
    ref = _reference(case, world, torch.float64)
    got = _distributed(case, world, dtype)
    base = _reference(case, world, dtype, kernel="auto") if dtype != torch.float64 else None
    assert set(got) == set(ref), f"results {sorted(got)} != expected {sorted(ref)}"
    for name, expected in ref.items():
        if name not in ("dbias",):
            expected = cp.shard(expected, layout=case.layout, dim=2)
        if base is None:
            atol = dense_atol(expected, torch.float64)
        else:
            baseline = base[name] if name == "dbias" else cp.shard(base[name], layout=case.layout, dim=2)
            atol = baseline_atol(baseline, expected, dtype)
        assert_close(got[name], expected, atol=atol, what=f"{case.name} {name} (world {world})")
        assert torch.isfinite(got[name]).any() or name == "lse", f"{name} has no finite value"


CASES = [
    Case("ring-zigzag-causal", "causal"),
    Case("ring-contiguous-causal", "causal", layout="contiguous"),
    Case("ring-zigzag-full", "none"),
    Case("ring-contiguous-window", "window", layout="contiguous"),
    Case("ring-zigzag-causal-window", "causal-window"),
    Case("ring-document", "document"),
    Case("ring-padding-nan", "padding", layout="contiguous"),
    Case("ring-prefix-lm", "prefix"),
    Case("ring-dense-mask", "dense-mask"),
    Case("ring-causal-nq<nk", "causal", Nq=24, Nk=48),
    Case("ring-window-nq>nk", "window", Nq=48, Nk=24, layout="contiguous"),
    Case("ring-mqa-causal", "causal", Hkv=1),
    Case("ring-bias-grad", "bias", bias_grad=True),
    Case("ring-bias-broadcast-grad", "bias-broadcast", bias_grad=True, layout="contiguous"),
    Case("ring-alibi", "alibi"),
    Case("ring-softcap", "softcap"),
    Case("ring-dropout", "dropout"),
    Case("ring-dropout-window", "dropout-window", layout="contiguous"),
    Case("ring-lse-grad", "document", lse=True),
    Case("ring-dense-kernel", "causal", kernel="dense"),
    Case("ring-float32", "causal", dtype="f32"),
    Case("ulysses-zigzag-causal", "causal", strategy="ulysses"),
    Case("ulysses-contiguous-window", "window", strategy="ulysses", layout="contiguous"),
    Case("ulysses-document", "document", strategy="ulysses"),
    Case("ulysses-mqa-nq<nk", "causal", strategy="ulysses", Hkv=1, Nk=48),
    Case("ulysses-bias-grad", "bias", strategy="ulysses", bias_grad=True),
    Case("ulysses-alibi", "alibi", strategy="ulysses", layout="contiguous"),
    Case("ulysses-softcap", "softcap", strategy="ulysses"),
    Case("ulysses-dropout", "dropout", strategy="ulysses"),
    Case("ulysses-padding-nan-lse", "padding", strategy="ulysses", lse=True),
    Case("ulysses-sdpa-kernel", "causal", strategy="ulysses", kernel="sdpa"),
]
CASES_BY_NAME = {case.name: case for case in CASES}
# four processes: the cases whose schedules change most with P (two cores run four processes slowly)
WORLD_CASES = {2: [c.name for c in CASES], 3: [c.name for c in CASES],
               4: ["ring-zigzag-causal", "ring-contiguous-window", "ring-document", "ring-bias-grad", "ring-dropout",
                   "ulysses-zigzag-causal", "ulysses-dropout"]}


def _run_cases(rank: int, world: int, names: list[str]) -> dict[str, str | None]:
    """Every case in turn: None where it passed, else the failure."""
    results: dict[str, str | None] = {}
    for name in names:
        try:
            _check_case(CASES_BY_NAME[name], world)
            results[name] = None
        except Exception:  # reported per case
            results[name] = traceback.format_exc(limit=-3)
    return results


_GROUP_RESULTS: dict[int, list[dict | None]] = {}


def _group_results(world: int) -> list[dict | None]:
    """Run all of the world's cases in one process group, once per test session."""
    if world not in _GROUP_RESULTS:
        _GROUP_RESULTS[world] = _spawn(world, "cases", WORLD_CASES[world])
    return _GROUP_RESULTS[world]


@pytest.mark.parametrize("world,name", [(w, n) for w, names in WORLD_CASES.items() for n in names],
                         ids=[f"P{w}-{n}" for w, names in WORLD_CASES.items() for n in names])
def test_matches_single_process(world, name):
    results = _group_results(world)
    failures = [f"rank {rank}: {r[name]}" for rank, r in enumerate(results) if r is not None and r[name] is not None]
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------------------------------
# Errors, schedules, failures


def _raises(fn, exc: type[Exception], words: list[str]) -> str | None:
    """None if fn() raises ``exc`` naming every word, else what happened instead."""
    try:
        fn()
    except exc as error:
        missing = [w for w in words if w not in str(error)]
        return f"{exc.__name__} {str(error)!r} does not name {missing}" if missing else None
    except Exception as error:
        return f"raised {type(error).__name__}: {error}, expected {exc.__name__}"
    return f"did not raise {exc.__name__}"


def _error_cases(rank: int, world: int) -> dict[str, object]:
    q = randn(1, 4, 8, 4, seed=rank)
    odd = randn(1, 4, 5, 4, seed=rank)
    rel = attnkit.bias.from_function(lambda s, b, h, i, j: s + 0.1 * (i - j))
    call = cp.attention
    checks = {
        "unequal-shards": (lambda: call(*(randn(1, 4, 8 + 2 * rank, 4, seed=0),) * 3), ValueError,
                           ["same shapes", "rank 0", "rank 1", "(1, 4, 8, 4)", "(1, 4, 10, 4)"]),
        "zigzag-odd-shard": (lambda: call(odd, odd, odd), ValueError, ["zigzag", "divisible by 2", "got 5"]),
        "unknown-layout": (lambda: call(q, q, q, layout="striped"), ValueError, ["layout", "'zigzag'", "striped"]),
        "unknown-strategy": (lambda: call(q, q, q, strategy="tree"), ValueError, ["strategy", "tree"]),
        "ulysses-heads": (lambda: call(*(randn(1, 3, 8, 4, seed=0),) * 3, strategy="ulysses"), ValueError,
                          ["H=3", "strategy='ring'"]),
        "local-document-ids": (lambda: call(q, q, q, mask=masks.document(torch.zeros(8, dtype=torch.long))),
                               ValueError, ["document ids cover 8", f"k_len is {8 * world}"]),
        "local-bias": (lambda: call(q, q, q, bias=torch.zeros(1, 4, 8, 8)), ValueError, ["bias", "(1, 4, 8, 8)"]),
        "not-4d": (lambda: call(q[0], q, q), ValueError, ["q", "4 dims"]),
        "not-tensor": (lambda: call(q, "k", q), TypeError, ["k", "str"]),  # type: ignore[arg-type]
        "score-function": (lambda: call(q, q, q, bias=rel), ValueError, ["score functions", "bias"]),
        "ring-sdpa": (lambda: call(q, q, q, kernel="sdpa"), ValueError, ["sdpa", "log-sum-exp", "ulysses"]),
        "dropout-range": (lambda: call(q, q, q, dropout=1.5), ValueError, ["dropout", "1.5"]),
        "shard-length": (lambda: cp.shard(randn(1, 1, 7, 2, seed=0), layout="zigzag"), ValueError,
                         [f"divisible by {2 * world}", "got 7"]),
    }
    results: dict[str, object] = {name: _raises(fn, exc, words) for name, (fn, exc, words) in checks.items()}
    # the group still works after every refusal: no process was left inside a collective
    whole = randn(1, 4, 8 * world, 4, seed=9)
    part = cp.shard(whole, layout="zigzag")
    out = cp.attention(part, part, part, causal=True)
    expected = cp.shard(attnkit.attention(whole, whole, whole, causal=True, kernel="dense"), layout="zigzag")
    results["after-errors"] = None if torch.allclose(out, expected, atol=1e-12) else "wrong result after the errors"
    return results


ERROR_NAMES = ["unequal-shards", "zigzag-odd-shard", "unknown-layout", "unknown-strategy", "ulysses-heads",
               "local-document-ids", "local-bias", "not-4d", "not-tensor", "score-function", "ring-sdpa",
               "dropout-range", "shard-length", "after-errors"]


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_bad_input_is_refused_by_every_rank(name):
    if "errors" not in _GROUP_RESULTS:
        _GROUP_RESULTS["errors"] = _spawn(2, "errors")  # type: ignore[index]
    failures = [f"rank {rank}: {r[name]}" for rank, r in enumerate(_GROUP_RESULTS["errors"])  # type: ignore[index]
                if r is not None and r[name] is not None]
    assert not failures, "\n".join(failures)


def _schedules(rank: int, world: int) -> dict[str, list]:
    """Per scenario, this rank's hops as [phase, hop, blocks, bytes sent, bytes received]."""
    N = 8 * world
    whole = randn(1, 2, N, 4, seed=0)
    scenarios = {
        "causal-zigzag": ("zigzag", {"causal": True}),
        "causal-contiguous": ("contiguous", {"causal": True}),
        "window-halo": ("contiguous", {"window": (3, 0)}),
        "documents-per-rank": ("contiguous", {"mask": masks.document(torch.arange(N) // 8)}),
    }
    out = {}
    for name, (layout, opts) in scenarios.items():
        part = cp.shard(whole, layout=layout).requires_grad_()
        with cp.profile() as hops:
            cp.attention(part, part, part, layout=layout, **opts).sum().backward()
        out[name] = [[h.phase, h.hop, h.blocks, h.bytes_sent, h.bytes_received] for h in hops]
    return out


def test_hop_schedules():
    """4 processes: causal zigzag computes the same number of blocks on every rank, contiguous does not; a sliding
    window narrower than a shard exchanges with the previous rank only (halo); documents that each sit on one rank
    move nothing. The counts are derived here from the chunk geometry, not read from the code."""
    world = 4
    results = _spawn(world, "schedules")
    kv_bytes = 2 * 1 * 2 * 8 * 4 * 8  # k and v: (1, 2, 8, 4) float64 shards
    for rank, r in enumerate(results):
        assert r is not None
        forward = {name: [h for h in hops if h[0] == "forward"] for name, hops in r.items()}
        # zigzag: 3 blocks at hop 0 (two diagonal chunks, one full), then 2 per hop
        assert [h[2] for h in forward["causal-zigzag"]] == [3] + [2] * (world - 1)
        # contiguous: the keys of ranks <= r only
        assert [h[2] for h in forward["causal-contiguous"]] == [1] * (rank + 1) + [0] * (world - 1 - rank)
        halo = forward["window-halo"]
        assert [h[2] for h in halo] == [1, 1 if rank > 0 else 0] + [0] * (world - 2)
        assert [h[4] for h in halo] == [0, kv_bytes if rank > 0 else 0] + [0] * (world - 2)
        assert [h[3] for h in halo] == [0, kv_bytes if rank < world - 1 else 0] + [0] * (world - 2)
        assert all(h[3] == h[4] == 0 for h in r["documents-per-rank"]), r["documents-per-rank"]
        backward = [h for h in r["window-halo"] if h[0] == "backward"]
        assert [h[2] for h in backward] == [h[2] for h in halo], "backward visits the forward's blocks"


def _peer_fails(rank: int, world: int, how: str) -> dict[str, object]:
    """Rank 1 fails (``how``: "exits" at once, or "absent": never calls, sleeps past the timeout); rank 0 calls
    attention and reports what it raised and after how long."""
    if rank == 1:
        if how == "exits":
            os._exit(3)
        time.sleep(5)
        return {}
    part = randn(1, 2, 8, 4, seed=0)
    began = time.monotonic()
    try:
        cp.attention(part, part, part, causal=True)
        return {"error": None, "seconds": time.monotonic() - began}
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error), "seconds": time.monotonic() - began}


@pytest.mark.parametrize("how", ["exits", "absent"])
def test_a_failed_peer_raises_a_clear_error_within_the_timeout(how):
    results = _spawn(2, "peer_fails", how, timeout_s=3, deadline_s=60)
    r = results[0]
    assert r is not None and r["error"] == "PeerError", r
    assert "rank 0 of 2" in r["message"] and "timeout" in r["message"], r["message"]
    assert r["seconds"] < 3 + 10, f"raised after {r['seconds']:.1f} s with a 3 s timeout"


NCCL_CASES = ["ring-zigzag-causal", "ring-contiguous-window", "ring-document", "ring-bias-grad", "ring-dropout",
              "ring-float32", "ulysses-zigzag-causal", "ulysses-dropout"]


@pytest.mark.skipif(torch.cuda.device_count() < 2 or not dist.is_nccl_available(), reason="NCCL needs two GPUs")
def test_nccl_matches_single_process():
    results = _spawn(2, "cases", NCCL_CASES, backend="nccl")
    failures = [f"rank {rank} {name}: {r[name]}" for rank, r in enumerate(results) if r is not None
                for name in NCCL_CASES if r[name] is not None]
    assert not failures, "\n".join(failures)


TARGETS = {
    "cases": _run_cases,
    "errors": lambda rank, world, _: _error_cases(rank, world),
    "schedules": lambda rank, world, _: _schedules(rank, world),
    "peer_fails": _peer_fails,
}
