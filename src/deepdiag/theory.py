"""Predictions that measurements are held against.

``init_std`` is the standard deviation an init scheme gives a weight of a given shape (the formulas of
``deepdiag.init``); ``chance_loss`` is the loss of a classifier that ignores its inputs; the studies add
their own predictions here (linear-chain scaling, mean-field variance propagation).
"""
from __future__ import annotations

import numpy as np
import torch

from .init import scheme_std as init_std

__all__ = ["init_std", "chance_loss"]


def chance_loss(y: torch.Tensor | np.ndarray, n_classes: int) -> float:
    """Cross-entropy of the best input-blind predictor: the entropy −Σ p_k ln p_k of the class frequencies.

    For balanced classes this is ln K (ln 2 ≈ 0.693, ln 10 ≈ 2.303). A model whose training loss stays
    near it has learnt nothing from its inputs.
    >>> round(chance_loss(np.array([0, 1, 0, 1]), 2), 4)
    0.6931
    """
    counts = np.bincount(np.asarray(y).ravel(), minlength=n_classes).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


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
