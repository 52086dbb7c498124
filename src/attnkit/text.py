"""Plain-text tables for the terminal (the CLI and ``Explanation.summary``)."""

from __future__ import annotations


def format_table(rows: list[list[str]], header: list[str], *, right_from: int | None = None) -> str:
    """Columns under a header and a dashed rule, left-aligned (from column ``right_from`` on, right-aligned: numbers);
    trailing spaces stripped."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    right = len(widths) if right_from is None else right_from

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i >= right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
