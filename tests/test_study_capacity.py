"""The capacity study: quick mode reproduces, its theory helpers match closed forms, each check can fail."""
import math

import numpy as np
import pytest

import deepdiag as dd
from deepdiag.studies import capacity as C


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("capacity")
    return dd.run_study("capacity", quick=True, out=out), out


def _parts(result):
    data = result.data
    summary = data[data.experiment.isin(["width", "depth"])].copy()
    rl = data[data.experiment == "random_labels"].copy()
    return summary, rl


def _by_name(checks):
    return {c.name: c for c in checks}


def test_quick_reproduced_with_expected_numbers(quick):
    result, out = quick
    assert result.verdict == "reproduced", str(result)
    checks = _by_name(result.checks)
    assert checks["underfit_smallest_depth"].measured > 0.9  # linear model on circles: ~ln 2
    assert checks["overfit_largest_train"].measured < 0.1
    assert checks["overfit_largest_val_rises"].measured > 1.5
    assert 0.05 <= checks["random_labels_test_chance"].measured <= 0.15
    assert checks["random_slower_than_true"].measured > 1.5
    assert checks["true_labels_generalize"].measured > 0.6
    folder = out / "capacity"
    assert (folder / "result.json").exists() and (folder / "data.csv").exists()
    names = sorted(p.split("/")[-1] for p in result.figures)
    assert names == ["capacity_curves.png", "capacity_sweep.png", "random_labels.png"]
    assert all((folder / n).stat().st_size > 10_000 for n in names)
    assert set(result.data.experiment) == {"width", "depth", "curve", "random_labels"}


def test_quick_is_deterministic_in_its_sweep():
    config = C.Config(**{**C.QUICK, "widths": (1, 2, 4), "depths": (0, 1, 2), "epochs": 20})
    a, _ = C._capacity_runs(config, 3)
    b, _ = C._capacity_runs(config, 3)
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]


# ---- theory helpers ----

def test_chance_loss_is_label_entropy():
    assert dd.theory.chance_loss(np.array([0, 1] * 50), 2) == pytest.approx(math.log(2))
    assert dd.theory.chance_loss(np.arange(10).repeat(7), 10) == pytest.approx(math.log(10))
    y = np.array([0] * 3 + [1])
    assert dd.theory.chance_loss(y, 3) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_chance_loss_is_the_best_constant_predictor():
    import torch

    y = torch.tensor([0, 0, 0, 1, 2, 2])
    freq = torch.bincount(y, minlength=3).double() / len(y)
    ce = torch.nn.functional.cross_entropy(freq.log().expand(len(y), 3), y)
    assert float(ce) == pytest.approx(dd.theory.chance_loss(y, 3))


def test_chance_accuracy_band_is_binomial():
    p, low, high = C.chance_accuracy_band(10, 1000, z=3)
    assert p == 0.1 and high - p == pytest.approx(3 * math.sqrt(0.09 / 1000)) and p - low == high - p
    # Monte Carlo: a guesser's accuracy falls inside the 3σ band almost always
    rng = np.random.default_rng(0)
    acc = (rng.integers(0, 10, (2000, 1000)) == 0).mean(axis=1)
    assert ((acc >= low) & (acc <= high)).mean() > 0.99


@pytest.mark.parametrize("case, expected", [
    ("flat_at_chance", {"underfitting"}),
    ("memorising", {"overfitting"}),
    ("healthy", set()),
], ids=lambda v: v if isinstance(v, str) else None)
def test_curve_labels(case, expected):
    e = np.arange(1, 101)
    base = math.log(2)
    curves = {
        "flat_at_chance": (np.full(100, 0.69), np.full(100, 0.70)),
        "memorising": (0.6 * np.exp(-e / 20), 0.3 + 0.002 * (e - 40) ** 2 / 40),
        "healthy": (0.2 + 0.4 * np.exp(-e / 20), 0.3 + 0.4 * np.exp(-e / 20)),
    }
    assert C.curve_labels(*curves[case], base) == expected


@pytest.mark.parametrize("case", ["flat_at_chance", "memorising", "healthy"])
def test_monitor_and_curve_labels_agree(case):
    """dd.Monitor's findings and the fallback rules label the same curves alike."""
    import torch

    e = np.arange(1, 101)
    curves = {
        "flat_at_chance": (np.full(100, 0.69), np.full(100, 0.70)),
        "memorising": (0.6 * np.exp(-e / 20), 0.3 + 0.002 * (e - 40) ** 2 / 40),
        "healthy": (0.2 + 0.4 * np.exp(-e / 20), 0.3 + 0.4 * np.exp(-e / 20)),
    }
    labels, source = C.monitor_labels(torch.nn.Linear(2, 2), *curves[case], math.log(2))
    assert source == "dd.Monitor"
    assert labels == C.curve_labels(*curves[case], math.log(2))


@pytest.mark.parametrize("bad", [dict(widths=(4, 2, 8)), dict(widths=(1, 2)), dict(depths=(-1, 0, 1)),
                                 dict(dataset="mnist"), dict(epochs=5), dict(rl_n_train=5000)])
def test_config_rejects_bad_knobs(bad):
    with pytest.raises(ValueError):
        C.Config(**bad)


# ---- every check can fail ----

def _smallest(s, sweep):
    rows = s[s.experiment == sweep]
    return rows.index[rows[sweep] == rows[sweep].min()]


def _largest(s):
    return s.index[(s.width == s.width.max()) & (s.depth == s.depth.max())]


def _end(s, sweep, which):
    rows = s[s.experiment == sweep]
    return rows.index[rows[sweep] == getattr(rows[sweep], which)()]


# check name -> (rows to change, column, new value or a function of the frame)
SWEEP_BREAKS = {
    "underfit_smallest_width": (lambda s: _smallest(s, "width"), "min_train_loss", 0.05),
    "underfit_smallest_depth": (lambda s: _smallest(s, "depth"), "min_train_loss", 0.05),
    "overfit_largest_train": (_largest, "train_loss", 0.4),
    "overfit_largest_val_rises": (_largest, "val_loss", lambda s: s.loc[_largest(s), "best_val_loss"]),
    "best_val_intermediate_width": (lambda s: _end(s, "width", "max"), "val_loss", 0.0),
    "best_val_intermediate_depth": (lambda s: _end(s, "depth", "min"), "val_loss", 0.0),
    "labels_agree": (_largest, "labels", "none"),
}


def _break(frame, rows, column, value):
    frame = frame.copy()
    frame.loc[rows(frame), column] = value(frame) if callable(value) else value
    return frame


@pytest.mark.parametrize("name", SWEEP_BREAKS)
def test_sweep_check_can_fail(quick, name):
    summary, _ = _parts(quick[0])
    config, n = C.Config(**C.QUICK), summary.seed.nunique()
    assert _by_name(C._sweep_checks(summary, config, n))[name].passed is True  # control
    broken = _break(summary, *SWEEP_BREAKS[name])
    assert _by_name(C._sweep_checks(broken, config, n))[name].passed is False


RL_BREAKS = {
    "random_labels_fitted": (lambda r: r.index[r.labels == "random"], "train_acc", 0.9),
    "random_labels_test_chance": (lambda r: r.index[r.labels == "random"], "test_acc", 0.3),
    "random_slower_than_true": (lambda r: r.index[r.labels == "true"], "train_acc", 0.5),
    "true_labels_generalize": (lambda r: r.index[r.labels == "true"], "test_acc", 0.2),
}


@pytest.mark.parametrize("name", RL_BREAKS)
def test_random_label_check_can_fail(quick, name):
    _, rl = _parts(quick[0])
    assert _by_name(C._random_label_checks(rl, 1))[name].passed is True  # control
    broken = _break(rl, *RL_BREAKS[name])
    assert _by_name(C._random_label_checks(broken, 1))[name].passed in (False, None)


def test_too_few_epochs_is_not_reproduced():
    """A broken set-up (too few epochs to overfit or to memorise) must not reproduce the claim."""
    result = dd.run_study("capacity", quick=True, widths=(1, 2, 4), depths=(0, 1, 2), epochs=10,
                          rl_n_train=100, rl_max_epochs=1)
    assert result.verdict == "not reproduced"
    failed = {c.name for c in result.checks if c.passed is False}
    assert {"overfit_largest_train", "random_labels_fitted"} <= failed


@pytest.mark.slow
def test_full_mode_reproduced(tmp_path):
    result = dd.run_study("capacity", out=tmp_path)
    assert result.verdict == "reproduced", str(result)
    assert len(result.seeds) >= 3
