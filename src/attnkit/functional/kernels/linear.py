"""Linear and kernelized attention: approximations of softmax attention in O(N) time and memory, chosen by
name (``kernel="linear"``, ``kernel="performer"`` or ``attnkit.kernel(name, **options)``), never by "auto".

Both replace the softmax weight exp(s q·k) by a dot product of positive features φ(q)·φ(k), so that

    out_i = Σ_j m_ij φ(q_i)·φ(k_j) v_j / Σ_j m_ij φ(q_i)·φ(k_j)
          = φ(q_i)ᵀ S / φ(q_i)ᵀ z,      S = Σ_j φ(k_j) v_jᵀ  (M, Dv),   z = Σ_j φ(k_j)  (M,)

- ``linear`` (Katharopoulos et al. 2020, "Transformers are RNNs"): φ(x) = elu(x) + 1, M = D.
- ``performer`` (Choromanski et al. 2020, FAVOR+): positive orthogonal random features
  φ(x) = exp(W x − |x|²/2) / √M with W (M, D), for which E[φ(a)·φ(b)] = exp(a·b).

Scale: both kernels apply φ to a = √s·q and b = √s·k (s = ``scale``, default 1/√D; a negative s flips q's
sign), so a·b = s q·k: the performer estimates the softmax weights exp(s q·k), and ``scale=1.0`` gives the
linear paper's φ(q)·φ(k).

Masks: causal (bottom-right aligned, as everywhere in attnkit) and key padding only. Causal attention runs
in chunks of ``chunk`` query positions: inside a chunk a masked (chunk × chunk) product of features, across
chunks a carried state S, z (z rides along S as an extra column of ones appended to v). Features are
made chunk by chunk, so no (N × N) or (N × M × Dv) tensor is ever built, and no (N × M) one either except
when a few queries face many keys without a mask (then φ(q) φ(k)ᵀ v is cheaper and the keys' features are
built once): working memory is O(chunk² + M·Dv) per head besides the output, O(N·chunk + (N/chunk)·M·Dv)
with autograd.
Rows whose keys are all masked (or that precede every key) output zeros. Half-precision inputs are
computed in float32. The performer's exponentials are stabilized by subtracting maxima that cancel in
the ratio: a per-row max for queries, a running max over the keys seen so far (the state rescales when
it grows, as in online softmax).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_bool, check_int
from ..masks import And, Dense, Device, Mask, Padding, SlidingWindow, shape4
from ..registry import Capabilities, get_kernel
from ..request import AttentionRequest, softmax_dtype
from .common import repeat_kv, zero_hidden

FeatureFn = Callable[[Tensor], Tensor]
DEFAULT_CHUNK = 64  # fastest (32 within noise) of 32..512 on the CPU, causal, N = 4k..64k, D = 64


# --------------------------------------------------------------------------------------------------
# Feature maps


def elu_features(x: Tensor) -> Tensor:
    """φ(x) = elu(x) + 1 > 0, elementwise: (..., D) -> (..., D)."""
    return F.elu(x).add_(1.0)  # in place: elu's backward keeps its input, not its output


def orthogonal_random_features(features: int, dim: int, *, generator: torch.Generator | None = None) -> Tensor:
    """W (features, dim) float64 on the CPU: blocks of ``dim`` orthogonal rows (QR of Gaussian matrices,
    sign-corrected to be Haar distributed), each row rescaled to the norm of an independent Gaussian vector
    (chi-distributed with ``dim`` degrees of freedom), so every row is marginally N(0, I)."""
    if dim == 0:
        return torch.zeros(features, 0, dtype=torch.float64)
    blocks = []
    for _ in range(-(-features // dim)):
        g = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        blocks.append((q * torch.sign(torch.diagonal(r))).T)  # (dim, dim), orthonormal rows
    norms = torch.randn(features, dim, generator=generator, dtype=torch.float64).norm(dim=1)  # (features,)
    return torch.cat(blocks)[:features] * norms[:, None]


def _positive_random_log_features(x: Tensor, w: Tensor) -> Tensor:
    """log(φ(x)·√M) = W x − |x|²/2: (..., N, D), W (M, D) -> (..., N, M)."""
    return x @ w.T - x.square().sum(dim=-1, keepdim=True) / 2


# --------------------------------------------------------------------------------------------------
# Which masks a kernelized kernel can serve: causal and key padding, possibly ANDed


def _mask_parts(mask: Mask | None) -> list[Mask]:
    if mask is None:
        return []
    if type(mask) is And:  # Or subclasses And: only a true AND is flattened
        return _mask_parts(mask.a) + _mask_parts(mask.b)
    return [mask]


def _classify(part: Mask, Nq: int, Nk: int) -> str | None:
    """"causal", "keys" (a key padding), "none" (a window that never binds) or None (not servable)."""
    if isinstance(part, SlidingWindow):
        if part.left is not None and part.left < Nk - 1:  # some query's left edge cuts off a key
            return None
        if part.right == 0:
            return "causal"
        return "none" if part.right is None or part.right >= Nq - 1 else None
    if isinstance(part, Padding):
        return "keys" if part.q_lengths is None else None
    if isinstance(part, Dense):
        return "keys" if shape4("mask", part.mask)[2] == 1 else None
    return None


def _mask_reasons(name: str, req: AttentionRequest) -> list[str]:
    _, _, _, Nq, Nk, _, _ = req.shape
    out = []
    for part in _mask_parts(req.mask):
        if _classify(part, Nq, Nk) is None:
            hint = ""
            if isinstance(part, Padding):
                hint = " (padding with q_lengths: pass padding(k_lengths) and ignore the padded query rows)"
            elif isinstance(part, Dense):
                hint = " (a key-padding tensor has size 1 in the query dimension: (B|1, H|1, 1, Nk))"
            out.append(f"{name} attention supports only causal and key-padding masks, got {part!r}{hint}")
    return out


def _key_mask(req: AttentionRequest) -> tuple[bool, Tensor | None]:
    """(causal, keys that may be attended (b, h, Nk) bool or None) of a request the kernel can serve."""
    _, _, _, Nq, Nk, _, _ = req.shape
    causal, valid = False, None
    for part in _mask_parts(req.mask):
        kind = _classify(part, Nq, Nk)
        if kind == "causal":
            causal = True
        elif kind == "keys":
            if isinstance(part, Padding):
                keys = torch.arange(Nk, device=req.q.device) < part.k_lengths.to(req.q.device)[:, None, None]
            else:
                assert isinstance(part, Dense)  # the other mask _classify calls "keys"
                keys = part.mask.reshape(shape4("mask", part.mask))[:, :, 0].to(req.q.device)  # (b, h, nk)
                keys = keys.expand(-1, -1, Nk)
            valid = keys if valid is None else valid & keys
    return causal, valid


# --------------------------------------------------------------------------------------------------
# The state, the inputs read slice by slice, and the two passes (every key, or causal in chunks)


@dataclass
class LinearState:
    """Running sums of a causal kernelized-attention stream, per k/v head, after ``length`` tokens.

    ``kv[..., :Dv]`` = Σ_j φ(k_j) v_jᵀ and ``kv[..., Dv]`` = Σ_j φ(k_j), in units of exp(``log_scale``)
    (performer; None for linear). Made and advanced by ``linear_attention_step``.
    """

    kv: Tensor  # (B, Hkv, M, Dv + 1), float32 (float64 for float64 inputs)
    log_scale: Tensor | None  # (B, Hkv, 1, 1) or None
    length: int
    kernel: str  # the kernel that made it, without chunk: a state only continues with the same features


@dataclass(frozen=True)
class _Inputs:
    """q, k, v and the feature maps, read slice by slice: features are made per chunk, so no full-length
    feature tensor exists (on the CPU, full-length temporaries cost more in page faults than in arithmetic)."""

    q: Tensor  # (B, Hs, R = Nq·G, D) query rows (t, g): the G query heads sharing one k/v head
    k: Tensor  # (B, Hs, Nk, D)
    v: Tensor  # (B, Hs, Nk, Dv)
    valid: Tensor | None  # (b, h, Nk) keys that may be attended, h in (1, Hs)
    scale: tuple[float, float]  # factors of q and k, product = the attention scale
    query_map: FeatureFn  # (..., D) -> (..., M) positive, up to a per-row factor (it cancels)
    key_map: FeatureFn  # (..., D) -> (..., M): φ, or log φ up to a shared constant when log_space
    log_space: bool
    features: int  # M
    group: int  # G

    def queries(self, start: int, end: int) -> Tensor:  # rows [start, end) -> (B, Hs, n, M)
        q = self.q[:, :, start:end]
        return self.query_map(q if self.scale[0] == 1 else q * self.scale[0])

    def keys(self, start: int, end: int) -> tuple[Tensor, Tensor]:  # keys [start, end) -> features, values
        k = self.k[:, :, start:end]
        kf = self.key_map(k if self.scale[1] == 1 else k * self.scale[1])  # (B, Hs, n, M)
        if self.valid is not None:  # a masked key's feature is 0 (log: -inf), its weight 0; v there is finite
            kf = torch.where(self.valid[..., start:end, None], kf, float("-inf") if self.log_space else 0.0)
        return kf, self.v[:, :, start:end]

    def empty_state(self, kernel: str) -> LinearState:
        B, Hs, _, Dv = self.v.shape
        floor = torch.full((B, Hs, 1, 1), torch.finfo(self.v.dtype).min / 4, dtype=self.v.dtype,
                           device=self.v.device)
        return LinearState(self.v.new_zeros(B, Hs, self.features, Dv + 1), floor if self.log_space else None,
                           0, kernel)


def _in_state_units(state: LinearState, kf: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Key features (B, Hs, n, M) in the units of the state, and the state's kv and log scale moved to a
    scale that fits the new keys (performer: exp of log features minus the running max, detached)."""
    if state.log_scale is None:
        return kf, state.kv, None
    if kf.shape[-2] == 0:  # no keys: nothing to rescale (and amax over an empty dimension raises)
        return kf.exp(), state.kv, state.log_scale
    scale = torch.maximum(state.log_scale, kf.detach().amax(dim=(-2, -1), keepdim=True))
    return torch.exp(kf - scale), state.kv * torch.exp(state.log_scale - scale), scale


def _with_ones(v: Tensor) -> Tensor:
    """(…, n, Dv) -> (…, n, Dv + 1): a column of ones, so that one product gives numerators and denominators."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def _absorb(state: LinearState, kf: Tensor, v: Tensor) -> LinearState:
    """The state after keys kf (B, Hs, n, M) with values v (B, Hs, n, Dv), seen by every later query."""
    kc, kv, scale = _in_state_units(state, kf)
    return LinearState(kv + kc.mT @ _with_ones(v), scale, state.length + kf.shape[2], state.kernel)


def _normalize(num_den: Tensor) -> Tensor:
    """(…, Dv + 1) sums -> (…, Dv) outputs. A zero denominator means every weight in the row is 0, so its
    numerator is 0 too (masked values are finite: zeroed when not): dividing by 1 there gives zeros."""
    num, den = num_den[..., :-1], num_den[..., -1:]
    return num / den.masked_fill(den <= 0, 1.0)


def _all_keys(x: _Inputs, state: LinearState, chunk: int) -> Tensor:
    """Every query row sees every key: normalized outputs (B, Hs, R, Dv)."""
    R, N, M, E = x.q.shape[2], x.k.shape[2], x.features, x.v.shape[-1] + 1
    if R * N * (M + E) < (R + N) * M * E:  # few queries (decoding): (φq φkᵀ) v is cheaper than φq (φkᵀ v)
        kc, _, _ = _in_state_units(state, x.keys(0, N)[0])
        return _normalize((x.queries(0, R) @ kc.mT) @ _with_ones(x.v))
    for s in range(0, N, chunk):
        state = _absorb(state, *x.keys(s, s + chunk))  # kv (B, Hs, M, Dv + 1)
    outs = [_normalize(x.queries(r, r + chunk) @ state.kv) for r in range(0, R, chunk)]
    return torch.cat(outs, dim=2) if outs else x.q.new_zeros(*x.q.shape[:2], 0, E - 1)


def _causal_chunks(x: _Inputs, state: LinearState, chunk: int, first_row: int, first_key: int,
                   length: int) -> tuple[Tensor, LinearState]:
    """Query position t < length, rows (first_row + t)·G + g, sees keys first_key + 0..t (and the state):
    normalized outputs (B, Hs, length·G, Dv) and the state after the last key."""
    G = x.group
    above = torch.ones(chunk, chunk, dtype=torch.bool, device=x.q.device).triu(1)
    above = above.repeat_interleave(G, dim=0)  # (C·G, C): row (t, g) must not see keys after t
    B, Hs, _, Dv = x.v.shape
    # without autograd, chunks fill one output (no concatenation at the end); with it, a slice assignment
    # per chunk would copy the whole output's gradient once per chunk in backward, so they are concatenated
    recording = torch.is_grad_enabled() and any(t.requires_grad for t in (x.q, x.k, x.v, state.kv))
    outs: list[Tensor] = []  # recording: each chunk's output
    filled = None if recording else x.v.new_empty(B, Hs, length * G, Dv)  # not recording: the one output
    for s in range(0, length, chunk):
        c = min(chunk, length - s)
        qc = x.queries((first_row + s) * G, (first_row + s + c) * G)  # (B, Hs, c·G, M)
        kf, v = x.keys(first_key + s, first_key + s + c)
        kc, kv, scale = _in_state_units(state, kf)  # (B, Hs, c, M)
        vc = _with_ones(v)  # (B, Hs, c, Dv + 1)
        scores = (qc @ kc.mT).masked_fill_(above[:c * G, :c], 0.0)  # (B, Hs, c·G, c)
        out = scores @ vc
        if state.length:
            out = out.add_(qc @ kv)
        if filled is None:
            outs.append(_normalize(out))
        else:
            filled[:, :, s * G:(s + c) * G] = _normalize(out)
        state = LinearState(kv + kc.mT @ vc, scale, state.length + c, state.kernel)
    if filled is not None:
        return filled, state
    return (torch.cat(outs, dim=2) if outs else x.v.new_zeros(B, Hs, 0, Dv)), state


def _causal(x: _Inputs, state: LinearState, chunk: int) -> Tensor:
    """Bottom-right aligned: query position i sits at key position i + Nk - Nq. Outputs (B, Hs, R, Dv)."""
    G, Nk = x.group, x.k.shape[2]
    Nq = x.q.shape[2] // G
    offset = Nk - Nq
    for s in range(0, max(0, offset), chunk):  # keys before the first query's position: every row sees them
        state = _absorb(state, *x.keys(s, min(s + chunk, offset)))
    lead = max(0, -offset)  # query positions before the first key see nothing
    out, _ = _causal_chunks(x, state, chunk, lead, max(0, offset), min(Nq, Nk))
    return torch.cat([out.new_zeros(*out.shape[:2], lead * G, out.shape[-1]), out], dim=2) if lead else out


def _split_scale(scale: float) -> tuple[float, float]:
    """(query factor, key factor) with product ``scale``: ±√|s| and √|s|."""
    root = math.sqrt(abs(scale))
    return math.copysign(root, scale), root


def _rows(t: Tensor, heads: int) -> Tensor:
    """(B, H, N, X) -> (B, heads, N·G, X), rows (t, g): the G = H / heads query heads of one state head."""
    B, H, N, X = t.shape
    G = H // heads
    return t if G == 1 else t.view(B, heads, G, N, X).transpose(2, 3).reshape(B, heads, N * G, X)


def _unrows(t: Tensor, H: int) -> Tensor:
    """Inverse of ``_rows``: (B, Hs, N·G, X) -> (B, H, N, X)."""
    B, Hs, R, X = t.shape
    G = H // Hs
    return t if G == 1 else t.view(B, Hs, R // G, G, X).transpose(2, 3).reshape(B, H, R // G, X)


# --------------------------------------------------------------------------------------------------
# The kernels


class _Kernelized:
    """What the linear and performer kernels share; subclasses are frozen dataclasses (their fields are the
    kernel's options, ``chunk`` among them) and define the feature maps."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # declared for the type checker: set on the subclasses
    name: str
    chunk: int  # query positions per causal chunk: a field of each subclass
    description = ""
    capabilities = Capabilities(masks="causal+padding", bias=False, bias_grad=False, score_functions=False,
                                softcap=False, dropout=False, return_lse=False, exact=False, memory="O(N)")
    log_space = False  # key features come as logs, exponentiated against a running max

    def _maps(self, d: int, device: torch.device, dtype: torch.dtype) -> tuple[FeatureFn, FeatureFn, int]:
        """The query map, the key map (φ, or log φ if ``log_space``) and the number of features M."""
        raise NotImplementedError

    # -- the registry's interface
    def configure(self, **options: Any) -> _Kernelized:
        """A copy with ``options`` changed; unknown options are a TypeError listing the valid ones."""
        names = [f.name for f in fields(self) if f.init]
        unknown = [name for name in options if name not in names]
        if unknown:
            raise TypeError(f"kernel {self.name!r} has no option {unknown[0]!r}; its options: {', '.join(names)}")
        return replace(self, **options)

    def not_supported_reasons(self, req: AttentionRequest) -> list[str]:
        return self.capabilities.reasons(req) + _mask_reasons(self.name, req)

    def __call__(self, req: AttentionRequest) -> Tensor:
        _, H, Hkv, _, _, _, _ = req.shape
        causal, valid = _key_mask(req)  # valid: (b, h, Nk) or None
        dtype = softmax_dtype(req.q.dtype)
        q, k, v = (t.to(dtype) for t in (req.q, req.k, req.v))
        if valid is not None and valid.shape[1] != 1 and H != Hkv:  # per-query-head padding: one state per head
            k, v = repeat_kv(k, H // Hkv), repeat_kv(v, H // Hkv)
        if valid is not None:  # NaN/inf in padded keys must not reach 0·NaN in a matmul
            k, v = zero_hidden(k, valid[..., None]), zero_hidden(v, valid[..., None])
        x = self._inputs(q, k, v, req.scale, valid)
        state = x.empty_state(self._features_key())
        out = _causal(x, state, self.chunk) if causal else _all_keys(x, state, self.chunk)
        return _unrows(out, H).to(req.q.dtype)  # (B, H, Nq, Dv)

    def _inputs(self, q: Tensor, k: Tensor, v: Tensor, scale: float, valid: Tensor | None) -> _Inputs:
        query_map, key_map, m = self._maps(q.shape[-1], q.device, q.dtype)
        return _Inputs(_rows(q, k.shape[1]), k, v, valid, _split_scale(scale), query_map, key_map, self.log_space,
                       m, q.shape[1] // k.shape[1])

    # -- the recurrent form
    def step(self, q: Tensor, k: Tensor, v: Tensor, state: LinearState | None = None, *,
             scale: float | None = None) -> tuple[Tensor, LinearState]:
        """Causal attention of n new tokens continuing ``state``; see ``linear_attention_step``."""
        req = AttentionRequest.build(q, k, v, scale=scale)
        B, H, Hkv, Nq, Nk, _, Dv = req.shape
        if Nq != Nk:
            raise ValueError(f"linear_attention_step takes as many new queries as new keys, got q with {Nq} "
                             f"and k with {Nk} tokens")
        dtype = softmax_dtype(q.dtype)
        x = self._inputs(q.to(dtype), k.to(dtype), v.to(dtype), req.scale, None)
        if state is None:
            state = x.empty_state(self._features_key())
        _check_state(state, self, (B, Hkv, x.features, Dv + 1), dtype)
        out, state = _causal_chunks(x, state, self.chunk, 0, 0, Nq)
        return _unrows(out, H).to(q.dtype), state

    def __repr__(self) -> str:
        return self._describe(set())

    def _features_key(self) -> str:
        """What a LinearState continues with: the kernel and its feature options, not ``chunk`` (speed only)."""
        return self._describe({"chunk"})

    def _describe(self, leave_out: set[str]) -> str:
        options = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.init and f.name not in leave_out]
        return f"kernel({', '.join([repr(self.name)] + options)})"


def _check_state(state: LinearState, kernel: _Kernelized, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if not isinstance(state, LinearState):
        raise TypeError(f"state must be a LinearState or None, got {type(state).__name__}")
    if state.kernel != kernel._features_key():
        raise ValueError(f"state was made by {state.kernel} but this step uses {kernel._features_key()}")
    if tuple(state.kv.shape) != shape or state.kv.dtype != dtype:
        raise ValueError(f"state holds kv {tuple(state.kv.shape)} {state.kv.dtype}, but these inputs need "
                         f"(B, Hkv, M, Dv + 1) = {shape} {dtype}")


@dataclass(frozen=True, repr=False)
class LinearKernel(_Kernelized):
    """Katharopoulos et al. 2020: φ(x) = elu(x) + 1 on √scale·q and √scale·k (``scale=1.0``: the paper's
    φ(q)·φ(k)). Approximate: never chosen by auto."""

    chunk: int = DEFAULT_CHUNK  # query positions per causal chunk (speed only; results do not depend on it)

    name = "linear"
    description = "approximate (only by name): linear attention, φ(x) = elu(x) + 1; causal and key padding"

    def __post_init__(self) -> None:
        check_int("chunk", self.chunk)

    def feature_map(self, x: Tensor) -> Tensor:
        """φ(x) (..., D) -> (..., D); the kernel applies it to √scale·q and √scale·k."""
        return elu_features(x)

    def _maps(self, d: int, device: torch.device, dtype: torch.dtype) -> tuple[FeatureFn, FeatureFn, int]:
        return elu_features, elu_features, d


@dataclass(frozen=True, repr=False)
class PerformerKernel(_Kernelized):
    """Choromanski et al. 2020 (FAVOR+): positive orthogonal random features estimating exp(scale q·k).
    Approximate: never chosen by auto.

    With ``redraw=False`` every call (every layer and head that shares this object) uses the same features,
    drawn once per (D, device, dtype) from ``seed`` on the CPU in float64, so results do not depend on the
    device; cached decoding and ``linear_attention_step`` need this. ``redraw=True`` draws new features from
    torch's global RNG on every call (``torch.manual_seed`` reproduces them), as Performer training does.
    """

    features: int = 256  # M, the number of random features: error ~ 1/√M
    seed: int = 0  # the features are drawn from torch.Generator().manual_seed(seed), on the CPU in float64
    redraw: bool = False  # True: new features from torch's global RNG on every call (training); False: fixed
    chunk: int = DEFAULT_CHUNK  # query positions per causal chunk (speed only)
    _cache: dict[tuple[int, torch.device, torch.dtype], Tensor] = field(  # (D, device, dtype) -> W
        default_factory=dict, init=False, compare=False)

    name = "performer"
    description = "approximate (only by name): FAVOR+ positive orthogonal random features; causal and key padding"
    log_space = True

    def __post_init__(self) -> None:
        check_int("features", self.features)
        check_int("chunk", self.chunk)
        check_int("seed", self.seed, 0)
        check_bool("redraw", self.redraw)

    def random_features(self, dim: int, device: Device = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """W (features, dim): from the seed (cached), or freshly drawn from torch's global RNG if redraw."""
        if self.redraw:
            return orthogonal_random_features(self.features, dim).to(device=device, dtype=dtype)
        key = (dim, torch.device(device or "cpu"), dtype)
        if key not in self._cache:
            gen = torch.Generator().manual_seed(self.seed)
            self._cache[key] = orthogonal_random_features(self.features, dim, generator=gen).to(device=device,
                                                                                               dtype=dtype)
        return self._cache[key]

    def feature_map(self, x: Tensor, w: Tensor | None = None) -> Tensor:
        """φ(x) = exp(W x − |x|²/2) / √M, (..., D) -> (..., M), unstabilized; W from ``random_features``
        unless given. The kernel applies it to √scale·q and √scale·k."""
        w = self.random_features(x.shape[-1], x.device, x.dtype) if w is None else w
        return torch.exp(_positive_random_log_features(x, w)) / math.sqrt(self.features)

    def _maps(self, d: int, device: torch.device, dtype: torch.dtype) -> tuple[FeatureFn, FeatureFn, int]:
        w = self.random_features(d, device, dtype)  # one draw serves queries and keys

        def query_map(a: Tensor) -> Tensor:  # (B, Hs, R, D) -> (B, Hs, R, M)
            logs = _positive_random_log_features(a, w)
            return torch.exp(logs - logs.detach().amax(dim=-1, keepdim=True))  # a per-row factor cancels

        return query_map, lambda b: _positive_random_log_features(b, w), self.features  # keys: logs

    def step(self, q: Tensor, k: Tensor, v: Tensor, state: LinearState | None = None, *,
             scale: float | None = None) -> tuple[Tensor, LinearState]:
        if self.redraw:
            raise ValueError("a recurrent state needs fixed features: use a performer kernel with redraw=False")
        return super().step(q, k, v, state, scale=scale)


def linear_attention_step(q: Tensor, k: Tensor, v: Tensor, state: LinearState | None = None, *,
                          kernel: str | _Kernelized = "linear",
                          scale: float | None = None) -> tuple[Tensor, LinearState]:
    """Causal linear (or performer) attention as a recurrence: n new tokens attend to themselves causally
    and to everything ``state`` has absorbed; returns their outputs and the advanced state.

    Feeding a sequence token by token (or in pieces) gives the same outputs as
    ``attention(q, k, v, causal=True, kernel=kernel)`` on the whole sequence, at O(M·Dv) memory per head.

    Args:
        q: (B, H, n, D) new queries; k (B, Hkv, n, D) and v (B, Hkv, n, Dv) the same n tokens' keys and values.
        state: the ``LinearState`` returned by the previous step, or None to start a sequence.
        kernel: "linear", "performer" or a configured ``attnkit.kernel("performer", ...)`` (redraw=False).
        scale: as in ``attention``, default 1/sqrt(D).

    Example:
        >>> state = None
        >>> for t in range(N):
        ...     out_t, state = attnkit.linear_attention_step(q[:, :, t:t+1], k[:, :, t:t+1], v[:, :, t:t+1], state)
    """
    chosen = get_kernel(kernel) if isinstance(kernel, str) else kernel
    if not isinstance(chosen, _Kernelized):
        raise TypeError(f"linear_attention_step needs a linear or performer kernel, got {chosen!r}")
    return chosen.step(q, k, v, state, scale=scale)


__all__ = ["LinearKernel", "PerformerKernel", "LinearState", "linear_attention_step", "elu_features",
           "orthogonal_random_features"]
