"""``explain``: what a pretrained model attends to in one text, computed by attnkit's own implementation.

One forward pass of the model with :func:`~attnkit.inspect.capture` recording every layer; each layer's maps
are reduced as they are recorded, so memory stays at one layer's (H, N, N) however deep the model is:

- the focus token's attention row in every head, at full resolution (the terminal table, the head view);
- every head's map, pooled into at most ``max_tokens`` bins when the text is longer (the model view and
  heatmaps: a browser cannot draw 12 x 12 maps of 1000 x 1000 cells); a bin's row is the mean of its
  queries' rows, its column the sum over its keys, so pooled rows still sum to 1;
- the head-averaged map, for rollout.

    >>> e = explain("The animal didn't cross the street because it was too tired")
    >>> print(e.summary())                 # the focus token "it", per layer, standout heads, rollout
    >>> e.maps.shape                       # (6, 12, 15, 15): layers, heads, tokens, tokens
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..functional.checks import check_index, check_int
from .capture import capture, multi_head_layers
from .rollout import rollout
from ..text import format_table

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SEED_SENTENCE = "The animal didn't cross the street because it was too tired"
PRONOUNS = frozenset("it its itself he him his himself she her hers herself they them their theirs themselves "
                     "we us our i me my you your".split())
STOPWORDS = frozenset("a an the and or but if of to in on at by for with from as is was were be been are am do does "
                      "did not no so too very than then that this these those there here what which who whom "
                      "when where why how all any some such can could will would shall should may might must "
                      "has have had s t n't don didn doesn isn wasn".split())


@dataclass
class Explanation:
    """The attention of one text through one model, ready for the terminal, HTML and figures.

    Attributes:
        text: the input text (truncated texts keep only what the model saw; see ``truncated``).
        model_name: the checkpoint name or path, for titles.
        tokens: N display strings: each token's span of ``text`` (special tokens as themselves).
        special: N flags: True for special tokens ([CLS], [SEP], <s>, ...).
        focus: index of the focus token.
        layer, head: the layer and head shown in detail (0-based).
        causal: whether the model is a decoder (query i sees tokens 0..i): every attention layer's call was
            causal, as ``capture`` recorded it.
        maps: (L, H, M, M) float32 every head's map; M == N unless the text is longer than ``max_tokens``
            tokens, then the maps are pooled into the M token ranges ``bins``.
        bins: M half-open token ranges [start, end); (i, i + 1) for every token when not pooled.
        focus_rows: (L, H, N) float32 the focus token's attention to every token, at full resolution.
        rollout: (M, M) float32 attention rollout (Abnar & Zuidema 2020), pooled like ``maps``.
        rollout_row: (N,) float32 the focus token's rollout row, at full resolution.
        truncated: the tokenizer cut the text at the model's limit.
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

    @property
    def num_layers(self) -> int:
        return self.maps.shape[0]

    @property
    def num_heads(self) -> int:
        return self.maps.shape[1]

    @property
    def pooled(self) -> bool:
        return len(self.bins) != len(self.tokens)

    def bin_labels(self) -> list[str]:
        """A label per bin: the token itself, or "first…last" for a pooled range."""
        return [self.tokens[a] if b - a == 1 else f"{self.tokens[a]}…{self.tokens[b - 1]}" for a, b in self.bins]

    def top_targets(self, row: Tensor, k: int) -> list[tuple[int, float]]:
        """The k largest entries of a length-N row as (token index, weight), largest first."""
        values, index = row.topk(min(k, row.numel()))
        return list(zip(index.tolist(), values.tolist()))

    def standout_heads(self, ratio: float = 2.0) -> list[tuple[int, int, int, float, float]]:
        """Heads whose strongest target (from the focus token) stands out: at least ``ratio`` times the next
        weight, and neither a special token, the focus itself, nor (in a decoder) the first token — those
        are where heads park attention they do not use (Clark et al. 2019; Xiao et al. 2023, "attention
        sinks"). Returns (layer, head, target, weight, next weight), strongest first."""
        top = self.focus_rows.topk(min(2, len(self.tokens)), dim=-1)  # (L, H, 2) for every head at once
        weight, target = top.values[..., 0], top.indices[..., 0]
        second = top.values[..., 1] if len(self.tokens) > 1 else torch.zeros_like(weight)
        found = [(layer, head, int(target[layer, head]), float(weight[layer, head]), float(second[layer, head]))
                 for layer, head in (weight >= ratio * second).nonzero().tolist()]
        return sorted((f for f in found if self._informative(f[2])), key=lambda f: -f[3])

    def _informative(self, target: int) -> bool:
        return not self.special[target] and target != self.focus and not (self.causal and target == 0)

    def summary(self, top: int = 3, max_heads: int = 10) -> str:
        """The terminal report: per layer, the focus token's most-attended tokens (mean over heads); the
        standout heads; the rollout ranking."""
        name = lambda i: repr(self.tokens[i])  # noqa: E731
        lines = [f"model: {self.model_name} ({self.num_layers} layers x {self.num_heads} heads, "
                 f"{'decoder (causal)' if self.causal else 'encoder'})",
                 f"tokens ({len(self.tokens)}): {' '.join(self.tokens) if len(self.tokens) <= 64 else '...'}",
                 f"focus: {name(self.focus)} (token {self.focus})", *self.notes, ""]
        lines.append(f"Most-attended tokens from {name(self.focus)}, per layer (mean over heads):")
        rows = []
        for layer in range(self.num_layers):
            best = self.top_targets(self.focus_rows[layer].mean(0), top)
            rows.append([str(layer), *(f"{self.tokens[t]} {w:.2f}" for t, w in best)])
        lines.append(format_table(rows, ["layer", *(_ordinal(i + 1) for i in range(len(rows[0]) - 1))]))
        lines.append("")
        heads = self.standout_heads()
        if heads:
            lines.append(f"Heads whose strongest target from {name(self.focus)} stands out (>= 2x the next):")
            rows = [[str(l), str(h), self.tokens[t], f"{w:.2f}", f"{s:.2f}"] for l, h, t, w, s in heads[:max_heads]]
            lines.append(format_table(rows, ["layer", "head", "target", "weight", "next"]))
            if len(heads) > max_heads:
                lines.append(f"... and {len(heads) - max_heads} more")
        else:
            lines.append(f"No head's strongest target from {name(self.focus)} stands out (>= 2x the next) "
                         f"beyond special tokens and itself.")
        lines.append("")
        ranking = [(t, w) for t, w in self.top_targets(self.rollout_row, len(self.tokens)) if self._informative(t)]
        lines.append(f"Rollout (Abnar & Zuidema 2020), what {name(self.focus)} draws on through all layers "
                     f"(excluding itself and special tokens):")
        lines.append("  " + ", ".join(f"{self.tokens[t]} {w:.3f}" for t, w in ranking[:max(top, 5)]))
        return "\n".join(lines)


def _ordinal(n: int) -> str:
    return f"{n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def make_bins(n: int, max_tokens: int) -> list[tuple[int, int]]:
    """Split n tokens into min(n, max_tokens) contiguous ranges of nearly equal size."""
    m = min(n, max_tokens)
    edges = [round(i * n / m) for i in range(m + 1)]
    return list(zip(edges[:-1], edges[1:]))


def pool(probs: Tensor, bins: list[tuple[int, int]]) -> Tensor:
    """(..., N, N) -> (..., M, M): a bin's row is the mean of its queries' rows, its column the sum over its
    keys (pooled rows still sum to 1). Unchanged when every bin is one token."""
    n = probs.shape[-1]
    if len(bins) == n:
        return probs
    starts, ends = torch.tensor(bins, device=probs.device).T[..., None]  # (M, 1) each
    tokens = torch.arange(n, device=probs.device)
    member = ((tokens >= starts) & (tokens < ends)).to(probs.dtype)  # (M, N): which tokens each bin holds
    mean = member / member.sum(1, keepdim=True)
    return mean @ probs @ member.T


def _display(text: str, encoding, special_ids: set[int]) -> tuple[list[str], list[bool], list[int | None]]:
    """Each token's display string (its span of the text; special tokens as themselves), flags, words."""
    tokens, special = [], []
    for token_id, token, (start, end) in zip(encoding.ids, encoding.tokens, encoding.offsets):
        is_special = token_id in special_ids
        shown = token if is_special else text[start:end].strip() or token
        tokens.append(shown)
        special.append(is_special)
    return tokens, special, list(encoding.word_ids)


def choose_focus(tokens: list[str], special: list[bool], words: list[int | None], focus: str | int | None) -> int:
    """The focus token: an index; else the first token of the word ``focus`` (case-insensitive; its first
    occurrence); else, by default, the last pronoun, or the last content word, or the last non-special token."""
    if isinstance(focus, int) and not isinstance(focus, bool):
        if not -len(tokens) <= focus < len(tokens):
            raise ValueError(f"focus index {focus} is out of range for {len(tokens)} tokens")
        return focus % len(tokens)
    firsts = [i for i, w in enumerate(words) if not special[i] and (i == 0 or words[i - 1] != w)]
    word_text = {i: _word(tokens, words, i).lower() for i in firsts}
    if focus is not None:
        if not isinstance(focus, str):
            raise TypeError(f"focus must be a word (str), a token index (int) or None, got {type(focus).__name__}")
        wanted = focus.strip().lower()
        matches = [i for i in firsts if word_text[i] == wanted] or \
                  [i for i, t in enumerate(tokens) if t.lower() == wanted]
        if not matches:
            shown = ", ".join(repr(_word(tokens, words, i)) for i in firsts[:40])
            raise ValueError(f"focus word {focus!r} is not in the text; its words: {shown}")
        return matches[0]
    for pick in (lambda w: w in PRONOUNS, lambda w: w.isalpha() and w not in STOPWORDS):
        chosen = [i for i in firsts if pick(word_text[i])]
        if chosen:
            return chosen[-1]
    plain = [i for i, s in enumerate(special) if not s]
    return plain[-1] if plain else len(tokens) - 1


def _word(tokens: list[str], words: list[int | None], first: int) -> str:
    """The whole word that starts at token ``first``: its tokens' spans joined."""
    end = first + 1
    while end < len(tokens) and words[end] is not None and words[end] == words[first]:
        end += 1
    return "".join(tokens[first:end])


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
            max_length: int | None = None) -> Explanation:
    """Run ``text`` through ``model`` and gather what ``Explanation`` holds (see the module docstring).

    Args:
        text: the input text.
        model: None (the bundled all-MiniLM-L6-v2), a name or directory for ``attnkit.hub.load`` (BERT-family
            encoders, GPT-2 decoders), a ``(model, tokenizer)`` pair, or an attnkit BERT / GPT with ``tokenizer``.
        focus: the token to explain: a word of the text (its first occurrence), a token index, or None for
            the last pronoun / content word.
        layer, head: the map shown in detail; None = the head whose focus row stands out most (else the
            last layer's head 0).
        kernel: attention kernel for the forward ("dense", "sdpa", "tiled", ...); the maps are the same.
        max_tokens: texts longer than this are shown pooled into this many token ranges.
        max_length: truncate the text to this many tokens (default: the tokenizer's limit).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    check_int("max_tokens", max_tokens, minimum=2)
    model, tokenizer, name = _load(model, tokenizer)
    if tokenizer is None:
        raise ValueError(f"{name} has no tokenizer files; pass tokenizer= (an attnkit.hub Tokenizer)")
    encoding = tokenizer.encoding(text, max_length=max_length)
    truncated = bool(encoding.overflowing)
    special_ids = {tokenizer.backend.token_to_id(t) for t in tokenizer.special_tokens.values()}
    tokens, special, words = _display(text, encoding, special_ids)
    n = len(tokens)
    if n == 0:
        raise ValueError("the text has no tokens")
    focus = choose_focus(tokens, special, words, focus)
    bins = make_bins(n, max_tokens)

    def reduce(index: int, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs = probs[0].float()  # (H, N, N)
        return pool(probs, bins), probs[:, focus], probs.mean(0)

    ids = torch.tensor([encoding.ids])
    with capture(model, reduce=reduce) as record, _kernel(model, kernel):
        model(ids, attention_mask=torch.ones_like(ids))
    if any(m is None for m in record.maps):
        raise ValueError(f"{name}: only {sum(m is not None for m in record.maps)} of {len(record.maps)} attention "
                         f"layers ran on a text (an encoder-decoder needs its own explain)")
    maps = torch.stack([m[0] for m in record.maps])  # (L, H, M, M)
    focus_rows = torch.stack([m[1] for m in record.maps])  # (L, H, N)
    rolled = rollout([m[2][None] for m in record.maps])[0]  # (N, N)
    explanation = Explanation(
        text=text, model_name=name, tokens=tokens, special=special, focus=focus, layer=0, head=0,
        causal=all(record.causal), maps=maps, bins=bins, focus_rows=focus_rows, rollout=pool(rolled, bins),
        rollout_row=rolled[focus].clone(), truncated=truncated)
    explanation.layer, explanation.head = _detail(explanation, layer, head)
    if truncated:
        explanation.notes.append(f"note: the text was truncated to the model's {n} tokens")
    if explanation.pooled:
        explanation.notes.append(f"note: {n} tokens; maps are shown pooled into {len(bins)} token ranges "
                                 f"(--max-tokens to change)")
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
