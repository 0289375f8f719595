"""Honest engines: every run records the engine that trained it, every run the asked engine could not take
says why, reused runs count apart, and ``deepdiag run`` and the report say so."""
import dataclasses
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import deepdiag as dd
from deepdiag import study as S
from deepdiag.cli import app
from deepdiag.engines import vectorized
from deepdiag.runs import RunConfig
from deepdiag.sweep import EngineUse, engine_line, train_configs

TINY = RunConfig(dataset="digits", n_train=120, width=8, depth=1, epochs=2, batch_size=32)
PAIR = [dataclasses.replace(TINY, seed=s) for s in (0, 1)]  # one shape: a batched group of two
PROBED = dataclasses.replace(TINY, seed=2, probes=("n_params",))  # probes: the local loop only
ALONE = dataclasses.replace(TINY, width=12)  # vectorizable, but no other run has its shape

PROBES_WHY = "vectorized cannot run probes: n_params"
ALONE_WHY = "vectorized had no other run of its shape to batch with"


def train(configs, engine="vectorized", **kw):
    return train_configs(configs, engine=engine, progress=False, **kw)


def test_each_run_records_its_engine_and_each_fallback_its_reason():
    results, used = train(PAIR + [PROBED, ALONE])
    assert [r.engine for r in results] == ["vectorized", "vectorized", "local", "local"]
    assert used.to_dict() == {"engine": "vectorized", "runs": 4, "trained": {"vectorized": 2, "local": 2},
                              "reused": 0, "fallbacks": {"local": {PROBES_WHY: 1, ALONE_WHY: 1}}}
    assert used.line() == f"4 runs — 2 vectorized, 2 local ({PROBES_WHY} ×1; {ALONE_WHY} ×1); 0 reused"


def test_a_study_like_l2_on_vectorized_says_every_run_fell_back():
    configs = [dataclasses.replace(PROBED, seed=s) for s in range(3)]
    _, used = train(configs)
    assert used.line() == f"3 runs — 3 local ({PROBES_WHY}); 0 reused"


def test_a_failed_batched_group_is_named(monkeypatch):
    def broken(*a, **k):
        raise MemoryError("no room")
    monkeypatch.setattr(vectorized, "train_group", broken)
    _, used = train(PAIR)
    assert used.to_dict()["fallbacks"] == {"local": {"vectorized group failed (MemoryError)": 2}}


def test_auto_choosing_local_says_why_and_local_asked_has_no_fallback():
    _, used = train([PROBED, ALONE], engine="auto")
    assert used.engine == "local" and used.to_dict()["fallbacks"] == {"local": {PROBES_WHY: 1, ALONE_WHY: 1}}
    _, used = train([PROBED, ALONE], engine="local")
    assert used.line() == "2 runs — 2 local; 0 reused"


def test_runs_the_store_held_count_as_reused(tmp_path):
    train(PAIR, store=tmp_path)
    _, used = train(PAIR + [PROBED], store=tmp_path)
    assert used.to_dict()["reused"] == 2 and used.to_dict()["trained"] == {"local": 1}
    assert used.line() == f"3 runs — 1 local ({PROBES_WHY}); 2 reused"
    table = dd.sweep(TINY, {"width": [8]}, seeds=2, engine="vectorized", store=tmp_path, progress=False)
    assert table.attrs["engines"]["reused"] == 2 and table.attrs["engines"]["trained"] == {}


def test_merge_counts_a_run_trained_by_either_call_as_trained():
    a = EngineUse("vectorized", {"h1": "local", "h2": "reused"}, {"h1": PROBES_WHY})
    b = EngineUse("vectorized", {"h1": "reused", "h2": "vectorized", "h3": "reused"})
    assert a.merge(b).runs == {"h1": "local", "h2": "vectorized", "h3": "reused"}
    assert a.merge(b).to_dict()["fallbacks"] == {"local": {PROBES_WHY: 1}}
    assert engine_line({"runs": 0}) == "no training runs"


# ---- through a study, the CLI and the report --------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EngineToyConfig:
    probes: bool = True


def _measure(config, seeds):
    base = PROBED if config.probes else TINY
    results = S.train_runs([dataclasses.replace(base, seed=s) for s in seeds])
    return S.Measurement([S.check_rule("ran", "runs train", len(results), len(seeds), "all ran", True)],
                         pd.DataFrame({"seed": seeds}))


S.register(S.Study("enginetoy", claim='"engines tell"', theory="none", config=EngineToyConfig, quick={},
                   measure=_measure, seeds_quick=2))


def test_run_study_carries_where_its_runs_trained(tmp_path):
    result = dd.run_study("enginetoy", quick=True, out=tmp_path, engine="vectorized")
    assert result.engines == {"engine": "vectorized", "runs": 2, "trained": {"local": 2}, "reused": 0,
                              "fallbacks": {"local": {PROBES_WHY: 2}}}
    assert json.loads((tmp_path / "enginetoy" / "result.json").read_text())["engines"] == result.engines
    again = dd.run_study("enginetoy", quick=True, out=tmp_path, engine="vectorized")
    assert again.engines["reused"] == 2 and again.engines["trained"] == {}


def test_deepdiag_run_prints_and_reports_the_engines_used(tmp_path):
    args = ["run", "enginetoy", "--quick", "--engine", "vectorized", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"enginetoy: 2 runs — 2 local ({PROBES_WHY}); 0 reused" in result.stdout
    html = (tmp_path / "report.html").read_text()
    assert "engine asked <code>vectorized</code>" in html and "engines used <code>local 2; 0 reused</code>" in html
    as_json = CliRunner().invoke(app, args + ["--json", "--fresh"])
    row = json.loads(as_json.stdout)["studies"][0]
    assert row["engines"]["fallbacks"] == {"local": {PROBES_WHY: 2}} and row["kept"] is False


@pytest.mark.parametrize("engine", ["local", "vectorized"])
def test_vectorizable_study_runs_train_where_asked(tmp_path, engine):
    result = dd.run_study("enginetoy", quick=True, engine=engine, probes=False)
    assert result.engines["trained"] == {engine: 2} and result.engines["fallbacks"] == {}
