"""Studies train through the sweep layer: the store under out/, resume, engines, probes, Ctrl-C.

A small l2 study (its sweep runs carry three probes) is the workhorse: a few seconds per run."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

import deepdiag as dd
from deepdiag.engines import local
from deepdiag.engines.vectorized import shape_key
from deepdiag.store import Store
from deepdiag.runs import RunConfig
from deepdiag.sweep import run_configs

SMALL_L2 = dict(lams=(0.0, 0.3, 1.0, 1000.0), width=16, epochs=20, eq_epochs=2)
N_RUNS = len(SMALL_L2["lams"])  # sweep runs per seed (l2's quick mode has 2 seeds)
TINY = RunConfig(dataset="digits", n_train=120, width=8, depth=1, epochs=2, batch_size=32)


def _counting(monkeypatch) -> list:
    """Count the local engine's training calls (what LocalEngine.run calls per run)."""
    calls = []
    real = local.train_run
    monkeypatch.setattr(local, "train_run", lambda c, *a: calls.append(c.hash) or real(c, *a))
    return calls


def _same(a, b) -> None:
    """Identical studies: the data bit for bit, and every check."""
    pd.testing.assert_frame_equal(a.data, b.data, check_exact=True)
    assert [c.to_dict() for c in a.checks] == [c.to_dict() for c in b.checks]


def test_second_run_with_out_trains_nothing_and_gives_identical_data(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    first = dd.run_study("l2", quick=True, out=tmp_path, **SMALL_L2)
    runs = 2 * N_RUNS  # l2 quick: 2 seeds × λ
    assert len(calls) == runs
    with Store(tmp_path / "runs.sqlite") as s:
        assert len(s) == runs and len(s.finished_hashes()) == runs
    second = dd.run_study("l2", quick=True, out=tmp_path, **SMALL_L2)
    assert len(calls) == runs, "a finished run was trained again"
    _same(first, second)
    with Store(tmp_path / "runs.sqlite") as s:
        assert len(s) == runs
    sweeps = dd.load_results(tmp_path).sweeps  # the store is what the report and load_results read
    assert len(sweeps) == runs and sweeps.weight_norm.notna().all() and set(sweeps.engine) == {"local"}
    dd.run_study("l2", quick=True, out=tmp_path, resume=False, **SMALL_L2)
    assert len(calls) == 2 * runs  # resume=False retrains


def test_without_out_the_store_is_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = _counting(monkeypatch)
    dd.run_study("l2", quick=True, **SMALL_L2)
    dd.run_study("l2", quick=True, **SMALL_L2)
    assert len(calls) == 4 * N_RUNS and not list(tmp_path.iterdir())  # nothing kept, nothing written


def test_ctrl_c_loses_no_finished_run_and_resume_matches(tmp_path, monkeypatch):
    calls = []
    real = local.train_run

    def interrupt_third(c, *a):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(c.hash)
        return real(c, *a)
    monkeypatch.setattr(local, "train_run", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        dd.run_study("l2", quick=True, out=tmp_path / "cut", **SMALL_L2)
    with Store(tmp_path / "cut" / "runs.sqlite") as s:
        assert s.finished_hashes() == set(calls)  # both finished runs committed, nothing else
    done = list(calls)
    monkeypatch.setattr(local, "train_run", lambda c, *a: calls.append(c.hash) or real(c, *a))
    resumed = dd.run_study("l2", quick=True, out=tmp_path / "cut", **SMALL_L2)
    assert not set(calls[len(done):]) & set(done) and len(calls) == 2 * N_RUNS
    _same(resumed, dd.run_study("l2", quick=True, out=tmp_path / "whole", **SMALL_L2))


def test_process_engine_gives_the_local_study():
    """The process workers run the local loop and the probes: the same data and checks as local."""
    a = dd.run_study("l2", quick=True, engine="local", **SMALL_L2)
    b = dd.run_study("l2", quick=True, engine="process", engine_options={"workers": 2}, **SMALL_L2)
    _same(a, b)
    assert a.environment["engine"] == "local" and b.environment["engine"] == "process"


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"engine": "spark"}, ValueError, "engine='spark'"),
    ({"engine": "local", "engine_options": {"workers": 2}}, TypeError, "engine='local' takes no options"),
    ({"engine_options": 4}, TypeError, "engine_options=4"),
    ({"resume": "yes"}, TypeError, "resume='yes'"),
], ids=["unknown_engine", "local_options", "options_type", "resume_type"])
def test_run_study_engine_arguments_are_checked(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        dd.run_study("l2", quick=True, **SMALL_L2, **kwargs)


def test_run_study_names_a_missing_extra_before_training(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ray" else real(n, *a))
    calls = _counting(monkeypatch)
    with pytest.raises(ImportError, match=r"engine='ray'.*pip install \"deepdiag\[ray\]\""):
        dd.run_study("l2", quick=True, engine="ray", **SMALL_L2)
    assert calls == []


def test_failed_run_stops_the_study_with_its_error(monkeypatch):
    def broken(c, *a):
        raise RuntimeError("boom in training")
    monkeypatch.setattr(local, "train_model", broken)
    with pytest.raises(RuntimeError, match="4 of 4 training run.*boom in training"):
        dd.run_study("l2", quick=True, seeds=1, **SMALL_L2)


# ---- the RunConfig fields and probes the studies need --------------------------------------------

def test_new_fields_keep_old_hashes_and_change_new_ones():
    assert RunConfig(val_split="val", standardize=True, probes=[]).hash == RunConfig().hash
    variants = [RunConfig(**kw) for kw in ({"val_split": "test"}, {"val_split": None}, {"eval_train": False},
                                           {"stop_at_train_acc": 1}, {"probes": ("test_eval",)},
                                           {"standardize": False}, {"label_noise": 0.1},
                                           {"random_labels": True}, {"val_fraction": 0.3})]
    assert len({c.hash for c in variants} | {RunConfig().hash}) == len(variants) + 1
    assert RunConfig(stop_at_train_acc=1).hash == RunConfig(stop_at_train_acc=1.0).hash
    c = RunConfig(dataset="moons", noise=0.3, probes=["test_eval", "n_params"])
    assert RunConfig.from_dict(c.to_dict()) == c and c.probes == ("test_eval", "n_params")


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"probes": ("nope",)}, ValueError, "probes='nope'"),
    ({"probes": "test_eval"}, TypeError, "probes='test_eval'"),
    ({"val_split": "train"}, ValueError, "val_split='train'"),
    ({"stop_at_train_acc": 1.0, "eval_train": False}, ValueError, "needs eval_train=True"),
    ({"stop_at_train_acc": 1.5}, ValueError, "stop_at_train_acc"),
    ({"noise": 0.1}, ValueError, "noise=0.1"),  # digits has fixed rows
    ({"dataset": "teacher", "label_noise": 0.1}, ValueError, "classification only"),
    ({"standardize": "columns"}, ValueError, "standardize"),
], ids=["probe_name", "probes_str", "val_split", "stop_needs_eval", "stop_range", "noise_fixed_set",
        "label_noise_regression", "standardize"])
def test_bad_run_fields_name_the_field(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        RunConfig(**kwargs)


def test_runs_with_new_fields_go_to_the_local_loop():
    assert shape_key(TINY) is not None
    for kw in ({"probes": ("n_params",)}, {"val_split": "test"}, {"label_noise": 0.1}, {"eval_train": False}):
        assert shape_key(dataclasses.replace(TINY, **kw)) is None, kw


def test_probes_val_split_and_stop_rule_through_the_sweep(tmp_path):
    """The local engine honours the new fields: the test split as the validation curve, the stop rule,
    probes in the results and as table columns."""
    plain, on_test, stopped = (dataclasses.replace(TINY, **kw) for kw in (
        {"probes": ("test_eval", "n_params")}, {"val_split": "test", "probes": ("test_eval",)},
        {"stop_at_train_acc": 0.05, "epochs": 5}))
    results = run_configs([plain, on_test, stopped, plain], engine="auto", store=tmp_path, progress=False)
    assert [r.config for r in results] == [plain, on_test, stopped, plain]  # order kept, duplicate shared
    a, b, c, _ = results
    assert a.probes["n_params"]["n_params"] == 64 * 8 + 8 + 8 * 10 + 10  # digits: 64 inputs, 10 classes
    assert b.history["val_loss"][-1] == pytest.approx(b.probes["test_eval"]["test_loss"], rel=1e-12)
    assert a.history["val_loss"][-1] != pytest.approx(a.probes["test_eval"]["test_loss"], rel=1e-6)
    assert len(c.history["epoch"]) == 1 and c.history["stopped_early"]
    table = dd.sweep(TINY, {"probes": [("test_eval", "n_params")]}, seeds=1, store=tmp_path, progress=False)
    assert table.loc[0, "n_params"] == 610 and table.loc[0, "test_acc"] == a.probes["test_eval"]["test_acc"]


def test_a_clashing_probe_fails_the_run(monkeypatch):
    from deepdiag import probes

    monkeypatch.setitem(probes.PROBES, "clash", lambda model, ds, hist, config: {"val_loss": 0.0})
    result, = run_configs([dataclasses.replace(TINY, probes=("clash",))], engine="local", progress=False)
    assert result.status == "failed" and "probe 'clash' returns key(s) 'val_loss'" in result.error


def test_a_probe_value_that_is_not_json_fails_only_its_run(monkeypatch):
    from deepdiag import probes

    monkeypatch.setitem(probes.PROBES, "numpy", lambda model, ds, hist, config: {"np_value": np.float32(1.5)})
    monkeypatch.setitem(probes.PROBES, "opaque", lambda model, ds, hist, config: {"thing": object()})
    ok, bad = run_configs([dataclasses.replace(TINY, probes=("numpy",)),
                           dataclasses.replace(TINY, probes=("opaque",))], engine="local", progress=False)
    assert ok.status == "done" and ok.probes["numpy"] == {"np_value": 1.5}
    assert bad.status == "failed" and "probe 'opaque'" in bad.error
