"""Results identity: a study's saved result and a stored run are reused only when everything that shapes
them matches (the full resolved config, seeds, quick/full, the engine's numbers, the deepdiag version);
otherwise they are recomputed and one line says why."""
import json
from dataclasses import dataclass

import pandas as pd
import pytest
from typer.testing import CliRunner

from deepdiag import study as S
from deepdiag.cli import app
from deepdiag.engines import numeric_class, reuses
from deepdiag.runs import RunConfig
from deepdiag.store import Store
from deepdiag.sweep import run_configs

runner = CliRunner()


@dataclass(frozen=True)
class IdToyConfig:
    width: int = 4
    epochs: int = 1


def _measure(config, seeds):
    """Two tiny runs of one shape per seed, trained through the sweep layer (so the engine matters)."""
    configs = [RunConfig(width=config.width, depth=1, epochs=config.epochs, lr=lr, seed=s, n_train=60)
               for s in seeds for lr in (0.1, 0.05)]
    results = S.train_runs(configs)
    losses = [r.metrics["train_loss"] for r in results]
    checks = [S.check_rule("ok", "the toy holds", config.width, 4, "width > 0", config.width > 0)]
    return S.Measurement(checks, pd.DataFrame({"experiment": "t", "train_loss": losses,
                                               "engine": [r.engine for r in results]}))


S.register(S.Study("idtoy", claim='"toys hold"', theory="none", config=IdToyConfig, quick={"width": 2},
                   measure=_measure, plot=lambda result, folder: [], seeds_quick=1, seeds_full=2))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def saved(out):
    return json.loads((out / "idtoy" / "result.json").read_text())


def test_an_omitted_knob_reruns_and_says_why(tmp_path):
    """The saved result had width=3; the command without --set means the quick default width=2."""
    first = invoke("run", "idtoy", "--quick", "--set", "width=3", "--out", tmp_path)
    assert first.exit_code == 0, first.output
    again = invoke("run", "idtoy", "--quick", "--out", tmp_path)
    assert again.exit_code == 0, again.output
    assert "kept earlier result" not in again.stderr
    assert "idtoy: rerunning — width 3 → 2" in again.stderr and "differs" in again.stderr
    assert saved(tmp_path)["config"]["width"] == 2
    same = invoke("run", "idtoy", "--quick", "--out", tmp_path)  # now identical: kept
    assert "kept earlier result" in same.stderr, same.stderr


def test_an_omitted_seed_count_or_mode_reruns(tmp_path):
    assert invoke("run", "idtoy", "--quick", "--seeds", "2", "--out", tmp_path).exit_code == 0
    again = invoke("run", "idtoy", "--quick", "--out", tmp_path)
    assert "seeds [0, 1] → [0]" in again.stderr, again.stderr
    full = invoke("run", "idtoy", "--seeds", "1", "--out", tmp_path)
    assert "quick → full" in full.stderr and "width 2 → 4" in full.stderr, full.stderr
    assert saved(tmp_path)["quick"] is False


def test_another_deepdiag_version_reruns(tmp_path):
    assert invoke("run", "idtoy", "--quick", "--out", tmp_path).exit_code == 0
    result = saved(tmp_path)
    result["environment"]["deepdiag"] = "0.0.1"
    (tmp_path / "idtoy" / "result.json").write_text(json.dumps(result))
    again = invoke("run", "idtoy", "--quick", "--out", tmp_path)
    assert "deepdiag 0.0.1 →" in again.stderr, again.stderr


def test_a_vectorized_result_is_not_kept_for_the_local_engine(tmp_path):
    """The study level: a saved result from the vectorized engine is stale for --engine local."""
    assert invoke("run", "idtoy", "--quick", "--engine", "vectorized", "--out", tmp_path).exit_code == 0
    again = invoke("run", "idtoy", "--quick", "--engine", "local", "--out", tmp_path)
    assert "engine vectorized → local" in again.stderr, again.stderr
    assert saved(tmp_path)["environment"]["engine"] == "local"


def test_stored_vectorized_runs_are_not_reused_by_the_local_engine(tmp_path):
    """The store level: with result.json removed, the local engine retrains the vectorized runs (it used
    to reuse them and label the study local) and says so in one line."""
    assert invoke("run", "idtoy", "--quick", "--engine", "vectorized", "--out", tmp_path).exit_code == 0
    with Store(tmp_path / "runs.sqlite") as s:
        assert {r.engine for r in s.results()} == {"vectorized"}
    (tmp_path / "idtoy" / "result.json").unlink()
    again = invoke("run", "idtoy", "--quick", "--engine", "local", "--out", tmp_path)
    assert again.exit_code == 0, again.output
    notes = [line for line in again.stderr.splitlines() if "not reused" in line]
    assert len(notes) == 1 and "2 stored run(s) from engine vectorized" in notes[0], again.stderr
    with Store(tmp_path / "runs.sqlite") as s:
        assert {r.engine for r in s.results()} == {"local"}  # retrained on the reference loop
    data = pd.read_csv(tmp_path / "idtoy" / "data.csv")
    assert set(data["engine"]) == {"local"}


def test_reference_runs_serve_every_engine(tmp_path, capsys):
    """Runs of the reference loop are reused by the vectorized engine (it promises them up to rounding):
    nothing retrains, nothing is said."""
    configs = [RunConfig(width=3, depth=1, epochs=1, lr=lr, n_train=40) for lr in (0.1, 0.2)]
    run_configs(configs, engine="local", store=tmp_path, progress=False)
    with Store(tmp_path / "runs.sqlite") as s:
        before = {r.hash: r.wall_time for r in s.results()}
    results = run_configs(configs, engine="vectorized", store=tmp_path, progress=False)
    assert {r.engine for r in results} == {"local"} and {r.hash: r.wall_time for r in results} == before
    assert "not reused" not in capsys.readouterr().err


def test_runs_of_another_deepdiag_version_are_retrained(tmp_path, capsys):
    config = RunConfig(width=3, depth=1, epochs=1, n_train=40)
    (old,) = run_configs([config], engine="local", store=tmp_path, progress=False)
    old.versions = {**old.versions, "deepdiag": "0.0.1"}
    with Store(tmp_path / "runs.sqlite") as s:
        s.put(old)
    (new,) = run_configs([config], engine="local", store=tmp_path, progress=False)
    assert new.versions["deepdiag"] != "0.0.1"
    assert "1 stored run(s) from deepdiag 0.0.1" in capsys.readouterr().err


@pytest.mark.parametrize("requested, stored, reused", [
    ("local", "local", True), ("process", "local", True), ("dask", "local", True), ("ray", "local", True),
    ("local", "vectorized", False), ("process", "vectorized", False), ("vectorized", "vectorized", True),
    ("auto", "vectorized", True), ("vectorized", "local", True), ("local", "someday", False),
    ("auto", "auto", True), ("vectorized", "auto", True), ("local", "auto", False),
])
def test_numeric_classes(requested, stored, reused):
    assert reuses(requested, stored) is reused
    assert numeric_class("process") == numeric_class("local") != numeric_class("vectorized")
