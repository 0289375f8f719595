"""The Ray engine: batches of configs as Ray tasks (``pip install "deepdiag[ray]"``).

``address="auto"`` or ``"ray://host:10001"`` / ``"host:6379"`` joins a running Ray cluster and only
disconnects afterwards. Without an address a temporary local Ray starts with the sweep
(``ray.init(num_cpus=<workers>, include_dashboard=False)``, usage stats off, its session files in a short
temporary folder: Ray's unix sockets live there and a socket path may not exceed ~107 characters) and is
shut down when the sweep ends. When Ray is already initialised in this process (``ray.init`` called by the
user), the engine uses that instance and leaves it running.

Each task is ``deepdiag.engines.local.train_batch(batch)`` run by ``base.call_with_threads`` (one
torch thread) with ``num_cpus=1``: the process engine's function, so a worker trains exactly what
``local`` trains. Every task's ``ObjectRef.future()`` is a ``concurrent.futures.Future``, so
``Engine.run``'s ``as_completed`` loop drives them. The workers must import the same ``deepdiag`` (and
torch) as the driver.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import Future

from .base import call_with_threads
from .pooled import PooledEngine
from .process import check_cluster, check_pool

_remote = None  # call_with_threads as a Ray remote function, made once per process


def _task():
    global _remote
    if _remote is None:
        import ray

        _remote = ray.remote(num_cpus=1, max_retries=0)(call_with_threads)
    return _remote


def _short_temp_dir() -> str:
    """A fresh folder with a short path (Ray puts unix sockets under it)."""
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="ddray", dir=base)


class RayEngine(PooledEngine):
    """Runs batches of configs as Ray tasks (``address=`` joins a cluster, else a temporary local Ray).

    workers: CPUs of the temporary local Ray (default: the number of cores). threads: torch threads per
    task. temp_dir: Ray's session folder for the local instance (default: a short temporary folder,
    removed afterwards).
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int = 1,
                 temp_dir: str | None = None):
        check_cluster(address, workers, "Ray", "'auto' or 'ray://host:10001'", "local Ray", "CPUs")
        self.address = address
        self.workers, self.threads = check_pool(workers, threads)
        self.temp_dir = temp_dir
        self._started = False  # we called ray.init, so we call ray.shutdown
        self._tmp = None
        self._refs: list = []

    def _start(self):
        import ray

        if ray.is_initialized():
            if not self._started and self.address is None:  # the user's own ray.init: use its CPUs
                self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # read by ray.init: no usage reporting
        if self.address is not None:
            ray.init(address=self.address, logging_level="WARNING")
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        else:
            if self.temp_dir is None:
                self._tmp = _short_temp_dir()
            ray.init(num_cpus=self.workers, include_dashboard=False, logging_level="WARNING",
                     _temp_dir=self.temp_dir or self._tmp)
        self._started = True

    def submit_call(self, fn, *args) -> Future:
        self._start()
        ref = _task().remote(self.threads, fn, *args)
        self._refs.append(ref)
        return ref.future()

    def shutdown(self, cancel: bool = False) -> None:
        if not self._refs and not self._started:
            return
        import ray

        try:
            if cancel and ray.is_initialized():
                for ref in self._refs:
                    ray.cancel(ref, force=True)
        finally:
            self._refs = []
            if self._started:
                ray.shutdown()
                self._started = False
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
