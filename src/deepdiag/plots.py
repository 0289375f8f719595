"""Matplotlib helpers shared by the studies' figures: theory as a line, measurements as points.

Figures are ``matplotlib.figure.Figure`` objects made without pyplot: they render to PNG without a
display, and no backend is selected, so a notebook user's backend (and pyplot's list of open figures)
is left alone. Each is saved as PNG plus its spec for the interactive report.
"""
from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from . import atomic, figspec


def figure(ncols: int = 1, width: float = 5.5, height: float = 4.0):
    """A new figure with `ncols` side-by-side axes (a list, even for one)."""
    fig = Figure(figsize=(width * ncols, height))
    axes = fig.subplots(1, ncols, squeeze=False)
    return fig, list(axes[0])


def theory(ax, x, y, label: str = "theory", **kw) -> None:
    """Draw a prediction as a line."""
    if "ls" not in kw and "linestyle" not in kw:
        kw["linestyle"] = "-"
    ax.plot(x, y, **{"lw": 1.5, "alpha": 0.8, "label": label, **kw})


def measured(ax, x, y, yerr=None, label: str = "measured", **kw) -> None:
    """Draw measurements as points (with error bars for the spread over seeds)."""
    if yerr is None:
        ax.plot(x, y, "o", ms=5, label=label, **kw)
    else:
        ax.errorbar(x, y, yerr=yerr, fmt="o", ms=5, capsize=3, label=label, **kw)


def label(ax, xlabel: str, ylabel: str, title: str | None = None, fontsize: float = 8, **legend) -> None:
    """Name the axes, title them (unless `title` is None) and draw the legend (``fontsize``, and any
    other keyword of ``Axes.legend``)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize=fontsize, **legend)


def save(fig, folder: Path, name: str) -> Path:
    """Save `fig` as folder/name.png (tight, 120 dpi) and its spec as folder/name.json (what the HTML
    report draws interactively, see ``deepdiag.figspec``); return the PNG's path."""
    path = Path(folder) / f"{name}.png"
    fig.tight_layout()
    with atomic.temporary_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    atomic.write_text(path.with_suffix(".json"), json.dumps(figspec.extract(fig)))
    return path
