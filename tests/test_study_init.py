"""The init study: quick mode reproduces the claims; each check is computed from the data and can fail."""

import numpy as np
import pytest

import deepdiag as dd
from deepdiag.studies import init as study


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return dd.run_study("init", quick=True, out=tmp_path_factory.mktemp("out"))


def test_quick_reproduced_with_data_and_figures(quick):
    assert quick.verdict == "reproduced", str(quick)
    checks = {c.name: c for c in quick.checks}
    assert checks["He+ReLU keeps q"].measured == pytest.approx(1.0, abs=0.1)
    assert checks["LeCun+ReLU halves q"].measured == pytest.approx(0.5, abs=0.05)
    assert checks["edge of chaos σ_w²"].measured == pytest.approx(1.76, abs=0.01)
    data = quick.data
    circ = data[data.experiment == "circles"].set_index("init")
    assert circ.loc["zeros", "train_acc"] == 50.0 and circ.loc["zeros", "test_acc"] == 50.0
    assert circ.loc["he", "test_acc"] >= 90 and circ.loc["he", "unit_spread"] > 1e-3  # He breaks symmetry
    deep = data[(data.experiment == "he2015") & (data.epoch == data.epoch.max())].set_index("init")
    assert deep.loc["lecun", "train_loss"] > 2.0 and deep.loc["he", "train_loss"] < 1.0
    assert "sqrt(1/n_in)" in quick.claim and "2/(n_in + n_out)" in quick.claim
    assert len(quick.figures) == 4 and set(data.experiment) == {"variance", "chaos", "circles", "he2015"}


def test_circles_data_is_the_courses():
    xtr, ytr, xte, yte = study.circles_data()
    assert xtr.shape == (2, 300) and xte.shape == (2, 100) and ytr.mean() == 0.5
    np.random.seed(1)
    from sklearn.datasets import make_circles
    x, _ = make_circles(n_samples=300, noise=0.05)  # the course's global-seed call
    np.testing.assert_array_equal(x.T, xtr)


def test_unit_asymmetry():
    same = [np.ones((3, 2)), np.ones((1, 3))]
    assert study.unit_asymmetry(same) == 0.0
    assert study.unit_asymmetry([np.array([[1.0, 2.0], [1.0, 2.5]]), np.ones((1, 2))]) == 0.5


def _recheck(quick, mutate):
    data = quick.data.copy()
    mutate(data)
    config = study.Config(**{**study.QUICK})
    return {c.name: c for c in study._checks(config, quick.seeds, data)}


def _scale_layer_q(d, init, act, factor):
    m = (d.experiment == "variance") & (d.init == init) & (d.activation == act)
    d.loc[m, "q"] = d.loc[m, "q"] * factor ** (d.loc[m, "layer"] - 1)


def _set(d, experiment, init, column, value):
    d.loc[(d.experiment == experiment) & (d.init == init), column] = value


CASES = {
    "He+ReLU keeps q": lambda d: _scale_layer_q(d, "he", "relu", 0.8),
    "LeCun+ReLU halves q": lambda d: _scale_layer_q(d, "lecun", "relu", 2.0),
    "small random vanishes": lambda d: _scale_layer_q(d, "small", "relu", 1.5),
    "all schemes vs mean field": lambda d: _scale_layer_q(d, "orthogonal", "tanh", 1.3),
    "zero/constant init is one unit": lambda d: _set(d, "variance", "zeros", "unit_spread", 1.0),
    "tanh perturbation growth = χ_1": lambda d: d.loc.__setitem__((d.experiment == "chaos", "growth"), 1.05),
    "zeros at chance": lambda d: _set(d, "circles", "zeros", "train_acc", 52.0),
    "hidden units stay identical": lambda d: _set(d, "circles", "constant", "unit_spread", 1e-3),
    "He trains": lambda d: _set(d, "circles", "he", "test_acc", 80.0),
    "large random worse than He": lambda d: _set(d, "circles", "large", "test_acc", 99.0),
    "course's published accuracies": lambda d: _set(d, "circles", "large", "train_acc", 90.0),
    "30-layer 1/n init stalls": lambda d: _set(d, "he2015", "lecun", "train_loss", 1.0),
    "30-layer He init trains": lambda d: _set(d, "he2015", "he", "train_loss", 2.3),
}


@pytest.mark.parametrize("name", CASES)
def test_each_check_can_fail(quick, name):
    checks = _recheck(quick, CASES[name])
    assert checks[name].passed is False, checks[name]


def test_edge_of_chaos_check_can_fail(quick, monkeypatch):
    monkeypatch.setattr(study.meanfield, "critical_sigma_w2", lambda sb2, act="tanh": 2.0)
    assert _recheck(quick, lambda d: None)["edge of chaos σ_w²"].passed is False


@pytest.mark.parametrize("bad", [dict(width=1), dict(sigma_w2s=(1.0, -2.0)), dict(chaos_transient=100),
                                 dict(he_min_test=150.0), dict(stall_fraction=1.5), dict(lr=0.0)])
def test_bad_knobs(bad):
    with pytest.raises(ValueError):
        dd.run_study("init", quick=True, **bad)


@pytest.mark.slow
def test_full_mode():
    assert dd.run_study("init").verdict == "reproduced"
