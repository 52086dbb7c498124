"""Attention against attribution, measured on one input: how far is "most attended" from "most important"?

For the focus token of an explanation, each method scores every token the focus sees (all tokens in an
encoder, tokens 0..focus in a decoder; the focus itself aside); the ground truth is an intervention:

- **ablation** (the ground truth): the token is masked out of every attention call (its key column; the
  attention mask's 0), and the model re-run. A decoder's positions follow the mask, so this equals deleting
  the token; an encoder's learned positions stay where they were. The effect is the change of what is
  explained (below).
- **attention**: the focus token's attention row, averaged over heads, per layer, their mean, and the last
  layer's; **rollout** (Abnar & Zuidema 2020), as ``explain`` computes it.
- **attention x gradient**: sum over layers and heads of ``A[f, j] * dy/dA[f, j]`` on the focus row, where
  ``dy/dA[f, j] = dy/d(out_f) . v_j`` for that head's output and values (exact, from one backward pass).
- **gradient x input**: ``dy/de_j . e_j`` for token j's input embedding (the word-embedding layer's output).
- **integrated gradients** (Sundararajan et al. 2017), by Captum, along the straight path from the average
  token (the embedding table's mean direction, at each token's own length) to the input; the steps double
  while the completeness gap is above 5%. Not from zero embeddings, nor from the mean embedding itself (whose
  length is near zero in a large vocabulary): a pre-norm decoder's first RMSNorm is scale-invariant except
  within its epsilon of zero, so along such a path the change happens almost all at the start, where no
  quadrature resolves it.

What is explained, ``y``: for a decoder, the log-probability of the token the model predicts after the focus
token; the ablation effect is its change. For an encoder, the focus token's final vector ``h`` (the issue
is what changes it): the ablation effect is ``|h' - h| / |h|``. A gradient needs one number, so the vector
is read along ``K`` (default 32) orthonormal random directions scaled by ``sqrt(D / K)``, whose squared
attributions sum to an unbiased estimate of each token's squared vector attribution (exact when K = D); it
is divided by ``|h|`` too. Every score is a magnitude: which tokens matter, not in which direction.

Each method's agreement with the ablation is Spearman's rank correlation over the scored tokens (NaN where
it is undefined: fewer than 3 tokens, or constant scores).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..nn.attention import AttentionCall, MultiHeadAttention
from ..text import format_table
from .capture import multi_head_layers

MEAN = "attention, mean of layers"
LAST = "attention, last layer"
ROLLOUT = "rollout"
ATTENTION_GRADIENT = "attention × gradient"
GRADIENT_INPUT = "gradient × input"
INTEGRATED = "integrated gradients"
METHODS = (MEAN, LAST, ROLLOUT, ATTENTION_GRADIENT, GRADIENT_INPUT, INTEGRATED)
ABLATION = "ablation"


@dataclass
class Attribution:
    """Every method's scores for one focus token, the ablation's effects and how well each method ranks them.

    Attributes:
        target: what the scores explain, in words (the predicted token's log-probability, or the focus
            token's final vector).
        scored: indices of the tokens scored (those the focus sees, itself aside), in order.
        scores: method name -> (N,) scores >= 0 (``METHODS`` order); zero for tokens not scored.
        ablation: (N,) the effect of masking each token out; zero for tokens not scored.
        correlations: method name -> Spearman's rho with the ablation over ``scored`` (NaN: undefined).
        layer_correlations: (L,) raw attention of each layer against the ablation.
        content_correlations: as ``correlations``, over the scored tokens that are not special tokens; empty
            when none of the scored tokens is special (it would repeat ``correlations``).
        directions: how many directions read an encoder's vector (1 for a decoder's scalar).
        completeness: integrated gradients' relative gap between its attributions' sum and the change of the
            explained number from the baseline (small with enough steps).
        steps: the integrated gradients' steps that reached it (``steps`` doubled while the gap is above 5%).
        notes: lines for the report: integrated gradients still incomplete after every doubling.
    """

    target: str
    scored: list[int]
    scores: dict[str, Tensor]
    ablation: Tensor
    correlations: dict[str, float]
    layer_correlations: list[float]
    content_correlations: dict[str, float] = field(default_factory=dict)
    directions: int = 1
    completeness: float = 0.0
    steps: int = 0
    notes: list[str] = field(default_factory=list)

    def best(self) -> str | None:
        """The method that ranks the tokens closest to the ablation (None if no correlation is defined)."""
        defined = [(rho, m) for m, rho in self.correlations.items() if not math.isnan(rho)]
        return max(defined)[1] if defined else None

    def names(self, label: Callable[[int], str]) -> Callable[[int], str]:
        """``label`` with the token index appended where two scored tokens would read alike ("capital@1")."""
        seen: dict[str, int] = {}
        for t in self.scored:
            seen[label(t)] = seen.get(label(t), 0) + 1
        return lambda t: label(t) if seen.get(label(t), 0) < 2 else f"{label(t)}@{t}"

    def table(self, label: Callable[[int], str], top: int = 3) -> tuple[list[str], list[list[str]]]:
        """(header, rows): per method (and the ablation), Spearman's rho against the ablation, over all scored
        tokens and (when some are special) over the others alone, and the method's top tokens."""
        name = self.names(label)
        content = bool(self.content_correlations)
        rows = []
        for method, values in [*self.scores.items(), (ABLATION, self.ablation)]:
            rhos = ["—"] * (1 + content) if method == ABLATION else \
                [_rho(self.correlations[method]), *([_rho(self.content_correlations[method])] if content else [])]
            ranked = sorted(self.scored, key=lambda t: -float(values[t]))[:top]
            rows.append([method, *rhos, "; ".join(f"{name(t)} {float(values[t]):.2g}" for t in ranked)])
        return ["method", "rho", *(["rho, no special tokens"] if content else []), f"top {top} tokens"], rows

    def token_table(self, label: Callable[[int], str]) -> tuple[list[str], list[list[str]], list[list[float]]]:
        """(header, rows, shades) for the page: one row per scored token, most affected by the ablation first, one
        column per method and the ablation: the token's score, and its shade (over the column's largest)."""
        name = self.names(label)
        columns = [*self.scores.values(), self.ablation]
        tops = [float(c[self.scored].max()) if self.scored else 0.0 for c in columns]
        rows, shades = [], []
        for t in sorted(self.scored, key=lambda t: -float(self.ablation[t])):
            rows.append([name(t), *(f"{float(c[t]):.3g}" for c in columns)])
            shades.append([float(c[t]) / top if top > 0 else 0.0 for c, top in zip(columns, tops)])
        return ["token", *self.scores, ABLATION], rows, shades

    def note(self, focus: str, label: Callable[[int], str]) -> str:
        """A plain-language reading of the table for this input."""
        if len(self.scored) < 3:
            return f"{focus} sees fewer than 3 other tokens: no ranking to compare."
        strongest = max(self.scored, key=lambda t: float(self.ablation[t]))
        attended = max(self.scored, key=lambda t: float(self.scores[MEAN][t]))
        rho, best = self.correlations[MEAN], self.best()
        same = ("it is also the token the focus attends to most" if attended == strongest else
                f"the most-attended token, {label(attended)!r}, is not it")
        sentences = [f"Masking {label(strongest)!r} changes {self.target} most; {same}."]
        if not math.isnan(rho):
            sentences.append(f"Raw attention (mean of layers) ranks the tokens {_agreement(rho)} "
                             f"(rho {rho:.2f}).")
        if best is not None and best != MEAN:
            sentences.append(f"Closest to the ablation here: {best} (rho {self.correlations[best]:.2f}).")
        sentences.append("One input proves nothing in general; it shows how far attention is from explanation "
                         "on this one.")
        return " ".join(sentences)

    def lead(self, focus: str) -> str:
        """The sentence that says what is measured (the terminal section's first line, the page's lead)."""
        read = "" if self.directions == 1 else f"; gradients read the vector along {self.directions} random directions"
        return (f"Ground truth: how much each token changes {self.target} when it is masked out (the ablation{read}). "
                f"Each method's ranking of the {len(self.scored)} tokens {focus} sees against it, Spearman's rho "
                f"(+1 = the same order, 0 = unrelated).")

    def summary(self, focus: str, label: Callable[[int], str], top: int = 3) -> str:
        """The terminal section: what is measured, the method table, the per-layer line and the note."""
        layers = " ".join(_rho(r) for r in self.layer_correlations)
        return "\n".join([f"Attention vs attribution for {focus}. {self.lead(focus)}",
                          format_table(*self.table(label, top)[::-1]),
                          f"raw attention, layer by layer, rho: {layers}", *self.notes, self.note(focus, label)])


def _rho(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}"


def _agreement(rho: float) -> str:
    if rho >= 0.7:
        return "much as the ablation does"
    if rho >= 0.4:
        return "partly as the ablation does"
    if rho >= 0.1:
        return "only loosely as the ablation does"
    return "unlike the ablation"


def ranks(values: Tensor) -> Tensor:
    """Ranks from 1, ties sharing their average rank (float64)."""
    values = values.double()
    order = values.argsort(stable=True)
    sorted_values = values[order]
    rank = torch.empty_like(values)
    start = 0
    n = values.numel()
    while start < n:
        end = start + 1
        while end < n and sorted_values[end] == sorted_values[start]:
            end += 1
        rank[order[start:end]] = (start + end + 1) / 2  # the mean of ranks start+1 .. end
        start = end
    return rank


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors; NaN for fewer than 3 values or a constant one."""
    if a.numel() != b.numel():
        raise ValueError(f"spearman needs equal lengths, got {a.numel()} and {b.numel()}")
    if a.numel() < 3:
        return math.nan
    ra, rb = ranks(a) - (a.numel() + 1) / 2, ranks(b) - (b.numel() + 1) / 2
    denominator = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return math.nan if denominator == 0 else float((ra * rb).sum()) / denominator


def _word_embeddings(model: nn.Module) -> nn.Embedding:
    """The module whose output is the input embeddings: BERT's ``word_embeddings``, a GPT's ``token_embedding``."""
    for name in ("word_embeddings", "token_embedding"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Embedding):
            return module
    raise ValueError(f"attribution needs an attnkit BERT-family encoder or GPT-family decoder, got "
                     f"{type(model).__name__}")


@contextmanager
def _embeddings_replaced(module: nn.Embedding, value: Callable[[], Tensor]) -> Iterator[None]:
    handle = module.register_forward_hook(lambda m, inputs, output: value())
    try:
        yield
    finally:
        handle.remove()


class _Explained:
    """The number(s) explained and a forward pass from input embeddings to them.

    ``run(embeds)`` -> (B, K): each row's projections on the K directions (a decoder: K = 1, the predicted
    token's log-probability); rows share the text's ids and take ``embeds`` (B, N, E) as the word embeddings."""

    def __init__(self, model: nn.Module, ids: Tensor, focus: int, causal: bool, directions: int, seed: int):
        self.model, self.ids, self.focus, self.causal = model, ids, focus, causal
        self.embedding = _word_embeddings(model)
        with torch.no_grad():
            self.embeds = self.embedding(ids).detach()  # (1, N, E)
            mean = self.embedding.weight.mean(0)  # the average token's direction, at each token's own length
            self.baseline = (mean / mean.norm() * self.embeds.norm(dim=-1, keepdim=True)).detach()  # (1, N, E)
            out = self.vector(model(ids, attention_mask=torch.ones_like(ids)))  # (1, C)
        if causal:
            self.predicted = int(out[0].argmax())
            self.directions = torch.ones(1, 1, dtype=out.dtype)
            self.scale = 1.0
        else:
            d = out.shape[-1]
            k = min(directions, d)
            generator = torch.Generator().manual_seed(seed)
            basis = torch.linalg.qr(torch.randn(d, k, generator=generator, dtype=torch.float64))[0]  # (D, K)
            self.directions = (basis.T * math.sqrt(d / k)).to(out.dtype)  # (K, D): exact when K = D
            self.scale = 1.0 / float(out[0].norm())  # attributions relative to |h|, as the ablation's change
        self.reference = out[0]

    def vector(self, output) -> Tensor:
        """(B, C): a decoder's log-probabilities at the focus, an encoder's focus vector."""
        if self.causal:
            return torch.log_softmax(output.logits[:, self.focus].float(), dim=-1)
        return output.last_hidden_state[:, self.focus].float()

    def explained(self, vector: Tensor) -> Tensor:
        """(B, K): what is explained, from ``vector`` (B, C)."""
        if self.causal:
            return vector[:, [self.predicted]]
        return vector @ self.directions.T

    def run(self, embeds: Tensor) -> Tensor:
        """(B, K) what is explained, for rows that take ``embeds`` (B, N, E) as their word embeddings."""
        ids = self.ids.expand(embeds.shape[0], -1)
        with _embeddings_replaced(self.embedding, lambda: embeds):
            return self.explained(self.vector(self.model(ids, attention_mask=torch.ones_like(ids))))

    @property
    def count(self) -> int:
        return self.directions.shape[0]

    def ablation(self, scored: Sequence[int], chunk: int) -> Tensor:
        """(N,) the change of what is explained when each scored token is masked out (zero elsewhere)."""
        n = self.ids.shape[1]
        effect = torch.zeros(n, dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, len(scored), chunk):
                tokens = list(scored[start:start + chunk])
                mask = torch.ones(len(tokens), n, dtype=torch.long)
                mask[torch.arange(len(tokens)), torch.tensor(tokens)] = 0
                out = self.vector(self.model(self.ids.expand(len(tokens), -1), attention_mask=mask))
                if self.causal:
                    change = (out[:, self.predicted] - self.reference[self.predicted]).abs()
                else:
                    change = (out - self.reference).norm(dim=-1) * self.scale
                effect[tokens] = change.double()
        return effect


@contextmanager
def _attention_gradients(model: nn.Module) -> Iterator[list[tuple[Tensor, Tensor]]]:
    """Record each attention layer's values ``v`` (B, Hkv, N, Dv) and heads' outputs (B, N, H * Dv), with their
    gradient retained, in layer order (the outputs are the input of the layer's ``out_proj``)."""
    layers = [m for _, m in multi_head_layers(model)]
    found: list[tuple[Tensor, Tensor]] = []
    values: dict[int, Tensor] = {}

    def recorder(i: int) -> Callable[[MultiHeadAttention, AttentionCall], None]:
        def record(module: MultiHeadAttention, call: AttentionCall) -> None:
            values[i] = call.v
        return record

    def before_projection(i: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            heads = inputs[0]
            heads.retain_grad()
            found.append((values.pop(i), heads))
        return hook

    handles = [m.attach(recorder(i)) for i, m in enumerate(layers)]
    handles += [m.out_proj.register_forward_pre_hook(before_projection(i)) for i, m in enumerate(layers)]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def _gradient_scores(explained: _Explained, focus_rows: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """(N,) attention x gradient and (N,) gradient x input, exact, from one backward pass per chunk of
    directions. ``focus_rows`` (L, H, N): the focus token's attention in every head."""
    n = explained.ids.shape[1]
    attention_gradient = torch.zeros(explained.count, n, dtype=torch.float64)
    gradient_input = torch.zeros(explained.count, n, dtype=torch.float64)
    f = explained.focus
    for start in range(0, explained.count, chunk):
        rows = torch.arange(start, min(start + chunk, explained.count))
        embeds = explained.embeds.expand(len(rows), -1, -1).clone().requires_grad_(True)
        with _attention_gradients(explained.model) as layers:
            y = explained.run(embeds)  # (b, K)
        y[torch.arange(len(rows)), rows].sum().backward()  # each copy its own direction
        assert embeds.grad is not None
        gradient_input[rows] = (embeds.grad * embeds.detach()).sum(-1).double()  # (b, N)
        if len(layers) != focus_rows.shape[0]:
            raise ValueError(f"{len(layers)} attention layers ran, the explanation has {focus_rows.shape[0]}")
        for (v, heads), weights in zip(layers, focus_rows):
            assert heads.grad is not None
            h = weights.shape[0]
            grad = heads.grad[:, f].reshape(len(rows), h, -1)  # (b, H, Dv): dy / d(out_f) for each head
            values = v.detach().repeat_interleave(h // v.shape[1], dim=1)  # (b, H, N, Dv): GQA's shared values
            d_weights = torch.einsum("bhd,bhnd->bhn", grad, values)  # (b, H, N): dy / dA[f, :]
            attention_gradient[rows] += (d_weights * weights).sum(1).double()
    return _magnitude(attention_gradient, explained), _magnitude(gradient_input, explained)


def _magnitude(per_direction: Tensor, explained: _Explained) -> Tensor:
    """(K, N) -> (N,): the norm over directions (a decoder's one: the absolute value), relative to |h|."""
    return per_direction.norm(dim=0) * explained.scale


GAP = 0.05  # integrated gradients' completeness gap below which its steps suffice
REFINEMENTS = 3  # at most this many doublings of the steps while the gap is above GAP


def _integrated(explained: _Explained, steps: int, chunk: int) -> tuple[Tensor, float, int]:
    """(N,) integrated gradients' magnitudes by Captum, its completeness gap and the steps that reached it.

    The gap is |sum of attributions - (y(input) - y(baseline))| over |y(input) - y(baseline)|, as norms over the
    directions. A decoder's log-probability can jump along the path (-12 to -0.06 between two tenths of it,
    measured on SmolLM2), which few steps miss: while the gap is above ``GAP`` the steps double, at most
    ``REFINEMENTS`` times."""
    try:
        from captum.attr import IntegratedGradients
    except ImportError as error:  # pragma: no cover - captum is a declared extra
        raise ImportError("integrated gradients need Captum: pip install 'attnkit[viz]' (or captum)") from error
    method = IntegratedGradients(lambda embeds: explained.run(embeds))
    for refinement in range(REFINEMENTS + 1):
        total = torch.zeros(explained.count, explained.ids.shape[1], dtype=torch.float64)
        deltas = torch.zeros(explained.count, dtype=torch.float64)
        for start in range(0, explained.count, chunk):
            rows = list(range(start, min(start + chunk, explained.count)))
            inputs = explained.embeds.expand(len(rows), -1, -1).clone()
            baselines = explained.baseline.expand_as(inputs).clone()
            attributions, delta = method.attribute(inputs, baselines=baselines, target=rows, n_steps=steps,
                                                   internal_batch_size=chunk, return_convergence_delta=True)
            total[rows] = attributions.sum(-1).double()  # (b, N)
            deltas[rows] = delta.detach().double()
        gap = float(deltas.norm() / (total.sum(-1) - deltas).norm().clamp_min(1e-12))  # sum - delta = y(x) - y(b)
        if gap <= GAP or refinement == REFINEMENTS:
            return _magnitude(total, explained), gap, steps
        steps *= 2
    raise AssertionError("unreachable")


def attribute(model: nn.Module, ids: Tensor, *, focus: int, causal: bool, focus_rows: Tensor, rollout_row: Tensor,
              special: Sequence[bool], decode: Callable[[int], str], steps: int = 50, directions: int = 32,
              chunk: int = 32, seed: int = 0) -> Attribution:
    """Every method's scores for ``focus`` in ``ids`` (1, N), the ablation and the rank correlations.

    ``focus_rows`` (L, H, N) and ``rollout_row`` (N,) are what ``explain`` measured, ``special`` (N,) flags the
    special tokens; ``decode`` turns a token id
    into text (to name a decoder's predicted token); ``steps`` are integrated gradients' steps; ``directions``
    read an encoder's vector (``K``); ``chunk`` rows run per batch."""
    n = ids.shape[1]
    scored = [t for t in range(focus + 1 if causal else n) if t != focus]
    explained = _Explained(model, ids, focus, causal, directions, seed)
    with torch.enable_grad():
        attention_gradient, gradient_input = _gradient_scores(explained, focus_rows.float(), chunk)
        integrated, gap, steps = _integrated(explained, steps, chunk)
    ablation = explained.ablation(scored, chunk)
    attention = focus_rows.float().mean(1)  # (L, N)
    # fresh float64 tensors each (the rollout row copied: the caller's stays as it is), zeroed below where unscored
    scores = {MEAN: attention.mean(0).double(), LAST: attention[-1].double(),
              ROLLOUT: rollout_row.to(torch.float64, copy=True), ATTENTION_GRADIENT: attention_gradient,
              GRADIENT_INPUT: gradient_input, INTEGRATED: integrated}
    index = torch.tensor(scored, dtype=torch.long)
    unscored = torch.ones(n, dtype=torch.bool)
    unscored[index] = False
    for values in scores.values():
        values[unscored] = 0.0
    truth = ablation[index]
    correlations = {name: spearman(values[index], truth) for name, values in scores.items()}
    layer_correlations = [spearman(row.double()[index], truth) for row in attention]
    content = torch.tensor([t for t in scored if not special[t]], dtype=torch.long)
    content_correlations = {} if len(content) == len(scored) else \
        {name: spearman(values[content], ablation[content]) for name, values in scores.items()}
    notes = [f"note: integrated gradients' completeness gap is still {gap:.1%} after {steps} steps (--steps to "
             f"raise): its scores are rough"] if gap > GAP else []
    target = "the focus token's final vector" if not causal else \
        f"log p({decode(explained.predicted)!r}) (the predicted next token)"
    return Attribution(target=target, scored=scored, scores=scores, ablation=ablation,
                       correlations=correlations, layer_correlations=layer_correlations,
                       content_correlations=content_correlations, directions=explained.count, completeness=gap,
                       steps=steps, notes=notes)

