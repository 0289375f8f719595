"""What deepdiag's HTML pages share: the jinja2 templates (``templates/``) and the partial plotly.js bundle
they inline (``static/``), so each page is one self-contained file that makes no network request.

Used by the study report (``deepdiag.report``) and the run report (``deepdiag.runreport``).
"""
from __future__ import annotations

from importlib import resources

PLOTLY_JS = "static/plotly-cartesian.min.js"  # plotly.js 4.1.1, see static/README.md


def plotly_js() -> str:
    """The partial plotly.js bundle the pages inline (package data)."""
    return resources.files("deepdiag").joinpath(PLOTLY_JS).read_text(encoding="utf-8")


def fmt(value) -> str:
    """A value as a page shows it: floats to 4 significant digits, lists item by item, None as a dash."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return "—" if value is None else str(value)


def render_page(template: str, **context) -> str:
    """The HTML of `template` (a file in ``deepdiag/templates``) rendered with `context`, autoescaped, with
    the ``fmt`` filter and the plotly bundle as ``plotlyjs``."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("deepdiag", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["fmt"] = fmt
    return env.get_template(template).render(plotlyjs=plotly_js(), **context)
