"""L2 regularisation as the first seed text writes it, and its relation to weight decay.

The penalised objective is (seed text, Eq. 1)::

    J(w, b) = L(w, b) + λ/(2n) · Σ_l ‖W_l‖²        (weights only: no biases, no norm-layer parameters)

with n the number of *training* samples. With mini-batches the same penalty is added to every batch's
mean loss, so each step follows ∇L_batch + (λ/n)·w.

Equivalence with weight decay. Plain SGD on J takes ``w ← w − η(∇L + (λ/n)·w)``, which is exactly
``torch.optim.SGD(weight_decay=λ/n)`` on the weights. With momentum the two still coincide (the decay
term enters the gradient before the momentum buffer). With Adam they do not: the penalty's gradient is
divided by Adam's running √v like every other gradient, so large-gradient weights are barely shrunk.
AdamW's *decoupled* decay ``w ← w − η·wd·w`` bypasses that scaling (Loshchilov & Hutter 2019), so
AdamW(weight_decay=wd) is not Adam + L2 for any λ.

Dropout is PyTorch's inverted dropout (``nn.Dropout``): in training each unit is kept with probability
1 − p and scaled by 1/(1 − p), so the expected activation equals the eval-mode activation; ``model.eval()``
turns it off and the network becomes deterministic (the seed text: "during test time we apply no
dropout").
"""
from __future__ import annotations

import torch
from torch import nn

from ._validate import check_number
from .init import NORM_LAYERS


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights that L2 and weight decay act on: parameters with >= 2 dimensions outside norm layers,
    each once (a weight tied between two modules, like GPT-2's embedding and output layer, is one weight)."""
    found = {
        id(p): p
        for module in model.modules()
        if not isinstance(module, NORM_LAYERS)
        for p in module.parameters(recurse=False)
        if p.dim() >= 2
    }
    return list(found.values())


def l2_penalty(model: nn.Module, lam: float, n: int) -> torch.Tensor:
    """λ/(2n) · Σ w² over the model's weights (not biases, not normalisation parameters).

    >>> loss = loss_fn(model(x), y) + dd.l2_penalty(model, lam=0.7, n=len(train_set))
    """
    check_number("lam", lam, low=0.0)
    check_number("n", n, low=0, low_inclusive=False, integer=True)
    weights = weight_parameters(model)
    if not weights:
        return torch.zeros(())
    squares = torch.stack([w.pow(2).sum() for w in weights]).sum()
    return (lam / (2.0 * n)) * squares
