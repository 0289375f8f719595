"""Rules: per-layer statistics and loss curves in, ``Finding``s out. Pure functions, no torch.

Layer rules take ``rows`` (``deepdiag.stats.build_rows``: one dict of Python numbers per measured
layer, in forward order); curve rules take lists of floats. Each rule's docstring says why its
threshold is that number. "Orders of magnitude" means at least 100× (DESIGN.md).

The gradient-flow and activation-scale rules look at the chain of *weight* layers (Linear/Conv) in
forward order:

* the back-propagated signal s_l = per-sample norm of ∂L/∂(output of layer l). In the seed's linear chain W = a·I,
  s_l ∝ a^(L−l), so s_first/s_last = a^(L−1): 0.9^99 ≈ 3·10⁻⁵ at depth 100. Raw weight-gradient
  ratios are *not* used: in that chain every ∂L/∂W_l is the same size, and on healthy nets they differ
  10–40× from layer shapes alone.
* the forward signal a_l = RMS of the input of layer l, from the first weight layer (the data) to the
  last (the final hidden representation): a_last/a_first = a^(L−1) in the seed's chain, the seed's
  ŷ = w^[L]·a^(L−1)·X.

Measured on healthy nets at initialisation (batch 128 of digits, width 64): He-ReLU depth 50 moves s
by 1.8× and a by 2.6×; Xavier-tanh depth 50 by 5.5× and 8× (tanh's variance map decays like 1/l, not
geometrically); LayerNorm depth 20 by 2.5×; BatchNorm depth 20 by 29× (BatchNorm's known gradient
growth, Yang et al. 2019); PyTorch's default init with ReLU at depth 20 by 4·10⁷ (a real vanishing
gradient: Var(w)·fan_in = 1/3 shrinks the signal by √(1/6) per layer).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from .findings import Finding, sort_findings
from .stats import unit_family

ORDERS = 1e2  # "orders of magnitude": >= 100x -> warning
ORDERS_ERROR = 1e4  # >= 10^4x -> error: training of the far layers is effectively stopped
DEAD_ERROR = 0.95


def dead_threshold(units: int) -> float:
    """Fraction of dead units that earns a warning: min(0.9, 1/2 + 2/√n) (0.75 at width 64)."""
    return min(0.9, 0.5 + 2.0 / math.sqrt(max(1, units)))

SAT_WARN, SAT_ERROR = 0.5, 0.9
MIN_POSITIONS = 32  # fewer samples than this and "never fired" is not evidence of death
SYM_TOL = 1e-4
RECOMMENDED = {"relu": "he", "leaky_relu": "he", "smooth": "he", "tanh": "xavier", "sigmoid": "xavier",
               "linear": "orthogonal"}
SCHEME_TITLE = {"he": "He", "xavier": "Xavier", "orthogonal": "orthogonal"}


# ---- helpers ----

def _weights(rows):
    return [r for r in rows if r["kind"] == "weight"]


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x is not None and math.isfinite(x) else str(x)


def net_family(rows) -> str:
    """The activation family most units of the net have: relu, leaky_relu, smooth, tanh, sigmoid, or
    linear when no activation was seen."""
    fams = [unit_family(r) or r["family"] for r in rows if (unit_family(r) or r["family"])]
    fams = [f.split(" ")[0] for f in fams]
    if not fams:
        return "linear"
    return max(set(fams), key=fams.count)


def init_advice(rows) -> tuple[str, str]:
    """(scheme to recommend, a phrase comparing the current weights with it)."""
    from .init import scheme_std

    fam = net_family(rows)
    scheme = RECOMMENDED.get(fam, "he")
    ws = [r for r in _weights(rows) if r["weight_std"] is not None and r["fan_in"]]
    if not ws or scheme == "orthogonal":
        return scheme, ""
    ratios = sorted(r["weight_std"] / scheme_std(scheme, r["fan_in"], r["fan_out"]) for r in ws)
    k = ratios[len(ratios) // 2]
    stds = sorted(r["weight_std"] for r in ws)
    inits = {r["init_scheme"] for r in ws}
    what = f"initialised as {inits.pop()}" if len(inits) == 1 and "unknown" not in inits else \
        f"initialised with std {_fmt(stds[len(stds) // 2])}"
    return scheme, f"{fam} layers {what} ≈ {k:.2g}× {SCHEME_TITLE[scheme]}"


def _remedy_init(rows, extra: str = "") -> str:
    scheme, phrase = init_advice(rows)
    depth = len(_weights(rows))
    if scheme == "orthogonal":
        text = (f"this linear chain multiplies the signal by the same factor at each of its {depth} layers; "
                f"use weights with singular values 1: dd.init_weights(model, 'orthogonal')")
    else:
        text = (f"{phrase}; use dd.init_weights(model, '{scheme}')" if phrase else
                f"use dd.init_weights(model, '{scheme}')")
    if extra:
        text += f"; {extra}"
    return text[0].upper() + text[1:] + "."


# ---- gradient flow ----

def gradient_flow(rows, step: int | None = None) -> list[Finding]:
    """vanishing_gradients / exploding_gradients from the back-propagated signal s_l = ‖∂L/∂out_l‖/√B.

    Ratio R = s_first / s_last over the weight layers. R ≤ 10⁻² → vanishing (warning), ≤ 10⁻⁴ or a
    signal that is exactly 0 (float32 underflow or no path) → error; R ≥ 10² → exploding (warning),
    ≥ 10⁴ or non-finite → error. Why 100×: with He/Xavier init the signal's scale is constant in depth
    up to shape factors (healthy nets measured within 30×, see the module docstring), so a change by
    two orders of magnitude is not explained by the architecture. Layers whose signal is exactly 0
    because an all-zero weight layer blocks it (a zero-initialised output layer) are left out: that is
    one step's state, reported by symmetric_units.
    """
    w = [r for r in _weights(rows) if r["signal_norm"] is not None]
    if len(w) < 2:
        return []
    bad = [r["name"] for r in w if not math.isfinite(r["signal_norm"])]
    if bad:
        return [Finding("exploding_gradients", "error",
                        f"The back-propagated gradient overflows to Inf/NaN in {len(bad)} layer(s).",
                        {"nonfinite_layers": bad, "signal_norm": [r["signal_norm"] for r in w]},
                        _remedy_init(rows, "lower the learning rate or clip gradients "
                                     "(torch.nn.utils.clip_grad_norm_)"), bad, step,
                        fix={"init": init_advice(rows)[0], "clip_grad_norm": 1.0})]
    zero_layers = [r["name"] for r in w if r["weight_norm"] == 0.0]
    if zero_layers:
        w = [r for r in w if r["signal_norm"] > 0]
        if len(w) < 2:
            return []
    first, last = w[0], w[-1]
    if last["signal_norm"] == 0.0:
        return []
    sig = [r["signal_norm"] for r in w]
    ratio = first["signal_norm"] / last["signal_norm"]
    per_layer = ratio ** (1.0 / (len(w) - 1)) if ratio > 0 else 0.0
    evidence = {
        "ratio_first_last": ratio, "per_layer_factor": per_layer, "depth": len(w),
        "signal_norm": dict(zip([r["name"] for r in w], sig)),
        "grad_rel": {r["name"]: r["grad_rel"] for r in w if r["grad_rel"] is not None},
        "threshold": ORDERS,
    }
    if ratio <= 1.0 / ORDERS:
        sev = "error" if ratio <= 1.0 / ORDERS_ERROR else "warning"
        offending = [r["name"] for r in w if r["signal_norm"] <= last["signal_norm"] / ORDERS]
        how = ("is exactly 0 (blocked by dead units, or float32 underflow)" if ratio == 0 else
               f"is {1 / ratio:.3g}× smaller than at the last layer ({_fmt(per_layer)}× per layer over {len(w)} layers)")
        return [Finding("vanishing_gradients", sev,
                        f"The gradient reaching the first layer {how}, so early layers barely learn.",
                        evidence, _remedy_init(rows, "for deep nets add residual connections "
                                               "(dd.mlp(..., residual=True)) or normalization"), offending, step,
                        fix={"init": init_advice(rows)[0]})]
    if ratio >= ORDERS:
        sev = "error" if ratio >= ORDERS_ERROR else "warning"
        offending = [r["name"] for r in w if r["signal_norm"] >= last["signal_norm"] * ORDERS]
        return [Finding("exploding_gradients", sev,
                        f"The gradient grows {ratio:.3g}× from the last layer to the first "
                        f"({_fmt(per_layer)}× per layer over {len(w)} layers), so early layers take huge steps.",
                        evidence, _remedy_init(rows, "clip gradients or lower the learning rate; in residual "
                                               "nets add normalization (norm='layer')"), offending, step,
                        fix={"init": init_advice(rows)[0]})]
    return []


# ---- forward signal ----

def activation_scale(rows, step: int | None = None) -> list[Finding]:
    """vanishing_activations / exploding_activations from a_l = RMS of the input of weight layer l.

    Ratio R = a_last / a_first (final hidden representation over the data). R ≤ 10⁻² → vanishing
    (warning; ≤ 10⁻⁴ or 0 → error), R ≥ 10² → exploding (≥ 10⁴ or non-finite → error). Why 100×:
    He init keeps E[h²] constant in depth for ReLU, Xavier keeps it within a slow ~1/√l decay for tanh
    (8× at depth 50), so a collapse or blow-up by two orders of magnitude is geometric, i.e. caused by
    the weights' scale.
    """
    w = [r for r in _weights(rows) if r["in_rms"] is not None]
    if len(w) < 2:
        return []
    first, last = w[0], w[-1]
    scales = {r["name"]: r["in_rms"] for r in w}
    if first["in_rms"] == 0 or not math.isfinite(first["in_rms"]):
        return []
    if not math.isfinite(last["in_rms"]):
        ratio = math.inf
    else:
        ratio = last["in_rms"] / first["in_rms"]
    per_layer = ratio ** (1.0 / (len(w) - 1)) if 0 < ratio < math.inf else ratio
    evidence = {"ratio_last_first": ratio, "per_layer_factor": per_layer, "depth": len(w),
                "input_rms": scales, "act_std": {r["name"]: r["act_std"] for r in w},
                "threshold": ORDERS}
    if ratio <= 1.0 / ORDERS:
        sev = "error" if ratio <= 1.0 / ORDERS_ERROR else "warning"
        offending = [r["name"] for r in w if r["in_rms"] <= first["in_rms"] / ORDERS]
        return [Finding("vanishing_activations", sev,
                        f"The forward signal shrinks {1 / ratio if ratio else math.inf:.3g}× from the input to the "
                        f"last layer ({_fmt(per_layer)}× per layer), so the output barely depends on the input.",
                        evidence, _remedy_init(rows), offending, step, fix={"init": init_advice(rows)[0]})]
    if ratio >= ORDERS:
        sev = "error" if ratio >= ORDERS_ERROR else "warning"
        offending = [r["name"] for r in w if not r["in_rms"] < first["in_rms"] * ORDERS]
        return [Finding("exploding_activations", sev,
                        f"The forward signal grows {ratio:.3g}× from the input to the last layer "
                        f"({_fmt(per_layer)}× per layer).",
                        evidence, _remedy_init(rows, "residual sums need normalization (norm='layer' or "
                                               "'batch') or branches scaled down"), offending, step,
                        fix={"init": init_advice(rows)[0]})]
    return []


# ---- units ----

def dead_units(rows, step: int | None = None) -> list[Finding]:
    """dead_units: ReLU units that never fire (output > 0) on any of ≥ 32 samples of the batch/window.

    A layer of n units with a dead fraction ≥ min(0.9, 1/2 + 2/√n) → warning (0.75 at n = 64), ≥ 0.95
    or every unit → error. Why not 50 %: deep ReLU nets map all inputs onto nearly the same direction
    (the input correlation tends to 1 with depth), so each unit's sign becomes the same on the whole
    batch and about half the units of a healthy deep He net never fire on it (measured: up to 56 % at
    depth 50, width 32; 17 % at depth 10). Half ± 4 binomial standard deviations (√(n/4)/n = 1/(2√n))
    is what that explains; more is a layer that lost its width (negative biases, a too-large step).
    """
    out = []
    for r in rows:
        if unit_family(r) != "relu" or r["frac_dead"] is None or (r["positions"] or 0) < MIN_POSITIONS:
            continue
        limit = dead_threshold(r["units"])
        if r["frac_dead"] < limit and r["dead"] < r["units"]:
            continue
        sev = "error" if r["frac_dead"] >= DEAD_ERROR or r["dead"] == r["units"] else "warning"
        src = next((x for x in rows if x["name"] == (r.get("source") or r["name"])), r)
        bias = src.get("bias_mean")
        why = (f"their biases average {_fmt(bias)}, which switches ReLUs off" if bias is not None and bias < -0.01
               else "their pre-activations are negative on every sample")
        remedy = (f"{'Reset biases to 0 and r' if bias is not None and bias < -0.01 else 'R'}e-initialise "
                  f"with dd.init_weights(model, 'he'); if units died during training lower the learning "
                  f"rate, or use LeakyReLU (activation='leaky_relu').")
        out.append(Finding("dead_units", sev,
                           f"{r['dead']} of {r['units']} ReLU units in {r['name']} never fire on "
                           f"{r['positions']} samples/positions: {why}.",
                           {"layer": r["name"], "frac_dead": r["frac_dead"], "dead": r["dead"], "units": r["units"],
                            "frac_zero": r["frac_zero"], "positions": r["positions"], "bias_mean": bias,
                            "threshold": limit},
                           remedy, [r["name"]], step, fix={"init": "he"}))
    return out


def saturated_units(rows, step: int | None = None) -> list[Finding]:
    """saturated_units: tanh units with |z| > 3 (tanh' < 0.01) or sigmoid units with |z| > 5
    (σ' < 0.0067) on more than half of the batch. A layer with ≥ 50 % such units → warning, ≥ 90 % →
    error. Why: with Xavier init z has unit scale and P(|z| > 3) ≈ 0.3 %, so most units being pinned
    means the weights (or inputs) are an order of magnitude too large, and their gradients are ×0.01.
    """
    out = []
    for r in rows:
        fam = unit_family(r)
        if fam not in ("tanh", "sigmoid") or r["frac_saturated_units"] is None:
            continue
        if r["frac_saturated_units"] < SAT_WARN:
            continue
        sev = "error" if r["frac_saturated_units"] >= SAT_ERROR else "warning"
        z = 3.0 if fam == "tanh" else 5.0
        out.append(Finding("saturated_units", sev,
                           f"{r['saturated']} of {r['units']} {fam} units in {r['name']} sit at their asymptotes "
                           f"(|pre-activation| > {z:g}) on most samples, so their gradients are nearly zero.",
                           {"layer": r["name"], "frac_saturated_units": r["frac_saturated_units"],
                            "frac_saturated": r["frac_saturated"], "saturated": r["saturated"], "units": r["units"],
                            "z_threshold": z, "threshold": SAT_WARN},
                           _remedy_init(rows, "standardize the inputs"), [r["name"]], step,
                           fix={"init": init_advice(rows)[0]}))
    return out


def symmetric_units(rows, step: int | None = None) -> list[Finding]:
    """symmetric_units: every unit of a layer has the same incoming weights and bias (zero/constant init).

    Measure: max_i ‖r_i − r̄‖ / max_i ‖r_i‖ ≤ 10⁻⁴ over the rows r_i = (W_i, b_i). Why 10⁻⁴: float32
    rounding leaves ~10⁻⁷, random init gives ~1, so anything this small is identical units. Identical units compute the same function; gradient descent keeps
    them identical iff they also receive identical gradients, i.e. iff their *outgoing* weights (the
    next layer's columns) are identical too. So: a hidden layer with identical rows and identical
    outgoing columns → error (the layer acts like one unit forever: the seed's zero init); identical
    rows with distinct outgoing weights, or the output layer (its units get different gradients from
    different targets, e.g. a zero-initialised head) → info. A single-unit layer is never symmetric.
    """
    out = []
    w = _weights(rows)
    for i, r in enumerate(w):
        if r["sym_rows"] is None or (r["units"] or 0) < 2 or r["sym_rows"] > SYM_TOL:
            continue
        is_output = i == len(w) - 1
        locked = (not is_output) and r["sym_next"] is not None and r["sym_next"] <= SYM_TOL
        ev = {"layer": r["name"], "units": r["units"], "max_row_difference": r["sym_rows"],
              "weight_std": r["weight_std"], "outgoing_difference": r["sym_next"], "next_layer": r["next_layer"],
              "activation_spread": r["unit_spread"], "tolerance": SYM_TOL}
        what = "zero" if r["weight_norm"] == 0 else "identical"
        if locked:
            scheme, _ = init_advice(rows)
            out.append(Finding("symmetric_units", "error",
                               f"All {r['units']} units of {r['name']} have {what} incoming and outgoing weights, "
                               f"so they compute the same function and get the same gradient forever: the layer "
                               f"acts like one unit.", ev,
                               f"Break the symmetry with random weights: dd.init_weights(model, '{scheme}').",
                               [r["name"]], step, fix={"init": scheme}))
        else:
            why = ("the output layer's units get different gradients from different targets"
                   if is_output else f"their outgoing weights in {r['next_layer']} differ, so the first step separates them")
            out.append(Finding("symmetric_units", "info",
                               f"The {r['units']} units of {r['name']} start {what}; harmless here: {why}.", ev,
                               "Nothing to do (zero-initialising the last layer is common practice).",
                               [r["name"]], step))
    return out


LAYER_RULES = (gradient_flow, activation_scale, symmetric_units, dead_units, saturated_units)


def judge_layers(rows, step: int | None = None) -> list[Finding]:
    """Every layer rule on `rows`, most severe first."""
    return sort_findings(f for rule in LAYER_RULES for f in rule(rows, step))


TRAINING_CAUSED = ("dead_units", "saturated_units", "vanishing_gradients", "exploding_gradients",
                   "vanishing_activations", "exploding_activations")


def appeared_in_training(f: Finding, healthy_step: int | None, lr: float | None = None) -> Finding:
    """`f` (a layer finding of a Monitor) re-aimed at the learning rate when the same rule was silent on
    the layers at the start of training (step `healthy_step`). Why: the init and the data were the same
    then, so what changed the layers is the updates; units that die (a large step pushes every
    pre-activation of a ReLU negative, and a dead unit gets no gradient to come back), saturate or a
    signal that collapses or blows up mid-training are the classic symptoms of a step too large for the
    curvature. Re-initialising would only restart the same path; the fix is a 10× smaller learning rate
    (``{"lr": lr/10}`` when the lr is known, else ``{"lr_factor": 0.1}``). Other findings pass unchanged."""
    if f.code not in TRAINING_CAUSED or f.rank < 1 or healthy_step is None:
        return f
    fix = lr_fix(lr, 0.1)
    what = f"lr={_fmt(fix['lr'])}" if "lr" in fix else "a 10× smaller learning rate"
    return replace(f, summary=f"{f.summary} It appeared during training (the layers were healthy at step "
                                 f"{healthy_step}), so the updates caused it.",
                   evidence={**f.evidence, "healthy_at_step": healthy_step, "lr": lr},
                   remedy=f"Lower the learning rate ({what}) or add warm-up; clip gradients "
                          f"(torch.nn.utils.clip_grad_norm_). Re-initialising alone would retrace the same path.",
                   fix=fix)


# ---- curves ----

OVERFIT_RISE = 0.10  # val loss >= 10 % above its minimum ...
OVERFIT_EPOCHS = 3  # ... for the last >= 3 epochs ...
TRAIN_FALL = 0.05  # ... while train loss fell >= 5 % since the best epoch
GAP_RATIO, GAP_ABS = 3.0, 0.1
UNDERFIT_FRACTION = 0.9  # best train loss >= 90 % of the chance baseline
UNDERFIT_EPOCHS = 3
BLOWUP = 10.0


def _clean(xs):
    return [float(x) if x is not None else math.nan for x in (xs or [])]


def overfitting(train_loss: Sequence[float], val_loss: Sequence[float]) -> list[Finding]:
    """overfitting: val loss rose ≥ 10 % above its minimum and stayed there for the last ≥ 3 epochs,
    while train loss fell ≥ 5 % since that best epoch → warning. Why: the validation loss of fixed
    weights is deterministic; epoch-to-epoch SGD noise moves it by a few percent, so a sustained 10 %
    rise while the training loss still improves is the network fitting the training set's noise.
    A large gap alone (val ≥ 3× train and ≥ 0.1 apart) without a rise → info: it is normal on small sets.
    """
    t, v = _clean(train_loss), _clean(val_loss)
    n = min(len(t), len(v))
    t, v = t[:n], v[:n]
    finite = [i for i in range(n) if math.isfinite(v[i])]
    if len(finite) < 2:
        return []
    best = min(finite, key=lambda i: v[i])
    last = finite[-1]
    gap = v[last] - t[last] if math.isfinite(t[last]) else math.nan
    ev = {"best_epoch": best + 1, "best_val_loss": v[best], "last_val_loss": v[last], "train_at_best": t[best],
          "last_train_loss": t[last], "gap": gap, "val_loss": v, "train_loss": t, "rise_threshold": OVERFIT_RISE}
    tail = v[best + 1:last + 1]
    rose = (last - best >= OVERFIT_EPOCHS and v[best] > 0
            and all(x >= v[best] * (1 + OVERFIT_RISE) for x in v[last - OVERFIT_EPOCHS + 1:last + 1])
            and len(tail) >= OVERFIT_EPOCHS)
    fell = math.isfinite(t[last]) and math.isfinite(t[best]) and t[last] <= t[best] * (1 - TRAIN_FALL)
    if rose and fell:
        rise = v[last] / v[best] - 1
        return [Finding("overfitting", "warning",
                        f"Validation loss rose {rise:.0%} from its minimum at epoch {best + 1} while training loss "
                        f"kept falling ({_fmt(t[best])} → {_fmt(t[last])}).", ev,
                        f"Stop at epoch {best + 1} (early stopping: TrainConfig(patience=3, restore_best=True)), "
                        f"or regularize: L2 (l2=...), dropout (dd.mlp(..., dropout=0.2)), more data or a smaller model.",
                        [], best + 1, fix={"epochs": best + 1})]
    if math.isfinite(gap) and t[last] > 0 and v[last] >= GAP_RATIO * t[last] and gap >= GAP_ABS:
        return [Finding("overfitting", "info",
                        f"Validation loss is {v[last] / t[last]:.1f}× the training loss ({_fmt(v[last])} vs "
                        f"{_fmt(t[last])}), though it is not rising.", ev,
                        "Watch the validation loss; regularize (L2, dropout) if it starts rising.", [], last + 1)]
    return []


def underfitting(train_loss: Sequence[float], baseline: float | None,
                 train_acc: Sequence[float] | None = None) -> list[Finding]:
    """underfitting: after ≥ 3 epochs the best training loss is still ≥ 90 % of the chance baseline
    (ln k for cross-entropy over k classes, Var(y) for MSE) → warning. Why: the baseline is what a
    constant prediction scores; a model that cannot beat it by 10 % on the data it trains on has learnt
    (almost) nothing, whatever happens on validation.
    """
    t = [x for x in _clean(train_loss) if math.isfinite(x)]
    if baseline is None or baseline <= 0 or len(t) < UNDERFIT_EPOCHS:
        return []
    best = min(t)
    if best < UNDERFIT_FRACTION * baseline:
        return []
    ev = {"best_train_loss": best, "baseline": baseline, "fraction_of_baseline": best / baseline,
          "epochs": len(t), "train_loss": t, "threshold": UNDERFIT_FRACTION}
    if train_acc:
        ev["train_acc"] = _clean(train_acc)
    return [Finding("underfitting", "warning",
                    f"After {len(t)} epochs the best training loss {_fmt(best)} is still {best / baseline:.0%} of "
                    f"the chance-level loss {_fmt(baseline)}.", ev,
                    "Train longer or with a larger learning rate, give the model more capacity (width/depth), "
                    "check its initialisation (dd.checkup) and lower any regularization (l2, dropout).",
                    [], len(t))]


UNDERFIT_SHRINK = 0.5  # weights below half their starting norm under weight decay: the decay wins
UNDERFIT_EPOCH_FALL = 3  # the epoch loss fell in each of the last 3 epochs: still learning, too slowly


def underfitting_cause(f: Finding, weight_decay: float | None = None, lr: float | None = None,
                       weight_ratio: float | None = None) -> Finding:
    """An underfitting finding with its cause, and a machine-readable fix, where the run shows one.

    * weight decay that crushes the weights: ``weight_decay`` > 0 and the total weight norm fell below
      half of its value at the start (``weight_ratio`` < 0.5) → ``{"weight_decay": wd/10}``. Why: init
      schemes set the weight scale that keeps unit signals; a net that learns grows or keeps it, while
      SGD's decay step lr·wd·w shrinks w geometrically unless the loss gradient pushes back, so weights
      shrinking at a loss near chance mean the decay term dominates.
    * a loss that is still falling, slowly: the epoch loss dropped in each of the last 3 epochs (without
      leaving 90 % of chance) → ``{"lr": 10·lr}`` (``{"lr_factor": 10}`` when the lr is unknown): the
      steps point the right way but are too small for the budget.
    Otherwise the finding is returned as it is (capacity, data or a bug: no single knob to name).
    """
    if f.code != "underfitting" or f.rank < 1:
        return f
    t = f.evidence.get("train_loss") or []
    if weight_decay and weight_ratio is not None and weight_ratio < UNDERFIT_SHRINK:
        fix = {"weight_decay": _pow10_round(weight_decay / 10)}
        return replace(f, summary=f"{f.summary} Weight decay {_fmt(weight_decay)} shrank the weights to "
                                     f"{weight_ratio:.0%} of their starting norm.",
                       evidence={**f.evidence, "weight_decay": weight_decay, "weight_norm_ratio": weight_ratio},
                       remedy=f"Lower the weight decay (weight_decay={_fmt(fix['weight_decay'])}): it outweighs "
                              f"the loss gradient and pins the weights near 0.", fix=fix)
    k = UNDERFIT_EPOCH_FALL
    if len(t) > k and all(b < a for a, b in zip(t[-k - 1:], t[-k:])):
        fix = lr_fix(lr, 10.0)
        what = f"lr={_fmt(fix['lr'])}" if "lr" in fix else "a 10× larger learning rate"
        return replace(f, summary=f"{f.summary} The loss is still falling, slowly, in every recent epoch.",
                       evidence={**f.evidence, "lr": lr, "weight_norm_ratio": weight_ratio},
                       remedy=f"Take larger steps ({what}) or train longer: the updates point the right way "
                              f"but are too small for this budget.", fix=fix)
    return f


def divergence(train_loss: Sequence[float] | None = None, val_loss: Sequence[float] | None = None,
               step_loss: Sequence[float] | None = None, steps: Sequence[int] | None = None,
               first_bad_step: int | None = None) -> list[Finding]:
    """divergence: a loss became NaN/Inf (error, with the first epoch/step), or the training loss grew
    to > 10× its first value and is still rising (error). Why 10×: SGD noise and a warm-up bump move a
    converging loss by percents; a tenfold rise that continues is the iterates leaving the basin
    (learning rate above ~2/λ_max of the Hessian).
    """
    t, v = _clean(train_loss), _clean(val_loss)
    ev: dict = {}
    where = None
    for name, curve in (("train_loss", t), ("val_loss", v)):
        bad = [i for i, x in enumerate(curve) if not math.isfinite(x)]
        if bad:
            ev[f"first_nonfinite_epoch_{name}"] = bad[0] + 1
            where = bad[0] + 1 if where is None else min(where, bad[0] + 1)
    sl = _clean(step_loss)
    badsteps = [i for i, x in enumerate(sl) if not math.isfinite(x)]
    step = first_bad_step
    if badsteps and steps is not None:
        s0 = int(steps[badsteps[0]])
        step = s0 if step is None else min(step, s0)
    if step is not None:
        ev["first_nonfinite_step"] = step
    if ev:
        ev["train_loss"] = t
        return [Finding("divergence", "error",
                        f"The loss became NaN/Inf (first at {'step ' + str(step) if step is not None else 'epoch ' + str(where)}).",
                        ev, "Lower the learning rate (e.g. 10×), clip gradients (torch.nn.utils.clip_grad_norm_), "
                        "and check the initialisation with dd.checkup.", [],
                        step if step is not None else where, fix={"lr_factor": 0.1, "clip_grad_norm": 1.0})]
    curve = [x for x in t if math.isfinite(x)]
    kind = "epoch"
    if len(curve) < 3 and len(sl) >= 3:
        curve, kind = sl, "step"
    if len(curve) >= 3 and curve[0] > 0 and curve[-1] > BLOWUP * curve[0] and curve[-1] > curve[-2]:
        return [Finding("divergence", "error",
                        f"The training loss grew {curve[-1] / curve[0]:.3g}× from {_fmt(curve[0])} to {_fmt(curve[-1])} "
                        f"and is still rising.",
                        {"first_loss": curve[0], "last_loss": curve[-1], "growth": curve[-1] / curve[0],
                         "per": kind, "loss": curve, "threshold": BLOWUP},
                        "Lower the learning rate (e.g. 10×) or clip gradients (torch.nn.utils.clip_grad_norm_).",
                        [], len(curve), fix={"lr_factor": 0.1, "clip_grad_norm": 1.0})]
    return []


def judge_curves(train_loss=None, val_loss=None, train_acc=None, val_acc=None, baseline=None,
                 step_loss=None, steps=None, first_bad_step=None) -> list[Finding]:
    """Every curve rule, most severe first. A diverged run is not also judged for over/underfitting."""
    div = divergence(train_loss, val_loss, step_loss, steps, first_bad_step)
    if div:
        return div
    out = []
    if train_loss and val_loss:
        out += overfitting(train_loss, val_loss)
    if train_loss:
        out += underfitting(train_loss, baseline, train_acc)
    return sort_findings(out)


# ---- depth ----

DEGRADE_REL, DEGRADE_ABS = 0.10, 0.05


def compare_depths(losses_by_depth: dict, residual: bool | None = None) -> list[Finding]:
    """degradation: a deeper net's best *training* loss exceeds a shallower net's best by > 10 % and
    > 0.05 (nats for cross-entropy) → warning; with residual=True → info.

    Why: a deeper net can represent the shallower one (its extra layers set to the identity), so at the
    optimum its training loss is never higher; being worse on the *training* set is not overfitting but
    the optimizer failing (He et al. 2016). Both margins are needed: the relative one ignores noise on
    large losses, the absolute one on losses near zero. Values may be a loss curve (its minimum is used)
    or a single number; a NaN-only curve counts as +inf (diverged).

    >>> dd.compare_depths({2: [1.0, 0.2], 20: [1.5, 0.9]})[0].code
    'degradation'
    """
    if not isinstance(losses_by_depth, dict) or not losses_by_depth:
        raise TypeError(f"losses_by_depth={losses_by_depth!r} must be a non-empty dict {{depth: training losses}}")
    best = {}
    for d, v in losses_by_depth.items():
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ValueError(f"depth={d!r} must be a non-negative integer")
        vals = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        finite = [x for x in vals if math.isfinite(x)]
        best[d] = min(finite) if finite else math.inf
    depths = sorted(best)
    pairs = []
    for i, d1 in enumerate(depths):
        for d2 in depths[i + 1:]:
            a, b = best[d1], best[d2]
            if b > a * (1 + DEGRADE_REL) and b - a > DEGRADE_ABS:
                pairs.append((d1, d2, a, b))
    if not pairs:
        return []
    d1, d2, a, b = max(pairs, key=lambda p: (p[3] - p[2], p[1]))
    sev = "info" if residual else "warning"
    ev = {"depths": depths, "best_train_loss": [best[d] for d in depths], "shallow_depth": d1, "deep_depth": d2,
          "shallow_loss": a, "deep_loss": b, "degraded_pairs": [list(p[:2]) for p in pairs],
          "relative_margin": DEGRADE_REL, "absolute_margin": DEGRADE_ABS, "residual": residual}
    kind = "residual" if residual else "plain"
    return [Finding("degradation", sev,
                    f"The {kind} net of depth {d2} reaches a best training loss of {_fmt(b)}, worse than "
                    f"{_fmt(a)} at depth {d1}: deeper is harder to optimize here, not overfitting.", ev,
                    "Add residual connections (dd.mlp(..., residual=True)), normalization (norm='batch' or "
                    "'layer') and He init (dd.init_weights(model, 'he'))." if not residual else
                    "Check the learning rate and training length of the deeper residual nets.",
                    [f"depth={d2}"], fix=None if residual else {"residual": True})]


# ---- Diagnosis II: oscillation, stalled updates, output/loss mismatch, unscaled inputs ----

OSC_WINDOW = 100  # judge the last <= 100 recorded step losses ...
OSC_MIN_POINTS = 40  # ... once there are >= 40 of them
OSC_SMOOTH = 4  # trend: moving mean over 2·4 + 1 = 9 steps
OSC_SWING = 0.04  # swing (MAD of loss − trend) >= 4 % of the starting loss ...
OSC_SETTLED = 0.9  # ... while the trend no longer falls (last quarter >= 90 % of the quarter before)
OSC_EPOCH_GAP, OSC_EPOCH_PAIRS = 0.10, 0.2  # or: epoch-loss reversals >= 10 % apart, >= 0.2 per epoch
OSC_EPOCH_FALL = 0.05  # ... and the epoch loss, when given, has not fallen >= 5 % over the last two epochs


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return 0.0 if not n else (xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2]))


def _pow10_round(x: float) -> float:
    """x rounded to one significant digit (lr suggestions read like 0.003, not 0.00317)."""
    if not x > 0 or not math.isfinite(x):
        return x
    return float(f"{x:.0e}")


def lr_fix(lr: float | None, factor: float) -> dict:
    """The learning-rate remedy as data: ``{"lr": lr·factor}`` to one significant digit when the lr is
    known (a factor < 1 divides by its inverse, so 0.1 gives exactly lr/10), else ``{"lr_factor":
    factor}`` (also to one digit)."""
    if not lr:
        return {"lr_factor": _pow10_round(factor)}
    return {"lr": _pow10_round(lr * factor if factor >= 1 else lr / (1 / factor))}


def oscillating_loss(step_loss: Sequence[float], steps: Sequence[int] | None = None, lr: float | None = None,
                     batch_size: int | None = None, epoch_loss: Sequence[float] | None = None) -> list[Finding]:
    """oscillating_loss: the step-level training loss swings around its trend instead of settling.

    Over the last ≤ 100 recorded step losses (≥ 40 needed), the trend is a 9-step moving mean of the
    later half; the swing is the median |loss − trend| divided by the *starting* loss (median of the
    first 5 recorded losses). Warning when swing ≥ 0.04 **and** the trend has stopped falling (median of
    the last quarter ≥ 90 % of the quarter before). Why these numbers: on digits (MLP 64-64-64-10) the
    healthy runs we measured — SGD lr 0.01–0.1 with batch 32/64, SGD+momentum 0.05, Adam 1e-3 with
    batch 32/64 — have swing ≤ 0.015 (mini-batch noise of a converging run is small compared with where
    the loss started, even when large relative to a near-zero current loss) and their trend still falls
    or has flattened at a low level; batch size 1 gives 0.33–0.40, SGD lr 1.0 0.07, Adam lr 0.05 0.05.
    Dividing by the starting loss rather than the current level is what keeps the converged, noisy
    run silent; requiring a flat trend keeps a still-improving run silent (AUTOTRAINER's own rule,
    on epoch accuracy, counts reversals ≥ 0.03 apart; reversals are reported here as evidence).

    With per-epoch training losses (``epoch_loss``, ≥ 3 finite), a run whose epoch loss is still falling
    — the last epoch ≥ 5 % below the one two epochs before and not above the one before — is settling,
    whatever its steps do: step losses are mini-batch estimates, and their noise relative to the
    starting loss can exceed 4 % without any overshoot when little is left to learn (measured: an MSE
    regression starting at 0.10 with a noise of 0.005 per batch of 32, epoch loss falling 0.032 → 0.029).
    An overshooting run's epoch loss stalls or jumps up: when the steps swing (≥ 4 %) and the epoch
    loss reverses (neighbouring local extrema ≥ 10 % apart, AUTOTRAINER's rule moved from accuracy to
    loss) at least max(1, 0.2 × epochs) times, the rule fires even while the step trend still falls. A
    full-data loss that rises by 10 % and falls again between epochs is not sampling noise; a single
    bump with calm steps (warm-up, a restart) is not oscillation.
    """
    x = [float(v) for v in (step_loss or []) if v is not None and math.isfinite(float(v))]
    if len(x) < OSC_MIN_POINTS:
        return []
    start = _median(x[:5])
    w = x[-OSC_WINDOW:]
    if start <= 0:
        return []
    tail = w[len(w) // 2:]
    k = OSC_SMOOTH
    trend = [sum(tail[max(0, i - k):i + k + 1]) / len(tail[max(0, i - k):i + k + 1]) for i in range(len(tail))]
    resid = [abs(a - b) for a, b in zip(tail, trend)]
    swing = _median(resid) / start
    q = len(w) // 4
    late, before = _median(w[-q:]), _median(w[-2 * q:-q])
    drift = late / before if before > 0 else math.inf
    d = [b - a for a, b in zip(tail, tail[1:])]
    reversals = sum(1 for a, b in zip(d, d[1:]) if a * b < 0) / max(1, len(d) - 1)
    epoch_pairs = epoch_swings(epoch_loss)
    by_epochs = epoch_pairs >= max(1.0, OSC_EPOCH_PAIRS * len(epoch_loss or []))
    if swing < OSC_SWING or still_falling(epoch_loss) or (drift < OSC_SETTLED and not by_epochs):
        return []
    ev = {"swing": swing, "swing_vs_level": _median(resid) / max(_median(tail), 1e-12), "trend_ratio": drift,
          "reversal_rate": reversals, "start_loss": start, "level": _median(tail), "points": len(w),
          "lr": lr, "batch_size": batch_size, "threshold": OSC_SWING, "epoch_swings": epoch_pairs,
          "epoch_loss": [float(v) for v in epoch_loss or []]}
    step = int(steps[-1]) if steps is not None and len(steps) else None
    small_batch = batch_size is not None and batch_size < 8
    fix = lr_fix(lr, 0.1)
    how = (f"lower the learning rate 10× (lr={_fmt(lr)} → {_fmt(fix['lr'])})" if "lr" in fix
           else "lower the learning rate 10×")
    if small_batch:
        how += f", or use larger batches than {batch_size} (e.g. 32)"
        fix["batch_size"] = 32
    lr_txt = f" with lr={_fmt(lr)}" if lr is not None else ""
    bs_txt = f", batch size {batch_size}" if batch_size is not None else ""
    return [Finding("oscillating_loss", "warning",
                    f"The training loss swings by {swing:.0%} of its starting value "
                    + (f"around a trend that no longer falls" if drift >= OSC_SETTLED else
                       f"and the epoch loss reverses {epoch_pairs}× by ≥ {OSC_EPOCH_GAP:.0%}")
                    + f"{lr_txt}{bs_txt}: the steps overshoot instead of settling.", ev,
                    how[0].upper() + how[1:] + "; or add a learning-rate schedule that decays it.", [], step, fix=fix)]


def epoch_swings(epoch_loss: Sequence[float] | None) -> int:
    """Pairs of neighbouring local extrema of the epoch loss that differ by ≥ 10 % of the larger."""
    e = [float(v) for v in (epoch_loss or []) if v is not None and math.isfinite(float(v))]
    ext = [e[i] for i in range(1, len(e) - 1) if (e[i] - e[i - 1]) * (e[i + 1] - e[i]) < 0]
    return sum(1 for a, b in zip(ext, ext[1:]) if abs(a - b) >= OSC_EPOCH_GAP * max(abs(a), abs(b)))


def still_falling(epoch_loss: Sequence[float] | None) -> bool:
    """The last of ≥ 3 finite epoch losses is ≥ 5 % below the one two epochs before and not above the
    previous one (see oscillating_loss)."""
    e = [float(v) for v in (epoch_loss or []) if v is not None]
    if len(e) < 3 or not all(math.isfinite(v) for v in e[-3:]):
        return False
    return e[-1] <= e[-2] and e[-1] <= (1 - OSC_EPOCH_FALL) * e[-3]


STALL = 1e-5  # update-to-weight ratio ‖Δw‖/‖w‖ per step below this: the layer barely moves
TARGET_UPDATE = 1e-3  # the common practitioner target for ‖Δw‖/‖w‖ per step


def stalled_updates(rows, step: int | None = None, lr: float | None = None,
                    knows_optimizer: bool = False) -> list[Finding]:
    """stalled_updates from the per-step update-to-weight ratio u = ‖Δw‖/‖w‖ of each weight layer
    (rows' ``update_rel``: median over the recent recorded steps; ``frozen``: Δw exactly 0 at every one).

    * Some layers move, others are bit-identical across checks → warning per frozen layer that still
      has ``requires_grad`` (left out of the optimizer by mistake), info for ``requires_grad=False``
      (frozen on purpose, e.g. fine-tuning). Remedy names the layer: ``{"unfreeze": [...]}``.
    * Every moving layer has u < 10⁻⁵ → warning: the learning rate is too small. Suggested lr =
      lr · 10⁻³ / median u (one significant digit), the practitioner target u ≈ 10⁻³.
    * Nothing moved at all → warning when the monitor was given the optimizer (optimizer.step() not
      called, or every gradient is 0), info otherwise (a measuring loop without an optimizer looks the same).
    Why 10⁻⁵: DeepDiagnosis flags u outside 10⁻⁵…10⁻¹; measured healthy digits runs (SGD lr 0.01–0.1,
    Adam 1e-3, batch 32/64) keep every layer at u ≥ 10⁻³, lr 10⁻⁵ gives 7·10⁻⁷.
    """
    w = [r for r in _weights(rows) if r.get("update_rel") is not None and (r.get("weight_norm") or 0) > 0
         and math.isfinite(r["update_rel"])]
    if not w:
        return []
    frozen = [r for r in w if r.get("frozen")]
    moving = [r for r in w if not r.get("frozen") and r["update_rel"] > 0]
    out = []
    ev_all = {r["name"]: r["update_rel"] for r in w}
    if frozen and moving:
        trainable = [r["name"] for r in frozen if r.get("trainable", True)]
        fixed = [r["name"] for r in frozen if not r.get("trainable", True)]
        if trainable:
            out.append(Finding("stalled_updates", "warning",
                               f"The weights of {', '.join(trainable)} are bit-identical across checks while other "
                               f"layers train: they are not updated.",
                               {"frozen_layers": trainable, "update_rel": ev_all, "threshold": STALL},
                               f"Give {', '.join(trainable)}'s parameters to the optimizer (and check requires_grad "
                               f"and that nothing zeroes their gradient).", trainable, step,
                               fix={"unfreeze": trainable}))
        if fixed:
            out.append(Finding("stalled_updates", "info",
                               f"{', '.join(fixed)} have requires_grad=False and do not change (frozen on purpose?).",
                               {"frozen_layers": fixed, "update_rel": ev_all, "threshold": STALL},
                               "Nothing to do if they are meant to stay frozen; otherwise set requires_grad=True and "
                               "add them to the optimizer.", fixed, step, fix={"unfreeze": fixed}))
        return out
    if not moving:
        sev = "warning" if knows_optimizer else "info"
        return [Finding("stalled_updates", sev, "No weight changed between the recorded steps.",
                        {"update_rel": ev_all, "threshold": STALL},
                        "Check that optimizer.step() is called after backward(), that the model's parameters are "
                        "in the optimizer, and that the gradients are not all zero (dead units, detached graph).",
                        [r["name"] for r in w], step)]
    ratios = [r["update_rel"] for r in moving]
    med = _median(ratios)
    slow = [r for r in moving if r["update_rel"] < STALL]
    if len(slow) == len(moving):
        factor = min(1e4, max(10.0, TARGET_UPDATE / med))
        fix = lr_fix(lr, factor)
        how = (f"raise the learning rate from {_fmt(lr)} to about {_fmt(fix['lr'])}" if "lr" in fix
               else f"raise the learning rate about {_fmt(fix['lr_factor'])}×")
        return [Finding("stalled_updates", "warning",
                        f"Every layer's weights move by only {_fmt(med)} of their size per step (median ‖Δw‖/‖w‖; "
                        f"< {STALL:g}): training has all but stopped.",
                        {"median_update_rel": med, "update_rel": ev_all, "lr": lr, "threshold": STALL,
                         "target": TARGET_UPDATE},
                        how[0].upper() + how[1:] + f" (aim for ‖Δw‖/‖w‖ ≈ {TARGET_UPDATE:g} per step).",
                        [r["name"] for r in slow], step, fix=fix)]
    if slow:
        names = [r["name"] for r in slow]
        return [Finding("stalled_updates", "warning",
                        f"{', '.join(names)} barely move (‖Δw‖/‖w‖ < {STALL:g} per step) while the median layer "
                        f"moves {_fmt(med)}.",
                        {"slow_layers": names, "update_rel": ev_all, "median_update_rel": med, "threshold": STALL},
                        "Check these layers' gradient flow (vanishing gradients, dead units feeding them) and "
                        "their weight scale; an optimizer with per-parameter steps (Adam) also helps.",
                        names, step)]
    return []


PROB_LOSSES = ("bce", "nll")  # losses that expect probabilities / log-probabilities
LOGIT_LOSSES = ("cross_entropy", "bce_with_logits")  # losses that apply the softmax/sigmoid themselves


def output_loss_mismatch(facts: dict | None, step: int | None = None) -> list[Finding]:
    """output_loss_mismatch: the output layer and the loss do not fit. `facts` (measured by checkup or a
    Monitor given the loss): ``loss`` (cross_entropy, bce_with_logits, bce, nll, mse or None), ``last_module``
    (type of the module producing the output), ``out_width``, ``out_min``/``out_max``, ``rows_sum_to_one``,
    ``target_kind`` (int/float), ``target_min``/``target_max``.

    * double softmax: cross-entropy on outputs in [0, 1] whose rows sum to 1 (or a Softmax last module)
      → warning: log-softmax of probabilities squashes them into a range of 1 nat, gradients shrink.
    * double sigmoid: BCE-with-logits on outputs in [0, 1] (or a Sigmoid last module) → warning.
    * ReLU into a logit loss: outputs ≥ 0 from a ReLU-family last module → warning (negative logits impossible).
    * NLL on outputs that are not log-probabilities (some > 0) → warning; BCE on outputs outside [0, 1].
    * cross-entropy over one output unit → error: softmax over one logit is 1, the loss is identically 0.
    * targets outside the output's range: class ids ≥ width or < 0 (cross-entropy/NLL) → error, the
      class count ≠ the output width; float targets outside [0, 1] for BCE → error.
    Why no numeric threshold: each is a structural fact; "rows sum to 1" is tested to 10⁻⁴.
    """
    if not facts or not facts.get("loss"):
        return []
    loss, last, width = facts["loss"], facts.get("last_module"), facts.get("out_width")
    lo, hi = facts.get("out_min"), facts.get("out_max")
    ev = {k: v for k, v in facts.items()}
    out = []

    def add(kind, sev, summary, remedy, fix):
        out.append(Finding("output_loss_mismatch", sev, summary, {**ev, "mismatch": kind}, remedy,
                           [facts.get("last_name") or ""] if facts.get("last_name") else [], step, fix=fix))

    in01 = lo is not None and hi is not None and lo >= 0.0 and hi <= 1.0
    if loss in ("cross_entropy", "nll") and width == 1:
        add("single_unit_cross_entropy", "error",
            f"{loss} over a single output unit: the softmax of one logit is 1, so the loss is identically 0 "
            f"and nothing is learnt.",
            "For two classes use one logit with BCEWithLogitsLoss (targets as floats 0/1), or give the output "
            "layer one unit per class.", {"loss": "bce_with_logits"})
        return out
    if loss == "cross_entropy" and (last == "Softmax" or (in01 and facts.get("rows_sum_to_one"))):
        add("double_softmax", "warning",
            "The model's outputs are already probabilities (softmax) and CrossEntropyLoss applies log-softmax "
            "again: the logits are squashed into [0, 1], so the loss barely moves and gradients shrink.",
            "Remove the final softmax: CrossEntropyLoss takes raw logits (apply softmax only for prediction).",
            {"replace_output": "identity"})
    elif loss == "bce_with_logits" and (last == "Sigmoid" or (in01 and width is not None)):
        if last == "Sigmoid" or facts.get("strictly_inside01"):
            add("double_sigmoid", "warning",
                "The model's outputs already pass through a sigmoid and BCEWithLogitsLoss applies another: "
                "predicted probabilities cannot leave [0.5, 0.73].",
                "Remove the final sigmoid: BCEWithLogitsLoss takes raw logits.", {"replace_output": "identity"})
    if loss in LOGIT_LOSSES and last in ("ReLU", "ReLU6") and not out:
        add("relu_output", "warning",
            f"The output passes through {last} before {loss}: logits cannot be negative, so the model cannot "
            f"push a class's probability down and units stuck at 0 pass no gradient.",
            f"Remove the final {last}: the loss needs unbounded logits.", {"replace_output": "identity"})
    if loss == "nll" and hi is not None and hi > 1e-6:
        add("nll_without_log_softmax", "warning",
            f"NLLLoss expects log-probabilities (≤ 0) but the outputs reach {_fmt(hi)}: the loss is unbounded "
            f"below and training runs away.",
            "Use CrossEntropyLoss on the raw outputs (it applies log-softmax), or end the model with LogSoftmax.",
            {"loss": "cross_entropy"})
    if loss == "bce" and lo is not None and (lo < 0 or hi > 1):
        add("unbounded_into_bce", "error",
            f"BCELoss expects probabilities in [0, 1] but the outputs span [{_fmt(lo)}, {_fmt(hi)}].",
            "Use BCEWithLogitsLoss on the raw outputs.", {"loss": "bce_with_logits"})
    tk, tmin, tmax = facts.get("target_kind"), facts.get("target_min"), facts.get("target_max")
    if tk == "int" and loss in ("cross_entropy", "nll") and width and tmin is not None:
        if tmin < 0 or tmax >= width:
            add("class_count", "error",
                f"Class ids span {int(tmin)}..{int(tmax)} but the output has {width} units: class count ≠ output width.",
                f"Give the output layer {int(tmax) + 1} units (one per class), or map the labels to 0..{width - 1}.",
                {"out_features": int(tmax) + 1})
    if tk == "float" and loss in ("bce", "bce_with_logits") and tmin is not None and (tmin < 0 or tmax > 1):
        add("target_range", "error",
            f"Binary cross-entropy needs targets in [0, 1] but they span [{_fmt(tmin)}, {_fmt(tmax)}].",
            "Map the targets to 0/1 (e.g. (y + 1) / 2 for ±1 labels), or use MSE for a regression target.",
            {"target_range": [0, 1]})
    return out


UNSCALED = 10.0  # a feature whose RMS (√(mean² + std²)) is >= 10: an order of magnitude off unit scale


def unscaled_inputs(facts: dict | None, step: int | None = None) -> list[Finding]:
    """unscaled_inputs: input features far from unit scale. `facts`: ``feature_mean`` and ``feature_std``
    (per feature over the batch; channels for images), ``first_layer`` and its output's std.

    Warning when a feature's RMS √(mean² + std²) ≥ 10. Why 10: every init scheme (He, Xavier, LeCun,
    PyTorch's default) sets Var(w) ∝ 1/fan_in *assuming unit-scale inputs*, so a feature 10× larger makes
    the first layer's pre-activations ~10× too large (tanh saturates past |z| = 3, ReLU activations and
    gradients scale up 10×); standardized data has RMS 1, raw 0–1 pixels < 1. Measured: sklearn's raw
    breast-cancer and wine features reach RMS 1061 and 820, raw digits pixels (0–16) 12.9, iris 5.9
    (not flagged).
    """
    if not facts or not facts.get("feature_mean"):
        return []
    mean, std = facts["feature_mean"], facts["feature_std"]
    rms = [math.sqrt(m * m + s * s) for m, s in zip(mean, std)]
    finite = [v for v in rms if math.isfinite(v)]
    if not finite:
        return []
    worst_i = max(range(len(rms)), key=lambda i: rms[i] if math.isfinite(rms[i]) else -1.0)
    big = [i for i, v in enumerate(rms) if v >= UNSCALED]
    if not big:
        return []
    top = sorted(big, key=lambda i: -rms[i])[:10]
    ev = {"n_features": len(rms), "n_unscaled": len(big), "max_feature_rms": rms[worst_i], "worst_feature": worst_i,
          "median_feature_rms": _median(finite), "abs_mean_max": max(abs(m) for m in mean),
          "std_max": max(std), "top_features": {str(i): {"mean": mean[i], "std": std[i]} for i in top},
          "first_layer": facts.get("first_layer"), "first_layer_out_std": facts.get("first_out_std"),
          "threshold": UNSCALED}
    return [Finding("unscaled_inputs", "warning",
                    f"{len(big)} of {len(rms)} input features are far from unit scale (largest RMS "
                    f"{_fmt(rms[worst_i])}, feature {worst_i}): the first layer's pre-activations are that much "
                    f"larger than its initialisation assumes.", ev,
                    "Standardize the inputs: x = (x − mean) / std with the training set's per-feature statistics "
                    "(dd.data.load(..., standardize=True), or sklearn's StandardScaler).",
                    [facts["first_layer"]] if facts.get("first_layer") else [], step,
                    fix={"standardize_inputs": True})]
