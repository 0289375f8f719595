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
        """Stop the pool. cancel=False: finish what was submitted, then stop. cancel=True (Ctrl-C, SIGTERM):
        drop the queued batches, terminate the workers (their runs are in flight) and reap them, then wait
        for the executor's manager thread, so that when this returns no thread or process of the pool is
        left.

        Why the wait: ``ProcessPoolExecutor.shutdown(wait=False)`` returns while its manager thread still
        runs. It wakes when the workers die, fails their futures, closes the call queue once its feeder
        thread has ended and closes its wake-up pipe. Left running, that teardown races whatever this
        process does next: at interpreter exit ``concurrent.futures.process._python_exit`` writes to the
        wake-up pipe without the lock the manager closes it under, so under load the write can hit the
        closed descriptor ("OSError: [Errno 9] Bad file descriptor", CPython gh-84176 / bpo-39995) or one
        that another file reused. CPython 3.11 has that race; gh-125451 (3.12, 3.13) gives the pipe its own
        lock. Reaping the workers before the wait also lets the manager find them dead and send no stop
        sentinels, in most orders of events (an unread sentinel is harmless: the call queue ignores EPIPE)."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if not cancel:
            pool.shutdown(wait=True)
            return
        manager = pool._executor_manager_thread  # read before shutdown() drops it; None if nothing ran
        procs = list((pool._processes or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:  # reap them: no worker outlives the driver
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        if manager is not None:
            manager.join(timeout=30)  # it sees the dead workers' sentinels at once; 30 s: a loaded machine
