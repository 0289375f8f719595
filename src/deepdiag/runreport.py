"""A user's own training run, kept and drawn: what a ``Monitor`` saw, saved to a directory, read back, and
drawn as one self-contained HTML page.

    monitor.save("runs/x")          # snapshot(monitor).save(dir)
    monitor.report("run.html")      # render(snapshot(monitor), path)
    deepdiag report runs/x          # render(load_run(dir), dir/report.html)

A saved run directory holds

- ``run.json``: ``meta`` (deepdiag version, model class, the measured layers in forward order, every,
  capacity, window, steps seen and recorded, lr and batch size when known), ``findings`` (each with its
  evidence, remedy, fix and ``step``: the optimizer step at which the Monitor first saw it), ``coverage``
  (when the Monitor reports which modules it measured), and ``tables`` (the file of each table);
- ``layers``: the Monitor's ``history.layers``, one row per kept step and layer (step, layer, kind,
  act_rms, in_rms, signal_norm, grad_norm, weight_norm, grad_rel, update_rel, dead_frac,
  saturated_frac); ``steps``: step, loss; ``epochs``: epoch, step (optimizer steps at its end),
  train_loss, val_loss, train_acc, val_acc. Parquet when pyarrow is importable, else CSV.

``run.json`` is written last (each file atomically), so a directory with a ``run.json`` is complete.

The page draws what was saved and judges nothing again: the loss (and accuracy) curves over optimizer
steps with a dotted vertical line at the step where each finding was first seen, labelled with its code;
one heatmap (layers × kept steps) each for the back-propagated signal, the activation scale, the share of
dead or saturated units and the update-to-weight ratio; the findings with their numbers, remedy and fix.
A heatmap's colour scale is log10 where its values span two decades or more (the factor of 100 the
gradient-flow rules call "orders of magnitude"), linear otherwise. plotly.js is inlined (the partial
bundle of ``deepdiag.assets``); the page makes no network request.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import atomic
from ._version import __version__
from .assets import render_page
from .findings import Finding
from .jsonsafe import dumps, json_safe

RUN_FILE = "run.json"
FORMAT = "deepdiag-run"  # run.json's "format": what tells a saved run from a study results directory
TABLES = ("layers", "steps", "epochs")
TEXT_COLUMNS = {"layers": {"layer": str, "kind": str}}
TEMPLATE = "run.html.j2"
DECADES = 2.0  # a heatmap goes log10 when its positive values span >= 10**DECADES (100x: "orders of magnitude")

# (column of the layers table, heading, what it shows, may use a log colour scale)
HEATMAPS = (
    ("signal_norm", "back-propagated signal", "per-sample ‖∂L/∂output‖ of each weight layer", True),
    ("act_rms", "activation scale", "RMS of each layer's output (pre-activation for weight layers)", True),
    ("dead_frac", "dead units", "share of ReLU units that never fired over the last one or two windows", False),
    ("saturated_frac", "saturated units", "share of tanh/sigmoid units at their asymptote on more than half "
                                          "the positions", False),
    ("update_rel", "update-to-weight ratio", "‖ΔW‖ per optimizer step / ‖W‖ (from weight snapshots taken "
                                             "every few recorded steps)", True),
)
SEVERITY_COLOURS = {"error": "#cf222e", "warning": "#bc4c00", "info": "#59636e"}


@dataclass
class SavedRun:
    """One run as saved: ``meta`` (see the module docstring), the ``findings``, the ``layers``, ``steps`` and
    ``epochs`` tables, and ``coverage`` (JSON-safe, None when the Monitor did not report one)."""

    meta: dict
    findings: list[Finding]
    layers: pd.DataFrame
    steps: pd.DataFrame
    epochs: pd.DataFrame
    coverage: Any = None
    tables: dict = field(default_factory=dict)  # table -> file name, once saved or loaded

    def save(self, directory: str | Path) -> Path:
        """Write the run into `directory` (created if needed): the three tables, then ``run.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        parquet = _has_pyarrow()
        self.tables = {}
        for name in TABLES:
            path = directory / f"{name}.{'parquet' if parquet else 'csv'}"
            frame = getattr(self, name)
            with atomic.temporary_path(path) as tmp:
                frame.to_parquet(tmp, index=False) if parquet else frame.to_csv(tmp, index=False)
            self.tables[name] = path.name
        doc = {"format": FORMAT, "meta": self.meta, "findings": [f.to_dict() for f in self.findings],
               "coverage": self.coverage, "tables": self.tables}
        atomic.write_text(directory / RUN_FILE, dumps(doc, indent=2))
        return directory


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _coverage(monitor) -> dict | None:
    """The Monitor's ``Coverage`` (measured / weight-bearing modules) as JSON-safe data, None if unknown."""
    cov = monitor.coverage
    return None if cov is None else json_safe(cov.to_dict())


def snapshot(monitor) -> SavedRun:
    """What `monitor` holds now: its history, its findings (``check()``: each with the step first seen; a
    finding not seen before is also passed to its ``on_finding``) and metadata."""
    findings = monitor.check()
    hist = monitor.history
    sites = monitor.rec.sites
    meta = {"deepdiag": __version__, "model": type(monitor.model).__name__,
            "layers": [{"name": s.name, "kind": s.kind, "type": s.type, "family": s.family} for s in sites],
            "every": monitor.every, "capacity": monitor.capacity, "window": monitor.window,
            "steps": monitor.steps, "recorded": monitor.recorded, "kept": int(hist.steps.shape[0]),
            "lr": monitor.lr, "batch_size": monitor.batch_size,
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    return SavedRun(json_safe(meta), findings, hist.layers, hist.steps, hist.epochs, _coverage(monitor))


def is_saved_run(directory: str | Path) -> bool:
    """Whether `directory` holds a saved run (its ``run.json``), as opposed to study results."""
    return (Path(directory) / RUN_FILE).is_file()


def load_run(directory: str | Path) -> SavedRun:
    """The run saved in `directory` by ``Monitor.save``; ValueError when it holds none (or a damaged one)."""
    directory = Path(directory)
    path = directory / RUN_FILE
    if not path.is_file():
        raise ValueError(f"directory={str(directory)!r} holds no saved run (no {RUN_FILE}); write one with "
                         "monitor.save(directory)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); save the run again with monitor.save") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path} is not a saved deepdiag run (format {FORMAT!r})")
    frames = {name: _read_table(directory / file, TEXT_COLUMNS.get(name, {})) for name, file in doc["tables"].items()}
    findings = [Finding(**f) for f in doc["findings"]]
    return SavedRun(doc["meta"], findings, frames["layers"], frames["steps"], frames["epochs"],
                    doc.get("coverage"), dict(doc["tables"]))


def _read_table(path: Path, text: dict) -> pd.DataFrame:
    """A saved table; `text`: columns that CSV must keep as strings (layer "0" is not the number 0)."""
    if path.suffix == ".parquet":
        if not _has_pyarrow():
            raise ValueError(f"{path} is a Parquet table; reading it needs pyarrow: pip install pyarrow")
        return pd.read_parquet(path)
    if path.stat().st_size <= 1:
        return pd.DataFrame()
    return pd.read_csv(path, dtype=text)


# ------------------------------------------------------------------------------------------ figures

def _values(frame: pd.DataFrame, column: str) -> list:
    """A column as a list with NaN as None (a gap in plotly), or [] when the table lacks it."""
    if column not in frame:
        return []
    return [None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)
            for v in frame[column].tolist()]


def _spans_decades(values) -> bool:
    pos = [v for v in values if v is not None and v > 0]
    return bool(pos) and max(pos) / min(pos) >= 10 ** DECADES


def _markers(findings: list[Finding]) -> tuple[list, list]:
    """Plotly shapes and annotations: a dotted vertical line at each finding's first-seen step, its code
    written along it (findings first seen at the same step side by side)."""
    shapes, notes, at = [], [], {}
    for f in findings:
        if f.step is None:
            continue
        k = at[f.step] = at.get(f.step, -1) + 1
        colour = SEVERITY_COLOURS.get(f.severity, "#59636e")
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": f.step, "x1": f.step, "y0": 0,
                       "y1": 1, "line": {"color": colour, "width": 1.5, "dash": "dot"}})
        notes.append({"x": f.step, "xref": "x", "y": 1, "yref": "paper", "text": f.code, "showarrow": False,
                      "textangle": -90, "xanchor": "right", "yanchor": "top", "xshift": -2 - 14 * k,
                      "font": {"size": 11, "color": colour}})
    return shapes, notes


def _curves(run: SavedRun, kind: str) -> dict | None:
    """The loss (kind "loss") or accuracy curves over optimizer steps, with the findings marked."""
    traces = []
    if kind == "loss" and any(v is not None for v in _values(run.steps, "loss")):
        traces.append({"type": "scatter", "mode": "lines", "name": "batch loss (recorded steps)",
                       "x": run.steps["step"].tolist(), "y": _values(run.steps, "loss"),
                       "line": {"color": "#9ab", "width": 1}})
    for column, label, colour in ((f"train_{kind}", "training", "#1f77b4"), (f"val_{kind}", "validation", "#d62728")):
        ys = _values(run.epochs, column)
        if any(v is not None for v in ys):
            traces.append({"type": "scatter", "mode": "lines+markers", "name": f"{label} {kind} (epoch end)",
                           "x": run.epochs["step"].tolist(), "y": ys, "line": {"color": colour}})
    if not traces and kind != "loss":
        return None
    shapes, notes = _markers(run.findings)
    ys = [v for t in traces for v in t["y"]]
    log = kind == "loss" and all(v is None or v > 0 for v in ys) and _spans_decades(ys)
    layout = {"height": 360, "margin": {"t": 30, "r": 20, "b": 50, "l": 60}, "shapes": shapes, "annotations": notes,
              "xaxis": {"title": {"text": "optimizer step"}},
              "yaxis": {"title": {"text": kind}, "type": "log" if log else "linear"},
              "legend": {"orientation": "h", "y": -0.22}}
    return {"data": traces, "layout": layout}


def _heatmap(run: SavedRun, column: str, title: str, may_log: bool) -> dict | None:
    """Layers (forward order, top to bottom) × kept steps of one column; None when no layer has it."""
    if column not in run.layers or run.layers.empty:
        return None
    wide = run.layers.pivot_table(index="layer", columns="step", values=column, aggfunc="first", dropna=False)
    order = [layer["name"] for layer in run.meta.get("layers", [])]
    wide = wide.reindex([n for n in order if n in wide.index] + [n for n in wide.index if n not in order])
    wide = wide.dropna(how="all")
    if wide.empty:
        return None
    raw = [[None if not math.isfinite(v) else float(v) for v in row] for row in wide.to_numpy(dtype=float)]
    log = may_log and _spans_decades(v for row in raw for v in row)
    trace = {"type": "heatmap", "x": [int(s) for s in wide.columns], "y": list(wide.index), "customdata": raw,
             "hovertemplate": "%{y}<br>step %{x}<br>" + title + " %{customdata:.3g}<extra></extra>",
             "colorscale": "Viridis" if may_log else [[0, "#ffffff"], [1, "#b2182b"]],
             "colorbar": {"title": {"text": title}}}
    if log:  # exact zeros (a blocked gradient) sit one decade below the smallest positive value, ticked "0"
        logs = [math.log10(v) for row in raw for v in row if v is not None and v > 0]
        low, high = math.floor(min(logs)), math.ceil(max(logs))
        zero = low - 1 if any(v is not None and v <= 0 for row in raw for v in row) else None
        z = [[None if v is None else math.log10(v) if v > 0 else zero for v in row] for row in raw]
        ticks = ([zero] if zero is not None else []) + list(range(low, high + 1))
        trace.update(z=z, colorbar={"title": {"text": f"{title} (log)"}, "tickvals": ticks,
                                    "ticktext": ["0" if t == zero else f"1e{t}" for t in ticks]})
    else:
        trace["z"] = raw
        if not may_log:
            trace.update(zmin=0.0, zmax=1.0)
    layout = {"height": max(220, 26 * len(raw) + 110), "margin": {"t": 20, "r": 20, "b": 50, "l": 140},
              "xaxis": {"title": {"text": "optimizer step"}},
              "yaxis": {"type": "category", "autorange": "reversed"}}
    return {"data": [trace], "layout": layout, "log": log, "rows": len(raw)}


def _evidence(f: Finding) -> list[tuple[str, str]]:
    """The finding's numbers as (name, text) pairs; nested values as compact JSON."""
    out = []
    for k, v in f.evidence.items():
        text = v if isinstance(v, str) else json.dumps(_rounded(v))
        out.append((k, text if len(text) <= 160 else text[:157] + "…"))
    return out


def _rounded(value):
    """JSON-safe `value` with every float to 4 significant digits (for reading, not for storing)."""
    value = json_safe(value)
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return [_rounded(v) for v in value] if isinstance(value, list) else value


def _script_json(value) -> str:
    """JSON for a <script type="application/json"> block ("</" escaped, so no text can close the block)."""
    return dumps(value).replace("</", "<\\/")


def render(run: SavedRun, path: str | Path = "run.html", title: str | None = None) -> Path:
    """Write the page of `run` (see the module docstring) to `path`; return the path."""
    figures = []
    for key, kind in (("loss", "loss"), ("accuracy", "acc")):
        spec = _curves(run, kind)
        if spec is not None:
            figures.append({"id": key, "title": key, "note": "", "spec": _script_json(spec), "rows": None})
    maps = []
    for column, heading, what, may_log in HEATMAPS:
        spec = _heatmap(run, column, heading, may_log)
        if spec is not None:
            scale = "log colour scale" if spec.pop("log") else "linear colour scale"
            maps.append({"id": column, "title": heading, "note": f"{what}; {scale}", "rows": spec.pop("rows"),
                         "spec": _script_json(spec)})
    findings = [{**f.to_dict(), "numbers": _evidence(f), "fix_text": dumps(f.fix) if f.fix else None}
                for f in run.findings]
    meta = run.meta
    facts = {"model": meta.get("model"), "layers measured": len(meta.get("layers", [])),
             "optimizer steps": meta.get("steps"), "recorded": meta.get("recorded"),
             "kept rows": meta.get("kept"), "every": meta.get("every"), "capacity": meta.get("capacity"),
             "lr": meta.get("lr"), "batch size": meta.get("batch_size"), "deepdiag": meta.get("deepdiag"),
             "saved": meta.get("saved_at")}
    html = render_page(TEMPLATE, title=title or f"deepdiag run report: {meta.get('model', 'model')}",
                       facts=facts, curves=figures, heatmaps=maps, findings=findings,
                       coverage=_coverage_rows(run.coverage))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, html)
    return path


def _coverage_rows(coverage: dict | None) -> list[dict] | None:
    """A saved ``Coverage.to_dict()`` as (item, value) table rows; lists are joined as text."""
    if coverage is None:
        return None
    return [{"item": k, "value": v if isinstance(v, (str, int, float)) or v is None else json.dumps(v)}
            for k, v in coverage.items()]
