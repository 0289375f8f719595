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
VAL_SPLITS = ("val", "test")  # RunConfig.val_split: the split behind the per-epoch validation curve
STANDARDIZE = ("auto", "features", "pixels", "none")  # RunConfig.standardize ("none": raw values)
STOP_ON = (None, "warning", "error")  # dd.sweep(stop_on=...): the least severity of a finding that ends a run
HASH_SCHEMA = "deepdiag.RunConfig/1"  # part of the hashed JSON: bump only when a field's meaning changes


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on. Validated on construction; frozen; ``hash`` keys the store.

    Data: ``dd.data.load(dataset, n_train=n_train, seed=data_seed, val_fraction, test_fraction, noise,
    label_noise, random_labels, standardize)``. Model: ``dd.mlp(width, depth, activation, init, dropout,
    residual, norm, seed=seed)``. Training: ``dd.fit`` with the optimizer knobs and ``seed`` (mini-batch
    order and dropout masks); ``eval_train`` as in ``dd.TrainConfig``; ``val_split`` is the split behind
    the per-epoch validation curve ("val", "test", or None for none); ``stop_at_train_acc`` ends the run
    at the end of the first epoch whose training accuracy reaches it (needs ``eval_train``). ``probes``:
    names of ``deepdiag.probes`` measured on the trained model in the worker and stored with the result.

    The fields after schema 1 (``EXTENDED``) enter the hashed JSON only when they differ from their
    default, so a run hashed before they existed keeps its key.
    """

    dataset: str = "digits"
    n_train: int | None = None
    data_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    noise: float | None = None
    label_noise: float = 0.0
    random_labels: bool = False
    standardize: str = "auto"
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
    eval_train: bool = True
    val_split: str | None = "val"
    stop_at_train_acc: float | None = None
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    probes: tuple = ()

    def __post_init__(self):
        from .data import NAMES
        from .models import ACTIVATIONS, INITS
        from .train import OPTIMIZERS

        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: normalise in place)
        set_("dataset", check_choice("dataset", self.dataset, NAMES))
        if self.n_train is not None:
            check_number("n_train", self.n_train, low=1, integer=True)
        check_number("data_seed", self.data_seed, low=0, integer=True)
        self._check_data(set_)
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
        self._check_evaluation(set_)
        for name in ("dropout", "lr", "momentum", "l2", "weight_decay", "val_fraction", "test_fraction",
                     "label_noise"):  # 1 and 1.0 hash alike
            set_(name, float(getattr(self, name)))
        for name in ("n_train", "data_seed", "width", "depth", "batch_size", "epochs", "patience", "seed"):
            if getattr(self, name) is not None:  # numpy integers are accepted; the hash needs Python ints
                set_(name, int(getattr(self, name)))

    def _check_data(self, set_) -> None:
        """The data options, checked by the data module's own rules (errors name the option)."""
        from .data import REGRESSION, _check_args

        if isinstance(self.standardize, bool):  # dd.data.load's True / False
            set_("standardize", "auto" if self.standardize else "none")
        set_("standardize", check_choice("standardize", self.standardize, STANDARDIZE))
        if not isinstance(self.random_labels, bool):
            raise TypeError(f"random_labels={self.random_labels!r} must be a bool")
        task = "regression" if self.dataset in REGRESSION else "classification"
        _check_args(self.dataset, task, self.n_train, self.val_fraction, self.test_fraction, self.data_seed,
                    self.label_noise, self.random_labels, self.noise, None)
        if self.noise is not None:
            set_("noise", float(self.noise))

    def _check_evaluation(self, set_) -> None:
        """eval_train, val_split, stop_at_train_acc and probes (names of ``deepdiag.probes.PROBES``)."""
        from .probes import PROBES

        if not isinstance(self.eval_train, bool):
            raise TypeError(f"eval_train={self.eval_train!r} must be a bool")
        if self.val_split is not None:
            set_("val_split", check_choice("val_split", self.val_split, VAL_SPLITS))
        if self.stop_at_train_acc is not None:
            set_("stop_at_train_acc", float(check_number("stop_at_train_acc", self.stop_at_train_acc,
                                                         low=0.0, high=1.0, low_inclusive=False)))
            if not self.eval_train:
                raise ValueError(f"stop_at_train_acc={self.stop_at_train_acc!r} reads the training accuracy "
                                 "of each epoch: it needs eval_train=True")
        if isinstance(self.probes, str) or not isinstance(self.probes, (tuple, list)):
            raise TypeError(f"probes={self.probes!r} must be a tuple of probe names, e.g. ('test_eval',)")
        set_("probes", tuple(dict.fromkeys(check_choice("probes", p, PROBES) for p in self.probes)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def canonical_json(self) -> str:
        """The hashed text: sorted keys, compact separators, ASCII, the schema tag included; fields added
        after schema 1 only when they differ from their default (older runs keep their keys)."""
        d = {k: v for k, v in self.to_dict().items() if k not in EXTENDED or v != EXTENDED[k]}
        return json.dumps({"schema": HASH_SCHEMA, **d}, sort_keys=True,
                          separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    def data_options(self) -> dict[str, Any]:
        """Keyword arguments of ``dd.data.load`` for this run's data set."""
        return dict(n_train=self.n_train, seed=self.data_seed, val_fraction=self.val_fraction,
                    test_fraction=self.test_fraction, noise=self.noise, label_noise=self.label_noise,
                    random_labels=self.random_labels,
                    standardize=False if self.standardize == "none" else self.standardize)

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
                           weight_decay=self.weight_decay, patience=self.patience, seed=self.seed,
                           eval_train=self.eval_train)


FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
# fields added after schema 1, with their defaults: hashed only when set to something else
EXTENDED = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name in (
    "val_fraction", "test_fraction", "noise", "label_noise", "random_labels", "standardize", "eval_train",
    "val_split", "stop_at_train_acc", "probes")}
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "batch_loss", "best_epoch", "best_val_loss",
           "epochs_run", "steps", "diverged_step", "stopped", "stop_code", "stop_severity", "stop_step")


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
    probes: dict = field(default_factory=dict)  # probe name -> its dict (see deepdiag.probes)

    @property
    def hash(self) -> str:
        return self.config.hash

    def row(self) -> dict[str, Any]:
        """One table row: config columns, status, metrics, the probes' scalar values, error, wall time."""
        return {**self.config.to_dict(), "hash": self.hash, "status": self.status,
                **{m: self.metrics.get(m) for m in METRICS}, **self.probe_values(), "error": self.error,
                "wall_time": self.wall_time, "engine": self.engine}

    def probe_values(self) -> dict[str, Any]:
        """The probes' scalar values by key, in probe order (lists and dicts stay in ``probes``)."""
        return {k: v for out in self.probes.values() for k, v in out.items()
                if v is None or isinstance(v, (bool, int, float, str))}

    def to_history(self):
        """The run's ``dd.History`` rebuilt from its stored dict: values stored as None (NaN or Inf
        when measured) come back as NaN in the curves and Inf as ``best_val_loss``, as ``dd.fit`` had them."""
        from .train import History

        nan = lambda v: math.nan if v is None else v  # noqa: E731
        h = dict(self.history)
        for key in ("batch_loss", "train_loss", "train_acc", "val_loss", "val_acc"):
            h[key] = [nan(v) for v in h.get(key, [])]
        h["best_val_loss"] = math.inf if h.get("best_val_loss") is None else h["best_val_loss"]
        names = {f.name for f in dataclasses.fields(History)}
        return History(**{k: v for k, v in h.items() if k in names})


def versions() -> dict[str, str]:
    import torch

    from . import __version__

    return {"deepdiag": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}


def metrics_from_history(h: dict, stop=None) -> dict[str, Any]:
    """Final-epoch metrics of a ``History.to_dict()`` (None where a value was not finite). `stop`: the
    ``Finding`` that ended the run early under ``sweep(stop_on=...)``, or None."""
    last = lambda k: h[k][-1] if h.get(k) else None  # noqa: E731
    return {"train_loss": last("train_loss"), "train_acc": last("train_acc"), "val_loss": last("val_loss"),
            "val_acc": last("val_acc"), "batch_loss": last("batch_loss"), "best_epoch": h.get("best_epoch"),
            "best_val_loss": h.get("best_val_loss"), "epochs_run": len(h.get("epoch", [])),
            "steps": h.get("steps"), "diverged_step": h.get("diverged_step"),
            "stopped": stop is not None, "stop_code": getattr(stop, "code", None),
            "stop_severity": getattr(stop, "severity", None),
            "stop_step": None if stop is None or stop.step is None else stop.step + 1,
            **({"stop_finding": stop.to_dict(strict=True)} if stop is not None else {})}


def result_from_history(config: RunConfig, hist, wall_time: float, engine: str, stop=None,
                        probes: dict | None = None) -> RunResult:
    """A finished run; `stop` is the finding that stopped it early (``stop_on``), recorded in its metrics
    (``stopped``, ``stop_code``, ``stop_severity``, ``stop_step``, ``stop_finding``). The status stays
    ``done`` or ``diverged``. `probes`: the outputs of the config's probes."""
    d = hist.to_dict()
    return RunResult(config, "diverged" if hist.diverged else "done", d, metrics_from_history(d, stop),
                     None, wall_time, versions(), engine, probes or {})


def check_stop_on(stop_on) -> str | None:
    """``stop_on`` validated: None, "warning" or "error" (ValueError naming the allowed values)."""
    if stop_on is None or (isinstance(stop_on, str) and stop_on in STOP_ON):
        return stop_on
    raise ValueError(f"stop_on={stop_on!r} is not allowed; allowed values: None, 'warning', 'error'")


def still_finished(result: RunResult, stop_on: str | None) -> bool:
    """Whether a stored finished run is reused by a sweep with this ``stop_on``: a run that was stopped
    early counts only when this sweep would have stopped it too (its finding is at least ``stop_on``)."""
    from .findings import severity_rank

    m = result.metrics or {}
    if not m.get("stopped"):
        return True
    sev = m.get("stop_severity")
    return stop_on is not None and sev is not None and severity_rank(sev) >= severity_rank(stop_on)


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
    stop_on: str | None = None,
    **engine_options,
):
    """Run every config of the grid and return a DataFrame, one row per run (config columns, ``hash``,
    ``status``, final metrics, the scalar outputs of the runs' ``probes``, ``error``, ``wall_time``,
    ``engine``), in grid order.

    engine: auto (vectorized where runs share an architecture, local elsewhere), local, vectorized,
    process, dask, ray. store: a results directory (``DIR/runs.sqlite``), a ``.sqlite`` file, a
    ``deepdiag.store.Store``, or None (an in-memory store). resume: skip runs the store already holds
    as done or diverged. engine_options go to the engine (e.g. ``workers=4``, ``address="tcp://..."``).

    stop_on: None (train every run to the end), "warning" or "error": attach a ``dd.Monitor`` to each run
    and end it at the end of the epoch in which a finding of that severity or worse appears (divergence,
    dead or symmetric units, stalled updates, ...). Such a run keeps status ``done`` (or ``diverged``) with
    ``stopped=True``, ``stop_code``, ``stop_severity`` and ``stop_step`` (the optimizer step, 1-based, at
    which the finding was first seen); ``steps`` counts the steps it actually trained. Engines: local and
    process (a Monitor, every rule; ``auto`` picks local), or vectorized (per-member divergence, stalled
    updates and dead units, judged at epoch ends). See docs/sweeps.md, "Stopping doomed runs".
    """
    from .store import Store, open_store

    configs = expand(base, grid, seeds)
    owned = not isinstance(store, Store)
    db = open_store(store)
    try:
        name = _train_missing(configs, engine, db, resume, progress, stop_on, "sweep", engine_options)
        table = db.table([c.hash for c in configs])
    finally:
        if owned:
            db.close()
    table.attrs["engine"] = name
    return table


def run_configs(
    configs: Iterable[RunConfig | Mapping[str, Any]],
    engine: str = "auto",
    store=None,
    resume: bool = True,
    progress: bool = True,
    stop_on: str | None = None,
    label: str = "sweep",
    **engine_options,
) -> list[RunResult]:
    """``sweep`` for a list of configs that need not form a grid: train the ones the store lacks and
    return one ``RunResult`` per config, in the order given (a config listed twice trains once), with
    its history, metrics and probes. Every argument means what it means in ``sweep``; `label` names the
    progress bar. This is how the studies train their runs (``deepdiag.study.train_runs``).

    >>> results = run_configs([RunConfig(width=16), RunConfig(width=64)], engine="local", store="results/")
    >>> [r.to_history().val_loss[-1] for r in results]
    """
    from .store import Store, open_store

    configs = [as_config(c) for c in configs]
    if not configs:
        raise ValueError("configs is empty; give at least one RunConfig")
    unique = list({c.hash: c for c in configs}.values())
    owned = not isinstance(store, Store)
    db = open_store(store)
    try:
        _train_missing(unique, engine, db, resume, progress, stop_on, label, engine_options)
        found = {r.hash: r for r in db.results([c.hash for c in unique])}
    finally:
        if owned:
            db.close()
    return [found[c.hash] for c in configs]


def _train_missing(configs: list[RunConfig], engine: str, db, resume: bool, progress: bool, stop_on,
                   label: str, engine_options: dict) -> str:
    """Train the configs the store does not hold as finished (all of them with resume=False) on the
    engine, committing each result as it arrives; return the engine's name (auto resolved)."""
    from .engines import choose_engine, get_engine

    name = check_choice("engine", engine, ("auto",) + _engine_names())
    if not isinstance(resume, bool):
        raise TypeError(f"resume={resume!r} must be a bool")
    stop_on = check_stop_on(stop_on)
    if stop_on is not None and name not in ("auto",) + STOP_ENGINES:
        raise ValueError(f"stop_on={stop_on!r} needs a per-run Monitor, which engine={name!r} does not "
                         f"attach; use engine='auto', {', '.join(map(repr, STOP_ENGINES))} (or stop_on=None)")
    finished = db.finished_hashes() if resume else set()
    if finished:  # a run stopped early is redone unless this sweep would have stopped it as well
        finished = {r.hash for r in db.results([c.hash for c in configs if c.hash in finished])
                    if still_finished(r, stop_on)}
    todo = [c for c in configs if c.hash not in finished]
    if name == "auto" and stop_on is not None:
        name = "local"
        log.info("engine=auto chose 'local': stop_on=%r attaches a Monitor (every rule) to each run; "
                 "engine='vectorized' judges only divergence, stalled updates and dead units per member",
                 stop_on)
    elif name == "auto":
        name, why = choose_engine(todo)
        log.info("engine=auto chose %r: %s", name, why)
    runner = get_engine(name, **engine_options)
    runner.stop_on = stop_on
    _drive(runner, todo, db, len(configs) - len(todo), len(configs), progress, label)
    return name


# engines that honour stop_on: local / process train each run through dd.fit with a Monitor; vectorized
# judges per-member statistics with the same rules (divergence, stalled updates, dead units) per epoch
STOP_ENGINES = ("local", "process", "vectorized")


def _engine_names() -> tuple[str, ...]:
    from .engines import ENGINES

    return tuple(ENGINES)


def _drive(runner, todo: list[RunConfig], db, already: int, total: int, progress: bool,
           label: str = "sweep") -> None:
    """Feed the engine, commit every result as it arrives, show progress; Ctrl-C shuts down cleanly."""
    bar = _Progress(total, already, enabled=progress and sys.stderr.isatty(), label=label)
    committed = 0
    try:
        with bar:
            if todo:
                for result in runner.run(todo):
                    db.put(result)  # one transaction per finished run
                    committed += 1
                    bar.advance("stopped" if (result.metrics or {}).get("stopped") else result.status)
    except KeyboardInterrupt:
        runner.shutdown(cancel=True)
        print(f"\ninterrupted: {already + committed} of {total} runs are in the store {db.where}; "
              "run the same sweep again (resume=True) to finish the rest", file=sys.stderr)
        raise
    finally:
        runner.shutdown()


class _Progress:
    """rich progress on stderr: runs done / total, diverged, failed, elapsed, ETA (off when not a tty)."""

    def __init__(self, total: int, done: int, enabled: bool, label: str = "sweep"):
        self.enabled, self.total, self.done, self.label = enabled, total, done, label
        self.counts = {"diverged": 0, "stopped": 0, "failed": 0}
        self._p = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._p = Progress(TextColumn(self.label, markup=False), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[extra]}"), TimeElapsedColumn(),
                               TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._p.__enter__()
            self._task = self._p.add_task(self.label, total=self.total, completed=self.done, extra="")
        return self

    def advance(self, status: str) -> None:
        if status in self.counts:
            self.counts[status] += 1
        if self._p is not None:
            extra = "  ".join(f"{k} {v}" for k, v in self.counts.items())
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
