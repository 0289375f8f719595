"""The l2 study: quick mode reproduces, its theory helpers match closed forms, each check can fail."""
import math

import numpy as np
import pytest
import torch

import deepdiag as dd
from deepdiag.studies import l2 as L


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("l2")
    return dd.run_study("l2", quick=True, out=out), out


def _by_name(checks):
    return {c.name: c for c in checks}


def _parts(result):
    data = result.data
    return data[data.experiment == "sweep"].copy(), data[data.experiment == "equivalence"].copy()


def test_quick_reproduced_with_expected_numbers(quick):
    result, out = quick
    assert result.verdict == "reproduced", str(result)
    assert len(result.seeds) == 2
    checks = _by_name(result.checks)
    assert checks["l2_equals_sgd_weight_decay"].measured < 1e-12
    assert checks["adamw_differs_from_adam_l2"].measured > 0.05
    assert checks["largest_lambda_underfits"].measured == pytest.approx(math.log(10), rel=0.02)
    assert checks["intermediate_lambda_beats_zero"].measured > 0.05
    sweep, eq = _parts(result)
    assert (sweep.groupby("lam").train_acc.mean().iloc[0]) == pytest.approx(1.0)  # λ = 0 memorises
    folder = out / "l2"
    names = sorted(p.split("/")[-1] for p in result.figures)
    assert names == ["l2_linear.png", "l2_sweep.png", "l2_weight_decay.png"]
    assert all((folder / n).stat().st_size > 10_000 for n in names)
    assert (folder / "data.csv").exists() and (folder / "result.json").exists()


def test_zero_gradient_weights_follow_both_predictions(quick):
    """AdamW decays a zero-gradient weight by (1 − η·wd) per step; Adam + L2 moves it by ≈ η per step."""
    _, eq = _parts(quick[0])
    adam = eq[eq.family == "adam"]
    init = adam.unused_norm_init.iloc[0]
    adamw_theory = init * (1 - adam.lr * adam.wd) ** adam.step
    np.testing.assert_allclose(adam.unused_norm_decay, adamw_theory, rtol=1e-9)
    np.testing.assert_allclose(adam.unused_norm_l2, adam.unused_norm_l2_theory, rtol=1e-9)


def test_adam_on_penalty_matches_torch_adam():
    w0 = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=1e-2)
    norms = [float(w.detach().norm())]
    for _ in range(300):
        opt.zero_grad()
        (0.5 * 0.03 * w.pow(2).sum()).backward()
        opt.step()
        norms.append(float(w.detach().norm()))
    np.testing.assert_allclose(L.adam_on_penalty(w0.numpy(), 1e-2, 0.03, 300), norms, rtol=1e-10)
    # step 1: m̂/√v̂ = sign(w), so each |w| falls by lr whatever c is
    first = np.abs(w0.numpy()) - 1e-2
    assert L.adam_on_penalty(w0.numpy(), 1e-2, 1e-4, 1)[1] == pytest.approx(np.linalg.norm(first), rel=1e-6)


# ---- theory helpers ----

def test_tanh_nonlinearity_small_sigma_series():
    for s in (1e-3, 1e-2, 3e-2):
        assert L.tanh_nonlinearity(s) == pytest.approx(math.sqrt(15) / 3 * s**2, rel=5 * s**2 + 1e-6)


def test_tanh_nonlinearity_matches_monte_carlo_and_limits():
    z = np.random.default_rng(0).standard_normal(400_000)
    for s in (0.3, 1.0, 3.0):
        mc = math.sqrt(np.mean((np.tanh(s * z) - s * z) ** 2) / np.mean((s * z) ** 2))
        assert L.tanh_nonlinearity(s) == pytest.approx(mc, rel=5e-3)
    assert L.tanh_nonlinearity(1e3) == pytest.approx(1.0, abs=2e-3)
    assert np.all(np.diff(L.tanh_nonlinearity(np.logspace(-3, 2, 50))) > 0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_stable_lambda_limit_on_the_penalty_alone(momentum):
    """Heavy-ball SGD on (λ/2n)·w² converges just below the limit and diverges just above it."""
    lr, n = 0.1, 100
    limit = L.stable_lambda_limit(lr, momentum, n)

    def final(lam):
        w = torch.tensor([1.0], requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum)
        for _ in range(2000):
            opt.zero_grad()
            (lam / (2 * n) * w.pow(2).sum()).backward()
            opt.step()
        return abs(float(w.detach()))

    assert final(0.95 * limit) < 1e-3
    grown = final(1.05 * limit)
    assert not math.isfinite(grown) or grown > 1e3


@pytest.mark.parametrize("bad", [dict(lams=(0.1, 1.0, 10.0, 100.0)), dict(lams=(0.0, 1.0, 10.0)),
                                 dict(lams=(0.0, 10.0, 1.0, 100.0)), dict(lams=(0.0, 1.0, 10.0, 1e5)),
                                 dict(activation="swish"), dict(momentum=1.0), dict(eq_lam=0.0)])
def test_config_rejects_bad_knobs(bad):
    with pytest.raises(ValueError):
        L.Config(**bad)


def test_unstable_lambda_message_names_the_bound():
    with pytest.raises(ValueError, match="unstable.*λ < 380"):
        L.Config(lams=(0.0, 1.0, 10.0, 1e4))


# ---- every check can fail ----

def _lam_rows(frame, which):
    lams = sorted(frame.lam.unique())
    return frame.index[frame.lam == lams[which]]


SWEEP_BREAKS = {  # check name -> (rows, column, value)
    "weight_norm_decreases": (lambda s: _lam_rows(s, -2), "weight_norm", 1e3),
    "train_loss_increases": (lambda s: _lam_rows(s, 1), "train_loss", 0.0),
    "intermediate_lambda_beats_zero": (lambda s: _lam_rows(s, 0), "val_loss", 0.1),
    "largest_lambda_underfits": (lambda s: _lam_rows(s, -1), "train_loss", 1.0),
    "preactivation_spread_collapses": (lambda s: _lam_rows(s, -1), "z_spread", 0.5),
}
EQ_BREAKS = {
    "l2_equals_sgd_weight_decay": (lambda e: e.index[e.family == "sgd"], "max_abs_diff", 1e-3),
    "adamw_differs_from_adam_l2": (lambda e: e.index[e.family == "adam"], "rel_diff", 1e-12),
}


def _break(frame, rows, column, value):
    frame = frame.copy()
    frame.loc[rows(frame), column] = value
    return frame


@pytest.mark.parametrize("name", list(SWEEP_BREAKS) + list(EQ_BREAKS))
def test_each_check_can_fail(quick, name):
    result = quick[0]
    sweep, eq = _parts(result)
    config, n = L.Config(**L.QUICK), len(result.seeds)
    assert _by_name(L._checks(sweep, eq, config, n))[name].passed is True  # control
    if name in SWEEP_BREAKS:
        sweep = _break(sweep, *SWEEP_BREAKS[name])
    else:
        eq = _break(eq, *EQ_BREAKS[name])
    assert _by_name(L._checks(sweep, eq, config, n))[name].passed is False


def test_one_seed_leaves_the_u_shape_inconclusive(quick):
    sweep, eq = _parts(quick[0])
    one = sweep[sweep.seed == sweep.seed.min()]
    check = _by_name(L._checks(one, eq, L.Config(**L.QUICK), 1))["intermediate_lambda_beats_zero"]
    assert check.passed is None


def test_l2_without_overfitting_is_not_reproduced():
    """Enough data and few epochs: λ = 0 no longer overfits, so no intermediate λ beats it."""
    result = dd.run_study("l2", quick=True, n_train=1000, width=16, epochs=3, eq_epochs=2)
    assert result.verdict == "not reproduced"
    assert _by_name(result.checks)["intermediate_lambda_beats_zero"].passed is False


@pytest.mark.slow
def test_full_mode_reproduced(tmp_path):
    result = dd.run_study("l2", out=tmp_path)
    assert result.verdict == "reproduced", str(result)
    assert len(result.seeds) >= 3
