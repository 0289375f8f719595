"""The command line through typer's CliRunner: commands, exit codes, --json, bad input."""
import json
from dataclasses import dataclass

import pandas as pd
import pytest
from typer.testing import CliRunner

import deepdiag as dd
from deepdiag import study as S
from deepdiag.cli import app

runner = CliRunner()
CALLS = []


@dataclass(frozen=True)
class CliToyConfig:
    width: int = 4
    rate: float = 0.5
    fail: bool = False
    dims: tuple = (1, 2)


def _measure(config, seeds):
    CALLS.append(config)
    checks = [S.check_rule("ok", "the toy holds", config.width, 4, "width > 0", config.width > 0 and not config.fail)]
    return S.Measurement(checks, pd.DataFrame({"experiment": ["t"] * len(seeds), "seed": seeds}))


def _plot(result, folder):
    fig, (ax,) = dd.plots.figure()
    dd.plots.measured(ax, result.data["seed"], result.data["seed"], label="seeds")
    ax.set_xlabel("seed")
    return [dd.plots.save(fig, folder, "seeds")]


S.register(S.Study("clitoy", claim='"toys work"', theory="none", config=CliToyConfig, quick={"width": 2},
                   measure=_measure, plot=_plot, seeds_quick=2))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output + result.stderr
    return lines[0]


def test_list_shows_studies_and_knobs():
    result = invoke("list")
    assert result.exit_code == 0
    assert "clitoy" in result.stdout and "toys work" in result.stdout
    for knob in ("width", "rate", "fail", "dims"):
        assert knob in result.stdout


def test_run_writes_results_report_and_json(tmp_path):
    result = invoke("run", "clitoy", "--quick", "--out", tmp_path, "--json", "--set", "width=3", "--set", "dims=4,5")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["studies"] == [{"study": "clitoy", "verdict": "reproduced", "passed": 1, "total": 1,
                                   "wall_time": summary["studies"][0]["wall_time"], "kept": False,
                                   "engines": {"engine": "local", "runs": 0, "trained": {}, "reused": 0,
                                               "fallbacks": {}}}]
    saved = json.loads((tmp_path / "clitoy" / "result.json").read_text())
    assert saved["config"]["width"] == 3 and saved["config"]["dims"] == [4, 5] and saved["seeds"] == [0, 1]
    assert (tmp_path / "report.html").exists() and (tmp_path / "studies.csv").exists()
    assert summary["report"] == str(tmp_path / "report.html")


def test_rerun_resumes_and_fresh_reruns(tmp_path):
    CALLS.clear()
    assert invoke("run", "clitoy", "--quick", "--out", tmp_path).exit_code == 0
    again = invoke("run", "clitoy", "--quick", "--out", tmp_path)
    assert again.exit_code == 0 and "kept earlier result" in again.stderr and len(CALLS) == 1
    assert invoke("run", "clitoy", "--quick", "--out", tmp_path, "--set", "width=5").exit_code == 0
    assert len(CALLS) == 2  # other knobs: not the same run
    assert invoke("run", "clitoy", "--quick", "--out", tmp_path, "--set", "width=5", "--fresh").exit_code == 0
    assert len(CALLS) == 3


def test_not_reproduced_exits_1(tmp_path):
    result = invoke("run", "clitoy", "--quick", "--out", tmp_path, "--set", "fail=true")
    assert result.exit_code == 1 and "not reproduced" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["run", "nosuchstudy"], "unknown study 'nosuchstudy'"),
    (["run", "clitoy", "--set", "depth=3"], "unknown knob 'depth'"),
    (["run", "clitoy", "--set", "width=wide"], "expected int"),
    (["run", "clitoy", "--set", "novalue"], "KEY=VALUE"),
    (["run", "clitoy", "--set", "width=-1", "--quick"], None),
    (["run", "clitoy", "--engine", "bogus"], "unknown engine 'bogus'"),
    (["run", "clitoy", "--engine", "local", "--workers", "2"], "engine 'local' takes no --workers"),
    (["run", "clitoy", "--engine", "process", "--address", "tcp://x:1"], "engine 'process' takes no --address"),
    (["report", "/nonexistent/dir"], "no study results"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, words):
    result = invoke(*args, "--out", tmp_path) if args[0] == "run" else invoke(*args)
    if words is None:  # a valid knob value that breaks the claim is a verdict, not a usage error
        assert result.exit_code == 1
        return
    assert result.exit_code == 2, result.output
    assert words in one_error_line(result)


def test_report_rebuilds_from_directory(tmp_path):
    invoke("run", "clitoy", "--quick", "--out", tmp_path)
    (tmp_path / "report.html").unlink()
    result = invoke("report", tmp_path)
    assert result.exit_code == 0 and (tmp_path / "report.html").exists()
    html = (tmp_path / "report.html").read_text()
    assert 'id="clitoy"' in html and "plotly" in html and 'data-csv-gzip="' in html


def test_load_results_round_trip(tmp_path):
    invoke("run", "clitoy", "--quick", "--out", tmp_path)
    res = dd.load_results(tmp_path)
    assert res.studies.loc[0, "study"] == "clitoy" and res.studies.loc[0, "verdict"] == "reproduced"
    assert res.checks.loc[0, "name"] == "ok" and bool(res.checks.loc[0, "passed"]) is True
    assert res.data["clitoy"]["seed"].tolist() == [0, 1]
    assert set(res.runs["study"]) == {"clitoy"}
    assert pd.read_csv(tmp_path / "checks.csv").shape[0] == 1


FACTORIES = '''
import torch
from torch import nn

def healthy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))

def zero_init():
    model = healthy()
    for p in model.parameters():
        nn.init.zeros_(p)
    return model, torch.randn(128, 20), torch.randint(0, 5, (128,)), nn.CrossEntropyLoss()

def broken():
    raise RuntimeError("the factory failed")

def not_a_model():
    return 42

def conv():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
'''


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(FACTORIES)
    return path


@pytest.mark.skipif(not hasattr(dd, "checkup"), reason="dd.checkup not available")
def test_check_healthy_and_zero_init(factory_file):
    healthy = invoke("check", f"{factory_file}:healthy")
    assert healthy.exit_code == 0, healthy.output
    zero = invoke("check", f"{factory_file}:zero_init", "--fail-on", "warning", "--json")
    assert zero.exit_code == 1
    codes = {f["code"] for f in json.loads(zero.stdout)["findings"]}
    assert "symmetric_units" in codes
    cover = json.loads(zero.stdout)["coverage"]
    assert cover["weight_modules"] >= 2 and cover["fraction"] == 1.0 and cover["not_measured"] == []


@pytest.mark.parametrize("target, words, code", [
    ("{f}:missing", "no callable 'missing'", 2),
    ("{f}:broken", "the factory failed", 3),  # the user's code failed
    ("{f}:not_a_model", "not an nn.Module", 2),
    ("{f}:conv", "--input-shape", 2),
    ("nofile.py:build", "no such file", 2),
    ("{f}", "FILE.py:FACTORY", 2),
])
def test_check_bad_targets(factory_file, target, words, code):
    result = invoke("check", target.format(f=factory_file))
    assert result.exit_code == code, result.output
    assert words in one_error_line(result)


def test_run_missing_extra_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("ray", "distributed") else real(n, *a))
    for engine, extra in (("ray", "ray"), ("dask", "dask")):
        result = invoke("run", "clitoy", "--quick", "--out", tmp_path, "--engine", engine)
        assert result.exit_code == 2, result.output
        line = one_error_line(result)
        assert f"engine='{engine}'" in line and f'pip install "deepdiag[{extra}]"' in line, line
    assert not (tmp_path / "clitoy").exists()  # refused before any study ran


def test_run_real_study_trains_through_the_engine_into_the_store(tmp_path):
    """deepdiag run depth --quick --engine local --out DIR: the runs land in DIR/runs.sqlite; --fresh
    retrains them, a plain rerun keeps the result."""
    from deepdiag.store import Store

    run = invoke("run", "depth", "--quick", "--engine", "local", "--out", tmp_path, "--json")
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["studies"][0]["verdict"] == "reproduced"
    with Store(tmp_path / "runs.sqlite") as s:
        results = s.results()
    assert len(results) == 7 and {r.engine for r in results} == {"local"}  # 2 families × 3 depths + identity
    saved = json.loads((tmp_path / "depth" / "result.json").read_text())
    assert saved["environment"]["engine"] == "local"
    sweeps = dd.load_results(tmp_path).sweeps
    assert len(sweeps) == 7 and set(sweeps.status) == {"done"}


def test_end_to_end_real_study_then_report(tmp_path):
    """deepdiag run <a real quick study> --out DIR, then deepdiag report DIR rebuilds the page from DIR."""
    run = invoke("run", "vanishing", "--quick", "--out", tmp_path)
    assert run.exit_code == 0, run.output
    assert "vanishing" in run.stdout and "reproduced" in run.stdout
    saved = json.loads((tmp_path / "vanishing" / "result.json").read_text())
    assert saved["verdict"] == "reproduced" and saved["figures"]
    (tmp_path / "report.html").unlink()
    rebuilt = invoke("report", tmp_path)
    assert rebuilt.exit_code == 0 and rebuilt.stdout.strip() == str(tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert 'id="vanishing"' in html and html.count('class="figure"') == len(saved["figures"])
    assert "https://" not in html.split("<script>")[0]  # no external stylesheet or font
