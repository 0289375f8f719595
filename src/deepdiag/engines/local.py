"""The local engine: the reference training loop (``dd.fit`` on ``dd.mlp``), one run after another.

Every other engine is tested against this one. ``train_run(config)`` is the single place a RunConfig
becomes a model, a data set and a ``dd.fit`` call; the process, Dask and Ray engines call it in their
workers. After training it runs the config's probes (``deepdiag.probes``) on the trained model, so
only numbers leave the worker.

With ``stop_on`` (``dd.sweep(..., stop_on="error")``) each run trains with a ``dd.Monitor`` attached
(``deepdiag.engines.stop.Stopper``: ``on_step`` -> ``monitor.step()``, a check every ``CHECK_EVERY``
steps and at every epoch end) and ends at the end of the epoch in which a finding of severity
``stop_on`` or worse was first seen.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import traceback
from collections.abc import Iterator

import torch

from ..sweep import RunConfig, RunResult, result_from_history, versions
from . import Engine
from .stop import Stopper


@functools.lru_cache(maxsize=16)
def dataset(name: str, n_train: int | None, data_seed: int, **options):
    """The data set of a run, loaded once per process (``Dataset`` tensors are never modified).
    `options`: the other keyword arguments of ``dd.data.load`` (``RunConfig.data_options``)."""
    from ..data import load

    return load(name, n_train=n_train, seed=data_seed, **options)


def dataset_of(config: RunConfig):
    """The run's full data set (train, val and test splits), with every data option of the config."""
    options = config.data_options()
    return dataset(config.dataset, options.pop("n_train"), options.pop("seed"), **options)


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


def check_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False; use device='cpu'")
    return torch.device(device)


def build_model(config: RunConfig, ds) -> torch.nn.Module:
    """``dd.mlp`` for the run, initialised from ``config.seed``, on its device and dtype."""
    from ..models import mlp

    model = mlp(ds.in_features, ds.out_features, seed=config.seed, **config.model_kwargs())
    return model.to(device=check_device(config.device), dtype=getattr(torch, config.dtype))


def train_model(config: RunConfig, stop_on: str | None = None):
    """(model, History) of one run through ``dd.fit``: the reference. With `stop_on`: (model, History,
    the Finding that stopped it or None)."""
    from ..train import default_loss, fit

    ds = dataset_of(config)
    data = fit_view(config, ds)
    model = build_model(config, ds)
    target = None if config.stop_at_train_acc is None else reached_train_acc(config.stop_at_train_acc)
    if stop_on is None:
        return model, fit(model, data, config.train_config(), on_epoch=target)
    with torch.no_grad():
        out_features = model.eval()(torch.as_tensor(ds.x_train[:1]).to(
            device=next(model.parameters()).device, dtype=getattr(torch, config.dtype))).shape[1]
    model.train()
    loss_fn = default_loss(getattr(ds, "task", "classification"), out_features)  # what fit would pick
    stopper = Stopper(model, stop_on, config, data, loss_fn)
    on_epoch = stopper.on_epoch if target is None else lambda h: stopper.on_epoch(h) or target(h)
    try:
        hist = fit(model, data, config.train_config(), loss_fn=loss_fn, on_step=stopper.on_step,
                   on_epoch=on_epoch)
    finally:
        stopper.close()
    return model, hist, stopper.finding


def train_run(config: RunConfig, stop_on: str | None = None) -> RunResult:
    """One run as a RunResult; an exception becomes status ``failed`` with its traceback. With
    `stop_on` ("warning" / "error") the run is monitored and may end early (see ``Stopper``)."""
    from ..probes import run_probes

    start = time.perf_counter()
    stop = None
    try:
        if stop_on is None:
            model, hist = train_model(config)
        else:
            model, hist, stop = train_model(config, stop_on)
        wall = time.perf_counter() - start  # training time; the probes come after
        probes = run_probes(config, model, dataset_of(config), hist) if config.probes else {}
    except Exception:  # a failed run is data, not a crash of the sweep
        return RunResult(config, "failed", error=traceback.format_exc(limit=8),
                         wall_time=time.perf_counter() - start, versions=versions(), engine="local")
    return result_from_history(config, hist, wall, "local", stop, probes)


def train_batch(configs: list[RunConfig], threads: int | None = None,
                stop_on: str | None = None) -> list[RunResult]:
    """A batch of runs in this process (what remote workers execute)."""
    if threads is not None:
        torch.set_num_threads(threads)
    return [train_run(c) if stop_on is None else train_run(c, stop_on) for c in configs]


class LocalEngine(Engine):
    """Runs one after another in the calling process; each result is yielded the moment it ends."""

    name = "local"

    def __init__(self, **options):
        if options:
            raise TypeError(f"engine='local' takes no options, got {', '.join(options)}")

    def run(self, configs: list[RunConfig]) -> Iterator[RunResult]:
        for config in configs:
            yield train_run(config) if self.stop_on is None else train_run(config, self.stop_on)
