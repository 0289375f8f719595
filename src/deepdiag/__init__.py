"""deepdiag: why won't my network train, and is what the textbooks say true, and by how much?

>>> import deepdiag as dd
>>> model = dd.mlp(64, 10, width=64, depth=10, activation="relu", init="he")
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import data, plots, theory
from .init import init_weights
from .models import conv_net, mlp
from .regularization import l2_penalty
from .results import load_results
from .study import StudyResult, list_studies, run_study
from .train import History, TrainConfig, fit
from .checkup import Checkup, checkup
from .rules import compare_depths
from .findings import Finding
from .monitor import Monitor
from .sweep import RunConfig, sweep

__all__ = [
    "mlp", "conv_net", "init_weights", "l2_penalty", "fit", "TrainConfig", "History",
    "list_studies", "run_study", "StudyResult", "load_results", "data", "plots", "theory", "__version__",
    "checkup", "Checkup", "Monitor", "Finding", "compare_depths",
    "sweep", "RunConfig",
]
