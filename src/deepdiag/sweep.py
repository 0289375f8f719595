"""Grids of runs as data, and the driver: grid expansion and ``sweep``.

A run is a ``deepdiag.runs.RunConfig``, keyed in the results store by its content hash.

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
import itertools
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._validate import check_choice, check_number
from .engines import ENGINES, STOP_ENGINES, get_engine
from .engines.vectorized import group, not_vectorizable
from .findings import severity_rank
from .runs import FIELDS, RunConfig, RunResult
from .store import Store, open_store

log = logging.getLogger("deepdiag.sweep")

STOP_ON = (None, "warning", "error")  # dd.sweep(stop_on=...): the least severity of a finding that ends a run


def check_stop_on(stop_on) -> str | None:
    """``stop_on`` validated: None, "warning" or "error" (ValueError naming the allowed values)."""
    if stop_on is None or (isinstance(stop_on, str) and stop_on in STOP_ON):
        return stop_on
    raise ValueError(f"stop_on={stop_on!r} is not allowed; allowed values: None, 'warning', 'error'")


def still_finished(result: RunResult, stop_on: str | None) -> bool:
    """Whether a stored finished run is reused by a sweep with this ``stop_on``: a run that was stopped
    early counts only when this sweep would have stopped it too (its finding is at least ``stop_on``)."""
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
    configs = expand(base, grid, seeds)
    owned = not isinstance(store, Store)
    db = open_store(store)
    try:
        used = _train_missing(configs, engine, db, resume, progress, stop_on, "sweep", engine_options)
        table = db.table([c.hash for c in configs])
    finally:
        if owned:
            db.close()
    table.attrs["engine"] = used.engine
    table.attrs["engines"] = used.to_dict()  # runs per engine that trained them, reused, why any fell back
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
    return train_configs(configs, engine, store, resume, progress, stop_on, label, **engine_options)[0]


def train_configs(configs, engine: str = "auto", store=None, resume: bool = True, progress: bool = True,
                  stop_on: str | None = None, label: str = "sweep",
                  **engine_options) -> tuple[list[RunResult], EngineUse]:
    """``run_configs``, and where its runs trained (an ``EngineUse``)."""
    configs = [as_config(c) for c in configs]
    if not configs:
        raise ValueError("configs is empty; give at least one RunConfig")
    unique = list({c.hash: c for c in configs}.values())
    owned = not isinstance(store, Store)
    db = open_store(store)
    try:
        used = _train_missing(unique, engine, db, resume, progress, stop_on, label, engine_options)
        found = {r.hash: r for r in db.results([c.hash for c in unique])}
    finally:
        if owned:
            db.close()
    return [found[c.hash] for c in configs], used


@dataclass(frozen=True)
class EngineUse:
    """Where the runs of one driver call (or, merged, of one study) trained.

    ``engine``: the engine asked for (``auto`` resolved); ``runs``: run hash -> the engine that trained it
    (``RunResult.engine``), or ``"reused"`` for a finished run the store already held; ``reasons``: run
    hash -> why a run went to the local loop instead of the batched model (vectorized asked, or auto
    choosing local), e.g. "vectorized cannot run probes: weight_norm": one short text per kind."""

    engine: str
    runs: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)

    def merge(self, other: EngineUse) -> EngineUse:
        """Both calls' runs; a run trained by either counts as trained, not reused."""
        runs = {**self.runs, **{h: e for h, e in other.runs.items() if e != "reused" or h not in self.runs}}
        return EngineUse(self.engine, runs, {**self.reasons, **other.reasons})

    def to_dict(self) -> dict:
        """``{"engine": asked, "runs": n, "trained": {engine: n}, "reused": n, "fallbacks": {engine: {reason: n}}}``."""
        trained = Counter(e for e in self.runs.values() if e != "reused")
        fallbacks: dict = {}
        for h, why in self.reasons.items():
            where = self.runs.get(h)
            if why and where not in (None, "reused"):
                fallbacks.setdefault(where, Counter())[why] += 1
        return {"engine": self.engine, "runs": len(self.runs), "trained": dict(trained),
                "reused": sum(e == "reused" for e in self.runs.values()),
                "fallbacks": {e: dict(c) for e, c in fallbacks.items()}}

    def line(self) -> str:
        return engine_line(self.to_dict())


def engine_line(used: dict) -> str:
    """An ``EngineUse.to_dict()`` in one line: "24 runs — 24 local (vectorized cannot run probes:
    weight_norm); 0 reused"."""
    if not used.get("runs"):
        return "no training runs"
    parts = []
    for engine, n in sorted(used["trained"].items(), key=lambda kv: -kv[1]):
        why = used.get("fallbacks", {}).get(engine, {})
        text = "; ".join(r if len(why) == 1 else f"{r} ×{k}" for r, k in why.items())
        parts.append(f"{n} {engine}" + (f" ({text})" if text else ""))
    trained = ", ".join(parts) or "none trained"
    return f"{used['runs']} runs — {trained}; {used['reused']} reused"


def _train_missing(configs: list[RunConfig], engine: str, db, resume: bool, progress: bool, stop_on,
                   label: str, engine_options: dict) -> EngineUse:
    """Train the configs the store does not hold as finished (all of them with resume=False) on the
    engine, committing each result as it arrives; return where each run trained (auto resolved)."""
    name = check_choice("engine", engine, ("auto", *ENGINES))
    if not isinstance(resume, bool):
        raise TypeError(f"resume={resume!r} must be a bool")
    stop_on = check_stop_on(stop_on)
    if stop_on is not None and name not in ("auto",) + STOP_ENGINES:
        raise ValueError(f"stop_on={stop_on!r} needs a per-run Monitor, which engine={name!r} does not "
                         f"attach; use engine='auto', {', '.join(map(repr, STOP_ENGINES))} (or stop_on=None)")
    finished, note = db.reusable([c.hash for c in configs], name) if resume else (set(), "")
    if note:  # runs of another engine class or deepdiag version: one line, then they retrain
        print(f"{label}: {note}", file=sys.stderr)
    if finished:  # a run stopped early is redone unless this sweep would have stopped it as well
        finished = {r.hash for r in db.results([c.hash for c in configs if c.hash in finished])
                    if still_finished(r, stop_on)}
    todo = [c for c in configs if c.hash not in finished]
    reasons: dict[str, str] = {}  # run hash -> why it did not train on the batched model
    if name == "auto" and stop_on is not None:
        name = "local"
        log.info("engine=auto chose 'local': stop_on=%r attaches a Monitor (every rule) to each run; "
                 "engine='vectorized' judges only divergence, stalled updates and dead units per member",
                 stop_on)
    elif name == "auto":
        name, why = choose_engine(todo)
        log.info("engine=auto chose %r: %s", name, why)
        if name == "local":  # what kept each run off the batched model
            reasons = {c.hash: not_vectorizable(c) or "vectorized had no other run of its shape to batch with"
                       for c in todo}
    runner = get_engine(name, **engine_options)
    runner.stop_on = stop_on
    trained = _drive(runner, todo, db, len(configs) - len(todo), len(configs), progress, label)
    runs = {c.hash: "reused" for c in configs if c.hash in finished}
    reasons.update(getattr(runner, "fallbacks", {}))  # the engine's own (vectorized: runs it passed on)
    return EngineUse(name, {**runs, **trained}, {h: r for h, r in reasons.items() if h in trained and r})


def choose_engine(configs: list[RunConfig]) -> tuple[str, str]:
    """What ``engine="auto"`` picks, and why: vectorized when some runs share an architecture."""
    groups, rest = group(configs)
    batched = sum(len(g) for g in groups if len(g) > 1)
    if batched == 0:
        reason = ("no two runs share a vectorizable shape" if configs else "nothing to run")
        return "local", reason + f"; {len(rest)} run(s) not vectorizable" * bool(rest)
    return "vectorized", (f"{batched} of {len(configs)} runs form {sum(len(g) > 1 for g in groups)} "
                          f"batched group(s); the other {len(configs) - batched} go to the local loop")


def _drive(runner, todo: list[RunConfig], db, already: int, total: int, progress: bool,
           label: str = "sweep") -> dict[str, str]:
    """Feed the engine, commit every result as it arrives, show progress; Ctrl-C shuts down cleanly.
    Returns run hash -> the engine that trained it."""
    bar = _Progress(total, already, enabled=progress and sys.stderr.isatty(), label=label)
    committed, engines = 0, {}
    try:
        with bar:
            if todo:
                for result in runner.run(todo):
                    db.put(result)  # one transaction per finished run
                    committed += 1
                    engines[result.hash] = result.engine
                    bar.advance("stopped" if (result.metrics or {}).get("stopped") else result.status)
    except KeyboardInterrupt:
        runner.shutdown(cancel=True)
        print(f"\ninterrupted: {already + committed} of {total} runs are in the store {db.where}; "
              "run the same sweep again (resume=True) to finish the rest", file=sys.stderr)
        raise
    finally:
        runner.shutdown()
    return engines


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
