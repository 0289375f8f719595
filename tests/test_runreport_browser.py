"""The run report of a short pathological Monitored run, in a real headless Chromium (as the study report's
test: skips without a browser unless REQUIRE_BROWSER=1). Asserts on the DOM and plotly's data, never pixels."""
import pytest
from torch import nn

from deepdiag.runreport import load_run
from test_report_browser import browser, open_page  # noqa: F401  (browser: the fixture, Debian's chromium)
from test_runreport import KILL_AT, dying_run


@pytest.fixture(scope="module")
def run_page(browser, tmp_path_factory):  # noqa: F811
    mon, model = dying_run()
    folder = mon.save(tmp_path_factory.mktemp("run"))
    path = mon.report(folder / "run.html")
    page = open_page(browser, path)
    yield page, load_run(folder), model
    page.close()


PLOT_JS = """div => {
  const gd = div.querySelector('.js-plotly-plot');
  return {traces: gd._fullData.map(t => ({type: t.type, n: (t.y || []).length, rows: t.type === 'heatmap' ? t.y : null})),
          shapes: (gd.layout.shapes || []).map(s => s.x0),
          notes: (gd.layout.annotations || []).map(a => [a.x, a.text]),
          yticks: [...gd.querySelectorAll('.ytick text')].map(e => [e.getBoundingClientRect().top, e.textContent]),
          drawn: gd.querySelectorAll('g.trace, g.hm, image').length};
}"""


def figure(page, name):
    return page.locator(f'div.figure[data-figure="{name}"]').evaluate(PLOT_JS)


def test_the_page_loads_offline_without_errors(run_page):
    page, _, _ = run_page
    assert page.errors == []
    assert all(u.startswith(("file:", "data:", "blob:")) for u in page.requests), page.requests


def test_curves_render_with_each_finding_marked_where_first_seen(run_page):
    page, run, _ = run_page
    loss = figure(page, "loss")
    assert loss["drawn"] >= 1
    assert {t["type"] for t in loss["traces"]} == {"scatter"} and all(t["n"] > 0 for t in loss["traces"])
    assert len(loss["traces"]) == 3  # batch loss, training and validation loss at epoch ends
    dead = [f for f in run.findings if f.code == "dead_units"]
    assert dead and KILL_AT < dead[0].step <= KILL_AT + 20  # one window after the units were switched off
    for f in run.findings:
        assert f.step in loss["shapes"] and [f.step, f.code] in loss["notes"], f.code
    assert len(loss["shapes"]) == len(run.findings)
    assert figure(page, "accuracy")["shapes"] == loss["shapes"]
    rows = page.locator("table.findings tbody tr")
    assert rows.count() == len(run.findings)
    assert rows.first.locator("dl.numbers dt").count() == len(run.findings[0].evidence)


def test_each_heatmap_has_a_row_per_layer(run_page):
    page, run, model = run_page
    weights = [str(i) for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    relus = [str(i) for i, m in enumerate(model) if isinstance(m, nn.ReLU)]
    expected = {"signal_norm": weights, "act_rms": weights, "update_rel": weights, "dead_frac": relus}
    drawn = page.eval_on_selector_all("div.heatmap", "els => els.map(e => e.dataset.figure)")
    assert drawn == ["signal_norm", "act_rms", "dead_frac", "update_rel"]  # no saturating units: no such map
    steps = len(run.steps)
    for name, layers in expected.items():
        fig = figure(page, name)
        (trace,) = fig["traces"]
        assert trace["type"] == "heatmap" and trace["rows"] == layers, name
        assert [text for _, text in sorted(fig["yticks"])] == layers and fig["drawn"] >= 1, name  # top to bottom
        assert len(page.locator(f'div.figure[data-figure="{name}"]').evaluate(
            "d => d.querySelector('.js-plotly-plot').data[0].x")) == steps
