""":class:`CheckpointError`, the one error for a checkpoint that cannot be read or does not fit its model, and
the formatting that keeps its message readable when hundreds of tensors are listed.

A single problem reads as one line naming the file; a mismatch lists one category per heading, tensors that
differ only in their layer index grouped (``encoder.layer.{0..5}.output.dense.bias``), wrapped to 100 columns:

    /ckpt/model.safetensors: the checkpoint does not fit the model
      missing tensors (6):
        encoder.layer.{0..5}.output.dense.bias
      wrong shapes (1):
        embeddings.word_embeddings.weight expected (128, 32) got (129, 32)
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable

_INDEX = re.compile(r"(?:^|(?<=\.))(\d+)(?=\.|$)")  # the first numeric path component: a layer index
_WIDTH = 100


def _ranges(numbers: Iterable[int]) -> str:
    """{0, 1, 2, 3, 5, 7, 8} -> "0..3,5,7,8" (runs of three or more as a..b)."""
    values = sorted(set(numbers))
    parts, start = [], 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[end + 1] == values[end] + 1:
            end += 1
        run = values[start:end + 1]
        parts += [f"{run[0]}..{run[-1]}"] if len(run) >= 3 else [str(v) for v in run]
        start = end + 1
    return ",".join(parts)


def grouped(names: Iterable[str], suffix: dict[str, str] | None = None) -> list[str]:
    """Names that differ only in their first numeric component (and share ``suffix[name]``, e.g. their
    shapes) as one entry ``prefix.{0..5}.rest``; in the order of each group's first name."""
    suffix = suffix or {}
    groups: dict[tuple[str, str], list[int]] = {}
    singles: dict[tuple[str, str], str] = {}
    for name in names:
        match = _INDEX.search(name)
        pattern = name if match is None else f"{name[:match.start()]}{{}}{name[match.end():]}"
        key = (pattern, suffix.get(name, ""))
        groups.setdefault(key, []).append(int(match.group(1)) if match else -1)
        singles.setdefault(key, name)
    entries = []
    for (pattern, tail), indices in groups.items():
        name = singles[(pattern, tail)] if len(indices) == 1 else pattern.replace("{}", f"{{{_ranges(indices)}}}", 1)
        entries.append(f"{name}{tail}")
    return entries


def _section(title: str, entries: list[str], *, one_per_line: bool = False) -> list[str]:
    lines = [f"  {title}:"]
    if one_per_line:
        return lines + [f"    {e}" for e in entries]
    return lines + textwrap.wrap(", ".join(entries), _WIDTH, initial_indent="    ", subsequent_indent="    ",
                                 break_long_words=False, break_on_hyphens=False)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it describes. The lists name the tensors
    in the checkpoint's own spelling, every one of them; the message groups them by layer.

    Attributes:
        source: the file the problem is in (config.json, the weights or their index, a tokenizer file).
        missing: tensors the model needs that the checkpoint lacks.
        unexpected: tensors in the checkpoint that no part of the model takes.
        wrong_shapes: ``(name, expected shape, shape in the checkpoint)`` for each tensor of the wrong shape.
        problems: anything else, one sentence each.
    """

    def __init__(self, source: str, *, missing: list[str] | None = None, unexpected: list[str] | None = None,
                 wrong_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
                 problems: list[str] | None = None):
        self.source = source
        self.missing = sorted(missing or [])
        self.unexpected = sorted(unexpected or [])
        self.wrong_shapes = sorted(wrong_shapes or [])
        self.problems = list(problems or [])
        super().__init__(self._message())

    def _message(self) -> str:
        if len(self.problems) == 1 and not (self.missing or self.unexpected or self.wrong_shapes):
            return f"{self.source}: {self.problems[0]}"
        lines = [f"{self.source}: the checkpoint does not fit the model"]
        lines += [f"  {p}" for p in self.problems]
        if self.missing:
            lines += _section(f"missing tensors ({len(self.missing)})", grouped(self.missing))
        if self.unexpected:
            lines += _section(f"unexpected tensors ({len(self.unexpected)})", grouped(self.unexpected))
        if self.wrong_shapes:
            shapes = {n: f" expected {tuple(e)} got {tuple(g)}" for n, e, g in self.wrong_shapes}
            lines += _section(f"wrong shapes ({len(self.wrong_shapes)})",
                              grouped([n for n, _, _ in self.wrong_shapes], shapes), one_per_line=True)
        return "\n".join(lines)


__all__ = ["CheckpointError", "grouped"]
