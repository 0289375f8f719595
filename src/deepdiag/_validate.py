"""Checks at the public boundary: each names the argument, the value it got and what is allowed.

Raised once where values enter (public functions, the CLI); internal code trusts its inputs.
"""
from __future__ import annotations

import math
import numbers
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
    """Check a scalar's type and range, like scikit-learn's `check_scalar`; return it (numpy integers as
    Python ints). Any ``numbers.Integral`` is an integer and any ``numbers.Real`` a number (numpy scalars
    included); a bool is neither (``width=True`` is a mistake, not 1)."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real)
    if isinstance(value, bool) or type(value).__name__ == "bool_" or not ok_type:
        raise TypeError(f"{name}={value!r} must be {kind}, not {type(value).__name__}")
    if integer:
        value = int(value)
    if not integer and not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be finite")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        raise ValueError(f"{name}={value!r} is out of range; allowed: {kind} in {lo}, {hi}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return `value` if it is a real bool (numpy's included); a string such as "no" is truthy, so
    accepting it would silently do the opposite of what was meant: TypeError instead."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{name}={value!r} must be True or False, not {type(value).__name__}")


def check_keys(name: str, mapping: Any, allowed: Iterable[str]) -> dict:
    """`mapping` as a dict if all its keys are among `allowed`; else ValueError naming the first
    unknown key and the allowed ones."""
    allowed = list(allowed)
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in {name}; allowed: {', '.join(allowed)}")
    return dict(mapping)
