"""dd.repair: ranked candidates, verification against seed noise, combination, resume from the store,
and ``deepdiag repair`` run on a model file as a user would."""
import json
import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import deepdiag as dd
from deepdiag.candidates import Candidate, Setup, combine, first_guess, ranked
from deepdiag.findings import Finding
from deepdiag.repair import (
    ArrayData,
    RepairResult,
    Trial,
    TrialSpec,
    _anchor_findings,
    _confirm_one,
    _margin,
    _verify,
    as_data,
    load_npz,
    repair,
    run_trial,
)


def finding(code, severity="warning", fix=None):
    return Finding(code, severity, f"{code} seen.", {}, "do something", [], None, fix)


# ---- candidates (pure) ----

def test_first_candidate_is_the_top_findings_own_fix_merged_over_its_code():
    fs = [finding("stalled_updates", "warning", {"lr": 1.0}),
          finding("divergence", "error", {"lr": 0.01, "clip_grad_norm": 1.0}),
          finding("divergence", "error", {"lr": 0.02, "warmup_steps": 10})]
    first = first_guess(fs)
    assert first.fix == {"lr": 0.01, "clip_grad_norm": 1.0, "warmup_steps": 10}  # not the stalled lr
    cands = ranked(fs, Setup(lr=0.1), limit=20)
    assert cands[0].fix == first.fix and cands[0].source == "finding"
    assert {"lr": 1.0} in [c.fix for c in cands]  # the other finding's own fix comes as an alternative
    assert len({c.key for c in cands}) == len(cands)  # no candidate twice


def test_a_layer_pathology_present_at_the_start_comes_before_what_it_caused():
    died = Finding("dead_units", "error", "died.", {"healthy_at_step": 0}, "lower the lr", [], 40, {"lr": 0.001})
    fs = [died, finding("divergence", "error", {"lr_factor": 0.1}),
          finding("exploding_gradients", "warning", {"init": "he"})]
    assert first_guess(fs).fix == {"init": "he"}  # the init that blew up, not the lr cuts it caused


def test_the_first_guess_fixes_the_most_upstream_cause_and_alternatives_follow():
    fs = [finding("vanishing_gradients", "error", {"init": "xavier"}),
          finding("unscaled_inputs", "warning", {"standardize_inputs": True}),
          finding("underfitting", "warning", {"lr": 0.5})]
    cands = ranked(fs, Setup(), limit=20)
    assert cands[0].fix == {"standardize_inputs": True}  # the data cause, not the symptoms' fixes
    fixes = [c.fix for c in cands]
    assert {"init": "xavier"} in fixes and {"activation": "relu"} in fixes and {"lr": 0.5} in fixes
    assert fixes.index({"init": "xavier"}) < fixes.index({"activation": "relu"})
    assert ranked(fs, Setup(), limit=3) == cands[:3]


def test_lr_and_lr_factor_are_one_knob():
    fs = [finding("divergence", "error", {"lr_factor": 0.1, "clip_grad_norm": 1.0}),
          finding("divergence", "warning", {"lr": 0.005})]
    assert first_guess(fs).fix == {"lr_factor": 0.1, "clip_grad_norm": 1.0}
    a = Candidate({"lr": 0.01}, "lr", ("divergence",), "a")
    assert combine([a, Candidate({"lr_factor": 0.1}, "lr", ("x",), "b")]) is None


def test_info_findings_get_no_candidate():
    assert ranked([finding("stalled_updates", "info", {"lr": 1.0})], Setup()) == []


def test_learning_rate_alternatives_are_scaled_from_the_configured_lr():
    cands = ranked([finding("divergence", "error")], Setup(lr=0.5), limit=10)
    lrs = [c.fix["lr"] for c in cands if "lr" in c.fix]
    assert 0.05 in lrs and 0.005 in lrs


def test_contradicting_fixes_are_not_combined():
    a = Candidate({"lr": 0.01}, "lr", ("divergence",), "a")
    b = Candidate({"lr": 1.0}, "lr", ("stalled_updates",), "b")
    c = Candidate({"standardize_inputs": True}, "data", ("unscaled_inputs",), "c")
    assert combine([a, b]) is None
    both = combine([a, c])
    assert both.fix == {"lr": 0.01, "standardize_inputs": True} and both.source == "combination"


# ---- verification ----

def _trial(score, codes=(), answers=("dead_units",), error=None):
    rec = {"score": score, "findings": [finding(c).to_dict() for c in codes], "error": error}
    return Trial(Candidate({"init": "he"}, "init", answers, "r"), 1, rec)


def test_verified_needs_every_diagnosed_finding_gone_and_a_score_above_the_bar():
    codes = ["dead_units", "underfitting"]
    assert _verify(_trial(0.9), codes, 0.55)[0]
    assert not _verify(_trial(0.9, codes=("dead_units",)), codes, 0.55)[0]  # finding still there
    assert not _verify(_trial(0.9, codes=("underfitting",)), codes, 0.55)[0]  # another diagnosed one left
    assert _verify(_trial(0.9, codes=("overfitting",)), codes, 0.55)[0]  # a new code is not a diagnosed one
    assert not _verify(_trial(0.54), codes, 0.55)[0]  # within seed noise
    assert not _verify(_trial(None, error="ValueError: x"), codes, 0.55)[0]


def test_the_bar_is_the_baseline_at_seed_0_plus_the_margin():
    r = RepairResult("val_acc", [], {}, [0.48, 0.21], _margin([0.48, 0.21], "val_acc"))
    assert r.bar == pytest.approx(0.49)
    r = RepairResult("val_mse", [], {}, [-2.0, -2.2], _margin([-2.0, -2.2], "val_mse"))
    assert r.bar == pytest.approx(-2.0 + 0.1)
    assert RepairResult("val_acc", [], {}, [-math.inf, -math.inf], 0.01).bar == -math.inf


class _Runner:  # hands back a prepared seed-1 record
    def __init__(self, record):
        self.record = record

    def run(self, specs, label):
        return [dict(self.record)]


@pytest.mark.parametrize("base, seed1, codes, confirmed", [
    ([0.90, 0.99], 0.97, (), True),  # chaotic baseline: +0.07 and -0.02, mean +0.025 > 0.01
    ([0.90, 0.99], 0.93, (), False),  # +0.07 and -0.06: mean +0.005, within the margin
    ([0.10, 0.10], 0.95, ("dead_units",), False),  # the finding is back at seed 1
    ([-math.inf, 0.1], 0.90, (), True),  # a diverged baseline: any finite run is better
])
def test_confirmation_pairs_the_seeds(base, seed1, codes, confirmed):
    result = RepairResult("val_acc", [finding("dead_units")], {}, base, 0.01)
    t = _trial(0.97)
    rec = {"score": seed1, "findings": [finding(c).to_dict() for c in codes], "error": None}
    _confirm_one(t, result, _Runner(rec), lambda fix, seed: None)
    assert t.confirmed is confirmed and t.record["seed1_score"] == seed1


def test_the_next_round_answers_what_a_failed_confirmation_showed():
    """A fix that cleared a finding at seed 0 but not at seed 1 has not answered it: the next round
    builds on it against the seed-1 findings too (seed 0's first, each code once)."""
    result = RepairResult("val_acc", [finding("divergence")], {}, [0.3, 0.3], 0.01)
    t = _trial(0.9, codes=("overfitting",), answers=("divergence",))
    rec = {"score": 0.1, "findings": [finding("divergence").to_dict(), finding("overfitting").to_dict()],
           "error": None}
    _confirm_one(t, result, _Runner(rec), lambda fix, seed: None)
    assert t.confirmed is False
    assert [f.code for f in _anchor_findings(t)] == ["overfitting", "divergence"]
    t.record.pop("seed1_findings")
    assert [f.code for f in _anchor_findings(t)] == ["overfitting"]


def test_divergence_alternatives_end_with_an_activation_that_does_not_grow():
    s = Setup(lr=0.1, batch_size=32, epochs=5, optimizer="sgd", weight_decay=0.0, n_train=1000)
    fixes = [c.fix for c in ranked([finding("divergence")], s)]
    assert fixes[-1] == {"activation": "relu"} and {"lr": pytest.approx(0.01)} in fixes


def test_a_fix_that_changes_nothing_is_not_trained():
    """An activation swap on a model that has only ReLUs skips every key: recorded as an error at once."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    data = ArrayData(x, y, x, y, "classification")
    build = lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    spec = TrialSpec(build, data, dd.TrainConfig(epochs=1), None, {"activation": "relu"}, 0)
    rec = run_trial(spec)
    assert rec["error"].startswith("ValueError: the fix changes nothing") and "epochs_run" not in rec
    for fix in ({"activation": "tanh"}, {"loss": "cross_entropy"}):  # a swap, a training key: trained
        assert run_trial(TrialSpec(build, data, dd.TrainConfig(epochs=1), None, fix, 0))["error"] is None


# ---- data ----

def test_npz_data_is_read_without_pickle(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(20) % 2, x_val=x[:5], y_val=np.arange(5) % 2)
    d = load_npz(tmp_path / "d.npz")
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.long and d.task == "classification"
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(ValueError, match="x_train"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "obj.npz", x_train=np.array([object()]), y_train=np.zeros(1))
    with pytest.raises(ValueError):
        load_npz(tmp_path / "obj.npz")


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(TypeError, match="build"):
        repair(nn.Linear(2, 2), "digits")
    with pytest.raises(ValueError, match="data"):
        as_data("no_such_set")
    with pytest.raises(ValueError, match="engine"):
        repair(lambda: nn.Linear(64, 10), "digits", engine="gpu")
    with pytest.raises(ValueError, match="rounds"):
        repair(lambda: nn.Linear(64, 10), "digits", rounds=0)


# ---- the search, end to end (small, with effects far beyond seed noise) ----

def stalled():
    """A digits MLP trained with lr 1e-6: the weights barely move, accuracy stays near chance."""
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


STALLED = {"optimizer": "sgd", "lr": 1e-6, "epochs": 4, "batch_size": 32}


@pytest.fixture(scope="module")
def stalled_result(tmp_path_factory):
    store = tmp_path_factory.mktemp("repair") / "runs.sqlite"
    torch.set_num_threads(1)
    result = repair(stalled, "digits", STALLED, rounds=1, max_candidates=4, store=store, progress=False)
    return result, store


def test_repair_finds_and_verifies_a_fix_for_a_stalled_model(stalled_result):
    result, _ = stalled_result
    assert isinstance(result, RepairResult)
    assert "stalled_updates" in [f.code for f in result.findings]
    assert result.repaired and result.best.verified and result.best.confirmed
    after, before = result.best.score, result.baseline_scores[0]
    assert after - before > 0.3  # chance (0.1) to far above: not a noise-sized gain
    fixed, _ = dd.apply_fix(stalled(), result.fix, config=STALLED)
    assert isinstance(fixed, nn.Module)
    table = result.table()
    assert len(table) == len(result.trials) and table["best"].sum() == 1
    d = json.loads(json.dumps(result.to_dict()))
    assert d["repaired"] and d["fix"] == result.fix and d["trainings"] == result.trainings


def test_an_interrupted_repair_resumes_from_the_store(stalled_result):
    result, store = stalled_result
    again = repair(stalled, "digits", STALLED, rounds=1, max_candidates=4, store=store, progress=False)
    assert again.trainings == 0 and again.reused == result.trainings
    assert again.fix == result.fix


def test_a_healthy_model_needs_no_repair():
    torch.set_num_threads(1)
    cfg = {"optimizer": "adam", "lr": 3e-3, "epochs": 2, "batch_size": 32}
    result = repair(stalled, "digits", cfg, rounds=1, max_candidates=2, progress=False)
    assert not result.findings and not result.trials and not result.repaired


# ---- the command, as a user runs it ----

MODEL_FILE = """
from torch import nn

def build():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

def broken():
    raise RuntimeError("my bug")
"""


def deepdiag(*args, cwd):
    return subprocess.run([sys.executable, "-m", "deepdiag.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_repair_command_on_a_model_file(tmp_path):
    (tmp_path / "models.py").write_text(textwrap.dedent(MODEL_FILE))
    ds = dd.data.load("digits", seed=0)
    np.savez(tmp_path / "digits.npz", x_train=ds.x_train.numpy(), y_train=ds.y_train.numpy(),
             x_val=ds.x_val.numpy(), y_val=ds.y_val.numpy())
    r = deepdiag("repair", "models.py:build", "--data", "digits.npz", "--set", "lr=1e-6", "--set", "epochs=4",
                 "--set", "batch_size=32", "--rounds", "1", "--candidates", "4", "--json", "--out", "res",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["repaired"] and d["fix"] and d["after"] > d["before"] + 0.3
    assert (tmp_path / "res" / "runs.sqlite").exists()
    # the same command again, its candidates in 2 worker processes (the model file is imported there):
    # every trial comes from the store, keyed by the file's content
    again = deepdiag("repair", "models.py:build", "--data", "digits.npz", "--set", "lr=1e-6", "--set", "epochs=4",
                     "--set", "batch_size=32", "--rounds", "1", "--candidates", "4", "--json", "--out", "res",
                     "--engine", "process", "--workers", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    d2 = json.loads(again.stdout)
    assert d2["reused"] == d["trainings"] and d2["trainings"] == 0 and d2["fix"] == d["fix"]


def test_repair_command_exit_codes_for_usage_and_user_errors(tmp_path):
    (tmp_path / "models.py").write_text(textwrap.dedent(MODEL_FILE))
    assert deepdiag("repair", "models.py:build", "--data", "nope", cwd=tmp_path).returncode == 2
    assert deepdiag("repair", "models.py:build", "--data", "digits", "--set", "speed=3",
                    cwd=tmp_path).returncode == 2
    assert deepdiag("repair", "missing.py:build", "--data", "digits", cwd=tmp_path).returncode == 2
    assert deepdiag("repair", "models.py:build", "--data", "digits", "--engine", "local", "--workers", "2",
                    cwd=tmp_path).returncode == 2  # local takes no --workers
    bad = deepdiag("repair", "models.py:broken", "--data", "digits", cwd=tmp_path)
    assert bad.returncode == 3 and "my bug" in bad.stderr


@pytest.fixture(scope="module")
def local_repair():
    import functools

    build = functools.partial(dd.mlp, 64, 10, width=32, depth=1, seed=0)
    cfg = dict(STALLED, epochs=2)
    run = lambda **engine: repair(build, "digits", cfg, rounds=1, max_candidates=3, progress=False, **engine)
    return run, run(engine="local")


def _same_search(other, local):
    assert [t.candidate.fix for t in other.trials] == [t.candidate.fix for t in local.trials]
    assert [t.score for t in other.trials] == pytest.approx([t.score for t in local.trials], abs=1e-6)
    assert other.fix == local.fix


def test_candidates_trained_in_worker_processes_match_the_local_ones(local_repair):
    """engine="process" trains a round's candidates in spawned workers (one thread each) through the
    sweep layer's engine: the same seeded trainings, so the same scores and verdict as training them here."""
    run, local = local_repair
    _same_search(run(engine="process", workers=2), local)


def test_candidates_trained_on_a_dask_cluster_match_the_local_ones(local_repair, dask_address):
    run, local = local_repair
    _same_search(run(engine="dask", address=dask_address), local)


def test_candidates_trained_as_ray_tasks_match_the_local_ones(local_repair, ray_local):
    run, local = local_repair
    _same_search(run(engine="ray"), local)


def test_a_remote_engine_needs_picklable_inputs():
    with pytest.raises(ValueError, match="engine='process'.*pickle"):
        repair(lambda: dd.mlp(64, 10), "digits", STALLED, engine="process", progress=False)


def test_the_pickle_check_never_serialises_the_data_arrays(monkeypatch):
    """Whether build, data and loss_fn pickle is decided without serialising a tensor or array (the engine
    pickles the data when it sends the trials; the check must not add a copy of it): code that does not
    pickle is still caught, in the data too."""
    from deepdiag.repair import _pickles

    serialised = []
    real = torch.Tensor.__reduce_ex__
    monkeypatch.setattr(torch.Tensor, "__reduce_ex__", lambda t, proto: serialised.append(t) or real(t, proto))
    data = SimpleNamespace(x_train=torch.randn(64, 8), y_train=np.arange(64), x_val=None, y_val=None)
    assert _pickles(dd.mlp, data, None) and not serialised
    assert not _pickles(lambda: dd.mlp(8, 2), data, None)
    data.transform = lambda x: x
    assert not _pickles(dd.mlp, data, None) and not serialised


def test_dd_repair_is_the_function_whatever_was_imported_first():
    import deepdiag.repair  # noqa: F401  (importing the module must not rebind dd.repair to it)

    assert callable(dd.repair) and dd.repair is repair and dd.apply_fix.__name__ == "apply_fix"


_CALLS = [0]


def stalled_then_ctrl_c():
    """stalled(), but Ctrl-C arrives while the 4th model is built (the second candidate)."""
    _CALLS[0] += 1
    if _CALLS[0] == 4:
        raise KeyboardInterrupt
    return stalled()


def test_ctrl_c_keeps_the_finished_trials_and_the_same_call_resumes(tmp_path):
    store = tmp_path / "runs.sqlite"
    with pytest.raises(KeyboardInterrupt):
        repair(stalled_then_ctrl_c, "digits", STALLED, rounds=1, max_candidates=4, store=store, progress=False)
    again = repair(stalled_then_ctrl_c, "digits", STALLED, rounds=1, max_candidates=4, store=store,
                   progress=False)
    assert again.reused == 3  # the baseline's two seeds and the first candidate were not lost
    assert again.trials[0].record == json.loads(json.dumps(again.trials[0].record))
