"""Rules: typed measurements (``deepdiag.measure.records``) and loss curves in, ``Finding``s out.

One module per family: ``layers`` (gradient flow, activation scale, dead, saturated and symmetric
units), ``curves`` (divergence, overfitting, underfitting, oscillation), ``updates`` (stalled
updates), ``io`` (output/loss mismatch, unscaled inputs), ``depth`` (degradation); ``remedies`` builds
the advice and fixes; ``judge`` runs them all (``RULES`` is the registry); ``stop`` is the engines'
stop policy. Pure functions of Python numbers: importing this package does not import torch.
"""
from __future__ import annotations

from .depth import compare_depths
from .judge import ALL_RULES, RULES, Context, Curves, judge, judge_curves, judge_layers, start_key
from .stop import STOP_FIRST, first_stop

__all__ = ["judge", "judge_layers", "judge_curves", "Context", "Curves", "RULES", "ALL_RULES", "start_key",
           "compare_depths", "STOP_FIRST", "first_stop"]
