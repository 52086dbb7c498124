"""Argument checks shared by every layer, so each error reads the same way."""

from __future__ import annotations


def check_int(name: str, value: object, minimum: int = 1) -> None:
    """Raise unless ``value`` is an int (not a bool) >= ``minimum``: TypeError for anything else than an
    int, ValueError below the minimum. The message names ``name``, the limit and the value received."""
    what = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")


__all__ = ["check_int"]
