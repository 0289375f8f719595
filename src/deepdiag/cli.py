"""The ``deepdiag`` command: parses arguments and calls the library, nothing more.

Results go to stdout; progress, logs and errors to stderr (one line; the traceback only with ``--debug``
or ``DEEPDIAG_DEBUG=1``). Every command exits with one of these codes:

====  =======================================================================================
code  meaning
====  =======================================================================================
0     fine: every claim reproduced (``run``), no finding at ``--fail-on`` or worse (``check``), a fix
      verified or nothing to repair (``repair``)
1     a finding at or above ``--fail-on`` (``check``); a claim not reproduced or inconclusive (``run``);
      findings left unrepaired (``repair``)
2     usage error: a bad option or value, a missing file, an unusable ``--out`` directory or run store
3     the user's code failed: their file or factory raised, or called ``sys.exit``
4     internal error in deepdiag: one line on stderr; please report it (with ``--debug``'s traceback)
130   interrupted by Ctrl-C (SIGINT); 143 terminated (SIGTERM), 129 hung up (SIGHUP): finished runs
      stay in the store, worker processes are stopped, the same command resumes
====  =======================================================================================

A reader that stops early (``deepdiag check m.py:build | head -1``) is not an error: output it no longer
reads is dropped and the command ends with the code above it would have had.
"""
import contextlib
import functools
import json
import math
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .engines import ENGINES, check_engine, get_engine

EXIT_OK, EXIT_FINDING, EXIT_USAGE, EXIT_USER_CODE, EXIT_INTERNAL = 0, 1, 2, 3, 4


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP turned into the KeyboardInterrupt path (clean shutdown); exit 128 + the signal."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def _interrupted(signum, frame) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second signal must not cut the cleanup
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


class _Stdout:
    """sys.stdout for the console, read at each write (so test runners can swap it); when the reader of
    a pipe has gone (``| head -1``), further output is dropped instead of failing the command."""

    closed_pipe = False

    def write(self, text: str) -> int:
        if not self.closed_pipe:
            try:
                return sys.stdout.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.closed_pipe:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.closed_pipe = True
        with contextlib.suppress(OSError, ValueError):  # the interpreter's own flush at exit stays quiet
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())

    def __getattr__(self, name):  # isatty, fileno, encoding: those of the current sys.stdout
        return getattr(sys.stdout, name)


class App(typer.Typer):
    """The typer app; run as the ``deepdiag`` command it turns SIGTERM and SIGHUP into the Ctrl-C path
    (finished runs committed, workers stopped, exit 128 + signal) and ignores a second signal while
    that cleanup runs."""

    def __call__(self, *args, **kwargs):
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, _interrupted) for sig in handled}
        try:
            return super().__call__(*args, **kwargs)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


app = App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
          help="Diagnose PyTorch networks and reproduce the textbook claims about them. Exit codes: 0 fine; "
               "1 a finding at --fail-on or worse / a claim not reproduced / not repaired; 2 usage error; 3 your code "
               "failed; 4 internal error (please report); 130/143 interrupted (SIGINT/SIGTERM).")
# markup off: user text (module names like "[/]", summaries) is printed as it is, never parsed as markup
out = Console(file=_Stdout(), highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
STATE = {"debug": False}


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Severity(str, Enum):
    warning = "warning"
    error = "error"


class UsageError(ValueError):
    """A problem with what the user asked for: reported as one line, exit 2."""


class UserCodeError(Exception):
    """The user's own code (their file, factory or model) raised or exited: one line, exit 3."""


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    err.print(Text.assemble(("error:", "bold red"), " ", message))
    return typer.Exit(code)


def _debug() -> bool:
    return STATE["debug"] or os.environ.get("DEEPDIAG_DEBUG", "") not in ("", "0")


def _os_message(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    return f"cannot use{where}: {e.strerror or e}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"warning: {message}")


def guarded(fn):
    """Run a command body; map each failure to one line and its exit code (traceback with --debug)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():  # e.g. a damaged result file set aside: one line on stderr
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt as e:
            err.print("interrupted")
            raise typer.Exit(getattr(e, "exit_code", 130)) from None
        except UserCodeError as e:
            if _debug():
                raise
            raise fail(str(e), EXIT_USER_CODE) from None
        except (UsageError, ValueError, TypeError, ImportError) as e:
            if _debug():
                raise
            raise fail(str(e)) from None
        except OSError as e:
            if _debug():
                raise
            raise fail(_os_message(e)) from None
        except Exception as e:  # a failure inside deepdiag itself
            if _debug():
                raise
            raise fail(f"internal error: {type(e).__name__}: {e}; please report it to the deepdiag "
                       "maintainers with the traceback that --debug shows", EXIT_INTERNAL) from None
    return wrapper


@contextlib.contextmanager
def user_code(what: str, files: tuple = ()):
    """Run the user's code: what it raises (or a ``sys.exit``) becomes a UserCodeError naming `what`.
    With `files`, only failures raised from a frame in one of those files are theirs (e.g. their model's
    forward inside ``dd.checkup``); the rest pass through to be judged as usage or internal errors."""
    try:
        yield
    except (KeyboardInterrupt, typer.Exit, UsageError):
        raise
    except SystemExit as e:
        raise UserCodeError(f"{what} called sys.exit({e.code!r}); nothing was checked") from None
    except BaseException as e:
        if files and not _raised_in(e, files):
            raise
        raise UserCodeError(f"{what} raised {type(e).__name__}: {e}") from e


def _raised_in(e: BaseException, files: tuple) -> bool:
    """Whether a frame of `e`'s traceback lies in one of `files`."""
    wanted = {os.path.realpath(f) for f in files}
    tb = e.__traceback__
    while tb is not None:
        if os.path.realpath(tb.tb_frame.f_code.co_filename) in wanted:
            return True
        tb = tb.tb_next
    return False


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    """deepdiag: why won't my network train, and is what the textbooks say true?"""
    STATE["debug"] = debug


def _threads() -> None:
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))  # small models: more threads do not help


@app.command("list")
@guarded
def list_cmd() -> None:
    """List the studies: the claim each tests, its knobs and its quick-mode time."""
    from .study import get_study, knobs, list_studies

    table = Table("study", "claim", "knobs", "quick", show_lines=True)
    for name in list_studies():
        study = get_study(name)
        quick = f"~{study.quick_time:.0f} s" if study.quick_time else "≤ 30 s"
        table.add_row(name, study.claim, ", ".join(knobs(name)), quick)
    out.print(table)


def parse_sets(pairs: list, names: list) -> dict:
    """``KEY=VALUE`` strings -> per-study knob values, each parsed to the type of the knob's default."""
    from .study import knobs

    per_study: dict[str, dict] = {n: {} for n in names}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {pair!r} must look like KEY=VALUE, e.g. --set depth=40")
        owners = [n for n in names if key in knobs(n)]
        if not owners:
            valid = sorted({k for n in names for k in knobs(n)})
            raise UsageError(f"unknown knob {key!r} for {', '.join(names)}; valid knobs: {', '.join(valid)}")
        for n in owners:
            per_study[n][key] = parse_value(key, raw, knobs(n)[key])
    return per_study


def parse_value(key: str, raw: str, default):
    """Parse `raw` to the type of `default` (bool, int, float, str, or a comma-separated tuple)."""
    raw = raw.strip()
    if isinstance(default, tuple):
        item = default[0] if default else 0.0
        return tuple(parse_value(key, part, item) for part in raw.split(",") if part.strip())
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--set {key}={raw!r}: expected true or false")
    for kind in (int, float):
        if isinstance(default, kind) or default is None:
            try:
                value = kind(raw)
            except ValueError:
                if default is not None:
                    raise UsageError(f"--set {key}={raw!r}: expected {kind.__name__} "
                                     f"(default {default!r})") from None
                continue
            if kind is float and not math.isfinite(value):  # no knob means anything at inf or nan
                raise UsageError(f"--set {key}={raw!r}: expected a finite number (default {default!r})")
            return value
    if default is None and raw.lower() in ("none", "null"):
        return None
    return raw


def _select(studies: list[str]) -> list[str]:
    from .study import list_studies

    available = list_studies()
    if not studies or studies == ["all"]:
        return available
    unknown = [s for s in studies if s not in available]
    if unknown:
        raise UsageError(f"unknown study {unknown[0]!r}; available: all, {', '.join(available)}")
    return list(dict.fromkeys(studies))


def _cached(name: str, folder: Path, quick: bool, seeds, knob_values: dict, engine: str):
    """(the saved result.json of an identical earlier run or None, why a saved one is not identical):
    identical means the same full config, seeds, mode, engine numbers and deepdiag version
    (``study.identity``), not merely the same knobs on this command line."""
    from .results import read_result
    from .study import identity, stale

    saved = read_result(folder / "result.json")  # a damaged one is set aside (named in a warning): rerun
    if saved is None:
        return None, []
    why = stale(saved, identity(name, quick, seeds, engine, **knob_values))
    return (None if why else saved), why


# --engine values and the options each takes (--address, --workers): the engine table's, and auto
ENGINE_OPTIONS = {**{name: spec.options for name, spec in ENGINES.items()}, "auto": ()}


def engine_options(engine: str, address: Optional[str], workers: Optional[int]) -> dict:
    """The engine checked (one line naming an unknown engine, or the extra to install) and its options
    (--address, --workers) as the engine's keyword arguments, their values checked by building it once."""
    if engine not in ENGINE_OPTIONS:
        raise UsageError(f"unknown engine {engine!r} (--engine); allowed: {', '.join(ENGINE_OPTIONS)}")
    options = {k: v for k, v in (("address", address), ("workers", workers)) if v is not None}
    for key in options:
        if key not in ENGINE_OPTIONS[engine]:
            takes = [e for e, keys in ENGINE_OPTIONS.items() if key in keys]
            raise UsageError(f"engine {engine!r} takes no --{key}; it applies to --engine {', '.join(takes)}")
    if engine != "auto":
        check_engine(engine)
        get_engine(engine, **options).shutdown()  # constructors check the values and start nothing
    return options


def _check_device(device: Device) -> None:
    if device == Device.cuda:
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is visible to torch; use --device cpu")


@app.command()
@guarded
def run(
    studies: Annotated[Optional[list[str]], typer.Argument(help="studies to run, or 'all'")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="CI-sized runs (each study ≤ 30 s)")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="results directory")] = Path("results"),
    seeds: Annotated[Optional[int], typer.Option(min=1, help="number of seeds (default: the study's)")] = None,
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="a study knob, KEY=VALUE")] = None,
    engine: Annotated[str, typer.Option(help="where training runs execute: local (the reference), process, "
                                        "dask, ray, vectorized or auto")] = "local",
    address: Annotated[Optional[str], typer.Option(help="scheduler address for dask/ray")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="worker processes (process, or a temporary "
                                                   "dask/ray cluster); default: the number of cores")] = None,
    device: Annotated[Device, typer.Option(help="device for training")] = Device.auto,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary instead of the table")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="rerun studies that already have results, "
                                        "retraining their runs")] = False,
) -> None:
    """Run studies, write their results and the HTML report, print the verdicts.

    Every training run goes through the sweep layer on --engine and is committed to DIR/runs.sqlite
    the moment it ends: after Ctrl-C, the same command retrains only what had not finished."""
    from .report import build_report
    from .results import write_tables
    from .study import run_study

    names = _select(studies or [])
    knob_values = parse_sets(sets or [], names)
    runs = {"engine": engine, "engine_options": engine_options(engine, address, workers), "resume": not fresh}
    _check_device(device)
    _check_out(out_dir)
    _check_store(out_dir, fresh)
    _threads()
    rows = []
    try:
        for name in names:
            rows.append(_run_one(name, quick, out_dir, seeds, knob_values[name], fresh, run_study, runs))
        write_tables(out_dir)
        report = build_report(out_dir)
    except KeyboardInterrupt as e:
        err.print(f"interrupted: {len(rows)} finished studies are saved in {out_dir}, and every finished "
                  f"training run in {out_dir / 'runs.sqlite'}; run the same command again to resume")
        raise typer.Exit(getattr(e, "exit_code", 130)) from None
    except OSError as e:  # e.g. the disk filled up while writing results
        raise UsageError(f"--out {out_dir}: cannot write {e.filename or 'the results'}: "
                         f"{e.strerror or e}") from None
    if as_json:
        out.print_json(json.dumps({"studies": rows, "report": str(report)}))
    else:
        _print_verdicts(rows, report)
    raise typer.Exit(EXIT_OK if all(r["verdict"] == "reproduced" for r in rows) else EXIT_FINDING)


def _check_out(out_dir: Path) -> None:
    """--out must be a directory deepdiag can create and write in: one line naming it otherwise."""
    import tempfile

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: exists and is not a directory; give a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise UsageError(f"--out {out_dir}: cannot write there ({e.strerror or e}); give a writable "
                         "directory") from None


def _check_store(out_dir: Path, fresh: bool) -> None:
    """The run store DIR/runs.sqlite must open; a damaged one stops the command (naming it) unless
    --fresh, which sets it aside (renamed ``runs.sqlite.corrupt-<time>``) and starts a new one."""
    from .atomic import set_aside
    from .store import FILENAME, Store, StoreError

    path = out_dir / FILENAME
    if not path.exists():
        return
    try:
        Store(path).close()
    except StoreError as e:
        if not fresh or "damaged" not in str(e):
            raise
        moved = set_aside(path)
        for extra in ("-wal", "-shm"):  # the journal of the damaged file belongs with it
            side = path.with_name(path.name + extra)
            if side.exists():
                os.replace(side, moved.with_name(moved.name + extra))
        err.print(f"warning: run store {path} was damaged; set aside as {moved.name}, starting a new one")


def _run_one(name, quick, out_dir, seeds, values, fresh, run_study, runs: dict) -> dict:
    """One study: its saved result when an identical one exists (unless --fresh), else run it with the
    engine settings `runs` (a progress bar of its training runs on a terminal)."""
    cached, why = (None, []) if fresh else _cached(name, out_dir / name, quick, seeds, values, runs["engine"])
    if cached is not None:
        err.print(f"{name}: kept earlier result ({cached['verdict']}); --fresh reruns it")
        result = cached
    else:
        if why:
            err.print(f"{name}: rerunning — {', '.join(why)} (earlier result in {out_dir / name} differs)")
        err.print(f"running {name} ({'quick' if quick else 'full'}, --engine {runs['engine']})…")
        result = run_study(name, quick=quick, out=out_dir, seeds=seeds, progress=True, **runs,
                           **values).to_dict(with_data=False)
        err.print(f"{name}: {result['verdict']} in {result['wall_time']:.1f} s")
    passed = sum(c["passed"] is True for c in result["checks"])
    return {"study": name, "verdict": result["verdict"], "passed": passed, "total": len(result["checks"]),
            "wall_time": round(result["wall_time"], 2), "engines": result.get("engines") or {},
            "kept": cached is not None}


def _print_verdicts(rows: list[dict], report: Path) -> None:
    from .sweep import engine_line

    colour = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow"}
    table = Table("study", "verdict", "checks", "wall time")
    for r in rows:
        table.add_row(r["study"], Text(r["verdict"], style=colour[r["verdict"]]), f"{r['passed']}/{r['total']}",
                      f"{r['wall_time']:.1f} s")
    out.print(table)
    for r in rows:  # where the runs actually trained: a run the engine could not take names its reason
        kept = " (kept earlier result)" if r["kept"] else ""
        out.print(f"{r['study']}: {engine_line(r['engines']) if r['engines'] else 'engines not recorded'}{kept}")
    out.print(f"report: {report}")


@app.command()
@guarded
def report(
    directory: Annotated[Path, typer.Argument(help="a results directory written by deepdiag run, or a run "
                                              "saved by Monitor.save (its run.json)")],
    open_browser: Annotated[bool, typer.Option("--open", help="open the report in a browser")] = False,
) -> None:
    """(Re)build DIR/report.html from what DIR alone holds: study results, or a saved run."""
    from .report import build_report

    path = build_report(directory)
    out.print(str(path))
    if open_browser:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


def load_factory(target: str):
    """Import FACTORY from FILE.py given as 'FILE.py:FACTORY' and return it."""
    import importlib.util

    file, sep, name = target.rpartition(":")
    if not sep or not file or not name:
        raise UsageError(f"target {target!r} must look like FILE.py:FACTORY, e.g. model.py:build")
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"no such file: {file}")
    spec = importlib.util.spec_from_file_location(f"deepdiag_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        with user_code(f"importing {file}"):
            spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UsageError(f"{file} has no callable {name!r}")
    return factory


@dataclass(frozen=True)
class FileBuild:
    """`repair`'s build function for FILE.py:FACTORY: picklable (a path, a name and the file's SHA-256), so
    the engines' worker processes import the file themselves; the hash makes the results store's trial
    keys follow the file's content (an edited model file is a new model, the same file resumes)."""

    path: str
    name: str
    sha256: str

    @classmethod
    def of(cls, target: str) -> "FileBuild":
        """The build for 'FILE.py:FACTORY', imported here once (``load_factory``'s usage errors)."""
        import hashlib

        factory = load_factory(target)
        file, _, name = target.rpartition(":")
        path = Path(file).resolve()
        _FACTORIES[(str(path), name)] = factory
        return cls(str(path), name, hashlib.sha256(path.read_bytes()).hexdigest())

    def __call__(self):
        key = (self.path, self.name)
        if key not in _FACTORIES:  # a worker process: import the file there, once
            _FACTORIES[key] = load_factory(f"{self.path}:{self.name}")
        built = _FACTORIES[key]()
        return built[0] if isinstance(built, tuple) else built


_FACTORIES: dict[tuple[str, str], object] = {}  # (resolved path, name) -> the factory, per process


def _inputs_for(model, input_shape: Optional[str]):
    import torch
    from torch import nn

    if input_shape:
        try:
            shape = tuple(int(s) for s in input_shape.split(","))
        except ValueError:
            raise UsageError(f"--input-shape {input_shape!r} must be comma-separated integers, e.g. 1,28,28") from None
        return torch.randn(64, *shape, generator=torch.Generator().manual_seed(0))
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))), None)
    if isinstance(first, nn.Linear):
        return torch.randn(64, first.in_features, generator=torch.Generator().manual_seed(0))
    raise UsageError("cannot infer the input shape of this model; give --input-shape C,H,W (without the batch)")


@app.command()
@guarded
def check(
    target: Annotated[str, typer.Argument(help="FILE.py:FACTORY returning a model or (model, inputs[, targets, loss_fn])")],
    input_shape: Annotated[Optional[str], typer.Option(help="input shape without the batch, e.g. 1,28,28")] = None,
    fail_on: Annotated[Severity, typer.Option(help="exit 1 at findings of this severity or worse")] = Severity.error,
    as_json: Annotated[bool, typer.Option("--json", help="print findings and layers as JSON")] = False,
) -> None:
    """Run dd.checkup on a model from your code: findings, remedies and the per-layer table."""
    import torch
    from torch import nn

    import deepdiag as dd

    _threads()
    factory = load_factory(target)
    with user_code(f"the factory {target}"):
        built = factory()
    parts = built if isinstance(built, tuple) else (built,)
    model = parts[0]
    if not isinstance(model, nn.Module):
        raise UsageError(f"{target} returned {type(model).__name__}, not an nn.Module (or a tuple starting with one)")
    inputs = parts[1] if len(parts) > 1 else _inputs_for(model, input_shape)
    targets = parts[2] if len(parts) > 2 else None
    loss_fn = parts[3] if len(parts) > 3 else None
    user_file = target.rpartition(":")[0]
    with user_code(f"your model or loss from {user_file}", files=(user_file,)):
        result = dd.checkup(model, torch.as_tensor(inputs), targets=targets, loss_fn=loss_fn)
    findings = result.findings
    if as_json:
        out.print_json(json.dumps({"findings": [f.to_dict() for f in findings],
                                   "coverage": result.coverage.to_dict() if result.coverage else None,
                                   "layers": json.loads(result.layers.to_json(orient="records"))}))
    else:
        _print_findings(findings, result.layers)
    rank = {"info": 0, "warning": 1, "error": 2}
    worst = max((rank[f.severity] for f in findings), default=-1)
    raise typer.Exit(EXIT_FINDING if worst >= rank[fail_on.value] else EXIT_OK)


def _print_findings(findings, layers) -> None:
    if not findings:
        out.print("no findings: nothing looks wrong on this batch")
    table = Table("code", "severity", "layers", "summary", "remedy", show_lines=True)
    for f in findings:
        table.add_row(f.code, f.severity, ", ".join(f.layers[:4]) + (" …" if len(f.layers) > 4 else ""),
                      f.summary, f.remedy)
    if findings:
        out.print(table)
    out.print(layers.to_string(index=False, max_colwidth=24))


def parse_train_sets(pairs: list) -> dict:
    """``KEY=VALUE`` strings -> ``dd.TrainConfig`` fields, each parsed to the type of its default."""
    from dataclasses import fields

    from .train import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    config = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise UsageError(f"--set {pair!r} must be KEY=VALUE with KEY one of {', '.join(defaults)}, "
                             "e.g. --set lr=0.01")
        default = defaults[key]
        config[key] = parse_value(key, raw, default)
    return config


@app.command()
@guarded
def repair(
    target: Annotated[str, typer.Argument(help="FILE.py:BUILD, a function returning a fresh model")],
    data: Annotated[str, typer.Option(help="a dd.data set name (digits, breast_cancer, ...) or a .npz file "
                                           "with x_train, y_train[, x_val, y_val]")],
    sets: Annotated[Optional[list[str]], typer.Option("--set", help="your training, a dd.TrainConfig field "
                                                                     "KEY=VALUE (optimizer, lr, epochs, ...)")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="search rounds")] = 2,
    candidates: Annotated[int, typer.Option(min=1, help="candidates per round")] = 8,
    engine: Annotated[str, typer.Option(help="auto, local, process, dask or ray: where the candidates of a "
                                                 "round train (all but local in parallel)")] = "auto",
    address: Annotated[Optional[str], typer.Option(help="scheduler address for dask/ray")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="worker processes (process, or a temporary "
                                                               "local dask/ray cluster)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="results directory: every trial is stored there "
                                                        "and the same command resumes")] = Path("results"),
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Diagnose the model BUILD makes, train ranked candidate remedies and keep what retraining proves.
    Exit 0 when a fix is verified (findings gone, metric better by more than seed noise) or nothing needs
    one, 1 when findings remain unrepaired."""
    from .repair import ENGINES as REPAIR_ENGINES
    from .repair import BaselineFailed
    from .repair import repair as run_repair

    _threads()
    if engine not in REPAIR_ENGINES:
        raise UsageError(f"--engine {engine!r}: repair runs on one of {', '.join(REPAIR_ENGINES)}")
    options = engine_options(engine, address, workers)
    config = parse_train_sets(sets or [])
    build = FileBuild.of(target)  # usage errors (no file, no such function) here, before any training
    user_file = target.rpartition(":")[0]
    try:
        with user_code(f"your model from {user_file}", files=(user_file,)):
            result = run_repair(build, data, config, rounds=rounds, engine=engine, store=out_dir,
                                max_candidates=candidates, progress=not as_json, **options)
    except BaselineFailed as e:
        raise UserCodeError(str(e)) from None
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
    else:
        _print_repair(result)
    raise typer.Exit(EXIT_OK if result.repaired or not result.findings else EXIT_FINDING)


def _print_repair(result) -> None:
    if not result.findings:
        out.print(f"no findings at warning or worse: nothing to repair ({result.metric} "
                  f"{result.to_dict()['before']:.4g})")
        return
    table = Table("round", "fix", "cause", f"{result.metric}", "findings after", "verified", "why not",
                  show_lines=False)
    for row in result.rows():
        after = row[f"{result.metric} after"]
        mark = "best" if row["best"] else ("yes" if row["verified"] and row["confirmed"] is not False else "no")
        table.add_row(str(row["round"]), row["fix"], row["cause"], "-" if after is None else f"{after:.4g}",
                      row["findings after"] or "-", mark, row["why"])
    out.print(table)
    out.print(str(result))


@app.command()
@guarded
def demo(
    epochs: Annotated[int, typer.Option(min=1, help="training epochs")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="seed for init, shuffling and split")] = 0,
) -> None:
    """Train a small MLP on the digits set and print train/val loss and accuracy per epoch."""
    from .demo import run_demo

    _threads()
    run_demo(epochs=epochs, seed=seed, print_fn=out.print)


if __name__ == "__main__":
    app()
