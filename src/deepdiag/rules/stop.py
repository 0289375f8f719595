"""The stop policy the engines share: which finding ends a run early (``dd.sweep(..., stop_on=...)``).

A run stops at the first finding of severity ``stop_on`` or worse. Among several, the earliest seen
wins; among those seen at the same step, ``STOP_FIRST`` codes (divergence: nothing after a non-finite
loss means anything), then the most severe, then the order ``judge`` produced them in.
"""
from __future__ import annotations

from collections.abc import Iterable

from ..findings import Finding, severity_rank

STOP_FIRST = ("divergence",)  # named first when several findings cross the threshold at the same step
_NEVER = 1 << 62  # the step of a finding whose step is unknown: after every known one


def first_stop(findings: Iterable[Finding], stop_on: str) -> Finding | None:
    """The finding that stops the run (see the module docstring), or None when none is `stop_on` or worse."""
    rank = severity_rank(stop_on)
    hits = [f for f in findings if f.rank >= rank]
    if not hits:
        return None
    return min(hits, key=lambda f: (_NEVER if f.step is None else f.step, f.code not in STOP_FIRST, -f.rank))
