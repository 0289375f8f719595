"""Input/output rules: the model's output against its loss and targets, and the scale of its inputs
(``OutputFacts`` / ``InputFacts`` records in, ``Finding``s out)."""
from __future__ import annotations

import math

from ..findings import Finding
from ..measure.records import InputFacts, NonFiniteFacts, OutputFacts
from .remedies import fmt, median

LOGIT_LOSSES = ("cross_entropy", "bce_with_logits")  # losses that apply the softmax/sigmoid themselves
BOUNDED01 = ("Sigmoid", "Softmax", "Hardsigmoid", "Softmin")  # last modules whose outputs lie in [0, 1]
BOUNDED = {"Sigmoid": (0.0, 1.0), "Hardsigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0), "Hardtanh": (-1.0, 1.0),
           "Softsign": (-1.0, 1.0)}  # squashing last modules and their output range
NONNEGATIVE = ("ReLU", "ReLU6", "Softplus", "Sigmoid", "Softmax", "Hardsigmoid", "Softmin")


def output_loss_mismatch(facts: OutputFacts | None, step: int | None = None) -> list[Finding]:
    """output_loss_mismatch: the output layer and the loss do not fit. `facts` (``OutputFacts``, measured
    by checkup or a Monitor given the loss): ``loss`` (cross_entropy, bce_with_logits, bce, nll, mse or
    None), ``last_module``
    (type of the module producing the output), ``out_width``, ``out_min``/``out_max``, ``rows_sum_to_one``,
    ``target_kind`` (int/float), ``target_min``/``target_max``.

    * double softmax: cross-entropy on outputs in [0, 1] whose rows sum to 1 (or a Softmax last module)
      → warning: log-softmax of probabilities squashes them into a range of 1 nat, gradients shrink.
    * double sigmoid: BCE-with-logits on a sigmoid's output → warning. Only when neither the graph nor a
      module says what made the output, outputs strictly inside (0, 1) on ≥ 8 samples stand for it: raw
      logits of a fresh model often all lie there too (a Linear's output at PyTorch's init spreads ~0.1
      around its bias), so the range is no evidence once the op is known.
    * ReLU into a logit loss: outputs ≥ 0 from a ReLU-family last module → warning (negative logits impossible).
    * NLL on outputs that are not log-probabilities (some > 0) → warning; BCE on outputs outside [0, 1]
      (error), or from a last module whose range is not [0, 1] (ReLU, Linear, ...) → warning: it lies in
      [0, 1] on this batch only by chance.
    * MSE regression whose targets the output cannot reach: a non-negative last module (ReLU, Softplus,
      Sigmoid, Softmax) with negative targets, or a [0, 1] one with targets outside [0, 1] → warning.
    * bounded logits: cross-entropy on a squashing last module (Sigmoid, Tanh, ...) → warning: with every
      logit in an interval of width w, no class probability exceeds e^w/(e^w + k − 1) and the loss has a
      floor ln(1 + (k − 1)e^(−w)) (``bounded_logit_limits``), whatever the model learns.
    * class ids regressed: MSE on integer-dtype targets with ≥ 3 distinct non-negative values → warning
      (torch's MSE cannot take integer targets, so the loss casts ids itself); regressing ids orders the
      classes. Fix: one unit per class and cross-entropy. A genuinely numeric integer target (a count)
      reads the same: the remedy says so.
    * cross-entropy over one output unit → error: softmax over one logit is 1, the loss is identically 0.
    * targets outside the output's range: class ids ≥ width or < 0 (cross-entropy/NLL) → error, the
      class count ≠ the output width; float targets outside [0, 1] for BCE → error.
    "Last module" is the activation that computed the output as the autograd graph records it (``last_op``:
    a module's or a function's, ``torch.sigmoid(self.out(h))``, through reshapes), else the leaf module
    whose output the model returns.
    Why no numeric threshold: each is a structural fact; "rows sum to 1" is tested to 10⁻⁴.
    """
    if facts is None or not facts.loss:
        return []
    loss, width = facts.loss, facts.out_width
    last = facts.last_op or facts.last_module  # the activation that made the output (module or function)
    lo, hi = facts.out_min, facts.out_max
    ev = facts.evidence()
    out = []

    def add(kind, sev, summary, remedy, fix):
        out.append(Finding("output_loss_mismatch", sev, summary, {**ev, "mismatch": kind}, remedy,
                           [facts.last_name or ""] if facts.last_name else [], step, fix=fix))

    in01 = lo is not None and hi is not None and lo >= 0.0 and hi <= 1.0
    if loss in ("cross_entropy", "nll") and width == 1:
        add("single_unit_cross_entropy", "error",
            f"{loss} over a single output unit: the softmax of one logit is 1, so the loss is identically 0 "
            f"and nothing is learnt.",
            "For two classes use one logit with BCEWithLogitsLoss (targets as floats 0/1), or give the output "
            "layer one unit per class.", {"loss": "bce_with_logits"})
        return out
    if loss == "cross_entropy" and (last == "Softmax" or (in01 and facts.rows_sum_to_one)):
        add("double_softmax", "warning",
            "The model's outputs are already probabilities (softmax) and CrossEntropyLoss applies log-softmax "
            "again: the logits are squashed into [0, 1], so the loss barely moves and gradients shrink.",
            "Remove the final softmax: CrossEntropyLoss takes raw logits (apply softmax only for prediction).",
            {"replace_output": "identity"})
    elif loss == "bce_with_logits" and (last == "Sigmoid" or (facts.last_op is None and facts.last_module is None
                                                               and facts.strictly_inside01)):
        add("double_sigmoid", "warning",
            "The model's outputs already pass through a sigmoid and BCEWithLogitsLoss applies another: "
            "predicted probabilities cannot leave [0.5, 0.73].",
            "Remove the final sigmoid: BCEWithLogitsLoss takes raw logits.", {"replace_output": "identity"})
    elif loss == "cross_entropy" and last in BOUNDED and width and width >= 2:
        lo_b, hi_b = BOUNDED[last]
        p_max, floor = bounded_logit_limits(hi_b - lo_b, width)
        add("bounded_logits", "warning",
            f"The output passes through {last} before cross-entropy: every logit lies in [{lo_b:g}, {hi_b:g}], so "
            f"no class can get a probability above {p_max:.2f} over {width} classes and the loss cannot fall "
            f"below {fmt(floor)}; the squashing's derivative also shrinks every gradient.",
            f"Remove the final {last}: CrossEntropyLoss takes raw, unbounded logits.", {"replace_output": "identity"})
    if loss in LOGIT_LOSSES and last in ("ReLU", "ReLU6") and not out:
        add("relu_output", "warning",
            f"The output passes through {last} before {loss}: logits cannot be negative, so the model cannot "
            f"push a class's probability down and units stuck at 0 pass no gradient.",
            f"Remove the final {last}: the loss needs unbounded logits.", {"replace_output": "identity"})
    if loss == "nll" and hi is not None and hi > 1e-6:
        add("nll_without_log_softmax", "warning",
            f"NLLLoss expects log-probabilities (≤ 0) but the outputs reach {fmt(hi)}: the loss is unbounded "
            f"below and training runs away.",
            "Use CrossEntropyLoss on the raw outputs (it applies log-softmax), or end the model with LogSoftmax.",
            {"loss": "cross_entropy"})
    if loss == "bce" and lo is not None and (lo < 0 or hi > 1):
        add("unbounded_into_bce", "error",
            f"BCELoss expects probabilities in [0, 1] but the outputs span [{fmt(lo)}, {fmt(hi)}].",
            "Use BCEWithLogitsLoss on the raw outputs.", {"loss": "bce_with_logits"})
    elif loss == "bce" and last is not None and last not in BOUNDED01:
        add("unbounded_into_bce", "warning",
            f"BCELoss expects probabilities in [0, 1] but the output comes from {last}, whose range is not "
            f"[0, 1]: it fits this batch by chance (outputs span [{fmt(lo)}, {fmt(hi)}]) and leaves it as it learns.",
            "Use BCEWithLogitsLoss on the raw outputs (or end the model with a Sigmoid).", {"loss": "bce_with_logits"})
    tmin_f, tmax_f = (facts.target_min, facts.target_max) if facts.target_kind == "float" else (None, None)
    if loss == "mse" and tmin_f is not None and last in NONNEGATIVE and tmin_f < 0:
        add("output_range", "warning",
            f"The output comes from {last}, which cannot be negative, but the regression targets reach {fmt(tmin_f)}.",
            f"Remove the final {last}: a regression output needs the targets' range.", {"replace_output": "identity"})
    elif loss == "mse" and tmin_f is not None and last in BOUNDED01 and (tmin_f < 0 or tmax_f > 1):
        add("output_range", "warning",
            f"The output comes from {last}, bounded to [0, 1], but the regression targets span "
            f"[{fmt(tmin_f)}, {fmt(tmax_f)}].",
            f"Remove the final {last}, or map the targets into [0, 1].", {"replace_output": "identity"})
    tk, tmin, tmax = facts.target_kind, facts.target_min, facts.target_max
    if (loss == "mse" and tk == "int" and tmin is not None and tmin >= 0
            and (facts.target_distinct or 0) >= MIN_ORDERED_CLASSES):
        k = int(tmax) + 1
        add("regression_on_class_ids", "warning",
            f"A squared-error loss on integer targets (ids {int(tmin)}..{int(tmax)}, {facts.target_distinct} distinct "
            f"in this batch): class ids are regressed as numbers, which orders the classes and puts class "
            f"{k // 2} between its neighbours, so errors between distant classes cost more than between "
            f"near ones and the rounded prediction favours the middle classes.",
            f"If these are class labels: give the output layer {k} units (one per class) and use "
            f"CrossEntropyLoss on the ids; keep MSE only for a quantity that is truly numeric.",
            {"loss": "cross_entropy", "out_features": k})
    if tk == "int" and loss in ("cross_entropy", "nll") and width and tmin is not None:
        if tmin < 0 or tmax >= width:
            add("class_count", "error",
                f"Class ids span {int(tmin)}..{int(tmax)} but the output has {width} units: class count ≠ output width.",
                f"Give the output layer {int(tmax) + 1} units (one per class), or map the labels to 0..{width - 1}.",
                {"out_features": int(tmax) + 1})
    if tk == "float" and loss in ("bce", "bce_with_logits") and tmin is not None and (tmin < 0 or tmax > 1):
        add("target_range", "error",
            f"Binary cross-entropy needs targets in [0, 1] but they span [{fmt(tmin)}, {fmt(tmax)}].",
            "Map the targets to 0/1 (e.g. (y + 1) / 2 for ±1 labels), or use MSE for a regression target.",
            {"target_range": [0, 1]})
    return out


MIN_ORDERED_CLASSES = 3  # from 3 classes on, regressing ids imposes an order (2 ids: least squares on 0/1 is a linear discriminant)


def bounded_logit_limits(span: float, k: int) -> tuple[float, float]:
    """(largest class probability, smallest cross-entropy) reachable when every one of `k` logits lies in
    an interval of width `span`: softmax puts at most e^span / (e^span + k − 1) on one class (one logit at
    the top, the others at the bottom), so the loss of a correct prediction is at least
    ln(1 + (k − 1)·e^(−span)). Sigmoid outputs (span 1) over 10 classes: p ≤ 0.23, loss ≥ 1.20."""
    top = math.exp(span)
    return top / (top + k - 1), math.log1p((k - 1) * math.exp(-span))


def unscaled_targets(facts: OutputFacts | None, step: int | None = None) -> list[Finding]:
    """unscaled_targets: regression targets far from unit scale (MSE-family loss, float targets with
    RMS √mean(y²) ≥ 10) → warning. Why 10, the inputs' threshold: every init scheme makes the output
    layer's outputs unit-scale, so a target 10× larger is a residual 10× the output's scale — the
    loss starts ~100× above what the learning rate was tuned for, the first steps are spent scaling
    the last layer, and the gradient through the net is 10× too large. Standardize y (and invert at
    prediction), as for the inputs. Measured: targets around 2000 (a price, a count) give 2·10³."""
    if facts is None or facts.loss != "mse" or facts.target_rms is None or facts.target_kind != "float":
        return []
    if not (facts.target_rms >= UNSCALED):
        return []
    ev = {"target_rms": facts.target_rms, "target_min": facts.target_min, "target_max": facts.target_max,
          "out_min": facts.out_min, "out_max": facts.out_max, "threshold": UNSCALED}
    return [Finding("unscaled_targets", "warning",
                    f"The regression targets have RMS {fmt(facts.target_rms)} (range [{fmt(facts.target_min)}, "
                    f"{fmt(facts.target_max)}]) while the initialised output is unit-scale: the loss and its "
                    f"gradients start {fmt(facts.target_rms ** 2)}× too large.", ev,
                    "Standardize the targets: y = (y − mean) / std with the training set's statistics, and invert "
                    "it on the predictions.", [facts.last_name] if facts.last_name else [], step,
                    fix={"standardize_targets": True})]


TOO_LARGE = 2.0  # ... from weights >= 2x the recommended scheme's std (median over weight layers)
OUTPUT_EXCESS = 2.0  # cross-entropy >= ln k + 2 nats: logits of spread >= 2 that point to wrong classes
OUTPUT_SCALE = 10.0  # MSE: an output RMS >= 10x max(target RMS, 1)


LABEL_Z = -2.0  # an output whose loss sits < 2 standard errors below its uniform-label loss does not point at the labels


def _label_free(facts: OutputFacts) -> bool:
    """Whether the output shows no sign of pointing at the labels: row i's loss ℓᵢ minus the loss uᵢ it
    would score with a uniformly drawn label averages less than 2 standard errors below 0 (``label_z``).
    Then its expected cross-entropy is the uniform-label loss ū, read from all k log-probabilities of each
    row: a steadier estimate than the batch's loss, which reads one log-probability per row (the spread
    of the logits decides which wrong class a row's label happens to meet)."""
    return facts.uniform_loss is not None and facts.label_z is not None and math.isfinite(facts.label_z) \
        and facts.label_z > LABEL_Z


def output_scale(facts: OutputFacts | None, layers=(), step: int | None = None) -> list[Finding]:
    """The output layer's scale far beyond what the loss expects (``facts``: ``OutputFacts``;
    ``layers``: the layer records, for the init advice).

    * cross-entropy: the loss exceeds the chance level ln k by ≥ 2 nats (the output is confidently
      wrong) → ``saturated_units`` (warning); so does an output that does not point at the labels
      (``_label_free``) and scores ≥ ln k + 2 in expectation over the labels (the uniform-label loss). Why: for logits of spread s that do not yet depend on the
      label, E[CE] ≈ ln k + s²/2 (E[logsumexp] of k log-normal terms); He/Xavier on unit-scale features
      give s ≤ √2, an excess ≤ 1 nat (measured on the benchmark's bases: logits RMS ≤ 0.36, loss within
      2 % of ln k). 2 nats is s ≥ 2 and the true class getting, geometrically averaged, e⁻² ≈ 1/7 of a
      uniform guess's probability: the softmax sits on wrong classes and passes little gradient
      (p(1 − p) of a near-one-hot output). A trained model is never this far above a uniform guess
      unless something is broken, so the rule needs no notion of "at initialisation".
    * MSE: the output's RMS is ≥ 10× max(the targets' RMS, 1) → ``exploding_activations`` (warning).
      Why: the output layer's init makes unit-scale outputs for unit-scale targets (``unscaled_targets``'
      reason, read from the other side): an output 10× the targets starts the loss ≥ 100× the targets'
      variance and every gradient 10× too large; max(·, 1) keeps near-zero targets from calling a
      unit-scale output exploding.
    Both need the weights to be the cause: their median std ≥ 2× the recommended scheme's (``init_ratio``;
    not judged without layer records that give it). Why: the remedy is the init, and weights at their scheme's scale
    (a deep residual sum without a final normalisation can reach such logits with He weights) are not
    fixed by re-initialising; 2×, because He and Xavier differ by up to √2 and the benchmark's N(0, 1)
    weights are 4–17× He.
    Remedy: the recommended init (the forward gain of weights that are too large).
    """
    if facts is None or facts.out_rms is None:
        return []
    from .remedies import init_advice, init_ratio, remedy_init

    k = init_ratio(layers) if layers else None
    if k is None or k < TOO_LARGE:
        return []  # weights at their scheme's scale (or unknown): the output's scale has another cause

    scheme, remedy = init_advice(layers)[0], remedy_init(layers, "")
    where = [facts.last_name] if facts.last_name else []
    if facts.loss == "cross_entropy" and facts.peak_prob is not None and facts.out_loss is not None:
        k = facts.out_width or 2
        chance = math.log(k)
        expected = facts.uniform_loss if _label_free(facts) else -math.inf
        loss = max(facts.out_loss, expected)
        if loss >= chance + OUTPUT_EXCESS:
            ev = {"peak_prob": facts.peak_prob, "loss": facts.out_loss, "chance_loss": chance, "out_rms": facts.out_rms,
                  "classes": k, "threshold": OUTPUT_EXCESS, "uniform_label_loss": facts.uniform_loss,
                  "label_z": facts.label_z}
            measured = (f"the cross-entropy {fmt(facts.out_loss)}" if loss == facts.out_loss else
                        f"the cross-entropy this label-independent output scores in expectation, {fmt(loss)} "
                        f"(on this batch {fmt(facts.out_loss)}),")
            return [Finding("saturated_units", "warning",
                            f"The output is confidently wrong: {measured} is "
                            f"{fmt(loss - chance)} nats above the chance level ln {k} = {fmt(chance)} (logits "
                            f"of RMS {fmt(facts.out_rms)}, mean top probability {facts.peak_prob:.2f}): the softmax "
                            f"saturates on wrong classes because the weights are far too large.", ev, remedy, where,
                            step, fix={"init": scheme})]
    if facts.loss == "mse" and facts.target_kind == "float" and facts.target_rms is not None:
        ref = max(facts.target_rms, 1.0)
        if facts.out_rms >= OUTPUT_SCALE * ref:
            ev = {"out_rms": facts.out_rms, "target_rms": facts.target_rms, "ratio": facts.out_rms / ref,
                  "threshold": OUTPUT_SCALE}
            return [Finding("exploding_activations", "warning",
                            f"The output has RMS {fmt(facts.out_rms)}, {facts.out_rms / ref:.3g}× the targets' scale "
                            f"({fmt(facts.target_rms)}): the loss and its gradients start "
                            f"{fmt((facts.out_rms / ref) ** 2)}× too large.", ev, remedy, where, step,
                            fix={"init": scheme})]
    return []


UNSCALED = 10.0  # a feature whose RMS (√(mean² + std²)) is >= 10: an order of magnitude off unit scale


def unscaled_inputs(facts: InputFacts | None, step: int | None = None) -> list[Finding]:
    """unscaled_inputs: input features far from unit scale. `facts` (``InputFacts``): ``feature_mean``
    and ``feature_std`` (per feature over the batch; channels for images), ``first_layer`` and its
    output's std.

    Warning when a feature's RMS √(mean² + std²) ≥ 10. Why 10: every init scheme (He, Xavier, LeCun,
    PyTorch's default) sets Var(w) ∝ 1/fan_in *assuming unit-scale inputs*, so a feature 10× larger makes
    the first layer's pre-activations ~10× too large (tanh saturates past |z| = 3, ReLU activations and
    gradients scale up 10×); standardized data has RMS 1, raw 0–1 pixels < 1. Measured: sklearn's raw
    breast-cancer and wine features reach RMS 1061 and 820, raw digits pixels (0–16) 12.9, iris 5.9
    (not flagged).
    """
    if facts is None or not facts.feature_mean:
        return []
    mean, std = facts.feature_mean, facts.feature_std
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
          "median_feature_rms": median(finite), "abs_mean_max": max(abs(m) for m in mean),
          "std_max": max(std), "top_features": {str(i): {"mean": mean[i], "std": std[i]} for i in top},
          "first_layer": facts.first_layer, "first_layer_out_std": facts.first_out_std,
          "threshold": UNSCALED}
    return [Finding("unscaled_inputs", "warning",
                    f"{len(big)} of {len(rms)} input features are far from unit scale (largest RMS "
                    f"{fmt(rms[worst_i])}, feature {worst_i}): the first layer's pre-activations are that much "
                    f"larger than its initialisation assumes.", ev,
                    "Standardize the inputs: x = (x − mean) / std with the training set's per-feature statistics "
                    "(dd.data.load(..., standardize=True), or sklearn's StandardScaler).",
                    [facts.first_layer] if facts.first_layer else [], step,
                    fix={"standardize_inputs": True})]


UPSTREAM = ("inputs", "targets", "weights")  # non-finite here poisons every number computed after it

_NONFINITE_REMEDY = {
    "inputs": "Find the NaN/Inf in the input data and remove or impute it before training (check "
              "torch.isfinite(x).all() per batch; common causes: missing values read as NaN, a division by a "
              "zero standard deviation when standardizing, log of 0).",
    "targets": "Find the NaN/Inf in the targets and remove those samples or fix how they were computed "
               "(missing labels read as NaN, a division by zero when scaling them).",
    "weights": "The weights hold NaN/Inf: re-initialise the model or reload a finite checkpoint; if training "
               "put them there, lower the learning rate or clip gradients (torch.nn.utils.clip_grad_norm_).",
    "output": "Inputs and weights are finite but the forward pass is not: look for an overflow (see the "
              "activation findings), a log or division of 0, or float16 overflow in the model.",
    "loss": "The output is finite but the loss is not: compute it from logits (CrossEntropyLoss, "
            "BCEWithLogitsLoss) rather than log of probabilities, and check the targets' range.",
}


def nonfinite_values(facts: NonFiniteFacts | None, step: int | None = None) -> list[Finding]:
    """nonfinite_values: NaN or ±Inf in the inputs, targets, weights, output or loss (error).

    Named by the first place data flows through that holds one (inputs, targets, weights, then output,
    loss): a NaN propagates through every sum it enters, so everything downstream of it (activations,
    gradients, the loss, every statistic the other rules read) is NaN too, and only that first place
    says what to fix. Why no threshold: one non-finite entry is enough; a single NaN in a batch makes
    the loss, and then every weight after the next optimizer step, NaN. When inputs, targets or
    weights are non-finite, ``judge`` reports this finding alone: the gradient and activation rules
    would read the NaN as exploding gradients and blame the initialisation.
    """
    if facts is None:
        return []
    where = facts.sources()
    if not where:
        return []
    first = where[0]
    n_weights = sum(n for _, n in facts.weights)
    parts = {"inputs": f"{facts.inputs} of {facts.n_inputs} input values",
             "targets": f"{facts.targets} of {facts.n_targets} target values",
             "weights": f"{n_weights} of {facts.n_weights} weights (in {len(facts.weights)} parameter(s))",
             "output": f"{facts.output} of {facts.n_output} output values", "loss": "the loss"}
    ev = {"sources": where, "first_source": first, "inputs": facts.inputs, "n_inputs": facts.n_inputs,
          "targets": facts.targets, "n_targets": facts.n_targets, "output": facts.output,
          "n_output": facts.n_output, "loss_nonfinite": facts.loss, "n_weights": facts.n_weights,
          "weights": {name: n for name, n in facts.weights[:20]}}
    layers = [name.rsplit(".", 1)[0] for name, _ in facts.weights] if first == "weights" else []
    return [Finding("nonfinite_values", "error",
                    f"NaN/Inf in {'; '.join(parts[w] for w in where)}: every number computed from the "
                    f"{first} (activations, gradients, the loss) is NaN/Inf too.", ev,
                    _NONFINITE_REMEDY[first], list(dict.fromkeys(layers)), step)]

