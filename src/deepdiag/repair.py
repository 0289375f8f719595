"""Verified repair: diagnose a model, train ranked candidate remedies, keep what retraining proves.

``dd.repair(build, data, config)`` does what AUTOTRAINER (Zhang et al., ICSE 2021) showed works: a
remedy is a hypothesis, and a training run tests it.

1. **Diagnose.** The model from ``build()`` is trained as configured at seeds 0 and 1 (``dd.checkup`` on
   the first batch, a ``dd.Monitor`` in the loop). Findings of severity warning or worse are the
   problems; the two seeds' scores give the noise of the validation metric.
2. **Candidates.** Each finding becomes ranked alternatives (``deepdiag.candidates``): its own
   ``Finding.fix`` first, then remedies acting through other causes (init or learning rate, data or
   model), so the winner also attributes the cause.
3. **Train and verify.** Each candidate is applied with ``dd.apply_fix`` to a fresh ``build()`` and
   trained at seed 0 with the same budget (a candidate that diverges stops at the end of that epoch).
   It is *verified* when none of the diagnosed findings' codes remains at warning or worse and it
   beats the baseline at the same seed (the same initial draw and batch order: a paired comparison)
   by more than the margin, 0.01 accuracy or 5 % of the baseline's MSE. The best verified candidate is
   retrained at seed 1; it is *confirmed* when the findings are gone there too and its mean gain over
   the two seeds, ½·Σₛ (cₛ − mₛ) with mₛ the baseline's score at seed s, still exceeds the margin.
   The pairing cancels what the seed does to both runs; a chaotic baseline (0.2 at one seed, 0.5 at
   the other) is compared seed by seed rather than to its luckiest run. If confirmation fails, the
   next best is tried.
4. **Combine and iterate.** For each finding, the best candidate that cleared the bar with that
   finding gone is merged with those of the other findings, and trained. Among verified candidates
   whose scores lie within the margin of the best, the one with the fewest changes wins, so a
   combination (or a merged first guess) is kept only where a run proves it better. When no candidate
   is verified, a second round starts from the best candidate that cleared the bar (up to ``rounds``).

Every trial is committed to the results store (``store=``), keyed by what shaped it (``trial_key``),
so an interrupted repair resumes. Scores are higher-is-better: validation accuracy, or minus the
validation MSE in the data's own units for regression (the training split when there is no
validation split).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import labels
from ._validate import check_choice, check_number
from ._version import __version__
from .candidates import Candidate, Setup, combine, first_guess, on_top, ranked
from .checkup import checkup
from .data import ArrayData
from .findings import Finding, sort_findings
from .fixes import DATA_KEYS, MODEL_KEYS, apply_fix, fix_data, make_loss
from .jsonsafe import json_safe
from .monitor import Monitor
from .train import TrainConfig, _output_width, default_loss, fit

ENGINES = ("auto", "local", "process", "dask", "ray")  # the sweep layer's engines that run any task
ACC_FLOOR, MSE_FLOOR = 0.01, 0.05  # the margin's floor (see the module doc)
CONFIRM_TRIES = 3  # verified candidates retrained at seed 1 before giving up
STOP_CODES = ("divergence", "nonfinite_values")  # a candidate showing these at error is doomed: stopped


class BaselineFailed(RuntimeError):
    """The model as configured could not be built or trained (the user's code or data): nothing to repair."""


# ---- one trial ----

@dataclass(frozen=True)
class TrialSpec:
    """Everything one candidate training depends on (picklable when `build`, `data` and `loss_fn` are)."""
    build: Callable[[], nn.Module]
    data: Any
    config: TrainConfig
    loss_fn: Any
    fix: dict
    seed: int


def trial_key(spec: TrialSpec) -> str:
    """SHA-256 of what shaped a trial: the build function (its qualified name and source), the data
    (their bytes), the config, the loss, the fix, the seed and deepdiag's version."""
    parts = {"build": _code_id(spec.build), "data": data_fingerprint(spec.data),
             "config": json_safe(asdict(spec.config)),
             "loss": _code_id(spec.loss_fn), "fix": json_safe(spec.fix), "seed": spec.seed,
             "version": __version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()


def _code_id(obj) -> str:
    if obj is None:
        return "None"
    target = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
    name = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', repr(target))}"
    try:
        src = inspect.getsource(target)
    except (OSError, TypeError):
        src = ""
    if inspect.isfunction(obj):  # a closure's captured values and the defaults shape what it builds
        cells = [c.cell_contents for c in obj.__closure__ or () if _filled(c)]
        extra = repr((cells, obj.__defaults__, obj.__kwdefaults__))
    else:
        extra = "" if inspect.isclass(obj) else repr(obj)
    return name + hashlib.sha256((src + extra).encode()).hexdigest()[:16]


def _filled(cell) -> bool:
    """Whether a closure cell holds a value (an empty one raises on reading)."""
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def data_fingerprint(data) -> str:
    """SHA-256 over the data's splits (shape, dtype and bytes of each tensor)."""
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_val", "y_val"):
        t = getattr(data, name, None)
        if t is not None:
            t = torch.as_tensor(t).detach().cpu().contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def run_trial(spec: TrialSpec) -> dict:
    """Build, fix, train and diagnose one candidate; a JSON-safe record (never raises for the user's or
    the fix's failures: they are recorded in "error")."""
    t0 = time.perf_counter()
    record = {"fix": spec.fix, "seed": spec.seed, "error": None}
    try:
        record.update(_train(spec))
    except Exception as e:  # noqa: BLE001  (a candidate that cannot be applied or trained is a result)
        record.update(error=f"{type(e).__name__}: {e}", score=None, findings=[])
    record["seconds"] = time.perf_counter() - t0
    return json_safe(record)


def _built(build: Callable, seed: int) -> nn.Module:
    """``build()`` with torch's global RNG seeded by `seed` (forked: the caller's stream is untouched); the
    model of a returned (model, ...) tuple."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
    if isinstance(model, tuple):
        model = model[0]
    if not isinstance(model, nn.Module):
        raise TypeError(f"build() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _train(spec: TrialSpec) -> dict:
    model = _built(spec.build, spec.seed)
    data = spec.data
    data_fix = {k: v for k, v in spec.fix.items() if k in DATA_KEYS and k != "drop_disputed_labels"}
    if data_fix:
        data = fix_data(data, data_fix)
    fixed, changes = apply_fix(model, spec.fix, config=spec.config, inputs=data.x_train[:256])
    if spec.fix and set(spec.fix) <= set(MODEL_KEYS) and not changes.applied:
        # model keys only and none did anything (an activation swap on a model with none to swap): the
        # baseline again
        raise ValueError(f"the fix changes nothing: {'; '.join(changes.skipped + changes.unreached)}")
    config = replace(changes.config or spec.config, seed=spec.seed)
    loss_fn = make_loss(changes.loss) if changes.loss else spec.loss_fn
    classify = task_of(data) == "classification"
    if spec.fix.get("drop_disputed_labels"):
        data, config = _drop_disputed(spec, data, config, loss_fn, classify, changes.applied)
    xb, yb = data.x_train[:64], data.y_train[:64]
    out_width = _output_width(fixed, xb, positions=True)
    if loss_fn is None:
        loss_fn = default_loss(task_of(data), out_width)
    report = checkup(fixed, xb, yb, loss_fn)
    stop = []
    monitor = Monitor(fixed, loss_fn=loss_fn, lr=config.lr, batch_size=config.batch_size,
                         n_classes=max(2, out_width) if classify else None,
                         on_finding=lambda f: stop.append(f.code) if f.code in STOP_CODES and f.rank == 2 else None)
    val = getattr(data, "x_val", None) is not None
    hist, train_error = None, None
    try:
        hist = fit(fixed, data, config, loss_fn=loss_fn, monitor=monitor, on_epoch=lambda h: bool(stop))
    except (RuntimeError, ValueError, IndexError) as e:  # the model and loss cannot train as set up
        train_error = f"{type(e).__name__}: {e}"
    finally:
        findings = sort_findings([*report.findings, *monitor.diagnose()])
        monitor.close()
    if hist is None:
        metric = f"{'val' if val else 'train'}_{'acc' if classify else 'mse'}"
        return {"score": -math.inf, "metric": metric, "findings": [f.to_dict() for f in findings],
                "train_error": train_error, "stopped": None, "applied": changes.applied,
                "skipped": changes.skipped, "unreached": changes.unreached}
    score, metric = _score(fixed, data, spec.data, hist, classify, val)
    return {"score": score, "metric": metric, "findings": [f.to_dict() for f in findings],
            "train_loss": hist.train_loss[-1] if hist.train_loss else None,
            "val_loss": hist.val_loss[-1] if hist.val_loss else None,
            "epochs_run": len(hist.epoch), "steps": hist.steps, "diverged": hist.diverged,
            "stopped": stop[0] if stop else None, "applied": changes.applied, "skipped": changes.skipped,
            "unreached": changes.unreached}

def _drop_disputed(spec: TrialSpec, data, config: TrainConfig, loss_fn, classify: bool, applied: list):
    """(`data` without the training samples whose labels the out-of-fold predictions of the candidate's own
    model and training dispute (``deepdiag.labels``), the config with its epochs scaled so that training
    keeps its number of optimizer steps). Each fold model trains as configured and keeps its best epoch on
    its held-out part; the final run trains on the n − d kept samples for ⌈epochs·n/(n − d)⌉ epochs."""
    if not classify:
        raise ValueError("drop_disputed_labels applies to class labels; these targets are real values")

    def make(fold: int) -> nn.Module:
        model = _built(spec.build, spec.seed * 1000 + 101 + fold)
        return apply_fix(model, spec.fix, config=spec.config, inputs=data.x_train[:256])[0]

    fold_config = replace(config, seed=spec.seed + 101, restore_best=True)
    train = lambda model, fold_data: fit(model, fold_data, fold_config, loss_fn=loss_fn)
    probs = labels.out_of_fold(make, data, train, seed=spec.seed)
    mask = labels.disputed_samples(probs, data.y_train)
    n, d = len(mask), int(mask.sum())
    if d == n:
        raise ValueError("every training label is disputed: nothing left to train on")
    epochs = math.ceil(config.epochs * n / (n - d))
    applied.append(f"drop_disputed_labels: {d} of {n} training samples dropped; {epochs} epochs keep the steps")
    return fix_data(data, {"drop_disputed_labels": True}, disputed=mask), replace(config, epochs=epochs)


def task_of(data) -> str:
    """The data's task: its ``task`` attribute, else regression for float targets."""
    task = getattr(data, "task", None)
    if task in ("classification", "regression"):
        return task
    return "regression" if torch.as_tensor(data.y_train).is_floating_point() else "classification"


def _score(model, data, original, hist, classify: bool, val: bool) -> tuple[float, str]:
    """(higher-is-better score, metric name): accuracy from the history, or minus the MSE of the
    predictions in the original data's units (undoing a target standardisation)."""
    split = "val" if val else "train"
    if classify:
        acc = (hist.val_acc if val else hist.train_acc)[-1] if hist.epoch else math.nan
        return acc, f"{split}_acc"
    x = getattr(data, f"x_{split}")
    y_fixed, y = torch.as_tensor(getattr(data, f"y_{split}")), torch.as_tensor(getattr(original, f"y_{split}"))
    with torch.no_grad():
        model.eval()
        pred = model(x).reshape(y.shape).double()
    # the fixed targets are an affine map of the originals: y_fixed = a·y + b; invert it on the predictions
    yo, yf = y.double().reshape(-1), y_fixed.double().reshape(-1)
    a = float(((yf - yf.mean()) * (yo - yo.mean())).sum() / ((yo - yo.mean()) ** 2).sum().clamp_min(1e-300))
    b = float(yf.mean() - a * yo.mean())
    mse = float(((pred - b) / a - y.double()).pow(2).mean()) if a else math.inf
    return (-mse if math.isfinite(mse) else -math.inf), f"{split}_mse"


# ---- the search ----

@dataclass
class Trial:
    """One trained candidate: the `candidate`, its `round`, the `record` of its seed-0 run, and the
    verdict (`verified`: the findings gone and the score above the bar; `confirmed`: also at seed 1)."""
    candidate: Candidate
    round: int
    record: dict
    verified: bool = False
    confirmed: bool | None = None
    why: str = ""

    @property
    def score(self) -> float:
        s = self.record.get("score")
        return -math.inf if s is None or not math.isfinite(s) else s

    def codes(self, at_least: int = 1) -> list[str]:
        rank = {"info": 0, "warning": 1, "error": 2}
        return list(dict.fromkeys(f["code"] for f in self.record.get("findings", [])
                                  if rank[f["severity"]] >= at_least))


@dataclass
class RepairResult:
    """What ``dd.repair`` found and proved. `findings`: the problems at the start (warning or worse);
    `before`: the baseline's seed-0 record; `baseline_scores`: its scores at seeds 0 and 1; `margin`:
    the gain a candidate must show over the baseline (``bar``: the seed-0 score to beat); `trials`: every candidate in training order; `best`: the confirmed best trial or
    None; `first_guess`: the trial of every finding's own ``Finding.fix`` merged (None when no finding
    had one); `trainings`: training runs done (the stored ones not counted); `seconds`: wall time."""
    metric: str
    findings: list[Finding]
    before: dict
    baseline_scores: list[float]
    margin: float
    trials: list[Trial] = field(default_factory=list)
    best: Trial | None = None
    first_guess: Trial | None = None
    trainings: int = 0
    reused: int = 0
    seconds: float = 0.0

    @property
    def bar(self) -> float:
        """The seed-0 score a candidate must beat: the baseline's at seed 0 plus the margin."""
        b = self.baseline_scores[0]
        return b + self.margin if math.isfinite(b) else -math.inf

    @property
    def codes(self) -> list[str]:
        """The codes of the diagnosed findings (what a verified candidate has cleared)."""
        return list(dict.fromkeys(f.code for f in self.findings))

    @property
    def repaired(self) -> bool:
        return self.best is not None

    @property
    def fix(self) -> dict | None:
        """The best verified fix (apply it with ``dd.apply_fix``), or None."""
        return dict(self.best.candidate.fix) if self.best else None

    @property
    def first_guess_repaired(self) -> bool | None:
        """Whether every finding's own fix, applied once without search, was verified and confirmed."""
        return None if self.first_guess is None else bool(self.first_guess.verified and self.first_guess.confirmed)

    def attribution(self) -> dict[str, str]:
        """finding code -> the cause (``deepdiag.candidates.CAUSES``) of the best fix answering it."""
        if not self.best:
            return {}
        return {code: self.best.candidate.cause for code in self.best.candidate.codes}

    def _show(self, score: float | None) -> float | None:
        if score is None or not math.isfinite(score):
            return score
        return -score if self.metric.endswith("mse") else score

    def rows(self) -> list[dict]:
        """One row per trial: round, source, cause, fix, the metric before → after, findings after,
        verified / confirmed, why not, seconds."""
        before = self._show(self.baseline_scores[0])
        return [{"round": t.round, "source": t.candidate.source, "cause": t.candidate.cause,
                 "fix": json.dumps(t.candidate.fix, sort_keys=True), "answers": ",".join(t.candidate.codes),
                 f"{self.metric} before": before, f"{self.metric} after": self._show(t.record.get("score")),
                 "findings after": ",".join(t.codes()), "verified": t.verified, "confirmed": t.confirmed,
                 "why": t.why, "best": t is self.best, "seconds": t.record.get("seconds")} for t in self.trials]

    def table(self):
        """The candidates as a pandas DataFrame (``rows()``)."""
        import pandas as pd
        return pd.DataFrame(self.rows())

    def to_dict(self) -> dict:
        return json_safe({
            "repaired": self.repaired, "fix": self.fix, "metric": self.metric,
            "before": self._show(self.baseline_scores[0]),
            "after": self._show(self.best.score) if self.best else None,
            "baseline_scores": [self._show(s) for s in self.baseline_scores], "margin": self.margin,
            "findings": [f.to_dict() for f in self.findings], "attribution": self.attribution(),
            "first_guess": self.first_guess.candidate.fix if self.first_guess else None,
            "first_guess_repaired": self.first_guess_repaired, "trainings": self.trainings,
            "reused": self.reused, "seconds": self.seconds, "candidates": self.rows(),
            "changes": self.best.record.get("applied") if self.best else None})

    def __str__(self) -> str:
        codes = ", ".join(self.codes) or "none"
        head = f"findings: {codes}; {self.metric} {_fmt(self._show(self.baseline_scores[0]))} (seeds 0, 1: " \
               f"{', '.join(_fmt(self._show(s)) for s in self.baseline_scores)}; margin {_fmt(self.margin)})"
        if not self.repaired:
            return f"not repaired. {head}; {len(self.trials)} candidate(s) tried"
        return (f"repaired with {json.dumps(self.fix, sort_keys=True)}: {self.metric} "
                f"{_fmt(self._show(self.baseline_scores[0]))} -> {_fmt(self._show(self.best.score))}. {head}; "
                f"{len(self.trials)} candidate(s), {self.trainings} training run(s)")


def _fmt(x) -> str:
    return "None" if x is None else f"{x:.4g}"


class _Runner:
    """Trains trial specs through an engine of the sweep layer (``deepdiag.engines``: local, process, dask
    or ray; ``Engine.map_calls``), reusing and committing them through the store, with a progress bar."""

    def __init__(self, engine: str, store, progress: bool, engine_options: dict):
        from .engines import get_engine
        from .store import open_store

        self.progress = progress
        self.db = open_store(store)
        self.trainings = self.reused = 0
        self.engine = get_engine(engine, **engine_options)

    def run(self, specs: list[TrialSpec], label: str) -> list[dict]:
        from .sweep import _Progress

        keys = [trial_key(s) for s in specs]
        out: list[dict | None] = [self.db.trial(k) for k in keys]
        todo = [i for i, r in enumerate(out) if r is None]
        self.reused += len(specs) - len(todo)
        bar = _Progress(len(specs), len(specs) - len(todo), self.progress and sys.stderr.isatty(), label)
        with bar:
            for j, record in self.engine.map_calls(run_trial, [specs[i] for i in todo]):
                i = todo[j]
                out[i] = record
                self.db.put_trial(keys[i], record)
                self.trainings += 1
                bar.advance("failed" if record.get("error") else "done")
        return out

    def close(self, cancel: bool = False) -> None:
        self.engine.shutdown(cancel=cancel)


def repair(build: Callable[[], nn.Module], data, config=None, *, loss_fn=None, rounds: int = 2,
           engine: str = "auto", store=None, max_candidates: int = 8, progress: bool = True,
           **engine_options) -> RepairResult:
    """Diagnose the model `build()` makes on `data`, train ranked candidate remedies and return the
    verified best (see the module doc).

    build: a function of no arguments returning a fresh ``nn.Module`` (called once per trial, after
    ``torch.manual_seed(seed)``). data: a data set name of ``dd.data``, a ``dd.data.Dataset``, or any
    object with ``x_train``, ``y_train`` (and ``x_val``, ``y_val``). config: a ``dd.TrainConfig`` or a
    dict of its fields (the training the user does). loss_fn: the loss (default: ``dd.fit``'s).
    rounds: search rounds (1 = one round of candidates). engine: an engine of the sweep layer
    (``deepdiag.engines``) that trains the candidates of a round: "local" (one after another in this
    process), "process" (worker processes), "dask" or "ray" (a cluster: ``address=``, or a temporary
    local one of ``workers=``); all but local need `build`, `data` and `loss_fn` picklable (module-level
    functions, ``functools.partial``); "auto": process when there are more than 2 CPUs and they pickle,
    else local. engine_options: the engine's options (``workers``, ``address``). store: a results
    directory or ``.sqlite`` file where every trial is committed (an interrupted repair resumes).
    max_candidates: candidates per round. Returns a ``RepairResult``: ``.repaired``, ``.fix``,
    ``.table()``.

    >>> result = dd.repair(build, "digits", {"lr": 0.5, "epochs": 5})
    >>> result.fix, result.table()
    """
    if isinstance(build, nn.Module) or not callable(build):
        raise TypeError(f"build must be a function of no arguments returning a fresh torch.nn.Module (each "
                        f"candidate trains its own), got {type(build).__name__}; e.g. build=lambda: MyNet()")
    data = as_data(data)
    config = TrainConfig.coerce(config)
    check_number("rounds", rounds, low=1, integer=True)
    check_number("max_candidates", max_candidates, low=1, integer=True)
    engine = _choose_engine(check_choice("engine", engine, ENGINES), build, data, loss_fn)
    t0 = time.perf_counter()
    runner = _Runner(engine, store, progress, engine_options)
    try:
        result = _search(build, data, config, loss_fn, rounds, max_candidates, runner)
    except BaseException:  # Ctrl-C, SIGTERM: stop the workers now; the finished trials are in the store
        runner.close(cancel=True)
        raise
    runner.close()
    result.trainings, result.reused, result.seconds = runner.trainings, runner.reused, time.perf_counter() - t0
    return result


def _pickles(*objs) -> bool:
    """Whether `objs` pickle, without serialising their arrays: what fails to pickle is code (a lambda, a
    local function) or an object holding it, never the numbers of a tensor or array, so plain tensors and
    numeric numpy arrays are stood in by a reference and the output is thrown away as it is written. A
    data set of N bytes costs no N-byte copy here; the engine pickles it when it sends the trials."""
    import pickle

    import numpy as np

    class Check(pickle.Pickler):
        def persistent_id(self, obj):
            if type(obj) in (torch.Tensor, nn.Parameter) or (type(obj) is np.ndarray and not obj.dtype.hasobject):
                return id(obj)
            return None

    class Discard:
        def write(self, b) -> int:
            return len(b)

    try:
        Check(Discard(), pickle.HIGHEST_PROTOCOL).dump(objs)
    except Exception:  # noqa: BLE001  (lambdas, local functions)
        return False
    return True


def _choose_engine(engine: str, build, data, loss_fn) -> str:
    """The engine to use: "auto" resolved; a remote engine only for picklable inputs (ValueError)."""
    if engine == "auto":
        return "process" if (os.cpu_count() or 1) > 2 and _pickles(build, data, loss_fn) else "local"
    if engine != "local" and not _pickles(build, data, loss_fn):
        raise ValueError(f"engine={engine!r} sends build, data and loss_fn to other processes, and they do not "
                         "pickle (a lambda or a local function?): define them at module level (or use "
                         "functools.partial), or use engine='local'")
    return engine


def as_data(data):
    """`data` as an object with x_train, y_train (x_val, y_val): a ``dd.data`` name, a ``.npz`` file with
    those arrays, or such an object already."""
    if isinstance(data, (str, Path)):
        if str(data).endswith(".npz"):
            return load_npz(data)
        from .data import NAMES, load
        return load(check_choice("data", str(data), NAMES), seed=0)
    for name in ("x_train", "y_train"):
        if getattr(data, name, None) is None:
            raise TypeError(f"data={type(data).__name__} has no {name}: give a dd.data name, a .npz file or "
                            "an object with x_train, y_train (and x_val, y_val)")
    return data


def load_npz(path) -> ArrayData:
    """Read a ``.npz`` of arrays (never pickled objects: ``allow_pickle=False``). Float x become float32;
    integer y are class ids (classification), float y regression targets."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data={str(path)!r}: no such file")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("x_train", "y_train") if k not in z.files]
        if missing:
            raise ValueError(f"data={str(path)!r} lacks {', '.join(missing)}; it holds {', '.join(z.files)} "
                             "(needed: x_train, y_train; optional: x_val, y_val)")
        arrays = {k: torch.from_numpy(np.array(z[k])) for k in ("x_train", "y_train", "x_val", "y_val")
                  if k in z.files}
    for k in ("x_train", "x_val"):
        if k in arrays and arrays[k].is_floating_point():
            arrays[k] = arrays[k].float()
    y = arrays["y_train"]
    task = "regression" if y.is_floating_point() else "classification"
    for k in ("y_train", "y_val"):
        if k in arrays:
            arrays[k] = arrays[k].float() if task == "regression" else arrays[k].long()
    return ArrayData(**arrays, task=task)


def _setup(config: TrainConfig, data) -> Setup:
    return Setup(optimizer=config.optimizer, lr=config.lr, batch_size=config.batch_size, epochs=config.epochs,
                 weight_decay=config.weight_decay, n_train=len(data.x_train), task=task_of(data))


def _findings(record: dict) -> list[Finding]:
    return [Finding(**f) for f in record.get("findings", [])]


def _margin(scores: list[float], metric: str) -> float:
    """The gain over the baseline a candidate must show (see the module doc)."""
    if metric.endswith("acc"):
        return ACC_FLOOR
    finite = [x for x in scores if math.isfinite(x)]
    return MSE_FLOOR * abs(finite[0]) if finite else 0.0


def _search(build, data, config, loss_fn, rounds, max_candidates, runner) -> RepairResult:
    spec = lambda fix, seed: TrialSpec(build, data, config, loss_fn, fix, seed)
    base = runner.run([spec({}, 0), spec({}, 1)], "diagnose")
    for r in base:
        if r.get("error"):
            raise BaselineFailed(f"training the model as configured failed: {r['error']}")
    scores = [r["score"] if r["score"] is not None else -math.inf for r in base]
    metric = base[0]["metric"]
    findings = [f for f in _findings(base[0]) if f.rank >= 1]
    if base[0].get("train_error") and not findings:  # a failure deepdiag cannot name: the user's code
        raise BaselineFailed(f"training the model as configured failed: {base[0]['train_error']}")
    result = RepairResult(metric, findings, base[0], scores, _margin(scores, metric))
    if not findings:
        return result
    setup = _setup(config, data)
    tried: dict[str, Trial] = {}
    anchor: Candidate | None = None
    for rnd in range(1, rounds + 1):
        start = findings if anchor is None else _anchor_findings(tried[anchor.key])
        cands = ranked([f for f in start if f.rank >= 1], setup, limit=max_candidates)
        if anchor is not None:
            cands = [on_top(anchor, c) for c in cands]
        new = []
        if rnd == 1 and cands:  # the best guess alone first: when it repairs everything, stop there
            new = _train_new(cands[:1], tried, rnd, result, runner, spec)
            first = first_guess(findings)
            result.first_guess = tried.get(first.key) if first else None
            if _confirm(tried.values(), result, runner, spec) is not None:
                break
        new += _train_new(cands, tried, rnd, result, runner, spec)
        if rnd == 1:
            new += _train_new(_combinations(tried.values(), result), tried, rnd, result, runner, spec)
        if _confirm(tried.values(), result, runner, spec) is not None:
            break
        improving = [t for t in new if t.score > result.bar and not t.record.get("error")]
        if not improving:
            break
        anchor = max(improving, key=lambda t: t.score).candidate
    if result.first_guess is not None and result.first_guess.verified and result.first_guess.confirmed is None:
        _confirm_one(result.first_guess, result, runner, spec)
    return result


def _anchor_findings(t: Trial) -> list[Finding]:
    """What the next round builds on `t` to answer: its findings at seed 0, and those of its seed-1
    confirmation when that failed (a fix that holds at one seed only has not answered them)."""
    first = _findings(t.record)
    seen = {f.code for f in first}
    return first + [f for f in _findings({"findings": t.record.get("seed1_findings", [])}) if f.code not in seen]


def _train_new(cands: list[Candidate], tried: dict, rnd: int, result: RepairResult, runner, spec) -> list[Trial]:
    cands = [c for c in cands if c.key not in tried]
    records = runner.run([spec(c.fix, 0) for c in cands], f"repair round {rnd}")
    trials = []
    for c, rec in zip(cands, records, strict=True):
        t = Trial(c, rnd, rec)
        t.verified, t.why = _verify(t, result.codes, result.bar)
        tried[c.key] = t
        result.trials.append(t)
        trials.append(t)
    return trials


def _verify(t: Trial, codes: list[str], bar: float) -> tuple[bool, str]:
    """(verified, why not): none of `codes` left at warning or worse, and the score above `bar`."""
    if t.record.get("error") or t.record.get("train_error"):
        return False, t.record.get("error") or t.record["train_error"]
    if t.record.get("stopped"):
        return False, f"stopped: {t.record['stopped']}"
    left = [c for c in t.codes() if c in codes]
    if left:
        return False, f"still {', '.join(left)}"
    if not t.score > bar:
        return False, f"not above the bar ({_fmt(t.score)} <= {_fmt(bar)})"
    return True, ""


def _combinations(trials, result: RepairResult) -> list[Candidate]:
    """For each diagnosed code, the best candidate whose run cleared the bar with that code gone; their
    fixes merged (pairs, then all) where they differ and do not contradict each other."""
    cleared = [t for t in trials if t.score > result.bar and not t.record.get("error")]
    parts: list[Candidate] = []
    for code in result.codes:
        ok = [t for t in cleared if code not in t.codes()]
        if ok:
            best = max(ok, key=lambda t: t.score).candidate
            if best.key not in {p.key for p in parts}:
                parts.append(best)
    if len(parts) < 2:
        return []
    groups = [[a, b] for i, a in enumerate(parts) for b in parts[i + 1:]] + ([parts] if len(parts) > 2 else [])
    return [c for c in (combine(g) for g in groups) if c is not None]


def _confirm(trials, result: RepairResult, runner, spec) -> Trial | None:
    """Choose the best verified trial (fewest changes within the margin of the top score) and confirm it
    at seed 1; on failure try the next, up to CONFIRM_TRIES. Sets ``result.best``."""
    verified = [t for t in trials if t.verified and t.confirmed is not False]
    tries = 0
    while verified and tries < CONFIRM_TRIES:
        top = max(t.score for t in verified)
        near = [t for t in verified if t.score >= top - result.margin]
        pick = min(near, key=lambda t: (len(t.candidate.fix), -t.score))
        if pick.confirmed is None:
            tries += 1
            _confirm_one(pick, result, runner, spec)
        if pick.confirmed:
            result.best = pick
            return pick
        verified.remove(pick)
    return result.best


def _confirm_one(t: Trial, result: RepairResult, runner, spec) -> None:
    """Retrain `t` at seed 1: confirmed when the findings are gone there too and the mean paired gain over
    seeds 0 and 1 exceeds the margin."""
    rec = runner.run([spec(t.candidate.fix, 1)], "confirm")[0]
    t.record["seed1_score"] = rec.get("score")
    t.record["seed1_findings"] = rec.get("findings", [])
    again = Trial(t.candidate, t.round, rec)
    ok, why = _verify(again, result.codes, -math.inf)  # the findings and errors at seed 1
    b0, b1 = result.baseline_scores
    gain = 0.5 * ((t.score - b0) + (again.score - b1)) if math.isfinite(b0) and math.isfinite(b1) else \
        (math.inf if again.score > -math.inf else -math.inf)
    if ok and not gain > result.margin:
        ok, why = False, f"mean gain over seeds 0 and 1 {_fmt(gain)} <= margin {_fmt(result.margin)}"
    t.confirmed = ok
    if not ok:
        t.why = f"seed 1: {why}"


__all__ = [
    "ENGINES",
    "ArrayData",
    "BaselineFailed",
    "RepairResult",
    "Trial",
    "TrialSpec",
    "as_data",
    "load_npz",
    "repair",
    "run_trial",
    "trial_key",
]
