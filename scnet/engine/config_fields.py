"""Typed checks for the fields of a run spec (`RunConfig`, `Schedule`, `EvalConfig`).

Values reach these dataclasses from JSON (config.json), from `--set KEY=VALUE` (JSON, else a string)
and from Python, so a field declared `int` can arrive as 1.5, true or "abc". Each check refuses a
value of the wrong kind or range with one message naming the field, and returns the value in one
canonical form (2.0 -> 2 for an integer field, 1 -> 1.0 for a float one) so equal runs hash equally.
"""
from __future__ import annotations

import math
from typing import Any

from scnet.config import ConfigError


def _bounds(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"> {low}" if low_open else f">= {low}")
    if high is not None:
        parts.append(f"< {high}" if high_open else f"<= {high}")
    return " and ".join(parts)


def _fail(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{where} must be {expected}, found {value!r}")


def integer(value: Any, where: str, *, low: int | None = None, high: int | None = None,
            optional: bool = False) -> int | None:
    """An int (an integral float such as 2.0 is taken as 2; bools, 2.5 and strings are refused)."""
    expected = "an integer" + (f" {_bounds(low, high)}" if low is not None or high is not None else "")
    expected += " or null" if optional else ""
    if value is None and optional:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, expected, value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise _fail(where, expected, value)
    return value


def number(value: Any, where: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, optional: bool = False) -> float | None:
    """A finite float (ints are taken as floats; bools and strings are refused)."""
    bounds = _bounds(low, high, low_open, high_open)
    expected = "a finite number" + (f" {bounds}" if bounds else "") + (" or null" if optional else "")
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, expected, value)
    value = float(value)
    if low is not None and (value <= low if low_open else value < low):
        raise _fail(where, expected, value)
    if high is not None and (value >= high if high_open else value > high):
        raise _fail(where, expected, value)
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, "true or false", value)
    return value


def text(value: Any, where: str, *, choices: tuple[str, ...] | None = None, name_like: bool = False) -> str:
    """A non-empty string; `choices` limits it, `name_like` keeps it usable inside a file name."""
    if choices is not None:
        if value not in choices:
            raise _fail(where, f"one of {list(choices)}", value)
        return value
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, "a non-empty string", value)
    if name_like and any(c in value for c in "/\\\0"):
        raise _fail(where, "a name without '/', '\\' or NUL (it becomes part of a file name)", value)
    return value


def integers(value: Any, where: str, *, length: int | None = None, low: int | None = None) -> tuple[int, ...]:
    """A list or tuple of ints (of `length` entries when given), each checked like `integer`."""
    count = f"{length} " if length is not None else ""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or (
            length is not None and len(value) != length):
        bound = f" {_bounds(low, None)}" if low is not None else ""
        raise _fail(where, f"a list of {count}integers{bound}", value)
    return tuple(int(integer(v, f"{where}[{i}]", low=low)) for i, v in enumerate(value))
