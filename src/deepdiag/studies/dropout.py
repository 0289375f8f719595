"""Dropout: "a technique to avoid overfitting", applied "only during training".

The claim. The first seed text says dropout "is a technique to avoid overfitting in neural networks":
each training sample sees a "diminished network" in which every hidden unit is dropped at random,
so the network "does not rely on any particular neuron". It adds: "Dropout layers are only created
during training. During test time we apply no dropout. This is because when doing predictions you
don't [want] your network to produce random output."

The theory. deepdiag uses *inverted* dropout (``torch.nn.Dropout``): in training a unit's activation
h becomes ``m·h/(1 − p)`` with a mask m ~ Bernoulli(1 − p), independently per unit and per sample, so

    E[m·h/(1 − p)] = h                       (the eval-mode activation: scaling keeps the expectation)
    Var[m·h/(1 − p)] = h² · p/(1 − p)        (the noise the training sees, growing without bound as p → 1)
    P(output = 0) = p

and in eval mode the layer is the identity, so the trained network is a deterministic function.
Without the 1/(1 − p) scale ("plain" dropout, as in Srivastava et al. 2014, who scale the weights by
1 − p at test time instead) the training-time expectation would be (1 − p)·h. Dropout regularises:
it trains an exponential family of thinned networks with shared weights and predicts with (an
approximation of) their average. Too large a p leaves too few units per sample: the noise
variance p/(1 − p) swamps the signal and the network cannot fit even its training set (underfitting).

The set-up (full mode). Real MNIST (``dd.data.load("mnist")``: 5000 images; 2000 for training,
2000 for validation, 1000 for test), the 784-512-512-10 ReLU net ``dd.mlp(784, 10, width=512,
depth=2, dropout=p)`` with dropout after each hidden layer, Adam (lr 1e-3, batch 64), 30 epochs,
pixels kept in [0, 1] (not standardised: per-pixel standardisation blows up near-constant border
pixels of a 2000-image subset). We sweep p over (0, 0.2, 0.5, 0.8, 0.9), 3 seeds each (the seed sets
the initial weights, the batch order and the masks; the data split is fixed), and measure at the
last epoch the training and validation loss and error, the test error, and the generalisation gap
(validation minus training loss). Validation takes 2000 images, so that one image is 0.05 % of the
error and the seed spread, not the counting noise, sets what "beyond seed spread" means.

Runs. Every training run is a ``RunConfig`` (the split, ``standardize`` and ``label_noise`` among
its data options) trained through the sweep layer (``deepdiag.study.train_runs``); its test error is the
``test_eval`` probe, and the ``p_moderate`` run of the first seed also carries the ``eval_determinism`` and
``first_hidden`` probes, measured on the trained net where it trained. The Monte-Carlo scaling checks
push those stored activations through many fresh dropout masks: exact computations, no training.

Checks. (1) the generalisation gap at the moderate p (0.5) is smaller than without dropout, by more
than the seed spread; (2) the validation error at p = 0.5 is lower than without dropout, by more than
the seed spread; (3) too large a p (0.9) underfits: its training error is higher than without dropout
and its validation error higher than at p = 0.5; (4) in eval mode two forward passes of a trained
p = 0.5 net give identical outputs, while in training mode they differ; (5) inverted scaling keeps
the expectation: averaged over many masks, the dropped-out first-layer activations of the trained
net equal the eval-mode ones (within the Monte-Carlo error the theory predicts), and (6) their
spread matches Var = h²·p/(1 − p).

Quick mode. At the full-mode scale the gain is small (about half a point of validation error, close to
the seed spread) and a smaller budget hides it. Quick mode therefore provokes overfitting the way
Zhang et al. (2017) and Arpit et al. (2017, "A closer look at memorization in deep networks") do:
20 % of the *training* labels are replaced by wrong ones (``label_noise=0.2``; validation and test
labels stay clean) on 1000 images, 256 units per layer, 20 epochs. Without dropout the net memorises
the wrong labels (training error → 0) and its validation error rises to ~21 %; dropout hinders that
memorisation (~15 %), far beyond the seed spread. The claim tested is the same: the overfit net
"performs poorly on unseen data" and dropout reduces it. Full mode keeps clean labels.

Published reference. Srivastava et al. (2014), "Dropout: a simple way to prevent neural networks from
overfitting", JMLR 15, Table 2: on the full MNIST (60 000 training images) a 784-1024-1024-10 ReLU net
(here: 2 × 512 on 2000 images) has 1.60 % test error without dropout and 1.25 % with dropout
(p = 0.5 hidden, 0.2 input, max-norm). On our 2000-image subset the errors are ~5× larger (full mode
measured 7.7 % → 6.4 % test error over 3 seeds) but the relative gain is of the same order (~20 %).

The figures. ``dropout_curves.png``: training and validation loss per epoch without dropout and at
p = 0.5 (mean over seeds): without dropout the training loss falls to ~1e-4 while the validation loss
climbs after a few epochs (overfitting); dropout keeps the validation loss lower. ``dropout_sweep.png``:
left, training / validation / test error vs p (mean ± seed std) with Srivastava's full-MNIST errors as
dashed reference lines; right, the generalisation gap vs p. ``dropout_scaling.png``: the measured mean
and variance of ``nn.Dropout`` outputs (relative to h and h²) vs p, beside the theory lines 1 and
p/(1 − p), and the (1 − p) line plain (non-inverted) dropout would give.

Where the seed text is loose. "Dropout layers are only created during training" is not how it is
implemented: the layer is always there and ``model.eval()`` turns it off. "Restricting a neuron from
sending or receiving the activations" is right, but without the 1/(1 − p) scaling (or test-time
weight scaling) the train- and test-time networks would see activations of different size. Dropout
reduces overfitting; it does not prevent it (a gap remains at every p), and its gain on a small data
set is modest (about one point of error here).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import data as dd_data
from .. import plots
from .._validate import check_choice, check_number
from ..study import Measurement, Study, check_close, check_rule, torch_threads, train_runs
from ..runs import RunConfig

__all__ = ["Config", "QUICK", "STUDY", "measure", "plot", "dropout_mean", "dropout_variance",
           "dropout_zero_fraction", "monte_carlo_moments"]

SRIVASTAVA_2014 = {"no dropout": 1.60, "dropout": 1.25}  # % test error, full MNIST, Table 2


# ---- theory -------------------------------------------------------------------------------------

def dropout_mean(h, p: float, inverted: bool = True):
    """E[dropout(h)]: h for inverted dropout (kept units scaled by 1/(1 − p)), (1 − p)·h for plain
    dropout (no scaling in training; Srivastava et al. 2014 scale the weights by 1 − p at test time)."""
    check_number("p", p, low=0.0, high=1.0, high_inclusive=False)
    return h if inverted else (1.0 - p) * h


def dropout_variance(h, p: float):
    """Var[dropout(h)] = h² · p/(1 − p) for inverted dropout: m/(1 − p) with m ~ Bernoulli(1 − p)
    has mean 1 and variance (1 − p)·p/(1 − p)² = p/(1 − p)."""
    check_number("p", p, low=0.0, high=1.0, high_inclusive=False)
    return h * h * (p / (1.0 - p))


def dropout_zero_fraction(p: float) -> float:
    """P(dropout(h) = 0) = p for h ≠ 0."""
    check_number("p", p, low=0.0, high=1.0, high_inclusive=False)
    return p


@torch.no_grad()
def monte_carlo_moments(layer: nn.Module, h: torch.Tensor, samples: int, seed: int = 0) -> dict:
    """Apply `layer` (in training mode) `samples` times to h (units with h = 0 ignored) and return
    the mean ratio Σ E_mc[y]/Σ h, the variance ratio Σ Var_mc[y]/Σ h², the zero fraction, and the
    standard error the theory predicts for the mean ratio, √(p/(1−p)·Σh²/samples)/Σh."""
    was = layer.training
    layer.train()
    h = h.reshape(-1)
    h = h[h != 0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        y = layer(h.expand(samples, -1).contiguous())  # (samples, units)
    layer.train(was)
    p = getattr(layer, "p", 0.0)
    sd = math.sqrt(p / (1 - p) * float((h * h).sum()) / samples) / float(h.sum()) if p > 0 else 0.0
    return {"mean_ratio": float(y.double().mean(0).sum() / h.double().sum()),
            "var_ratio": float(y.double().var(0).sum() / (h.double() ** 2).sum()),
            "zero_fraction": float((y == 0).double().mean()),
            "mean_ratio_se": sd}


# ---- knobs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """Full-mode knobs (the set-up above); QUICK shrinks them for CI."""

    dataset: str = "mnist"
    n_train: int = 2000
    val_fraction: float = 0.4
    test_fraction: float = 0.2
    width: int = 512
    depth: int = 2
    ps: tuple = (0.0, 0.2, 0.5, 0.8, 0.9)
    p_moderate: float = 0.5
    p_large: float = 0.9
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 30
    standardize: bool = False
    label_noise: float = 0.0  # fraction of training labels made wrong (quick mode: 0.2, see above)
    mc_samples: int = 400
    data_seed: int = 0
    threads: int = 1  # torch threads while measuring (see deepdiag.study.torch_threads)

    def __post_init__(self):
        check_choice("dataset", self.dataset, dd_data.NAMES)
        check_number("threads", self.threads, low=1, integer=True)
        check_number("n_train", self.n_train, low=10, integer=True)
        check_number("label_noise", self.label_noise, low=0.0, high=1.0, high_inclusive=False)
        check_number("val_fraction", self.val_fraction, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_number("test_fraction", self.test_fraction, low=0.0, high=1.0, low_inclusive=False,
                     high_inclusive=False)
        check_number("width", self.width, low=1, integer=True)
        check_number("depth", self.depth, low=1, integer=True)
        if not self.ps or any(isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1
                              for p in self.ps):
            raise ValueError(f"ps={self.ps!r} must be a non-empty tuple of dropout probabilities in [0, 1)")
        for name in ("p_moderate", "p_large"):
            value = check_number(name, getattr(self, name), low=0.0, high=1.0, low_inclusive=False,
                                 high_inclusive=False)
            if value not in self.ps:
                raise ValueError(f"{name}={value!r} must be one of ps={self.ps!r}")
        if 0.0 not in self.ps:
            raise ValueError(f"ps={self.ps!r} must contain 0.0 (the no-dropout baseline)")
        if not self.p_large > self.p_moderate:
            raise ValueError(f"p_large={self.p_large!r} must exceed p_moderate={self.p_moderate!r}")
        check_choice("optimizer", self.optimizer, ("sgd", "adam", "adamw"))
        check_number("lr", self.lr, low=0.0, low_inclusive=False)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check_number("epochs", self.epochs, low=1, integer=True)
        check_number("mc_samples", self.mc_samples, low=10, integer=True)
        check_number("data_seed", self.data_seed, low=0, integer=True)


QUICK = {"n_train": 1000, "width": 256, "epochs": 20, "batch_size": 32, "ps": (0.0, 0.5, 0.9),
         "mc_samples": 200, "label_noise": 0.2}


# ---- measurement --------------------------------------------------------------------------------

def _runs(config: Config, seeds: list[int]) -> list[RunConfig]:
    """p × seeds (seed fastest) on one fixed split; the p_moderate run of the first seed also keeps
    what the determinism and scaling checks need from its trained model (probes)."""
    base = RunConfig(dataset=config.dataset, n_train=config.n_train, val_fraction=config.val_fraction,
                     test_fraction=config.test_fraction, data_seed=config.data_seed,
                     standardize=config.standardize, label_noise=config.label_noise, width=config.width,
                     depth=config.depth, optimizer=config.optimizer, lr=config.lr, batch_size=config.batch_size,
                     epochs=config.epochs, probes=("test_eval",))
    runs = [dataclasses.replace(base, dropout=float(p), seed=seed) for p in config.ps for seed in seeds]
    return [dataclasses.replace(r, probes=r.probes + ("eval_determinism", "first_hidden"))
            if (r.dropout, r.seed) == (config.p_moderate, seeds[0]) else r for r in runs]


def _spread(values) -> float:
    """Sample standard deviation over seeds (0 for one seed)."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def measure(config: Config, seeds: list[int]) -> Measurement:
    with torch_threads(config.threads):
        return _measure(config, seeds)


def _measure(config: Config, seeds: list[int]) -> Measurement:
    runs = _runs(config, seeds)
    rows, kept = [], {}
    for run, result in zip(runs, train_runs(runs)):  # every training run through the sweep layer
        p, seed, hist, probes = run.dropout, run.seed, result.to_history(), result.probe_values()
        if "first_hidden" in result.probes:  # the trained p_moderate net of the first seed
            kept = {**result.probes["eval_determinism"], **result.probes["first_hidden"]}
        for i, epoch in enumerate(hist.epoch):
            rows.append({"experiment": "curve", "p": float(p), "seed": seed, "epoch": epoch,
                         "train_loss": hist.train_loss[i], "val_loss": hist.val_loss[i],
                         "train_err": 1 - hist.train_acc[i], "val_err": 1 - hist.val_acc[i]})
        rows.append({"experiment": "final", "p": float(p), "seed": seed, "epoch": hist.epoch[-1],
                     "train_loss": hist.train_loss[-1], "val_loss": hist.val_loss[-1],
                     "train_err": 1 - hist.train_acc[-1], "val_err": 1 - hist.val_acc[-1],
                     "test_loss": probes["test_loss"], "test_err": 1.0 - probes["test_acc"],
                     "gap": hist.val_loss[-1] - hist.train_loss[-1]})
    data = pd.DataFrame(rows)
    final = data[data.experiment == "final"]
    checks = _sweep_checks(config, final, len(seeds))

    # eval mode is deterministic; training mode is not (the eval_determinism probe of the trained
    # p_moderate net, first seed: two passes on 256 validation images, training mode seeded by its seed)
    eval_diff, train_diff = kept["eval_max_diff"], kept["train_max_diff"]
    checks.append(check_rule(
        "eval_deterministic", '"During test time we apply no dropout": eval-mode output is deterministic',
        eval_diff, 0.0, "max |f(x) − f(x)| over two eval-mode passes == 0, and > 0 in training mode",
        eval_diff == 0.0 and train_diff > 0.0,
        f"trained p={config.p_moderate} net, 256 validation images; training-mode passes differ by up to "
        f"{train_diff:.3g}"))
    rows = [{"experiment": "determinism", "p": config.p_moderate, "mode": m, "max_abs_diff": v}
            for m, v in (("eval", eval_diff), ("train", train_diff))]

    # inverted scaling keeps the expectation: first hidden layer of the trained net, many masks
    h = torch.tensor(kept["first_hidden"], dtype=torch.float32)  # (32, width), eval-mode activations
    for p in sorted({*config.ps, 0.1, 0.3, 0.7} - {0.0}):
        mc = monte_carlo_moments(nn.Dropout(p), h, config.mc_samples, seed=seeds[0])
        rows.append({"experiment": "scaling", "p": float(p), **mc,
                     "theory_mean_ratio": 1.0, "theory_var_ratio": p / (1 - p)})
    scaling = pd.DataFrame(rows[2:]).set_index("p")
    pm = config.p_moderate
    got = scaling.loc[pm]
    tol = max(4 * got.mean_ratio_se, 1e-3)
    checks.append(check_close(
        "inverted_scaling_mean", "inverted scaling keeps the expected activation: E[dropout(h)] = h",
        got.mean_ratio, 1.0, tol,
        f"Σ E_mc[dropout(h)] / Σ h at p={pm}, {config.mc_samples} masks over {int(32)}×{config.width} "
        f"first-layer activations of the trained net; tolerance = 4 × predicted Monte-Carlo error "
        f"{got.mean_ratio_se:.2g}"))
    worst = float((scaling.var_ratio / scaling.theory_var_ratio - 1).abs().max())
    checks.append(check_close(
        "inverted_scaling_variance", "the noise dropout adds has Var = h²·p/(1 − p)",
        got.var_ratio, pm / (1 - pm), 0.05,
        f"Σ Var_mc / Σ h² at p={pm}; worst relative error over p ∈ {sorted(scaling.index.tolist())}: "
        f"{worst:.3g}"))
    data = pd.concat([data, pd.DataFrame(rows)], ignore_index=True)
    notes = _notes(final)
    return Measurement(checks, data, notes)


def _sweep_checks(config: Config, final: pd.DataFrame, n_seeds: int) -> list:
    by = final.groupby("p")
    mean, std = by.mean(numeric_only=True), by.std(ddof=1, numeric_only=True).fillna(0.0)
    p0, pm, pl = 0.0, config.p_moderate, config.p_large
    seeds_txt = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}"
    checks = []
    for name, col, claim, unit in (
        ("gap_reduced", "gap", "dropout lowers the generalization gap (validation − training loss)", "nats"),
        ("val_error_reduced", "val_err", "dropout lowers the validation error", "error"),
    ):
        drop = float(mean.loc[p0, col] - mean.loc[pm, col])
        spread = float(max(std.loc[p0, col], std.loc[pm, col]))
        checks.append(check_rule(
            name, claim + f" at a moderate p={pm}", drop, spread,
            f"{col}(p=0) − {col}(p={pm}) > seed spread (larger seed std of the two)",
            drop > spread,
            f"mean over {seeds_txt}: {col} {mean.loc[p0, col]:.4g} ± {std.loc[p0, col]:.2g} at p=0 vs "
            f"{mean.loc[pm, col]:.4g} ± {std.loc[pm, col]:.2g} at p={pm}; last epoch"))
    tr0, trl = float(mean.loc[p0, "train_err"]), float(mean.loc[pl, "train_err"])
    vm, vl = float(mean.loc[pm, "val_err"]), float(mean.loc[pl, "val_err"])
    checks.append(check_rule(
        "large_p_underfits", f"too large p underfits: p={pl} fits the training set worse and validates worse",
        trl, tr0, f"train_err(p={pl}) > train_err(p=0) + 0.5 point and val_err(p={pl}) > val_err(p={pm})",
        trl > tr0 + 0.005 and vl > vm,
        f"mean over {seeds_txt}: training error {trl:.4f} vs {tr0:.4f} at p=0; validation error {vl:.4f} "
        f"vs {vm:.4f} at p={pm}"))
    return checks


def _notes(final: pd.DataFrame) -> str:
    table = final.groupby("p")[["train_err", "val_err", "test_err", "gap"]].agg(["mean", "std"])
    lines = ["p      train err        val err          test err         gap (nats)"]
    for p, r in table.iterrows():
        cells = [f"{100 * r[(c, 'mean')]:5.2f} ± {100 * (0 if math.isnan(r[(c, 'std')]) else r[(c, 'std')]):4.2f} %"
                 for c in ("train_err", "val_err", "test_err")]
        lines.append(f"{p:<5g}  " + "  ".join(cells) +
                     f"  {r[('gap', 'mean')]:.3f} ± {0 if math.isnan(r[('gap', 'std')]) else r[('gap', 'std')]:.3f}")
    lines.append("Srivastava et al. 2014 (full MNIST): 1.60 % -> 1.25 % test error with dropout")
    return "\n".join(lines)


# ---- figures ------------------------------------------------------------------------------------

def plot(result, out_dir: Path) -> list[Path]:
    data = result.data
    pm = result.config["p_moderate"]
    paths = []

    curves = data[data.experiment == "curve"].groupby(["p", "epoch"]).mean(numeric_only=True).reset_index()
    fig, (ax,) = plots.figure(width=6.0)
    for p, color in ((0.0, "C3"), (pm, "C0")):
        c = curves[curves.p == p]
        label = "no dropout" if p == 0 else f"dropout p={p:g}"
        ax.plot(c.epoch, c.train_loss, "--", color=color, label=f"{label}: training")
        ax.plot(c.epoch, c.val_loss, "o-", ms=3, color=color, label=f"{label}: validation")
    ax.set_yscale("log")
    plots.label(ax, "epoch", "cross-entropy loss (nats, log scale)", "Overfitting and dropout (mean over seeds)",
                fontsize=8)
    paths.append(plots.save(fig, out_dir, "dropout_curves"))

    final = data[data.experiment == "final"]
    g = final.groupby("p")
    mean, std = g.mean(numeric_only=True), g.std(ddof=1, numeric_only=True).fillna(0.0)
    fig, (ax1, ax2) = plots.figure(ncols=2, width=5.0)
    for col, label, color in (("train_err", "training", "C2"), ("val_err", "validation", "C0"),
                              ("test_err", "test", "C1")):
        plots.measured(ax1, mean.index, 100 * mean[col], 100 * std[col], label=f"{label} (measured)", color=color)
    for key, ls in (("no dropout", ":"), ("dropout", "--")):
        ax1.axhline(SRIVASTAVA_2014[key], ls=ls, color="gray", lw=1,
                    label=f"Srivastava 2014, full MNIST, {key}: {SRIVASTAVA_2014[key]} %")
    plots.label(ax1, "dropout probability p", "error at last epoch (%)",
                f"Error vs p ({len(result.seeds)} seed(s), mean ± std)", fontsize=7)
    plots.measured(ax2, mean.index, mean["gap"], std["gap"], label="validation − training loss (measured)")
    ax2.axhline(0, color="gray", lw=1, label="no gap")
    plots.label(ax2, "dropout probability p", "generalization gap (nats)", "Generalization gap vs p", fontsize=8)
    paths.append(plots.save(fig, out_dir, "dropout_sweep"))

    sc = data[data.experiment == "scaling"].sort_values("p")
    grid = np.linspace(0.0, 0.95, 200)
    fig, (ax1, ax2) = plots.figure(ncols=2, width=5.0)
    plots.theory(ax1, grid, np.ones_like(grid), label="theory, inverted dropout: E = h")
    ax1.plot(grid, 1 - grid, "--", color="gray", label="plain dropout (no 1/(1−p)): E = (1−p)·h")
    plots.measured(ax1, sc.p, sc.mean_ratio, label="measured: Σ E[dropout(h)] / Σ h")
    plots.label(ax1, "dropout probability p", "mean activation relative to eval mode",
                "Inverted scaling keeps the expectation", fontsize=8)
    plots.theory(ax2, grid, grid / (1 - grid), label="theory: Var = h²·p/(1−p)")
    plots.measured(ax2, sc.p, sc.var_ratio, label="measured: Σ Var / Σ h²")
    ax2.set_yscale("log")
    plots.label(ax2, "dropout probability p", "variance relative to h² (log scale)",
                "...and adds noise of variance p/(1−p)", fontsize=8)
    paths.append(plots.save(fig, out_dir, "dropout_scaling"))
    return paths


STUDY = Study(
    name="dropout",
    claim='"Dropout is a technique to avoid overfitting in neural networks" ... "During test time we '
          'apply no dropout"',
    theory="inverted dropout: y = m·h/(1−p), m ~ Bernoulli(1−p), so E[y] = h and Var[y] = h²·p/(1−p); "
           "eval mode is the identity (deterministic); a moderate p narrows the train/validation gap, "
           "too large a p underfits",
    config=Config, quick=QUICK, measure=measure, plot=plot,
    seeds_quick=2,
    quick_time=7.3,  # measured on 2 CPU cores (deepdiag run all --quick)
)
