"""The first-token attention sink (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks"):
where a decoder parks attention that nothing else needs. One rule, :func:`find_sink`, decides for ``explain``'s
report (``Explanation.sink``) and for any causal ``view``; :meth:`Sink.sentence` says it in one sentence.

    >>> sink = find_sink(rows, "<s>")        # rows (L, H, N): one query's attention per layer and head
    >>> sink.sentence("'it'", "the tables below also rank the tokens without it") if sink else None
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

SINK_SHARE = 0.5  # "most of the attention": at least half of it, averaged over heads


@dataclass(frozen=True)
class Sink:
    """The focus token's attention to the first token, where that is most of it: where decoders park attention
    that nothing else needs (the "attention sink" of Xiao et al. 2023, "Efficient Streaming Language Models
    with Attention Sinks").

    Attributes:
        token: the first token's display string.
        layers: the layers whose head-averaged weight from the focus token to the first token is >= SINK_SHARE.
        num_layers: the model's layer count.
        share: that weight averaged over ``layers`` (0.0 when there are none: the rollout alone qualifies).
        rollout: the focus token's rollout weight on the first token; None where no rollout was computed (a
            view of maps that are not a model's consecutive layers).
    """

    token: str
    layers: tuple[int, ...]
    num_layers: int
    share: float
    rollout: float | None

    def sentence(self, focus: str, also: str) -> str:
        """One plain sentence for the report: ``focus`` names the focus token, ``also`` ends the sentence."""
        if not self.layers and self.rollout is not None:  # the rollout alone: no layer sinks, rollout drains there
            return (f"Most of the rollout of {focus} ({self.rollout:.0%}) goes to the first token, {self.token!r}, "
                    f"though no layer gives it half: rollout drains toward a decoder's first token, which sees "
                    f"only itself; {also}.")
        where = [f"{self.share:.0%} {_layer_span(self.layers, self.num_layers)}"]
        if self.rollout is not None and self.rollout >= SINK_SHARE:
            where.append(f"{self.rollout:.0%} of the rollout")
        return (f"Most of the attention from {focus} ({'; '.join(where)}) goes to the first token, {self.token!r}: "
                f"decoders park attention there when nothing else is relevant (an 'attention sink', Xiao et al. "
                f"2023); {also}.")


def _layer_span(layers: tuple[int, ...], total: int) -> str:
    """'in all 30 layers', 'in layer 3', 'in layers 3-29' or 'in 21 of 30 layers: 3-8, 13-15, 17-29'; 'over the
    heads' for maps of one layer."""
    if total == 1:
        return "over the heads"
    if len(layers) == total:
        return f"in all {total} layers"
    if len(layers) == 1:
        return f"in layer {layers[0]}"
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    spans = [str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs]
    return f"in layers {spans[0]}" if len(runs) == 1 else f"in {len(layers)} of {total} layers: {', '.join(spans)}"


def find_sink(rows: Tensor, token: str, rollout: float | None = None) -> Sink | None:
    """The attention sink in one query's rows, if there is one: the layers of ``rows`` (L, H, N) -- that query's
    attention to every key, per layer and head -- whose head-averaged weight on the first key is >= SINK_SHARE;
    ``rollout`` (that query's rollout weight on the first token, when one was computed) qualifies on its own.
    ``token`` is the first key's display string. None when neither does."""
    weight = rows[:, :, 0].float().mean(1)  # (L,) each layer's head-averaged weight on the first key
    layers = tuple((weight >= SINK_SHARE).nonzero().flatten().tolist())
    if not layers and (rollout is None or rollout < SINK_SHARE):
        return None
    share = float(weight[list(layers)].mean()) if layers else 0.0
    return Sink(token, layers, rows.shape[0], share, rollout)
