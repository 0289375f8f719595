"""Predictions that measurements are held against.

``init_std`` is the standard deviation an init scheme gives a weight of a given shape (the formulas of
``deepdiag.init``); the studies add their own predictions here (linear-chain scaling, mean-field
variance propagation).
"""
from __future__ import annotations

from .init import scheme_std as init_std

__all__ = ["init_std"]

# Signal propagation in depth (deepdiag.meanfield): linear chains, Gaussian chains, mean-field theory.
from .meanfield import (  # noqa: E402
    chi1, critical_sigma_w2, fixed_point, gaussian_chain_log_rate, linear_chain_output, linear_chain_signal,
    linear_chain_weight_grad, relu_log_moment_variance, symmetric_chain, variance_map, variance_recursion,
)

__all__ += [
    "chi1", "critical_sigma_w2", "fixed_point", "gaussian_chain_log_rate", "linear_chain_output",
    "linear_chain_signal", "linear_chain_weight_grad", "relu_log_moment_variance", "symmetric_chain",
    "variance_map", "variance_recursion",
]
