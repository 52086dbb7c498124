"""A one-line progress bar on stderr: step i/n, what runs, elapsed and the time left.

On a terminal the line redraws in place; elsewhere (a log file, a test) each step prints a line.
The estimate weighs steps by their expected cost (``work``), not by their count.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total_work: float, steps: int, stream: TextIO | None = None, width: int = 24):
        self.total, self.steps, self.width = max(total_work, 1e-9), steps, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.i, self.start = 0.0, 0, time.perf_counter()

    def begin(self, what: str) -> None:
        """Show that the next step, ``what``, has started."""
        self.i += 1
        self._draw(what)

    def end(self, work: float) -> None:
        """The step that began last is finished; it weighed ``work``."""
        self.done += work

    def close(self, what: str = "done") -> None:
        self._draw(what, final=True)

    def note(self, msg: str) -> None:
        """A line of its own, above the bar."""
        self._write(("\r\033[K" if self.tty else "") + msg + "\n")

    def _draw(self, what: str, final: bool = False) -> None:
        elapsed = time.perf_counter() - self.start
        share = 1.0 if final else min(self.done / self.total, 1.0)
        filled = round(share * self.width)
        eta = "" if final or self.done <= 0 else f", ETA {elapsed * (1 - share) / share:4.0f} s"
        i = self.steps if final else self.i
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {i}/{self.steps} {what}  {elapsed:4.0f} s elapsed{eta}"
        self._write(f"\r\033[K{line}" + ("\n" if final else "") if self.tty else line + "\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
