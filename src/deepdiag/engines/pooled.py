"""Engines whose workers run tasks (a process pool, a Dask cluster, Ray): a batch of configs is one task,
``deepdiag.engines.local.train_batch`` on a worker, submitted through the engine's ``submit_call``."""
from __future__ import annotations

from concurrent.futures import Future

from ..runs import RunConfig
from .base import Engine
from .local import train_batch


class PooledEngine(Engine):
    """``submit(batch)`` = ``submit_call(train_batch, batch, stop_on)`` (``submit_call`` sets the worker's
    torch threads); subclasses give ``submit_call`` and ``shutdown``."""

    def submit(self, batch: list[RunConfig]) -> Future:
        return self.submit_call(train_batch, batch, self.stop_on)


__all__ = ["PooledEngine"]
