"""``explain``: what a pretrained model attends to in one text, computed by attnkit's own implementation.

One forward pass of the model with :func:`~attnkit.inspect.capture` recording every layer; each layer's maps
are reduced as they are recorded, so memory stays at one layer's (H, N, N) however deep the model is:

- the focus token's attention row in every head, at full resolution (the terminal table, the head view);
- every head's map, pooled into at most ``max_tokens`` bins when the text is longer (the model view and
  heatmaps: a browser cannot draw 12 x 12 maps of 1000 x 1000 cells); a bin's row is the mean of its
  queries' rows, its column the sum over its keys, so pooled rows still sum to 1;
- the head-averaged map, for rollout.

Decoders (every attention call causal, as ``capture`` records it; GPT-2, the Llama family with grouped-query
heads and RoPE, ...) are shown as they compute: the focus token attends only to itself and the tokens before
it, so rankings cover those tokens, and the views draw later tokens as masked, never as zero weights. A
decoder's default focus is the last pronoun, as for an encoder (its antecedent comes before it), else the
last token, from which the next token is predicted. When most of the focus token's attention goes to the
first token (>= half, averaged over heads, in some layer or in the rollout) -- the "attention sink" of Xiao
et al. 2023 -- :meth:`Explanation.sink` measures it from the maps, the report says so in one sentence, and
the tables rank the other tokens beside it. A tokenizer that adds no BOS token (SmolLM2's) leaves the text's
first word as the first token, and that word then takes the sink's role.

    >>> e = explain("The animal didn't cross the street because it was too tired")
    >>> print(e.summary())                 # the focus token "it", per layer, standout heads, rollout
    >>> e.maps.shape                       # (6, 12, 15, 15): layers, heads, tokens, tokens
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..functional.checks import check_index, check_int
from ..nn.attention import check_exact_kernel
from .attribution import Attribution, attribute
from .capture import capture, multi_head_layers
from .pooling import make_bins, pool
from .rollout import rollout
from .sink import SINK_SHARE as SINK_SHARE  # where the sink rule's threshold was first defined: still importable
from .sink import Sink, find_sink
from .tokens import PRONOUNS as PRONOUNS, STOPWORDS as STOPWORDS  # importable here as before
from .tokens import _ordinal, choose_focus as choose_focus, display, find_focus, label, token_lines
from .viewdata import Axis
from .views import View
from ..text import format_table

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SEED_SENTENCE = "The animal didn't cross the street because it was too tired"


@dataclass
class Explanation:
    """The attention of one text through one model, ready for the terminal, HTML and figures.

    Attributes:
        text: the input text (truncated texts keep only what the model saw; see ``truncated``).
        model_name: the checkpoint name or path, for titles.
        tokens: N display strings: each token's span of ``text`` (special tokens as themselves; a token of
            whitespace alone as visible marks, e.g. "␣", "↵").
        special: N flags: True for special tokens ([CLS], [SEP], <s>, ...).
        focus: index of the focus token.
        layer, head: the layer and head shown in detail (0-based).
        causal: whether the model is a decoder (query i sees tokens 0..i): every attention layer's call was
            causal, as ``capture`` recorded it.
        maps: (L, H, M, M) float32 every head's map; M == N unless the text is longer than ``max_tokens``
            tokens, then the maps are pooled into the M token ranges ``bins``. A grouped-query model's maps
            have one head per query head.
        bins: M half-open token ranges [start, end); (i, i + 1) for every token when not pooled.
        focus_rows: (L, H, N) float32 the focus token's attention to every token, at full resolution.
        rollout: (M, M) float32 attention rollout (Abnar & Zuidema 2020), pooled like ``maps``.
        rollout_row: (N,) float32 the focus token's rollout row, at full resolution.
        truncated: the tokenizer cut the text at the model's limit.
        notes: lines for the report and the page: truncation, pooling, what a ``focus`` word matched.
        joins: N flags: True for a token that continues the previous token's word (a word piece after the
            first); the terminal shows "·" there (``tokens.label``). Empty: no word pieces marked.
        attributions: attention against attribution for the focus token (``explain(..., attribution=True)``;
            :class:`~attnkit.inspect.attribution.Attribution`), else None.
    """

    text: str
    model_name: str
    tokens: list[str]
    special: list[bool]
    focus: int
    layer: int
    head: int
    causal: bool
    maps: Tensor
    bins: list[tuple[int, int]]
    focus_rows: Tensor
    rollout: Tensor
    rollout_row: Tensor
    truncated: bool = False
    notes: list[str] = field(default_factory=list)
    joins: list[bool] = field(default_factory=list)
    attributions: Attribution | None = None

    @property
    def num_layers(self) -> int:
        return self.maps.shape[0]

    @property
    def num_heads(self) -> int:
        return self.maps.shape[1]

    @property
    def pooled(self) -> bool:
        return len(self.bins) != len(self.tokens)

    @property
    def visible(self) -> int:
        """How many tokens the focus token attends to: tokens 0..focus in a decoder, all in an encoder."""
        return self.focus + 1 if self.causal else len(self.tokens)

    def label(self, i: int) -> str:
        """Token ``i`` as the terminal shows it alone: a word piece with "·" where it joins ("Cu·", "·rie")."""
        return label(self.tokens, self.joins, i)

    def to_view(self) -> View:
        """This explanation as a :class:`~attnkit.inspect.View` (what ``as_view``, the page and the figures draw):
        its maps (pooled as they are), tokens as ``label`` shows them ("Cu·", "·rie"), focus token, detail head,
        notes and sink sentence, and itself (for its table and rollout). ValueError when a field's shape does not
        fit the tokens and bins."""
        self._check_shapes()
        shown = tuple(self.label(i) for i in range(len(self.tokens)))  # word pieces marked as in the terminal
        axis = Axis(shown, tuple(self.bins), tuple(bool(s) for s in self.special))
        sink = self.sink_sentence(also="the table and the rollout bars below also rank the tokens without it")
        return View(maps=self.maps.float(), queries=axis, keys=axis, kind="self", causal=bool(self.causal),
                    offset=0, title=self.model_name, focus=self.focus, layer=self.layer, head=self.head,
                    notes=list(self.notes), sink=sink, explanation=self)

    def _check_shapes(self) -> None:
        n, m = len(self.tokens), len(self.bins)
        expected = {"maps": (self.num_layers, self.num_heads, m, m), "focus_rows": (self.num_layers, self.num_heads, n),
                    "rollout": (m, m), "rollout_row": (n,)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"explanation.{name} has shape {tuple(getattr(self, name).shape)}, expected {shape} "
                                 f"for {n} tokens in {m} bins")
        if self.joins and len(self.joins) != n:
            raise ValueError(f"explanation.joins has {len(self.joins)} flags, expected one per token ({n})")
        if not 0 <= self.focus < n or not 0 <= self.layer < self.num_layers or not 0 <= self.head < self.num_heads:
            raise ValueError(f"focus {self.focus}, layer {self.layer} or head {self.head} is out of range for {n} "
                             f"tokens, {self.num_layers} layers, {self.num_heads} heads")

    def _repr_html_(self) -> str:
        """The interactive page, inline in a notebook (:meth:`View._repr_html_`)."""
        return self.to_view()._repr_html_()

    def top_targets(self, row: Tensor, k: int) -> list[tuple[int, float]]:
        """The k largest entries of a length-N row as (token index, weight), largest first."""
        values, index = row.topk(min(k, row.numel()))
        return list(zip(index.tolist(), values.tolist()))

    def standout_heads(self, ratio: float = 2.0) -> list[tuple[int, int, int, float, float]]:
        """Heads whose strongest target (from the focus token) stands out: at least ``ratio`` times the next
        weight, and neither a special token, the focus itself, nor (in a decoder) the first token — those
        are where heads park attention they do not use (Clark et al. 2019; Xiao et al. 2023, "attention
        sinks"). Only the tokens the focus sees compete. Returns (layer, head, target, weight, next weight),
        strongest first."""
        seen = self.focus_rows[..., :self.visible]  # (L, H, visible): a decoder's later tokens are masked
        top = seen.topk(min(2, self.visible), dim=-1)  # (L, H, 2) for every head at once
        weight, target = top.values[..., 0], top.indices[..., 0]
        second = top.values[..., 1] if self.visible > 1 else torch.zeros_like(weight)
        found = [(layer, head, int(target[layer, head]), float(weight[layer, head]), float(second[layer, head]))
                 for layer, head in (weight >= ratio * second).nonzero().tolist()]
        return sorted((f for f in found if self._informative(f[2])), key=lambda f: -f[3])

    def _informative(self, target: int) -> bool:
        return not self.special[target] and target != self.focus and not (self.causal and target == 0)

    def sink(self) -> Sink | None:
        """The first token's share of the focus token's attention, where it is most of it (>= SINK_SHARE
        averaged over heads, in some layer or in the rollout), measured on ``focus_rows`` and ``rollout_row``.
        None for an encoder, for a focus that is the first token (it sees only itself), and when no layer and
        not the rollout gives the first token that much."""
        if not self.causal or self.focus == 0:
            return None
        return find_sink(self.focus_rows, self.tokens[0], float(self.rollout_row[0]))

    def sink_sentence(self, also: str = "the tables below also rank the tokens without it") -> str | None:
        """:meth:`Sink.sentence` for the focus token, or None when there is no sink."""
        sink = self.sink()
        return None if sink is None else sink.sentence(repr(self.tokens[self.focus]), also)

    def rollout_rest(self) -> Tensor:
        """(N,) the focus token's rollout without the first token: each other token's share of what does not go
        to the first token (all zeros when nothing is left). In a decoder, rollout drains toward the first
        token (it sees only itself, so what flows there stays), which this view sets aside."""
        rest = self.rollout_row.clone()
        rest[0] = 0.0
        total = rest.sum()  # summed from the small entries: exact where 1 - rollout_row[0] would round to 0
        return rest / total if total > 0 else rest

    def layer_table(self, top: int = 3) -> tuple[list[str], list[list[str]]]:
        """(header, rows) of the per-layer table: the focus token's most-attended tokens (mean over heads)
        among the tokens it sees; with a sink, the first token's weight in a column of its own, then the
        other tokens ranked without it."""
        skip = 1 if self.sink() is not None else 0
        rows = []
        for layer in range(self.num_layers):
            row = self.focus_rows[layer].mean(0)[:self.visible]  # (visible,)
            best = [(t + skip, w) for t, w in self.top_targets(row[skip:], top)]
            rows.append([str(layer), *([f"{float(row[0]):.2f}"] * skip),
                         *(f"{self.label(t)} {w:.2f}" for t, w in best)])
        first = [f"first: {self.label(0)}"] * skip
        return ["layer", *first, *(_ordinal(i + 1) for i in range(min(top, self.visible - skip)))], rows

    def summary(self, top: int = 3, max_heads: int = 10) -> str:
        """The terminal report: per layer, the focus token's most-attended tokens (mean over heads); the
        standout heads; the rollout ranking. A decoder's report says which tokens the focus sees, and names
        an attention sink when there is one (:meth:`sink`)."""
        focus = repr(self.label(self.focus))
        seen = (f"; a decoder: it attends to the {self.visible} tokens up to it (0-{self.focus}), none after"
                if self.causal else "")
        sink = self.sink_sentence()
        lines = [f"model: {self.model_name} ({self.num_layers} layers x {self.num_heads} heads, "
                 f"{'decoder (causal)' if self.causal else 'encoder'})",
                 *token_lines(self.tokens, self.joins),
                 f"focus: {focus} (token {self.focus}){seen}", *self.notes, *([sink] if sink else []), ""]
        among = f", among the {self.visible} tokens up to it" if self.causal else ""
        split = "; the first token's weight, then the others ranked without it" if sink else ""
        lines.append(f"Most-attended tokens from {focus}, per layer (mean over heads{among}){split}:")
        lines.append(format_table(*self.layer_table(top)[::-1]))
        lines.append("")
        heads = self.standout_heads()
        if heads:
            lines.append(f"Heads whose strongest target from {focus} stands out (>= 2x the next):")
            rows = [[str(l), str(h), self.label(t), f"{w:.2f}", f"{s:.2f}"] for l, h, t, w, s in heads[:max_heads]]
            lines.append(format_table(rows, ["layer", "head", "target", "weight", "next"]))
            if len(heads) > max_heads:
                lines.append(f"... and {len(heads) - max_heads} more")
        else:
            lines.append(f"No head's strongest target from {focus} stands out (>= 2x the next) "
                         f"beyond special tokens{', the first token' if self.causal else ''} and itself.")
        lines.append("")
        lines += self._rollout_lines(top)
        if self.attributions is not None:
            lines += ["", self.attributions.summary(focus, self.label, top)]
        return "\n".join(lines)

    def attribution_data(self) -> dict[str, object] | None:
        """The page's attention-vs-attribution section (None without ``attributions``): its lead sentence, the
        method table, the token table with each cell's shade in [0, 1], notes and the plain-language reading."""
        a = self.attributions
        if a is None:
            return None
        focus = repr(self.label(self.focus))
        header, rows = a.table(self.label, top=3)
        token_header, token_rows, shades = a.token_table(self.label)
        return {"lead": a.lead(focus),
                "methods": {"header": header, "rows": rows},
                "tokens": {"header": token_header, "rows": token_rows, "shades": shades},
                "layers": [None if math.isnan(r) else r for r in a.layer_correlations],
                "notes": list(a.notes), "reading": a.note(focus, self.label)}

    def _rollout_lines(self, top: int) -> list[str]:
        focus = repr(self.label(self.focus))
        head = f"Rollout (Abnar & Zuidema 2020), what {focus} draws on through all layers"
        shown = lambda ranking: ", ".join(f"{self.label(t)} {w:.3f}" for t, w in ranking[:max(top, 5)])  # noqa: E731
        if not self.causal:
            ranking = [(t, w) for t, w in self.top_targets(self.rollout_row, len(self.tokens)) if self._informative(t)]
            return [f"{head}:", *self._special_share(range(len(self.tokens))),
                    f"  the others: {shown(ranking) or 'none'}"]
        if self.focus == 0:
            return [f"{head}: only itself (the first token of a decoder sees nothing else)."]
        rest = self.rollout_rest()
        ranking = [(t, w) for t, w in self.top_targets(rest[:self.visible], self.visible) if self._informative(t)]
        left = float(self.rollout_row[1:].sum())
        first = f"the first token, {self.label(0)!r}, {float(self.rollout_row[0]):.3f}"
        return [f"{head}: {first} (rollout drains toward a decoder's first token, which sees only itself); the "
                f"others (excluding itself and special tokens) as shares of the remaining {left:.2g}:",
                "  " + (shown(ranking) or "none"),
                *(self._special_share(range(1, self.visible)) if any(self.special[1:self.visible]) else [])]

    def _special_share(self, among: range) -> list[str]:
        """The rollout line's special tokens (those of ``among`` that are special), with their total, and the focus
        token's share of itself: what the ranking of the others leaves out."""
        row = self.rollout_row
        specials = sorted((t for t in among if self.special[t] and t != self.focus), key=lambda t: -float(row[t]))
        itself = f"itself {float(row[self.focus]):.3f}"
        if not specials:
            return [f"  {itself}"]
        each = ", ".join(f"{self.tokens[t]} {float(row[t]):.3f}" for t in specials)
        total = float(row[specials].sum())
        return [f"  special tokens {total:.3f} ({each}), where heads park attention they do not use (Clark et al. "
                f"2019); {itself}"]


def _load(model, tokenizer):
    """(model, tokenizer, name) from a name/path, a (model, tokenizer) pair, or a model plus tokenizer."""
    if model is None or isinstance(model, str):
        from .. import hub  # inspect sits beside hub: the import happens only when a name must be loaded

        name = DEFAULT_MODEL if model is None else model
        model, loaded = hub.load(name)
        return model, tokenizer or loaded, name
    if isinstance(model, tuple) and len(model) == 2:
        model, tokenizer = model
    return model, tokenizer, type(model).__name__


@contextmanager
def _kernel(model: nn.Module, kernel: str | None) -> Iterator[None]:
    """Run the block with every attention layer on ``kernel`` (None: as they are), then restore each one's."""
    layers = [m for _, m in multi_head_layers(model)]
    saved = [m.kernel for m in layers]
    if kernel is not None:
        for m in layers:
            m.kernel = kernel
    try:
        yield
    finally:
        for m, k in zip(layers, saved):
            m.kernel = k


@torch.no_grad()
def explain(text: str, model=None, *, tokenizer=None, focus: str | int | None = None, layer: int | None = None,
            head: int | None = None, kernel: str | None = None, max_tokens: int = 128,
            max_length: int | None = None, attribution: bool = False, steps: int = 50) -> Explanation:
    """Run ``text`` through ``model`` and gather what ``Explanation`` holds (see the module docstring).

    Args:
        text: the input text.
        model: None (the bundled all-MiniLM-L6-v2), a name or directory for ``attnkit.hub.load`` (BERT-family
            encoders; decoders: GPT-2 and the Llama family, e.g. "HuggingFaceTB/SmolLM2-135M-Instruct"), a
            ``(model, tokenizer)`` pair, or an attnkit BERT / GPT with ``tokenizer``.
        focus: the token to explain: a word of the text ("WORD:N" for its N-th occurrence; default the first, and
            a note lists the others; a word split into pieces stands as its first piece, a decoder's as its
            last, and a note says so), a token index (0..N-1), or None for the last pronoun, else an encoder's
            last content word or a decoder's last token (``tokens.find_focus``).
        layer, head: the map shown in detail; None = the head whose focus row stands out most (else the
            last layer's head 0).
        kernel: an exact attention kernel for the forward ("dense", "sdpa", "tiled", ...); the maps are the same.
            An approximate one ("linear", "performer") is a ValueError: it would change what the model computes.
        max_tokens: texts longer than this are shown pooled into this many token ranges.
        max_length: truncate the text to this many tokens (default: the tokenizer's limit).
        attribution: also measure attention against attribution for the focus token (``attributions``: raw
            attention, rollout, attention x gradient, gradient x input and integrated gradients, each ranked
            against the effect of masking each token out; ``attnkit.inspect.attribution``). Costs a backward
            pass per 32 directions, ``steps`` of them for integrated gradients, and one forward per token.
        steps: integrated gradients' steps (with ``attribution``).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    check_int("max_tokens", max_tokens, minimum=2)
    check_int("steps", steps, minimum=1)
    check_exact_kernel(kernel)
    model, tokenizer, name = _load(model, tokenizer)
    if tokenizer is None:
        raise ValueError(f"{name} has no tokenizer files; pass tokenizer= (an attnkit.hub Tokenizer)")
    encoding = tokenizer.encoding(text, max_length=max_length)
    truncated = bool(encoding.overflowing)
    special_ids = {tokenizer.backend.token_to_id(t) for t in tokenizer.special_tokens.values()}
    decode = lambda i: tokenizer.backend.decode([i], skip_special_tokens=False)  # noqa: E731
    tokens, special, words, pieces, joins = display(text, encoding, special_ids, decode)
    n = len(tokens)
    if n == 0:
        raise ValueError("the text has no tokens")
    # the default focus differs for a decoder, known only once the layers have run: record both candidates' rows
    by_kind = {causal: find_focus(pieces, special, words, focus, causal=causal) for causal in (False, True)}
    candidates = sorted({index for index, _ in by_kind.values()})
    bins = make_bins(n, max_tokens)

    def reduce(index: int, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs = probs[0].float()  # (H, N, N)
        return pool(probs, bins), probs[:, candidates], probs.mean(0)  # (H, M, M), (H, C, N), (N, N)

    ids = torch.tensor([encoding.ids])
    with capture(model, reduce=reduce) as record, _kernel(model, kernel):
        model(ids, attention_mask=torch.ones_like(ids))
    if any(m is None for m in record.maps):
        raise ValueError(f"{name}: only {sum(m is not None for m in record.maps)} of {len(record.maps)} attention "
                         f"layers ran on a text (an encoder-decoder needs its own explain)")
    maps = torch.stack([m[0] for m in record.maps])  # (L, H, M, M)
    causal = all(record.causal)
    focus, matched = by_kind[causal]
    focus_rows = torch.stack([m[1][:, candidates.index(focus)] for m in record.maps])  # (L, H, N)
    rolled = rollout([m[2][None] for m in record.maps])[0]  # (N, N)
    explanation = Explanation(
        text=text, model_name=name, tokens=tokens, special=special, focus=focus, layer=0, head=0,
        causal=causal, maps=maps, bins=bins, focus_rows=focus_rows, rollout=pool(rolled, bins),
        rollout_row=rolled[focus].clone(), truncated=truncated, notes=list(matched), joins=joins)
    explanation.layer, explanation.head = _detail(explanation, layer, head)
    if truncated:
        explanation.notes.append(f"note: the text was truncated to the model's {n} tokens")
    if explanation.pooled:
        explanation.notes.append(f"note: {n} tokens; maps are shown pooled into {len(bins)} token ranges "
                                 f"(--max-tokens to change)")
    if attribution:
        with _kernel(model, kernel):
            explanation.attributions = attribute(model, ids, focus=focus, causal=causal, focus_rows=focus_rows,
                                                 rollout_row=explanation.rollout_row, special=special, decode=decode,
                                                 steps=steps)
    return explanation


def _detail(e: Explanation, layer: int | None, head: int | None) -> tuple[int, int]:
    """The (layer, head) to show in detail: as given (validated); by default the deepest layer that has a
    standout head (where heads tend to follow meaning rather than position), else the last, and in it the
    strongest standout head, else the head with the most peaked focus row."""
    for what, value, limit in (("layer", layer, e.num_layers), ("head", head, e.num_heads)):
        if value is not None:
            check_index(what, value, limit, "the model", f"{what}s")
    standout = e.standout_heads()
    if layer is None:
        layer = max((l for l, h, *_ in standout if head in (None, h)), default=e.num_layers - 1)
    if head is None:
        in_layer = [h for l, h, *_ in standout if l == layer]
        head = in_layer[0] if in_layer else int(e.focus_rows[layer].amax(-1).argmax())
    return layer, head
