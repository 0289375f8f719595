"""deepdiag: why won't my network train, and is what the textbooks say true, and by how much?

>>> import deepdiag as dd
>>> model = dd.mlp(64, 10, width=64, depth=10, activation="relu", init="he")
"""
from __future__ import annotations

from . import data, theory
from .init import init_weights
from .models import conv_net, mlp
from .regularization import l2_penalty
from .train import History, TrainConfig, fit

__version__ = "0.1.0"

__all__ = [
    "mlp", "conv_net", "init_weights", "l2_penalty", "fit", "TrainConfig", "History",
    "data", "theory", "__version__",
]
