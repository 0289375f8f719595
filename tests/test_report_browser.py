"""The HTML report in a real headless Chromium (Debian's chromium-headless-shell, driven by playwright).

Skips with a reason when no browser is installed, unless REQUIRE_BROWSER=1 (set by .ci/run, which
installs the Debian packages). Asserts on the DOM and plotly's data, never on pixels. The reference
for every figure's legend is matplotlib's: the labels of ``ax.get_legend_handles_labels()`` that the
figure's spec recorded when the study drew its PNG.
"""
import json
import os
import shutil
from pathlib import Path

import pytest

import deepdiag as dd
from deepdiag.report import build_report

BROWSERS = ("chromium-headless-shell", "chromium")


def browser_path() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


@pytest.fixture(scope="module")
def browser():
    path = browser_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        path = None
    if path is None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail("REQUIRE_BROWSER=1 but no chromium-headless-shell/chromium or playwright is installed")
        pytest.skip("no headless browser: apt-get install chromium-headless-shell libatomic1 fonts-liberation "
                    "and pip install playwright")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                    "--disable-background-networking", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def report(quick_results):
    return build_report(quick_results)


def open_page(browser, path: Path):
    """`path` loaded in a new page; console errors and every request URL are kept on the page object."""
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page.errors, page.requests = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(path.resolve().as_uri(), wait_until="load")
    page.wait_for_timeout(500)
    return page


@pytest.fixture(scope="module")
def page(browser, report):
    """The report, loaded once."""
    page = open_page(browser, report)
    yield page
    page.close()


def figure_specs(results: Path):
    """(study, figure name, spec) for every figure the report draws with plotly (not a PNG fallback)."""
    res = dd.load_results(results)
    for study, raw in res.raw.items():
        for png in map(Path, raw["figures"]):
            spec_path = results / study / f"{png.stem}.json"
            spec = json.loads(spec_path.read_text()) if spec_path.exists() else {"fallback": True}
            if not spec["fallback"]:
                yield study, png.stem, spec


# what the page holds for one figure: its legend texts in order, and each trace of gd.data
FIGURE_JS = """div => {
  const gd = div.querySelector('.js-plotly-plot');
  return {legend: [...gd.querySelectorAll('.legend .legendtext')].map(e => e.textContent),
          traces: gd._fullData.map(t => ({name: t.name, type: t.type, mode: t.mode || '',
                                          shown: t.showlegend, group: t.legendgroup,
                                          errors: !!((t.error_y && t.error_y.visible) ||
                                                     (t.error_x && t.error_x.visible))}))};
}"""


def test_report_renders_every_study_and_figure(page, report, quick_results):
    res = dd.load_results(quick_results)
    assert page.errors == []
    local = ("file:", "data:", "blob:")  # blob: the unpacked CSVs, in the page's own memory
    assert all(u.startswith(local) for u in page.requests), [u for u in page.requests if not u.startswith(local)]
    sections = page.eval_on_selector_all("section.study", "els => els.map(e => e.id)")
    assert sections == res.studies["study"].tolist()
    assert page.locator("#overview tbody tr").count() == len(sections)
    for name in sections:
        expected = len(res.raw[name]["figures"])
        figs = page.locator(f"section#{name} div.figure")
        assert figs.count() == expected, name
        for i in range(expected):
            fig = figs.nth(i)
            plots = fig.locator(".js-plotly-plot")
            if plots.count():
                assert fig.locator("svg.main-svg").count() >= 1, f"{name} figure {i} has no plot SVG"
                assert fig.locator("g.trace, g.barlayer .point").count() >= 1, f"{name} figure {i} has no data"
            else:
                assert fig.locator("img").evaluate("img => img.complete && img.naturalWidth > 0"), name
        rows = page.locator(f"section#{name} table.checks tbody tr").count()
        assert rows == len(res.raw[name]["checks"])


# Points the studies' own matplotlib figures draw without a label (their PNG legends leave them out
# too), by figure: fix the study, then delete the entry.
UNLABELLED_IN_STUDY = {
    "l2/l2_sweep": 2,  # the DLS reference accuracies with L2 (diamonds): only the no-L2 squares are labelled
}


def test_every_legend_is_matplotlibs(page, quick_results):
    """Figure by figure, the page's legend says what the PNG's legends say: matplotlib's labels in order,
    each once (a label shown in several panels is one entry), and every series drawn as points, bars or
    error bars (a measurement) has its legend entry. Unlabelled lines are helpers the PNG leaves out too."""
    problems, checked = [], 0
    for study, name, spec in figure_specs(quick_results):
        drawn = page.locator(f'section#{study} div.figure[data-figure="{name}"]').evaluate(FIGURE_JS)
        expected = list(dict.fromkeys(label for ax in spec["axes"] for label in ax["legend"]))
        if drawn["legend"] != expected:
            problems.append(f"{study}/{name}: legend {drawn['legend']} but matplotlib's is {expected}")
        legend = set(drawn["legend"])
        unlabelled = 0
        for t in drawn["traces"]:
            if t["name"] and not (t["shown"] or t["group"] == t["name"]):
                problems.append(f"{study}/{name}: {t['name']!r} hides its legend entry")
            if (t["type"] == "bar" or "markers" in t["mode"] or t["errors"]) and t["name"] not in legend:
                unlabelled += 1
        if unlabelled != UNLABELLED_IN_STUDY.get(f"{study}/{name}", 0):
            problems.append(f"{study}/{name}: {unlabelled} series of points without a legend entry")
        checked += 1
    assert not problems, "\n".join(problems)
    assert checked >= 10  # the studies draw two dozen figures; most are interactive


def test_partial_bundle_draws_every_trace_type(page, report):
    """The inlined plotly.js is the cartesian partial bundle, and it registers every trace type the
    report draws (and heatmap, for per-layer maps)."""
    assert "plotly.js (cartesian - minified)" in report.read_text(encoding="utf-8")[:100_000]
    registered = set(page.evaluate("() => Object.keys(Plotly.PlotSchema.get().traces)"))
    drawn = set(page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                              ".flatMap(gd => gd._fullData.map(t => t.type))"))
    assert drawn and drawn <= registered
    assert {"scatter", "bar", "heatmap"} <= registered


def test_raw_data_download_is_the_csv(page, quick_results, tmp_path):
    """The compressed CSV unpacks to the study's data.csv, byte for byte."""
    study = dd.load_results(quick_results).studies["study"].iloc[0]
    link = page.locator(f"section#{study} a[download]")
    page.wait_for_function("a => a.href.startsWith('blob:')", arg=link.element_handle())
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "data.csv"
    download.value.save_as(saved)
    assert saved.read_bytes() == (quick_results / study / "data.csv").read_bytes()


def test_screenshot_shows_a_figure_with_its_legend(page, tmp_path):
    """The README's screenshot (DEEPDIAG_SCREENSHOT=docs/report.png pytest tests/test_report_browser.py):
    the l2 study's loss-vs-λ figure with its legend, under the study's heading."""
    shot = Path(os.environ.get("DEEPDIAG_SCREENSHOT") or tmp_path / "report.png")
    figure = page.locator('section#l2 div.figure[data-figure="l2_sweep"]')
    if not figure.count():
        pytest.skip("the l2 study did not run")
    assert figure.locator(".legend .legendtext").count() >= 3
    top, height = figure.evaluate("e => [e.getBoundingClientRect().top + window.scrollY, e.offsetHeight]")
    page.screenshot(path=str(shot), full_page=True, clip={"x": 0, "y": top - 12, "width": 1280, "height": height + 24})
    assert shot.stat().st_size > 10_000
