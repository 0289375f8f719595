"""The precision study: quick mode reproduces (with its conditions); each check can fail."""
import pytest
import torch

import deepdiag as dd
from deepdiag.studies import precision as study


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return dd.run_study("precision", quick=True, out=tmp_path_factory.mktemp("out"))


def test_quick_reproduced_with_data_and_figures(quick):
    assert quick.verdict == "reproduced", str(quick)
    err = quick.data[quick.data.experiment == "depth_error"]
    he = err[(err.net == "he_relu") & (err["mode"] == "example")]
    assert he.rel_error.max() < 1e-5
    chaos = err[(err.net == "tanh_chaotic") & (err["mode"] == "batch") & (err.depth == 128)]
    assert chaos.rel_error.min() > 0.1
    fd = quick.data[quick.data.experiment == "gradcheck"].set_index("dtype")
    assert fd.loc["float64", "rel_error"] < 1e-7 < 2e-7 < fd.loc["float32", "rel_error"]
    assert "does NOT hold" in quick.notes and "holds" in quick.notes
    assert len(quick.figures) == 2


def test_gradient_error_is_zero_for_same_precision_arithmetic():
    model = dd.mlp(4, 3, width=8, depth=2, seed=0).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    assert study.gradient_error(model, x, y) < 1e-12  # a float64 "float32" run: nothing to lose


def test_central_difference_catches_a_wrong_gradient(monkeypatch):
    model = dd.mlp(4, 3, width=5, depth=2, activation="tanh", init="xavier", seed=0).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    assert study.central_difference_check(model, x, y, 1e-7) < 1e-7
    true_grad = study._grad
    monkeypatch.setattr(study, "_grad", lambda m, a, b: true_grad(m, a, b) * 1.001)  # a 0.1 % bug
    assert study.central_difference_check(model, x, y, 1e-7) > 2e-7


def test_each_check_can_fail():
    """Ordered tanh (no chaos), a bound 100× tighter and a huge ε: all three checks fail."""
    result = dd.run_study("precision", quick=True, chaos_sigma_w2=1.0, bound_const=0.01, fd_eps=0.5,
                          depths=(2, 32), examples=2)
    assert result.verdict == "not reproduced"
    assert [c.passed for c in result.checks] == [False, False, False], str(result)


@pytest.mark.parametrize("bad", [dict(depths=(8,)), dict(depths=(8, 4)), dict(width=1), dict(fd_eps=0.0),
                                 dict(chaos_sigma_w2=-1.0)])
def test_bad_knobs(bad):
    with pytest.raises(ValueError):
        dd.run_study("precision", quick=True, **bad)


@pytest.mark.slow
def test_full_mode():
    assert dd.run_study("precision").verdict == "reproduced"
