"""Predictions that measurements are held against.

``init_std`` is the standard deviation an init scheme gives a weight of a given shape (the formulas of
``deepdiag.init``); the studies add their own predictions here (linear-chain scaling, mean-field
variance propagation).
"""
from __future__ import annotations

from .init import scheme_std as init_std

__all__ = ["init_std"]
