"""A user's run saved by ``Monitor.save``, read back by ``load_run``, drawn by ``Monitor.report`` and
``deepdiag report DIR``; the per-step unit shares and update ratios the heatmaps draw."""
import json
import math

import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import deepdiag as dd
from deepdiag.jsonsafe import json_safe
from deepdiag import runreport
from deepdiag.cli import app
from deepdiag.monitor import Monitor
from deepdiag.report import build_report
from deepdiag.runreport import load_run

KILL_AT, STEPS, WINDOW = 20, 60, 10


def dying_run(steps: int = STEPS):
    """A monitored loop in which every unit of the second ReLU layer ("3") is switched off at step KILL_AT
    (bias -1e4: no batch can make them fire): dead_units must be first seen one window later, whatever the
    batches. Returns (monitor, model); the monitor is closed."""
    torch.manual_seed(0)
    d = dd.data.load("digits", seed=0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    mon = Monitor(model, window=WINDOW, check_every=5, on_finding=lambda f: None, n_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(steps):
        if i == KILL_AT:
            with torch.no_grad():
                model[2].bias.fill_(-1e4)
        idx = torch.randint(0, len(d.x_train), (64,))
        loss = nn.functional.cross_entropy(model(d.x_train[idx]), d.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss)
        if (i + 1) % 10 == 0:
            mon.epoch(train_loss=loss.detach(), val_loss=float(loss.detach()) * 1.1, train_acc=0.5)
    mon.close()
    return mon, model


@pytest.fixture(scope="module")
def dying():
    return dying_run()


def test_save_and_load_round_trip(dying, tmp_path):
    mon, model = dying
    assert mon.save(tmp_path / "run") == tmp_path / "run"
    run = load_run(tmp_path / "run")
    h = mon.history
    pd.testing.assert_frame_equal(run.layers, h.layers, check_dtype=False)
    pd.testing.assert_frame_equal(run.steps, h.steps, check_dtype=False)
    pd.testing.assert_frame_equal(run.epochs, h.epochs.astype(float), check_dtype=False)  # None: NaN
    assert run.findings == mon.check() and run.findings
    assert run.layers.layer.tolist()[:5] == ["0", "1", "2", "3", "4"]  # names stay text in CSV
    meta = run.meta
    assert meta["model"] == "Sequential" and meta["deepdiag"] == dd.__version__
    assert [x["name"] for x in meta["layers"]] == [s.name for s in mon.rec.sites]
    assert (meta["every"], meta["capacity"], meta["window"], meta["steps"]) == (1, 256, WINDOW, STEPS)
    cover = mon.coverage  # what the Monitor measured, saved as it reported it
    assert (run.coverage["weight_modules"], run.coverage["measured"]) == (cover.weight_modules, cover.measured) == (3, 3)
    doc = json.loads((tmp_path / "run" / "run.json").read_text())
    assert doc["format"] == runreport.FORMAT and set(doc["tables"]) == {"layers", "steps", "epochs"}


def test_parquet_when_pyarrow_is_installed(dying, tmp_path):
    pytest.importorskip("pyarrow")
    mon, _ = dying
    run = load_run(mon.save(tmp_path))
    assert run.tables["layers"] == "layers.parquet"
    pd.testing.assert_frame_equal(run.layers, mon.history.layers, check_dtype=False)


def test_history_holds_the_unit_shares_and_update_ratios(dying):
    mon, _ = dying
    layers = mon.history.layers
    dead = layers[layers.layer == "3"].set_index("step").dead_frac
    assert dead[KILL_AT - 1] < 0.5 and (dead[KILL_AT + WINDOW + 1:] == 1.0).all()  # a whole window later: all dead
    assert (layers[layers.layer == "1"].dead_frac < 0.5).all()
    weights = layers[layers.kind == "weight"]
    assert weights.dead_frac.isna().all() and weights.saturated_frac.isna().all()
    assert (weights[weights.step >= 1].update_rel > 0).all()  # SGD moves every weight layer
    assert layers[layers.kind == "activation"].update_rel.isna().all()


def test_saturated_share_and_functional_units_belong_to_their_layer():
    """tanh applied functionally is measured at the next layer's input, but its units are fc1's."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 2)

        def forward(self, x):
            return self.fc2(torch.tanh(self.fc1(x)))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.fc1.weight.mul_(100.0)  # |z| >> 3: every tanh unit saturated
    mon = Monitor(net)
    for _ in range(3):
        net(torch.randn(32, 8)).pow(2).mean().backward()
        mon.step()
    mon.close()
    layers = mon.history.layers
    assert (layers[layers.layer == "fc1"].saturated_frac == 1.0).all()
    assert layers[layers.layer == "fc2"].saturated_frac.isna().all()


def test_coverage_is_saved_and_drawn(dying, tmp_path):
    mon, _ = dying
    run = load_run(mon.save(tmp_path))
    assert run.coverage == json_safe(mon.coverage.to_dict())
    html = runreport.render(run, tmp_path / "r.html").read_text()
    assert 'id="coverage"' in html and "weight_modules" in html


def test_the_page_draws_what_was_saved(dying, tmp_path):
    """The renderer reads the findings from run.json; it never judges again."""
    mon, _ = dying
    mon.save(tmp_path)
    doc = json.loads((tmp_path / "run.json").read_text())
    doc["findings"][0]["remedy"] = "a remedy edited by hand"
    (tmp_path / "run.json").write_text(json.dumps(doc))
    html = build_report(tmp_path).read_text()
    assert "a remedy edited by hand" in html
    assert html.count('<tr data-code="') == len(doc["findings"])


def test_report_page_is_self_contained(dying, tmp_path):
    mon, _ = dying
    path = mon.report(tmp_path / "sub" / "run.html")
    html = path.read_text()
    assert "Plotly.newPlot" in html  # no network request: tests/test_runreport_browser.py
    assert 'data-figure="loss"' in html and 'data-figure="signal_norm"' in html
    assert 1_000_000 < len(html.encode()) < 2_000_000  # the partial plotly bundle, not the full one


def test_load_run_refuses_what_is_not_a_saved_run(tmp_path):
    with pytest.raises(ValueError, match="no saved run"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "run.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a saved deepdiag run"):
        load_run(tmp_path)


@pytest.mark.parametrize("values, log", [([1e-6, 1e-3, 1.0], True), ([0.0, 1e-4, 1e-1], True),
                                         ([0.2, 0.5, 1.0], False), ([0.0, 1e-3, 0.05], False)])
def test_log_colour_scale_where_values_span_two_decades(values, log):
    layers = pd.DataFrame({"step": range(len(values)), "layer": "fc", "signal_norm": values})
    run = runreport.SavedRun({"layers": [{"name": "fc"}]}, [], layers, pd.DataFrame(), pd.DataFrame())
    spec = runreport._heatmap(run, "signal_norm", "signal", True)
    assert spec["log"] is log and spec["rows"] == 1
    z = spec["data"][0]["z"][0]
    if log:
        assert z[-1] == pytest.approx(math.log10(values[-1])) and all(v is not None for v in z)
    else:
        assert z == values


def test_cli_report_on_a_saved_run(dying, tmp_path):
    mon, _ = dying
    mon.save(tmp_path / "run")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    page = tmp_path / "run" / "report.html"
    assert result.stdout.strip() == str(page)
    html = page.read_text()
    for f in load_run(tmp_path / "run").findings:
        assert f'data-code="{f.code}" data-step="{f.step}"' in html
