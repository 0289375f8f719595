"""Signal propagation in depth: the deep linear chain, random Gaussian chains, and mean-field theory.

Three levels of theory, from exact to asymptotic, that the ``vanishing``, ``init`` and ``precision``
studies hold their measurements against.

**1. The seed's deep linear chain** (no activation, no bias). Layers 1 … L−1 are ``W = a·I`` (n × n),
the last layer ``w_L`` is whatever the output needs (the seed: "except for the last layer because it
has different dimensions")::

    h_0 = x,   h_l = a·h_(l−1)  (l = 1 … L−1),   ŷ = w_L · h_(L−1) = a^(L−1) · w_L x

so ‖h_l‖ = a^l‖x‖ and ŷ = a^(L−1)·(w_L x) exactly. Back-propagating the output itself (∂ŷ/∂ŷ = 1,
one output unit, w_L a row vector u)::

    ∂ŷ/∂h_l  = a^(L−1−l) · u                        geometric from the output back to the input
    ∂ŷ/∂W_l  = ∂ŷ/∂h_l · h_(l−1)ᵀ = a^(L−2) · u xᵀ   the SAME for every layer l = 1 … L−1
    ∂ŷ/∂w_L  = h_(L−1)ᵀ = a^(L−1) xᵀ

The weight gradient of every layer vanishes (a < 1) or explodes (a > 1) with the *total* depth, while
the back-propagated signal decays layer by layer — the two faces of the seed's sentence "the gradients
will vanish".

**2. Random Gaussian chains.** For W with i.i.d. N(0, a²/n) entries and any fixed h ≠ 0,
‖W h‖²/‖h‖² ~ a²·χ²_n/n exactly (rotational invariance), independently from layer to layer. Hence
E[‖h_L‖²] = a^(2L)‖x‖², and the log growth per layer has

    E[ln(‖Wh‖/‖h‖)]   = ln a + ½(ψ(n/2) − ln(n/2))  ≈ ln a − 1/(2n)
    Var[ln(‖Wh‖/‖h‖)] = ¼ ψ'(n/2)                   ≈ 1/(2n)

(ψ the digamma function): the geometric-mean ratio of successive layer norms is a·e^(½(ψ(n/2)−ln(n/2)))
≈ a·(1 − 1/(2n)), with a standard error of ½√(ψ'(n/2)/(L·k)) over L layers and k independent chains.

**3. Mean-field variance propagation** (Poole et al. 2016, "Exponential expressivity in deep neural
networks through transient chaos"; Schoenholz et al. 2017, "Deep information propagation"). In a wide
net with weights N(0, σ_w²/n_in) and biases N(0, σ_b²), the pre-activations z_l of layer l are Gaussian
over units with second moment q_l::

    q_1 = σ_w² · ‖x‖²/n_0 + σ_b²
    q_l = σ_w² · E_z[φ(√q_(l−1) z)²] + σ_b²,   z ~ N(0, 1)

ReLU: E[relu(√q z)²] = q/2, so q_l = (σ_w²/2)·q_(l−1) + σ_b²: He init (σ_w² = 2) keeps q constant,
LeCun (σ_w² = 1) halves it at every layer, a small std s gives a factor n·s²/2 (geometric vanishing).
tanh: the map has a fixed point q*; a small perturbation of the input grows or shrinks per layer by

    χ_1 = σ_w² · E_z[φ'(√q* z)²]

ordered phase χ_1 < 1 (inputs' correlations converge to 1, gradients vanish), chaotic phase χ_1 > 1
(nearby inputs decorrelate, gradients explode), the edge of chaos at χ_1 = 1: σ_w² ≈ 1.76 for
σ_b² = 0.05 (Schoenholz et al. 2017, Fig. 1). ReLU: χ_1 = σ_w²/2, critical at He's σ_w² = 2.

Gaussian expectations are computed with Gauss–Hermite quadrature (probabilists' Hermite nodes from
numpy, exact for polynomials of degree < 2·deg) for smooth φ; ReLU and linear use closed forms, since
the kink at 0 makes quadrature converge slowly.

>>> critical_sigma_w2(0.05, "tanh")    # ≈ 1.76
>>> variance_recursion(1.0, 5, sigma_w2=1.0, activation="relu")   # 1, 0.5, 0.25, ...
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from ._validate import check_choice, check_number

__all__ = [
    "ACTIVATIONS", "linear_chain_output", "linear_chain_signal", "linear_chain_weight_grad",
    "gaussian_chain_log_rate", "gaussian_expectation", "variance_map", "variance_recursion",
    "fixed_point", "chi1", "critical_sigma_w2", "symmetric_chain", "sigma_w2_of_std",
    "relu_log_moment_variance",
]

ACTIVATIONS = ("relu", "tanh", "linear")
QUADRATURE_DEGREE = 101


# --- 1. the deep linear chain -------------------------------------------------------------------

def linear_chain_output(a: float, depth: int, last_times_x: float | np.ndarray) -> float | np.ndarray:
    """ŷ = a^(L−1) · (w_L x): the output of the seed's chain of L layers, L−1 of them a·I.

    `last_times_x` is w_L x, the last layer applied to the input (for the seed's 2×2 example with a
    last layer equal to a·I as well, pass a·x)."""
    check_number("depth", depth, low=1, integer=True)
    return a ** (depth - 1) * last_times_x


def linear_chain_signal(a: float, depth: int, layer: int | np.ndarray, last_norm: float = 1.0):
    """‖∂ŷ/∂h_l‖ = a^(L−1−l)·‖w_L‖: the back-propagated signal at the output of layer l (0 … L−1)."""
    check_number("depth", depth, low=1, integer=True)
    return a ** (depth - 1 - np.asarray(layer, dtype=float)) * last_norm


def linear_chain_weight_grad(a: float, depth: int, x_norm: float = 1.0, last_norm: float = 1.0) -> float:
    """‖∂ŷ/∂W_l‖_F = a^(L−2)·‖w_L‖·‖x‖, equal for every one of the L−1 layers a·I (depth ≥ 2)."""
    check_number("depth", depth, low=2, integer=True)
    return a ** (depth - 2) * last_norm * x_norm


# --- 2. random Gaussian chains ------------------------------------------------------------------

def gaussian_chain_log_rate(a: float, n: int) -> tuple[float, float]:
    """(mean, variance) of ln(‖W h‖/‖h‖) for W ~ N(0, a²/n) i.i.d. of shape n × n, any fixed h.

    ‖Wh‖²/‖h‖² = a²·χ²_n/n, and E[ln χ²_n] = ψ(n/2) + ln 2, Var[ln χ²_n] = ψ'(n/2), so
    mean = ln a + ½(ψ(n/2) − ln(n/2)) (≈ ln a − 1/(2n)) and variance = ¼ψ'(n/2) (≈ 1/(2n))."""
    check_number("a", a, low=0.0, low_inclusive=False)
    check_number("n", n, low=1, integer=True)
    from scipy import special  # scipy loads with the first function that needs it

    mean = math.log(a) + 0.5 * (special.digamma(n / 2) - math.log(n / 2))
    return float(mean), float(0.25 * special.polygamma(1, n / 2))


# --- 3. mean-field theory -----------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _nodes(deg: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite_e.hermegauss(deg)  # weight exp(-x²/2); Σw = √(2π)
    return x, w / math.sqrt(2.0 * math.pi)


def gaussian_expectation(f: Callable[[np.ndarray], np.ndarray], deg: int = QUADRATURE_DEGREE) -> float:
    """E[f(z)] for z ~ N(0, 1) by Gauss–Hermite quadrature with `deg` nodes (exact for polynomials of
    degree < 2·deg; smooth f converges fast, a kink like ReLU's only algebraically)."""
    check_number("deg", deg, low=1, integer=True)
    x, w = _nodes(deg)
    return float(np.dot(w, f(x)))


def _phi(activation: str) -> tuple[Callable, Callable]:
    if activation == "tanh":
        return np.tanh, lambda u: 1.0 / np.cosh(u) ** 2
    if activation == "relu":
        return lambda u: np.maximum(u, 0.0), lambda u: (u > 0).astype(float)
    return lambda u: u, lambda u: np.ones_like(u)


def _second_moment(q: float, activation: str, derivative: bool = False) -> float:
    """E[φ(√q z)²] (or E[φ'(√q z)²]): closed forms for relu and linear, quadrature for tanh."""
    if activation == "relu":
        return 0.5 if derivative else 0.5 * q
    if activation == "linear":
        return 1.0 if derivative else q
    phi, dphi = _phi(activation)
    f = dphi if derivative else phi
    s = math.sqrt(max(q, 0.0))
    return gaussian_expectation(lambda z: f(s * z) ** 2)


def variance_map(q: float, sigma_w2: float, sigma_b2: float = 0.0, activation: str = "tanh") -> float:
    """One layer of the mean-field recursion: σ_w²·E[φ(√q z)²] + σ_b² (the next pre-activation moment)."""
    activation = check_choice("activation", activation, ACTIVATIONS)
    check_number("q", q, low=0.0)
    check_number("sigma_w2", sigma_w2, low=0.0)
    check_number("sigma_b2", sigma_b2, low=0.0)
    return sigma_w2 * _second_moment(q, activation) + sigma_b2


def variance_recursion(input_moment: float, depth: int, sigma_w2: float, sigma_b2: float = 0.0,
                       activation: str = "tanh") -> np.ndarray:
    """[q_1, …, q_depth]: pre-activation second moments of hidden layers 1 … depth.

    q_1 = σ_w²·input_moment + σ_b² with input_moment = ‖x‖²/n_0 (the input is not passed through φ),
    then q_l = variance_map(q_(l−1)). Per layer, relu multiplies q by σ_w²/2 (for σ_b² = 0)."""
    check_number("input_moment", input_moment, low=0.0)
    check_number("depth", depth, low=1, integer=True)
    activation = check_choice("activation", activation, ACTIVATIONS)
    qs = [sigma_w2 * input_moment + sigma_b2]
    for _ in range(depth - 1):
        qs.append(variance_map(qs[-1], sigma_w2, sigma_b2, activation))
    return np.array(qs)


def fixed_point(sigma_w2: float, sigma_b2: float, activation: str = "tanh", q0: float = 1.0,
                tol: float = 1e-13, max_iter: int = 10_000) -> float:
    """q* = variance_map(q*) for a bounded φ (tanh), found by iterating the map from q0 (it is a
    contraction toward q* for tanh). ValueError for relu/linear, whose map has no finite attracting
    fixed point unless σ_w² is below the critical value (then q* = σ_b²/(1 − σ_w²·c))."""
    activation = check_choice("activation", activation, ACTIVATIONS)
    if activation != "tanh":
        slope = sigma_w2 * (0.5 if activation == "relu" else 1.0)
        if slope >= 1.0:
            raise ValueError(f"no finite fixed point for {activation} with sigma_w2={sigma_w2!r} "
                             f"(the map grows q by {slope:g} per layer); use sigma_w2 below {1 / (slope / sigma_w2):g}")
        return sigma_b2 / (1.0 - slope)
    q = q0
    for _ in range(max_iter):
        new = variance_map(q, sigma_w2, sigma_b2, activation)
        if abs(new - q) <= tol * max(1.0, q):
            return new
        q = new
    return q


def chi1(sigma_w2: float, sigma_b2: float = 0.0, activation: str = "tanh", q: float | None = None) -> float:
    """χ_1 = σ_w²·E[φ'(√q z)²] at the fixed point q = q* (or the `q` given): the factor by which a
    small perturbation's squared norm grows per layer. χ_1 = 1 is the order-to-chaos boundary.
    Schoenholz et al. (2017), Eq. 5; for relu χ_1 = σ_w²/2 for every q."""
    activation = check_choice("activation", activation, ACTIVATIONS)
    if activation == "relu":
        return sigma_w2 / 2.0
    if activation == "linear":
        return sigma_w2
    if q is None:
        q = fixed_point(sigma_w2, sigma_b2, activation)
    return sigma_w2 * _second_moment(q, activation, derivative=True)


def critical_sigma_w2(sigma_b2: float, activation: str = "tanh") -> float:
    """σ_w² on the edge of chaos, χ_1(σ_w², σ_b²) = 1, solved with Brent's method.
    tanh: 1 at σ_b² = 0 (q* = 0, φ'(0) = 1), ≈ 1.76 at σ_b² = 0.05; relu: 2 (He); linear: 1."""
    check_number("sigma_b2", sigma_b2, low=0.0)
    activation = check_choice("activation", activation, ACTIVATIONS)
    if activation == "relu":
        return 2.0
    if activation == "linear" or sigma_b2 == 0.0:
        return 1.0
    from scipy import optimize

    return float(optimize.brentq(lambda s: chi1(s, sigma_b2, activation) - 1.0, 1.0, 20.0, xtol=1e-12))


def symmetric_chain(s0: np.ndarray, depth: int, gain: float, activation: str = "relu") -> np.ndarray:
    """Exact pre-activations of a constant-init net (every weight c, no bias, width n): all units of a
    layer share one value, s_1 = c·Σ_j x_j given as `s0`, s_l = gain·φ(s_(l−1)) with gain = c·n.
    Returns an array (depth, *s0.shape). The layer acts like a single unit (the seed's "symmetric")."""
    check_number("depth", depth, low=1, integer=True)
    activation = check_choice("activation", activation, ACTIVATIONS)
    phi, _ = _phi(activation)
    out = [np.asarray(s0, dtype=float)]
    for _ in range(depth - 1):
        out.append(gain * phi(out[-1]))
    return np.stack(out)


def relu_log_moment_variance(widths) -> float:
    """Var[ln(q_L/q_1)] ≈ 5·Σ_l 1/n_l for one input through a He-initialised ReLU net whose layers 2 … L
    have widths n_l (Hanin & Nica 2019, "Products of many large random matrices and gradients in deep
    neural networks"): the finite-width spread around the mean-field q. Per layer 5/n: 2/n from the
    χ² of the Gaussian weights, 3/n from the random number of active units. It bounds the spread of a
    moment averaged over a batch of inputs, which shares the weights but averages the rest."""
    widths = list(widths)
    for n in widths:
        check_number("width", n, low=1, integer=True)
    return 5.0 * sum(1.0 / n for n in widths)


def sigma_w2_of_std(std: float, fan_in: int) -> float:
    """σ_w² = fan_in · std²: the mean-field weight scale of an init with standard deviation `std`."""
    return fan_in * std**2
