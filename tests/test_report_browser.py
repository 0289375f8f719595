"""The HTML report in a real headless Chromium (Debian's chromium-headless-shell, driven by playwright).

Skips with a reason when no browser is installed, unless REQUIRE_BROWSER=1 (set by .ci/run, which
installs the Debian packages). Asserts on the DOM, never on pixels.
"""
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


def test_report_renders_every_study_and_figure(browser, report, quick_results, tmp_path):
    res = dd.load_results(quick_results)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(report.resolve().as_uri(), wait_until="load")
    page.wait_for_timeout(500)
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), [u for u in requests if not u.startswith(("file:", "data:"))]
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
    # the README's screenshot: DEEPDIAG_SCREENSHOT=docs/report.png pytest tests/test_report_browser.py
    shot = Path(os.environ.get("DEEPDIAG_SCREENSHOT") or tmp_path / "report.png")
    page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1280, "height": 1000})
    assert shot.stat().st_size > 10_000
    page.close()
