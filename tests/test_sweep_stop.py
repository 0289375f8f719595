"""dd.sweep(stop_on=...): a Monitor on each run ends doomed runs early; healthy runs are never stopped."""
import logging

import pandas as pd
import pytest

import deepdiag as dd
from deepdiag.store import Store, load_runs
from deepdiag.runs import RunConfig, RunResult
from deepdiag.sweep import still_finished

BASE = {"dataset": "digits", "n_train": 400, "width": 16, "depth": 2, "epochs": 4}
FULL = 4 * 7  # 400 samples / batch 64 -> 7 steps per epoch


def _sweep(grid, **kw):
    kw.setdefault("seeds", 1)
    kw.setdefault("progress", False)
    return dd.sweep(BASE, grid, **kw)


@pytest.mark.parametrize("bad", ["fatal", "info", "Error", 1, True])
def test_bad_stop_on_names_the_argument_and_allowed_values(bad):
    with pytest.raises(ValueError) as e:
        _sweep({"lr": [0.1]}, stop_on=bad)
    msg = str(e.value)
    assert "stop_on" in msg and "'warning'" in msg and "'error'" in msg and "None" in msg


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_stop_on_refuses_engines_without_a_per_run_monitor(engine):
    with pytest.raises(ValueError, match="stop_on"):
        _sweep({"lr": [0.1]}, engine=engine, stop_on="error")


def test_auto_picks_local_and_logs_why(caplog):
    with caplog.at_level(logging.INFO, logger="deepdiag.sweep"):
        df = _sweep({"lr": [0.1, 0.05]}, stop_on="error")  # same architecture: auto would vectorize
    assert df.attrs["engine"] == "local" and set(df.engine) == {"local"}
    assert "stop_on" in caplog.text and "vectorized" in caplog.text


def test_doomed_runs_stop_with_code_and_step():
    grid = {"lr": [0.1, 50.0, 1e-6], "init": ["he", "zeros"]}
    df = _sweep(grid, stop_on="error").set_index(["lr", "init"])
    healthy = df.loc[(0.1, "he")]
    assert not healthy.stopped and healthy.steps == FULL and pd.isna(healthy.stop_code)
    for key in [(0.1, "zeros"), (50.0, "he"), (50.0, "zeros"), (1e-6, "zeros")]:
        r = df.loc[key]
        assert r.stopped, key
        assert r.stop_severity == "error" and isinstance(r.stop_code, str)
        assert 1 <= r.stop_step <= r.steps < FULL, key  # ended at the end of the epoch it was seen in
        assert r.status in ("done", "diverged")
    assert not df.loc[(1e-6, "he")].stopped  # stalled updates is a warning: not enough for "error"

    dw = _sweep({"lr": [1e-6]}, stop_on="warning").iloc[0]
    assert dw.stopped and dw.stop_code == "stalled_updates" and dw.stop_severity == "warning"
    assert dw.steps < FULL


def test_healthy_grid_is_never_stopped_and_trains_exactly_as_without():
    grid = {"lr": [0.3, 0.1, 0.03], "width": [16, 32]}
    ref = _sweep(grid, seeds=2, engine="local")
    df = _sweep(grid, seeds=2, stop_on="warning")
    assert not df.stopped.any() and df.stop_code.isna().all()
    assert (df.steps == FULL).all()
    cols = ["hash", "status", "steps", "train_loss", "val_loss", "val_acc", "best_val_loss"]
    assert df[cols].equals(ref[cols])  # the monitor's hooks do not change a single number


def test_store_round_trip_and_resume(tmp_path, monkeypatch):
    import deepdiag.engines.local as local

    grid = {"lr": [0.1], "init": ["he", "zeros"]}
    df = _sweep(grid, stop_on="error", store=tmp_path)
    back = load_runs(tmp_path)
    cols = ["hash", "status", "stopped", "stop_code", "stop_severity", "stop_step", "steps"]
    assert back[cols].equals(df[cols])
    with Store(tmp_path / "runs.sqlite") as s:
        res = {r.config.init: r for r in s.results()}
    f = res["zeros"].metrics["stop_finding"]
    assert f["code"] == res["zeros"].metrics["stop_code"] and f["severity"] == "error"
    assert "stop_finding" not in res["he"].metrics and res["he"].metrics["stopped"] is False

    calls = []
    real = local.train_run
    monkeypatch.setattr(local, "train_run", lambda c, stop_on=None: calls.append((c.init, stop_on)) or real(c, stop_on))
    _sweep(grid, stop_on="error", store=tmp_path)
    assert calls == []  # the stopped run is finished for a sweep that would stop it too
    _sweep(grid, stop_on=None, store=tmp_path)
    assert calls == [("zeros", None)]  # without stop_on it trains to the end
    again = load_runs(tmp_path).set_index("init")
    assert not again.loc["zeros"].stopped and again.loc["zeros"].steps == FULL


def test_rows_written_before_stop_on_stay_readable(tmp_path):
    c = RunConfig(**BASE)
    old = RunResult(c, "done", {"epoch": [1]}, {"val_loss": 0.5, "steps": 7})  # no stop metrics at all
    with Store(tmp_path / "runs.sqlite") as s:
        s.put(old)
        row = s.table().iloc[0]
        (r,) = s.results()
    assert pd.isna(row.stopped) and pd.isna(row.stop_code) and row.val_loss == 0.5
    assert still_finished(r, None) and still_finished(r, "error")


def test_process_engine_stops_too():
    grid = {"lr": [0.1], "init": ["he", "zeros"]}
    df = _sweep(grid, stop_on="error", engine="process", workers=1).set_index("init")
    assert df.attrs["engine"] == "process" and set(df.engine) == {"process"}
    assert not df.loc["he"].stopped and df.loc["he"].steps == FULL
    assert df.loc["zeros"].stopped and df.loc["zeros"].steps < FULL


def test_vectorized_engine_stops_the_same_runs_per_member():
    """Per-member statistics on the stack (divergence, stalled updates, dead units) stop the same doomed
    runs as the local Monitor, within one epoch of it (they judge the whole training set at epoch ends,
    the Monitor a window of batches every 10 steps), leave the healthy ones untouched, and record why."""
    grid = {"lr": [0.1, 50.0, 1e-6], "init": ["he", "zeros"]}
    for stop_on in ("error", "warning"):
        local = _sweep(grid, seeds=2, engine="local", stop_on=stop_on).set_index("hash")
        vec = _sweep(grid, seeds=2, engine="vectorized", stop_on=stop_on).set_index("hash")
        assert set(vec.engine) == {"vectorized"}
        vec = vec.loc[local.index]
        assert list(vec.stopped) == list(local.stopped)
        assert ((vec.steps - local.steps).abs() <= 7).all()  # one epoch: 400 samples / batch 64
        assert vec.stopped.any() and not vec.stopped.all()
        healthy = ~local.stopped
        pd.testing.assert_series_equal(vec.best_val_loss[healthy], local.best_val_loss[healthy], rtol=1e-5)
        stopped = vec[vec.stopped]
        assert set(stopped.stop_code) <= {"divergence", "dead_units", "stalled_updates"}
        assert (stopped.stop_step <= stopped.steps).all()
        div = vec[vec.stop_code == "divergence"]
        assert (div.stop_step == div.diverged_step).all()
    assert "stalled_updates" in set(stopped.stop_code)  # lr 1e-6 under stop_on="warning"


def test_vectorized_divergence_stop_step_is_the_divergence_step():
    """A member whose loss turns non-finite is stopped with code divergence at that very step (1-based,
    as diverged_step), the same step the local engine records."""
    base = {"dataset": "teacher", "n_train": 200, "width": 16, "depth": 2, "epochs": 3, "batch_size": 16,
            "momentum": 0.9}
    grid = {"lr": [0.01, 5.0, 1000.0]}
    local = dd.sweep(base, grid, seeds=1, engine="local", stop_on="error", progress=False).set_index("hash")
    vec = dd.sweep(base, grid, seeds=1, engine="vectorized", stop_on="error", progress=False)
    vec = vec.set_index("hash").loc[local.index]
    div = vec[vec.status == "diverged"]
    assert len(div) == 2 and set(div.stop_code) == {"divergence"}
    assert list(div.stop_step) == list(div.diverged_step) == list(local.diverged_step[div.index])
    assert not vec.stopped[vec.lr == 0.01].any()
