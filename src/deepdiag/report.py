"""The HTML report: one self-contained file, readable offline, built from a results directory alone.

For every study: the claim quoted from the seed text, the theory, the verdict, the checks table, the
figures (interactive plotly drawn from the saved figure specs; the PNG where a spec cannot be drawn)
and the raw data as an embedded CSV download. plotly.js is inlined once, as its partial "cartesian"
bundle (``static/``: scatter, bars, error bars, heatmaps, log axes, subplots; a third of the full
bundle); the page makes no network request of any kind. Each CSV travels gzip-compressed and
base64-encoded (about a third of its bytes as a plain data: URI) and the page unpacks it into its
download link with the browser's DecompressionStream.
"""
from __future__ import annotations

import base64
import gzip
import json
import subprocess
from collections import Counter
import warnings
from pathlib import Path

from . import atomic, figspec
from .assets import render_page
from .results import inside, load_results, local_file
from .runreport import is_saved_run, load_run, render

TEMPLATE = "report.html.j2"


def _figure_html(folder: Path, recorded: str) -> dict | None:
    """One figure as interactive HTML (from its spec) or, failing that, the PNG as a data: URI; read
    from the study folder as it is now (``results.local_file``: never from outside it); None when
    neither can be shown."""
    png = local_file(folder, recorded)
    spec_path = local_file(folder, Path(recorded).with_suffix(".json").name)
    name = Path(recorded).stem
    png_uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode() if png else None
    if spec_path is not None:
        spec = json.loads(spec_path.read_text())
        if not spec.get("fallback"):
            fig = figspec.to_plotly(spec)
            html = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
            return {"name": name, "html": html, "png": png_uri}
    return {"name": name, "html": None, "png": png_uri} if png_uri else None


def _csv_gzip(folder: Path) -> str | None:
    """folder/data.csv gzip-compressed (mtime 0: the same bytes give the same report), base64."""
    csv = folder / "data.csv"
    if not csv.is_file() or not inside(folder, csv):  # a symlink out of the folder is not followed
        return None
    return base64.b64encode(gzip.compress(csv.read_bytes(), mtime=0)).decode()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _engines_used(results) -> str:
    """Where the studies' training runs trained, over all studies: "local 40, vectorized 24; 0 reused"."""
    trained, reused, recorded = Counter(), 0, False
    for r in results:
        used = r.get("engines")
        if used:  # results written before engines were recorded have none
            recorded = True
            trained.update(used["trained"])
            reused += used["reused"]
    if not recorded:
        return "not recorded"
    runs = ", ".join(f"{e} {n}" for e, n in trained.most_common()) or "no run trained"
    return f"{runs}; {reused} reused"


def build_report(directory: str | Path, title: str = "deepdiag report") -> Path:
    """(Re)build ``directory/report.html`` from the results in `directory` (study results, or a run saved
    by ``Monitor.save``: its ``run.json``); return its path."""
    if is_saved_run(directory):
        return render(load_run(directory), Path(directory) / "report.html")
    res = load_results(directory)
    directory = Path(directory)
    if not res.raw:
        raise ValueError(f"no study results in directory={str(directory)!r} (only a sweep store); "
                         f"write some with: deepdiag run all --quick --out {directory}")
    sections = []
    for name, result in res.raw.items():
        folder = res.folders[name]  # where its result.json was found, never a path the file names
        recorded = [p for p in result.get("figures", []) if isinstance(p, str)]
        figures = [_figure_html(folder, p) for p in recorded]
        missing = [p for p, f in zip(recorded, figures) if f is None]
        if missing:
            warnings.warn(f"{name}: figure(s) {', '.join(map(str, missing))} not found in {str(folder)!r}; "
                          "left out of the report", UserWarning, stacklevel=2)
        figures = [f for f in figures if f is not None]
        sections.append({**result, "figures": figures, "csv_gzip": _csv_gzip(folder),
                         "passed": sum(c["passed"] is True for c in result["checks"])})
    env = dict(next(iter(res.raw.values())).get("environment", {}))
    env = {**{("engine asked" if k == "engine" else k): v for k, v in env.items()},
           "engines used": _engines_used(res.raw.values()), "git commit": _git_commit(),
           "total wall time (s)": round(float(res.studies["wall_time"].sum()), 1)}
    html = render_page(TEMPLATE, title=title, sections=sections, environment=env)
    path = directory / "report.html"
    atomic.write_text(path, html)
    return path
