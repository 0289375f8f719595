"""The process engine: long-lived spawned worker processes, one torch thread each.

A ``ProcessPoolExecutor`` (``spawn`` start method: no forked torch state) starts ``workers`` processes
once per sweep (default: the number of cores); each imports torch and loads the data set once, then
takes batches of configs and trains them with the local loop (with a Monitor per run under
``dd.sweep(stop_on=...)``). So the ~3 s of importing torch and the
first step is paid once per worker, not once per run. Batches are small (about four per worker) so
results reach the store soon after they finish.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor

import torch

from .._validate import check_number
from .pooled import PooledEngine


def _init_worker(threads: int, driver: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle (it shuts us down)
    _die_with_parent(driver)
    torch.set_num_threads(threads)


def _die_with_parent(parent: int) -> None:
    """End this worker when the driver (pid `parent`, passed in: the worker may start after it died)
    dies, even by SIGKILL (no cleanup of its own runs then): Linux's PR_SET_PDEATHSIG, and everywhere a
    daemon thread that exits once the parent pid changes (checked every 0.5 s; a worker reparented to
    init or a subreaper has a new parent)."""
    import threading
    import time

    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="deepdiag-parent-watch", daemon=True).start()


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_pool(workers: int | None, threads: int) -> tuple[int, int]:
    """(workers, threads) of a pool of worker processes: `workers` defaults to the cores this process may
    use; both are integers >= 1."""
    workers = default_workers() if workers is None else check_number("workers", workers, low=1, integer=True)
    return workers, check_number("threads", threads, low=1, integer=True)


def check_cluster(address: str | None, workers: int | None, address_kind: str, example: str, local: str,
                  slots: str) -> None:
    """A cluster engine's `address` (a string, or None for a temporary `local` cluster) and `workers`
    (which sizes only that temporary cluster: an existing one runs the tasks on its own `slots`)."""
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address={address!r} must be a {address_kind} address string, e.g. {example}")
    if address is not None and workers is not None:
        raise ValueError(f"workers= sizes the temporary {local}; with address= the cluster's own {slots} "
                         "run the tasks (leave workers unset)")


class ProcessEngine(PooledEngine):
    """Runs batches of configs on a pool of spawned worker processes (``threads`` torch threads each)."""

    name = "process"

    def __init__(self, workers: int | None = None, threads: int = 1):
        self.workers, self.threads = check_pool(workers, threads)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.threads, os.getpid()))
        return self._pool

    def submit_call(self, fn, *args) -> Future:
        return self._executor().submit(fn, *args)  # the workers set their torch threads when they start

    def shutdown(self, cancel: bool = False) -> None:
        if self._pool is None:
            return
        if cancel:  # Ctrl-C, SIGTERM: drop queued batches and stop the workers now (their runs are in flight)
            procs = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.terminate()
            for proc in procs:  # reap them: no worker outlives the driver
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
        else:
            self._pool.shutdown(wait=True)
        self._pool = None
