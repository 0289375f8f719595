"""The vanishing study: quick mode reproduces the seed's deep linear chain; its checks can fail."""
import pandas as pd
import pytest

import deepdiag as dd
from deepdiag.studies import vanishing


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("out")


@pytest.fixture(scope="module")
def quick(out_dir):
    return dd.run_study("vanishing", quick=True, out=out_dir)


def test_quick_reproduced_with_data_and_figures(quick, out_dir):
    assert quick.verdict == "reproduced", str(quick)
    checks = {c.name: c for c in quick.checks}
    for a in ("0.9", "1", "1.1"):
        assert checks[f"output a={a}"].measured < 1e-12  # exact in float64
    data = quick.data
    out = data[(data.experiment == "identity_output") & (data.depth == 100)].set_index("a")
    assert ((out.output / out.theory - 1).abs() < 1e-12).all()
    assert out.theory[0.9] / out.theory[1.0] == pytest.approx(0.9**99, rel=1e-12)
    assert out.theory[1.1] / out.theory[1.0] == pytest.approx(1.1**99, rel=1e-12)
    assert set(data.experiment) == {"identity_output", "identity_gradients", "random_chain"}
    assert all(0.97 < checks[f"random W rate a={a}"].measured / float(a) < 1.01 for a in ("0.9", "1", "1.1"))
    assert len(quick.figures) == 3
    assert all((out_dir / "vanishing" / name).is_file() for name in quick.figures)  # relative to its folder
    folder = pd.read_csv(out_dir / "vanishing" / "data.csv")
    assert len(folder) == len(data)


def test_same_seed_same_numbers():
    a = vanishing.measure(vanishing.Config(max_depth=20, grad_depths=(2, 20), random_width=16,
                                           random_depth=10, random_chains=2), [3])
    b = vanishing.measure(vanishing.Config(max_depth=20, grad_depths=(2, 20), random_width=16,
                                           random_depth=10, random_chains=2), [3])
    pd.testing.assert_frame_equal(a.data, b.data)


def test_shallow_chain_does_not_vanish():
    """At L = 10, 0.9^9 = 0.39: no orders of magnitude, so the 'vanish and explode' check fails."""
    result = dd.run_study("vanishing", quick=True, max_depth=10, grad_depths=(2, 10), random_depth=10, random_width=16)
    checks = {c.name: c for c in result.checks}
    assert checks["vanish and explode"].passed is False and result.verdict == "not reproduced"
    assert checks["output a=0.9"].passed is True  # the exact law still holds


def test_rate_check_fails_against_wrong_theory(monkeypatch):
    """A theory 5 % off the true rate lies far outside the statistical tolerance."""
    true = vanishing.meanfield.gaussian_chain_log_rate
    monkeypatch.setattr(vanishing.meanfield, "gaussian_chain_log_rate", lambda a, n: (true(a, n)[0] + 0.05, true(a, n)[1]))
    result = dd.run_study("vanishing", quick=True)
    rates = [c for c in result.checks if c.name.startswith("random W rate")]
    assert rates and all(c.passed is False for c in rates)


@pytest.mark.parametrize("bad", [dict(a_values=(0.9, -1.0)), dict(max_depth=1), dict(grad_depths=(1,)),
                                 dict(grad_depths=(200,)), dict(rtol=0.0), dict(random_chains=0)])
def test_bad_knobs(bad):
    with pytest.raises(ValueError):
        dd.run_study("vanishing", quick=True, **bad)


@pytest.mark.slow
def test_full_mode():
    assert dd.run_study("vanishing").verdict == "reproduced"
