"""One figure, two renderers: a matplotlib figure is read into a JSON spec, drawn again with plotly.

The studies draw their figures once, with matplotlib (PNG for papers and slides). ``extract`` reads
what was drawn — lines and markers, error bars, scatter points, bars, horizontal/vertical reference
lines, axis labels, titles and log scales — into a plain JSON-safe dict saved beside the PNG. The
HTML report turns that spec into an interactive plotly figure with ``to_plotly``. Nothing is
recomputed: the spec holds the drawn numbers. A figure with content the spec cannot hold (images,
filled areas only) is marked ``fallback`` and the report shows its PNG instead.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer, ErrorbarContainer

DASH = {"-": "solid", "--": "dash", ":": "dot", "-.": "dashdot"}


def _values(a) -> list:
    """A JSON-safe list: floats with NaN/Inf as None, strings kept (categorical axes)."""
    out = []
    for v in np.asarray(a, dtype=object).ravel().tolist():
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            v = float(v)
            out.append(v if math.isfinite(v) else None)
        else:
            out.append(str(v))
    return out


def _label(artist) -> str | None:
    label = artist.get_label()
    return None if not label or label.startswith("_") else label


def _errorbars(ax) -> dict[int, dict]:
    """Error bars by the id of their data line: symmetric or not, as plotly's array/arrayminus."""
    found = {}
    for c in ax.containers:
        if not isinstance(c, ErrorbarContainer) or c.lines[0] is None:
            continue
        line, _, bar_cols = c.lines
        y = np.asarray(line.get_ydata(), dtype=float)
        for col in bar_cols:
            segs = col.get_segments()
            if len(segs) == len(y) and all(np.isclose(s[0][0], s[1][0]) for s in segs):  # vertical bars
                lo = np.array([min(s[0][1], s[1][1]) for s in segs])
                hi = np.array([max(s[0][1], s[1][1]) for s in segs])
                found[id(line)] = {"plus": _values(hi - y), "minus": _values(y - lo)}
    return found


def _line_trace(ax, line, errors) -> dict | None:
    transform = line.get_transform()
    if transform == ax.get_yaxis_transform():  # axhline: y in data, x in axes coordinates
        return {"kind": "hline", "y": float(line.get_ydata()[0]), "label": _label(line),
                "color": to_hex(line.get_color())}
    if transform == ax.get_xaxis_transform():  # axvline
        return {"kind": "vline", "x": float(line.get_xdata()[0]), "label": _label(line),
                "color": to_hex(line.get_color())}
    style, marker = line.get_linestyle(), line.get_marker()
    has_line = style not in ("None", "", " ", "none")
    has_marker = marker not in (None, "None", "", " ", "none")
    if not (has_line or has_marker):
        return None
    return {"kind": "xy", "x": _values(line.get_xdata()), "y": _values(line.get_ydata()),
            "label": _label(line), "color": to_hex(line.get_color()),
            "mode": "+".join(m for m, on in (("lines", has_line), ("markers", has_marker)) if on),
            "dash": DASH.get(style, "solid"), "error": errors.get(id(line))}


def _axes_spec(ax) -> dict:
    errors = _errorbars(ax)
    traces = [t for line in ax.get_lines() if (t := _line_trace(ax, line, errors))]
    for coll in ax.collections:
        offsets = np.asarray(coll.get_offsets())
        if type(coll).__name__ == "PathCollection" and offsets.ndim == 2 and len(offsets):
            colors = coll.get_facecolors()
            traces.append({"kind": "xy", "x": _values(offsets[:, 0]), "y": _values(offsets[:, 1]),
                           "label": _label(coll), "mode": "markers", "dash": "solid", "error": None,
                           "color": to_hex(colors[0]) if len(colors) else None})
    for c in ax.containers:
        if isinstance(c, BarContainer):
            xs = [p.get_x() + p.get_width() / 2 for p in c.patches]
            ticks = {float(t): lbl.get_text() for t, lbl in zip(ax.get_xticks(), ax.get_xticklabels())}
            names = [ticks.get(float(x), None) for x in xs]
            traces.append({"kind": "bar", "x": names if all(names) else _values(xs),
                           "y": _values([p.get_height() for p in c.patches]), "label": _label(c),
                           "color": to_hex(c.patches[0].get_facecolor()) if c.patches else None})
    return {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "xscale": "log" if ax.get_xscale() == "log" else "linear",
            "yscale": "log" if ax.get_yscale() == "log" else "linear", "traces": traces,
            "has_image": bool(ax.images)}


def extract(fig) -> dict[str, Any]:
    """The JSON-safe spec of a matplotlib figure (see the module docstring)."""
    axes = [_axes_spec(ax) for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else ""
    fallback = not axes or any(a["has_image"] or not a["traces"] for a in axes)
    return {"title": title, "axes": axes, "fallback": fallback}


def to_plotly(spec: dict):
    """A plotly Figure drawing the spec: one subplot per matplotlib axes, same scales and labels."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = max(1, len(spec["axes"]))
    fig = make_subplots(rows=1, cols=n, subplot_titles=[a["title"] for a in spec["axes"]] or None)
    for col, ax in enumerate(spec["axes"], start=1):
        for t in ax["traces"]:
            _add_trace(fig, go, t, col)
        fig.update_xaxes(title_text=ax["xlabel"], type=ax["xscale"], row=1, col=col)
        fig.update_yaxes(title_text=ax["ylabel"], type=ax["yscale"], row=1, col=col)
    fig.update_layout(title=spec.get("title") or None, height=380, margin=dict(l=60, r=20, t=50, b=50),
                      template="plotly_white", legend=dict(font=dict(size=10)))
    return fig


def _add_trace(fig, go, t: dict, col: int) -> None:
    color = t.get("color")
    if t["kind"] == "hline":
        fig.add_hline(y=t["y"], line_dash="dash", line_color=color, row=1, col=col,
                      annotation_text=t.get("label") or "")
    elif t["kind"] == "vline":
        fig.add_vline(x=t["x"], line_dash="dash", line_color=color, row=1, col=col,
                      annotation_text=t.get("label") or "")
    elif t["kind"] == "bar":
        fig.add_trace(go.Bar(x=t["x"], y=t["y"], name=t.get("label") or "", marker_color=color,
                             showlegend=bool(t.get("label"))), row=1, col=col)
    else:
        err = t.get("error")
        error_y = dict(type="data", array=err["plus"], arrayminus=err["minus"], visible=True) if err else None
        fig.add_trace(go.Scatter(x=t["x"], y=t["y"], mode=t["mode"], name=t.get("label") or "",
                                 showlegend=bool(t.get("label")), error_y=error_y,
                                 line=dict(color=color, dash=t.get("dash", "solid")),
                                 marker=dict(color=color, size=7)), row=1, col=col)
