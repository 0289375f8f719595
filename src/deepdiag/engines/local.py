"""The local engine: the reference training loop (``dd.fit`` on ``dd.mlp``), one run after another.

Every other engine is tested against this one. ``train_run(config)`` is the single place a RunConfig
becomes a model, a data set and a ``dd.fit`` call; the process, Dask and Ray engines call it in their
workers.
"""
from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Iterator

import torch

from ..sweep import RunConfig, RunResult, result_from_history, versions
from . import Engine


@functools.lru_cache(maxsize=16)
def dataset(name: str, n_train: int | None, data_seed: int):
    """The data set of a run, loaded once per process (``Dataset`` tensors are never modified)."""
    from ..data import load

    return load(name, n_train=n_train, seed=data_seed)


def check_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False; use device='cpu'")
    return torch.device(device)


def build_model(config: RunConfig, ds) -> torch.nn.Module:
    """``dd.mlp`` for the run, initialised from ``config.seed``, on its device and dtype."""
    from ..models import mlp

    model = mlp(ds.in_features, ds.out_features, seed=config.seed, **config.model_kwargs())
    return model.to(device=check_device(config.device), dtype=getattr(torch, config.dtype))


def train_model(config: RunConfig):
    """(model, History) of one run through ``dd.fit``: the reference."""
    from ..train import fit

    ds = dataset(config.dataset, config.n_train, config.data_seed)
    model = build_model(config, ds)
    return model, fit(model, ds, config.train_config())


def train_run(config: RunConfig) -> RunResult:
    """One run as a RunResult; an exception becomes status ``failed`` with its traceback."""
    start = time.perf_counter()
    try:
        _, hist = train_model(config)
    except Exception:  # a failed run is data, not a crash of the sweep
        return RunResult(config, "failed", error=traceback.format_exc(limit=8),
                         wall_time=time.perf_counter() - start, versions=versions(), engine="local")
    return result_from_history(config, hist, time.perf_counter() - start, "local")


def train_batch(configs: list[RunConfig], threads: int | None = None) -> list[RunResult]:
    """A batch of runs in this process (what remote workers execute)."""
    if threads is not None:
        torch.set_num_threads(threads)
    return [train_run(c) for c in configs]


class LocalEngine(Engine):
    """Runs one after another in the calling process; each result is yielded the moment it ends."""

    name = "local"

    def __init__(self, **options):
        if options:
            raise TypeError(f"engine='local' takes no options, got {', '.join(options)}")

    def run(self, configs: list[RunConfig]) -> Iterator[RunResult]:
        for config in configs:
            yield train_run(config)
