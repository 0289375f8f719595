"""Engines: where runs train, and the one table that knows them (``ENGINES``).

One small, ``concurrent.futures``-shaped interface (``deepdiag.engines.base.Engine``)::

    engine.submit(batch: list[RunConfig]) -> Future[list[RunResult]]   # executor-backed engines
    engine.run(configs) -> Iterator[RunResult]                          # what ``sweep`` calls
    engine.shutdown(cancel=False)

``Engine.run`` splits the configs into batches, submits them all and yields each batch's results as its
future completes (``as_completed``), so a new backend only supplies ``submit`` (an executor: a process
pool, a Dask client's executor, Ray task refs turned into futures) and ``shutdown``. ``local`` and
``vectorized`` train in the calling process and override ``run`` to yield each result as it ends.

=========== ===================================================================== =====================
engine      what it does                                                          needs
=========== ===================================================================== =====================
local       the reference loop (``dd.fit``), one run after another                --
vectorized  runs of one architecture trained as one batched model (bmm)           --
process     long-lived spawned workers, one torch thread each                     --
dask        a ``distributed`` cluster (``address=`` or a temporary LocalCluster)  ``deepdiag[dask]``
ray         Ray tasks (``address=`` or a temporary local Ray)                     ``deepdiag[ray]``
=========== ===================================================================== =====================
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from .._validate import check_choice
from .base import Engine


@dataclass(frozen=True)
class EngineSpec:
    """What the driver, the CLI and the study runner know of an engine before importing it."""

    name: str
    module: str  # where its class lives
    cls: str  # its class, an ``Engine``
    options: tuple[str, ...] = ()  # the keyword arguments it takes (the CLI's --workers, --address)
    stops: bool = False  # honours ``dd.sweep(stop_on=...)``
    needs: str | None = None  # the optional package whose absence means its extra is missing
    install: str | None = None  # the command that installs that extra
    numerics: str = "reference"  # its numeric class: engines of one class give the same numbers


# local / process train each run through dd.fit with a Monitor when stopping; vectorized judges per-member
# statistics with the same rules (divergence, stalled updates, dead units) at epoch ends
ENGINES = {spec.name: spec for spec in (
    EngineSpec("local", "deepdiag.engines.local", "LocalEngine", stops=True),
    EngineSpec("vectorized", "deepdiag.engines.vectorized", "VectorizedEngine", stops=True,
               numerics="vectorized"),
    EngineSpec("process", "deepdiag.engines.process", "ProcessEngine", ("workers",), stops=True),
    EngineSpec("dask", "deepdiag.engines.dask", "DaskEngine", ("address", "workers"),
               needs="distributed", install='pip install "deepdiag[dask]"'),
    EngineSpec("ray", "deepdiag.engines.ray", "RayEngine", ("address", "workers"),
               needs="ray", install='pip install "deepdiag[ray]"'),
)}
STOP_ENGINES = tuple(name for name, spec in ENGINES.items() if spec.stops)


def numeric_class(engine: str) -> str:
    """Which numbers `engine` gives. ``reference``: local, process, dask and ray all train a run with
    the same ``dd.fit`` loop from the same seeds, so they agree to the bit. ``vectorized``: batched
    matrix products sum in another order (float rounding, which a deep plain net amplifies) and
    dropout masks come from one generator for the whole stack, so its numbers differ. ``auto`` (and
    the vectorized engine itself, which sends single and non-vectorizable runs to the local loop)
    mixes the two. An unknown name (a run stored by another version) is its own class."""
    spec = ENGINES.get(engine)
    return spec.numerics if spec is not None else ("mixed" if engine == "auto" else str(engine))


def reuses(requested: str, stored: str) -> bool:
    """Whether an engine `requested` may reuse a run (or a study result) that engine `stored` trained:
    numbers of its own class; reference numbers serve every engine (vectorized and auto promise them up
    to float rounding, and the reference is the exact value); vectorized or mixed numbers serve only
    vectorized and auto, which may produce them."""
    have, want = numeric_class(stored), numeric_class(requested)
    batched = ("vectorized", "mixed")
    return have == want or have == "reference" or (have in batched and want in batched)


class EngineUnavailable(ImportError):
    """An engine whose optional extra is not installed."""


def check_engine(name: str) -> str:
    """`name` if it is an engine whose extra is installed: ValueError listing the engines for an unknown
    one, EngineUnavailable (one line naming the engine and the install command) for a missing extra."""
    spec = ENGINES[check_choice("engine", name, ENGINES)]
    if spec.needs is not None and importlib.util.find_spec(spec.needs) is None:
        raise EngineUnavailable(f"engine={spec.name!r} needs the optional {spec.needs!r} package: {spec.install}")
    return spec.name


def get_engine(name: str, **options) -> Engine:
    """An engine by name; ValueError for an unknown one,
    EngineUnavailable when its extra is missing."""
    spec = ENGINES[check_engine(name)]
    return getattr(importlib.import_module(spec.module), spec.cls)(**options)


__all__ = ["Engine", "EngineSpec", "EngineUnavailable", "ENGINES", "STOP_ENGINES", "check_engine", "get_engine",
           "numeric_class", "reuses"]
