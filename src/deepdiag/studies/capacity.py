"""Capacity: too little underfits, too much overfits, and the validation loss is what tells them apart.

The claim
---------
The first seed text describes two failures. Overfitting: the network "will learn to replicate the
training data ... it performs poorly on the unseen test data". Underfitting: "the model fails to adapt
or learn neither the training data nor the testing data ... The model is tends to underfit when model
performs poorly on the training data." Capacity (width and depth) moves a network from one to the other.

The theory, in plain words
--------------------------
* The *chance baseline* is the cross-entropy of a model that ignores its input and predicts the class
  frequencies: ``L_chance = −Σ_k p_k ln p_k``, which is ``ln K`` for K balanced classes (ln 2 ≈ 0.693
  here). A model whose *training* loss stays near ``L_chance`` has learnt nothing: it underfits.
  ``chance_loss`` computes it.
* A linear classifier (depth 0) cannot separate two concentric circles: every line leaves about half of
  each ring on either side, so its best training loss stays ≈ ln 2. A one-unit bottleneck (width 1)
  is no better: the logits are affine in a single ReLU'd number, which cannot encode "inside vs outside".
* A network with many more parameters than the n_train = 100 noisy points can drive the training loss
  to ≈ 0 by memorising the noise. Cross-entropy on unseen points then *rises* from its minimum: the
  memorised, overconfident mistakes cost ``−ln p(wrong)`` each, which grows without bound as the
  logits grow. So the validation loss is U-shaped twice over: in capacity (underfit → sweet spot →
  overfit) and, for a large model, in epochs (the minimum is the early-stopping epoch).
* Random labels (Zhang et al. 2017, "Understanding deep learning requires rethinking generalization"):
  a 1×512 ReLU MLP has 407k parameters for 1000 MNIST images, so it can memorise *any* labelling —
  even labels drawn at random — to 100 % training accuracy. On unseen images its accuracy is then
  chance: the random labels carry no information about the true class, so whatever function is
  learnt, its expected test accuracy is exactly 1/K = 10 %. Its spread is at least binomial,
  3·√(p(1−p)/n_test) ≈ 2.8 points for n_test = 1000 (``chance_accuracy_band``), but larger in truth:
  the net tends to send similar images (one digit) to the same random label, so test points are not
  independent; were each digit mapped wholesale to one label the spread would be √(p(1−p)/K) ≈ 9.5
  points. The check therefore allows ``CHANCE_TOLERANCE`` = ±5 points around 1/K ("≈ 10 %"), on the
  mean over seeds. Memorising noise takes longer than learning the real structure, so true labels
  reach 100 % training accuracy in fewer epochs.

The set-up
----------
``circles`` with noise 0.2 (two noisy concentric rings, K = 2), n_train = 100, validation on 200 held-out
points. Two sweeps share the largest model: width ∈ ``widths`` at depth ``max(depths)``, and depth ∈
``depths`` (0 = linear) at width ``max(widths)``. Every model is trained full-batch with Adam (lr 0.01)
for ``epochs`` epochs with ``dd.fit``; the per-epoch train and validation losses are kept. Then the
random-labels experiment: ``dd.data.load("mnist", n_train=1000, random_labels=True)``, a 1×512 ReLU MLP,
Adam lr 1e-3, batch 128, trained until it fits every training label (or ``rl_max_epochs``), once with
true and once with random labels; accuracy on the 1000 test images is measured each epoch.

Labels. Each trained model gets a ``dd.Monitor`` (with the chance loss as its underfitting baseline)
fed its curves through ``monitor.epoch``; its ``underfitting``/``overfitting`` findings of severity
warning or above are the run's labels, and the check ``labels_agree`` holds them against the capacity
(smallest: underfitting only; largest: overfitting only). The Monitor runs as the ``curve_findings``
probe, on the trained model where it trained. ``curve_labels`` writes the same rules out on the
curves alone (a reference for the tests).

Runs. Every training run of both parts is a ``RunConfig`` (``noise``, ``random_labels``, the test split
as the per-epoch curve, and the stop rule ``stop_at_train_acc=1.0`` among its fields), and all of them
train in one call through the sweep layer (``deepdiag.study.train_runs``: the engine, store and resume
of ``run_study``).

What the figures show
---------------------
``capacity_sweep.png``: final training loss, final validation loss and early-stopped (best-epoch)
validation loss against width and against depth (mean ± spread over seeds), with the chance baseline
ln K drawn as the reference line. ``capacity_curves.png``: loss against epoch for the smallest, the best
and the largest model — the largest's validation loss turns up while its training loss falls to ≈ 0.
``random_labels.png``: training and test accuracy against epoch for true and random labels, with chance
1/K and its ±3σ binomial band drawn as the theory.

Where the seed text is loose
----------------------------
It blames overfitting on training "over and over the same training datasets so many times": epochs do
matter (the early-stopping epoch), but a small model trained forever does not overfit — capacity relative
to the data is what lets a network memorise. It also says underfit models do badly on "neither the
training data nor the testing data"; the measurable, sufficient symptom is the *training* loss, which
is what the ``underfitting`` finding uses. "Performs poorly on unseen data" is best measured as
validation *loss*: accuracy moves much less (the overfit models here lose a few points of accuracy while
their validation loss triples).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from .._validate import check_choice, check_number
from ..models import ACTIVATIONS
from ..monitor import Monitor
from ..runs import RunConfig, dataset_of
from ..study import Measurement, Study, check_rule, train_runs

DATASETS = ("circles", "moons")
UNDERFIT_FRACTION = 0.9  # curve_labels: best train loss ≥ 90 % of the chance loss = underfitting
OVERFIT_RISE = 0.10  # curve_labels: val loss ≥ 10 % above its minimum for the last 3 epochs ...
TRAIN_FALL = 0.05  # ... while train loss fell ≥ 5 % since then = overfitting
CHANCE_TOLERANCE = 0.05  # random labels: |test accuracy − 1/K| allowed (see the module docstring)


# ---- theory -------------------------------------------------------------------------------------

def chance_accuracy_band(n_classes: int, n_test: int, z: float = 3.0) -> tuple[float, float, float]:
    """(1/K, low, high): accuracy of guessing on n_test points and its ±z·σ binomial band,
    σ = √(p(1−p)/n_test) with p = 1/K — the spread if each test point were right with probability 1/K
    independently (a lower bound for a net trained on random labels; see the module docstring).
    >>> [round(v, 4) for v in chance_accuracy_band(10, 1000)]
    [0.1, 0.0715, 0.1285]
    """
    p = 1.0 / n_classes
    half = z * math.sqrt(p * (1 - p) / n_test)
    return p, p - half, p + half


def curve_labels(train_loss, val_loss, baseline: float) -> set[str]:
    """Label one run's curves "underfitting" and/or "overfitting" — the fallback for ``dd.Monitor``'s
    findings, with the same thresholds as ``deepdiag.rules``.

    underfitting: min(train_loss) ≥ UNDERFIT_FRACTION (90 %) of the chance baseline — the model could not
        beat a constant prediction by 10 % on the very data it trains on.
    overfitting: the validation loss stayed ≥ OVERFIT_RISE (10 %) above its minimum for the last 3 epochs,
        while the training loss fell ≥ 5 % since that minimum — "learns to replicate the training data
        and performs poorly on unseen data". 10 % is well above the epoch-to-epoch wobble of a curve.
    """
    train, val = np.asarray(train_loss, float), np.asarray(val_loss, float)
    labels = set()
    if len(train) >= 3 and np.nanmin(train) >= UNDERFIT_FRACTION * baseline:
        labels.add("underfitting")
    best = int(np.nanargmin(val))
    if (len(val) - 1 - best >= 3 and np.all(val[-3:] >= (1 + OVERFIT_RISE) * val[best])
            and train[-1] <= (1 - TRAIN_FALL) * train[best]):
        labels.add("overfitting")
    return labels


def monitor_labels(model, train_loss, val_loss, baseline: float) -> tuple[set[str], str]:
    """Labels from ``dd.Monitor``'s findings (severity warning or error). Returns (labels, source). The
    Monitor is attached to the trained model and fed the run's curves through ``monitor.epoch``, as a
    user's loop would."""
    with Monitor(model, baseline=baseline) as monitor:
        for tl, vl in zip(train_loss, val_loss):
            monitor.epoch(train_loss=float(tl), val_loss=float(vl))
        findings = monitor.diagnose()
    codes = {f.code for f in findings if f.severity in ("warning", "error")}
    return codes & {"underfitting", "overfitting"}, "dd.Monitor"


# ---- knobs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """Full-mode knobs. Width sweep at depth max(depths); depth sweep at width max(widths)."""

    dataset: str = "circles"
    noise: float = 0.2
    n_train: int = 100
    widths: tuple = (1, 2, 4, 8, 32, 256)
    depths: tuple = (0, 1, 2, 3)
    activation: str = "relu"
    lr: float = 0.01
    epochs: int = 300
    rl_n_train: int = 1000
    rl_width: int = 512
    rl_lr: float = 1e-3
    rl_batch_size: int = 128
    rl_max_epochs: int = 150

    def __post_init__(self):
        check_choice("dataset", self.dataset, DATASETS)
        check_number("noise", self.noise, low=0.0)
        check_number("n_train", self.n_train, low=10, integer=True)
        for name, values, low in (("widths", self.widths, 1), ("depths", self.depths, 0)):
            if len(values) < 3 or list(values) != sorted(set(values)):
                raise ValueError(f"{name}={values!r} must hold at least 3 distinct increasing integers "
                                 "(smallest, intermediate, largest capacity)")
            for v in values:
                check_number(name, v, low=low, integer=True)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_number("lr", self.lr, low=0.0, low_inclusive=False)
        check_number("epochs", self.epochs, low=10, integer=True)
        check_number("rl_n_train", self.rl_n_train, low=10, high=3000, integer=True)
        check_number("rl_width", self.rl_width, low=1, integer=True)
        check_number("rl_lr", self.rl_lr, low=0.0, low_inclusive=False)
        check_number("rl_batch_size", self.rl_batch_size, low=1, integer=True)
        check_number("rl_max_epochs", self.rl_max_epochs, low=1, integer=True)


QUICK = dict(widths=(1, 4, 128), depths=(0, 1, 3), epochs=250, rl_n_train=300, rl_max_epochs=60)


# ---- experiments --------------------------------------------------------------------------------

def _capacity_configs(config: Config, seed: int) -> list[tuple[str, RunConfig]]:
    """Every model of both sweeps on one seed, as (sweep, run): full-batch Adam on the noisy set drawn
    and split by `seed`; the largest model belongs to both sweeps (one run, listed twice)."""
    base = RunConfig(dataset=config.dataset, n_train=config.n_train, noise=config.noise, data_seed=seed,
                     activation=config.activation, optimizer="adam", lr=config.lr, batch_size=None,
                     epochs=config.epochs, seed=seed, probes=("n_params", "curve_findings"))
    big_w, big_d = max(config.widths), max(config.depths)
    models = [("width", big_d, w) for w in config.widths] + [("depth", d, big_w) for d in config.depths]
    return [(sweep, dataclasses.replace(base, depth=d, width=w)) for sweep, d, w in models]


def _capacity_rows(runs: list[tuple[str, RunConfig]], results) -> tuple[list[dict], list[dict]]:
    """(summary rows, per-epoch curve rows) of one seed's trained runs."""
    summary, curves, seen = [], [], set()
    for (sweep, run), result in zip(runs, results):
        hist, probes = result.to_history(), result.probe_values()
        depth, width, seed = run.depth, run.width, run.seed
        if run.hash not in seen:
            seen.add(run.hash)
            for e, tl, vl in zip(hist.epoch, hist.train_loss, hist.val_loss):
                curves.append(dict(experiment="curve", seed=seed, depth=depth, width=width, epoch=e,
                                   train_loss=tl, val_loss=vl))
        labels = set(probes["curve_findings"].split(",")) & {"underfitting", "overfitting"}
        summary.append(dict(
            experiment=sweep, seed=seed, depth=depth, width=width, n_params=probes["n_params"],
            train_loss=hist.train_loss[-1], min_train_loss=min(hist.train_loss),
            val_loss=hist.val_loss[-1], best_val_loss=hist.best_val_loss, best_epoch=hist.best_epoch,
            epochs=hist.epoch[-1], train_acc=hist.train_acc[-1], val_acc=hist.val_acc[-1],
            chance_loss=probes["chance_loss"], labels=",".join(sorted(labels)) or "none",
            label_source="dd.Monitor"))
    return summary, curves


def _capacity_runs(config: Config, seed: int) -> tuple[list[dict], list[dict]]:
    """Every model of both sweeps on one seed, trained: (summary rows, per-epoch curve rows)."""
    runs = _capacity_configs(config, seed)
    return _capacity_rows(runs, train_runs([run for _, run in runs]))


def _random_label_configs(config: Config, seed: int) -> list[RunConfig]:
    """True and random labels on rl_n_train MNIST images: Adam until training accuracy reaches 100 %
    (or rl_max_epochs); the per-epoch "val" curve is the test split here."""
    base = RunConfig(dataset="mnist", n_train=config.rl_n_train, data_seed=seed, width=config.rl_width,
                     depth=1, optimizer="adam", lr=config.rl_lr, batch_size=config.rl_batch_size,
                     epochs=config.rl_max_epochs, seed=seed, val_split="test", stop_at_train_acc=1.0)
    return [base, dataclasses.replace(base, random_labels=True)]


def _random_label_rows(runs: list[RunConfig], results) -> list[dict]:
    rows = []
    for run, result in zip(runs, results):
        hist, ds = result.to_history(), dataset_of(run)
        labels = "random" if run.random_labels else "true"
        for e, tl, ta, vl, va in zip(hist.epoch, hist.train_loss, hist.train_acc, hist.val_loss, hist.val_acc):
            rows.append(dict(experiment="random_labels", labels=labels, seed=run.seed, epoch=e, train_loss=tl,
                             train_acc=ta, test_loss=vl, test_acc=va, n_test=len(ds.y_test),
                             n_classes=ds.n_classes))
    return rows


# ---- checks -------------------------------------------------------------------------------------

def _spread(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _sweep_checks(summary: pd.DataFrame, config: Config, n_seeds: int) -> list:
    seeds = f"{n_seeds} seed(s), mean"
    means = summary.groupby(["experiment", "depth", "width"], as_index=False).mean(numeric_only=True)
    width_rows = means[means.experiment == "width"].sort_values("width")
    depth_rows = means[means.experiment == "depth"].sort_values("depth")
    largest = width_rows.iloc[-1]
    checks = []
    for sweep, rows, key in (("width", width_rows, "width"), ("depth", depth_rows, "depth")):
        small = rows.iloc[0]
        ratio = small.min_train_loss / small.chance_loss
        what = f"width {int(small.width)} at depth {int(small.depth)}" if sweep == "width" else \
            ("the linear model (depth 0)" if small.depth == 0 else f"depth {int(small.depth)}")
        checks.append(check_rule(
            f"underfit_smallest_{sweep}", f"the smallest model ({what}) underfits: its training loss stays "
            "near the chance loss ln K", float(ratio), ">= 0.8",
            "best training loss / chance loss >= 0.8", ratio >= 0.8,
            f"{seeds}: best train loss {small.min_train_loss:.3f} vs chance {small.chance_loss:.3f}"))
    tl_ratio = largest.train_loss / largest.chance_loss
    checks.append(check_rule(
        "overfit_largest_train", f"the largest model ({int(largest.depth)}x{int(largest.width)}) fits the "
        "training data: training loss near zero", float(tl_ratio), "<= 0.1",
        "final training loss / chance loss <= 0.1", tl_ratio <= 0.1,
        f"{seeds}: final train loss {largest.train_loss:.4f} vs chance {largest.chance_loss:.3f}"))
    big = summary[(summary.experiment == "width") & (summary.width == largest.width)]
    rises = big.val_loss / big.best_val_loss
    early = big.best_epoch < big.epochs
    checks.append(check_rule(
        "overfit_largest_val_rises", "the largest model's validation loss rises from its minimum "
        "(the best validation loss is at an early-stopping epoch)", float(rises.min()), ">= 1.5",
        "final val loss / min val loss >= 1.5 in every seed, minimum before the last epoch",
        bool((rises >= 1.5).all() and early.all()),
        f"{n_seeds} seed(s): ratio min {rises.min():.2f}, mean {rises.mean():.2f}; "
        f"best epochs {big.best_epoch.astype(int).tolist()} of {int(big.epochs.iloc[0])}"))
    for sweep, rows, key in (("width", width_rows, "width"), ("depth", depth_rows, "depth")):
        best = rows.iloc[int(np.argmin(rows.val_loss.to_numpy()))]
        inner = rows[key].iloc[0] < best[key] < rows[key].iloc[-1]
        checks.append(check_rule(
            f"best_val_intermediate_{sweep}", f"the final validation loss is lowest at an intermediate {key}",
            int(best[key]), f"strictly between {int(rows[key].iloc[0])} and {int(rows[key].iloc[-1])}",
            f"argmin over {key} of the mean final val loss is neither the smallest nor the largest",
            inner, f"{seeds}: val loss by {key} " + ", ".join(
                f"{int(k)}: {v:.3f}" for k, v in zip(rows[key], rows.val_loss))))
    checks.append(_labels_check(summary, width_rows, depth_rows, n_seeds))
    return checks


def _labels_check(summary, width_rows, depth_rows, n_seeds):
    """The smallest models are labelled underfitting (not overfitting), the largest overfitting (not
    underfitting), and the best intermediate model underfitting-free, in every seed."""
    expect = {}
    for sweep, rows, key in (("width", width_rows, "width"), ("depth", depth_rows, "depth")):
        expect[(sweep, rows.iloc[0].depth, rows.iloc[0].width)] = "underfitting"
        expect[(sweep, rows.iloc[-1].depth, rows.iloc[-1].width)] = "overfitting"
    agree, total, wrong = 0, 0, []
    for _, r in summary.iterrows():
        want = expect.get((r.experiment, r.depth, r.width))
        if want is None:
            continue
        got = set(r.labels.split(",")) - {"none"}
        ok = got == {want}
        agree, total = agree + ok, total + 1
        if not ok:
            wrong.append(f"{int(r.depth)}x{int(r.width)} seed {int(r.seed)}: {sorted(got)} (want {want})")
    source = summary.label_source.iloc[0]
    return check_rule(
        "labels_agree", f"the overfitting/underfitting labels ({source}) agree: smallest models "
        "underfitting, largest overfitting", f"{agree}/{total}", f"{total}/{total}",
        "every smallest/largest run gets exactly its expected label", agree == total,
        f"{n_seeds} seed(s); " + ("; ".join(wrong) if wrong else "all agree"))


def _random_label_checks(rl: pd.DataFrame, n_seeds: int) -> list:
    last = rl.groupby(["labels", "seed"]).tail(1).set_index(["labels", "seed"])
    first_fit = rl[rl.train_acc >= 1.0].groupby(["labels", "seed"]).epoch.min()
    rand, true = last.loc["random"], last.loc["true"]
    k, n_test = int(rl.n_classes.iloc[0]), int(rl.n_test.iloc[0])
    p, low, high = chance_accuracy_band(k, n_test)
    test_acc = float(rand.test_acc.mean())
    lo_tol, hi_tol = p - CHANCE_TOLERANCE, p + CHANCE_TOLERANCE
    ep = {lab: [float(first_fit.get((lab, s), math.nan)) for s in rand.index] for lab in ("true", "random")}
    mean_ep = {lab: float(np.mean(v)) for lab, v in ep.items()}
    slower = all(r > t for r, t in zip(ep["random"], ep["true"]))
    return [
        check_rule("random_labels_fitted", "a 1x512 MLP fits random labels: 100 % training accuracy",
                   float(rand.train_acc.min()), 1.0, "min training accuracy over seeds == 1",
                   bool((rand.train_acc >= 1.0).all()),
                   f"{n_seeds} seed(s); epochs to 100 %: " + ", ".join(f"{e:g}" for e in ep["random"])),
        check_rule("random_labels_test_chance", "...while its test accuracy stays at chance 1/K",
                   test_acc, f"{p:.3f} ± {CHANCE_TOLERANCE:g}",
                   f"|mean test accuracy - 1/K| <= {CHANCE_TOLERANCE:g} (n_test={n_test}; binomial ±3σ "
                   f"alone would be [{low:.3f}, {high:.3f}])", lo_tol <= test_acc <= hi_tol,
                   f"{n_seeds} seed(s): " + ", ".join(f"{a:.3f}" for a in rand.test_acc)),
        check_rule("random_slower_than_true", "random labels take more epochs to fit than true labels",
                   mean_ep["random"] / mean_ep["true"] if mean_ep["true"] > 0 else math.nan, "> 1",
                   "epochs to 100 % train accuracy: random > true in every seed",
                   slower and not any(math.isnan(v) for v in ep["random"] + ep["true"]),
                   f"{n_seeds} seed(s), mean epochs: random {mean_ep['random']:.1f}, true {mean_ep['true']:.1f}"),
        check_rule("true_labels_generalize", "control: the same net on true labels generalises",
                   float(true.test_acc.mean()), f"> {p:.3f} + 0.4",
                   "mean test accuracy with true labels > 1/K + 40 points",
                   float(true.test_acc.mean()) > p + 0.4,
                   f"{n_seeds} seed(s): " + ", ".join(f"{a:.3f}" for a in true.test_acc)),
    ]


def measure(config: Config, seeds: list[int]) -> Measurement:
    cap = {seed: _capacity_configs(config, seed) for seed in seeds}
    rand = {seed: _random_label_configs(config, seed) for seed in seeds}
    runs = [run for seed in seeds for run in [r for _, r in cap[seed]] + rand[seed]]
    results = iter(train_runs(runs))  # every training run through the sweep layer, one call
    summary, curves, rl = [], [], []
    for seed in seeds:
        s, c = _capacity_rows(cap[seed], [next(results) for _ in cap[seed]])
        summary += s
        curves += c
        rl += _random_label_rows(rand[seed], [next(results) for _ in rand[seed]])
    summary_df, rl_df = pd.DataFrame(summary), pd.DataFrame(rl)
    checks = _sweep_checks(summary_df, config, len(seeds)) + _random_label_checks(rl_df, len(seeds))
    source = summary_df.label_source.iloc[0]
    notes = (f"Labels from {source}. " if source != "dd.Monitor" else "Labels from dd.Monitor findings. ") + \
        "Losses are cross-entropy in nats; the chance loss is the entropy of the training labels."
    return Measurement(checks, pd.concat([summary_df, pd.DataFrame(curves), rl_df], ignore_index=True), notes)


# ---- figures ------------------------------------------------------------------------------------

def _mean_spread(frame: pd.DataFrame, key: str, cols: list[str]) -> pd.DataFrame:
    g = frame.groupby(key)[cols]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).fillna(0.0).add_suffix("_sd"))
    return out.reset_index()


def plot(result, out_dir: Path) -> list[Path]:
    data = result.data
    figures = []
    cols = ["train_loss", "val_loss", "best_val_loss", "chance_loss"]
    fig, axes = plots.figure(2, width=5.2)
    for ax, sweep in zip(axes, ("width", "depth")):
        part = data[data.experiment == sweep]
        stats = _mean_spread(part, sweep, cols)
        xplot = stats[sweep].to_numpy(float)
        plots.measured(ax, xplot, stats.train_loss_mean, stats.train_loss_sd, label="final training loss")
        plots.measured(ax, xplot, stats.val_loss_mean, stats.val_loss_sd, label="final validation loss")
        plots.measured(ax, xplot, stats.best_val_loss_mean, stats.best_val_loss_sd,
                       label="early-stopped val loss", mfc="none")
        plots.theory(ax, xplot, stats.chance_loss_mean, label="chance loss ln K (theory)", color="k")
        other = "depth" if sweep == "width" else "width"
        ax.set_title(f"{sweep} sweep ({other} {int(part[other].iloc[0])})")
        if sweep == "width":
            ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        plots.label(ax, f"{sweep} ({'units per hidden layer' if sweep == 'width' else 'hidden layers'})",
                    "cross-entropy (nats)")
    n = data.seed.nunique()
    fig.suptitle(f"capacity: underfit (left of each) to overfit (right); mean ± sd over {n} seed(s)", fontsize=10)
    figures.append(plots.save(fig, out_dir, "capacity_sweep"))

    fig, axes = plots.figure(3, width=4.2)
    width_rows = data[data.experiment == "width"]
    means = width_rows.groupby(["depth", "width"], as_index=False).val_loss.mean()
    picks = [("smallest", means.iloc[0]), ("best", means.iloc[int(np.argmin(means.val_loss))]),
             ("largest", means.iloc[-1])]
    curves = data[(data.experiment == "curve")]
    for ax, (tag, row) in zip(axes, picks):
        c = curves[(curves.depth == row.depth) & (curves.width == row.width)]
        c = c.groupby("epoch", as_index=False)[["train_loss", "val_loss"]].mean()
        ax.plot(c.epoch, c.train_loss, label="training loss")
        ax.plot(c.epoch, c.val_loss, label="validation loss")
        best = int(c.epoch[np.argmin(c.val_loss.to_numpy())])
        ax.axvline(best, color="grey", lw=0.8, ls=":", label=f"early-stopping epoch {best}")
        plots.theory(ax, [c.epoch.min(), c.epoch.max()], [width_rows.chance_loss.mean()] * 2,
                     label="chance ln K", color="k")
        ax.set_ylim(0, max(1.0, min(3.0, c.val_loss.max() * 1.05)))
        plots.label(ax, "epoch (full batch)", "cross-entropy (nats)", f"{tag}: {int(row.depth)}x{int(row.width)} MLP")
    figures.append(plots.save(fig, out_dir, "capacity_curves"))

    rl = data[data.experiment == "random_labels"]
    if len(rl):
        fig, axes = plots.figure(2, width=5.2)
        k, n_test = int(rl.n_classes.iloc[0]), int(rl.n_test.iloc[0])
        p, low, high = chance_accuracy_band(k, n_test)
        for ax, col, title in ((axes[0], "train_acc", "training accuracy"), (axes[1], "test_acc", "test accuracy")):
            for labels, color in (("true", "C0"), ("random", "C3")):
                part = rl[rl.labels == labels]
                for i, (seed, run) in enumerate(part.groupby("seed")):
                    ax.plot(run.epoch, run[col], color=color, alpha=0.8, marker="o", ms=2.5,
                            label=f"{labels} labels" if i == 0 else None)
            emax = rl.epoch.max()
            plots.theory(ax, [1, emax], [p, p], label="chance 1/K (theory)", color="k")
            ax.fill_between([1, emax], [low, low], [high, high], color="k", alpha=0.15, label="±3σ binomial")
            for edge in (p - CHANCE_TOLERANCE, p + CHANCE_TOLERANCE):
                ax.axhline(edge, color="k", lw=0.8, ls=":", label="check tolerance" if edge < p else None)
            ax.set_ylim(0, 1.02)
            plots.label(ax, "epoch", title)
        n_train = int(result.config.get("rl_n_train", 0))
        fig.suptitle(f"Zhang et al. 2017: 1x{result.config.get('rl_width')} MLP on {n_train} MNIST images "
                     "memorises random labels; test accuracy stays at chance", fontsize=10)
        figures.append(plots.save(fig, out_dir, "random_labels"))
    return figures


STUDY = Study(
    name="capacity",
    claim='"the model fails to adapt or learn neither the training data nor the testing data" (underfit) vs '
          '"the neural network will learn to replicate the training data ... it performs poorly on the '
          'unseen test data" (overfit)',
    theory="underfit: training loss stays near the chance loss ln K; overfit: training loss → 0 while the "
           "validation loss rises from its minimum; best validation loss at an intermediate capacity or an "
           "early-stopping epoch; random labels are memorised (100 % train) with test accuracy 1/K",
    config=Config, quick=QUICK, measure=measure, plot=plot,
    quick_time=2.3,  # measured on 2 CPU cores (deepdiag run all --quick)
)
