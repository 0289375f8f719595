"""The SQLite store: round trip, WAL, concurrent writers, and resume after kill -9 of the driver."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

import deepdiag as dd
from deepdiag.engines import local
from deepdiag.store import Store, load_runs
from deepdiag.runs import RunConfig, RunResult
from deepdiag.sweep import expand

BASE = {"dataset": "digits", "n_train": 120, "width": 8, "depth": 1, "epochs": 2, "batch_size": 32}
GRID = {"lr": [0.1, 0.05, 0.02, 0.01]}
SEEDS = 2
STABLE = ["hash", "status", "train_loss", "train_acc", "val_loss", "val_acc", "batch_loss", "steps"]
ENV = {**os.environ, "PYTHONPATH": os.path.abspath("src")}


def _fake(i: int, status="done") -> RunResult:
    c = RunConfig(seed=i)
    return RunResult(c, status, {"epoch": [1], "val_loss": [float("nan")]}, {"val_loss": 0.5 + i},
                     error="x" if status == "failed" else None, wall_time=0.1)


def test_round_trip_wal_and_replace(tmp_path):
    with Store(tmp_path / "runs.sqlite") as s:
        s.put(_fake(0))
        s.put(_fake(1, "failed"))
        assert s.finished_hashes() == {RunConfig(seed=0).hash}  # failed runs are retried
        s.put(_fake(1))
        assert len(s) == 2
        (r0, r1) = s.results([RunConfig(seed=0).hash, RunConfig(seed=1).hash])
        assert r0.config == RunConfig(seed=0) and r0.metrics["val_loss"] == 0.5
        assert r0.history["val_loss"] == [None]  # NaN stored as null: valid JSON
        assert r0.versions == {} and r1.status == "done"
    mode = sqlite3.connect(tmp_path / "runs.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert list(load_runs(tmp_path).hash) == [RunConfig(seed=0).hash, RunConfig(seed=1).hash]
    with pytest.raises(ValueError, match="no run store"):
        load_runs(tmp_path / "nowhere")


WRITER = textwrap.dedent("""
    import sys
    from deepdiag.store import Store
    from deepdiag.runs import RunConfig, RunResult
    start, path = int(sys.argv[1]), sys.argv[2]
    s = Store(path)
    for i in range(start, start + 40):
        s.put(RunResult(RunConfig(seed=i % 60), "done", {"epoch": [1]}, {"val_loss": float(i)}))
    s.close()
""")


def test_two_concurrent_writers_do_not_corrupt(tmp_path):
    path = tmp_path / "runs.sqlite"
    Store(path).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(k), str(path)], env=ENV) for k in (0, 20)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 60  # 0..59, overlaps replaced


DRIVER = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(2)
    import deepdiag as dd
    from deepdiag.engines import local
    real = local.train_run
    def slow(c, *a):
        time.sleep(0.4)  # widen the window so the kill lands mid-sweep
        return real(c, *a)
    local.train_run = slow
    dd.sweep({base!r}, {grid!r}, seeds={seeds}, engine="local", store=sys.argv[1], progress=False)
""")


def test_resume_after_sigkill_loses_and_redoes_nothing(tmp_path, monkeypatch):
    store = tmp_path / "killed"
    code = DRIVER.format(base=BASE, grid=GRID, seeds=SEEDS)
    proc = subprocess.Popen([sys.executable, "-c", code, str(store)], env=ENV)
    db_path, deadline = store / "runs.sqlite", time.time() + 120
    committed = 0
    while time.time() < deadline and proc.poll() is None:
        if db_path.exists():
            try:
                committed = Store(db_path).__len__()
            except sqlite3.OperationalError:
                committed = 0
            if committed >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the driver finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store(db_path) as s:
        before = s.finished_hashes()
    total = len(expand(BASE, GRID, SEEDS))
    assert 3 <= len(before) < total

    calls = []
    real = local.train_run
    monkeypatch.setattr(local, "train_run", lambda c, *a: calls.append(c.hash) or real(c, *a))
    resumed = dd.sweep(BASE, GRID, seeds=SEEDS, engine="local", store=store, progress=False)
    assert not set(calls) & before, "a committed run was trained again"
    assert len(calls) == total - len(before)
    fresh = dd.sweep(BASE, GRID, seeds=SEEDS, engine="local", store=tmp_path / "fresh", progress=False)
    assert resumed[STABLE].equals(fresh[STABLE])
