"""Engines: where runs train. One small, ``concurrent.futures``-shaped interface::

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
import math
from collections.abc import Iterator
from concurrent.futures import Future, as_completed

from .._validate import check_choice
from ..sweep import RunConfig, RunResult

ENGINES = {
    "local": ("deepdiag.engines.local", "LocalEngine", None),
    "vectorized": ("deepdiag.engines.vectorized", "VectorizedEngine", None),
    "process": ("deepdiag.engines.process", "ProcessEngine", None),
    "dask": ("deepdiag.engines.dask", "DaskEngine", ("distributed", 'pip install "deepdiag[dask]"')),
    "ray": ("deepdiag.engines.ray", "RayEngine", ("ray", 'pip install "deepdiag[ray]"')),
}


class EngineUnavailable(ImportError):
    """An engine whose optional extra is not installed."""


class Engine:
    """Base class. Subclasses implement ``submit`` (and ``shutdown``), or override ``run``."""

    name = "engine"
    batches_per_worker = 4  # smaller batches: results reach the store sooner; larger: less overhead
    workers = 1
    stop_on: str | None = None  # set by dd.sweep(stop_on=...); honoured by local and process

    def submit(self, batch: list[RunConfig]) -> Future:
        raise NotImplementedError

    def batches(self, configs: list[RunConfig]) -> list[list[RunConfig]]:
        size = max(1, math.ceil(len(configs) / (self.workers * self.batches_per_worker)))
        return [configs[i:i + size] for i in range(0, len(configs), size)]

    def run(self, configs: list[RunConfig]) -> Iterator[RunResult]:
        futures = [self.submit(b) for b in self.batches(configs)]
        for future in as_completed(futures):
            for result in future.result():
                result.engine = self.name  # workers ran the local loop; the table names the engine
                yield result

    def shutdown(self, cancel: bool = False) -> None:
        pass


def check_engine(name: str) -> str:
    """`name` if it is an engine whose extra is installed: ValueError listing the engines for an unknown
    one, EngineUnavailable (one line naming the engine and the install command) for a missing extra."""
    name = check_choice("engine", name, ENGINES)
    extra = ENGINES[name][2]
    if extra is not None and importlib.util.find_spec(extra[0]) is None:
        raise EngineUnavailable(f"engine={name!r} needs the optional {extra[0]!r} package: {extra[1]}")
    return name


def get_engine(name: str, **options) -> Engine:
    """An engine by name; ValueError for an unknown one, EngineUnavailable when its extra is missing."""
    module, cls, _ = ENGINES[check_engine(name)]
    return getattr(importlib.import_module(module), cls)(**options)


def choose_engine(configs: list[RunConfig]) -> tuple[str, str]:
    """What ``engine="auto"`` picks, and why: vectorized when some runs share an architecture."""
    from .vectorized import group

    groups, rest = group(configs)
    batched = sum(len(g) for g in groups if len(g) > 1)
    if batched == 0:
        reason = ("no two runs share a vectorizable shape" if configs else "nothing to run")
        return "local", reason + f"; {len(rest)} run(s) not vectorizable" * bool(rest)
    return "vectorized", (f"{batched} of {len(configs)} runs form {sum(len(g) > 1 for g in groups)} "
                          f"batched group(s); the other {len(configs) - batched} go to the local loop")


__all__ = ["Engine", "EngineUnavailable", "ENGINES", "check_engine", "get_engine", "choose_engine"]
