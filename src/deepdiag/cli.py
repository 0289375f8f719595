"""The ``deepdiag`` command: parses arguments and calls the library, nothing more.

Results go to stdout; progress, logs and errors to stderr. Exit codes: 0 ok; 1 a study not reproduced
(``run``) or a finding at or above ``--fail-on`` (``check``); 2 a usage error or a failure inside
deepdiag (one line on stderr, the traceback only with ``--debug``); 130 interrupted.
"""
import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .engines import ENGINES, check_engine, get_engine

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Diagnose PyTorch networks and reproduce the textbook claims about them.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
STATE = {"debug": False}


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Severity(str, Enum):
    warning = "warning"
    error = "error"


class UsageError(Exception):
    """A problem with what the user asked for: reported as one line, exit 2."""


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)  # e.g. "deepdiag[dask]" stays
    return typer.Exit(code)


def guarded(fn):
    """Run a command body; turn library errors into one line and exit 2 (traceback with --debug)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except (UsageError, ValueError, TypeError, FileNotFoundError, ImportError, AttributeError) as e:
            if STATE["debug"]:
                raise
            raise fail(str(e)) from None
        except Exception as e:  # a failure inside deepdiag or the user's code
            if STATE["debug"]:
                raise
            raise fail(f"{type(e).__name__}: {e} (run with --debug for the traceback)") from None
    return wrapper


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
                return kind(raw)
            except ValueError:
                if default is not None:
                    raise UsageError(f"--set {key}={raw!r}: expected {kind.__name__} "
                                     f"(default {default!r})") from None
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


def _cached(folder: Path, quick: bool, seeds, knob_values: dict):
    """The saved result.json of an identical earlier run (same mode, seeds and knobs), if any."""
    path = folder / "result.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    same = saved.get("quick") == quick and (seeds is None or len(saved.get("seeds", [])) == seeds)
    same = same and all(saved.get("config", {}).get(k) == (list(v) if isinstance(v, tuple) else v)
                        for k, v in knob_values.items())
    return saved if same else None


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
    _threads()
    rows = []
    try:
        for name in names:
            rows.append(_run_one(name, quick, out_dir, seeds, knob_values[name], fresh, run_study, runs))
    except KeyboardInterrupt:
        err.print(f"interrupted: {len(rows)} finished studies are saved in {out_dir}, and every finished "
                  f"training run in {out_dir / 'runs.sqlite'}; run the same command again to resume")
        raise typer.Exit(130) from None
    write_tables(out_dir)
    report = build_report(out_dir)
    if as_json:
        out.print_json(json.dumps({"studies": rows, "report": str(report)}))
    else:
        _print_verdicts(rows, report)
    raise typer.Exit(0 if all(r["verdict"] == "reproduced" for r in rows) else 1)


def _run_one(name, quick, out_dir, seeds, values, fresh, run_study, runs: dict) -> dict:
    """One study: its saved result when an identical one exists (unless --fresh), else run it with the
    engine settings `runs` (a progress bar of its training runs on a terminal)."""
    cached = None if fresh else _cached(out_dir / name, quick, seeds, values)
    if cached is not None:
        err.print(f"{name}: kept earlier result ({cached['verdict']}); --fresh reruns it")
        result = cached
    else:
        err.print(f"running {name} ({'quick' if quick else 'full'}, engine {runs['engine']})…")
        result = run_study(name, quick=quick, out=out_dir, seeds=seeds, progress=True, **runs,
                           **values).to_dict(with_data=False)
        err.print(f"{name}: {result['verdict']} in {result['wall_time']:.1f} s")
    passed = sum(c["passed"] is True for c in result["checks"])
    return {"study": name, "verdict": result["verdict"], "passed": passed, "total": len(result["checks"]),
            "wall_time": round(result["wall_time"], 2)}


def _print_verdicts(rows: list[dict], report: Path) -> None:
    colour = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow"}
    table = Table("study", "verdict", "checks", "wall time")
    for r in rows:
        table.add_row(r["study"], f"[{colour[r['verdict']]}]{r['verdict']}[/]", f"{r['passed']}/{r['total']}",
                      f"{r['wall_time']:.1f} s")
    out.print(table)
    out.print(f"report: {report}")


@app.command()
@guarded
def report(
    directory: Annotated[Path, typer.Argument(help="a results directory written by deepdiag run")],
    open_browser: Annotated[bool, typer.Option("--open", help="open the report in a browser")] = False,
) -> None:
    """(Re)build DIR/report.html from the results in DIR alone."""
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
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UsageError(f"{file} has no callable {name!r}")
    return factory


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
    built = load_factory(target)()
    parts = built if isinstance(built, tuple) else (built,)
    model = parts[0]
    if not isinstance(model, nn.Module):
        raise UsageError(f"{target} returned {type(model).__name__}, not an nn.Module (or a tuple starting with one)")
    inputs = parts[1] if len(parts) > 1 else _inputs_for(model, input_shape)
    targets = parts[2] if len(parts) > 2 else None
    loss_fn = parts[3] if len(parts) > 3 else None
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
    raise typer.Exit(1 if worst >= rank[fail_on.value] else 0)


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
