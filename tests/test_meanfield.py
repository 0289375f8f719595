"""Mean-field and linear-chain theory against closed forms, exact computation and Monte Carlo."""
import math

import numpy as np
import pytest
import torch

from deepdiag import meanfield as mf


def test_gauss_hermite_moments():
    assert mf.gaussian_expectation(lambda z: z**2) == pytest.approx(1.0, abs=1e-12)
    assert mf.gaussian_expectation(lambda z: z**4) == pytest.approx(3.0, abs=1e-10)
    assert mf.gaussian_expectation(lambda z: np.cos(z)) == pytest.approx(math.exp(-0.5), abs=1e-12)


def test_linear_chain_closed_forms_match_matrix_powers():
    a, L = 0.9, 12
    x = np.array([0.3, -1.2])
    u = np.array([0.6, 0.8])
    chain = np.linalg.matrix_power(a * np.eye(2), L - 1)
    assert float(u @ chain @ x) == pytest.approx(mf.linear_chain_output(a, L, float(u @ x)), rel=1e-12)
    assert mf.linear_chain_signal(1.1, 10, 0) == pytest.approx(1.1**9)
    assert mf.linear_chain_signal(1.1, 10, 9) == pytest.approx(1.0)
    assert mf.linear_chain_weight_grad(0.9, 5, x_norm=2.0, last_norm=3.0) == pytest.approx(0.9**3 * 6.0)


def test_gaussian_chain_log_rate_against_monte_carlo_and_asymptotics():
    mean, var = mf.gaussian_chain_log_rate(1.1, 64)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(20000, 64, generator=gen, dtype=torch.float64) * (1.1 / 8)  # rows of W h with h = e_1·1
    logs = 0.5 * torch.log((w**2).sum(1))  # ‖W e_1‖ = norm of a column ~ ‖N(0, a²/n I_n)‖
    assert float(logs.mean()) == pytest.approx(mean, abs=4 * math.sqrt(var / 20000))
    assert float(logs.var()) == pytest.approx(var, rel=0.05)
    big_mean, big_var = mf.gaussian_chain_log_rate(1.0, 4096)
    assert big_mean == pytest.approx(-1 / (2 * 4096), rel=1e-3)
    assert big_var == pytest.approx(1 / (2 * 4096), rel=1e-3)


def test_relu_recursion_closed_form():
    q = mf.variance_recursion(2.0, 6, sigma_w2=1.0, sigma_b2=0.0, activation="relu")
    np.testing.assert_allclose(q, 2.0 * 0.5 ** np.arange(6))
    np.testing.assert_allclose(mf.variance_recursion(1.0, 5, 2.0, 0.0, "relu"), np.full(5, 2.0))
    assert mf.variance_map(3.0, 2.0, 0.1, "relu") == pytest.approx(3.1)


def test_tanh_variance_map_against_quadrature_free_integral():
    from scipy import integrate
    q, sw2, sb2 = 0.7, 1.5, 0.05
    exact = integrate.quad(lambda z: np.tanh(math.sqrt(q) * z) ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi),
                           -np.inf, np.inf)[0]
    assert mf.variance_map(q, sw2, sb2, "tanh") == pytest.approx(sw2 * exact + sb2, rel=1e-10)


def test_fixed_point_and_chi1():
    qs = mf.fixed_point(1.5, 0.05, "tanh")
    assert mf.variance_map(qs, 1.5, 0.05, "tanh") == pytest.approx(qs, rel=1e-10)
    assert mf.chi1(1.0, 0.0, "tanh", q=0.0) == pytest.approx(1.0, abs=1e-12)  # tanh'(0) = 1
    assert mf.chi1(0.5, 0.0, "tanh") == pytest.approx(0.5, abs=1e-9)  # ordered: q* = 0
    assert mf.chi1(2.0, 0.0, "relu") == 1.0
    assert mf.fixed_point(1.0, 0.1, "relu") == pytest.approx(0.2)  # q = q/2 + 0.1
    with pytest.raises(ValueError, match="no finite fixed point"):
        mf.fixed_point(2.0, 0.1, "relu")


def test_critical_sigma_w2():
    assert mf.critical_sigma_w2(0.0, "tanh") == 1.0
    assert mf.critical_sigma_w2(0.05, "relu") == 2.0
    crit = mf.critical_sigma_w2(0.05, "tanh")
    assert crit == pytest.approx(1.76, abs=0.01)  # Schoenholz et al. 2017, Fig. 1
    assert mf.chi1(crit, 0.05, "tanh") == pytest.approx(1.0, abs=1e-9)
    assert mf.critical_sigma_w2(0.1, "tanh") > crit  # the boundary moves right with σ_b²


def test_symmetric_chain():
    s = mf.symmetric_chain(np.array([-1.0, 0.5]), 4, 2.0, "relu")
    np.testing.assert_allclose(s, [[-1.0, 0.5], [0.0, 1.0], [0.0, 2.0], [0.0, 4.0]])


def test_relu_log_moment_variance_against_monte_carlo():
    n, L, S = 64, 8, 1500
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(S, n, 1, generator=gen, dtype=torch.float64)
    first = None
    for layer in range(L):
        w = torch.randn(S, n, n, generator=gen, dtype=torch.float64) * math.sqrt(2 / n)
        h = torch.bmm(w, h if layer == 0 else torch.relu(h))
        if layer == 0:
            first = h.pow(2).sum((1, 2)).log()
    measured = float((h.pow(2).sum((1, 2)).log() - first).var())
    assert measured == pytest.approx(mf.relu_log_moment_variance([n] * (L - 1)), rel=0.25)


@pytest.mark.parametrize("bad", [dict(activation="sine"), dict(q=-1.0), dict(sigma_w2=-1.0)])
def test_bad_arguments(bad):
    kw = dict(q=1.0, sigma_w2=1.0, sigma_b2=0.0, activation="tanh") | bad
    with pytest.raises(ValueError):
        mf.variance_map(**kw)
