"""What the command line's modules share: its two kinds of error, one-line messages and argument types."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class UsageError(Exception):
    """Bad input that the CLI finds itself; the message names the argument or file (exit 2)."""


class CommandFailed(Exception):
    """The input was valid and the work failed; the message says what failed (exit 1)."""


def one_line(error: BaseException) -> str:
    """The message on one line: a multi-line one (a CheckpointError's list of problems) joined by '; '."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def check_out(path: str, option: str = "--out") -> Path:
    """``path`` is a directory, or can become one: its deepest existing part is a writable directory.
    Checked before any work, so a bad --out costs nothing."""
    out = Path(path)
    for part in [out, *out.parents]:
        if not part.exists():  # also False under a file (ENOTDIR)
            continue
        if not part.is_dir():
            where = "is a file" if part == out else f"is under {part}, a file"
            raise UsageError(f"{option} {path}: {where}; expected a directory")
        if not os.access(part, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path}: {part} is not writable")
        break
    return out


def commas(text: str) -> list[str]:
    """argparse type: comma-separated names."""
    return [x.strip() for x in text.split(",") if x.strip()]


def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated ints >= 1."""
    return [positive_int(x) for x in commas(text)] or [positive_int(text)]


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value
