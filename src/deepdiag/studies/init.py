"""init — weight initialisation: zero init is symmetric, too small/too large random init vanishes or
explodes, Xavier suits tanh and He suits ReLU.

Claim. The first seed text ("Weights initialization"):

    "Zero initialization: No randomness in weights. The model behaves like a linear model because the
    hidden layers become symmetric. … Random initialization: … If randomly initialized weights are
    high, and considering the ReLU activation …, the output will be high … (Exploding gradient).
    However, if randomly initialized weights are low, then output activation will be mapped to 0 …
    (Vanishing gradient). Xavier/Glorot initialization: … Var(w) = sqrt(1/n_in) … most widely used in
    case of tanh() activation. He initialization: … ReLU … Var(w) = sqrt(2/n_in)."

Theory (``deepdiag.meanfield``). In a wide net with weights of variance σ_w²/n_in (σ_w² = n_in·std²)
and biases of variance σ_b², the pre-activations of layer l have second moment
q_l = σ_w²·E[φ(√q_(l−1) z)²] + σ_b² (Poole et al. 2016). For ReLU, E[relu(√q z)²] = q/2, so q is
multiplied by σ_w²/2 at every layer: He (σ_w² = 2) keeps it constant, LeCun/Xavier on square layers
(σ_w² = 1) halve it, std 0.01 at n = 256 multiplies it by 0.0128 (vanishes geometrically), std 1
multiplies it by 128 (explodes). For tanh, perturbations grow per layer by χ_1 = σ_w²·E[φ'(√q* z)²] at
the fixed point q*; χ_1 = 1 is the order-to-chaos boundary, σ_w² ≈ 1.76 for σ_b² = 0.05 (Schoenholz
et al. 2017), computed here by Gauss–Hermite quadrature and Brent's method. Zero or constant weights make
every unit of a layer compute the same value and receive the same gradient, so no amount of gradient
descent makes them differ: the layer acts as one unit (``meanfield.symmetric_chain``).

Set-up, four parts (experiment column of the data):
- ``variance``: ``dd.mlp(n, 1, width=n, depth=D, bias=False)`` in float64 for each scheme (zeros,
  constant 1/n, normal std 0.01, normal std 1, Xavier, LeCun, He, orthogonal) × (relu, tanh), inputs
  x ~ N(0, I_n); q_l = mean of squared pre-activations over batch and units, against the recursion.
- ``chaos``: deep tanh nets with weights N(0, σ_w²/n), biases N(0, 0.05), for σ_w² around the edge of
  chaos; a perturbation of relative size 1e-6 is pushed through, and its per-layer growth after a
  transient is held against χ_1.
- ``circles``: the Deep Learning Specialization's (course 2, week 1, "Initialization") set-up exactly:
  make_circles(300, noise .05) after np.random.seed(1) for training, (100, noise .05) after seed(2) for
  test; layers [2, 10, 5, 1], ReLU, sigmoid output, cross-entropy, full-batch gradient descent lr 0.01,
  15 000 iterations, float64; weights drawn like the course (numpy ``randn`` in layer order after
  ``np.random.seed(3 + seed)``, so seed 0 is the course's own draw), biases zero: zeros, constant 0.5,
  randn×10, He randn·√(2/n_prev). The loss uses BCE-with-logits (the same gradient a3 − y as the
  course's hand-written backward pass, without the course's log(0) = inf for randn×10). All runs train
  as one batched model in a tight loop (15 000 dd.fit epochs would be mostly Python overhead).
- ``he2015``: He et al. 2015 ("Delving deep into rectifiers", Fig. 3): a 30-layer ReLU MLP (29 hidden
  layers of width 128 and the output layer) on digits, SGD momentum 0.9, lr 3e-3, batch 32, 30 epochs,
  with Var = 1/n_in (their "Xavier", as Caffe implements it) against He's Var = 2/n_in.

Runs. The ``he2015`` nets are ``RunConfig``s trained through the sweep layer
(``deepdiag.study.train_runs``). The other parts stay direct: ``variance`` and ``chaos`` are forward
passes at initialisation (exact computations), and ``circles`` is not a ``dd.mlp`` + ``dd.fit`` run (the
course's own numpy weight draws and data, trained as one batched float64 model).

Threads: the tensors here are tiny (a 10-unit layer, a 128-wide MLP), where intra-op threading costs more
than it saves, and far more on a busy machine (one batched step measured 13 ms on 2 contended threads
against 0.2 ms on 1); ``measure`` therefore runs on one thread and restores the caller's setting.

Figures. ``variance_by_layer``: q_l against layer for every scheme, relu and tanh panels, mean-field
lines and measured points (zeros has q = 0 and is off the log axis). ``edge_of_chaos``: χ_1 against σ_w²
(line) with the measured per-layer growth (points) and the boundary 1.76. ``circles_accuracy``: train
and test accuracy by init, mean ± spread over seeds, with the course's published numbers. ``he2015``:
training loss per epoch of the 30-layer nets with ln 10 (chance) marked.

Where the seed is loose or wrong. "Var(w) = sqrt(1/n_in)" is a standard deviation, not a variance:
the variance is 1/n_in, which is LeCun's init; Glorot's own normalised init is Var = 2/(n_in + n_out)
(the two agree only for square layers). He's "Var(w) = sqrt(2/n_in)" is likewise the std of Var = 2/n_in.
"Behaves like a linear model" overstates it: the symmetric net is a chain of single units — still
non-linear, but with the width of one unit (with exactly zero weights and ReLU it is a constant). And
large random weights with ReLU make the *output* explode (q grows by n·std²/2 per layer), while with a
sigmoid output they saturate it, which is why randn×10 trains erratically rather than "slowly".
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn import datasets as skd

from .. import meanfield, plots
from .._validate import check_number
from ..init import init_weights, scheme_std
from ..models import mlp, seeded
from ..study import Measurement, Study, check_close, check_rule, torch_threads, train_runs
from ..runs import RunConfig

LN10 = math.log(10.0)
# name -> (library scheme, options); "small"/"large" are the seed's low/high random init
SCHEMES = {
    "zeros": ("zeros", {}), "constant": ("constant", {}), "small": ("normal", {"std": 0.01}),
    "large": ("normal", {"std": 1.0}), "xavier": ("xavier", {}), "lecun": ("lecun", {}),
    "he": ("he", {}), "orthogonal": ("orthogonal", {}),
}
CIRCLES_INITS = ("zeros", "constant", "large", "he")  # large = randn×10 in the course
PUBLISHED = {"zeros": (50.0, 50.0), "large": (83.0, 86.0), "he": (99.33, 96.0)}  # DLS train/test %
CIRCLES_LAYERS = (2, 10, 5, 1)


@dataclass(frozen=True)
class Config:
    """Knobs of the init study (full-mode defaults)."""

    width: int = 256                 # variance part: n
    depth: int = 30                  # variance part: hidden layers
    batch: int = 256                 # variance part: inputs per net
    rate_sigmas: float = 3.0         # allowed |ln(measured/mean-field)| per-layer factor of q, in standard errors
    sigma_b2: float = 0.05           # chaos part: bias variance
    sigma_w2s: tuple = (1.2, 1.5, 1.76, 2.2, 3.0, 4.0)
    chaos_width: int = 256
    chaos_depth: int = 40
    chaos_transient: int = 10        # layers skipped before the growth is measured
    chi_tol: float = 0.1             # allowed relative error of the measured growth against χ_1
    iterations: int = 15_000         # circles: full-batch gradient-descent steps
    lr: float = 0.01
    large_scale: float = 10.0        # circles: randn × this
    constant_value: float = 0.5      # circles: every weight this value
    he_min_test: float = 90.0        # circles: He's mean test accuracy must reach this (%)
    published_tol: float = 1.0       # circles, course seed: points of accuracy from the published numbers
    deep_depth: int = 29             # he2015: hidden layers (+ output = 30 weight layers)
    deep_width: int = 128
    deep_epochs: int = 30
    deep_lr: float = 3e-3
    deep_batch: int = 32
    stall_fraction: float = 0.9      # he2015: "at chance" = training loss >= this × ln 10

    def __post_init__(self):
        for name in ("width", "depth", "batch", "chaos_width", "chaos_depth", "iterations", "deep_depth",
                     "deep_width", "deep_epochs", "deep_batch"):
            check_number(name, getattr(self, name), low=2, integer=True)
        check_number("chaos_transient", self.chaos_transient, low=0, high=self.chaos_depth - 2, integer=True)
        check_number("stall_fraction", self.stall_fraction, low=0.5, high=1.0)
        for name in ("rate_sigmas", "chi_tol", "lr", "large_scale", "deep_lr", "published_tol"):
            check_number(name, getattr(self, name), low=0.0, low_inclusive=False)
        check_number("sigma_b2", self.sigma_b2, low=0.0, low_inclusive=False)
        check_number("constant_value", self.constant_value)
        check_number("he_min_test", self.he_min_test, low=0.0, high=100.0)
        if not self.sigma_w2s or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0
                                     for s in self.sigma_w2s):
            raise ValueError(f"sigma_w2s={self.sigma_w2s!r} must be a non-empty sequence of positive numbers")


QUICK = {"width": 128, "depth": 20, "batch": 128, "sigma_w2s": (1.2, 1.76, 3.0), "chaos_width": 128,
         "chaos_depth": 30, "deep_width": 64, "deep_epochs": 12}


# --- part 1: variance propagation -----------------------------------------------------------------

def _scheme_sigma_w2(name: str, n: int) -> float:
    scheme, opts = SCHEMES[name]
    return meanfield.sigma_w2_of_std(scheme_std(scheme, n, n, **opts), n)


def _variance_rows(config: Config, seeds: list[int]) -> list[dict]:
    n, depth = config.width, config.depth
    rows = []
    for act in ("relu", "tanh"):
        for name, (scheme, opts) in SCHEMES.items():
            if scheme == "constant":
                opts = {"value": 1.0 / n}  # c·n = 1: the symmetric chain neither shrinks nor grows
            for seed in seeds:
                with seeded(seed):
                    model = mlp(n, 1, width=n, depth=depth, activation=act, init="default", bias=False).double()
                    init_weights(model, scheme, **opts)
                    x = torch.randn(config.batch, n, dtype=torch.float64)  # (batch, n)
                input_moment = float(x.pow(2).mean())
                if name == "constant":
                    theory = (meanfield.symmetric_chain(x.sum(1).numpy() / n, depth, 1.0, act) ** 2).mean(1)
                else:
                    theory = meanfield.variance_recursion(input_moment, depth, _scheme_sigma_w2(name, n), 0.0, act)
                h = x
                with torch.no_grad():
                    for layer, block in enumerate(model.hidden, start=1):
                        z = block.linear(h)  # (batch, n) pre-activations
                        spread = float((z.max(1).values - z.min(1).values).abs().max())  # across units
                        rows.append({"experiment": "variance", "activation": act, "init": name, "seed": seed,
                                     "layer": layer, "q": float(z.pow(2).mean()), "theory": float(theory[layer - 1]),
                                     "unit_spread": spread})
                        h = block.act(z)
    return rows


def _rate(sub: pd.DataFrame, depth: int) -> tuple[float, float]:
    """(measured, mean-field) per-layer factor of q over layers 1 … depth, ln averaged over seeds."""
    first, last = sub[sub.layer == 1].set_index("seed"), sub[sub.layer == depth].set_index("seed")
    with np.errstate(divide="ignore"):
        meas = float(np.mean(np.log(last.q / first.q))) / (depth - 1)
        theo = float(np.mean(np.log(last.theory / first.theory))) / (depth - 1)
    return math.exp(meas), math.exp(theo)


# --- part 2: the edge of chaos --------------------------------------------------------------------

def _chaos_rows(config: Config, seeds: list[int]) -> list[dict]:
    n, depth, t0 = config.chaos_width, config.chaos_depth, config.chaos_transient
    rows = []
    for si, sw2 in enumerate(config.sigma_w2s):
        theory = meanfield.chi1(sw2, config.sigma_b2, "tanh")
        for seed in seeds:
            with seeded(1000 * seed + si):
                model = mlp(n, 1, width=n, depth=depth, activation="tanh", init="default").double()
                init_weights(model, "normal", std=math.sqrt(sw2 / n), bias_std=math.sqrt(config.sigma_b2))
                x = torch.randn(32, n, dtype=torch.float64)
                delta = torch.randn(32, n, dtype=torch.float64)
            eps = 1e-6 * x.norm(dim=1, keepdim=True) / delta.norm(dim=1, keepdim=True)
            h, hp = x, x + eps * delta
            norms = []
            with torch.no_grad():
                for block in model.hidden:
                    z, zp = block.linear(h), block.linear(hp)
                    norms.append((zp - z).pow(2).sum(1))  # (32,) squared perturbation of pre-activations
                    h, hp = torch.tanh(z), torch.tanh(zp)
            growth = torch.log(norms[-1] / norms[t0]).mean().item() / (depth - 1 - t0)
            rows.append({"experiment": "chaos", "sigma_w2": sw2, "seed": seed, "chi1": theory,
                         "growth": math.exp(growth), "q": float(z.pow(2).mean()),
                         "q_star": meanfield.fixed_point(sw2, config.sigma_b2, "tanh")})
    return rows


# --- part 3: the course's circles -----------------------------------------------------------------

def circles_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The Deep Learning Specialization's load_dataset(): (train_X (2, 300), train_Y, test_X (2, 100), test_Y)."""
    xtr, ytr = skd.make_circles(n_samples=300, noise=0.05, random_state=np.random.RandomState(1))
    xte, yte = skd.make_circles(n_samples=100, noise=0.05, random_state=np.random.RandomState(2))
    return xtr.T, ytr, xte.T, yte


def circles_init(name: str, seed: int, config: Config) -> list[np.ndarray]:
    """Weights [W1 (10, 2), W2 (5, 10), W3 (1, 5)] as the course draws them after np.random.seed(3 + seed)."""
    rs = np.random.RandomState(3 + seed)
    ws = []
    for fan_out, fan_in in zip(CIRCLES_LAYERS[1:], CIRCLES_LAYERS[:-1]):
        if name == "zeros":
            ws.append(np.zeros((fan_out, fan_in)))
        elif name == "constant":
            ws.append(np.full((fan_out, fan_in), config.constant_value))
        elif name == "large":
            ws.append(rs.randn(fan_out, fan_in) * config.large_scale)
        else:  # he
            ws.append(rs.randn(fan_out, fan_in) * math.sqrt(2.0 / fan_in))
    return ws


def train_circles(runs: list[tuple[str, int]], config: Config) -> dict:
    """Full-batch gradient descent of every run at once (a batch of R separate nets), float64.

    Returns weights before and after, and train/test accuracy (%) per run."""
    xtr, ytr, xte, yte = circles_data()
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr).double()
    r = len(runs)
    init = [circles_init(name, seed, config) for name, seed in runs]
    ws = [torch.from_numpy(np.stack([w[l] for w in init])).requires_grad_(True) for l in range(3)]  # (R, out, in)
    bs = [torch.zeros(r, n, 1, dtype=torch.float64, requires_grad=True) for n in CIRCLES_LAYERS[1:]]
    params = ws + bs

    def forward(inputs: torch.Tensor) -> torch.Tensor:  # inputs (2, m) -> logits (R, m)
        a = inputs.expand(r, -1, -1)
        for layer in range(3):
            z = torch.baddbmm(bs[layer], ws[layer], a)  # (R, out, m)
            a = torch.relu(z) if layer < 2 else z
        return z.squeeze(1)

    target = y.expand(r, -1)
    for _ in range(config.iterations):
        logits = forward(x)
        # mean cross-entropy per run, summed over runs: each run's gradient is its own (a3 − y)/m
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1).sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(config.lr * g)
    with torch.no_grad():
        acc_tr = ((forward(x) > 0).double() == y).double().mean(1) * 100  # sigmoid(z) > 0.5 ⇔ z > 0
        acc_te = ((forward(torch.from_numpy(xte)) > 0).double() == torch.from_numpy(yte).double()).double().mean(1) * 100
        final_loss = torch.nn.functional.binary_cross_entropy_with_logits(
            forward(x), target, reduction="none").mean(1)
    return {"init": init, "final": [[w[i].detach().numpy().copy() for w in ws] for i in range(r)],
            "train_acc": acc_tr.tolist(), "test_acc": acc_te.tolist(), "loss": final_loss.tolist()}


def unit_asymmetry(weights: list[np.ndarray]) -> float:
    """Max over hidden layers of the max pairwise difference between units' incoming weight rows."""
    worst = 0.0
    for w in weights[:-1]:  # hidden layers (the output layer has one unit)
        diff = np.abs(w[:, None, :] - w[None, :, :]).max()
        worst = max(worst, float(diff))
    return worst


def _circles_rows(config: Config, seeds: list[int]) -> list[dict]:
    all_seeds = sorted(set(seeds) | {0})  # seed 0 is the course's own draw, for the published numbers
    runs = [(name, s) for name in CIRCLES_INITS for s in all_seeds]
    out = train_circles(runs, config)
    rows = []
    for i, (name, seed) in enumerate(runs):
        moved = max(float(np.abs(a - b).max()) for a, b in zip(out["final"][i], out["init"][i]))
        rows.append({"experiment": "circles", "init": name, "seed": seed, "in_stats": seed in seeds,
                     "train_acc": out["train_acc"][i], "test_acc": out["test_acc"][i], "loss": out["loss"][i],
                     "unit_spread": unit_asymmetry(out["final"][i]), "moved": moved})
    return rows


# --- part 4: He et al. 2015, a 30-layer ReLU MLP ----------------------------------------------------

def _he2015_configs(config: Config, seeds: list[int]) -> list[RunConfig]:
    """seeds × {lecun, he}: the 30-layer ReLU MLP on digits split by the seed, SGD with momentum 0.9."""
    base = RunConfig(dataset="digits", width=config.deep_width, depth=config.deep_depth, activation="relu",
                     optimizer="sgd", lr=config.deep_lr, momentum=0.9, batch_size=config.deep_batch,
                     epochs=config.deep_epochs)
    return [dataclasses.replace(base, init=name, seed=seed, data_seed=seed)
            for seed in seeds for name in ("lecun", "he")]


def _he2015_rows(config: Config, seeds: list[int]) -> list[dict]:
    runs = _he2015_configs(config, seeds)
    rows = []
    for run, result in zip(runs, train_runs(runs)):  # the training runs go through the sweep layer
        hist = result.to_history()
        for epoch, tl, va in zip(hist.epoch, hist.train_loss, hist.val_acc):
            rows.append({"experiment": "he2015", "init": run.init, "seed": run.seed, "epoch": epoch,
                         "train_loss": tl, "val_acc": va * 100})
    return rows


# --- checks ---------------------------------------------------------------------------------------

def _checks(config: Config, seeds: list[int], data: pd.DataFrame) -> list:
    checks = []
    var = data[data.experiment == "variance"]
    depth, n = config.depth, config.width
    rates = {}
    for (act, name), sub in var.groupby(["activation", "init"]):
        if name not in ("zeros", "constant"):
            rates[(act, name)] = _rate(sub, depth)
    # finite-width spread of the per-layer ln-factor: Var ln(q_L/q_1) ≈ 5(L−1)/n per seed (Hanin & Nica 2019)
    se = math.sqrt(meanfield.relu_log_moment_variance([n] * (depth - 1)) / len(seeds)) / (depth - 1)
    tol = config.rate_sigmas * se
    s = f"{len(seeds)} seed(s), width {n}, depth {depth}; tolerance {config.rate_sigmas:g} standard errors √(5/(n(L−1)S))"
    meas, theo = rates[("relu", "he")]
    checks.append(check_close("He+ReLU keeps q", "He init (σ_w² = 2) with ReLU: q constant in depth",
                              meas, theo, rtol=tol,
                              detail=f"per-layer factor of q, (q_L/q_1)^(1/(L−1)); {s}"))
    meas, theo = rates[("relu", "lecun")]
    checks.append(check_close("LeCun+ReLU halves q", "Var = 1/n_in (the seed's 'Xavier') with ReLU: q halves per layer",
                              meas, theo, rtol=tol, detail=f"theory σ_w²/2 = 0.5; {s}"))
    meas, theo = rates[("relu", "small")]
    checks.append(check_close("small random vanishes", "std 0.01 with ReLU: q shrinks geometrically by n·0.01²/2 per layer",
                              meas, theo, rtol=tol, detail=f"theory {theo:.4g} per layer; {s}"))
    worst_key = max(rates, key=lambda k: abs(math.log(rates[k][0] / rates[k][1])))
    worst = abs(math.log(rates[worst_key][0] / rates[worst_key][1]))
    checks.append(check_rule(
        "all schemes vs mean field", "every random scheme × {relu, tanh}: q's per-layer factor follows the recursion",
        worst, f"<= {tol:.3g}", f"max |ln(measured factor / mean-field factor)| <= {tol:.3g}",
        worst <= tol, f"worst {worst_key[1]}+{worst_key[0]}: {rates[worst_key][0]:.4g} vs "
        f"{rates[worst_key][1]:.4g}; {len(rates)} pairs; {s}", tolerance=tol))
    sym = var[var.init.isin(["zeros", "constant"])]
    sym_err = float(((sym.q - sym.theory).abs() / sym.theory.abs().clip(lower=1e-300)).where(sym.theory != 0, sym.q.abs()).max())
    spread = float(sym.unit_spread.max())
    checks.append(check_rule(
        "zero/constant init is one unit", "zero or constant weights: every unit of a layer has the same value",
        f"spread {spread:.2g}, q error {sym_err:.2g}", "<= 1e-12",
        "max spread across units <= 1e-12 and |q − symmetric chain| / q <= 1e-12",
        spread <= 1e-12 and sym_err <= 1e-12, f"zeros: q = 0 at every layer; constant 1/n: s_l = φ(s_(l−1)); "
        f"{len(seeds)} seed(s), width {n}, depth {depth}"))

    crit = meanfield.critical_sigma_w2(config.sigma_b2, "tanh")
    if config.sigma_b2 == 0.05:
        checks.append(check_close("edge of chaos σ_w²", "tanh, σ_b² = 0.05: χ_1 = 1 at σ_w² ≈ 1.76 (Schoenholz et al. 2017)",
                                  crit, 1.76, rtol=0.01, detail="Gauss–Hermite (101 nodes) + Brent; the paper reads 1.76 off its Fig. 1"))
    chaos = data[data.experiment == "chaos"].groupby("sigma_w2").agg(growth=("growth", lambda g: math.exp(np.log(g).mean())),
                                                                       chi1=("chi1", "first"))
    err = float((chaos.growth / chaos.chi1 - 1).abs().max())
    sides = bool(((chaos.growth < 1) == (chaos.index < crit)).all())
    checks.append(check_rule(
        "tanh perturbation growth = χ_1", "a deep tanh net shrinks perturbations below the boundary and grows them above, by χ_1 per layer",
        err, f"<= {config.chi_tol:g}", f"max |growth/χ_1 − 1| <= {config.chi_tol:g} and growth < 1 exactly when σ_w² < {crit:.3f}",
        err <= config.chi_tol and sides,
        "; ".join(f"σ_w²={k:g}: {r.growth:.3f} vs {r.chi1:.3f}" for k, r in chaos.iterrows())
        + f"; width {config.chaos_width}, depth {config.chaos_depth}, {len(seeds)} seed(s)", tolerance=config.chi_tol))

    circ = data[data.experiment == "circles"]
    stats = circ[circ.in_stats].groupby("init")[["train_acc", "test_acc"]].agg(["mean", "min", "max"])
    zeros = circ[circ.init == "zeros"]
    chance = bool(((zeros.train_acc == 50.0) & (zeros.test_acc == 50.0)).all())
    checks.append(check_rule(
        "zeros at chance", "zero init on the course's circles: exactly 50 % train and test (every seed)",
        f"{zeros.train_acc.min():.1f}–{zeros.train_acc.max():.1f} / {zeros.test_acc.min():.1f}–{zeros.test_acc.max():.1f}",
        "50 / 50", "train == 50 and test == 50 for every seed", chance, f"{len(zeros)} runs, {config.iterations} iterations"))
    sym_runs = circ[circ.init.isin(["zeros", "constant"])]
    spread = float(sym_runs.unit_spread.max())
    moved = float(circ[circ.init == "constant"].moved.min())
    checks.append(check_rule(
        "hidden units stay identical", "zero/constant init: after training, every hidden unit of a layer has identical incoming weights",
        spread, "< 1e-6", "max pairwise difference of units' incoming weights < 1e-6 (zeros and constant), "
        "though constant-init weights moved > 1e-3", spread < 1e-6 and moved > 1e-3,
        f"constant {config.constant_value:g}: weights moved by up to {moved:.3g} yet stayed identical; {len(sym_runs)} runs"))
    he_test = float(stats.loc["he", ("test_acc", "mean")])
    checks.append(check_rule(
        "He trains", "He init on the course's circles reaches high test accuracy", he_test, f">= {config.he_min_test:g}",
        f"mean test accuracy (%) >= {config.he_min_test:g}", he_test >= config.he_min_test,
        f"train {stats.loc['he', ('train_acc', 'mean')]:.1f} %, test {stats.loc['he', ('test_acc', 'min')]:.0f}–"
        f"{stats.loc['he', ('test_acc', 'max')]:.0f} %; {len(seeds)} seed(s)"))
    large_test = float(stats.loc["large", ("test_acc", "mean")])
    checks.append(check_rule(
        "large random worse than He", f"randn×{config.large_scale:g} trains worse than He on average",
        large_test, f"< He {he_test:.1f}", "mean test accuracy of large < mean test accuracy of He", large_test < he_test,
        f"large: train {stats.loc['large', ('train_acc', 'mean')]:.1f} %, test {stats.loc['large', ('test_acc', 'min')]:.0f}–"
        f"{stats.loc['large', ('test_acc', 'max')]:.0f} %; {len(seeds)} seed(s)"))
    course = circ[circ.seed == 0].set_index("init")
    gaps = {k: max(abs(course.loc[k, "train_acc"] - tr), abs(course.loc[k, "test_acc"] - te)) for k, (tr, te) in PUBLISHED.items()}
    default_setup = config.iterations == 15_000 and config.lr == 0.01 and config.large_scale == 10.0
    checks.append(check_rule(
        "course's published accuracies", "the course's own draw (np.random.seed(3)) gives its published train/test accuracies",
        ", ".join(f"{k} {course.loc[k, 'train_acc']:.1f}/{course.loc[k, 'test_acc']:.0f}" for k in PUBLISHED),
        ", ".join(f"{k} {tr:g}/{te:g}" for k, (tr, te) in PUBLISHED.items()),
        f"every |measured − published| <= {config.published_tol:g} points",
        (max(gaps.values()) <= config.published_tol) if default_setup else None,
        "only comparable with the course's 15000 iterations, lr 0.01, randn×10" if not default_setup else
        f"largest gap {max(gaps.values()):.2f} points"))

    deep = data[data.experiment == "he2015"]
    final = deep[deep.epoch == deep.epoch.max()].groupby("init").train_loss.agg(["mean", "min", "max"])
    chance = config.stall_fraction * LN10
    lecun = deep[deep.init == "lecun"].sort_values("epoch")
    # epochs at chance before the loss first drops below stall_fraction·ln 10 (all of them if it never does)
    plateau = lecun.groupby("seed").train_loss.apply(lambda v: int(np.argmin(v.to_numpy() >= chance))
                                                     if (v.to_numpy() < chance).any() else len(v))
    n_epochs = int(deep.epoch.max())
    stuck = int(plateau.min())
    checks.append(check_rule(
        "30-layer 1/n init stalls", "He et al. 2015: with Var = 1/n_in a 30-layer ReLU net stalls at chance",
        stuck, f">= {n_epochs / 2:g} of {n_epochs} epochs",
        f"on every seed the training loss stays >= {config.stall_fraction:g}·ln 10 = {chance:.3f} (chance) "
        "for at least half of the epochs", stuck >= n_epochs / 2,
        f"epochs at chance per seed: {plateau.tolist()}; final loss {final.loc['lecun', 'min']:.3f}–"
        f"{final.loc['lecun', 'max']:.3f} (He: {final.loc['he', 'max']:.3f} at most); {config.deep_depth + 1} weight "
        f"layers, width {config.deep_width}, {len(seeds)} seed(s)"))
    he_max = float(final.loc["he", "max"])
    checks.append(check_rule(
        "30-layer He init trains", "He et al. 2015: with Var = 2/n_in the same net trains",
        he_max, f"<= 0.5·ln 10 = {0.5 * LN10:.3f}", "largest final training loss over seeds <= 0.5·ln 10",
        he_max <= 0.5 * LN10, f"mean {final.loc['he', 'mean']:.3f}; {len(seeds)} seed(s)"))
    return checks


def measure(config: Config, seeds: list[int]) -> Measurement:
    with torch_threads(1):  # also when measure() is called directly
        rows = (_variance_rows(config, seeds) + _chaos_rows(config, seeds) + _circles_rows(config, seeds)
                + _he2015_rows(config, seeds))
    data = pd.DataFrame(rows)
    notes = ("The seed's 'Var(w) = sqrt(1/n_in)' is the standard deviation: Var = 1/n_in is LeCun's init; "
             "Glorot's normalised init is Var = 2/(n_in + n_out). Circles seed 0 is the course's own draw "
             "(np.random.seed(3)); the other seeds use np.random.seed(3 + seed).")
    return Measurement(_checks(config, seeds, data), data, notes)


def plot(result, out_dir) -> list:
    data, figures = result.data, []
    var = data[data.experiment == "variance"]
    fig, axes = plots.figure(2, width=6.0, height=4.8)
    for ax, act in zip(axes, ("relu", "tanh")):
        for i, (name, sub) in enumerate(var[(var.activation == act) & (var.init != "zeros")].groupby("init", sort=False)):
            g = sub.groupby("layer")[["q", "theory"]].agg(lambda v: math.exp(np.log(v).mean()))
            color = f"C{i}"
            plots.theory(ax, g.index, g.theory, label=None, color=color)
            plots.measured(ax, g.index[::2], g.q.to_numpy()[::2], label=name, color=color)
        ax.set_yscale("log")
        plots.label(ax, "layer l", "q_l = mean squared pre-activation",
                    f"{act}: points measured, lines mean-field (zeros: q = 0)", fontsize=7, ncol=2)
    figures.append(plots.save(fig, out_dir, "variance_by_layer"))

    chaos = data[data.experiment == "chaos"]
    fig, (ax,) = plots.figure()
    sb2 = float(result.config["sigma_b2"])
    grid = np.linspace(1.0, max(4.0, chaos.sigma_w2.max()), 60)
    plots.theory(ax, grid, [meanfield.chi1(s, sb2, "tanh") for s in grid], label="χ_1 (mean field)")
    plots.measured(ax, chaos.sigma_w2, chaos.growth, label="measured growth per layer")
    crit = meanfield.critical_sigma_w2(sb2, "tanh")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axvline(crit, color="grey", ls="--", lw=0.8, label=f"edge of chaos σ_w² = {crit:.3f}")
    plots.label(ax, "σ_w² (weight variance × fan-in)", "growth of a small perturbation per layer",
                f"tanh, σ_b² = {sb2:g}: ordered vs chaotic", fontsize=8)
    figures.append(plots.save(fig, out_dir, "edge_of_chaos"))

    circ = data[(data.experiment == "circles") & data.in_stats]
    fig, (ax,) = plots.figure(width=6.0)
    names = list(dict.fromkeys(circ.init))
    pos = np.arange(len(names))
    for off, col, label in ((-0.15, "train_acc", "train"), (0.15, "test_acc", "test")):
        g = circ.groupby("init")[col].agg(["mean", "min", "max"]).loc[names]
        yerr = np.clip(np.vstack([g["mean"] - g["min"], g["max"] - g["mean"]]), 0, None)
        plots.measured(ax, pos + off, g["mean"], yerr=yerr, label=f"{label} (mean, min–max over seeds)")
    for k, (tr, te) in PUBLISHED.items():
        if k in names:
            i = names.index(k)
            ax.plot([i - 0.15, i + 0.15], [tr, te], "kx", ms=8, label="course, published" if k == "zeros" else None)
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xticks(pos, [{"large": "randn×10"}.get(n, n) for n in names])
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Course's circles, [2, 10, 5, 1] ReLU, GD 15000 steps")
    ax.legend(fontsize=7)
    figures.append(plots.save(fig, out_dir, "circles_accuracy"))

    deep = data[data.experiment == "he2015"]
    fig, (ax,) = plots.figure()
    for name, label in (("lecun", "Var = 1/n_in"), ("he", "He, Var = 2/n_in")):
        g = deep[deep.init == name].groupby("epoch").train_loss.agg(["mean", "min", "max"])
        plots.measured(ax, g.index, g["mean"], yerr=np.clip(np.vstack([g["mean"] - g["min"], g["max"] - g["mean"]]), 0, None), label=label)
    ax.axhline(LN10, color="grey", ls="--", lw=1, label="ln 10 (chance)")
    plots.label(ax, "epoch", "training loss (cross-entropy, nats)", "30-layer ReLU MLP on digits (He et al. 2015)",
                fontsize=8)
    figures.append(plots.save(fig, out_dir, "he2015"))
    return figures


STUDY = Study(
    name="init",
    claim='"Zero initialization: … The model behaves like a linear model because the hidden layers become '
          'symmetric. … if randomly initialized weights are high, and considering the ReLU activation …, the output '
          'will be high … (Exploding gradient). However, if randomly initialized weights are low, then output '
          'activation will be mapped to 0 … (Vanishing gradient). Xavier/Glorot: Var(w) = sqrt(1/n_in) … tanh. '
          'He: … ReLU … Var(w) = sqrt(2/n_in)." (The square roots are standard deviations: Var = 1/n_in is LeCun\'s '
          'init, Glorot\'s own is Var = 2/(n_in + n_out); He\'s is Var = 2/n_in.)',
    theory="Mean field: q_l = σ_w²·E[φ(√q_(l−1) z)²] + σ_b² with σ_w² = n_in·Var(w). ReLU: q × σ_w²/2 per layer "
           "(He: constant; Var = 1/n_in: halves; std 0.01: vanishes; std 1: explodes). tanh: perturbations grow by "
           "χ_1 = σ_w²·E[φ'(√q* z)²] per layer; χ_1 = 1 at σ_w² ≈ 1.76 for σ_b² = 0.05. Zero/constant weights: "
           "all units of a layer identical forever (gradient descent cannot break the symmetry).",
    config=Config, quick=QUICK, measure=measure, plot=plot,
    quick_time=4.1,  # measured on 2 CPU cores (deepdiag run all --quick)
)
