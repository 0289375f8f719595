"""Grids of runs as data: a frozen ``RunConfig`` with a content hash, grid expansion, and ``sweep``.

A run is a ``RunConfig``; its key in the results store is ``config.hash``: SHA-256 of the canonical JSON
of its fields (sorted keys, no spaces, floats as Python's shortest round-trip repr, ints in float fields
made floats), so the same run has the same key in every process and on every machine. Python's ``hash``
is salted per process and is never used.

``sweep(base, grid, seeds)`` runs the Cartesian product of ``grid`` over ``base`` (times the seeds) through
an engine (``deepdiag.engines``), commits each finished run to the store the moment it ends, and returns
one row per run::

    >>> df = dd.sweep({"dataset": "digits", "epochs": 5}, {"width": [16, 64], "lr": [0.1, 0.01]}, seeds=3)
    >>> df.groupby(["width", "lr"]).val_loss.mean()

Interrupting loses nothing that finished: rerun the same call (``resume=True``) and only missing or
failed runs train again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._validate import check_choice, check_number

log = logging.getLogger("deepdiag.sweep")

DTYPES = ("float32", "float64")
DEVICES = ("cpu", "cuda")
STATUSES = ("done", "diverged", "failed")
HASH_SCHEMA = "deepdiag.RunConfig/1"  # part of the hashed JSON: bump only when a field's meaning changes


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on. Validated on construction; frozen; ``hash`` keys the store.

    Data: ``dd.data.load(dataset, n_train=n_train, seed=data_seed)``. Model: ``dd.mlp(width, depth,
    activation, init, dropout, residual, norm, seed=seed)``. Training: ``dd.fit`` with the optimizer knobs
    and ``seed`` (mini-batch order and dropout masks).
    """

    dataset: str = "digits"
    n_train: int | None = None
    data_seed: int = 0
    width: int = 64
    depth: int = 3
    activation: str = "relu"
    init: str = "he"
    dropout: float = 0.0
    residual: bool = False
    norm: str | None = None
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    batch_size: int | None = 64
    epochs: int = 10
    l2: float = 0.0
    weight_decay: float = 0.0
    patience: int | None = None
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self):
        from .data import NAMES
        from .models import ACTIVATIONS, INITS
        from .train import OPTIMIZERS

        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: normalise in place)
        set_("dataset", check_choice("dataset", self.dataset, NAMES))
        if self.n_train is not None:
            check_number("n_train", self.n_train, low=1, integer=True)
        check_number("data_seed", self.data_seed, low=0, integer=True)
        check_number("width", self.width, low=1, integer=True)
        check_number("depth", self.depth, low=0, integer=True)
        set_("activation", check_choice("activation", self.activation, ACTIVATIONS))
        set_("init", check_choice("init", self.init, INITS))
        check_number("dropout", self.dropout, low=0.0, high=1.0, high_inclusive=False)
        if not isinstance(self.residual, bool):
            raise TypeError(f"residual={self.residual!r} must be a bool")
        if self.norm is not None:
            set_("norm", check_choice("norm", self.norm, ("batch", "layer")))
        set_("optimizer", check_choice("optimizer", self.optimizer, OPTIMIZERS))
        self.train_config()  # TrainConfig validates the training knobs (lr, momentum, batch size, ...)
        set_("dtype", check_choice("dtype", self.dtype, DTYPES))
        set_("device", check_choice("device", self.device, DEVICES))
        for name in ("dropout", "lr", "momentum", "l2", "weight_decay"):  # 1 and 1.0 hash alike
            set_(name, float(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def canonical_json(self) -> str:
        """The hashed text: sorted keys, compact separators, ASCII, the schema tag included."""
        return json.dumps({"schema": HASH_SCHEMA, **self.to_dict()}, sort_keys=True,
                          separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    @property
    def hash(self) -> str:
        """SHA-256 hex digest of ``canonical_json()``: stable across processes and machines."""
        return hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        return cls(**{k: v for k, v in d.items() if k != "schema"})

    def model_kwargs(self) -> dict[str, Any]:
        return dict(width=self.width, depth=self.depth, activation=self.activation, init=self.init,
                    dropout=self.dropout, residual=self.residual, norm=self.norm)

    def train_config(self):
        from .train import TrainConfig

        return TrainConfig(optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                           batch_size=self.batch_size, epochs=self.epochs, l2=self.l2,
                           weight_decay=self.weight_decay, patience=self.patience, seed=self.seed)


FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "batch_loss", "best_epoch", "best_val_loss",
           "epochs_run", "steps", "diverged_step")


@dataclass
class RunResult:
    """How one run ended: status ``done`` / ``diverged`` / ``failed`` (with ``error``), its history
    (``History.to_dict()``), final metrics, wall time and the versions that produced it."""

    config: RunConfig
    status: str
    history: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    wall_time: float = 0.0
    versions: dict = field(default_factory=dict)
    engine: str = "local"

    @property
    def hash(self) -> str:
        return self.config.hash

    def row(self) -> dict[str, Any]:
        """One table row: config columns, status, metrics, error, wall time."""
        return {**self.config.to_dict(), "hash": self.hash, "status": self.status,
                **{m: self.metrics.get(m) for m in METRICS}, "error": self.error,
                "wall_time": self.wall_time, "engine": self.engine}


def versions() -> dict[str, str]:
    import torch

    from . import __version__

    return {"deepdiag": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}


def metrics_from_history(h: dict) -> dict[str, Any]:
    """Final-epoch metrics of a ``History.to_dict()`` (None where a value was not finite)."""
    last = lambda k: h[k][-1] if h.get(k) else None  # noqa: E731
    return {"train_loss": last("train_loss"), "train_acc": last("train_acc"), "val_loss": last("val_loss"),
            "val_acc": last("val_acc"), "batch_loss": last("batch_loss"), "best_epoch": h.get("best_epoch"),
            "best_val_loss": h.get("best_val_loss"), "epochs_run": len(h.get("epoch", [])),
            "steps": h.get("steps"), "diverged_step": h.get("diverged_step")}


def result_from_history(config: RunConfig, hist, wall_time: float, engine: str) -> RunResult:
    d = hist.to_dict()
    return RunResult(config, "diverged" if hist.diverged else "done", d, metrics_from_history(d),
                     None, wall_time, versions(), engine)


# ---------------------------------------------------------------------------------------------- grids

def as_config(base: RunConfig | Mapping[str, Any] | None) -> RunConfig:
    if base is None:
        return RunConfig()
    if isinstance(base, RunConfig):
        return base
    if not isinstance(base, Mapping):
        raise TypeError(f"base={base!r} must be a RunConfig or a dict of RunConfig fields")
    _check_keys("base", base)
    return RunConfig(**base)


def _check_keys(arg: str, keys: Iterable[str]) -> None:
    bad = [k for k in keys if k not in FIELDS]
    if bad:
        raise ValueError(f"unknown {arg} key(s) {', '.join(map(repr, bad))}; allowed: {', '.join(FIELDS)}")


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        check_number("seeds", seeds, low=1, integer=True)
        return list(range(seeds))
    if isinstance(seeds, (list, tuple, range)) and seeds:
        for s in seeds:
            check_number("seeds", s, low=0, integer=True)
        return list(dict.fromkeys(seeds))
    raise (ValueError if isinstance(seeds, (list, tuple, range)) else TypeError)(
        f"seeds={seeds!r} must be a count >= 1 (seeds 0..n-1) or a non-empty list of seeds >= 0")


def expand(base: RunConfig | Mapping[str, Any] | None, grid: Mapping[str, Sequence[Any]],
           seeds: int | Sequence[int] = 1) -> list[RunConfig]:
    """The Cartesian product of ``grid`` over ``base``, times ``seeds`` (seed varies fastest); duplicates
    (same hash) dropped, order kept. Each value is validated by ``RunConfig`` (errors name the field)."""
    base = as_config(base)
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid={grid!r} must be a dict mapping RunConfig fields to lists of values")
    if not grid:
        raise ValueError("grid={} is empty; give at least one field with its values, e.g. "
                         "grid={'lr': [0.1, 0.01]}")
    _check_keys("grid", grid)
    if "seed" in grid:
        raise ValueError("grid key 'seed' is not allowed; pass seeds=N or seeds=[...] instead")
    values = []
    for key, vals in grid.items():
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
            raise TypeError(f"grid[{key!r}]={vals!r} must be a list of values, e.g. [{vals!r}]")
        vals = list(vals)
        if not vals:
            raise ValueError(f"grid[{key!r}] is an empty list; give at least one value")
        values.append(vals)
    configs = {}
    for combo in itertools.product(*values):
        for seed in _seed_list(seeds):
            c = dataclasses.replace(base, **dict(zip(grid, combo)), seed=seed)
            configs.setdefault(c.hash, c)
    return list(configs.values())


# ---------------------------------------------------------------------------------------------- sweep

def sweep(
    base: RunConfig | Mapping[str, Any] | None,
    grid: Mapping[str, Sequence[Any]],
    seeds: int | Sequence[int] = 3,
    engine: str = "auto",
    store=None,
    resume: bool = True,
    progress: bool = True,
    **engine_options,
):
    """Run every config of the grid and return a DataFrame, one row per run (config columns, ``hash``,
    ``status``, final metrics, ``error``, ``wall_time``, ``engine``), in grid order.

    engine: auto (vectorized where runs share an architecture, local elsewhere), local, vectorized,
    process, dask, ray. store: a results directory (``DIR/runs.sqlite``), a ``.sqlite`` file, a
    ``deepdiag.store.Store``, or None (an in-memory store). resume: skip runs the store already holds
    as done or diverged. engine_options go to the engine (e.g. ``workers=4``, ``address="tcp://..."``).
    """
    from .engines import choose_engine, get_engine
    from .store import Store, open_store

    configs = expand(base, grid, seeds)
    name = check_choice("engine", engine, ("auto",) + _engine_names())
    if not isinstance(resume, bool):
        raise TypeError(f"resume={resume!r} must be a bool")
    owned = not isinstance(store, Store)
    db = open_store(store)
    try:
        finished = db.finished_hashes() if resume else set()
        todo = [c for c in configs if c.hash not in finished]
        if name == "auto":
            name, why = choose_engine(todo)
            log.info("engine=auto chose %r: %s", name, why)
        runner = get_engine(name, **engine_options)
        _drive(runner, todo, db, len(configs) - len(todo), len(configs), progress)
        table = db.table([c.hash for c in configs])
    finally:
        if owned:
            db.close()
    table.attrs["engine"] = name
    return table


def _engine_names() -> tuple[str, ...]:
    from .engines import ENGINES

    return tuple(ENGINES)


def _drive(runner, todo: list[RunConfig], db, already: int, total: int, progress: bool) -> None:
    """Feed the engine, commit every result as it arrives, show progress; Ctrl-C shuts down cleanly."""
    bar = _Progress(total, already, enabled=progress and sys.stderr.isatty())
    committed = 0
    try:
        with bar:
            if todo:
                for result in runner.run(todo):
                    db.put(result)  # one transaction per finished run
                    committed += 1
                    bar.advance(result.status)
    except KeyboardInterrupt:
        runner.shutdown(cancel=True)
        print(f"\ninterrupted: {already + committed} of {total} runs are in the store {db.where}; "
              "run the same sweep again (resume=True) to finish the rest", file=sys.stderr)
        raise
    finally:
        runner.shutdown()


class _Progress:
    """rich progress on stderr: runs done / total, diverged, failed, elapsed, ETA (off when not a tty)."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.enabled, self.total, self.done = enabled, total, done
        self.counts = {"diverged": 0, "failed": 0}
        self._p = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._p = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[extra]}"), TimeElapsedColumn(),
                               TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._p.__enter__()
            self._task = self._p.add_task("sweep", total=self.total, completed=self.done, extra="")
        return self

    def advance(self, status: str) -> None:
        if status in self.counts:
            self.counts[status] += 1
        if self._p is not None:
            extra = f"diverged {self.counts['diverged']}  failed {self.counts['failed']}"
            self._p.update(self._task, advance=1, extra=extra)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
        return False


def timed(fn):
    """(result, seconds) of fn()."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def finite_or_none(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None
