"""The engine interface: ``submit`` a batch of configs, get a future of their results; ``run`` yields results
as batches complete; ``shutdown``. Every engine subclasses ``Engine``."""
from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import Future, as_completed

from ..runs import RunConfig, RunResult


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
