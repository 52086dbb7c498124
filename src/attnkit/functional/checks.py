"""Argument checks shared by every layer, so each error reads the same way."""

from __future__ import annotations

import math
import numbers


def check_int(name: str, value: object, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int, if it is an integer (not a bool) in [minimum, maximum]: a TypeError for anything
    else than an integer, a ValueError outside the range. The message names ``name``, the limits and the
    value received."""
    if maximum is not None:
        what = f"an int in [{minimum}, {maximum}]"
    else:
        what = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return number


def check_index(name: str, value: object, limit: int, owner: str, items: str) -> int:
    """``value`` as an index of one of the ``limit`` ``items`` of ``owner``: ``check_int(name, value, 0, limit - 1)``,
    whose ValueError outside the range says what is indexed instead, e.g. ``check_index("layer", 6, 6, "the model",
    "layers")`` raises "layer 6 is out of range: the model has 6 layers (0..5)"."""
    try:
        return check_int(name, value, minimum=0, maximum=limit - 1)
    except ValueError:
        assert isinstance(value, numbers.Integral)  # check_int raises ValueError only for integers
        raise ValueError(f"{name} {int(value)} is out of range: {owner} has {limit} {items} (0..{limit - 1})") from None


def is_positive_finite(value: object) -> bool:
    """Whether ``value`` is an int or float (not a bool) with 0 < value < inf (so not NaN): the one test behind
    every "a finite number > 0" option (softcap, norm eps, RoPE base, MoE capacity); callers word the error."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < math.inf


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool; a TypeError naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


__all__ = ["check_int", "check_index", "check_bool", "is_positive_finite"]
