"""Plain-text tables for the terminal (the CLI and ``Explanation.summary``)."""

from __future__ import annotations


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns under a header and a dashed rule; trailing spaces stripped."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
