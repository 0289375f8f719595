"""Depth: deeper plain networks can train *worse*, which is not overfitting; residual networks do not.

The claim. The second seed text is a Q&A about Andrew Ng's remark that "in theory, as you make a
neural network deeper, it should only do better and better on the training set". The accepted answer:
"In general, adding more and more layers does not lead to better training accuracy", "The issue is
certainly not overfitting, as Andrew Ng is talking only about the training set", and the statement
becomes true "if you add layers [...] for which weights w exist, such that f_w is the identity map.
In such a case [...] in theory optimizing this new network cannot be worse than without the additional
layers." In practice this is not observed "(see the ResNet paper)" because "the employed solvers do
not deliver the global optimal solution".

The theory (the identity-map argument). Let a trained net of depth d compute f = out ∘ g_d ∘ … ∘ g_1.
Insert k layers g(h) = ReLU(I·h + 0) after the last hidden layer. The hidden activations of a ReLU
net are non-negative (they leave a ReLU), and ReLU(h) = h for h ≥ 0, so every inserted layer is the
identity *on the inputs it receives* and the deeper net computes exactly f: same outputs, same
training loss. (On the raw, standardised inputs, which are negative half the time, the same layer
would clip them: ReLU after an identity is the identity only on non-negative inputs.) Hence
min_θ L_train(depth d + k) ≤ min_θ L_train(depth d): the deeper family is never worse *in theory*,
and a deeper net that trains worse shows a failure of the solver, not of the model class. He et al.
(2016), "Deep residual learning for image recognition", build this in: a residual block computes
h + F(h), so F = 0 is the identity and is easy for SGD to reach.

The set-up (full mode). sklearn's digits (1797 8×8 images; 1079 train, 359 validation, 359 test,
standardised), MLPs of width 64 with batch norm, plain (linear → BN → ReLU) and pre-activation
residual (h + linear(ReLU(BN(h)))), ``dd.mlp(64, 10, width=64, depth=D, norm="batch",
residual=...)``, He init, at depths D = 4, 20, 40; SGD with momentum 0.9, lr 0.01, batch 64, 30
epochs (the seed text does not say which optimizer; this is the standard choice of He et al., scaled to
a small problem); 3 seeds. We record the training loss and error on the whole training set (eval mode)
after every epoch and use the best training loss and the final training error.

Runs. Every training run (the plain and residual nets, and the shallow net of the identity
construction) is a ``RunConfig`` trained through the sweep layer (``deepdiag.study.train_runs``: the
engine, store and resume of ``run_study``). The identity construction then rebuilds the trained shallow
net from its ``state_dict`` probe and extends it: an exact computation, outside the sweep layer.

Checks. (1) degradation: plain-40 training error > plain-4 training error + 10 points — on the
*training* set, so it is not overfitting; (2) residual-40 training error < 0.25 × plain-40's;
(3) the identity-map construction: a trained shallow plain net (depth 2, no batch norm) extended to
depth 40 with identity layers gives the same outputs (max |Δ| ≤ 1e-6) and (4) the same training loss;
(5) ``dd.compare_depths`` (the ``degradation`` rule of the diagnosis) fires on every plain seed and
(6) on no residual seed.

Published figures (He et al. 2016). On CIFAR-10 the plain 56-layer net has higher *training* error
(and test error) than the plain 20-layer net throughout training (their Fig. 1 and Fig. 6 left),
while ResNets keep improving with depth: test errors 8.75 / 7.51 / 7.17 / 6.97 / 6.43 %
at 20 / 32 / 44 / 56 / 110 layers (Table 6). On ImageNet plain-34 is worse than plain-18 (28.54 %
vs 27.94 % top-1 validation error) while ResNet-34 beats ResNet-18 (25.03 % vs 27.88 %) (Table 2).
Here (full mode, measured once on this set-up): training error plain 0.5 / 44 / 83 %, residual 0.17 / 0.06 / 3.5 % at ~4/20/40.

The figures. ``depth_training.png``: left, the best training loss vs depth (log scale), plain and
residual (mean ± seed std), with the identity-map bound — the best loss any shallower net of the same
family reached, which the deeper family can always match — as a line; right, the final training
error vs depth. ``depth_curves.png``: training loss per epoch for each depth, plain solid, residual
dashed (compare He et al. 2016, Fig. 4). ``depth_identity.png``: the identity construction, outputs of
the extended net against the shallow net's (on the diagonal) and the training loss of both.

Where the seed texts are loose. The Q&A's second reason, numerical error in the chain rule, is not
what is shown to break the plain nets here (the ``precision`` study measures that error separately):
with batch norm, the plain net's gradients are well scaled at initialisation, yet SGD still
cannot find the identity-like solution the deeper net has. The rejected answer's "deeper overfits" is
wrong for this experiment: the deep plain net is worse on the training set itself.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .. import data as dd_data
from .. import plots
from .._validate import check_choice, check_number
from ..rules import compare_depths
from ..probes import load_state
from ..runs import RunConfig, build_model, dataset_of
from ..study import Measurement, Study, check_rule, torch_threads, train_runs
from ..sweep import expand
from ..train import evaluate

__all__ = ["Config", "QUICK", "STUDY", "measure", "plot", "extend_with_identity", "identity_bound"]

FULL_MODE_MEASURED = {"plain": {4: 0.5, 20: 44.0, 40: 83.0}, "residual": {4: 0.17, 20: 0.06, 40: 3.5}}


# ---- theory: the identity-map construction -------------------------------------------------------

def extend_with_identity(model: nn.Module, extra: int, insert_at: int | None = None) -> nn.Module:
    """A deeper copy of a plain ``dd.mlp`` (no norm, no dropout needed) with `extra` hidden layers
    whose Linear is the identity (``dd.init_weights(..., "identity")``, bias 0) inserted before hidden
    block `insert_at` (default: after the last hidden block).

    Each inserted block computes ReLU(I·h + 0) = max(h, 0): the identity on non-negative h, which the
    post-ReLU activations of a plain ReLU net are. Inserted at 0 it acts on the raw inputs instead,
    which may be negative, and the construction breaks (used by the tests as the failing case).
    """
    hidden = model.hidden
    if not isinstance(hidden, nn.ModuleList) or len(hidden) == 0:
        raise ValueError("extend_with_identity needs a dd.mlp with at least one hidden layer")
    check_number("extra", extra, low=0, integer=True)
    depth = len(hidden)
    insert_at = depth if insert_at is None else check_number("insert_at", insert_at, low=0, high=depth,
                                                             integer=True)
    width = hidden[0].linear.out_features
    if insert_at == 0 and hidden[0].linear.in_features != width:
        raise ValueError(f"insert_at=0 needs in_features == width ({hidden[0].linear.in_features} != {width})")
    template = hidden[-1]
    deeper = copy.deepcopy(model)
    blocks = [copy.deepcopy(b) for b in hidden]
    new = []
    for _ in range(extra):
        block = copy.deepcopy(template)
        with torch.no_grad():
            nn.init.eye_(block.linear.weight)  # same as dd.init_weights(block.linear, "identity")
            if block.linear.bias is not None:
                block.linear.bias.zero_()
        new.append(block)
    deeper.hidden = nn.ModuleList(blocks[:insert_at] + new + blocks[insert_at:])
    return deeper


def identity_bound(best_loss_by_depth: dict) -> dict:
    """The identity-map bound: for each depth D, min over depths d ≤ D of the best training loss —
    what a net of depth D can always reach by copying the depth-d net and making the rest identity."""
    out, running = {}, math.inf
    for d in sorted(best_loss_by_depth):
        running = min(running, best_loss_by_depth[d])
        out[d] = running
    return out


def _degradation_fires(best_loss_by_depth: dict) -> bool:
    """Whether ``dd.compare_depths`` reports ``degradation`` for these best training losses."""
    return any(f.code == "degradation" for f in compare_depths({int(d): float(v) for d, v in best_loss_by_depth.items()}))


# ---- knobs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """Full-mode knobs (the set-up above); QUICK shrinks them for CI."""

    dataset: str = "digits"
    width: int = 64
    depths: tuple = (4, 20, 40)
    norm: str = "batch"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 30
    identity_shallow: int = 2
    identity_deep: int = 40
    identity_epochs: int = 10
    identity_insert_at: int = -1  # -1: after the last hidden layer (the construction); 0: on the raw inputs
    data_seed: int = 0
    threads: int = 1  # torch threads while measuring (see torch_threads)

    def __post_init__(self):
        check_choice("dataset", self.dataset, dd_data.NAMES)
        check_number("width", self.width, low=1, integer=True)
        check_number("threads", self.threads, low=1, integer=True)
        if len(self.depths) < 2 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.depths) \
                or list(self.depths) != sorted(set(self.depths)):
            raise ValueError(f"depths={self.depths!r} must be at least two increasing positive integers")
        check_choice("norm", self.norm, ("batch", "layer", "none"))
        check_choice("optimizer", self.optimizer, ("sgd", "adam", "adamw"))
        check_number("lr", self.lr, low=0.0, low_inclusive=False)
        check_number("momentum", self.momentum, low=0.0, high=1.0, high_inclusive=False)
        check_number("batch_size", self.batch_size, low=1, integer=True)
        check_number("epochs", self.epochs, low=1, integer=True)
        check_number("identity_shallow", self.identity_shallow, low=1, integer=True)
        check_number("identity_deep", self.identity_deep, low=self.identity_shallow, integer=True)
        check_number("identity_epochs", self.identity_epochs, low=1, integer=True)
        check_number("identity_insert_at", self.identity_insert_at, low=-1, high=self.identity_shallow, integer=True)
        check_number("data_seed", self.data_seed, low=0, integer=True)


QUICK = {"width": 32, "epochs": 12, "batch_size": 64, "identity_deep": 20, "identity_epochs": 5}


# ---- measurement --------------------------------------------------------------------------------

def measure(config: Config, seeds: list[int]) -> Measurement:
    with torch_threads(config.threads):
        return _measure(config, seeds)


def _measure(config: Config, seeds: list[int]) -> Measurement:
    grid = expand(_base(config, depth=config.depths[0], epochs=config.epochs),
                  {"residual": [False, True], "depth": list(config.depths)}, seeds)
    shallow = _base(config, depth=config.identity_shallow, epochs=config.identity_epochs, norm=None,
                    seed=seeds[0], probes=("state_dict",))
    results = train_runs(grid + [shallow])  # every training run through the sweep layer, one call
    rows = []
    for run, result in zip(grid, results):
        family, depth, seed = "residual" if run.residual else "plain", run.depth, run.seed
        hist = result.to_history()
        for i, epoch in enumerate(hist.epoch):
            rows.append({"experiment": "curve", "family": family, "depth": depth, "seed": seed,
                         "epoch": epoch, "train_loss": hist.train_loss[i],
                         "train_err": 1 - hist.train_acc[i], "val_err": 1 - hist.val_acc[i]})
        finite = [v for v in hist.train_loss if math.isfinite(v)]
        rows.append({"experiment": "final", "family": family, "depth": depth, "seed": seed,
                     "epoch": hist.epoch[-1], "best_train_loss": min(finite) if finite else math.inf,
                     "train_loss": hist.train_loss[-1], "train_err": 1 - hist.train_acc[-1],
                     "val_err": 1 - hist.val_acc[-1], "diverged": hist.diverged})
    data = pd.DataFrame(rows)
    final = data[data.experiment == "final"]
    checks = _depth_checks(config, final, seeds)
    id_rows, id_checks = _identity(config, shallow, results[-1])
    checks[2:2] = id_checks
    data = pd.concat([data, pd.DataFrame(id_rows)], ignore_index=True)
    return Measurement(checks, data, _notes(final))


def _base(config: Config, **run) -> RunConfig:
    """A run of this study: ``dd.mlp(width, depth, norm, residual, seed)`` trained by ``dd.fit`` with the
    study's optimizer knobs, on the data set split by ``data_seed``; `run` sets the rest."""
    norm = None if config.norm == "none" else config.norm
    return RunConfig(**{**dict(dataset=config.dataset, data_seed=config.data_seed, width=config.width,
                               norm=norm, optimizer=config.optimizer, lr=config.lr, momentum=config.momentum,
                               batch_size=config.batch_size), **run})


def _depth_checks(config: Config, final: pd.DataFrame, seeds: list[int]) -> list:
    stats = final.groupby(["family", "depth"])["train_err"].agg(["mean", "std"]).fillna(0.0)
    d0, d1 = config.depths[0], config.depths[-1]
    n = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    p0, p1 = stats.loc[("plain", d0), "mean"], stats.loc[("plain", d1), "mean"]
    r1 = stats.loc[("residual", d1), "mean"]
    checks = [
        check_rule("plain_degrades", f"a deeper plain net trains worse: plain-{d1} training error exceeds "
                   f"plain-{d0}'s by 10 points (on the training set, so not overfitting)",
                   float(p1), float(p0 + 0.10), f"train_err(plain-{d1}) > train_err(plain-{d0}) + 10 points",
                   p1 > p0 + 0.10,
                   f"final training error, mean over {n}: plain-{d0} {100 * p0:.2f} % "
                   f"(± {100 * stats.loc[('plain', d0), 'std']:.2f}), plain-{d1} {100 * p1:.2f} % "
                   f"(± {100 * stats.loc[('plain', d1), 'std']:.2f})"),
        check_rule("residual_keeps_training", f"residual-{d1} trains far better than plain-{d1}",
                   float(r1), float(0.25 * p1), f"train_err(residual-{d1}) < 0.25 × train_err(plain-{d1})",
                   r1 < 0.25 * p1,
                   f"final training error, mean over {n}: residual-{d1} {100 * r1:.2f} % "
                   f"(± {100 * stats.loc[('residual', d1), 'std']:.2f}) vs plain-{d1} {100 * p1:.2f} %"),
    ]
    fired = {}
    for family in ("plain", "residual"):
        sub = final[final.family == family]
        fired[family] = [_degradation_fires(dict(zip(g.depth, g.best_train_loss))) for _, g in sub.groupby("seed")]
    checks.append(check_rule(
        "diagnosis_flags_plain", "dd.compare_depths fires `degradation` on the plain runs",
        int(sum(fired["plain"])), len(fired["plain"]), "fires on every plain seed",
        all(fired["plain"]), f"best training loss by depth {list(config.depths)}, one call per seed ({n})"))
    checks.append(check_rule(
        "diagnosis_quiet_residual", "dd.compare_depths does not fire `degradation` on the residual runs",
        int(sum(fired["residual"])), 0, "fires on no residual seed",
        not any(fired["residual"]), f"best training loss by depth {list(config.depths)}, one call per seed ({n})"))
    return checks


def _identity(config: Config, run: RunConfig, result):
    """Rebuild the trained shallow plain net (no norm) of `run` from its ``state_dict`` probe, extend it
    with identity layers, compare outputs and training loss (exact computations, no training here)."""
    ds = dataset_of(run)
    seed = run.seed
    shallow = load_state(build_model(run, ds), result.probes["state_dict"]["state_dict"])
    insert_at = None if config.identity_insert_at < 0 else config.identity_insert_at
    extra = config.identity_deep - config.identity_shallow
    deep = extend_with_identity(shallow, extra, insert_at)
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        shallow.eval(), deep.eval()
        a, b = shallow(ds.x_train), deep(ds.x_train)  # (n_train, 10)
    diff = float((a - b).abs().max())
    ls, _ = evaluate(shallow, ds.x_train, ds.y_train, loss_fn, True)
    ld, _ = evaluate(deep, ds.x_train, ds.y_train, loss_fn, True)
    ls, ld = float(ls), float(ld)
    where = "after the last hidden layer" if insert_at is None else f"before hidden layer {insert_at}"
    detail = (f"plain depth-{config.identity_shallow} net (width {config.width}, no norm) trained "
              f"{config.identity_epochs} epochs, {extra} identity layers inserted {where}; "
              f"{len(ds.x_train)} training images, seed {seed}")
    checks = [
        check_rule("identity_outputs", f"a trained shallow net extended to depth {config.identity_deep} with "
                   "identity layers computes the same function", diff, 1e-6,
                   "max |f_deep(x) − f_shallow(x)| ≤ 1e-6 over the training set", diff <= 1e-6, detail),
        check_rule("identity_loss", "...and has the same training loss, so the deeper family is never worse "
                   "in theory", abs(ld - ls), 1e-6, "|L_deep − L_shallow| ≤ 1e-6 (nats)",
                   abs(ld - ls) <= 1e-6, f"L_shallow {ls:.6g}, L_deep {ld:.6g} nats"),
    ]
    idx = torch.linspace(0, len(a) - 1, 200).long()
    rows = [{"experiment": "identity", "seed": seed, "depth": config.identity_shallow,
             "deep_depth": config.identity_deep, "out_shallow": float(u), "out_deep": float(v),
             "train_loss": ls, "deep_train_loss": ld, "max_abs_diff": diff}
            for u, v in zip(a[idx].reshape(-1).tolist(), b[idx].reshape(-1).tolist())]
    return rows, checks


def _notes(final: pd.DataFrame) -> str:
    t = final.groupby(["family", "depth"])[["train_err", "best_train_loss", "val_err"]].agg(["mean", "std"])
    lines = ["family    depth  train err (final)   best train loss     val err"]
    for (fam, d), r in t.iterrows():
        s = lambda c, k=100: (r[(c, "mean")] * k, 0.0 if math.isnan(r[(c, "std")]) else r[(c, "std")] * k)  # noqa: E731
        lines.append(f"{fam:<9} {d:>5}  {s('train_err')[0]:6.2f} ± {s('train_err')[1]:5.2f} %   "
                     f"{s('best_train_loss', 1)[0]:.4f} ± {s('best_train_loss', 1)[1]:.4f}   "
                     f"{s('val_err')[0]:6.2f} ± {s('val_err')[1]:5.2f} %")
    lines.append("full mode (measured once): plain 0.5/44/83 %, residual 0.17/0.06/3.5 % training error at ~4/20/40")
    return "\n".join(lines)


# ---- figures ------------------------------------------------------------------------------------

def plot(result, out_dir: Path) -> list[Path]:
    data = result.data
    paths = []
    final = data[data.experiment == "final"]
    stats = final.groupby(["family", "depth"])[["best_train_loss", "train_err"]].agg(["mean", "std"]).fillna(0.0)
    fig, (ax1, ax2) = plots.figure(ncols=2, width=5.2)
    for family, color in (("plain", "C3"), ("residual", "C0")):
        s = stats.loc[family]
        plots.measured(ax1, s.index, s[("best_train_loss", "mean")], s[("best_train_loss", "std")],
                       label=f"{family} (measured)", color=color)
        bound = identity_bound(dict(zip(s.index, s[("best_train_loss", "mean")])))
        ax1.step(list(bound), list(bound.values()), where="post", color=color, ls="--", lw=1.2, alpha=0.8,
                 label=f"{family}: identity-map bound (best shallower net)")
        plots.measured(ax2, s.index, 100 * s[("train_err", "mean")], 100 * s[("train_err", "std")],
                       label=f"{family} (measured)", color=color)
        ref = FULL_MODE_MEASURED[family]
        ax2.plot(list(ref), list(ref.values()), "x", color=color, ms=7, alpha=0.6,
                 label=f"{family}: full-mode run (measured once)")
    ax1.set_yscale("log")
    plots.label(ax1, "depth (hidden layers)", "best training loss (nats, log scale)",
                f"Training loss vs depth ({len(result.seeds)} seed(s))", fontsize=7)
    ax2.set_yscale("symlog", linthresh=0.1)
    plots.label(ax2, "depth (hidden layers)", "final training error (%, symlog)",
                "Training error: degradation is on the training set", fontsize=7)
    paths.append(plots.save(fig, out_dir, "depth_training"))

    curves = data[data.experiment == "curve"].groupby(["family", "depth", "epoch"]).mean(numeric_only=True)
    fig, (ax,) = plots.figure(width=6.0)
    for i, depth in enumerate(sorted(final.depth.unique())):
        for family, ls in (("plain", "-"), ("residual", "--")):
            c = curves.loc[(family, depth)]
            ax.plot(c.index, c.train_loss, ls, color=f"C{i}", label=f"{family}-{int(depth)}")
    ax.set_yscale("log")
    plots.label(ax, "epoch", "training loss (nats, log scale)", "Training curves: plain (solid) vs residual (dashed)",
                fontsize=8, ncol=2)
    paths.append(plots.save(fig, out_dir, "depth_curves"))

    ident = data[data.experiment == "identity"]
    if len(ident):
        fig, (ax,) = plots.figure(width=5.0)
        lim = [ident.out_shallow.min(), ident.out_shallow.max()]
        plots.theory(ax, lim, lim, label="theory: identical outputs (y = x)")
        d0, d1 = int(ident.depth.iloc[0]), int(ident.deep_depth.iloc[0])
        plots.measured(ax, ident.out_shallow, ident.out_deep,
                       label=f"measured, max |Δ| = {ident.max_abs_diff.iloc[0]:.2g}")
        plots.label(ax, f"logit of the trained depth-{d0} net", f"logit of the identity-extended depth-{d1} net")
        ax.set_title(f"Identity construction: training loss {ident.train_loss.iloc[0]:.4f} vs "
                     f"{ident.deep_train_loss.iloc[0]:.4f}", fontsize=10)
        paths.append(plots.save(fig, out_dir, "depth_identity"))
    return paths


STUDY = Study(
    name="depth",
    claim='"In general, adding more and more layers does not lead to better training accuracy" ... '
          '"The issue is certainly not overfitting"',
    theory="identity map: ReLU(I·h) = h for h ≥ 0, so a deeper net can copy a shallower one and "
           "min L_train(depth d + k) ≤ min L_train(depth d); a plain deep net that trains worse is the "
           "solver's failure; residual blocks h + F(h) make the identity easy to reach",
    config=Config, quick=QUICK, measure=measure, plot=plot,
    quick_time=2.4,  # measured on 2 CPU cores (deepdiag run all --quick)
)
