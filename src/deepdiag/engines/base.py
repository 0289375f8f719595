"""The engine interface: ``submit`` a batch of configs, get a future of their results; ``run`` yields results
as batches complete; ``shutdown``. Every engine subclasses ``Engine``.

Engines also run any picklable task: ``submit_call(fn, *args)`` is a future of ``fn(*args)`` on a worker
(with the engine's torch threads) and ``map_calls(fn, items)`` yields ``(index, fn(item))`` as each ends;
``dd.repair`` trains its candidates this way."""
from __future__ import annotations

import math
from collections.abc import Iterator
from collections.abc import Callable, Sequence
from concurrent.futures import Future, as_completed

import torch

from ..runs import RunConfig, RunResult


def call_with_threads(threads: int | None, fn: Callable, *args):
    """``fn(*args)`` with torch set to `threads` threads first (None: as it is): what a worker runs."""
    if threads is not None:
        torch.set_num_threads(threads)
    return fn(*args)


class Engine:
    """Base class. Subclasses implement ``submit`` (and ``shutdown``), or override ``run``."""

    name = "engine"
    batches_per_worker = 4  # smaller batches: results reach the store sooner; larger: less overhead
    workers = 1
    stop_on: str | None = None  # set by dd.sweep(stop_on=...); honoured by local and process

    threads: int | None = None  # torch threads per task on a worker

    def submit_call(self, fn: Callable, *args) -> Future:
        """A future of ``fn(*args)`` run by a worker (`fn` and `args` picklable for remote engines)."""
        raise NotImplementedError

    def submit(self, batch: list[RunConfig]) -> Future:
        """A future of the batch's results (``deepdiag.engines.pooled.PooledEngine`` trains it as a task)."""
        raise NotImplementedError

    def map_calls(self, fn: Callable, items: Sequence) -> Iterator[tuple[int, object]]:
        """``(i, fn(items[i]))`` for every item, each as soon as it ends (in any order)."""
        futures = {self.submit_call(fn, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            yield futures[future], future.result()

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
