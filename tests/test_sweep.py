"""RunConfig hashing, grid expansion, argument errors and dd.sweep on the local engine."""
import dataclasses
import json
import logging
import os
import subprocess
import sys

import pytest

import deepdiag as dd
from deepdiag.engines import local
from deepdiag.runs import RunConfig
from deepdiag.sweep import expand, sweep

BASE = {"dataset": "digits", "n_train": 120, "width": 8, "depth": 1, "epochs": 2, "batch_size": 32}
# RunConfig() hashed by this code version; a change means every stored run loses its key: bump
# HASH_SCHEMA on purpose, never by accident.
GOLDEN = "63426844518b14af0b3dcc378708cd7525a99edf469d6690ee643495017eb60b"


def test_hash_is_pinned_and_sha256_of_canonical_json():
    c = RunConfig()
    assert c.hash == GOLDEN
    assert json.loads(c.canonical_json())["schema"] == "deepdiag.RunConfig/1"


def test_hash_stable_across_processes():
    code = "from deepdiag.runs import RunConfig as R; print(R(width=16, lr=0.05, seed=3).hash)"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": "src", "PYTHONHASHSEED": str(i)}).stdout.split()[0]
            for i in (1,)}
    assert outs == {RunConfig(width=16, lr=0.05, seed=3).hash}


def test_hash_ignores_key_order_and_int_float_but_not_values():
    d = {"width": 16, "lr": 0.05, "seed": 3, "optimizer": "adam"}
    assert RunConfig(**d).hash == RunConfig(**dict(reversed(list(d.items())))).hash
    assert RunConfig(lr=1).hash == RunConfig(lr=1.0).hash
    assert RunConfig(optimizer="SGD").hash == RunConfig(optimizer="sgd").hash
    variants = [RunConfig(**{**d, k: v}) for k, v in
                [("width", 17), ("lr", 0.0500001), ("seed", 4), ("optimizer", "sgd"), ("l2", 1e-9)]]
    hashes = {c.hash for c in variants} | {RunConfig(**d).hash}
    assert len(hashes) == len(variants) + 1


def test_config_is_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().lr = 1.0
    with pytest.raises(ValueError, match="lr"):
        RunConfig(lr=-1.0)


def test_expand_is_the_cartesian_product_times_seeds():
    configs = expand(BASE, {"width": [8, 16], "lr": [0.1, 0.01, 0.001]}, seeds=2)
    assert len(configs) == 12
    assert [c.seed for c in configs[:2]] == [0, 1]  # seed varies fastest
    assert {(c.width, c.lr) for c in configs} == {(w, lr) for w in (8, 16) for lr in (0.1, 0.01, 0.001)}
    assert len(expand(BASE, {"width": [8, 8]}, seeds=[5, 5])) == 1  # duplicates dropped


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"engine": "spark"}, ValueError, "engine"),
    ({"grid": {"widht": [8]}}, ValueError, "widht"),
    ({"grid": {"width": ["wide"]}}, TypeError, "width"),
    ({"grid": {"width": 8}}, TypeError, "grid['width']"),
    ({"grid": {"lr": []}}, ValueError, "grid['lr']"),
    ({"grid": {}}, ValueError, "grid"),
    ({"seeds": 0}, ValueError, "seeds"),
    ({"seeds": []}, ValueError, "seeds"),
    ({"seeds": 1.5}, TypeError, "seeds"),
    ({"grid": {"seed": [1]}}, ValueError, "seeds="),
    ({"base": {"colour": 1}}, ValueError, "colour"),
], ids=["engine", "grid_key", "value_type", "not_a_list", "empty_values", "empty_grid", "seeds_0",
        "seeds_empty", "seeds_float", "seed_in_grid", "base_key"])
def test_bad_input_names_the_argument(kwargs, exc, words):
    args = {"base": BASE, "grid": {"lr": [0.1]}, "seeds": 1, "progress": False, **kwargs}
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        sweep(**args)


def test_sweep_local_table_and_resume(tmp_path, monkeypatch):
    calls = []
    real = local.train_run
    monkeypatch.setattr(local, "train_run", lambda c, *a: calls.append(c.hash) or real(c, *a))
    df = dd.sweep(BASE, {"lr": [0.1, 0.05]}, seeds=2, engine="local", store=tmp_path, progress=False)
    assert len(df) == 4 and len(calls) == 4
    assert set(df.status) == {"done"} and df.val_loss.notna().all()
    assert list(df.lr) == [0.1, 0.1, 0.05, 0.05] and list(df.seed) == [0, 1, 0, 1]
    assert (tmp_path / "runs.sqlite").exists()
    again = dd.sweep(BASE, {"lr": [0.1, 0.05, 0.01]}, seeds=2, engine="local", store=tmp_path, progress=False)
    assert len(calls) == 6  # only the two new runs trained
    cols = ["hash", "status", "train_loss", "val_loss"]
    assert again[cols].iloc[:4].equals(df[cols])
    dd.sweep(BASE, {"lr": [0.1]}, seeds=1, engine="local", store=tmp_path, resume=False, progress=False)
    assert len(calls) == 7  # resume=False retrains


def test_failed_run_is_recorded_and_retried(tmp_path, monkeypatch):
    real = local.train_model

    def flaky(c, stop_on=None):
        if c.lr == 0.05:
            raise RuntimeError("boom at lr=0.05")
        return real(c, stop_on)
    monkeypatch.setattr(local, "train_model", flaky)
    df = dd.sweep(BASE, {"lr": [0.1, 0.05]}, seeds=1, engine="local", store=tmp_path, progress=False)
    assert list(df.status) == ["done", "failed"] and "boom at lr=0.05" in df.error[1]
    monkeypatch.setattr(local, "train_model", real)
    df = dd.sweep(BASE, {"lr": [0.1, 0.05]}, seeds=1, engine="local", store=tmp_path, progress=False)
    assert list(df.status) == ["done", "done"]


def test_auto_engine_choice_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="deepdiag.sweep"):
        df = dd.sweep(BASE, {"lr": [0.1, 0.05]}, seeds=2, progress=False)
    assert df.attrs["engine"] == "vectorized" and set(df.engine) == {"vectorized"}
    assert "4 of 4 runs" in caplog.text
    with caplog.at_level(logging.INFO, logger="deepdiag.sweep"):
        df = dd.sweep({**BASE, "patience": 1}, {"lr": [0.1, 0.05]}, seeds=1, progress=False)
    assert df.attrs["engine"] == "local" and "not vectorizable" in caplog.text
