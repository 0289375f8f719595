"""Layer rules: per-layer statistics (``LayerStats`` records in forward order) in, ``Finding``s out.
Pure functions; each docstring says why its threshold is that number. "Orders of magnitude" means at
least 100× (DESIGN.md).

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

from ..findings import Finding
from ..measure.records import LayerStats
from .remedies import fmt, init_advice, remedy_init, weight_layers

ORDERS = 1e2  # "orders of magnitude": >= 100x -> warning
# the input gradient of one layer of a gated recurrent cell at init, from its gates alone (see ``gate_gain``)
GATE_GAIN = {"LSTM": 0.25, "GRU": 0.5}
ORDERS_ERROR = 1e4  # >= 10^4x -> error: training of the far layers is effectively stopped
DEAD_ERROR = 0.95


def dead_threshold(units: int) -> float:
    """Fraction of dead units that earns a warning: min(0.9, 1/2 + 2/√n) (0.75 at width 64)."""
    return min(0.9, 0.5 + 2.0 / math.sqrt(max(1, units)))


SAT_WARN, SAT_ERROR = 0.5, 0.9
MIN_POSITIONS = 32  # fewer samples than this and "never fired" is not evidence of death
SYM_TOL = 1e-4


def _orders(ratio: float) -> str | None:
    """"vanishing" for a ratio ≤ 10⁻², "exploding" for ≥ 10², else None (also for NaN)."""
    if ratio <= 1.0 / ORDERS:
        return "vanishing"
    return "exploding" if ratio >= ORDERS else None


def _init_finding(code: str, error: bool, summary: str, evidence: dict, rows: Sequence[LayerStats], extra: str,
                  layers: list[str], step: int | None) -> Finding:
    """A scale finding (error when `error`, else warning) whose remedy is the recommended init (+ `extra`)."""
    return Finding(code, "error" if error else "warning", summary, evidence, remedy_init(rows, extra), layers, step,
                   fix={"init": init_advice(rows)[0]})


def depth_positions(rows: Sequence[LayerStats]) -> list[tuple[LayerStats, float]]:
    """The positions along the network's depth and the back-propagated signal at each, in forward order.

    With main-path measurements (``path_signal``: ∂L/∂h at the tensors every input→output path passes
    through, ``deepdiag.measure.paths``), those: the layers of a chain, the residual stream of a ResNet
    or transformer. Sibling tensors off the main path (an attention block's query/key projections,
    whose gradient is set by how peaked the softmax is, not by depth; a residual branch's interior,
    scaled by the branch's own weights) are not depth and are left out. Records without path
    information (built by hand) fall back to every weight layer's ∂L/∂output.
    """
    path = [(r, r.path_signal) for r in rows if r.path_signal is not None]
    if path or any(r.path_side is not None for r in rows):
        return path
    return [(r, r.signal_norm) for r in weight_layers(rows) if r.signal_norm is not None]


def gradient_flow(rows: Sequence[LayerStats], step: int | None = None) -> list[Finding]:
    """vanishing_gradients / exploding_gradients from the back-propagated signal s = ‖∂L/∂h‖/√B along the
    network's depth (``depth_positions``: the main path).

    Ratio R = s_first / s_last over the positions. R ≤ 10⁻² → vanishing (warning), ≤ 10⁻⁴ or a
    signal that is exactly 0 (float32 underflow or no path) → error; R ≥ 10² → exploding (warning),
    ≥ 10⁴ or non-finite → error. Why 100×: with He/Xavier init the signal's scale is constant in depth
    up to shape factors (healthy nets measured within 30×, see the module docstring), so a change by
    two orders of magnitude is not explained by the architecture. The decay is judged beyond what gated
    recurrent layers (LSTM, GRU) take by construction (``gate_gain``: ¼ per stacked LSTM layer, ½ per GRU
    layer; the evidence gives both numbers). Positions whose signal is exactly 0
    because an all-zero weight layer blocks it (a zero-initialised output layer) are left out: that is
    one step's state, reported by symmetric_units.
    """
    w = depth_positions(rows)
    if len(w) < 2:
        return []
    bad = [r.name for r, s in w if not math.isfinite(s)]
    if bad:
        return [Finding("exploding_gradients", "error",
                        f"The back-propagated gradient overflows to Inf/NaN in {len(bad)} layer(s).",
                        {"nonfinite_layers": bad, "signal_norm": [s for _, s in w]},
                        remedy_init(rows, "lower the learning rate or clip gradients "
                                     "(torch.nn.utils.clip_grad_norm_)"), bad, step,
                        fix={"init": init_advice(rows)[0], "clip_grad_norm": 1.0})]
    if any(r.weight_norm == 0.0 for r in weight_layers(rows)):
        w = [(r, s) for r, s in w if s > 0]
        if len(w) < 2:
            return []
    sig = [s for _, s in w]
    if sig[-1] == 0.0:
        return []
    gates = gate_gain(w)
    i_up, j_up, up = _extreme_pair(sig, max)  # the largest growth toward the input
    # the largest decay toward the input beyond what gated recurrent cells take by construction
    i_dn, j_dn, beyond = _extreme_pair([s / g for s, g in zip(sig, gates)], min)
    gated = gates[i_dn] / gates[j_dn]  # the gates' share of the decay between the two positions (1: none)
    down = beyond * gated  # the decay as measured
    names = [r.name + (":in" if r.path_side == "in" else "") for r, _ in w]
    evidence = {
        "ratio_first_last": sig[0] / sig[-1], "depth": len(w), "signal_norm": dict(zip(names, sig)),
        "grad_rel": {r.name: r.grad_rel for r, _ in w if r.grad_rel is not None}, "threshold": ORDERS,
    }
    found = []
    if _orders(beyond) == "vanishing":
        i, j, ratio = i_dn, j_dn, down
        per_layer = ratio ** (1.0 / (j - i)) if ratio > 0 else 0.0
        evidence = {**evidence, "ratio": ratio, "per_layer_factor": per_layer, "between": [names[i], names[j]]}
        if gated != 1.0:
            evidence["gate_gain"], evidence["ratio_beyond_gates"] = gated, beyond
        how = ("is exactly 0 (blocked by dead units, or float32 underflow)" if ratio == 0 else
               f"is {1 / ratio:.3g}× smaller than at {names[j]} ({fmt(per_layer)}× per layer over "
               f"{j - i + 1} layers)")
        where = "the first layer" if i == 0 else names[i]
        found.append(_init_finding("vanishing_gradients", beyond <= 1.0 / ORDERS_ERROR,
                              f"The gradient reaching {where} {how}, so early layers barely learn.", evidence,
                              rows, "for deep nets add residual connections (dd.mlp(..., residual=True)) or "
                              "normalization", [r.name for r, s in w[i:j + 1] if s <= sig[j] / ORDERS], step))
    if _orders(up) == "exploding":
        i, j, ratio = i_up, j_up, up
        per_layer = ratio ** (1.0 / (j - i)) if ratio < math.inf else ratio
        evidence = {**evidence, "ratio": ratio, "per_layer_factor": per_layer, "between": [names[i], names[j]]}
        found.append(_init_finding("exploding_gradients", ratio >= ORDERS_ERROR,
                              f"The gradient grows {ratio:.3g}× from {names[j]} back to {names[i]} "
                              f"({fmt(per_layer)}× per layer over {j - i + 1} layers), so early layers take huge "
                              f"steps.", evidence,
                              rows, "clip gradients or lower the learning rate; in residual nets add normalization "
                              "(norm='layer')", [r.name for r, s in w[i:j + 1] if s >= sig[j] * ORDERS], step))
    return found


def gate_gain(w: Sequence[tuple[LayerStats, float]]) -> list[float]:
    """Per depth position, the product of ``GATE_GAIN[type] ** stacked`` over the gated recurrent layers
    (LSTM, GRU) between it and the output: the part of the signal's decay toward the input that their
    gates make at initialisation. Dividing each position's signal by it leaves the decay the weights
    make, which ``gradient_flow`` judges.

    Why: an LSTM layer's output is h = o ⊙ tanh(c) with c = f ⊙ c₋₁ + i ⊙ g, so the input's gradient
    reaches x through ∂h/∂x ≈ o · tanh′(c) · i · g′ · W_g + …: at init the pre-activations are small,
    every gate is σ(0) = ½ and tanh′ ≈ 1, so the gates alone multiply it by o·i = ¼ per stacked layer
    (the weights' own gain, W_g's, stays counted: too small or too large weights are still found). A GRU's
    h = (1 − z) ⊙ n + z ⊙ h₋₁ passes x through n only, times (1 − z) = ½. A plain tanh RNN has no
    gates (factor 1). PyTorch's default LSTM of 2–3 layers measures 64–650× from its input to its
    output (4–6× per layer); without the gates' ¼ per layer that is within 2–11×. The recurrent layer's
    signal is at its output (or its input: ``path_side``); the gates' factor sits between it and the
    position before (after)."""
    gain, out = 1.0, [1.0] * len(w)
    for k in range(len(w) - 1, -1, -1):
        r = w[k][0]
        g = GATE_GAIN.get(r.type or "", 1.0) ** (r.stacked or 1) if r.kind == "recurrent" else 1.0
        if r.path_side == "in":  # (its gates act between this position and the next)
            gain *= g
            out[k] = gain
        else:
            out[k] = gain
            gain *= g
    return out


def _extreme_pair(sig: list[float], pick) -> tuple[int, int, float]:
    """(i, j, s_i/s_j) with i < j maximising (``pick=max``) or minimising (``min``) the ratio of an
    earlier position's signal to a later one's. Why pairs and not only first/last: a change by two
    orders of magnitude between any two depths is the same evidence, and a final normalization layer
    (LayerNorm's backward divides by the stream's std) can hide a blow-up in the blocks before it."""
    best, j_best, out = None, len(sig) - 1, (0, len(sig) - 1, sig[0] / sig[-1] if sig[-1] else math.inf)
    for i in range(len(sig) - 2, -1, -1):  # best later signal for the ratio: min for max ratios, max for min
        j = i + 1
        if sig[j] > 0 and (best is None or (sig[j] < best if pick is max else sig[j] > best)):
            best, j_best = sig[j], j
        if best:
            r = sig[i] / best
            if pick(r, out[2]) == r and r != out[2]:
                out = (i, j_best, r)
    return out


def gradient_through_time(rows: Sequence[LayerStats], step: int | None = None) -> list[Finding]:
    """exploding_gradients through time in a recurrent layer: ‖∂L/∂h_1‖/‖∂L/∂h_T‖ (``time_ratio``,
    measured by checkup's step-by-step re-computation) ≥ 10² → warning, ≥ 10⁴ → error.

    Why: the state's Jacobian ∂h_t/∂h_{t−1} multiplies once per step, so the gradient at the first step
    is the last step's times a product of T Jacobians; two orders of magnitude of growth is a recurrence
    whose spectral radius exceeds 1 (weights far above 1/√hidden), the RNN form of exploding gradients
    (Pascanu et al. 2013). Decay through time is the ordinary fading memory of an LSTM/GRU at init and is
    only evidence: tasks with short dependencies do not need it.
    """
    out = []
    for r in rows:
        if r.time_ratio is None or not (r.time_ratio >= ORDERS):
            continue
        sev = "error" if r.time_ratio >= ORDERS_ERROR or not math.isfinite(r.time_ratio) else "warning"
        out.append(Finding("exploding_gradients", sev,
                           f"In {r.name} ({r.type}) the gradient at the first time step is {r.time_ratio:.3g}× the "
                           f"last step's: the recurrence amplifies it at every step.",
                           {"layer": r.name, "time_ratio": r.time_ratio, "weight_std": r.weight_std,
                            "gate_saturation": dict(r.gate_saturation or ()), "threshold": ORDERS},
                           f"Re-initialise {r.name}: Xavier for its input weights and orthogonal recurrent weights "
                           f"(nn.init.orthogonal_ on weight_hh), or PyTorch's default; clip gradients "
                           f"(torch.nn.utils.clip_grad_norm_).", [r.name], step,
                           fix={"init": "xavier", "clip_grad_norm": 1.0}))
    return out


ACT_GAIN = 0.25  # an activation whose derivative has RMS <= 1/4: sigma'(z) <= 1/4 everywhere


def activation_gain(rows: Sequence[LayerStats], step: int | None = None) -> list[Finding]:
    """vanishing_gradients from the activations themselves: a hidden sigmoid/tanh activation (one with a
    weight layer after it) whose derivative f′(z) has RMS ≤ 1/4 over the batch (``deriv_rms``) and that
    ``saturated_units`` does not already report → warning, fix ``{"activation": "relu"}``.

    Why: the backward pass multiplies ∂L/∂a elementwise by f′(z), so ‖∂L/∂z‖ ≈ RMS(f′)·‖∂L/∂a‖ (z and
    ∂L/∂a independent at init). The logistic sigmoid has σ′(z) = σ(1 − σ) ≤ 1/4 for every z, so each
    sigmoid layer divides the gradient by at least 4 *whatever the weights*; weights large enough to
    compensate (×4) push the units into saturation instead. He/Xavier keep the weight layers' gain near
    1, so this loss is the activation's alone, and it compounds: 4ᵏ before the k-th sigmoid from the
    output. Its outputs are also all positive (mean ≈ 1/2), which makes the next layer's weight updates
    share one sign per unit (LeCun et al. 1998, "Efficient BackProp"); sigmoid hidden units are
    discouraged for these reasons (Glorot & Bengio 2010; Goodfellow et al. 2016, §6.3.2). 1/4 is
    σ′(0), the sigmoid's best case; a tanh layer reaches it only when most |z| > 1.3 (tanh′ = 1 − tanh²
    ≤ 1/4), which is Xavier-initialised tanh's exception, not its rule (RMS(tanh′) ≈ 0.6–0.8 measured).
    """
    w = weight_layers(rows)
    if not w:
        return []
    last_weight = max(i for i, r in enumerate(rows) if r.kind == "weight")
    hidden = [r for i, r in enumerate(rows[:last_weight]) if r.kind == "activation" and r.deriv_rms is not None
              and r.deriv_rms <= ACT_GAIN and not (r.frac_saturated_units or 0.0) >= SAT_WARN]
    if not hidden:
        return []
    gains = {r.name: r.deriv_rms for r in hidden}
    product = math.prod(gains.values())
    fams = sorted({r.family for r in hidden})
    names = ", ".join(gains)
    ev = {"activation_gain": gains, "product": product, "families": fams, "threshold": ACT_GAIN}
    return [Finding("vanishing_gradients", "warning",
                    f"The {'/'.join(fams)} activation(s) {names} scale the back-propagated gradient by "
                    f"{', '.join(fmt(g) for g in gains.values())} (the derivative's RMS; σ′ ≤ 1/4 everywhere), "
                    f"so the layers before them learn that much slower ({fmt(1 / product) if product > 0 else 'inf'}× "
                    f"if they are chained).", ev,
                    "Use ReLU hidden activations (activation='relu'; or tanh, zero-centred with derivative up to 1) "
                    "and keep sigmoid for gates and outputs.", list(gains), step, fix={"activation": "relu"})]


# ---- forward signal ----

def activation_scale(rows: Sequence[LayerStats], step: int | None = None) -> list[Finding]:
    """vanishing_activations / exploding_activations from a_l = RMS of the input of weight layer l.

    Ratio R = a_last / a_first (final hidden representation over the data). R ≤ 10⁻² → vanishing
    (warning; ≤ 10⁻⁴ or 0 → error), R ≥ 10² → exploding (≥ 10⁴ or non-finite → error). Why 100×:
    He init keeps E[h²] constant in depth for ReLU, Xavier keeps it within a slow ~1/√l decay for tanh
    (8× at depth 50), so a collapse or blow-up by two orders of magnitude is geometric, i.e. caused by
    the weights' scale.
    """
    w = [r for r in weight_layers(rows) if r.in_rms is not None]
    if len(w) < 2:
        return []
    first, last = w[0], w[-1]
    scales = {r.name: r.in_rms for r in w}
    if first.in_rms == 0 or not math.isfinite(first.in_rms):
        return []
    if not math.isfinite(last.in_rms):
        ratio = math.inf
    else:
        ratio = last.in_rms / first.in_rms
    per_layer = ratio ** (1.0 / (len(w) - 1)) if 0 < ratio < math.inf else ratio
    evidence = {"ratio_last_first": ratio, "per_layer_factor": per_layer, "depth": len(w),
                "input_rms": scales, "act_std": {r.name: r.act_std for r in w},
                "threshold": ORDERS}
    trend = _orders(ratio)
    if trend == "vanishing":
        return [_init_finding("vanishing_activations", ratio <= 1.0 / ORDERS_ERROR,
                              f"The forward signal shrinks {1 / ratio if ratio else math.inf:.3g}× from the input to "
                              f"the last layer ({fmt(per_layer)}× per layer), so the output barely depends on the "
                              f"input.", evidence, rows, "",
                              [r.name for r in w if r.in_rms <= first.in_rms / ORDERS], step)]
    if trend == "exploding":
        return [_init_finding("exploding_activations", ratio >= ORDERS_ERROR,
                              f"The forward signal grows {ratio:.3g}× from the input to the last layer "
                              f"({fmt(per_layer)}× per layer).", evidence, rows,
                              "residual sums need normalization (norm='layer' or 'batch') or branches scaled down",
                              [r.name for r in w if not r.in_rms < first.in_rms * ORDERS], step)]
    return []


SAME_OUTPUT = 1e-5  # output spread across samples <= 1e-5 of its scale: float32 rounding, no input left
INPUT_VARIES = 1e-3  # ... while the input's spread is >= 1e-3 of its scale


def input_ignored(rows: Sequence[LayerStats], step: int | None = None) -> list[Finding]:
    """vanishing_activations (the input is lost): a hidden weight, recurrent or attention layer (not the
    last weight layer) whose output is the same for every sample of the batch (``batch_spread`` ≤ 10⁻⁵
    of its scale) while its input differs between samples (``in_batch_spread`` ≥ 10⁻³) → error, with
    the init fix.

    Why: the input-dependent part of the forward signal is exactly what carries information; a layer
    whose output no longer varies with the sample has multiplied it by 0 — all-zero weights leave only
    the bias, identical for every sample (an LSTM/GRU with zero weights runs its gates on the biases
    alone; a zero FFN or attention projection adds a constant to the stream). Everything after it sees
    a constant, so the network's output does not depend on the input there: the limit a_last/a_first
    → 0 of ``activation_scale``, which a one- or two-layer net cannot reach by a per-layer decay.
    Float32 rounding leaves ~10⁻⁷; an input that varies by ≥ 10⁻³ of its scale rules out a layer
    that is meant to see a constant (a time or position feature shared by the batch). The last weight
    layer is left out: a zero-initialised head is common practice, and ``symmetric_units`` judges it.
    """
    idx = [i for i, r in enumerate(rows) if r.kind == "weight"]
    if not idx:
        return []
    bad = [r for r in rows[:idx[-1]] if r.kind in ("weight", "recurrent", "attention")
           and r.batch_spread is not None and r.in_batch_spread is not None
           and r.batch_spread <= SAME_OUTPUT and r.in_batch_spread >= INPUT_VARIES]
    if not bad:
        return []
    names = [r.name for r in bad]
    zero = [r.name for r in bad if r.weight_norm == 0]
    ev = {"layers": names, "batch_spread": {r.name: r.batch_spread for r in bad},
          "in_batch_spread": {r.name: r.in_batch_spread for r in bad}, "zero_weights": zero,
          "threshold": SAME_OUTPUT, "input_threshold": INPUT_VARIES}
    why = "its weights are all zero" if zero and len(zero) == len(bad) else "its weights cancel the input"
    return [_init_finding("vanishing_activations", True,
                          f"{names[0]} ({bad[0].type}) gives the same output for every sample although its input "
                          f"varies ({why}{f'; {len(bad) - 1} more layer(s) alike' if len(bad) > 1 else ''}): "
                          f"the network's output does not depend on the input there.", ev, rows, "", names, step)]


# ---- units ----

def dead_units(rows: Sequence[LayerStats], step: int | None = None) -> list[Finding]:
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
        if r.unit_family != "relu" or r.frac_dead is None or (r.positions or 0) < MIN_POSITIONS:
            continue
        limit = dead_threshold(r.units)
        if r.frac_dead < limit and r.dead < r.units:
            continue
        sev = "error" if r.frac_dead >= DEAD_ERROR or r.dead == r.units else "warning"
        src = next((x for x in rows if x.name == (r.source or r.name)), r)
        bias = src.bias_mean
        why = (f"their biases average {fmt(bias)}, which switches ReLUs off" if bias is not None and bias < -0.01
               else "their pre-activations are negative on every sample")
        remedy = (f"{'Reset biases to 0 and r' if bias is not None and bias < -0.01 else 'R'}e-initialise "
                  f"with dd.init_weights(model, 'he'); if units died during training lower the learning "
                  f"rate, or use LeakyReLU (activation='leaky_relu').")
        out.append(Finding("dead_units", sev,
                           f"{r.dead} of {r.units} ReLU units in {r.name} never fire on "
                           f"{r.positions} samples/positions: {why}.",
                           {"layer": r.name, "frac_dead": r.frac_dead, "dead": r.dead, "units": r.units,
                            "frac_zero": r.frac_zero, "positions": r.positions, "bias_mean": bias,
                            "threshold": limit},
                           remedy, [r.name], step, fix={"init": "he"}))
    return out


def saturated_units(rows: Sequence[LayerStats], step: int | None = None) -> list[Finding]:
    """saturated_units: tanh units with |z| > 3 (tanh' < 0.01) or sigmoid units with |z| > 5
    (σ' < 0.0067) on more than half of the batch. A layer with ≥ 50 % such units → warning, ≥ 90 % →
    error. Why: with Xavier init z has unit scale and P(|z| > 3) ≈ 0.3 %, so most units being pinned
    means the weights (or inputs) are an order of magnitude too large, and their gradients are ×0.01.
    """
    out = []
    for r in rows:
        out += _saturated_inside(r, rows, step)
        fam = r.unit_family
        if fam not in ("tanh", "sigmoid") or r.frac_saturated_units is None:
            continue
        if r.frac_saturated_units < SAT_WARN:
            continue
        sev = "error" if r.frac_saturated_units >= SAT_ERROR else "warning"
        z = 3.0 if fam == "tanh" else 5.0
        out.append(Finding("saturated_units", sev,
                           f"{r.saturated} of {r.units} {fam} units in {r.name} sit at their asymptotes "
                           f"(|pre-activation| > {z:g}) on most samples, so their gradients are nearly zero.",
                           {"layer": r.name, "frac_saturated_units": r.frac_saturated_units,
                            "frac_saturated": r.frac_saturated, "saturated": r.saturated, "units": r.units,
                            "z_threshold": z, "threshold": SAT_WARN},
                           remedy_init(rows, "standardize the inputs"), [r.name], step,
                           fix={"init": init_advice(rows)[0]}))
    return out


ATTENTION_PEAK = 0.9  # mean largest attention probability: the softmax's gradient p(1 − p) is < 0.09


def _saturated_inside(r: LayerStats, rows: Sequence[LayerStats], step: int | None) -> list[Finding]:
    """saturated_units inside a recurrent layer (a gate with ≥ 50 % saturated units; ≥ 90 % error, the
    same thresholds and reasons as for tanh/sigmoid layers) or an attention layer whose softmax has
    collapsed (mean largest probability ≥ 0.9: ∂p/∂score = p(1 − p) < 0.09 for the chosen key and ≈ 0 for
    the others, so the scores stop learning; at init attention is near-uniform, peak ≈ 1/keys)."""
    out = []
    gates = dict(r.gate_saturation or ())
    worst = max(gates.values(), default=0.0)
    if worst >= SAT_WARN:
        bad = [g for g, v in gates.items() if v >= SAT_WARN]
        out.append(Finding("saturated_units", "error" if worst >= SAT_ERROR else "warning",
                           f"In {r.name} ({r.type}) the {', '.join(bad)} gate(s) are saturated for "
                           f"{worst:.0%} of units on most samples and time steps, so their gradients are nearly zero.",
                           {"layer": r.name, "gate_saturation": gates, "weight_std": r.weight_std,
                            "threshold": SAT_WARN},
                           f"Re-initialise {r.name} with smaller weights (PyTorch's default U(±1/√hidden), or Xavier "
                           f"input and orthogonal recurrent weights) and standardize its inputs.", [r.name], step,
                           fix={"init": "xavier"}))
    if r.attention_peak is not None and r.attention_peak >= ATTENTION_PEAK:
        out.append(Finding("saturated_units", "warning",
                           f"The attention of {r.name} has collapsed: on average {r.attention_peak:.2f} of each "
                           f"query's probability sits on one key, so the softmax passes almost no gradient.",
                           {"layer": r.name, "attention_peak": r.attention_peak, "threshold": ATTENTION_PEAK},
                           "Initialise the query/key projections smaller (std ≈ 0.02 or Xavier) and keep the "
                           "1/√d scaling of the scores.", [r.name], step, fix={"init": "xavier"}))
    return out


def symmetric_units(rows: Sequence[LayerStats], step: int | None = None) -> list[Finding]:
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
    w = weight_layers(rows)
    for i, r in enumerate(w):
        if r.sym_rows is None or (r.units or 0) < 2 or r.sym_rows > SYM_TOL:
            continue
        is_output = i == len(w) - 1
        locked = (not is_output) and r.sym_next is not None and r.sym_next <= SYM_TOL
        ev = {"layer": r.name, "units": r.units, "max_row_difference": r.sym_rows,
              "weight_std": r.weight_std, "outgoing_difference": r.sym_next, "next_layer": r.next_layer,
              "activation_spread": r.unit_spread, "tolerance": SYM_TOL}
        what = "zero" if r.weight_norm == 0 else "identical"
        if locked:
            scheme, _ = init_advice(rows)
            out.append(Finding("symmetric_units", "error",
                               f"All {r.units} units of {r.name} have {what} incoming and outgoing weights, "
                               f"so they compute the same function and get the same gradient forever: the layer "
                               f"acts like one unit.", ev,
                               f"Break the symmetry with random weights: dd.init_weights(model, '{scheme}').",
                               [r.name], step, fix={"init": scheme}))
        else:
            why = ("the output layer's units get different gradients from different targets"
                   if is_output else f"their outgoing weights in {r.next_layer} differ, so the first step separates them")
            out.append(Finding("symmetric_units", "info",
                               f"The {r.units} units of {r.name} start {what}; harmless here: {why}.", ev,
                               "Nothing to do (zero-initialising the last layer is common practice).",
                               [r.name], step))
    return out


LAYER_RULES = (gradient_flow, gradient_through_time, activation_gain, activation_scale, input_ignored,
               symmetric_units, dead_units, saturated_units)
