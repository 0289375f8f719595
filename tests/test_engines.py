"""Engines against the reference: vectorized ≡ local (parameters and histories ≤ 1e-5), process, dask
and ray return local's table, and unknown / uninstalled engines fail with one clear line."""
import dataclasses
import importlib.util
import os
import statistics
import threading
import time

import pytest
import torch

import deepdiag as dd
from deepdiag.engines import EngineUnavailable, get_engine
from deepdiag.engines.local import train_model
from deepdiag.engines.vectorized import train_group
from deepdiag.runs import RunConfig
from deepdiag.sweep import expand

from conftest import require_extra

BASE = RunConfig(dataset="digits", n_train=200, width=16, depth=2, epochs=2, batch_size=32)
R = dataclasses.replace
TOL = 1e-5


def _members(**varying):
    """Configs with field lists zipped, e.g. _members(seed=[0, 1], lr=[0.1, 0.05])."""
    keys = list(varying)
    return [R(BASE, **dict(zip(keys, vals))) for vals in zip(*varying.values())]


CASES = {
    "sgd_lr_seeds": lambda: _members(seed=[0, 1, 2, 3], lr=[0.1, 0.05, 0.1, 0.02]),
    "l2_wd_momentum": lambda: _members(seed=[0, 1, 2, 3], l2=[0.0, 5.0, 0.0, 1.0],
                                       weight_decay=[0.0, 0.0, 0.01, 0.02], momentum=[0.9, 0.5, 0.0, 0.9]),
    "adam": lambda: _members(optimizer=["adam"] * 3, seed=[0, 1, 2], lr=[1e-3, 3e-3, 1e-2],
                             weight_decay=[0.0, 0.01, 0.0], l2=[0.0, 0.0, 2.0]),
    "adamw": lambda: _members(optimizer=["adamw"] * 2, seed=[0, 1], lr=[1e-3, 3e-3], weight_decay=[0.0, 0.1]),
    "residual_tanh_fullbatch": lambda: _members(seed=[0, 1], residual=[True] * 2, activation=["tanh"] * 2,
                                                batch_size=[None] * 2),
    "regression": lambda: _members(seed=[0, 1], dataset=["teacher"] * 2, lr=[0.01, 0.05]),
    "binary_deeper": lambda: _members(seed=[0, 1], dataset=["breast_cancer"] * 2, depth=[4, 4]),
    "one_diverges": lambda: _members(seed=[0, 1, 2], dataset=["teacher"] * 3, lr=[0.01, 0.8, 0.05],
                                     epochs=[4] * 3, n_train=[100] * 3),  # member 1: step 5, epoch 2
}


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= TOL * max(1.0, abs(b))  # absolute below 1, relative above (float32)


@pytest.mark.parametrize("case", CASES)
def test_vectorized_matches_local(case):
    configs = CASES[case]()
    results, params = train_group(configs, return_params=True)
    for config, res, P in zip(configs, results, params):
        run = train_model(config)
        model, hist = run.model, run.history
        ref = hist.to_dict()
        assert (res.status == "diverged") == hist.diverged
        assert res.history["diverged_step"] == ref["diverged_step"] and res.history["steps"] == ref["steps"]
        # a diverged run's last epoch is chaos (huge or NaN numbers): compare the epochs before it
        upto = len(ref["epoch"]) - 1 if hist.diverged else len(ref["epoch"])
        for key in ("batch_loss", "train_loss", "val_loss", "train_acc", "val_acc"):
            assert len(res.history[key]) == len(ref[key]), key
            assert all(map(_same, res.history[key][:upto], ref[key][:upto])), (key, res.history[key], ref[key])
        if not hist.diverged:
            for name, p in model.named_parameters():
                torch.testing.assert_close(P[name], p.detach(), rtol=0, atol=TOL, msg=name)
    if case == "one_diverges":
        assert [r.status for r in results] == ["done", "diverged", "done"]
        assert results[1].history["diverged_step"] == 5 and results[1].history["epoch"] == [1, 2]
        assert all(torch.isfinite(P["out.weight"]).all() for P in (params[0], params[2]))


def test_dropout_members_get_own_masks_and_match_in_distribution():
    configs = _members(seed=list(range(6)), dropout=[0.3] * 6, epochs=[3] * 6)
    twins = [configs[0], R(configs[0])]  # the same config twice: masks must still differ
    _, (p, q) = train_group(twins, return_params=True)
    assert not torch.equal(p["out.weight"], q["out.weight"])
    vec = [r.metrics["train_loss"] for r in train_group(configs)[0]]
    ref = [train_model(c).history.train_loss[-1] for c in configs]
    spread = max(statistics.stdev(vec), statistics.stdev(ref))
    assert abs(statistics.mean(vec) - statistics.mean(ref)) <= spread, (vec, ref)


SMALL = {"dataset": "digits", "n_train": 120, "width": 8, "depth": 1, "epochs": 2, "batch_size": 32}
STABLE = ["hash", "status", "train_loss", "train_acc", "val_loss", "val_acc", "batch_loss", "steps"]


@pytest.fixture(scope="module")
def local_table():
    return dd.sweep(SMALL, {"lr": [0.1, 0.05]}, seeds=2, engine="local", progress=False)


def _assert_same_table(df, ref):
    assert list(df.hash) == list(ref.hash) and list(df.status) == list(ref.status)
    for col in STABLE[2:]:
        assert (df[col] - ref[col]).abs().max() <= TOL, col


def test_vectorized_sweep_table_matches_local(local_table):
    df = dd.sweep(SMALL, {"lr": [0.1, 0.05]}, seeds=2, engine="vectorized", progress=False)
    assert set(df.engine) == {"vectorized"}
    _assert_same_table(df, local_table)


def test_process_engine_matches_local(local_table):
    df = dd.sweep(SMALL, {"lr": [0.1, 0.05]}, seeds=2, engine="process", workers=2, progress=False)
    assert set(df.engine) == {"process"}
    _assert_same_table(df, local_table)


def test_cancelled_process_engine_leaves_no_worker_and_no_thread_of_its_pool():
    """shutdown(cancel=True) terminates the workers with their tasks in flight and returns only after the
    pool's own threads (the executor's manager, the call queue's feeder) have ended, so none of them is
    left to close pipes while the caller exits; the cancelled and the killed tasks' futures are done."""
    from deepdiag.engines.process import ProcessEngine

    before = set(threading.enumerate())
    engine = ProcessEngine(workers=2)
    futures = [engine.submit_call(time.sleep, 60) for _ in range(5)]
    procs = list(engine._pool._processes.values())
    time.sleep(1)  # the manager has moved tasks into the call queue: its feeder thread runs
    engine.shutdown(cancel=True)
    assert len(procs) == 2 and not any(p.is_alive() for p in procs)
    assert set(threading.enumerate()) <= before, set(threading.enumerate()) - before
    assert all(f.done() for f in futures)


def test_dask_engine_matches_local(dask_address, local_table, tmp_path):
    """On the session's LocalCluster through address=, results committed to a store on disk."""
    df = dd.sweep(SMALL, {"lr": [0.1, 0.05]}, seeds=2, engine="dask", address=dask_address, store=tmp_path,
                  progress=False)
    assert df.attrs["engine"] == "dask" and set(df.engine) == {"dask"}
    _assert_same_table(df, local_table)
    again = dd.sweep(SMALL, {"lr": [0.1, 0.05]}, seeds=2, engine="dask", address=dask_address,
                     store=tmp_path, progress=False)  # resume: nothing left to run, same table
    _assert_same_table(again, local_table)


def test_dask_engine_starts_and_closes_its_own_cluster(tmp_path):
    """No address: a temporary LocalCluster (here one worker) starts with the sweep and is gone after."""
    require_extra("dask", "distributed")
    from deepdiag.engines.dask import DaskEngine

    engine = DaskEngine(workers=1, local_directory=str(tmp_path))
    configs = expand(SMALL, {"lr": [0.1]}, seeds=1)
    try:
        results = list(engine.run(configs))
        cluster = engine._cluster
        assert cluster is not None and len(cluster.workers) == 1
    finally:
        engine.shutdown()
    assert engine._cluster is None and cluster.status.name == "closed"
    assert [r.status for r in results] == ["done"] and results[0].engine == "dask"


def test_ray_engine_starts_and_shuts_down_its_own_instance():
    """No address and no Ray running: a temporary local Ray (short temp dir, usage stats off) starts with
    the sweep and is shut down after, its folder removed. Runs before the session's Ray is set up."""
    require_extra("ray", "ray")
    import ray

    from deepdiag.engines.ray import RayEngine

    if ray.is_initialized():
        pytest.skip("a Ray instance is already up in this process (the session fixture's)")
    engine = RayEngine(workers=1)
    try:
        results = list(engine.run(expand(SMALL, {"lr": [0.1]}, seeds=1)))
        temp = engine._tmp
        assert ray.is_initialized() and len(temp) < 40 and os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    finally:
        engine.shutdown()
    assert not ray.is_initialized() and not os.path.exists(temp)
    assert [r.status for r in results] == ["done"] and results[0].engine == "ray"


def test_ray_engine_matches_local(ray_local, local_table, tmp_path):
    """On the session's local Ray (already initialised: the engine uses it and leaves it running)."""
    df = dd.sweep(SMALL, {"lr": [0.1, 0.05]}, seeds=2, engine="ray", store=tmp_path, progress=False)
    assert df.attrs["engine"] == "ray" and set(df.engine) == {"ray"}
    _assert_same_table(df, local_table)
    assert ray_local.is_initialized()


def test_cluster_engine_options_are_checked():
    for name, module in (("dask", "distributed"), ("ray", "ray")):
        if importlib.util.find_spec(module) is None:
            continue
        with pytest.raises(TypeError, match="address="):
            get_engine(name, address=8786)
        with pytest.raises(ValueError, match="workers="):
            get_engine(name, address="tcp://127.0.0.1:1", workers=2)


def test_unknown_or_uninstalled_engine_says_so(monkeypatch):
    with pytest.raises(ValueError, match="engine='spark'.*local, vectorized, process, dask, ray"):
        get_engine("spark")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("ray", "distributed") else real(n, *a))
    with pytest.raises(EngineUnavailable, match=r"engine='ray'.*pip install \"deepdiag\[ray\]\""):
        get_engine("ray")
    with pytest.raises(EngineUnavailable, match=r"engine='dask'.*pip install \"deepdiag\[dask\]\""):
        get_engine("dask")


def test_load_results_exposes_the_sweep_store(tmp_path):
    """dd.load_results(DIR).sweeps is the store's table; a directory with only a store still loads."""
    df = dd.sweep(SMALL, {"lr": [0.1]}, seeds=2, engine="local", store=tmp_path, progress=False)
    res = dd.load_results(tmp_path)
    assert list(res.sweeps.hash) == list(df.hash) and set(res.sweeps.status) == {"done"}
    assert res.studies.empty and "verdict" in res.studies and res.checks.empty and res.runs.empty
    with pytest.raises(ValueError, match="no study results"):
        dd.load_results(tmp_path / "empty")
