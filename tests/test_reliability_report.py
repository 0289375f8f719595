"""A results directory cannot make ``deepdiag report`` read outside itself (crafted names, absolute
paths, symlinks), and a directory written with an absolute ``--out`` still reports its own figures after
it moves."""
import base64
import json
import os
import shutil
import warnings
from dataclasses import dataclass

import pandas as pd
import pytest
from typer.testing import CliRunner

from deepdiag import study as S
from deepdiag.cli import app
from deepdiag.report import build_report

runner = CliRunner()
SECRET = b"TOP-SECRET-BYTES-0123456789"


@dataclass(frozen=True)
class FigToyConfig:
    width: int = 4


def _measure(config, seeds):
    checks = [S.check_rule("ok", "the toy holds", config.width, 4, "width > 0", config.width > 0)]
    return S.Measurement(checks, pd.DataFrame({"experiment": ["t"], "seed": [0]}))


def _plot(result, folder):
    path = folder / "figtoy_curve.png"
    path.write_bytes(b"PNG-OF-" + str(folder.resolve()).encode())  # which copy of the folder drew it
    return [path]


S.register(S.Study("figtoy", claim='"toys hold"', theory="none", config=FigToyConfig, quick={"width": 2},
                   measure=_measure, plot=_plot, seeds_quick=1))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def outside(tmp_path):
    """A folder outside the results directory holding a secret, as a figure and as a data.csv."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.png").write_bytes(SECRET)
    (folder / "data.csv").write_bytes(b"a\n" + SECRET + b"\n")
    return folder


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "results"
    assert runner.invoke(app, ["run", "figtoy", "--quick", "--out", str(out)]).exit_code == 0
    return out


def edit_result(results, **changes):
    path = results / "figtoy" / "result.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, **changes}))


def report_warnings(results) -> str:
    """Build the report; return the text of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_report(results)
    return " ".join(str(w.message) for w in caught)


def leaked(results) -> bool:
    html = (results / "report.html").read_text()
    return SECRET.decode() in html or b64(SECRET) in html or "TOP-SECRET" in html


def test_a_study_name_that_is_a_path_reads_nothing_outside(results, outside):
    """``"name": "/etc", "figures": ["shadow"]`` used to embed /etc/shadow."""
    edit_result(results, name=str(outside), figures=["secret.png"])
    said = report_warnings(results)
    assert not leaked(results)
    assert "not found" in said


def test_an_absolute_figure_path_reads_nothing_outside(results, outside):
    edit_result(results, figures=[str(outside / "secret.png")])
    said = report_warnings(results)
    assert not leaked(results)
    assert "not found" in said


def test_symlinks_out_of_the_folder_are_not_followed(results, outside):
    folder = results / "figtoy"
    (folder / "figtoy_curve.png").unlink()
    os.symlink(outside / "secret.png", folder / "figtoy_curve.png")
    (folder / "data.csv").unlink()
    os.symlink(outside / "data.csv", folder / "data.csv")
    said = report_warnings(results)
    assert not leaked(results)
    assert "figtoy_curve.png" in said


def test_a_symlinked_study_folder_is_skipped(results, outside, tmp_path):
    shutil.copytree(results / "figtoy", outside / "copy")
    (outside / "copy" / "figtoy_curve.png").write_bytes(SECRET)
    saved = json.loads((outside / "copy" / "result.json").read_text())
    (outside / "copy" / "result.json").write_text(json.dumps({**saved, "name": "linked",
                                                             "figures": ["figtoy_curve.png"]}))
    (outside / "copy" / "data.csv").write_bytes(b"a\n" + SECRET + b"\n")
    os.symlink(outside / "copy", results / "linked")
    said = report_warnings(results)
    assert not leaked(results)
    assert "outside" in said


def test_figures_are_recorded_relative_to_the_study_folder(results):
    assert json.loads((results / "figtoy" / "result.json").read_text())["figures"] == ["figtoy_curve.png"]


def test_a_moved_results_directory_reports_its_own_figures(tmp_path):
    """Written with an absolute --out, moved, reported: the figures are the moved folder's own (they used
    to be <img src="None">, or the stale files at the old location when something was left there)."""
    old = (tmp_path / "old").resolve()
    assert runner.invoke(app, ["run", "figtoy", "--quick", "--out", str(old)]).exit_code == 0
    new = tmp_path / "new"
    shutil.move(old, new)
    (old / "figtoy").mkdir(parents=True)  # a stale copy where it used to be
    (old / "figtoy" / "figtoy_curve.png").write_bytes(b"STALE-FIGURE")
    html = build_report(new).read_text()
    assert 'src="None"' not in html
    assert b64(b"PNG-OF-" + str(old / "figtoy").encode()) in html  # the figure that moved with it
    assert b64(b"STALE-FIGURE") not in html
