"""deepdiag: why won't my network train, and is what the textbooks say true, and by how much?

>>> import deepdiag as dd
>>> model = dd.mlp(64, 10, width=64, depth=10, activation="relu", init="he")

``import deepdiag`` loads torch, the diagnosis and the sweep driver, nothing else: the names that need
pandas, matplotlib or scipy (studies, results, figures, theory) load their module the first time they are
used (module ``__getattr__``, PEP 562). No matplotlib backend is selected here.
"""
from __future__ import annotations

import importlib

from . import data, probes  # noqa: F401  (probes: registers the built-in probes a RunConfig may name)
from ._version import __version__
from .checkup import Checkup, checkup
from .rules import compare_depths
from .findings import Finding
from .init import init_weights
from .models import conv_net, mlp
from .monitor import Monitor
from .regularization import l2_penalty
from .fixes import apply_fix
from .repair import RepairResult, repair  # eager: the function must shadow its module's name
from .runs import RunConfig
from .sweep import sweep
from .train import History, TrainConfig, fit

LAZY = {  # public name -> (module, attribute; None: the module itself)
    "plots": ("deepdiag.plots", None),
    "theory": ("deepdiag.theory", None),
    "load_results": ("deepdiag.results", "load_results"),
    "list_studies": ("deepdiag.study", "list_studies"),
    "run_study": ("deepdiag.study", "run_study"),
    "StudyResult": ("deepdiag.study", "StudyResult"),
}


def __getattr__(name: str):
    if name not in LAZY:
        raise AttributeError(f"module 'deepdiag' has no attribute {name!r}")
    module, attr = LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *LAZY})


__all__ = [
    "mlp", "conv_net", "init_weights", "l2_penalty", "fit", "TrainConfig", "History",
    "list_studies", "run_study", "StudyResult", "load_results", "data", "plots", "theory", "__version__",
    "checkup", "Checkup", "Monitor", "Finding", "compare_depths",
    "sweep", "RunConfig", "repair", "RepairResult", "apply_fix",
]
