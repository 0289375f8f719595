"""vanishing — the seed's deep linear network: W = a·I makes the output vanish (a < 1) or explode (a > 1).

Claim. The first seed text ("Vanishing and exploding gradient") takes a deep network with linear
activation and no bias, ŷ = w^[L] w^[L−1] … w^[1] X, and sets every layer but the last to
W = [[0.9, 0], [0, 0.9]]:

    "ŷ = w^[L] [[0.9, 0], [0, 0.9]]^(l−1) X, and hence for very deep neural network (large value of l)
    the value of ŷ will vanish. Conversely, if w^[l] = [[1.1, 0], [0, 1.1]] … the value of ŷ will
    explode. Therefore, we can say that if w < I …, for very deep network the gradients will vanish,
    whereas if w > I, for very deep network the gradients will explode."

Theory (``deepdiag.meanfield``, part 1). With L layers, L−1 of them a·I and the last w_L:
ŷ = a^(L−1)·(w_L x) exactly. Back-propagating ŷ itself, the signal reaching the output of layer l is
‖∂ŷ/∂h_l‖ = a^(L−1−l)·‖w_L‖ (geometric from the output back to the input), and every a·I layer's
weight gradient is ‖∂ŷ/∂W_l‖ = a^(L−2)·‖w_L‖·‖x‖ — equal across layers, vanishing or exploding with the
*total* depth. For random Gaussian weights with std a/√n (part 2 of meanfield), ‖W h‖²/‖h‖² is
a²·χ²_n/n, so the same rate a appears: the geometric mean of successive layer-norm ratios is
a·exp(½(ψ(n/2) − ln(n/2))) ≈ a·(1 − 1/(2n)), with a known statistical spread ½√(ψ'(n/2)/(L·k)) for
L layers and k independent chains; the check allows four standard errors.

Set-up. ``dd.mlp(n, 1, width=n, depth=L−1, activation="linear", bias=False)`` with every hidden layer
re-initialised ``dd.init_weights(..., "identity", gain=a)`` and a fixed seeded unit row w_L as the last
layer, n = 2 as in the seed, float64, a ∈ {0.9, 1.0, 1.1}. One forward pass of the deepest net gives
the output of every shallower one (the chain is shared: ŷ(L) = w_L·h_(L−1)); the weight gradients are
measured on separate nets of several depths. The random chains draw W ~ N(0, a²/n) i.i.d. (n = 256 in
full mode) for k chains per seed, and record ‖h_l‖ layer by layer.

Runs. None: every number here is an exact forward or backward computation at fixed weights, so nothing
goes through the sweep layer.

Figures. ``output_vs_depth``: |ŷ|/|w_L x| against L on a log axis, measured points on the lines a^(L−1).
``gradients_by_layer``: for the deepest net, the back-propagated signal and each layer's weight gradient
against the layer index, with their theory lines. ``random_chain``: ln‖h_l‖/‖x‖ of the Gaussian chains
(mean over chains and seeds, ± one standard deviation) on the lines l·E[ln ratio].

Where the seed is loose. (1) Its "w < I" compares matrices; the statement holds for a·I (all singular
values a); a general W vanishes or explodes according to its singular values (for Gaussian W, a). (2) The
gradient statement needs care: the *weight* gradients of all layers share one factor a^(L−2), so
comparing weight gradients between layers shows nothing wrong in the seed's own example; it is the
back-propagated signal a^(L−1−l), and the common factor a^(L−2), that vanish or explode. (3) The last
layer w_L is not a·I ("because it has different dimensions"), so the output is a^(L−1)·w_L x, not a^L·x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import meanfield, plots
from .._validate import check_number
from ..init import init_weights
from ..models import mlp
from ..study import Measurement, Study, check_rule, check_close


@dataclass(frozen=True)
class Config:
    """Knobs of the vanishing study (full-mode defaults)."""

    a_values: tuple = (0.9, 1.0, 1.1)  # the diagonal of W = a·I
    max_depth: int = 100               # L, the number of layers (L−1 of them a·I)
    width: int = 2                     # n: the seed's 2×2 matrices
    grad_depths: tuple = (2, 5, 10, 25, 50, 100)  # depths whose weight gradients are measured
    rtol: float = 1e-5                 # allowed relative error of the exact laws (float64)
    random_width: int = 256            # n of the random Gaussian chains
    random_depth: int = 100            # layers of the random chains
    random_chains: int = 8             # independent chains per seed
    vanish_factor: float = 100.0       # "vanish / explode" = at least this factor at max_depth

    def __post_init__(self):
        if not self.a_values or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not a > 0
                                    for a in self.a_values):
            raise ValueError(f"a_values={self.a_values!r} must be a non-empty sequence of positive numbers")
        check_number("max_depth", self.max_depth, low=2, integer=True)
        check_number("width", self.width, low=1, integer=True)
        if not self.grad_depths or any(not isinstance(d, int) or not 2 <= d <= self.max_depth
                                       for d in self.grad_depths):
            raise ValueError(f"grad_depths={self.grad_depths!r} must be integers in [2, max_depth={self.max_depth}]")
        check_number("rtol", self.rtol, low=0.0, low_inclusive=False)
        check_number("random_width", self.random_width, low=2, integer=True)
        check_number("random_depth", self.random_depth, low=1, integer=True)
        check_number("random_chains", self.random_chains, low=1, integer=True)
        check_number("vanish_factor", self.vanish_factor, low=1.0)


QUICK = {"random_width": 128, "random_chains": 8, "grad_depths": (2, 10, 50, 100)}


def _chain(a: float, depth: int, width: int, last: torch.Tensor) -> torch.nn.Module:
    """The seed's net: depth−1 layers a·I (no bias, linear activation) and the last row `last`."""
    model = mlp(width, 1, width=width, depth=depth - 1, activation="linear", init="identity", bias=False)
    model = model.double()
    init_weights(model.hidden, "identity", gain=float(a))
    with torch.no_grad():
        model.out.weight.copy_(last)
    return model


def _identity_experiment(config: Config, x: torch.Tensor, last: torch.Tensor) -> tuple[list, list]:
    """Outputs for every depth 1 … max_depth, and gradients per layer for each of grad_depths."""
    out_rows, grad_rows = [], []
    ux = float(last @ x)
    x_norm, u_norm = float(x.norm()), float(last.norm())
    for a in config.a_values:
        model = _chain(a, config.max_depth, config.width, last)
        h = x.unsqueeze(0)  # (1, n)
        with torch.no_grad():
            for L in range(1, config.max_depth + 1):
                y = float(model.out(h))  # the net of depth L: L−1 layers a·I, then w_L
                theory = float(meanfield.linear_chain_output(a, L, ux))
                out_rows.append({"experiment": "identity_output", "a": a, "depth": L, "output": y,
                                 "theory": theory, "rel_error": abs(y / theory - 1.0)})
                if L < config.max_depth:
                    h = model.hidden[L - 1](h)
        for L in config.grad_depths:
            net = _chain(a, L, config.width, last)
            hs = []

            def keep(module, inputs, output):  # retain ∂ŷ/∂h_l of every hidden layer's output
                output.retain_grad()
                hs.append(output)

            hooks = [blk.register_forward_hook(keep) for blk in net.hidden]
            xin = x.unsqueeze(0).clone().requires_grad_(True)
            hs_in = [xin]
            net(xin).sum().backward()  # back-propagate ŷ itself
            for hk in hooks:
                hk.remove()
            signals = [hs_in[0]] + hs  # h_0 … h_(L−1)
            for layer, hl in enumerate(signals):
                theory = float(meanfield.linear_chain_signal(a, L, layer, u_norm))
                measured = float(hl.grad.norm())
                grad_rows.append({"experiment": "identity_gradients", "a": a, "depth": L, "layer": layer,
                                  "quantity": "signal", "grad_norm": measured, "theory": theory,
                                  "rel_error": abs(measured / theory - 1.0)})
            for layer, blk in enumerate(net.hidden, start=1):
                theory = meanfield.linear_chain_weight_grad(a, L, x_norm, u_norm)
                measured = float(blk.linear.weight.grad.norm())
                grad_rows.append({"experiment": "identity_gradients", "a": a, "depth": L, "layer": layer,
                                  "quantity": "weight", "grad_norm": measured, "theory": theory,
                                  "rel_error": abs(measured / theory - 1.0)})
    return out_rows, grad_rows


def _random_experiment(config: Config, seeds: list[int]) -> list:
    """ln(‖h_l‖/‖x‖) along Gaussian chains W ~ N(0, a²/n), k chains per seed, float64."""
    n, depth, k = config.random_width, config.random_depth, config.random_chains
    rows = []
    for ai, a in enumerate(config.a_values):
        for seed in seeds:
            gen = torch.Generator().manual_seed(10_000 * seed + ai)
            h = torch.randn(k, n, 1, generator=gen, dtype=torch.float64)  # (chains, n, 1)
            log_norm0 = h.norm(dim=1).log().squeeze(1)
            for layer in range(1, depth + 1):
                w = torch.randn(k, n, n, generator=gen, dtype=torch.float64) * (a / math.sqrt(n))
                h = torch.bmm(w, h)
                log_norm = h.norm(dim=1).log().squeeze(1) - log_norm0  # (chains,)
                for c in range(k):
                    rows.append({"experiment": "random_chain", "a": a, "seed": seed, "chain": c,
                                 "layer": layer, "log_norm": float(log_norm[c])})
    return rows


def measure(config: Config, seeds: list[int]) -> Measurement:
    gen = torch.Generator().manual_seed(seeds[0])
    x = torch.randn(config.width, generator=gen, dtype=torch.float64)
    last = torch.randn(1, config.width, generator=gen, dtype=torch.float64)
    last = last / last.norm()  # a unit row: ‖w_L‖ = 1
    out_rows, grad_rows = _identity_experiment(config, x, last)
    rand_rows = _random_experiment(config, seeds)
    data = pd.DataFrame(out_rows + grad_rows + rand_rows)

    checks = []
    out = data[data.experiment == "identity_output"]
    for a in config.a_values:
        sub = out[out.a == a]
        worst = float(sub.rel_error.max())
        top = sub[sub.depth == config.max_depth].iloc[0]
        checks.append(check_rule(
            f"output a={a:g}", f"ŷ = a^(L−1)·(w_L x) for W = {a:g}·I, L = 1…{config.max_depth} (float64)",
            worst, f"<= {config.rtol:g}", f"max over L of |ŷ / (a^(L−1)·w_L x) − 1| <= {config.rtol:g}",
            worst <= config.rtol, f"at L={config.max_depth}: ŷ = {top.output:.6g}, theory {top.theory:.6g}",
            tolerance=config.rtol))
    lo, hi = min(config.a_values), max(config.a_values)
    top = out[out.depth == config.max_depth].set_index("a")
    ux = float(last @ x)
    shrink, grow = abs(ux / top.loc[lo, "output"]), abs(top.loc[hi, "output"] / ux)
    checks.append(check_rule(
        "vanish and explode", f"at L={config.max_depth}, a={lo:g} shrinks ŷ and a={hi:g} grows it by orders of magnitude",
        f"shrink {shrink:.3g}x, grow {grow:.3g}x", f">= {config.vanish_factor:g}x each",
        f"|w_L x|/|ŷ(a={lo:g})| >= {config.vanish_factor:g} and |ŷ(a={hi:g})|/|w_L x| >= {config.vanish_factor:g}",
        lo < 1 < hi and shrink >= config.vanish_factor and grow >= config.vanish_factor,
        "needs a value below and one above 1 in a_values"))
    grads = data[data.experiment == "identity_gradients"]
    sig, wgt = grads[grads.quantity == "signal"], grads[grads.quantity == "weight"]
    checks.append(check_rule(
        "back-propagated signal", "‖∂ŷ/∂h_l‖ = a^(L−1−l)·‖w_L‖: geometric from output to input",
        float(sig.rel_error.max()), f"<= {config.rtol:g}", f"max relative error over a, L, l <= {config.rtol:g}",
        float(sig.rel_error.max()) <= config.rtol, f"{len(sig)} layer outputs, depths {list(config.grad_depths)}",
        tolerance=config.rtol))
    checks.append(check_rule(
        "weight gradients", "‖∂ŷ/∂W_l‖ = a^(L−2)·‖w_L‖‖x‖ for every a·I layer: the same law in total depth",
        float(wgt.rel_error.max()), f"<= {config.rtol:g}", f"max relative error over a, L, l <= {config.rtol:g}",
        float(wgt.rel_error.max()) <= config.rtol, f"{len(wgt)} layers, depths {list(config.grad_depths)}",
        tolerance=config.rtol))
    rand = data[data.experiment == "random_chain"]
    n, depth = config.random_width, config.random_depth
    for a in config.a_values:
        last_layer = rand[(rand.a == a) & (rand.layer == depth)]
        k = len(last_layer)
        rate = math.exp(float(last_layer.log_norm.mean()) / depth)
        mean, var = meanfield.gaussian_chain_log_rate(a, n)
        se = math.sqrt(var / (depth * k))
        checks.append(check_close(
            f"random W rate a={a:g}", "Gaussian W with std a/√n: successive layer norms shrink/grow by ≈ a",
            rate, math.exp(mean), rtol=4 * se,
            detail=f"geometric-mean ratio over {depth} layers, {k} chains ({len(seeds)} seed(s)), n={n}; "
            f"theory a·e^(½(ψ(n/2)−ln(n/2))) = {math.exp(mean):.5f} (a itself: {a:g}); "
            f"tolerance 4 standard errors (se {se:.2g} in ln)"))
    notes = ("Exact laws hold to float64 rounding (relative errors ~1e-14). The random chains show the "
             "same geometric rate a with a small, predicted finite-width bias ≈ −1/(2n) in ln.")
    return Measurement(checks, data, notes)


def plot(result, out_dir) -> list:
    data = result.data
    figures = []
    out = data[data.experiment == "identity_output"]
    fig, (ax,) = plots.figure()
    for a, sub in out.groupby("a"):
        ratio = (sub.output / (sub.theory / sub.a ** (sub.depth - 1))).abs()
        L = np.arange(1, sub.depth.max() + 1)
        plots.theory(ax, L, a ** (L - 1.0), label=f"theory a^(L−1), a={a:g}")
        plots.measured(ax, sub.depth[::4], ratio[::4], label=f"measured, a={a:g}")
    ax.set_yscale("log")
    plots.label(ax, "depth L (layers)", "|ŷ| / |w_L x|  (output scale)", "Deep linear chain W = a·I", fontsize=7)
    figures.append(plots.save(fig, out_dir, "output_vs_depth"))

    grads = data[data.experiment == "identity_gradients"]
    deepest = grads[grads.depth == grads.depth.max()]
    fig, (ax1, ax2) = plots.figure(2)
    for a, sub in deepest.groupby("a"):
        L = int(sub.depth.iloc[0])
        sig = sub[sub.quantity == "signal"]
        wgt = sub[sub.quantity == "weight"]
        ls = np.arange(0, L)
        plots.theory(ax1, ls, a ** (L - 1.0 - ls), label=f"a^(L−1−l), a={a:g}")
        plots.measured(ax1, sig.layer[::4], sig.grad_norm[::4], label=f"‖∂ŷ/∂h_l‖, a={a:g}")
        plots.theory(ax2, wgt.layer, wgt.theory, label=f"a^(L−2)·‖w_L‖‖x‖, a={a:g}")
        plots.measured(ax2, wgt.layer[::4], wgt.grad_norm[::4], label=f"‖∂ŷ/∂W_l‖, a={a:g}")
    for ax, title in ((ax1, "back-propagated signal"), (ax2, "weight gradient per layer")):
        ax.set_yscale("log")
        plots.label(ax, "layer l", "gradient norm", f"{title}, L={int(deepest.depth.max())}", fontsize=6, ncol=2)
    figures.append(plots.save(fig, out_dir, "gradients_by_layer"))

    rand = data[data.experiment == "random_chain"]
    fig, (ax,) = plots.figure()
    n = int(result.config["random_width"])
    for a, sub in rand.groupby("a"):
        stats = sub.groupby("layer").log_norm.agg(["mean", "std"])
        mean, _ = meanfield.gaussian_chain_log_rate(a, n)
        layers = stats.index.to_numpy()
        plots.theory(ax, layers, mean * layers, label=f"theory l·E[ln ratio], a={a:g}")
        plots.measured(ax, layers[::5], stats["mean"].to_numpy()[::5], yerr=stats["std"].to_numpy()[::5],
                       label=f"measured (mean ± sd), a={a:g}")
    plots.label(ax, "layer l", "ln(‖h_l‖ / ‖x‖)", f"Random Gaussian chain, std a/√n, n={n}", fontsize=7)
    figures.append(plots.save(fig, out_dir, "random_chain"))
    return figures


STUDY = Study(
    name="vanishing",
    claim='"ŷ = w^[l] [[0.9, 0], [0, 0.9]]^(l−1) X, and hence for very deep neural network (large value of l) '
          'the value of ŷ will vanish … if w^[l] = [[1.1, 0], [0, 1.1]] … the value of ŷ will explode. '
          'Therefore … if w < I, for very deep network the gradients will vanish, whereas if w > I … explode."',
    theory="With L−1 layers a·I and a last layer w_L: ŷ = a^(L−1)·w_L x; back-propagated signal at layer l "
           "a^(L−1−l)·‖w_L‖; every a·I layer's weight gradient a^(L−2)·‖w_L‖‖x‖. Gaussian W with std a/√n: "
           "successive norms scale by a·e^(½(ψ(n/2)−ln(n/2))) ≈ a(1 − 1/(2n)) on (geometric) average.",
    config=Config, quick=QUICK, measure=measure, plot=plot,
    quick_time=0.7,  # measured on 2 CPU cores (deepdiag run all --quick)
)
