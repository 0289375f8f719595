"""L2 regularisation: the penalty λ/(2n)·‖w‖² shrinks the weights, and an intermediate λ generalises best.

The claim
---------
The first seed text (Eq. 1) adds ``λ/(2n)·‖w‖²`` to the loss, n the number of training samples, and
says: "If λ is large, weights will be relatively smaller ... Which means zeroing out the impact of
hidden units and deep network will become linear. For very large values of lambda, the model moves from
overfitting scenario to underfitting. So selection of some intermediate value of λ will help".

The theory, in plain words
--------------------------
* Gradient descent on ``J = L + λ/(2n)·Σw²`` takes ``w ← w − η(∇L + (λ/n)·w)``: every step first
  shrinks each weight by the factor (1 − ηλ/n), then follows the data gradient. Larger λ means a
  smaller weight norm ‖w‖ at the end and a larger training loss L (the optimum trades L against ‖w‖; for
  a convex L, ‖w*(λ)‖ is non-increasing and L(w*(λ)) non-decreasing in λ).
* That update is *exactly* ``torch.optim.SGD(weight_decay=λ/n)`` on the weights (with or without
  momentum: the decay enters the gradient before the momentum buffer). Adam is different: it divides
  every gradient, the penalty's included, by a running RMS √v̂. A weight whose data gradient is zero (here:
  the input weights of pixels that are constant on the training set) sees g = (λ/n)·w only, so
  m̂/√v̂ ≈ sign(w) and Adam + L2 moves it toward 0 by ≈ η per step *whatever λ is*, then more
  slowly as v̂ remembers the larger past gradients (``adam_on_penalty`` runs that recursion exactly);
  a weight with large data gradients is hardly decayed at all. AdamW (Loshchilov & Hutter
  2019, "Decoupled weight decay regularization") applies ``w ← w − η·wd·w`` outside the Adam scaling,
  so every weight decays by the same factor (1 − η·wd) per step; a zero-gradient weight follows
  (1 − η·wd)^t exactly. So AdamW(weight_decay=wd) equals Adam + L2 for no λ; the study measures it.
* "Zeroing out the impact of hidden units": with small weights the hidden pre-activations
  z = W₁x + b₁ are small, and tanh(z) = z − z³/3 + … is linear there. For z ~ N(0, σ²) the relative
  nonlinearity r(σ) = √(E[(tanh z − z)²] / E[z²]) ≈ (√15/3)·σ² (``tanh_nonlinearity``), so the network
  does become linear as λ grows. At very large λ it goes one step further: the weights go to 0, the
  hidden layer's spread over samples collapses and the output is its bias — the best *constant*
  predictor, whose loss is the chance loss, the entropy of the class frequencies (ln 10 ≈ 2.303 for
  balanced digits; ``deepdiag.studies.capacity.chance_loss``). That is underfitting.

The set-up
----------
``digits`` (8×8, 10 classes) with only n_train = 100 training images (10 per class) so that an
unregularised 1×256 tanh MLP (Xavier init) memorises them; validation on 359 held-out images. SGD with
momentum 0.9, lr 0.1, batch 50, for ``epochs`` epochs, with ``dd.fit(l2=λ)`` for λ on a log grid that
includes 0 and a very large value (1000: a per-step decay of ηλ/n = 1, still inside the stability bound
ηλ/n < 2(1 + β) = 3.8 of ``stable_lambda_limit``; the Config refuses λ beyond it). These runs are
``RunConfig``s trained through the sweep layer (``deepdiag.study.train_runs``). Only end-of-training
numbers are needed, so ``dd.fit`` runs without per-epoch evaluation (``eval_train=False``,
``val_split=None``) and the trained model is measured once, by the probes ``final_eval``, ``weight_norm``
and ``hidden_stats``: training and validation loss and accuracy, ‖w‖ (all weight matrices, not biases),
the spread (std over training samples, RMS over units) of the hidden pre-activations and their relative
nonlinearity ‖tanh(z) − z‖/‖z‖. The seed-to-seed spread is the sample standard deviation over seeds, each seed
drawing its own training subset, split, initial weights and batch order. Because the split moves the
validation loss of *every* λ up or down together, the U-shape check is paired: for each seed the gain
val(0) − val(λ*) at the grid's best intermediate λ*, and the claim holds when the mean gain exceeds
the seed-to-seed sd of the gain and every seed gains (the figure's error bars are the unpaired sd of the
levels, which also carries the split-to-split difficulty).

Equivalence (float64, width ``eq_width``, λ = ``eq_lam``, same seed, same batches): SGD + ``l2=λ``
against SGD + ``weight_decay=λ/n`` (max |Δw| over all parameters must be ≤ 1e-6; it is ~1e-16), then
Adam + ``l2=λ`` against AdamW(``weight_decay=λ/n``) (same nominal decay, measurably different weights),
with the norm of the zero-gradient input weights tracked per epoch against the two predictions above.
This part standardises digits per feature (``standardize="features"``), so the pixels that are blank in
every training image become exact zeros and their input weights get exactly zero data gradient (the
sweep keeps the library's default pooled-pixel scaling). It trains directly with ``dd.fit``, outside
the sweep layer: it needs the parameters after every epoch, which no run result stores.

Reference. The Deep Learning Specialization's regularisation assignment (Course 2, week 1; a 3-layer
ReLU net on 2-D points, 211 train / 200 test, GD for 30 000 iterations) reports 94.8 % / 91.5 %
train/test accuracy without regularisation and 93.8 % / 93 % with L2 λ = 0.7: L2 costs a point of
training accuracy and buys 1.5 points of test accuracy. Its data are not shipped here, so the figure
quotes those numbers beside ours as a reference for the *direction*, not as a check on these data.

What the figures show
---------------------
``l2_sweep.png``: training and validation loss against λ with the chance loss as the reference line (the
U in validation loss, the climb of training loss to chance); ‖w‖ and the pre-activation spread against λ
(log scale); accuracy against λ with the DLS reference. ``l2_linear.png``: the hidden layer's measured
nonlinearity against its pre-activation RMS, beside the Gaussian prediction r(σ). ``l2_weight_decay.png``:
max |Δw| per epoch for SGD+L2 vs SGD weight decay (rounding level) and Adam+L2 vs AdamW (visible
difference); and the zero-gradient weights under Adam+L2 and AdamW beside their predictions (scalar
Adam on the penalty; (1 − η·wd)^t).

Where the seed text is loose
----------------------------
"The deep network will become linear" is true of tanh-like units in their small-signal regime; a ReLU
network stays piecewise linear at any scale (ReLU is positively homogeneous), and at very large λ every
network becomes *constant*, not merely linear. Eq. 2 sums over "i = 1..n" with the same n as the number of
samples; the sum runs over all weights, and biases are conventionally left out (as here). The seed text's
sentence "selection of some intermediate value of λ will help prevent underfitting problem" means
*overfitting* (an intermediate λ prevents both). It calls L2 "weight decay"-like only implicitly; the
equivalence holds for SGD, not for Adam.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import plots
from .._validate import check_choice, check_number
from ..data import load
from ..models import ACTIVATIONS, INITS, mlp
from ..runs import RunConfig, dataset_of
from ..study import Measurement, Study, check_rule, train_runs
from ..theory import chance_loss
from ..train import fit

DLS_REFERENCE = {  # Deep Learning Specialization, Course 2 week 1, "Regularization" assignment
    "none": {"lam": 0.0, "train_acc": 0.948, "test_acc": 0.915},
    "l2": {"lam": 0.7, "train_acc": 0.938, "test_acc": 0.930},
}


# ---- theory -------------------------------------------------------------------------------------

def tanh_nonlinearity(sigma: float | np.ndarray, order: int = 80) -> np.ndarray:
    """r(σ) = √(E[(tanh z − z)²] / E[z²]) for z ~ N(0, σ²): how far tanh is from the identity.

    Computed by Gauss–Hermite quadrature (probabilists' weights, `order` nodes). For small σ,
    tanh z = z − z³/3 + O(z⁵) gives E[(z³/3)²] = 15σ⁶/9, so r ≈ (√15/3)·σ² ≈ 1.29·σ²; for large σ,
    tanh z is bounded and r → 1.
    >>> round(float(tanh_nonlinearity(0.01) / 0.01**2), 3)
    1.291
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(order)
    weights = weights / weights.sum()
    s = np.atleast_1d(np.asarray(sigma, float))[:, None]
    z = s * nodes[None, :]
    num = ((np.tanh(z) - z) ** 2 * weights).sum(axis=1)
    out = np.sqrt(num) / s[:, 0]
    return out if np.ndim(sigma) else out[0]


def adam_on_penalty(w0, lr: float, c: float, steps: int, betas=(0.9, 0.999), eps: float = 1e-8) -> np.ndarray:
    """Norm, after t = 0..steps Adam steps, of weights whose only gradient is the L2 term g = c·w.

    A weight that the data never moves (its input is 0 on every training example) sees g_t = c·w_t, so
    Adam + L2 acts on it as scalar Adam on (c/2)·w², coordinate by coordinate (Kingma & Ba 2015):
    m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², w ← w − η·m̂/(√v̂ + ε) with bias-corrected m̂, v̂. This
    function runs that recursion exactly (float64, vectorised over the weights). Early on m̂/√v̂ = sign(w),
    so each |w| falls by ≈ η per step *whatever c is*; later v̂ remembers the larger past gradients and
    the march slows. AdamW instead multiplies such a weight by (1 − η·wd) per step and nothing else.
    """
    w = np.array(w0, dtype=np.float64).ravel()
    m, v = np.zeros_like(w), np.zeros_like(w)
    b1, b2 = betas
    norms = [float(np.linalg.norm(w))]
    for t in range(1, steps + 1):
        g = c * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - (lr / (1 - b1**t)) * m / (np.sqrt(v) / math.sqrt(1 - b2**t) + eps)
        norms.append(float(np.linalg.norm(w)))
    return np.array(norms)


def stable_lambda_limit(lr: float, momentum: float, n: int) -> float:
    """Largest λ for which SGD (heavy-ball momentum β) stays stable on the penalty alone.

    On J = (λ/2n)·w² the update w ← w − η(λ/n)w (+ momentum) is stable iff η·λ/n < 2(1 + β), the
    classic heavy-ball bound for curvature λ/n; beyond it the decay itself diverges, whatever the data.
    """
    return 2 * (1 + momentum) * n / lr


# ---- knobs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """Full-mode knobs. ``lams`` must start at 0 and hold at least 4 increasing values."""

    dataset: str = "digits"
    n_train: int = 100
    width: int = 256
    depth: int = 1
    activation: str = "tanh"
    init: str = "xavier"
    lams: tuple = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 1000.0)
    lr: float = 0.1
    momentum: float = 0.9
    batch_size: int = 50
    epochs: int = 200
    eq_lam: float = 1.0
    eq_width: int = 64
    eq_epochs: int = 100
    eq_adam_lr: float = 1e-3

    def __post_init__(self):
        check_choice("dataset", self.dataset, ("digits", "breast_cancer", "wine", "moons", "circles", "mnist"))
        check_number("n_train", self.n_train, low=10, integer=True)
        check_number("width", self.width, low=1, integer=True)
        check_number("depth", self.depth, low=1, integer=True)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_choice("init", self.init, INITS)
        lams = list(self.lams)
        if len(lams) < 4 or lams[0] != 0 or lams != sorted(set(lams)):
            raise ValueError(f"lams={self.lams!r} must start at 0 and hold at least 4 distinct increasing "
                             "values (0, intermediate values, a very large one)")
        for lam in lams:
            check_number("lams", lam, low=0.0)
        check_number("lr", self.lr, low=0.0, low_inclusive=False)
        check_number("momentum", self.momentum, low=0.0, high=1.0, high_inclusive=False)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check_number("epochs", self.epochs, low=1, integer=True)
        limit = stable_lambda_limit(self.lr, self.momentum, self.n_train)
        if lams[-1] >= limit:
            raise ValueError(f"lams={self.lams!r}: λ={lams[-1]:g} makes the decay step itself unstable "
                             f"(lr·λ/n must be < 2(1+momentum), i.e. λ < {limit:.4g} for lr={self.lr:g}, "
                             f"momentum={self.momentum:g}, n_train={self.n_train}); lower λ or lr")
        check_number("eq_lam", self.eq_lam, low=0.0, low_inclusive=False)
        check_number("eq_width", self.eq_width, low=1, integer=True)
        check_number("eq_epochs", self.eq_epochs, low=1, integer=True)
        check_number("eq_adam_lr", self.eq_adam_lr, low=0.0, low_inclusive=False)


QUICK = dict(width=128, lams=(0.0, 0.3, 1.0, 10.0, 1000.0), epochs=100, eq_epochs=40)


# ---- experiments --------------------------------------------------------------------------------

def _sweep_configs(config: Config, seeds: list[int]) -> list[RunConfig]:
    """seeds × λ (λ fastest), each seed drawing its own training subset and split (data_seed = seed).
    Only end-of-training numbers are needed, so ``dd.fit`` evaluates nothing per epoch
    (``eval_train=False``, ``val_split=None``) and the probes measure the trained model once."""
    base = RunConfig(dataset=config.dataset, n_train=config.n_train, width=config.width, depth=config.depth,
                     activation=config.activation, init=config.init, optimizer="sgd", lr=config.lr,
                     momentum=config.momentum, batch_size=config.batch_size, epochs=config.epochs,
                     eval_train=False, val_split=None,
                     probes=("final_eval", "weight_norm", "hidden_stats"))
    return [dataclasses.replace(base, l2=float(lam), seed=seed, data_seed=seed)
            for seed in seeds for lam in config.lams]


def _sweep_rows(runs: list[RunConfig], results) -> list[dict]:
    rows = []
    for run, result in zip(runs, results):
        p, ds = result.probe_values(), dataset_of(run)
        rows.append(dict(experiment="sweep", seed=run.seed, lam=run.l2, train_loss=p["final_train_loss"],
                         val_loss=p["final_val_loss"], train_acc=p["final_train_acc"],
                         val_acc=p["final_val_acc"], weight_norm=p["weight_norm"],
                         weight_norm_init=p["weight_norm_init"], chance_loss=chance_loss(ds.y_train, ds.n_classes),
                         diverged=result.status == "diverged", z_rms=p["z_rms"], z_spread=p["z_spread"],
                         nonlinearity=p["nonlinearity"]))
    return rows


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _equivalence(config: Config, seed: int) -> list[dict]:
    """Per-epoch parameter differences: SGD+L2 vs SGD weight decay, Adam+L2 vs AdamW (float64)."""
    # per-feature standardisation makes the inputs that are constant on the training set exact zeros
    ds = load(config.dataset, n_train=config.n_train, seed=seed, standardize="features")
    ds = ds.to(dtype=torch.float64)
    n = len(ds.y_train)
    unused = (ds.x_train.abs().amax(dim=0) == 0)  # inputs constant (0 after standardising) on train
    pairs = {
        "sgd": (dict(optimizer="sgd", lr=config.lr, momentum=config.momentum, l2=config.eq_lam),
                dict(optimizer="sgd", lr=config.lr, momentum=config.momentum, weight_decay=config.eq_lam / n)),
        "adam": (dict(optimizer="adam", lr=config.eq_adam_lr, l2=config.eq_lam),
                 dict(optimizer="adamw", lr=config.eq_adam_lr, weight_decay=config.eq_lam / n)),
    }
    steps_per_epoch = math.ceil(n / config.batch_size)
    rows = []
    for family, (penalty, decay) in pairs.items():
        traces = {}
        for name, knobs in (("l2", penalty), ("decay", decay)):
            model = mlp(ds.in_features, ds.out_features, width=config.eq_width, depth=config.depth,
                           activation=config.activation, init=config.init, seed=seed).double()
            w_in = model.hidden[0].linear.weight
            unused0 = float(w_in[:, unused].detach().norm())
            w_unused0 = w_in[:, unused].detach().clone()  # for the Adam-on-the-penalty prediction
            trace = [(_flat(model), unused0)]
            fit(model, ds, batch_size=config.batch_size, epochs=config.eq_epochs, seed=seed, eval_train=False,
                   on_epoch=lambda h, m=model, w=w_in, t=trace: t.append((_flat(m), float(w[:, unused].detach().norm()))),
                   **knobs)
            traces[name] = trace
        lr = float(penalty["lr"])
        predicted = adam_on_penalty(w_unused0.numpy(), lr, config.eq_lam / n, config.eq_epochs * steps_per_epoch)
        for epoch, ((a, ua), (b, ub)) in enumerate(zip(traces["l2"], traces["decay"])):
            step = epoch * steps_per_epoch
            march = float(predicted[step])
            rows.append(dict(experiment="equivalence", family=family, seed=seed, epoch=epoch, step=step,
                             max_abs_diff=float((a - b).abs().max()), rel_diff=float((a - b).norm() / b.norm()),
                             norm_l2=float(a.norm()), norm_decay=float(b.norm()), unused_norm_l2=ua,
                             unused_norm_decay=ub, unused_norm_init=unused0,
                             unused_norm_l2_theory=march if family == "adam" else math.nan,
                             n_unused=int(unused.sum()), n=n, lr=lr, wd=config.eq_lam / n))
    return rows


# ---- checks -------------------------------------------------------------------------------------

def _checks(sweep: pd.DataFrame, eq: pd.DataFrame, config: Config, n_seeds: int) -> list:
    seeds = f"{n_seeds} seed(s), mean"
    g = sweep.groupby("lam")
    mean, sd = g.mean(numeric_only=True), g.std(ddof=1, numeric_only=True).fillna(0.0)
    lams = mean.index.to_numpy()
    checks = []
    norms = mean.weight_norm.to_numpy()
    checks.append(check_rule(
        "weight_norm_decreases", "larger λ, smaller weights: ‖w‖ decreases monotonically in λ",
        " > ".join(f"{v:.3g}" for v in norms), "strictly decreasing", "each λ step lowers the mean ‖w‖",
        bool(np.all(np.diff(norms) < 0)), f"{seeds}; λ = {', '.join(f'{v:g}' for v in lams)}"))
    train = mean.train_loss.to_numpy()
    checks.append(check_rule(
        "train_loss_increases", "larger λ, higher training loss (the penalty trades fit for small weights)",
        " < ".join(f"{v:.3g}" for v in train), "strictly increasing", "each λ step raises the mean training loss",
        bool(np.all(np.diff(train) > 0)), f"{seeds}; λ = {', '.join(f'{v:g}' for v in lams)}"))
    val = mean.val_loss.to_numpy()
    inner = np.arange(1, len(lams) - 1)
    best = int(inner[np.argmin(val[inner])])
    per_seed = sweep.pivot(index="seed", columns="lam", values="val_loss")
    gains = (per_seed[lams[0]] - per_seed[lams[best]]).to_numpy()  # paired: same seed, same split
    gain, spread = float(gains.mean()), float(np.std(gains, ddof=1)) if len(gains) > 1 else math.nan
    u_shape = gain > spread and bool((gains > 0).all()) and val[-1] > val[best]
    checks.append(check_rule(
        "intermediate_lambda_beats_zero", f"an intermediate λ (best: {lams[best]:g}) beats λ = 0 on "
        "validation loss by more than the seed-to-seed spread, and the largest λ is worse again (U-shape)",
        gain, f"> spread {spread:.3g}",
        "mean over seeds of val(0) − val(λ*) > its sd over seeds, every seed gains, val(λ_max) > val(λ*)",
        u_shape if len(gains) > 1 else None,
        f"{n_seeds} seed(s) (paired: each seed has its own split and init); gains "
        + ", ".join(f"{v:.3f}" for v in gains) + "; val loss by λ (mean ± sd of levels): "
        + ", ".join(f"{l:g}: {v:.3f}±{s:.3f}" for l, v, s in zip(lams, val, sd.val_loss))))
    last = mean.iloc[-1]
    rel = abs(last.train_loss / last.chance_loss - 1)
    checks.append(check_rule(
        "largest_lambda_underfits", f"the largest λ ({lams[-1]:g}) underfits: training loss at the chance "
        "loss (the network is reduced to its output bias)", float(last.train_loss),
        f"{last.chance_loss:.4g} (chance)", "|train loss / chance loss − 1| <= 0.05", rel <= 0.05,
        f"{seeds}; relative gap {rel:.3g}", tolerance=0.05))
    ratio = float(last.z_spread / mean.z_spread.iloc[0])
    checks.append(check_rule(
        "preactivation_spread_collapses", "\"the network becomes linear\": the hidden pre-activations' "
        "spread collapses at the largest λ", ratio, "<= 0.01", "spread(λ_max) / spread(0) <= 0.01",
        ratio <= 0.01,
        f"{seeds}; spread by λ: " + ", ".join(f"{l:g}: {v:.3g}" for l, v in zip(lams, mean.z_spread)) +
        "; tanh nonlinearity ‖tanh z − z‖/‖z‖: " + ", ".join(f"{v:.2g}" for v in mean.nonlinearity)))
    final = eq.groupby("family").tail(1).set_index("family")
    sgd_diff = float(eq[eq.family == "sgd"].max_abs_diff.max())
    checks.append(check_rule(
        "l2_equals_sgd_weight_decay", f"L2 via the penalty (λ = {config.eq_lam:g}) equals SGD "
        f"weight_decay = λ/n (momentum {config.momentum:g}, float64)", sgd_diff, "<= 1e-6",
        "max |Δ parameter| over all epochs <= 1e-6", sgd_diff <= 1e-6,
        f"{config.eq_epochs} epochs, n = {int(final.n.iloc[0])}, seed {int(eq.seed.iloc[0])}"))
    adam = final.loc["adam"]
    checks.append(check_rule(
        "adamw_differs_from_adam_l2", "Adam + L2 is not AdamW with weight_decay = λ/n (decoupled decay)",
        float(adam.rel_diff), ">= 0.01", "‖w_Adam+L2 − w_AdamW‖ / ‖w_AdamW‖ >= 0.01 (SGD pair: ~1e-16)",
        adam.rel_diff >= 0.01,
        f"{config.eq_epochs} epochs; weights on the {int(adam.n_unused)} constant inputs kept "
        f"{adam.unused_norm_l2 / adam.unused_norm_init:.1%} of their norm under Adam+L2 vs "
        f"{adam.unused_norm_decay / adam.unused_norm_init:.1%} under AdamW"))
    return checks


def measure(config: Config, seeds: list[int]) -> Measurement:
    runs = _sweep_configs(config, seeds)
    sweep = pd.DataFrame(_sweep_rows(runs, train_runs(runs)))  # every sweep run through the sweep layer
    eq = pd.DataFrame(_equivalence(config, seeds[0]))
    checks = _checks(sweep, eq, config, len(seeds))
    if sweep.diverged.any():
        bad = sorted(sweep[sweep.diverged].lam.unique())
        checks.append(check_rule("no_divergence", "every run stayed finite", f"diverged at λ={bad}", "none",
                                 "no run diverged", False))
    notes = ("Losses are cross-entropy in nats. DLS reference (other data, for direction only): "
             "no regularisation 94.8/91.5 % train/test, L2 λ=0.7 93.8/93 %.")
    return Measurement(checks, pd.concat([sweep, eq], ignore_index=True), notes)


# ---- figures ------------------------------------------------------------------------------------

def _lam_axis(lams: np.ndarray) -> tuple[np.ndarray, float]:
    """Plot positions for λ on a log axis, with λ = 0 drawn one decade left of the smallest λ > 0."""
    zero_at = lams[lams > 0].min() / 10
    return np.where(lams > 0, lams, zero_at), zero_at


def plot(result, out_dir: Path) -> list[Path]:
    data = result.data
    sweep = data[data.experiment == "sweep"]
    g = sweep.groupby("lam")
    mean, sd = g.mean(numeric_only=True), g.std(ddof=1, numeric_only=True).fillna(0.0)
    x, zero_at = _lam_axis(mean.index.to_numpy(float))
    n_seeds = sweep.seed.nunique()
    figures = []

    fig, axes = plots.figure(3, width=4.6)
    ax = axes[0]
    plots.measured(ax, x, mean.train_loss, sd.train_loss, label="training loss")
    plots.measured(ax, x, mean.val_loss, sd.val_loss, label="validation loss")
    plots.theory(ax, x, mean.chance_loss, label="chance loss ln K (theory)", color="k")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title(f"loss vs λ (mean ± sd, {n_seeds} seeds)")
    ax = axes[1]
    plots.measured(ax, x, mean.weight_norm, sd.weight_norm, label="‖w‖ after training")
    plots.measured(ax, x, mean.z_spread, sd.z_spread, label="hidden pre-activation spread")
    plots.theory(ax, x, mean.weight_norm_init, label="‖w‖ at init (reference)", color="grey")
    ax.set_yscale("log")
    ax.set_ylabel("norm / std (log)")
    ax.set_title("weights shrink, hidden signal collapses")
    ax = axes[2]
    plots.measured(ax, x, 100 * mean.train_acc, 100 * sd.train_acc, label="training accuracy")
    plots.measured(ax, x, 100 * mean.val_acc, 100 * sd.val_acc, label="validation accuracy")
    for key, marker in (("none", "s"), ("l2", "D")):
        ref = DLS_REFERENCE[key]
        xr = ref["lam"] if ref["lam"] > 0 else zero_at
        ax.plot([xr], [100 * ref["train_acc"]], marker, color="C0", mfc="none", ms=8,
                label="DLS reference train (other data)" if key == "none" else None)
        ax.plot([xr], [100 * ref["test_acc"]], marker, color="C1", mfc="none", ms=8,
                label="DLS reference test (other data)" if key == "none" else None)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs λ")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("λ (penalty λ/(2n)·‖w‖²; leftmost point: λ = 0)")
        ax.legend(fontsize=7)
    figures.append(plots.save(fig, out_dir, "l2_sweep"))

    fig, (ax,) = plots.figure(1, width=5.5)
    s = np.logspace(-3, 1, 200)
    plots.theory(ax, s, tanh_nonlinearity(s), label="z ~ N(0, σ²): r(σ) (theory)")
    plots.theory(ax, s, np.sqrt(15) / 3 * s**2, label="small-σ limit (√15/3)·σ²", color="grey")
    ok = sweep[sweep.nonlinearity.notna() & (sweep.z_rms > 0)]
    for i, (lam, part) in enumerate(ok.groupby("lam")):
        plots.measured(ax, part.z_rms, part.nonlinearity, label=f"measured, λ = {lam:g}", color=f"C{i + 2}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-8, 2)
    plots.label(ax, "RMS of hidden pre-activations z (σ)", "nonlinearity ‖tanh z − z‖ / ‖z‖",
                "large λ: the tanh layer becomes linear", fontsize=7)
    figures.append(plots.save(fig, out_dir, "l2_linear"))

    eq = data[data.experiment == "equivalence"]
    if len(eq):
        fig, axes = plots.figure(2, width=5.2)
        ax = axes[0]
        for family, label in (("sgd", "SGD: penalty vs weight_decay=λ/n"), ("adam", "Adam+L2 vs AdamW(λ/n)")):
            part = eq[(eq.family == family) & (eq.epoch > 0)]
            plots.measured(ax, part.epoch, part.max_abs_diff.clip(lower=1e-18), label=label)
        plots.theory(ax, [1, eq.epoch.max()], [1e-6, 1e-6], label="check threshold 1e-6", color="k")
        ax.set_yscale("log")
        plots.label(ax, "epoch", "max |Δ parameter| (float64)", "same seed, same batches", fontsize=7)
        ax = axes[1]
        adam = eq[eq.family == "adam"]
        init = float(adam.unused_norm_init.iloc[0])
        lr, wd = float(adam.lr.iloc[0]), float(adam.wd.iloc[0])
        steps = np.linspace(0, adam.step.max(), 200)
        plots.theory(ax, steps, (1 - lr * wd) ** steps, label="AdamW: (1 − η·wd)^t (theory)", color="C1")
        plots.theory(ax, adam.step, adam.unused_norm_l2_theory / init,
                     label="Adam+L2: scalar Adam on (λ/2n)·w² (theory)", color="C0")
        few = adam.iloc[::max(1, len(adam) // 20)]  # ~20 points, so the theory lines stay visible
        plots.measured(ax, few.step, few.unused_norm_l2 / init, label="Adam + L2 (measured)", color="C0", mfc="none")
        plots.measured(ax, few.step, few.unused_norm_decay / init, label="AdamW (measured)", color="C1", mfc="none")
        ax.set_ylim(-0.02, 1.05)
        plots.label(ax, "optimizer step", "norm of zero-gradient weights / at init",
                    f"weights of {int(adam.n_unused.iloc[0])} constant inputs (data gradient 0)", fontsize=7)
        figures.append(plots.save(fig, out_dir, "l2_weight_decay"))
    return figures


STUDY = Study(
    name="l2",
    claim='"If λ is large, weights will be relatively smaller ... deep network will become linear. For very '
          'large values of lambda, the model moves from overfitting scenario to underfitting. So selection of '
          'some intermediate value of λ will help"',
    theory="GD on L + λ/(2n)·‖w‖² shrinks w by (1 − ηλ/n) per step (= SGD weight_decay λ/n, ≠ AdamW): ‖w‖ "
           "falls and training loss rises with λ; validation loss is U-shaped; at very large λ the output "
           "is its bias and the training loss is the chance loss ln K",
    config=Config, quick=QUICK, measure=measure, plot=plot,
    seeds_quick=2,
    quick_time=0.9,  # measured on 2 CPU cores (deepdiag run all --quick)
)
