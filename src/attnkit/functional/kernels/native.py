"""The tiled kernel's native forward on CPUs with AVX-512 (``attnkit/csrc/tiled_fwd.c``): float32, and
bfloat16 / float16 inputs widened to float32 as they are read.

The C file is compiled when attnkit is installed (an optional extension: a machine without a compiler
installs fine and keeps the PyTorch path). It runs the tiled kernel's own plan — the same query blocks,
key chunks and mask tiles (expanded in C from the mask's cell grid when it has one, see
``Mask.cells``) — with fused register-tiled q·kᵀ, online softmax and P·v, on PyTorch's own
OpenMP threads, so nothing changes for the caller but speed. Backward stays in PyTorch, from the saved
log-sum-exp.

``ATTNKIT_NATIVE=0`` in the environment turns it off; :func:`status` says whether it serves and why not.
"""

from __future__ import annotations

import ctypes
import math
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from ..masks import Mask
from ..request import AttentionRequest
from .plan import Row

_i64 = ctypes.c_int64
_ABI = 11  # attnkit_native_abi() of a build with these functions (gemv.c's and decode.c's) and these structs' layouts
_SERIAL_FLOPS = 4e6  # below this much work one thread does it all: handing out to threads costs more


class _Args(ctypes.Structure):
    _fields_ = [
        ("q", ctypes.c_void_p), ("q_sb", _i64), ("q_sh", _i64), ("q_sn", _i64),
        ("k", ctypes.c_void_p), ("k_sb", _i64), ("k_sh", _i64), ("k_sn", _i64),
        ("v", ctypes.c_void_p), ("v_sb", _i64), ("v_sh", _i64), ("v_sn", _i64),
        ("out", ctypes.c_void_p), ("lse", ctypes.c_void_p),
        ("B", _i64), ("H", _i64), ("Hkv", _i64), ("Nq", _i64), ("Nk", _i64), ("D", _i64), ("Dv", _i64),
        ("scale", ctypes.c_float),
        ("nrows", _i64), ("rows", ctypes.c_void_p), ("row_chunks", ctypes.c_void_p),
        ("chunks", ctypes.c_void_p), ("masks", ctypes.c_void_p), ("max_chunk", _i64), ("guard", _i64),
        ("cells", ctypes.c_void_p), ("cell_sb", _i64), ("cell_sh", _i64), ("cell_sq", _i64), ("cell", _i64),
        ("cell_qoff", _i64), ("order", ctypes.c_void_p), ("dtype", _i64),
    ]


_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # what the C code reads (it computes in float32)


@lru_cache(maxsize=1)
def _library() -> tuple[ctypes.CDLL | None, str]:
    """The loaded extension and "", or None and why it cannot serve."""
    spec = importlib.util.find_spec("attnkit._native")
    if spec is None or not spec.origin:
        return None, "the native extension was not built at install (no C compiler?)"
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError as e:
        return None, f"the native extension does not load: {e}"
    if lib.attnkit_native_abi() != _ABI:
        return None, f"the native extension is from another attnkit version (reinstall attnkit): {spec.origin}"
    if not lib.attnkit_native_supported():
        return None, "this CPU lacks AVX-512"
    lib.attnkit_tiled_fwd.argtypes = [ctypes.POINTER(_Args), ctypes.c_int]
    lib.attnkit_tiled_fwd.restype = ctypes.c_int
    # gemv.c's functions (the ABI says they are there); attnkit_gemv is the one-weight case, bound for callers of C
    lib.attnkit_gemv.argtypes = [ctypes.c_void_p, ctypes.c_int, _i64, _i64, ctypes.c_void_p, _i64, _i64,
                                 ctypes.c_void_p, _i64, ctypes.c_int]
    lib.attnkit_gemv.restype = ctypes.c_int
    lib.attnkit_gemv_many.argtypes = [_i64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, _i64, ctypes.c_void_p,
                                      _i64, _i64, ctypes.c_void_p, _i64, ctypes.c_int]
    lib.attnkit_gemv_many.restype = ctypes.c_int
    lib.attnkit_decode_ffn.argtypes = [ctypes.POINTER(_FFNArgs), ctypes.c_int]
    lib.attnkit_decode_ffn.restype = ctypes.c_int
    lib.attnkit_rms_rows.argtypes = [ctypes.c_void_p, _i64, ctypes.c_void_p, _i64, _i64, ctypes.c_void_p,
                                     ctypes.c_float, _i64]
    lib.attnkit_rms_rows.restype = ctypes.c_int
    lib.attnkit_decode_layer.argtypes = [ctypes.POINTER(_AttnArgs), ctypes.POINTER(_FFNArgs), ctypes.c_int]
    lib.attnkit_decode_layer.restype = ctypes.c_int
    return lib, ""


def _turned_off() -> bool:
    """ATTNKIT_NATIVE=0, read at each call (a dict lookup: tests and users may switch it while running)."""
    return os.environ.get("ATTNKIT_NATIVE") == "0"


def status() -> str:
    """"" when the native forward serves CPU requests, else the reason it does not."""
    if _turned_off():
        return "turned off by ATTNKIT_NATIVE=0"
    return _library()[1]


GEMV_ROWS = 8  # the most rows of x attnkit_gemv takes (a decoding step's batch)
_GEMV_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # the weight types it reads; x and y are float32
WEIGHT_DTYPES = tuple(_GEMV_DTYPES)  # the weight (and a decoding layer's model) dtypes the decoding calls serve


def gemv(x: Tensor, weight: Tensor) -> Tensor | None:
    """``x @ weight.T`` for x (rows, in) float32 with 1 <= rows <= GEMV_ROWS and a contiguous float32 or bfloat16
    ``weight`` (out, in), in C (csrc/gemv.c: the weight read once, at memory speed); None when the extension
    cannot take it (not built, no AVX-512, turned off by ATTNKIT_NATIVE=0, other shapes or types). No autograd:
    for inference only."""
    return gemv_many(x, (weight,))


def gemv_many(x: Tensor, weights: Sequence[Tensor]) -> Tensor | None:
    """``x @ cat(weights).T`` without the concatenation: the products with each weight side by side in one
    (rows, sum of outs) result, in one call (a layer's q, k and v). Each weight as in :func:`gemv`, all of one
    dtype and width; None when the extension cannot take them."""
    if x.dim() != 2 or not weights:
        return None
    rows, width, dtype = x.shape[0], x.shape[1], weights[0].dtype
    if (not 1 <= rows <= GEMV_ROWS or x.dtype != torch.float32 or dtype not in _GEMV_DTYPES
            or x.device.type != "cpu" or x.stride(1) != 1):
        return None
    for w in weights:
        if w.dim() != 2 or w.shape[1] != width or not _stored(w, dtype):
            return None
    lib = _gemv_library()
    if lib is None:
        return None
    pointers, outs, total = _operands(tuple(w.data_ptr() for w in weights), tuple(w.shape[0] for w in weights))
    y = x.new_empty(rows, total)
    status = lib.attnkit_gemv_many(len(weights), pointers, outs, _GEMV_DTYPES[dtype], width, x.data_ptr(),
                                   x.stride(0), rows, y.data_ptr(), total, torch.get_num_threads())
    return y if status == 0 else None


class _FFNArgs(ctypes.Structure):
    _fields_ = [
        ("B", _i64), ("dim", _i64), ("hd", _i64), ("hidden", _i64),
        ("attn", ctypes.c_void_p), ("attn_stride", _i64), ("wo", ctypes.c_void_p), ("bo", ctypes.c_void_p),
        ("post_attn_w", ctypes.c_void_p), ("x", ctypes.c_void_p), ("x_stride", _i64), ("norm_w", ctypes.c_void_p),
        ("eps", ctypes.c_float), ("unit_offset", _i64),
        ("wg", ctypes.c_void_p), ("wu", ctypes.c_void_p), ("wd", ctypes.c_void_p),
        ("bg", ctypes.c_void_p), ("bu", ctypes.c_void_p), ("bd", ctypes.c_void_p),
        ("act", _i64), ("post_ffn_w", ctypes.c_void_p), ("scratch", ctypes.c_void_p), ("bf16", _i64),
        ("norm_b", ctypes.c_void_p), ("layer_norm", _i64),
    ]


# the activations attnkit_decode_ffn computes: gated, act(gate) · up, and plain, act(up)
GATED_ACTIVATIONS = {"swiglu": 0, "geglu": 1, "geglu_tanh": 2}
PLAIN_ACTIVATIONS = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}


def ffn_activation(name: str, gated: bool) -> int | None:
    """attnkit_decode_ffn's code of a feed-forward's activation, or None where it has none."""
    return (GATED_ACTIVATIONS if gated else PLAIN_ACTIVATIONS).get(name)


@dataclass(frozen=True)
class Norm:
    """A norm the C decoding calls compute over a row: an RMSNorm, ``v · rsqrt(mean(v²) + eps) · weight`` (``1 +
    weight`` with ``unit_offset``: Gemma), or with ``layer`` a LayerNorm, ``(v - mean) · rsqrt(var + eps) · weight
    + bias`` (``bias`` None: none)."""

    weight: Tensor
    bias: Tensor | None
    eps: float
    unit_offset: bool
    layer: bool


def _norm_ok(norm: Norm, dim: int, dtype: torch.dtype) -> bool:
    """``norm`` over ``dim`` features in the weights' ``dtype``, with a bias only as a LayerNorm's."""
    return (_shaped(norm.weight, dim) and _shaped(norm.bias, dim) and (norm.layer or norm.bias is None)
            and not (norm.layer and norm.unit_offset) and _stored(norm.weight, dtype) and _stored(norm.bias, dtype))


@dataclass
class FFNCall:
    """The second half of a pre-norm decoder layer for a decoding step (``attnkit_decode_ffn`` in csrc/gemv.c):
    ``x += post_attn(attn · Woᵀ + bo)``, then ``x += post_ffn(down(act(gate(h)) · up(h)))`` (gated) or
    ``x += down(act(up(h)))`` (``wg`` None: plain) with ``h = norm(x)``; Gemma's post norms are RMSNorms with
    ``norm``'s eps and unit offset (none with a LayerNorm). Every tensor contiguous: attn and x float32, the
    weights, biases and norm weights all float32 or all bfloat16; x (rows, dim) is updated in place."""

    attn: Tensor | None  # (rows, hd); None in decode_layer: its attention half's output
    x: Tensor  # (rows, dim)
    wo: Tensor
    bo: Tensor | None
    post_attn_w: Tensor | None
    norm: Norm
    wg: Tensor | None  # None: a plain feed-forward
    wu: Tensor
    wd: Tensor
    bg: Tensor | None
    bu: Tensor | None
    bd: Tensor | None
    activation: str
    post_ffn_w: Tensor | None


def _address(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def decode_ffn(call: FFNCall) -> bool:
    """Run ``call`` in C; False (nothing done) when the extension cannot (not built, no AVX-512, ATTNKIT_NATIVE=0,
    more than GEMV_ROWS rows, an activation it lacks, sizes that do not agree, tensors of other types or not
    contiguous)."""
    lib = _gemv_library()
    attn = call.attn
    if (lib is None or attn is None or attn.dim() != 2 or not _stored(attn, torch.float32)
            or not _ffn_takes(call, attn.shape[0], attn.shape[1])):
        return False
    args = _ffn_args(call, attn.data_ptr(), attn.shape[1])
    return lib.attnkit_decode_ffn(ctypes.byref(args), torch.get_num_threads()) == 0


def _stored(t: Tensor | None, dtype: torch.dtype) -> bool:
    """None, or ``dtype`` on the CPU and contiguous: what the C functions read."""
    return t is None or (t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous())


def _shaped(t: Tensor | None, *shape: int) -> bool:
    return t is None or tuple(t.shape) == shape


def _ffn_takes(call: FFNCall, rows: int, hd: int) -> bool:
    """Whether attnkit_decode_ffn takes ``call`` after an attention of ``rows`` rows of ``hd`` features: every size
    agrees (C trusts them), x float32, the weights all float32 or all bfloat16."""
    x, dtype = call.x, call.wo.dtype
    if x.dim() != 2 or call.wu.dim() != 2:
        return False
    dim, hidden = x.shape[1], call.wu.shape[0]
    weights = (call.wo, call.bo, call.post_attn_w, call.wg, call.wu, call.wd, call.bg, call.bu, call.bd,
               call.post_ffn_w)
    return (x.shape[0] == rows and 1 <= rows <= GEMV_ROWS
            and ffn_activation(call.activation, call.wg is not None) is not None
            and (call.wg is not None or call.bg is None)
            and (not call.norm.layer or (call.post_attn_w is None and call.post_ffn_w is None))
            and _stored(x, torch.float32) and dtype in _GEMV_DTYPES and all(_stored(t, dtype) for t in weights)
            and _norm_ok(call.norm, dim, dtype)
            and _shaped(call.wo, dim, hd) and _shaped(call.wg, hidden, dim) and _shaped(call.wu, hidden, dim)
            and _shaped(call.wd, dim, hidden)
            and all(_shaped(t, dim) for t in (call.bo, call.post_attn_w, call.bd, call.post_ffn_w))
            and _shaped(call.bg, hidden) and _shaped(call.bu, hidden))


def _ffn_args(call: FFNCall, attn: int, hd: int) -> _FFNArgs:
    """attnkit_decode_ffn's arguments, its attention input (rows, hd) at address ``attn``; the scratch it needs is
    kept alive by the struct's owner (``_keep``)."""
    rows, dim = call.x.shape
    hidden = call.wu.shape[0]
    scratch = call.x.new_empty(rows * (3 * dim + 2 * hidden))
    act = ffn_activation(call.activation, call.wg is not None)
    assert act is not None  # _ffn_takes checked it
    norm = call.norm
    args = _FFNArgs(rows, dim, hd, hidden, attn, hd, call.wo.data_ptr(), _address(call.bo),
                    _address(call.post_attn_w), call.x.data_ptr(), dim, norm.weight.data_ptr(), norm.eps,
                    int(norm.unit_offset), _address(call.wg), call.wu.data_ptr(), call.wd.data_ptr(),
                    _address(call.bg), _address(call.bu), _address(call.bd), act,
                    _address(call.post_ffn_w), scratch.data_ptr(), _GEMV_DTYPES[call.wo.dtype],
                    _address(norm.bias), int(norm.layer))
    args._keep = scratch  # alive as long as the struct
    return args


class _AttnArgs(ctypes.Structure):
    _fields_ = [
        ("B", _i64), ("dim", _i64), ("H", _i64), ("Hkv", _i64), ("D", _i64), ("R", _i64),
        ("x", ctypes.c_void_p), ("x_stride", _i64), ("norm_w", ctypes.c_void_p), ("eps", ctypes.c_float),
        ("unit_offset", _i64),
        ("wq", ctypes.c_void_p), ("wk", ctypes.c_void_p), ("wv", ctypes.c_void_p),
        ("bq", ctypes.c_void_p), ("bk", ctypes.c_void_p), ("bv", ctypes.c_void_p),
        ("q_norm_w", ctypes.c_void_p), ("k_norm_w", ctypes.c_void_p), ("qk_eps", ctypes.c_float),
        ("qk_unit_offset", _i64), ("cos", ctypes.c_void_p), ("sin", ctypes.c_void_p),
        ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p), ("capacity", _i64), ("pos", _i64),
        ("key_padding", ctypes.c_void_p), ("kp_stride", _i64), ("window", _i64),
        ("scale", ctypes.c_float), ("softcap", ctypes.c_float), ("out", ctypes.c_void_p), ("scratch", ctypes.c_void_p),
        ("bf16", _i64), ("norm_b", ctypes.c_void_p), ("layer_norm", _i64),
    ]


@dataclass
class AttnCall:
    """The first half of a pre-norm decoder layer for a decoding step, one new token per row (``decode.c``):
    ``h = norm(x)``; q, k, v projections (+ biases); each head of q and k through its RMSNorm (``q_norm_w``,
    ``k_norm_w``, or None) and then RoPE over its first R features (``cos`` and ``sin`` (rows, R), sin signed as
    ``RotaryEmbedding.rows`` gives it; None: no rotation); k and v written to the caches' slot ``pos``; attention
    of each query head over the slots 0 .. pos that ``key_padding`` (rows, >= pos + 1) bool and ``window`` (the
    most slots back) leave, with ``scale`` (finite, > 0) and ``softcap`` (None, or finite and > 0). Every tensor
    contiguous: x, cos and sin float32; the weights, biases, norm weights and both caches all float32 or all
    bfloat16; key_padding bool with unit stride along keys."""

    x: Tensor  # (rows, dim), read
    norm: Norm
    wq: Tensor  # (H * D, dim)
    wk: Tensor  # (Hkv * D, dim)
    wv: Tensor  # (Hkv * D, dim)
    bq: Tensor | None
    bk: Tensor | None
    bv: Tensor | None
    q_norm_w: Tensor | None  # (D,)
    k_norm_w: Tensor | None
    qk_eps: float
    qk_unit_offset: bool
    cos: Tensor | None  # (rows, R)
    sin: Tensor | None
    k_cache: Tensor  # (rows, Hkv, capacity, D)
    v_cache: Tensor
    pos: int
    key_padding: Tensor | None
    window: int | None
    scale: float
    softcap: float | None


def _attn_takes(call: AttnCall) -> bool:
    """Whether attnkit_decode_layer takes ``call``: the types above and sizes that agree (C trusts them)."""
    x, cache, dtype = call.x, call.k_cache, call.wq.dtype
    if x.dim() != 2 or cache.dim() != 4 or call.wq.dim() != 2 or not 1 <= x.shape[0] <= GEMV_ROWS:
        return False
    rows, dim = x.shape
    _, hkv, capacity, d = cache.shape
    h = call.wq.shape[0] // d if d else 0
    r = 0 if call.cos is None else call.cos.shape[-1]
    padding = call.key_padding
    window, softcap = call.window, call.softcap
    return (cache.shape[0] == rows and call.v_cache.shape == cache.shape and 0 <= call.pos < capacity
            and h >= 1 and h % hkv == 0 and _shaped(call.wq, h * d, dim) and _shaped(call.wk, hkv * d, dim)
            and _shaped(call.wv, hkv * d, dim) and _norm_ok(call.norm, dim, dtype) and _shaped(call.bq, h * d)
            and _shaped(call.bk, hkv * d) and _shaped(call.bv, hkv * d)
            and _shaped(call.q_norm_w, d) and _shaped(call.k_norm_w, d)
            and (call.cos is None) == (call.sin is None) and r % 2 == 0 and r <= d
            and _shaped(call.cos, rows, r) and _shaped(call.sin, rows, r)
            and (padding is None or (padding.dtype == torch.bool and padding.device.type == "cpu"
                                     and padding.dim() == 2 and padding.shape[0] == rows
                                     and padding.shape[1] > call.pos and padding.stride(1) == 1))
            and (window is None or (isinstance(window, int) and window >= 0))
            and math.isfinite(call.scale) and call.scale > 0
            and (softcap is None or (math.isfinite(softcap) and softcap > 0))
            and x.stride(1) == 1 and x.dtype == torch.float32 and x.device.type == "cpu"
            and _stored(call.cos, torch.float32) and _stored(call.sin, torch.float32) and dtype in _GEMV_DTYPES
            and all(_stored(t, dtype) for t in (call.wq, call.wk, call.wv, call.bq, call.bk, call.bv, call.q_norm_w,
                                                call.k_norm_w, cache, call.v_cache)))


def decode_layer(attn: AttnCall, ffn: FFNCall | None) -> Tensor | None:
    """A decoding step's layer in C: ``attn``'s half, then ``ffn``'s on its output (``ffn.attn`` is ignored) with
    ``ffn.x`` updated in place; ``ffn`` None: the attention half only. Returns the heads' outputs (rows, H * D)
    float32, or None (nothing done) when the extension cannot take the calls (see decode_ffn): sizes that do not
    agree, weights of another type than ``attn``'s, an ``ffn.x`` of other rows than ``attn.x``."""
    lib = _gemv_library()
    if lib is None or not _attn_takes(attn):
        return None
    rows, dim = attn.x.shape
    _, hkv, capacity, d = attn.k_cache.shape
    h = attn.wq.shape[0] // d
    if ffn is not None and (ffn.wo.dtype != attn.wq.dtype or not _ffn_takes(ffn, rows, h * d)):
        return None
    out = attn.x.new_empty(rows, h * d)
    scratch = attn.x.new_empty(rows * (dim + (h + 2 * hkv) * d + h * (attn.pos + 1)))
    padding = attn.key_padding
    args = _AttnArgs(rows, dim, h, hkv, d, 0 if attn.cos is None else attn.cos.shape[-1],
                     attn.x.data_ptr(), attn.x.stride(0), attn.norm.weight.data_ptr(), attn.norm.eps,
                     int(attn.norm.unit_offset),
                     attn.wq.data_ptr(), attn.wk.data_ptr(), attn.wv.data_ptr(),
                     _address(attn.bq), _address(attn.bk), _address(attn.bv),
                     _address(attn.q_norm_w), _address(attn.k_norm_w), attn.qk_eps, int(attn.qk_unit_offset),
                     _address(attn.cos), _address(attn.sin), attn.k_cache.data_ptr(), attn.v_cache.data_ptr(),
                     capacity, attn.pos, _address(padding), 0 if padding is None else padding.stride(0),
                     -1 if attn.window is None else attn.window, attn.scale, attn.softcap or 0.0,
                     out.data_ptr(), scratch.data_ptr(), _GEMV_DTYPES[attn.wq.dtype], _address(attn.norm.bias),
                     int(attn.norm.layer))
    ffn_args = None if ffn is None else ctypes.byref(_ffn_args(ffn, out.data_ptr(), h * d))
    status = lib.attnkit_decode_layer(ctypes.byref(args), ffn_args, torch.get_num_threads())
    return out if status == 0 else None


def rms_rows(x: Tensor, weight: Tensor, eps: float, unit_offset: bool) -> Tensor | None:
    """RMSNorm of x's rows (..., dim) with ``weight`` (``1 + weight`` when ``unit_offset``), in C, for a decoding
    step's at most GEMV_ROWS float32 rows: one call where PyTorch's CPU ``rms_norm`` runs about eight operations
    (19-34 us a call for one row of 576, against 11-18 us here, most of it the call itself). The same arithmetic as
    the fused block's norms. None when the extension cannot (not built, turned off, other shapes or types). No
    autograd: for inference only."""
    lib = _gemv_library()
    dim = x.shape[-1] if x.dim() else 0
    rows = x.numel() // dim if dim else 0
    if (lib is None or not 1 <= rows <= GEMV_ROWS or not _stored(x, torch.float32)
            or not _stored(weight, torch.float32) or not _shaped(weight, dim)):
        return None
    out = torch.empty_like(x)
    status = lib.attnkit_rms_rows(x.data_ptr(), dim, out.data_ptr(), rows, dim, weight.data_ptr(), eps,
                                  int(unit_offset))
    return out if status == 0 else None


def _gemv_library() -> ctypes.CDLL | None:
    """The extension unless it is turned off by ATTNKIT_NATIVE=0 (or cannot run here)."""
    return None if _turned_off() else _library()[0]


@lru_cache(maxsize=4096)
def _operands(pointers: tuple[int, ...], outs: tuple[int, ...]) -> tuple[ctypes.Array[ctypes.c_void_p],
                                                                         ctypes.Array[ctypes.c_int64], int]:
    """attnkit_gemv_many's arrays of weight addresses and row counts, and their total, built once per set of
    weights: a decoding step hands the same weights over every step. Keyed by the addresses themselves, so a
    freed weight whose memory is reused is still described rightly."""
    return (ctypes.c_void_p * len(pointers))(*pointers), (_i64 * len(outs))(*outs), sum(outs)


def serves(req: AttentionRequest, backward: bool = False) -> bool:
    """Whether the native forward can run this request (an AttentionRequest): float32, bfloat16 or float16
    on the CPU (computed in float32), no bias, softcap or dropout, unit stride over D. Half-precision inputs
    only without a ``backward`` to follow: it recomputes the scores in their precision, and its
    probabilities must match the log-sum-exp the forward saved."""
    q, k, v = req.q, req.k, req.v
    return (
        not status()
        and q.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype and q.dtype in _DTYPES
        and (q.dtype == torch.float32 or not backward)
        and req.bias is None and req.softcap is None and req.dropout == 0
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        and q.shape[-2] > 0 and k.shape[-2] > 0
    )


def _check_cells(mask: Mask, cells: tuple[int, int, Tensor], B: int, H: int, Nq: int, Nk: int
                 ) -> tuple[int, int, Tensor]:
    """``mask.cells(Nq, Nk)`` checked before C indexes the grid with it: (cell, q_offset, contiguous grid)."""
    cell, q_offset, grid = cells
    shape = ((Nq - 1 + q_offset) // max(cell, 1) + 1, -(-Nk // max(cell, 1)))  # query and key cells
    ok = (isinstance(grid, Tensor) and grid.dtype == torch.bool and grid.device.type == "cpu" and grid.dim() == 4
          and cell >= 1 and q_offset >= 0 and grid.shape[0] in (1, B) and grid.shape[1] in (1, H)
          and grid.shape[2] >= shape[0] and grid.shape[3] >= shape[1])
    if not ok:
        got = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
        raise ValueError(f"{mask!r}.cells({Nq}, {Nk}) returned cell={cell}, q_offset={q_offset} and a grid {got} "
                         f"({getattr(grid, 'dtype', '?')} on {getattr(grid, 'device', '?')}); expected cell >= 1, "
                         f"q_offset >= 0 and a bool CPU grid of shape (1|{B}, 1|{H}, >= {shape[0]}, >= {shape[1]})")
    return int(cell), int(q_offset), grid.contiguous()


@dataclass(frozen=True)
class NativeCall:
    """What the native forward runs: the inputs, the tiled kernel's schedule, and where its mask tiles come from."""

    q: Tensor  # (B, H, Nq, D): the C code groups the query heads that share a k/v head itself
    k: Tensor  # (B, Hkv, Nk, D)
    v: Tensor  # (B, Hkv, Nk, Dv)
    mask: Mask | None
    plan: Sequence[Row]  # query blocks and the key chunks each visits (plan.make_plan)
    visible: Callable[[Row, int, int], Tensor]  # the mask's tile for a row's queries and keys ks:ke,
    # (b|1, Hkv|1, G|1, bq, ke - ks) bool; asked only for chunks that need the mask and have no cell grid
    guard_kv: bool  # k or v may hold NaN or inf: C zeroes the keys no query of a tile sees
    scale_log2: float  # the logit scale times log2(e): C's softmax runs on exp2


def forward(call: NativeCall) -> tuple[Tensor, Tensor]:
    """(out (B, Hkv, G, Nq, Dv), lse (B, Hkv, G, Nq) in log2 units), as the PyTorch path returns them."""
    lib, why_not = _library()
    if lib is None:  # serves() said no: the caller should not be here
        raise RuntimeError(f"the native tiled forward cannot run: {why_not}")
    q, k, v, plan = call.q, call.k, call.v, call.plan
    B, H, Nq, D = q.shape
    Hkv, Nk, Dv = k.shape[1], k.shape[-2], v.shape[-1]
    G = H // Hkv
    out = torch.empty(B, H, Nq, Dv, dtype=torch.float32)
    lse = torch.empty(B, H, Nq, dtype=torch.float32)

    # a mask constant on cells hands C its grid (chunk index -2), which C expands itself: no element tiles
    mask = call.mask
    cells = mask.cells(Nq, Nk) if mask is not None else None
    grid: Tensor | None = None
    cell_args: list[int | None] = [None, 0, 0, 0, 1, 0]  # cells, cell_sb, cell_sh, cell_sq, cell, cell_qoff
    if mask is not None and cells is not None:
        cell, q_offset, grid = _check_cells(mask, cells, B, H, Nq, Nk)
        strides = [0 if grid.shape[i] == 1 else grid.stride(i) for i in range(2)]
        cell_args = [grid.data_ptr(), *strides, grid.stride(2), cell, q_offset]

    rows: list[int] = []
    row_chunks = [0]
    chunks: list[list[int]] = []
    masks: list[list[int]] = []
    keep: list[Tensor] = []  # the mask tiles C reads, kept alive
    max_chunk, work = 1, []  # work: entries per row
    for row in plan:
        rows += [row.qs, row.qe]
        work.append(0)
        for ks, ke, needs_mask in row.chunks:
            index = -1
            if needs_mask and grid is not None:
                index = -2
            elif needs_mask:
                visible = call.visible(row, ks, ke)  # (b|1, Hkv|1, G|1, bq, ke - ks) bool
                if visible.stride(-1) != 1:
                    visible = visible.contiguous()
                keep.append(visible)
                strides = [0 if visible.shape[i] == 1 else visible.stride(i) for i in range(4)]
                index = len(masks)
                masks.append([visible.data_ptr()] + strides)
            chunks.append([ks, ke, index])
            max_chunk, work[-1] = max(max_chunk, ke - ks), work[-1] + (ke - ks) * (row.qe - row.qs)
        row_chunks.append(len(chunks))
    as_i64 = lambda x: torch.tensor(x, dtype=torch.int64).reshape(-1)  # noqa: E731
    rows_t, row_chunks_t = as_i64(rows), as_i64(row_chunks)
    order_t = as_i64(sorted(range(len(plan)), key=lambda i: (-work[i], -i)))  # most work first; ties: later first
    chunks_t, masks_t = as_i64(chunks or [0]), as_i64(masks or [0])

    flops = 2.0 * B * H * sum(work) * (D + Dv)
    workers = min(torch.get_num_threads(), len(plan) * B * Hkv) if flops >= _SERIAL_FLOPS else 1
    args = _Args(
        q.data_ptr(), q.stride(0), q.stride(1), q.stride(2),
        k.data_ptr(), k.stride(0), k.stride(1), k.stride(2),
        v.data_ptr(), v.stride(0), v.stride(1), v.stride(2),
        out.data_ptr(), lse.data_ptr(),
        B, H, Hkv, Nq, Nk, D, Dv,
        call.scale_log2,
        len(plan), rows_t.data_ptr(), row_chunks_t.data_ptr(), chunks_t.data_ptr(), masks_t.data_ptr(), max_chunk,
        int(call.guard_kv),  # q needs no guard: a masked score is replaced, whatever q held
        *cell_args, order_t.data_ptr(), _DTYPES[q.dtype],
    )
    status = lib.attnkit_tiled_fwd(ctypes.byref(args), workers)
    if status == 1:
        raise MemoryError("the native tiled forward could not allocate its scratch memory")
    if status:
        raise RuntimeError(f"the native tiled forward refused the call (status {status})")
    return out.reshape(B, Hkv, G, Nq, Dv), lse.reshape(B, Hkv, G, Nq)
