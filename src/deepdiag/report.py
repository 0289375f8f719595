"""The HTML report: one self-contained file, readable offline, built from a results directory alone.

For every study: the claim quoted from the seed text, the theory, the verdict, the checks table, the
figures (interactive plotly drawn from the saved figure specs; the PNG where a spec cannot be drawn)
and the raw data as an embedded CSV download. plotly.js is inlined once; the page makes no network
request of any kind.
"""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import jinja2

from . import atomic, figspec
from .results import load_results

TEMPLATE = "report.html.j2"


def _figure_html(png: Path) -> dict:
    """One figure as interactive HTML (from its spec) or, failing that, the PNG as a data: URI."""
    spec_path = png.with_suffix(".json")
    png_uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode() if png.exists() else None
    if spec_path.exists():
        spec = json.loads(spec_path.read_text())
        if not spec.get("fallback"):
            fig = figspec.to_plotly(spec)
            html = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})
            return {"name": png.stem, "html": html, "png": png_uri}
    return {"name": png.stem, "html": None, "png": png_uri}


def _csv_uri(folder: Path) -> str | None:
    csv = folder / "data.csv"
    return "data:text/csv;base64," + base64.b64encode(csv.read_bytes()).decode() if csv.exists() else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "—" if value is None else str(value)


def build_report(directory: str | Path, title: str = "deepdiag report") -> Path:
    """(Re)build ``directory/report.html`` from the results in `directory`; return its path."""
    from plotly.offline import get_plotlyjs

    res = load_results(directory)
    directory = Path(directory)
    if not res.raw:
        raise ValueError(f"no study results in directory={str(directory)!r} (only a sweep store); "
                         f"write some with: deepdiag run all --quick --out {directory}")
    sections = []
    for name, result in res.raw.items():
        folder = directory / name
        figures = [_figure_html(Path(p) if Path(p).is_absolute() else folder / Path(p).name)
                   for p in result.get("figures", [])]
        sections.append({**result, "figures": figures, "csv": _csv_uri(folder),
                         "passed": sum(c["passed"] is True for c in result["checks"])})
    env = next(iter(res.raw.values())).get("environment", {})
    env = {**env, "git commit": _git_commit(), "total wall time (s)": round(float(res.studies["wall_time"].sum()), 1)}
    loader = jinja2.Environment(loader=jinja2.PackageLoader("deepdiag", "templates"),
                                autoescape=jinja2.select_autoescape(["html", "j2"]))
    loader.filters["fmt"] = _fmt
    html = loader.get_template(TEMPLATE).render(title=title, sections=sections, environment=env,
                                                plotlyjs=get_plotlyjs())
    path = directory / "report.html"
    atomic.write_text(path, html)
    return path
