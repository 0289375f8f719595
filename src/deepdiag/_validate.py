"""Checks at the public boundary: each names the argument, the value it got and what is allowed.

Raised once where values enter (public functions, the CLI); internal code trusts its inputs.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Return `value` lower-cased if it is one of `allowed`, else raise ValueError listing them."""
    allowed = list(allowed)
    if not isinstance(value, str):
        raise TypeError(f"{name}={value!r} must be a string, one of: {', '.join(allowed)}")
    key = value.lower()
    if key not in allowed:
        raise ValueError(f"unknown {name}={value!r}; allowed values: {', '.join(allowed)}")
    return key


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> Any:
    """Check a scalar's type and range, like scikit-learn's `check_scalar`; return it unchanged."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise TypeError(f"{name}={value!r} must be {kind}")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be finite")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        raise ValueError(f"{name}={value!r} is out of range; allowed: {kind} in {lo}, {hi}")
    return value
