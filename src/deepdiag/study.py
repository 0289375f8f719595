"""The study framework: one study per claim of the reference texts, run -> checks -> verdict.

A study is a module in ``deepdiag/studies/`` that defines a frozen ``Config`` dataclass (its knobs),
the knob values of its quick mode, and two functions:

    measure(config, seeds) -> Measurement     # runs the experiment, returns checks + raw data
    plot(result, out_dir) -> list[Path]       # draws figures from result.data only (never recomputes)

``run_study`` validates the knobs, runs the study, computes the verdict from the checks and, with
``out=``, writes ``out/<study>/result.json``, ``data.csv`` and the PNG figures.

Training runs go through the sweep layer. A study's ``measure`` lists its runs as ``RunConfig``s
and calls ``train_runs(configs)``, which hands them to ``deepdiag.sweep.train_configs`` with the engine,
store, resume and progress settings of the ``run_study`` call in progress. With ``out=`` the store is
``out/runs.sqlite``: every finished run is committed there the moment it ends, so running the study
again (or after Ctrl-C) retrains nothing that finished and gives the same numbers. Measurements
on the trained models are the runs' probes (``deepdiag.probes``), taken in the worker.

Verdicts are computed, never stated: "reproduced" when every check passed, "not reproduced" when any
check failed, "inconclusive" when none failed but some could not be measured (``passed=None``, e.g. a
run that diverged where the check needed its loss).
"""
from __future__ import annotations

import contextvars
import dataclasses
import importlib
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import atomic
from ._validate import check_choice, check_number
from ._version import __version__
from .engines import ENGINES, check_engine
from .jsonsafe import json_safe
from .sweep import EngineUse, train_configs

ORDER = ("capacity", "l2", "dropout", "vanishing", "init", "depth", "precision")


@dataclass(frozen=True)
class Check:
    """One numbered claim held against a measurement.

    ``measured`` and ``expected`` are numbers or short texts; ``rule`` says how they are compared
    (e.g. "|measured/expected - 1| <= tolerance"); ``passed`` is None when it could not be measured.
    """

    name: str
    claim: str
    measured: Any
    expected: Any
    rule: str
    passed: bool | None
    tolerance: float | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        return json_safe(dataclasses.asdict(self))


def check_close(name: str, claim: str, measured: float, expected: float, rtol: float, detail: str = "") -> Check:
    """Pass when |measured/expected − 1| ≤ rtol (or |measured| ≤ rtol when expected is 0)."""
    if not (math.isfinite(measured) and math.isfinite(expected)):
        return Check(name, claim, measured, expected, f"relative error <= {rtol:g}", None, rtol, detail)
    err = abs(measured - expected) / abs(expected) if expected != 0 else abs(measured)
    return Check(name, claim, measured, expected, f"relative error <= {rtol:g}", bool(err <= rtol), rtol,
                 detail or f"relative error {err:.3g}")


def check_rule(name: str, claim: str, measured: Any, expected: Any, rule: str, passed: bool | None,
               detail: str = "", tolerance: float | None = None) -> Check:
    """A check whose pass rule is computed by the caller and stated in `rule`.
    A NaN measurement makes it inconclusive rather than failed."""
    if isinstance(measured, float) and math.isnan(measured):
        passed = None
    return Check(name, claim, measured, expected, rule, None if passed is None else bool(passed), tolerance, detail)


@dataclass
class Measurement:
    """What a study's ``measure`` returns: its checks, its raw data (one long table, an ``experiment``
    column telling its parts apart) and any notes for the report."""

    checks: list[Check]
    data: pd.DataFrame
    notes: str = ""


@dataclass(frozen=True)
class Study:
    """A registered study: its claim (quoted from the seed text), knobs and functions."""

    name: str
    claim: str
    theory: str
    config: type
    quick: dict
    measure: Callable[[Any, list[int]], Measurement]
    plot: Callable[["StudyResult", Path], list[Path]] | None = None
    seeds_quick: int = 1
    seeds_full: int = 3
    quick_time: float | None = None  # typical quick-mode wall time on 2 CPU cores, for `deepdiag list`
    threads: int = 1  # torch intra-op threads while measuring (see torch_threads)


@dataclass
class StudyResult:
    """The outcome of one study run: checks, verdict, data, figures and how it was run."""

    name: str
    claim: str
    theory: str
    verdict: str
    checks: list[Check]
    data: pd.DataFrame
    config: dict
    seeds: list[int]
    quick: bool
    wall_time: float
    figures: list[str] = field(default_factory=list)
    notes: str = ""
    environment: dict = field(default_factory=dict)
    engines: dict = field(default_factory=dict)  # EngineUse.to_dict(): where its training runs trained

    @property
    def passed(self) -> int:
        return sum(c.passed is True for c in self.checks)

    def to_dict(self, with_data: bool = True) -> dict:
        """JSON-safe dict (NaN/Inf become None)."""
        out = {k: getattr(self, k) for k in ("name", "claim", "theory", "verdict", "config", "seeds", "quick",
                                                "wall_time", "figures", "notes", "environment", "engines")}
        out["checks"] = [c.to_dict() for c in self.checks]
        if with_data:
            out["data"] = self.data.to_dict(orient="records")
        return json_safe(out)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def save(self, out: str | Path) -> Path:
        """Write ``out/<name>/result.json``, ``data.csv`` and the figures; return the folder."""
        folder = Path(out) / self.name
        folder.mkdir(parents=True, exist_ok=True)
        with atomic.temporary_path(folder / "data.csv") as tmp:
            self.data.to_csv(tmp, index=False)
        atomic.write_text(folder / "result.json", json.dumps(self.to_dict(with_data=False), indent=2))
        return folder

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.verdict} ({self.passed}/{len(self.checks)} checks, {self.wall_time:.1f} s)"]
        for c in self.checks:
            mark = {True: "pass", False: "FAIL", None: "n/a "}[c.passed]
            lines.append(f"  [{mark}] {c.name}: measured {_short(c.measured)} vs {_short(c.expected)} ({c.rule})")
        return "\n".join(lines)


def verdict(checks: Sequence[Check]) -> str:
    """reproduced if every check passed; not reproduced if any failed; inconclusive otherwise."""
    if not checks:
        return "inconclusive"
    if any(c.passed is False for c in checks):
        return "not reproduced"
    return "reproduced" if all(c.passed is True for c in checks) else "inconclusive"


_REGISTRY: dict[str, Study] = {}


def register(study: Study) -> Study:
    """Add a study to the registry (the built-in ones register themselves on import)."""
    _REGISTRY[study.name] = study
    return study


def _builtin(name: str) -> Study | None:
    try:
        module = importlib.import_module(f"deepdiag.studies.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"deepdiag.studies.{name}":
            return None
        raise
    return register(module.STUDY)


def list_studies() -> list[str]:
    """Names of the available studies, in the order of DESIGN.md, then any registered by the user."""
    builtin = [n for n in ORDER if n in _REGISTRY or _builtin(n) is not None]
    return builtin + [n for n in _REGISTRY if n not in builtin]


def get_study(name: str) -> Study:
    """The registered study called `name`; ValueError listing the available ones otherwise."""
    if not isinstance(name, str) or (name not in _REGISTRY and _builtin(name) is None):
        raise ValueError(f"unknown study {name!r}; available studies: {', '.join(list_studies())}")
    return _REGISTRY[name]


def knobs(name: str) -> dict[str, Any]:
    """The study's knobs with their full-mode defaults."""
    return {f.name: f.default for f in dataclasses.fields(get_study(name).config)}


def make_config(study: Study, quick: bool, overrides: dict) -> Any:
    """The study's Config for quick/full mode with the user's knob values, validated."""
    fields = {f.name: f for f in dataclasses.fields(study.config)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown knob {unknown[0]!r} for study {study.name!r}; valid knobs: {', '.join(fields)}")
    values = {**(study.quick if quick else {}), **overrides}
    for key, value in overrides.items():
        _check_knob_type(study.name, key, value, fields[key].default)
    return study.config(**values)


def _check_knob_type(study: str, key: str, value: Any, default: Any) -> None:
    """A knob must have the type of its default (ints accepted where floats are; tuples as lists)."""
    if default is None or value is None:
        return
    kind = type(default)
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int) and not isinstance(value, bool))
    if kind is tuple and isinstance(value, list):
        ok = True
    if isinstance(value, bool) and kind is not bool:
        ok = False
    if not ok:
        raise TypeError(f"knob {key}={value!r} of study {study!r} must be of type {kind.__name__} "
                        f"(default {default!r})")


def _seeds(study: Study, quick: bool, seeds: int | Sequence[int] | None) -> list[int]:
    if seeds is None:
        return list(range(study.seeds_quick if quick else study.seeds_full))
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        check_number("seeds", seeds, low=1, integer=True)
        return list(range(seeds))
    seeds = list(seeds)
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ValueError(f"seeds={seeds!r} must be a count >= 1 or a non-empty list of integers >= 0")
    return seeds


@contextmanager
def torch_threads(n: int):
    """Run the block with `n` torch threads, restoring the caller's count after.

    The studies train small models, whose steps are dominated by Python overhead, not FLOPs: splitting
    a width-64 matmul across threads only adds synchronisation, and on a busy 2-core machine two
    threads waiting on each other made training 10-50x slower than one (measured). So studies
    measure with one thread unless they ask for more.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def environment(engine: str = "local") -> dict:
    """Versions and machine facts recorded with every result; `engine`: where its runs trained."""
    return {"deepdiag": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "device": "cpu", "engine": engine}


# ---------------------------------------------------------------------------------- training runs

@dataclass(frozen=True)
class RunSettings:
    """Where and how a study's runs train: what ``train_runs`` passes to ``sweep.train_configs``."""

    engine: str = "local"
    store: Any = None  # a results directory, .sqlite file or Store; None: in memory (per call)
    resume: bool = True
    progress: bool = False
    engine_options: dict = field(default_factory=dict)
    label: str = "runs"
    used: list = field(default_factory=list)  # an EngineUse per train_runs call, appended as they return


# measure() called directly (tests, notebooks) trains with these defaults; run_study sets its own
_SETTINGS: contextvars.ContextVar[RunSettings] = contextvars.ContextVar("deepdiag_run_settings",
                                                                        default=RunSettings())


def train_runs(configs) -> list:
    """Train a study's runs through the sweep layer and return their ``RunResult``s in order (with
    histories, metrics and probes): the engine, store, resume and progress of the ``run_study`` call in
    progress (outside one: the local engine, an in-memory store). A failed run stops the study with its
    error: a study's checks need every run."""
    s = _SETTINGS.get()
    results, used = train_configs(configs, engine=s.engine, store=s.store, resume=s.resume,
                                  progress=s.progress, label=s.label, **s.engine_options)
    s.used.append(used)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        last = (failed[0].error or "").strip().splitlines()[-1:] or ["no error text"]
        raise RuntimeError(f"{len(failed)} of {len(results)} training run(s) failed; the first "
                           f"({failed[0].hash[:12]}): {last[0]}")
    return results


@contextmanager
def run_settings(settings: RunSettings):
    """Make `settings` the ones ``train_runs`` uses inside the block."""
    token = _SETTINGS.set(settings)
    try:
        yield settings
    finally:
        _SETTINGS.reset(token)


def _check_run_args(engine: str, resume: bool, progress: bool, engine_options) -> dict:
    """The engine options as a dict, after checking every argument (an engine whose optional extra is
    missing fails here, before any run, with the install command)."""
    if check_choice("engine", engine, ("auto", *ENGINES)) != "auto":
        check_engine(engine)
    for name, value in (("resume", resume), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}={value!r} must be a bool")
    if engine_options is not None and not isinstance(engine_options, dict):
        raise TypeError(f"engine_options={engine_options!r} must be a dict of engine options, "
                        "e.g. {'workers': 4} or {'address': 'tcp://host:8786'}")
    return dict(engine_options or {})


def run_study(name: str, quick: bool = False, out: str | Path | None = None,
              seeds: int | Sequence[int] | None = None, *, engine: str = "local", store=None,
              resume: bool = True, progress: bool = False, engine_options: dict | None = None,
              **knob_values) -> StudyResult:
    """Run one study and return its ``StudyResult``; with `out`, also write its files and figures.

    Its training runs go through ``dd.sweep``'s layer: `engine` (local, process, dask, ray, vectorized,
    auto) with `engine_options` (e.g. ``{"workers": 4}``, ``{"address": "tcp://host:8786"}``). The
    default, ``local``, is the reference loop; process, dask and ray run that same loop in their
    workers and give the same numbers. ``vectorized`` (and ``auto``, which picks it for runs of one
    shape) agrees with it only to float rounding, which a deep plain net can amplify (init's 30-layer
    runs), so a study's numbers may move, though not its verdict. The store is `store` (a results
    directory, a ``.sqlite`` file or a ``Store``), else ``out/runs.sqlite`` when `out` is given, else in
    memory. With `resume` (default) runs the store already holds are not retrained, so a second call,
    or one after Ctrl-C, finishes quickly with identical numbers. `progress`: a progress bar of the
    runs on stderr (in a terminal).

    >>> result = dd.run_study("vanishing", quick=True, out="results/")
    >>> result.verdict, [c.passed for c in result.checks]
    """
    study = get_study(name)
    config = make_config(study, quick, knob_values)
    seed_list = _seeds(study, quick, seeds)
    options = _check_run_args(engine, resume, progress, engine_options)
    runs_in = store if store is not None else out  # a directory holds its store as runs.sqlite
    settings = RunSettings(engine, runs_in, resume, progress, options, label=study.name)
    start = time.perf_counter()
    with torch_threads(study.threads), run_settings(settings):
        measured = study.measure(config, seed_list)
    result = StudyResult(
        name=study.name, claim=study.claim, theory=study.theory, verdict=verdict(measured.checks),
        checks=measured.checks, data=measured.data, config=json_safe(dataclasses.asdict(config)),
        seeds=seed_list, quick=quick, wall_time=time.perf_counter() - start, notes=measured.notes,
        environment=environment(engine), engines=_engines_used(engine, settings.used),
    )
    if out is not None:
        folder = Path(out) / study.name
        folder.mkdir(parents=True, exist_ok=True)
        if study.plot is not None:
            # recorded relative to the study folder, so the directory can move (the report finds them there)
            result.figures = [Path(p).name for p in study.plot(result, folder)]
        result.save(out)
    return result


def _engines_used(engine: str, used: list) -> dict:
    """The study's ``EngineUse`` calls merged, as a dict (``EngineUse.to_dict``)."""
    total = EngineUse(used[0].engine if used else engine)
    for u in used:
        total = total.merge(u)
    return total.to_dict()


def identity(name: str, quick: bool, seeds: int | Sequence[int] | None = None, engine: str = "local",
             **knob_values) -> dict:
    """Everything that shapes a study's result, as its ``result.json`` records it: the full resolved
    config (every knob, defaults included, not just those given), the seed list, quick or full, the
    engine and the deepdiag version. A saved result is current only when ``stale`` finds nothing."""
    study = get_study(name)
    config = json_safe(dataclasses.asdict(make_config(study, quick, knob_values)))
    return {"quick": quick, "seeds": _seeds(study, quick, seeds), "config": config, "engine": engine,
            "deepdiag": __version__}


def stale(saved: dict, wanted: dict) -> list[str]:
    """Why a saved result (a ``result.json`` dict) is not the result `wanted` (an ``identity``) would
    give, one short phrase per difference ("width 16 → 64"); empty when it is current. Engines count
    only where their numbers differ (``engines.reuses``: a result from the reference loop serves every
    engine, one from the vectorized engine only vectorized and auto)."""
    from .engines import numeric_class, reuses

    why = []
    if saved.get("quick") != wanted["quick"]:
        why.append(f"{'quick' if saved.get('quick') else 'full'} → {'quick' if wanted['quick'] else 'full'}")
    if saved.get("seeds") != wanted["seeds"]:
        why.append(f"seeds {saved.get('seeds')} → {wanted['seeds']}")
    config = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    for key in dict.fromkeys([*wanted["config"], *config]):
        if config.get(key, "(unset)") != wanted["config"].get(key, "(unset)"):
            why.append(f"{key} {config.get(key, '(unset)')} → {wanted['config'].get(key, '(unset)')}")
    env = saved.get("environment") if isinstance(saved.get("environment"), dict) else {}
    engine = env.get("engine", "local")  # results written before engines existed came from the local loop
    if not reuses(wanted["engine"], engine):
        why.append(f"engine {engine} → {wanted['engine']} ({numeric_class(engine)} numbers differ from "
                   f"{numeric_class(wanted['engine'])})")
    if env.get("deepdiag") != wanted["deepdiag"]:
        why.append(f"deepdiag {env.get('deepdiag', '(unrecorded)')} → {wanted['deepdiag']}")
    return why


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
