"""One figure, two renderers: a matplotlib figure is read into a JSON spec, drawn again with plotly.

The studies draw their figures once, with matplotlib (PNG for papers and slides). ``extract`` reads
what was drawn — lines and markers, error bars, scatter points, bars, filled areas (``fill_between``),
horizontal/vertical reference lines, axis labels, limits, named ticks, titles and log scales — into a plain
JSON-safe dict saved beside the PNG. The HTML report turns that spec into an interactive plotly
figure with ``to_plotly``. Nothing is recomputed: the spec holds the drawn numbers. A figure with
content the spec cannot hold (images, or an axes with nothing the spec reads) is marked ``fallback``
and the report shows its PNG instead.

Legends follow matplotlib's own: each axes' ``legend`` is ``ax.get_legend_handles_labels()``'s
labels, and a series is labelled exactly when it is one of those handles. An error-bar series is
one handle, its ``ErrorbarContainer`` (whose label it is); the container's data line, caps and bar
lines carry ``_nolegend_`` and are drawn as the one plotly trace with error bars. Helper artists
labelled ``_child…``/``_nolegend_`` get no legend entry, with one exception that reads the PNG as
its reader does: an unlabelled series drawn exactly like a labelled one of the same axes (same kind,
colour, mode, marker and dash — a study that labels only the first of repeated reference points)
belongs to that entry, and shows and hides with it. Styles (colour, marker, line style, widths,
alpha) are copied; matplotlib sizes in points become CSS pixels (x 96/72).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.colors import to_hex, to_rgba
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, LogFormatter, ScalarFormatter

from .jsonsafe import json_safe

DASH = {"-": "solid", "--": "dash", ":": "dot", "-.": "dashdot"}
PX_PER_PT = 96 / 72  # CSS pixels per typographic point
# matplotlib marker -> plotly symbol (markers drawn only as strokes take plotly's "-open" form)
MARKERS = {"o": "circle", ".": "circle", ",": "square", "s": "square", "^": "triangle-up", "v": "triangle-down",
           "<": "triangle-left", ">": "triangle-right", "D": "diamond", "d": "diamond-tall", "p": "pentagon",
           "h": "hexagon", "H": "hexagon2", "8": "octagon", "*": "star", "X": "x", "P": "cross",
           "x": "x-thin-open", "+": "cross-thin-open", "|": "line-ns-open", "_": "line-ew-open",
           "1": "y-down-open", "2": "y-up-open", "3": "y-left-open", "4": "y-right-open"}
NO_LINE = ("None", "", " ", "none")
PLOT_HEIGHT, PAGE_WIDTH = 420, 1000  # pixels: a figure without legend; the report's figure width
LEGEND_FONT, LEGEND_ROW = 10, 20  # legend text size and row height, pixels
SIGNIFICANT = 6  # digits plotly is given: below any pixel or hover-text difference, a third of the bytes


def _values(a) -> list:
    """A JSON-safe list: numbers as floats with NaN/Inf as None, strings kept (categorical axes)."""
    out = json_safe(np.asarray(a, dtype=object).ravel().tolist())
    return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in out]


def _px(points: float) -> float:
    return round(float(points) * PX_PER_PT, 2)


def _hex(color) -> str | None:
    """`color` as #rrggbb, or None for matplotlib's "none" (nothing drawn)."""
    if isinstance(color, str) and color.lower() == "none":
        return None
    return to_hex(color)


def _opacity(artist, color) -> float:
    """The artist's alpha, else the colour's own alpha channel (to_hex drops it)."""
    alpha = artist.get_alpha()
    return float(alpha if alpha is not None else to_rgba(color)[3])


def _legend(ax) -> tuple[list[str], dict[int, str]]:
    """matplotlib's legend for `ax`: its labels in order, and the label by id of every artist drawn
    for a handle (an error-bar container's label goes to its data line)."""
    handles, labels = ax.get_legend_handles_labels()
    by_artist = {}
    for handle, label in zip(handles, labels):
        if isinstance(handle, ErrorbarContainer):
            by_artist[id(handle.lines[0])] = label
        by_artist[id(handle)] = label
    return labels, by_artist


def _bars(line_collection, along: int, centres: np.ndarray) -> dict | None:
    """One LineCollection of error bars as plotly's array/arrayminus around `centres`, or None when its
    segments are not one per point along axis `along` (0: x errors, 1: y errors)."""
    segs = line_collection.get_segments()
    if len(segs) != len(centres) or not len(segs):
        return None
    across = 1 - along
    if not all(np.isclose(s[0][across], s[1][across]) for s in segs):
        return None
    lo = np.array([min(s[0][along], s[1][along]) for s in segs])
    hi = np.array([max(s[0][along], s[1][along]) for s in segs])
    colors = line_collection.get_colors()
    widths = line_collection.get_linewidths()
    return {"plus": _values(hi - centres), "minus": _values(centres - lo),
            "color": _hex(colors[0]) if len(colors) else None,
            "thickness": _px(widths[0]) if len(widths) else 1.0}


def _errorbars(ax) -> tuple[dict[int, dict], set[int]]:
    """Error bars by the id of their data line ({"x": ..., "y": ...}); and the ids of every artist the
    containers drew besides the data line (caps, bar lines), which plotly draws as part of the trace."""
    found, parts = {}, set()
    for c in ax.containers:
        if not isinstance(c, ErrorbarContainer):
            continue
        line, caps, bar_cols = c.lines
        parts.update(id(a) for a in (*caps, *bar_cols))
        if line is None:
            continue
        x, y = (np.asarray(v, dtype=float) for v in (line.get_xdata(), line.get_ydata()))
        cap = _px(caps[0].get_markersize()) / 2 if caps else 0.0  # plotly's width is the half-width
        errs = {}
        for col in bar_cols:
            for key, along, centres in (("x", 0, x), ("y", 1, y)):
                if key not in errs and (bars := _bars(col, along, centres)) is not None:
                    errs[key] = {**bars, "cap": cap}
                    break
        found[id(line)] = errs
    return found, parts


def _marker(line: Line2D) -> dict | None:
    marker = line.get_marker()
    if marker in (None, *NO_LINE):
        return None
    symbol = MARKERS.get(marker, "circle") if isinstance(marker, str) else "circle"
    face, edge = line.get_markerfacecolor(), line.get_markeredgecolor()
    hollow = _hex(face) is None
    if hollow and not symbol.endswith("-open"):
        symbol += "-open"
    return {"symbol": symbol, "size": _px(line.get_markersize()),
            "color": _hex(edge if hollow or symbol.endswith("-open") else face) or _hex(line.get_color()),
            "edge": _px(line.get_markeredgewidth())}


def _line_trace(ax, line: Line2D, label: str | None, errors: dict | None) -> dict | None:
    color = line.get_color()
    style = DASH.get(line.get_linestyle(), "solid")
    common = {"label": label, "color": _hex(color), "opacity": _opacity(line, color),
              "dash": style, "width": _px(line.get_linewidth())}
    transform = line.get_transform()
    if transform == ax.get_yaxis_transform():  # axhline: y in data, x in axes coordinates
        return {"kind": "hline", "y": float(line.get_ydata()[0]), **common}
    if transform == ax.get_xaxis_transform():  # axvline
        return {"kind": "vline", "x": float(line.get_xdata()[0]), **common}
    has_line = line.get_linestyle() not in NO_LINE
    marker = _marker(line)
    if not (has_line or marker):
        return None
    mode = "+".join(m for m, on in (("lines", has_line), ("markers", marker)) if on)
    return {"kind": "xy", "x": _values(line.get_xdata()), "y": _values(line.get_ydata()), "mode": mode,
            "marker": marker, "error": errors or None, **common}


def _scatter_trace(coll: PathCollection, label: str | None) -> dict | None:
    offsets = np.asarray(coll.get_offsets())
    if offsets.ndim != 2 or not len(offsets):
        return None
    colors, sizes = coll.get_facecolors(), coll.get_sizes()
    color = to_hex(colors[0]) if len(colors) else None
    return {"kind": "xy", "x": _values(offsets[:, 0]), "y": _values(offsets[:, 1]), "label": label,
            "mode": "markers", "dash": "solid", "error": None, "color": color,
            "opacity": float(colors[0][3]) if len(colors) else 1.0, "width": 0.0,
            "marker": {"symbol": "circle", "size": _px(np.sqrt(sizes[0])) if len(sizes) else 6.0,
                       "color": color, "edge": 0.0}}


def _area_trace(coll: PolyCollection, label: str | None) -> dict | None:
    """A filled area (``fill_between``, ``fill``): its polygons' outlines, one after another, separated
    by a gap (None) so plotly fills each on its own ("toself")."""
    x, y = [], []
    for path in coll.get_paths():
        v = np.asarray(path.vertices, dtype=float)
        if len(v):
            x += [*_values(v[:, 0]), None]
            y += [*_values(v[:, 1]), None]
    colors = coll.get_facecolors()
    if not x or not len(colors):
        return None
    return {"kind": "area", "x": x[:-1], "y": y[:-1], "label": label, "color": to_hex(colors[0]),
            "opacity": float(colors[0][3])}


def _bar_trace(ax, c: BarContainer, label: str | None) -> dict:
    xs = [p.get_x() + p.get_width() / 2 for p in c.patches]
    ticks = {float(t): lbl.get_text() for t, lbl in zip(ax.get_xticks(), ax.get_xticklabels())}
    names = [ticks.get(float(x), None) for x in xs]
    face = c.patches[0].get_facecolor() if c.patches else None
    return {"kind": "bar", "x": names if all(names) else _values(xs),
            "y": _values([p.get_height() for p in c.patches]), "label": label,
            "color": to_hex(face) if face is not None else None,
            "opacity": float(face[3]) if face is not None else 1.0}


def _axes_spec(ax) -> dict:
    legend, labels = _legend(ax)
    errors, error_parts = _errorbars(ax)
    bars = {id(p): c for c in ax.containers if isinstance(c, BarContainer) for p in c.patches}
    traces, drawn_bars = [], set()
    for artist in ax.get_children():  # drawing order
        if not artist.get_visible() or id(artist) in error_parts:
            continue
        label = labels.get(id(artist))
        if isinstance(artist, Line2D):
            trace = _line_trace(ax, artist, label, errors.get(id(artist)))
        elif isinstance(artist, PathCollection):
            trace = _scatter_trace(artist, label)
        elif isinstance(artist, PolyCollection):
            trace = _area_trace(artist, label)
        elif isinstance(artist, Rectangle) and id(artist) in bars and id(bars[id(artist)]) not in drawn_bars:
            c = bars[id(artist)]
            drawn_bars.add(id(c))
            trace = _bar_trace(ax, c, labels.get(id(c)))
        else:
            trace = None
        if trace:
            traces.append(trace)
    limits = {}
    for axis, auto, lim in (("x", ax.get_autoscalex_on(), ax.get_xlim()), ("y", ax.get_autoscaley_on(), ax.get_ylim())):
        limits[f"{axis}lim"] = None if auto else _values(lim)
        # ticks the study named (set_xticks(pos, names)): the positions and their names
        which = getattr(ax, f"{axis}axis")
        named = isinstance(which.get_major_locator(), FixedLocator) and not isinstance(
            which.get_major_formatter(), (ScalarFormatter, LogFormatter))  # labels given, not numbers printed
        ticks = getattr(ax, f"get_{axis}ticks")()
        tick_labels = [t.get_text() for t in getattr(ax, f"get_{axis}ticklabels")()]
        limits[f"{axis}ticks"] = {"values": _values(ticks), "labels": tick_labels} if named else None
    return {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "xscale": "log" if ax.get_xscale() == "log" else "linear",
            "yscale": "log" if ax.get_yscale() == "log" else "linear", **limits,
            "legend": list(legend), "traces": traces, "has_image": bool(ax.images)}


def extract(fig) -> dict[str, Any]:
    """The JSON-safe spec of a matplotlib figure (see the module docstring)."""
    axes = [_axes_spec(ax) for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else ""
    fallback = not axes or any(a["has_image"] or not a["traces"] for a in axes)
    return {"title": title, "axes": axes, "fallback": fallback}


def legend_labels(spec: dict) -> list[str]:
    """The legend the plotly figure shows: every axes' matplotlib legend labels in order, each once
    (a label repeated in several panels is one entry that shows and hides the series in all of them)."""
    # a spec saved before legends were recorded: its labelled traces, in drawing order
    legends = (ax.get("legend", [t["label"] for t in ax["traces"] if t.get("label")]) for ax in spec["axes"])
    return list(dict.fromkeys(label for legend in legends for label in legend))


def to_plotly(spec: dict):
    """A plotly Figure drawing the spec: one subplot per matplotlib axes, same scales, limits, labels
    and legend entries (``legend_labels``, in that order)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = max(1, len(spec["axes"]))
    fig = make_subplots(rows=1, cols=n, subplot_titles=[a["title"] for a in spec["axes"]] or None)
    rank = {label: i for i, label in enumerate(legend_labels(spec))}
    shown: set[str] = set()
    for col, ax in enumerate(spec["axes"], start=1):
        look_alike = {}
        for t in ax["traces"]:
            if t.get("label"):
                look_alike.setdefault(_look(t), t["label"])
        for t in ax["traces"]:
            label = t.get("label") or look_alike.get(_look(t))
            legend = {"name": label or "", "showlegend": bool(label) and label not in shown,
                      "legendgroup": label or None, "legendrank": rank.get(label, len(rank))}
            shown.add(label or "")
            _add_trace(fig, go, t, col, legend)
        for axis, update in (("x", fig.update_xaxes), ("y", fig.update_yaxes)):
            scale, lim = ax[f"{axis}scale"], ax.get(f"{axis}lim")
            if lim and None not in lim and (scale == "linear" or min(lim) > 0):
                lim = [float(np.log10(v)) for v in lim] if scale == "log" else lim
                update(range=lim, row=1, col=col)
            power = {"exponentformat": "power"} if scale == "log" else {}  # 10⁻⁶ as matplotlib, not 1µ
            if ticks := ax.get(f"{axis}ticks"):
                update(tickvals=_round(ticks["values"]), ticktext=ticks["labels"], row=1, col=col)
            update(title_text=ax[f"{axis}label"], type=scale, row=1, col=col, **power)
    # the legend in rows under the panels, so every panel keeps the page's width; the figure grows by them
    legend_height = LEGEND_ROW * _legend_rows(list(rank))
    fig.update_layout(title=spec.get("title") or None, height=PLOT_HEIGHT + legend_height,
                      margin=dict(l=60, r=20, t=60, b=60 + legend_height), template="none",  # "none": no 7 kB theme
                      legend=dict(font=dict(size=LEGEND_FONT), orientation="h", tracegroupgap=0,
                                  yref="container", y=0, yanchor="bottom", x=0, xanchor="left"))
    axes_style = dict(automargin=True, showline=True, linecolor="#444444", ticks="outside", gridcolor="#eeeeee",
                      zeroline=False)
    fig.update_xaxes(**axes_style)
    fig.update_yaxes(**axes_style)
    return fig


def _legend_rows(labels: list[str], width: float = PAGE_WIDTH) -> int:
    """How many rows plotly's horizontal legend takes: entries (key + text at ~0.6 em per character)
    packed left to right, wrapped at `width` pixels."""
    rows, used = (1 if labels else 0), 0.0
    for label in labels:
        entry = 50 + 0.6 * LEGEND_FONT * len(label)
        if used and used + entry > width:
            rows, used = rows + 1, 0.0
        used += entry
    return rows


def _look(t: dict) -> tuple:
    """What a reader of the PNG tells series apart by."""
    return (t["kind"], t.get("color"), t.get("mode"), (t.get("marker") or {}).get("symbol"), t.get("dash"))


def _round(values: list) -> list:
    return [float(f"{v:.{SIGNIFICANT}g}") if isinstance(v, float) else v for v in values]


def _add_trace(fig, go, t: dict, col: int, legend: dict) -> None:
    color, opacity = t.get("color"), t.get("opacity", 1.0)
    line = dict(color=color, dash=t.get("dash", "solid"), width=t.get("width", 1.5))
    if t["kind"] in ("hline", "vline"):
        add = fig.add_hline if t["kind"] == "hline" else fig.add_vline
        where = {"y": t["y"]} if t["kind"] == "hline" else {"x": t["x"]}
        add(**where, line=line, opacity=opacity, row=1, col=col, **legend)
    elif t["kind"] == "area":
        fig.add_trace(go.Scatter(x=_round(t["x"]), y=_round(t["y"]), mode="lines", fill="toself",
                                 fillcolor=color, opacity=opacity, line=dict(width=0, color=color),
                                 hoverinfo="skip" if not t.get("label") else None, **legend), row=1, col=col)
    elif t["kind"] == "bar":
        fig.add_trace(go.Bar(x=_round(t["x"]), y=_round(t["y"]), marker_color=color, opacity=opacity, **legend),
                      row=1, col=col)
    else:
        m = t.get("marker") or {}
        error = t.get("error") or {}
        error = {"y": error} if "plus" in error else error  # specs written before x errors were read
        errors = {f"error_{axis}": dict(type="data", array=_round(e["plus"]), arrayminus=_round(e["minus"]),
                                        visible=True, color=e.get("color"), thickness=e.get("thickness"),
                                        width=e.get("cap"))
                  for axis, e in error.items() if axis in ("x", "y")}
        fig.add_trace(go.Scatter(x=_round(t["x"]), y=_round(t["y"]), mode=t["mode"], opacity=opacity, line=line,
                                 marker=dict(symbol=m.get("symbol"), size=m.get("size"), color=m.get("color"),
                                             line=dict(width=m.get("edge", 0), color=m.get("color"))),
                                 **errors, **legend), row=1, col=col)
