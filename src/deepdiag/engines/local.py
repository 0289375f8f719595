"""The local engine: the reference training loop (``dd.fit`` on ``dd.mlp``), one run after another.

Every other engine is tested against this one. ``train_model(config)`` is the single place a RunConfig
becomes a ``dd.fit`` call on its model and data set (``deepdiag.runs.build_model``, ``dataset_of``); the process, Dask and Ray engines call it in their
workers. After training it runs the config's probes (``deepdiag.probes``) on the trained model, so
only numbers leave the worker.

With ``stop_on`` (``dd.sweep(..., stop_on="error")``) each run trains with a ``dd.Monitor`` attached
(``deepdiag.engines.stop.Stopper``: ``on_step`` -> ``monitor.step()``, a check every ``CHECK_EVERY``
steps and at every epoch end) and ends at the end of the epoch in which a finding of severity
``stop_on`` or worse was first seen.
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..probes import run_probes
from ..runs import RunConfig, RunResult, build_model, dataset_of, result_from_history, versions
from ..train import History, default_loss, fit
from .base import Engine
from .stop import Stopper


def fit_view(config: RunConfig, ds):
    """What ``dd.fit`` sees: the training split, and as its per-epoch validation split the one
    ``config.val_split`` names ("val", "test", or None: no per-epoch validation)."""
    if config.val_split == "val":
        return ds
    x, y = (ds.x_test, ds.y_test) if config.val_split == "test" else (None, None)
    return dataclasses.replace(ds, x_val=x, y_val=y)


def reached_train_acc(target: float):
    """An ``on_epoch`` rule: stop once the epoch's training accuracy reaches `target`."""
    return lambda hist: hist.train_acc[-1] >= target


@dataclass(frozen=True)
class Trained:
    """One trained run: the model, its ``History``, and the ``Finding`` that stopped it early under
    ``stop_on`` (None when it trained to the end or was not monitored)."""

    model: torch.nn.Module
    history: History
    stop: object = None


def train_model(config: RunConfig, stop_on: str | None = None) -> Trained:
    """One run through ``dd.fit``: the reference. With `stop_on` ("warning" / "error") a ``Stopper``
    watches it and ends it at the end of the epoch in which such a finding appeared."""
    ds = dataset_of(config)
    data = fit_view(config, ds)
    model = build_model(config, ds)
    loss_fn = default_loss(ds.task, ds.out_features)  # what dd.fit picks for the model's outputs
    target = None if config.stop_at_train_acc is None else reached_train_acc(config.stop_at_train_acc)
    if stop_on is None:
        return Trained(model, fit(model, data, config.train_config(), loss_fn=loss_fn, on_epoch=target))
    stopper = Stopper(model, stop_on, config, data, loss_fn)
    on_epoch = stopper.on_epoch if target is None else lambda h: stopper.on_epoch(h) or target(h)
    try:
        hist = fit(model, data, config.train_config(), loss_fn=loss_fn, on_step=stopper.on_step,
                   on_epoch=on_epoch)
    finally:
        stopper.close()
    return Trained(model, hist, stopper.finding)


def train_run(config: RunConfig, stop_on: str | None = None) -> RunResult:
    """One run as a RunResult; an exception becomes status ``failed`` with its traceback. With
    `stop_on` ("warning" / "error") the run is monitored and may end early (see ``Stopper``). After
    training, the config's probes measure the trained model (``deepdiag.probes``)."""
    start = time.perf_counter()
    try:
        run = train_model(config, stop_on)
        wall = time.perf_counter() - start  # training time; the probes come after
        probes = run_probes(config, run.model, dataset_of(config), run.history) if config.probes else {}
    except Exception:  # a failed run is data, not a crash of the sweep
        return RunResult(config, "failed", error=traceback.format_exc(limit=8),
                         wall_time=time.perf_counter() - start, versions=versions(), engine="local")
    return result_from_history(config, run.history, wall, "local", run.stop, probes)


def train_batch(configs: list[RunConfig], stop_on: str | None = None) -> list[RunResult]:
    """A batch of runs in this process (what remote workers execute; the engine sets their torch threads)."""
    return [train_run(c, stop_on) for c in configs]


class LocalEngine(Engine):
    """Runs one after another in the calling process; each result is yielded the moment it ends."""

    name = "local"

    def __init__(self, **options):
        if options:
            raise TypeError(f"engine='local' takes no options, got {', '.join(options)}")

    def run(self, configs: list[RunConfig]) -> Iterator[RunResult]:
        for config in configs:
            yield train_run(config, self.stop_on)

    def map_calls(self, fn, items) -> Iterator[tuple[int, object]]:
        """``(i, fn(items[i]))`` in order, in this process (no pickling: lambdas and local functions work)."""
        for i, item in enumerate(items):
            yield i, fn(item)
