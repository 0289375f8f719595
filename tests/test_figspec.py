"""figspec: a matplotlib figure read into a spec and drawn with plotly says what the PNG says.

The reference is matplotlib itself: ``ax.get_legend_handles_labels()`` for the legend, the artists'
own colours, markers and line styles for the styles. Figures are built fresh by small factories.
"""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deepdiag import figspec  # noqa: E402

X = np.array([1.0, 2.0, 4.0])


def errorbars():
    fig, ax = plt.subplots()
    ax.errorbar(X, [1.0, 2.0, 3.0], yerr=[0.1, 0.2, 0.3], fmt="o", ms=5, capsize=3, label="final training loss")
    ax.errorbar(X, [2.0, 3.0, 4.0], yerr=[0.1, 0.1, 0.1], fmt="o", ms=5, capsize=3, label="final validation loss")
    ax.plot(X, [0.7] * 3, "k-", label="chance loss ln K (theory)")
    return fig


def helpers_unlabelled():
    """The variance-by-layer pattern: unlabelled theory lines beside labelled points."""
    fig, ax = plt.subplots()
    for i, name in enumerate(("he", "xavier")):
        ax.plot(X, X * i, color=f"C{i}")
        ax.plot(X, X * i + 0.1, "o", color=f"C{i}", label=name)
    ax.axhline(1.0, color="grey")
    return fig


def panels_share_labels():
    fig, axes = plt.subplots(1, 2)
    for ax in axes:
        ax.errorbar(X, X, yerr=0.1 * X, fmt="o", label="measured")
        ax.plot(X, X, label="theory")
        ax.axhline(2.0, ls=":", color="k", label="tolerance")
        ax.set_xscale("log")
    axes[1].fill_between(X, X - 0.5, X + 0.5, color="k", alpha=0.15, label="±3σ band")
    return fig


def reference_markers():
    """The l2 figure's DLS reference points: open squares, one labelled and one not."""
    fig, ax = plt.subplots()
    ax.plot([1.0], [90.0], "s", color="C0", mfc="none", ms=8, label="DLS reference train (other data)")
    ax.plot([2.0], [80.0], "D", color="C1", mfc="none", ms=8, label=None)
    ax.plot(X, X, "--", color="C2", label="dashed theory")
    ax.bar(["a", "b"], [1.0, 2.0], color="C3", label="counts")
    return fig


def repeated_reference():
    """The circles-accuracy pattern: the same black crosses drawn per group, only the first labelled."""
    fig, ax = plt.subplots()
    for i in range(3):
        ax.plot([i - 0.15, i + 0.15], [50.0, 60.0], "kx", ms=8, label="course, published" if i == 0 else None)
    ax.plot([0.0, 2.0], [55.0, 55.0], "k+", ms=8)  # another marker: not the published points
    return fig


FIGURES = {f.__name__: f for f in (errorbars, helpers_unlabelled, panels_share_labels, reference_markers,
                                   repeated_reference)}
UNLABELLED_POINTS = {"reference_markers": 1, "repeated_reference": 1}  # drawn unlike any labelled series


def mpl_legend(fig) -> list[str]:
    return list(dict.fromkeys(label for ax in fig.axes for label in ax.get_legend_handles_labels()[1]))


def plotly_legend(pfig) -> list[str]:
    """The entries plotly shows, in its order (legendrank, then drawing order)."""
    items = [(t.legendrank, i, t.name) for i, t in enumerate(pfig.data) if t.showlegend is not False and t.name]
    items += [(s.legendrank, len(pfig.data) + i, s.name) for i, s in enumerate(pfig.layout.shapes) if s.showlegend]
    return [name for *_, name in sorted(items)]


@pytest.fixture(params=FIGURES)
def drawn(request):
    fig = FIGURES[request.param]()
    spec = json.loads(json.dumps(figspec.extract(fig), allow_nan=False))  # as saved beside the PNG
    spec["name"] = request.param
    yield fig, spec, figspec.to_plotly(spec)
    plt.close(fig)


def test_legend_is_matplotlibs(drawn):
    fig, spec, pfig = drawn
    assert [ax["legend"] for ax in spec["axes"]] == [ax.get_legend_handles_labels()[1] for ax in fig.axes]
    assert plotly_legend(pfig) == mpl_legend(fig) == figspec.legend_labels(spec)


def test_every_point_series_is_in_the_legend_unless_matplotlib_left_it_out(drawn):
    """Points (markers, bars) are measurements: each has its legend entry, except the ones the study
    itself drew without a label (UNLABELLED_POINTS); an unlabelled line is a helper and stays out."""
    fig, spec, pfig = drawn
    legend = set(mpl_legend(fig))
    for t in pfig.data:
        if t.name:
            assert t.name in legend and (t.showlegend or t.legendgroup == t.name)
    points = [t for t in pfig.data if t.type == "bar" or "markers" in (t.mode or "")]
    assert len([t for t in points if not t.name]) == UNLABELLED_POINTS.get(spec["name"], 0)


def test_error_bars_are_one_trace_with_the_pngs_bars():
    fig = errorbars()
    spec = figspec.extract(fig)
    plt.close(fig)
    traces = spec["axes"][0]["traces"]
    assert [t["label"] for t in traces] == ["final training loss", "final validation loss", "chance loss ln K (theory)"]
    first = traces[0]
    assert first["mode"] == "markers" and first["color"] == "#1f77b4" and first["marker"]["symbol"] == "circle"
    np.testing.assert_allclose(first["error"]["y"]["plus"], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(first["error"]["y"]["minus"], [0.1, 0.2, 0.3])
    assert first["error"]["y"]["cap"] == pytest.approx(3 * 96 / 72, abs=0.01)  # capsize 3 pt, as plotly's half-width
    scatter = figspec.to_plotly(spec).data[0]
    assert scatter.name == "final training loss" and scatter.showlegend and scatter.error_y.visible
    np.testing.assert_allclose(scatter.error_y.array, [0.1, 0.2, 0.3])


def test_styles_follow_the_png():
    fig = reference_markers()
    spec = figspec.extract(fig)
    plt.close(fig)
    square, diamond, dashed, bar = spec["axes"][0]["traces"]
    assert (square["marker"]["symbol"], square["marker"]["color"]) == ("square-open", "#1f77b4")
    assert square["marker"]["size"] == pytest.approx(8 * 96 / 72, abs=0.01)
    assert (diamond["marker"]["symbol"], diamond["label"]) == ("diamond-open", None)
    assert (dashed["dash"], dashed["mode"], dashed["color"]) == ("dash", "lines", "#2ca02c")
    assert (bar["kind"], bar["x"], bar["color"]) == ("bar", ["a", "b"], "#d62728")
    pfig = figspec.to_plotly(spec)
    assert [t.marker.symbol for t in pfig.data[:2]] == ["square-open", "diamond-open"]
    assert pfig.data[2].line.dash == "dash"


def test_shared_labels_are_one_entry_and_areas_and_lines_are_drawn():
    fig = panels_share_labels()
    spec = figspec.extract(fig)
    plt.close(fig)
    pfig = figspec.to_plotly(spec)
    measured = [t for t in pfig.data if t.name == "measured"]
    assert len(measured) == 2 and [t.showlegend for t in measured] == [True, False]
    assert {t.legendgroup for t in measured} == {"measured"}
    assert [(s.name, s.showlegend, s.line.dash) for s in pfig.layout.shapes] == [
        ("tolerance", True, "dot"), ("tolerance", False, "dot")]
    band = next(t for t in pfig.data if t.name == "±3σ band")
    assert band.fill == "toself" and band.opacity == pytest.approx(0.15)
    assert pfig.layout.xaxis.type == pfig.layout.xaxis2.type == "log"


def test_axis_limits_set_by_the_study_are_kept():
    fig, ax = plt.subplots()
    ax.plot(X, X, label="a")
    ax.set_yscale("log")
    ax.set_ylim(1e-8, 2)
    spec = figspec.extract(fig)
    plt.close(fig)
    assert spec["axes"][0]["xlim"] is None
    np.testing.assert_allclose(figspec.to_plotly(spec).layout.yaxis.range, [-8, np.log10(2)])


def test_specs_saved_before_x_errors_still_draw_their_bars():
    spec = {"title": "", "fallback": False, "axes": [{
        "title": "", "xlabel": "", "ylabel": "", "xscale": "linear", "yscale": "linear", "has_image": False,
        "traces": [{"kind": "xy", "x": [1.0], "y": [2.0], "label": None, "color": "#1f77b4", "mode": "markers",
                    "dash": "solid", "error": {"plus": [0.5], "minus": [0.25]}}]}]}
    scatter = figspec.to_plotly(spec).data[0]
    assert list(scatter.error_y.array) == [0.5] and list(scatter.error_y.arrayminus) == [0.25]


def test_unlabelled_repeats_of_a_labelled_look_join_its_entry():
    fig = repeated_reference()
    spec = figspec.extract(fig)
    plt.close(fig)
    pfig = figspec.to_plotly(spec)
    crosses = [t for t in pfig.data if t.marker.symbol == "x-thin-open"]
    assert [t.name for t in crosses] == ["course, published"] * 3
    assert [t.showlegend for t in crosses] == [True, False, False]
    plus = next(t for t in pfig.data if t.marker.symbol == "cross-thin-open")
    assert not plus.name and not plus.showlegend


def test_named_ticks_are_kept():
    fig, ax = plt.subplots()
    ax.plot([0.0, 1.0], [50.0, 60.0], "o", label="a")
    ax.set_xticks([0, 1], ["zeros", "he"])
    spec = figspec.extract(fig)
    plt.close(fig)
    assert spec["axes"][0]["yticks"] is None
    layout = figspec.to_plotly(spec).layout
    assert list(layout.xaxis.tickvals) == [0.0, 1.0] and list(layout.xaxis.ticktext) == ["zeros", "he"]
