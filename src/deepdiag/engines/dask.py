"""The Dask engine: batches of configs as tasks on a ``distributed`` cluster (``pip install "deepdiag[dask]"``).

``address="tcp://host:8786"`` connects to a running scheduler (started by hand, by dask-jobqueue on SLURM,
by Kubernetes, ...) and leaves it running afterwards. Without an address a temporary
``LocalCluster(processes=True, n_workers=<cores>, threads_per_worker=1)`` starts with the sweep and is
closed when it ends; its spill directory lies in a temporary folder that is removed with it.

Each task is ``deepdiag.engines.local.train_batch(batch)`` run by ``base.call_with_threads`` (one torch
thread): the process engine's function, so a worker trains exactly what ``local`` trains and loads each
data set once (the workers are long-lived). The workers must import the same ``deepdiag`` (and torch)
as the driver. Futures come from the client's ``concurrent.futures`` executor (``Client.get_executor``), so
``Engine.run``'s ``as_completed`` loop drives them like the process pool's.
"""
from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import Future

from .base import call_with_threads
from .pooled import PooledEngine
from .process import check_cluster, check_pool


# No dashboard; the scheduler's small HTTP server (health, metrics) still starts: on a free port, not on
# 8787, where it would collide (with a warning) with any other cluster on the machine.
QUIET_HTTP = {"dashboard_address": ":0"}


class DaskEngine(PooledEngine):
    """Runs batches of configs through a ``distributed.Client`` (``address=`` or a temporary LocalCluster).

    address: a scheduler address; None starts a LocalCluster of ``workers`` single-threaded processes
    (default: the number of cores). threads: torch threads per task. local_directory: the LocalCluster's
    scratch folder (default: a temporary folder, removed afterwards).
    """

    name = "dask"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int = 1,
                 local_directory: str | None = None):
        check_cluster(address, workers, "scheduler", "'tcp://host:8786'", "LocalCluster", "workers")
        self.address = address
        self.workers, self.threads = check_pool(workers, threads)
        self.local_directory = local_directory
        self._client = self._cluster = self._executor = self._tmp = None

    def _start(self):
        if self._executor is not None:
            return self._executor
        from distributed import Client, LocalCluster

        if self.address is None:
            if self.local_directory is None:
                self._tmp = tempfile.mkdtemp(prefix="deepdiag-dask-")
            self._cluster = LocalCluster(processes=True, n_workers=self.workers, threads_per_worker=1,
                                         dashboard_address=None, scheduler_kwargs=QUIET_HTTP,
                                         local_directory=self.local_directory or self._tmp)
            self._client = Client(self._cluster)
        else:
            self._client = Client(self.address)
            slots = sum(self._client.nthreads().values())
            self.workers = max(1, slots)  # batch sizes follow the cluster's task slots
        self._executor = self._client.get_executor(pure=False)
        return self._executor

    def submit_call(self, fn, *args) -> Future:
        return self._start().submit(call_with_threads, self.threads, fn, *args)

    def shutdown(self, cancel: bool = False) -> None:
        try:
            if self._executor is not None:
                self._executor.shutdown(wait=not cancel)  # wait=False cancels what is queued or running
            if self._client is not None:
                self._client.close()
            if self._cluster is not None:
                self._cluster.close()
        finally:
            self._executor = self._client = self._cluster = None
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
