"""Curve rules: loss curves (per epoch, or per recorded step) in, ``Finding``s out. Pure functions; each
docstring says why its threshold is that number."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from ..findings import Finding
from .remedies import far_from_usual, fmt, lr_fix, median, pow10_round, sentence

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
                        f"kept falling ({fmt(t[best])} → {fmt(t[last])}).", ev,
                        f"Stop at epoch {best + 1} (early stopping: TrainConfig(patience=3, restore_best=True)), "
                        f"or regularize: L2 (l2=...), dropout (dd.mlp(..., dropout=0.2)), more data or a smaller model.",
                        [], best + 1, fix={"epochs": best + 1})]
    if math.isfinite(gap) and t[last] > 0 and v[last] >= GAP_RATIO * t[last] and gap >= GAP_ABS:
        return [Finding("overfitting", "info",
                        f"Validation loss is {v[last] / t[last]:.1f}× the training loss ({fmt(v[last])} vs "
                        f"{fmt(t[last])}), though it is not rising.", ev,
                        "Watch the validation loss; regularize (L2, dropout) if it starts rising.", [], last + 1)]
    return []


MEMORISE_TRAIN = 0.9  # training loss below 90 % of the chance loss (it has learnt something) ...
MEMORISE_RISE = 0.05  # ... while the validation loss, at or above the chance loss, rose >= 5 % above its minimum


def memorising(train_loss: Sequence[float], val_loss: Sequence[float], baseline: float | None) -> list[Finding]:
    """overfitting (memorising): the validation loss ends at or above the chance-level loss (``baseline``:
    ln k for k classes) and ≥ 5 % above its own minimum, while the training loss ends below 90 % of that
    baseline → warning, fix ``{"epochs": best}``.

    Why: the chance loss is what a constant prediction scores, so a validation loss above it means the
    model predicts new data *worse* than knowing nothing, while it fits its training data measurably
    better than chance (the 10 % margin ``underfitting`` uses for "learnt nothing"). What it learnt is
    specific to the training set: memorised examples or labels that do not carry over (shuffled
    labels; Zhang et al. 2017). The general rule (``overfitting``) waits for a 10 % rise sustained 3
    epochs, which is right when the validation loss is low and SGD noise moves it by percents; above
    chance there is no useful minimum to wait for, and a 5 % rise is beyond what the noise of a fixed
    validation set explains at the chance level (its loss is then an average over hundreds of
    near-uniform predictions).
    """
    t, v = _clean(train_loss), _clean(val_loss)
    n = min(len(t), len(v))
    if baseline is None or baseline <= 0 or n < UNDERFIT_EPOCHS:
        return []
    t, v = t[:n], v[:n]
    if not (math.isfinite(t[-1]) and math.isfinite(v[-1])):
        return []
    finite = [i for i in range(n) if math.isfinite(v[i])]
    best = min(finite, key=lambda i: v[i])
    if not (v[-1] >= baseline and v[-1] >= (1 + MEMORISE_RISE) * v[best] and t[-1] <= MEMORISE_TRAIN * baseline):
        return []
    ev = {"baseline": baseline, "best_epoch": best + 1, "best_val_loss": v[best], "last_val_loss": v[-1],
          "last_train_loss": t[-1], "val_loss": v, "train_loss": t, "rise_threshold": MEMORISE_RISE,
          "train_threshold": MEMORISE_TRAIN, "cause": "memorising"}
    return [Finding("overfitting", "warning",
                    f"Validation loss {fmt(v[-1])} is above the chance-level loss {fmt(baseline)} and rising "
                    f"(minimum {fmt(v[best])} at epoch {best + 1}) while the training loss fell to {fmt(t[-1])}: "
                    f"the model memorises its training set; what it learns does not carry over.", ev,
                    f"Check that inputs and labels are paired correctly (a shuffle of one without the other) "
                    f"and that the labels are right; stop at epoch {best + 1} if they are.", [], n,
                    fix={"epochs": best + 1})]


LABEL_GAP = 0.10  # training accuracy >= 10 points below the validation accuracy of the model it averages over


def labels_disagree(train_acc: Sequence[float] | None, val_acc: Sequence[float] | None) -> list[Finding]:
    """underfitting (labels disagree): after ≥ 3 epochs, the last epoch's training accuracy is ≥ 10
    points below the validation accuracy at both ends of that epoch → warning.

    Why: a model scores at least as well on the data it is fitted to as on new data (the
    generalisation gap is ≥ 0 for a fitted model); a training accuracy far *below* the validation
    accuracy says the training labels disagree with the function that predicts the validation labels —
    noisy or wrong training labels (with half the labels redrawn over k classes, at most
    1/2 + 1/(2k) of them can be fitted without memorising). The training accuracy a loop reports is the
    mean over the epoch while the weights move, so it is compared with the lower of the validation
    accuracies before and after that epoch (the model at the epoch's start and end), which removes the
    lag of a model still improving. Fix ``{"drop_disputed_labels": True}``: retrain without the samples
    whose labels out-of-fold predictions dispute (``deepdiag.labels``, confident learning). 10 points: a validation set of 400 at 60 % accuracy has a standard
    error of 2.4 points, a training set of 1000 1.5, so 10 is ≈ 3.5 combined standard errors;
    train-mode dropout 0.1 costs BERT 4 points (measured).
    """
    a, v = _clean(train_acc), _clean(val_acc)
    n = min(len(a), len(v))
    if n < UNDERFIT_EPOCHS or not all(math.isfinite(x) for x in (a[n - 1], v[n - 1], v[n - 2])):
        return []
    ref = min(v[n - 2], v[n - 1])
    gap = ref - a[n - 1]
    if gap < LABEL_GAP:
        return []
    ev = {"train_acc": a[:n], "val_acc": v[:n], "gap": gap, "threshold": LABEL_GAP, "cause": "labels"}
    return [Finding("underfitting", "warning",
                    f"The training accuracy {a[n - 1]:.2f} is {gap * 100:.0f} points below the validation accuracy "
                    f"{ref:.2f}: the model fits its own training labels worse than new data, so the training "
                    f"labels disagree with the validation labels.", ev,
                    "Check the training labels (noisy, shifted or partly wrong labels), that the training data are "
                    "shuffled every epoch (batches sorted by class are fitted one class at a time), and that "
                    "train-time augmentation or dropout is not destroying the signal. Where labels are wrong, "
                    "train without the disputed ones: the samples whose label out-of-fold predictions of the "
                    "same model contradict (confident learning; fix drop_disputed_labels, which dd.repair "
                    "verifies).", [], n, fix={"drop_disputed_labels": True})]


UNDERFIT_ACC = 0.5  # training accuracy less than halfway from chance (1/k) to a perfect fit ...
# ... and no longer rising fast enough: at the rate of the last 3 epochs, halfway is more epochs away than the run has had
UNDERFIT_TRAIN_VAL = 0.05  # ... and validation accuracy within 5 points of training accuracy (bias, not variance)


def underfitting(train_loss: Sequence[float], baseline: float | None,
                 train_acc: Sequence[float] | None = None, val_acc: Sequence[float] | None = None) -> list[Finding]:
    """underfitting: the model does poorly on its own *training* data (high bias) → warning.

    * Learns nothing: after ≥ 3 epochs the *last* epoch's training loss is still ≥ 90 % of the chance
      baseline (ln k for cross-entropy over k classes, Var(y) for MSE). The baseline is what a constant
      prediction scores; a model that cannot beat it by 10 % on the data it trains on has learnt (almost)
      nothing. The final model is what the run hands over, so it is judged even when an earlier epoch did
      better: a loss that went below 90 % and came back is a collapse after learning (evidence
      ``collapsed``; ``underfitting_cause`` blames the step size), not a model that fits.
    * Plateaued far from fitting (classification, with ≥ 6 epochs of training accuracy and k = e^baseline
      classes): the best training accuracy is below halfway from chance to 1, (a − 1/k)/(1 − 1/k) < 0.5;
      it has plateaued — at the rate r the best rose over the last 3 epochs, reaching halfway would take
      more epochs than the run has had ((a_half − a)/r > epochs); and, when validation accuracy is given,
      it is within 5 points of it. Why: networks of ordinary size can fit their
      training set (Zhang et al. 2017 fit even random labels), so a plateau that far from it, with the
      validation score just as low, is bias (capacity or optimisation), not variance; the plateau test
      keeps a healthy run that is still climbing silent, and halfway keeps runs at the noise floor of a
      hard task (0.85 accuracy on 2 classes = 0.7 of the way) silent.
    """
    t = [x for x in _clean(train_loss) if math.isfinite(x)]
    if baseline is None or baseline <= 0:
        return []
    if len(t) >= UNDERFIT_EPOCHS and t[-1] >= UNDERFIT_FRACTION * baseline:
        best, last = min(t), t[-1]
        collapsed = best < UNDERFIT_FRACTION * baseline
        ev = {"best_train_loss": best, "last_train_loss": last, "baseline": baseline,
              "fraction_of_baseline": last / baseline, "epochs": len(t), "train_loss": t,
              "threshold": UNDERFIT_FRACTION, "collapsed": collapsed, "best_epoch": t.index(best) + 1}
        if train_acc:
            ev["train_acc"] = _clean(train_acc)
        if collapsed:
            summary = (f"After {len(t)} epochs the training loss {fmt(last)} is back at {last / baseline:.0%} of the "
                       f"chance-level loss {fmt(baseline)}, though epoch {t.index(best) + 1} reached {fmt(best)}: "
                       f"the model lost what it had learnt.")
        else:
            summary = (f"After {len(t)} epochs the training loss {fmt(last)} is still {last / baseline:.0%} of "
                       f"the chance-level loss {fmt(baseline)} (best {fmt(best)}).")
        return [Finding("underfitting", "warning", summary, ev,
                        "Train longer or with a larger learning rate, give the model more capacity (width/depth), "
                        "check its initialisation (dd.checkup) and lower any regularization (l2, dropout).",
                        [], len(t))]
    a = [x for x in _clean(train_acc) if math.isfinite(x)]
    k = round(math.exp(baseline)) if baseline < 10 else 0
    if k < 2 or len(a) < 2 * UNDERFIT_EPOCHS:
        return []
    skill = (max(a) - 1.0 / k) / (1.0 - 1.0 / k)
    half = 1.0 / k + UNDERFIT_ACC * (1.0 - 1.0 / k)
    rate = (max(a[-UNDERFIT_EPOCHS:]) - max(a[:-UNDERFIT_EPOCHS])) / UNDERFIT_EPOCHS  # per epoch
    plateau = rate <= 0 or (half - max(a)) / rate > len(a)
    v = [x for x in _clean(val_acc) if math.isfinite(x)]
    close = not v or abs(v[-1] - a[-1]) <= UNDERFIT_TRAIN_VAL
    if not (skill < UNDERFIT_ACC and plateau and close):
        return []
    ev = {"best_train_acc": max(a), "classes": k, "skill": skill, "threshold": UNDERFIT_ACC, "train_acc": a,
          "val_acc": v or None, "train_loss": t, "epochs": len(a), "acc_rate_per_epoch": rate}
    return [Finding("underfitting", "warning",
                    f"The training accuracy has plateaued at {max(a):.2f} over {k} classes (less than halfway "
                    f"from chance to a perfect fit{', validation alike' if v else ''}): the model cannot fit its "
                    f"own training data.", ev,
                    "Give the model more capacity (wider/deeper layers, no bottleneck), then check the "
                    "learning rate and any regularization (l2, dropout).", [], len(a))]


UNDERFIT_SHRINK = 0.5  # weights below half their starting norm under weight decay: the decay wins
UNDERFIT_EPOCH_FALL = 3  # the epoch loss fell in each of the last 3 epochs: still learning, too slowly
FEW_UPDATES_PER_EPOCH, FEW_UPDATES = 4, 100  # optimizer steps per epoch and in all: too few to train a net
ADAPTIVE = ("adam", "adamw")  # optimizers whose step is ≈ lr per parameter, whatever the gradient's scale
SMALL_BATCH, USUAL_BATCH = 8, 32  # batches below 8 samples: one step's gradient is mostly sampling noise


def underfitting_cause(f: Finding, weight_decay: float | None = None, lr: float | None = None,
                       weight_ratio: float | None = None, bottleneck: tuple | None = None,
                       frozen: Sequence[str] | None = None, usual: float | None = None,
                       updates: tuple | None = None, batch_size: int | None = None,
                       optimizer: str | None = None) -> Finding:
    """An underfitting finding with its cause, and a machine-readable fix, where the run shows one.

    * a collapse after learning (evidence ``collapsed``: an earlier epoch was below 90 % of chance, the
      last is not): the model *had* fitted part of its data, so capacity, a frozen layer or the data
      are not why it fits nothing now; what changed is the weights, under steps that threw them out of
      the region they had reached — an instability → ``{"lr": lr/10}`` (``lr_fix``), or the usual lr
      when the lr is more than 30× above it (``far_from_usual``), or ``{"weight_decay": 0}`` when weight
      decay shrank the weights below half their starting norm (the decay, not the steps, erased it).

    * frozen layers (``frozen``: modules whose weights have requires_grad=False): the capacity the
      model lacks is the part that does not train → ``{"unfreeze": [...]}`` (``frozen_layers`` says the same).

    * weight decay that crushes the weights: ``weight_decay`` > 0 and the total weight norm fell below
      half of its value at the start (``weight_ratio`` < 0.5) → ``{"weight_decay": 0}`` (train without
      it: the counterfactual that shows it was the cause). Why: init schemes set the weight scale that
      keeps unit signals; a net that learns grows or keeps it, while the decay step lr·wd·w shrinks w
      geometrically unless the loss gradient pushes back, so weights shrinking at a loss near chance
      mean the decay term dominates.
    * too few updates: fewer than ``FEW_UPDATES_PER_EPOCH`` optimizer steps per epoch and fewer than
      ``FEW_UPDATES`` in all (``updates`` = (steps, steps per epoch)) → ``{"batch_size": 32}``. Why: a net
      learns per update, and with (nearly) the whole training set in each batch an epoch budget buys
      one step per epoch; mini-batches of 32 give n/32 noisy but useful steps for the same compute.
    * a step size far from the optimizer's usual one (``usual``: ``remedies.usual_lr``; more than 30×
      away either way, ``far_from_usual``) → ``{"lr": usual}``: two orders of magnitude too small and the
      run crawls, too large and it thrashes at a high loss; the conventional lr is the one to try first.
    * tiny batches: ``batch_size`` < 8 → ``{"batch_size": 32}``. Why: a step's gradient is the mean of B
      per-sample gradients, so its noise variance is σ²/B; below 8 samples it is ≥ 4× that of the
      conventional batch of 32 at the same lr, and SGD at a fixed step settles where that noise balances
      the pull of the gradient — a level set by lr/B (Mandt et al. 2017; Smith & Le 2018). A run at chance
      with tiny batches is noise-limited; 32 samples per step are the usual cure (or an lr B/32 as large).
    * a loss that is still falling, slowly: the epoch loss dropped in each of the last 3 epochs (without
      leaving 90 % of chance) → ``{"lr": 10·lr}`` (``{"lr_factor": 10}`` when the lr is unknown): the
      steps point the right way but are too small for the budget. Unless the optimizer is Adam or AdamW
      (``optimizer``) and its lr is already at or above the usual 10⁻³ (``usual``): Adam's step is ≈ lr
      per parameter whatever the gradient's scale, so its steps are not small then, ten times the usual
      step is where runs thrash (``far_from_usual``), and the budget is what is short → ``{"epochs": n}``
      (``more_epochs``: as ``not_converged`` extrapolates). E.g. ALBERT under AdamW at lr 3·10⁻³, still
      falling at 0.54 accuracy, retrained at lr 3·10⁻² to chance. SGD's step is lr times the gradient, so
      a slow fall at its usual lr can still be small gradients, and 10× is the probe (ResNets train at
      lr 0.1 with momentum 0.9, ten times ``usual_lr``'s 0.01).
    * capacity: a hidden layer narrower than the output (``bottleneck`` = (name, units, output units)):
      every class score is a function of that layer's few numbers, so with fewer of them than classes
      the classes must share directions and cannot all be told apart → the remedy names the layer.
    Otherwise the finding is returned as it is (capacity, data or a bug: no single knob to name).
    """
    if f.code != "underfitting" or f.rank < 1:
        return f
    if f.evidence.get("collapsed"):
        return _collapse_cause(f, weight_decay, lr, weight_ratio, usual)
    if frozen:
        names = list(frozen)
        return replace(f, summary=f"{f.summary} Cause: capacity — {len(names)} layer(s) are frozen "
                                  f"(requires_grad=False).",
                       evidence={**f.evidence, "cause": "frozen", "frozen_layers": names},
                       remedy="Unfreeze the frozen layers (requires_grad=True, and give them to the optimizer).",
                       fix={"unfreeze": names})
    if bottleneck is not None and bottleneck[1] < bottleneck[2]:
        name, units, out = bottleneck
        return replace(f, summary=f"{f.summary} Cause: capacity — {name} has {units} unit(s), fewer than the "
                                  f"{out} outputs.",
                       evidence={**f.evidence, "cause": "capacity", "bottleneck": name, "bottleneck_units": units},
                       remedy=f"Widen {name} to at least {out} units (the narrowest layer bounds what the output "
                              f"can separate); then retrain.", fix=None)
    t = f.evidence.get("train_loss") or []
    if weight_decay and weight_ratio is not None and weight_ratio < UNDERFIT_SHRINK:
        return replace(f, summary=f"{f.summary} Cause: optimisation — weight decay {fmt(weight_decay)} shrank the weights to "
                                     f"{weight_ratio:.0%} of their starting norm.",
                       evidence={**f.evidence, "weight_decay": weight_decay, "weight_norm_ratio": weight_ratio},
                       remedy=f"Train without the weight decay (weight_decay=0; it is {fmt(weight_decay)}): it "
                              f"outweighs the loss gradient and pins the weights near 0.", fix={"weight_decay": 0.0})
    steps, per_epoch = updates or (None, None)
    if steps is not None and per_epoch is not None and per_epoch < FEW_UPDATES_PER_EPOCH and steps < FEW_UPDATES:
        return replace(f, summary=f"{f.summary} Cause: optimisation — only {steps} update(s) in all, "
                                  f"{per_epoch:.3g} per epoch.",
                       evidence={**f.evidence, "cause": "few_updates", "updates": steps, "updates_per_epoch": per_epoch},
                       remedy="Train with mini-batches (batch_size=32): each epoch then takes many steps instead "
                              "of one or two.", fix={"batch_size": 32})
    if far_from_usual(lr, usual):
        way = "small" if lr < usual else "large"
        return replace(f, summary=f"{f.summary} Cause: optimisation — the learning rate {fmt(lr)} is far from this "
                                  f"optimizer's usual {fmt(usual)}.",
                       evidence={**f.evidence, "cause": f"lr_too_{way}", "lr": lr, "usual_lr": usual},
                       remedy=f"Train at the usual step size (lr={fmt(usual)}): {fmt(lr)} is too {way} by "
                              f"{max(lr / usual, usual / lr):.0f}×.", fix={"lr": usual})
    if batch_size is not None and batch_size < SMALL_BATCH:
        return replace(f, summary=f"{f.summary} Cause: optimisation — batches of {batch_size}: each step's gradient "
                                  f"is mostly sampling noise.",
                       evidence={**f.evidence, "cause": "small_batch", "batch_size": batch_size},
                       remedy=f"Train with mini-batches of {USUAL_BATCH} (batch_size={USUAL_BATCH}; it is {batch_size}): "
                              f"the gradient noise of one sample per step keeps the loss near chance.",
                       fix={"batch_size": USUAL_BATCH})
    k = UNDERFIT_EPOCH_FALL
    if len(t) > k and all(b < a for a, b in zip(t[-k - 1:], t[-k:])):
        if optimizer in ADAPTIVE and lr and usual and lr >= usual:
            n = more_epochs(len(t), t[-1], (t[-k - 1] - t[-1]) / k)
            return replace(f, summary=f"{f.summary} Cause: optimisation — the loss is still falling, slowly, in every "
                                      f"recent epoch, at a learning rate ({fmt(lr)}) at or above this optimizer's usual "
                                      f"{fmt(usual)}.",
                           evidence={**f.evidence, "cause": "budget", "lr": lr, "usual_lr": usual, "suggested_epochs": n},
                           remedy=f"Train for more epochs (about {n}): the loss is still going down, and the steps are "
                                  f"already as large as this optimizer usually takes (a larger learning rate would "
                                  f"thrash rather than speed up).", fix={"epochs": n})
        fix = lr_fix(lr, 10.0)
        what = f"lr={fmt(fix['lr'])}" if "lr" in fix else "a 10× larger learning rate"
        return replace(f, summary=f"{f.summary} Cause: optimisation — the loss is still falling, slowly, in every recent epoch.",
                       evidence={**f.evidence, "lr": lr, "weight_norm_ratio": weight_ratio},
                       remedy=f"Take larger steps ({what}) or train longer: the updates point the right way "
                              f"but are too small for this budget.", fix=fix)
    return f


def _collapse_cause(f: Finding, weight_decay: float | None, lr: float | None, weight_ratio: float | None,
                    usual: float | None) -> Finding:
    """The cause of a collapse after learning (see ``underfitting_cause``)."""
    if weight_decay and weight_ratio is not None and weight_ratio < UNDERFIT_SHRINK:
        return replace(f, summary=f"{f.summary} Cause: weight decay {fmt(weight_decay)} shrank the weights to "
                                  f"{weight_ratio:.0%} of their starting norm.",
                       evidence={**f.evidence, "cause": "collapsed", "weight_decay": weight_decay,
                                 "weight_norm_ratio": weight_ratio},
                       remedy=f"Train without the weight decay (weight_decay=0; it is {fmt(weight_decay)}): it "
                              f"shrank the weights until what they had learnt was gone.", fix={"weight_decay": 0.0})
    fix = {"lr": usual} if far_from_usual(lr, usual) and lr > usual else lr_fix(lr, 0.1)
    what = f"lr={fmt(fix['lr'])}" if "lr" in fix else "a 10× smaller learning rate"
    return replace(f, summary=f"{f.summary} Cause: instability — the steps threw the weights out of the region they "
                              f"had reached.",
                   evidence={**f.evidence, "cause": "collapsed", "lr": lr},
                   remedy=f"Lower the learning rate ({what}) or add warm-up and gradient clipping: the model had "
                          f"learnt, then lost it.", fix=fix)


def loss_left(c) -> float | None:
    """The final training loss over the loss at initialisation (`c`: ``Curves``; see ``_start_end``)."""
    start, end = _start_end(c.train_loss, c.step_loss)
    return end / start if start is not None and start > 0 else None


def _start_end(train_loss, step_loss) -> tuple[float | None, float | None]:
    """(loss at initialisation, final training loss): the start is the median of the first ≤ 5 recorded
    step losses (taken before or right after the first updates), the end the last epoch's training
    loss, else the median of the last ≤ 10 step losses; None where unknown."""
    sl = [v for v in _clean(step_loss) if math.isfinite(v)]
    t = [v for v in _clean(train_loss) if math.isfinite(v)]
    if not sl:
        return None, (t[-1] if t else None)
    return median(sl[:5]), (t[-1] if t else median(sl[-10:]))


CONVERGE_LEFT = 0.5  # ends with >= half of its starting loss ...
CONVERGE_T = 2.0  # ... while the step loss still falls at >= 2 standard errors of its slope
CONVERGE_POINTS = 8  # (the slope is fit over the run's second half, and over >= 8 recorded steps)
EPOCHS_MIN, EPOCHS_MAX = 2, 10  # the suggested epochs: between 2x and 10x the run's


def not_converged(train_loss: Sequence[float] | None, step_loss: Sequence[float] | None,
                  steps: Sequence[int] | None = None) -> list[Finding]:
    """underfitting, cause "stopped too early": a run that ends with ≥ 50 % of its starting loss while
    its loss is still falling → warning, fix ``{"epochs": n}`` (``{"batch_size": 32}`` when it took
    fewer than 4 updates per epoch: more epochs of full-batch steps buy one update each; mini-batches of
    32 give n/32 per epoch for the same compute).

    Why 50 %: a network of ordinary size fits its training set, so a run that keeps more than half its
    initial loss (for a classifier, about the chance loss ln k) has not learnt the task; and when that
    loss is measurably still going down, the run was stopped, not stuck: more training is the remedy,
    not another model. A run that has flattened is not this case. Still falling:

    * runs of fewer than 3 epochs (where ``underfitting``'s level test does not speak): the
      least-squares slope of the step losses over the run's second half (its last 8 recorded steps when
      the half is shorter; fewer than 8 in all: not judged) against the step number is negative by ≥ 2
      standard errors — a fall beyond minibatch noise at about 95 % confidence.
    * runs of ≥ 3 epochs with fewer than 100 updates in all and fewer than 4 per epoch
      (``FEW_UPDATES``, ``FEW_UPDATES_PER_EPOCH``: (nearly) the whole training set in each batch): the
      epoch loss fell in each of the last 3 epochs. Four epoch losses with no trend fall in order with
      probability 1/4! ≈ 4 % (a sign test at about the same confidence; a full-batch loss has no
      sampling noise at all). The update count is what makes a steady fall at a high level "stopped"
      rather than a hard task: gradient descent shrinks the error by about 1 − 1/κ per step (κ: the
      condition number of the loss, in the hundreds and beyond for networks), so fewer than 100 steps
      cannot have reached the floor of a task however noisy. The rate per epoch is what makes it a
      fault rather than a moment: ``diagnose`` is also called mid-training, and a run with many updates
      per epoch that is still falling at a high level after a few epochs is what every healthy run looks
      like on its way down (SGD at lr 0.03 on digits: 75 % of its start after 6 epochs of 14 updates),
      while an epoch of one or two updates is the batch size rationing the updates, whenever one looks.
      A longer run that still creeps down at a high level may also be approaching, or memorising, the
      noise floor of its data, which the curves cannot tell apart; it is left to ``underfitting``.

    n: ``more_epochs``, the epochs at which the current slope, continued, would remove half the
    remaining loss, clamped to [2, 10]× the epochs run.
    """
    t = [v for v in _clean(train_loss) if math.isfinite(v)]
    if not t:
        return []
    xs = [(float(steps[i]) if steps is not None else float(i), float(v)) for i, v in enumerate(_clean(step_loss))
          if math.isfinite(v)]
    start, end = _start_end(train_loss, step_loss)
    if start is None or start <= 0 or end is None or end < CONVERGE_LEFT * start:
        return []
    epochs = len(t)
    if len(xs) < 2:
        return []
    updates = xs[-1][0] - xs[0][0] + 1
    steps_per_epoch = updates / epochs
    if epochs < UNDERFIT_EPOCHS:
        if len(xs) < CONVERGE_POINTS:
            return []
        half = xs[-max(len(xs) // 2, CONVERGE_POINTS):]
        slope, se = _slope(half)
        if not (slope < 0 and se >= 0 and -slope >= CONVERGE_T * se):
            return []
        per_epoch = -slope * steps_per_epoch
        how = f"still falling ({fmt(slope)} per step, {-slope / se if se > 0 else math.inf:.1f} standard errors)"
        ev = {"slope_per_step": slope, "slope_se": se, "t_threshold": CONVERGE_T}
    else:
        k = UNDERFIT_EPOCH_FALL
        if (updates >= FEW_UPDATES or steps_per_epoch >= FEW_UPDATES_PER_EPOCH or len(t) <= k
                or not all(b < a for a, b in zip(t[-k - 1:], t[-k:]))):
            return []
        per_epoch = (t[-k - 1] - t[-1]) / k
        how = f"still falling in each of the last {k} epochs ({fmt(per_epoch)} per epoch) after {updates:.0f} updates"
        ev = {"fall_per_epoch": per_epoch, "updates": updates, "updates_threshold": FEW_UPDATES}
    n = more_epochs(epochs, end, per_epoch)
    ev.update({"epochs": epochs, "start_loss": start, "end_loss": end, "loss_left": end / start,
               "threshold": CONVERGE_LEFT, "train_loss": t, "cause": "not_converged",
               "updates_per_epoch": steps_per_epoch})
    summary = (f"Training stopped after {epochs} epoch(s) with the loss at {end / start:.0%} of where it started "
               f"({fmt(start)} → {fmt(end)}) and {how}: the model has not converged.")
    if steps_per_epoch < FEW_UPDATES_PER_EPOCH:
        return [Finding("underfitting", "warning", summary + f" Cause: optimisation — {steps_per_epoch:.3g} update(s) "
                        f"per epoch.", ev,
                        f"Train with mini-batches (batch_size={USUAL_BATCH}): each epoch then takes many steps instead "
                        f"of one or two.", [], epochs, fix={"batch_size": USUAL_BATCH})]
    return [Finding("underfitting", "warning", summary, ev,
                    f"Train for more epochs (about {n}): the loss is still going down.", [], epochs,
                    fix={"epochs": n})]


def more_epochs(epochs: int, end: float, per_epoch: float) -> int:
    """The epochs at which the loss `end`, falling by `per_epoch` per epoch, would have lost half of what
    is left, clamped to [2, 10]× the `epochs` run (a linear extrapolation is a rough estimate: loss
    curves decelerate)."""
    at = epochs + 0.5 * end / per_epoch if per_epoch > 0 else math.inf
    return int(min(EPOCHS_MAX * epochs, max(EPOCHS_MIN * epochs, math.ceil(min(at, EPOCHS_MAX * epochs)))))


LEVEL_POINTS = 16  # the short-run level test needs >= 16 recorded step losses in the run's second half
LEVEL_SE = 2.0  # ... and reads their mean at 2 standard errors ...
LEVEL_LEARNT = 0.8  # ... which must not reach down to 80 % of the chance loss (a model that learnt something)


def short_run_at_chance(train_loss: Sequence[float] | None, step_loss: Sequence[float] | None,
                        baseline: float | None, steps: Sequence[int] | None = None) -> list[Finding]:
    """underfitting (a short run that fits nothing): a run of fewer than 3 epochs whose recent step
    losses still average ≥ 90 % of the chance baseline → warning, fix ``{"epochs": 10 × epochs}``.

    Why: the level is that of ``underfitting`` (≥ 90 % of what a constant prediction scores: nothing
    learnt), read from the mean m of the step losses in the run's second half, since an epoch mean of
    a run this short averages over the untrained start. m estimates the final model's training loss
    with standard error s = sd/√n (sd of those n step losses; the trend within the half inflates it,
    which errs towards silence). It fires when m ≥ 0.9·baseline **and** m − 2s ≥ 0.8·baseline: the best
    estimate says nothing was learnt, and at about 97.5 % one-sided confidence the model has not
    removed even 20 % (twice the margin) of the chance loss — tiny batches make single step losses
    swing by the whole chance loss, so a noisy mean near the threshold is not enough. n ≥ 16 recorded
    steps: with 15 degrees of freedom the 97.5 % Student quantile is 2.13, close to the 2 used, and the
    sample sd is within ≈ 18 % of the truth (1/√(2(n − 1))); fewer: not judged.

    The fix when nothing else explains it (``underfitting_cause`` names tiny batches, a step size far
    from the usual one, frozen layers, a bottleneck or weight decay first): a run still at chance gives
    no rate to extrapolate, so the longest of ``not_converged``'s suggestions, 10× the epochs — networks
    often sit at chance for a while before the loss starts to fall (the first epoch of a transformer).
    """
    t = [v for v in _clean(train_loss) if math.isfinite(v)]
    if baseline is None or baseline <= 0 or not t or len(t) >= UNDERFIT_EPOCHS:
        return []
    x = [v for v in _clean(step_loss) if math.isfinite(v)]
    tail = x[len(x) // 2:]
    n = len(tail)
    if n < LEVEL_POINTS:
        return []
    m = sum(tail) / n
    se = math.sqrt(sum((v - m) ** 2 for v in tail) / (n - 1) / n)
    if m < UNDERFIT_FRACTION * baseline or m - LEVEL_SE * se < LEVEL_LEARNT * baseline:
        return []
    epochs = len(t)
    more = EPOCHS_MAX * epochs
    ev = {"recent_loss": m, "recent_loss_se": se, "points": n, "baseline": baseline,
          "fraction_of_baseline": m / baseline, "threshold": UNDERFIT_FRACTION, "learnt_threshold": LEVEL_LEARNT,
          "epochs": epochs, "train_loss": t, "cause": "at_chance",
          "last_step": int(steps[-1]) if steps is not None and len(steps) else None}
    return [Finding("underfitting", "warning",
                    f"After {epochs} epoch(s) the recent step losses average {fmt(m)} ± {fmt(se)}, "
                    f"{m / baseline:.0%} of the chance-level loss {fmt(baseline)}: the model fits nothing yet.", ev,
                    f"Train for more epochs (about {more}) or with a larger learning rate; check the "
                    f"initialisation (dd.checkup).", [], epochs, fix={"epochs": more})]


def _slope(xy: list[tuple[float, float]]) -> tuple[float, float]:
    """(least-squares slope of y on x, its standard error)."""
    n = len(xy)
    mx = sum(x for x, _ in xy) / n
    my = sum(y for _, y in xy) / n
    sxx = sum((x - mx) ** 2 for x, _ in xy)
    if sxx <= 0:
        return 0.0, math.inf
    b = sum((x - mx) * (y - my) for x, y in xy) / sxx
    rss = sum((y - my - b * (x - mx)) ** 2 for x, y in xy)
    return b, math.sqrt(rss / max(1, n - 2) / sxx)


def divergence(train_loss: Sequence[float] | None = None, val_loss: Sequence[float] | None = None,
               step_loss: Sequence[float] | None = None, steps: Sequence[int] | None = None,
               first_bad_step: int | None = None) -> list[Finding]:
    """divergence: a loss became NaN/Inf (error, with the first epoch/step), or the training loss grew
    to > 10× its first value and is still rising (error). Why 10×: SGD noise and a warm-up bump move a
    converging loss by percents; a tenfold rise that continues is the iterates leaving the basin
    (learning rate above ~2/λ_max of the Hessian). After ≥ 3 epochs whose best training loss is still
    ≥ 1.2× the loss at initialisation → warning (``_never_below_start``); an epoch's training loss ≥ 2×
    the best epoch before it, not recovered by the end → warning (``_climbed``).
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
    spike = _step_blowup(sl)
    if spike is not None:
        first, peak, end = spike
        return [Finding("divergence", "error",
                        f"The step loss jumped {peak / first:.3g}× from {fmt(first)} to {fmt(peak)} and ended at "
                        f"{fmt(end)}, {end / first:.2g}× where it started: the iterates left the basin.",
                        {"first_loss": first, "peak_loss": peak, "end_loss": end, "growth": peak / first,
                         "per": "step", "threshold": BLOWUP, "end_threshold": BLOWUP_END},
                        "Lower the learning rate (e.g. 10×) or clip gradients (torch.nn.utils.clip_grad_norm_).",
                        [], int(steps[-1]) if steps is not None and len(steps) else None,
                        fix={"lr_factor": 0.1, "clip_grad_norm": 1.0})]
    curve = [x for x in t if math.isfinite(x)]
    kind = "epoch"
    if len(curve) < 3 and len(sl) >= 3:
        curve, kind = sl, "step"
    if len(curve) >= 3 and curve[0] > 0 and curve[-1] > BLOWUP * curve[0] and curve[-1] > curve[-2]:
        return [Finding("divergence", "error",
                        f"The training loss grew {curve[-1] / curve[0]:.3g}× from {fmt(curve[0])} to {fmt(curve[-1])} "
                        f"and is still rising.",
                        {"first_loss": curve[0], "last_loss": curve[-1], "growth": curve[-1] / curve[0],
                         "per": kind, "loss": curve, "threshold": BLOWUP},
                        "Lower the learning rate (e.g. 10×) or clip gradients (torch.nn.utils.clip_grad_norm_).",
                        [], len(curve), fix={"lr_factor": 0.1, "clip_grad_norm": 1.0})]
    epochs = [x for x in t if math.isfinite(x)]
    return _never_below_start(epochs, sl) or _climbed(epochs) or _thrown_out(epochs, v, sl)


BLOWUP_END = 2.0  # ... and the last recorded step losses still >= 2x the first
WORSE_THAN_START = 1.2  # every epoch's mean training loss >= 1.2x the loss at initialisation
CLIMB = 2.0  # an epoch's mean training loss >= 2x the best epoch before it


def _climbed(epoch_loss: list[float]) -> list[Finding]:
    """divergence (warning): the last two epochs' mean training losses are both ≥ 2× the best epoch
    before them → fix ``{"lr_factor": 0.1, "clip_grad_norm": 1.0}``.

    Why: the same descent argument as ``_never_below_start`` on the epoch curve: with a stable step the
    training loss falls up to minibatch noise, which moves an epoch mean by percents; doubling it is
    the iterates thrown out of the region they had reached (the tenfold, still-rising case is the
    error above). 2×: the end threshold of the step blow-up (``BLOWUP_END``); a warm restart of a
    cosine schedule bumps the epoch loss by tens of percent, not twofold. Two epochs, the last
    included: one epoch's spike is a single overshoot that SGD may still recover from (a digits MLP
    at SGD lr 0.3 goes 0.36 → 0.90 in its last epoch); a rise held over two epochs is the run not
    coming back.
    """
    if len(epoch_loss) < 3:
        return []
    earlier = epoch_loss[:-2]
    best = min(earlier)
    best_i = earlier.index(best)
    if best <= 0 or min(epoch_loss[-2:]) < CLIMB * best:
        return []
    peak = max(epoch_loss[-2:])
    peak_i = len(epoch_loss) - 2 + epoch_loss[-2:].index(peak)
    ratio = peak / best
    return [Finding("divergence", "warning",
                    f"The training loss climbed {ratio:.2g}× from {fmt(best)} (epoch {best_i + 1}) to {fmt(peak)} "
                    f"(epoch {peak_i + 1}) and ended at {fmt(epoch_loss[-1])}: the steps threw the model out of the "
                    f"region it had reached.",
                    {"best_epoch": best_i + 1, "best_loss": best, "peak_epoch": peak_i + 1, "peak_loss": peak,
                     "ratio": ratio, "train_loss": epoch_loss, "threshold": CLIMB},
                    "Lower the learning rate (e.g. 10×) or clip gradients (torch.nn.utils.clip_grad_norm_); check "
                    "that optimizer.zero_grad() runs every step.", [], peak_i + 1,
                    fix={"lr_factor": 0.1, "clip_grad_norm": 1.0})]


def _thrown_out(epoch_loss: list[float], val_loss: list[float], step_loss: list[float]) -> list[Finding]:
    """divergence (warning): a loss of the run — a step loss or an epoch's validation loss — rose > 10× the
    loss at initialisation (the first recorded step loss), and the run ended without learning: its last
    epoch's training loss is still ≥ 90 % of that start → fix ``{"lr_factor": 0.1, "clip_grad_norm": 1.0}``.

    Why: no minibatch and no held-out evaluation of a model near its initialisation scores ten times the
    starting loss (for a classifier, ten times chance), so such a value means a step threw the weights
    far from where they began (the step blow-up of ``divergence``, here also seen on the validation set,
    where a BatchNorm net's corrupted running statistics show it after the training loss has settled);
    a run that then ends at its starting level — the 90 % margin ``underfitting`` uses for "learnt
    nothing" — was not a transient spike that training recovered from but iterates that never came back
    to a region where the model learns (ResNet-style net at SGD lr 5: validation loss 5.8·10⁴ after
    epoch 1, training loss back at ln 10 by the end). A learning run ends well below its start (the
    descent lemma, as in ``_never_below_start``), so the conjunction keeps healthy runs silent whatever
    their early spikes.
    """
    if not epoch_loss or not step_loss or not math.isfinite(step_loss[0]) or step_loss[0] <= 0:
        return []
    start, end = step_loss[0], epoch_loss[-1]
    peaks = [x for x in (*step_loss, *val_loss) if math.isfinite(x)]
    peak = max(peaks, default=0.0)
    if not (peak > BLOWUP * start and end >= UNDERFIT_FRACTION * start):
        return []
    where = "validation" if peak in val_loss else "step"
    return [Finding("divergence", "warning",
                    f"A {where} loss reached {fmt(peak)}, {peak / start:.3g}× the loss at initialisation "
                    f"{fmt(start)}, and the run ended at {fmt(end)} ({end / start:.0%} of that start): a step threw "
                    f"the weights far from where they began and training never came back to learning.",
                    {"start_loss": start, "peak_loss": peak, "peak_in": where, "end_loss": end,
                     "growth": peak / start, "threshold": BLOWUP, "end_threshold": UNDERFIT_FRACTION,
                     "train_loss": epoch_loss, "val_loss": val_loss},
                    "Lower the learning rate (e.g. 10×) or clip gradients (torch.nn.utils.clip_grad_norm_).",
                    [], len(epoch_loss), fix={"lr_factor": 0.1, "clip_grad_norm": 1.0})]


def _never_below_start(epoch_loss: list[float], step_loss: list[float]) -> list[Finding]:
    """divergence (warning): after ≥ 3 epochs, the *best* epoch-mean training loss is still ≥ 1.2× the
    loss at initialisation (the first recorded step loss, taken before any update) → fix
    ``{"lr_factor": 0.1, "clip_grad_norm": 1.0}``.

    Why: a step size below 2/L (L: the loss's curvature) lowers the loss at every step up to minibatch
    noise (the descent lemma), so a learning run's epochs average below its starting loss from the
    first epoch on. No epoch better than the untrained model, and every one ≥ 20 % worse, means the
    steps overshoot: the iterates were thrown out of the starting basin and did not come back, the
    slow form of the 10× blow-up ``divergence`` reports as an error. 20 %: an untrained classifier's
    per-sample losses all lie near ln k, so one batch measures the initial loss to a few percent, and
    a model stuck at its initial level (``underfitting``'s case) scores ≈ 1.0×.
    """
    if len(epoch_loss) < UNDERFIT_EPOCHS or not step_loss or not math.isfinite(step_loss[0]) or step_loss[0] <= 0:
        return []
    start, best = step_loss[0], min(epoch_loss)
    if best < WORSE_THAN_START * start:
        return []
    return [Finding("divergence", "warning",
                    f"No epoch trained below the loss at initialisation: the best epoch's training loss {fmt(best)} is "
                    f"{best / start:.2g}× the starting {fmt(start)}, so the steps overshoot instead of descending.",
                    {"start_loss": start, "best_epoch_loss": best, "ratio": best / start, "train_loss": epoch_loss,
                     "threshold": WORSE_THAN_START},
                    "Lower the learning rate (e.g. 10×) or clip gradients (torch.nn.utils.clip_grad_norm_).",
                    [], len(epoch_loss), fix={"lr_factor": 0.1, "clip_grad_norm": 1.0})]


def _step_blowup(step_loss: list[float]) -> tuple[float, float, float] | None:
    """(first, peak, end) when the step loss rose > 10× its first value (the loss at the initialisation,
    before any update: the first recorded step) and its
    end (median of the last ≤ 10) is still ≥ 2× the first, else None. Why: the first losses are at the
    initialisation, about the chance level; no minibatch of a run that is learning scores ten times
    chance, and a run that ends at twice its *starting* loss has been thrown out of the basin and not
    come back (the LSTM at SGD lr 10 that goes 0.71 → 45 in 4 steps and ends at 5× chance) — within the
    first epoch, before any epoch curve exists."""
    x = [v for v in step_loss if math.isfinite(v)]
    if len(x) < 6:
        return None
    first, end, peak = x[0], median(x[-10:]), max(x)
    if first > 0 and peak > BLOWUP * first and end >= BLOWUP_END * first:
        return first, peak, end
    return None


OSC_WINDOW = 100  # judge the last <= 100 recorded step losses ...
OSC_MIN_POINTS = 40  # ... once there are >= 40 of them
OSC_SMOOTH = 4  # trend: moving mean over 2·4 + 1 = 9 steps
OSC_SWING = 0.04  # swing (MAD of loss − trend) >= 4 % of the starting loss ...
OSC_SETTLED = 0.9  # ... while the trend no longer falls (last quarter >= 90 % of the quarter before)
OSC_EPOCH_GAP, OSC_EPOCH_PAIRS = 0.10, 0.2  # or: epoch-loss reversals >= 10 % apart, >= 0.2 per epoch
OSC_EPOCH_FALL = 0.05  # ... and the epoch loss, when given, has not fallen >= 5 % over the last two epochs
OSC_NOISE = 1.5  # with the batch size B known: swing·√B >= 1.5 (in units of the starting loss)


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

    Minibatch noise is not oscillation. A step loss is the mean of B per-sample losses, so sampling
    alone makes it swing by ≈ 0.67·σ/√B around the full-data loss (σ: the per-sample losses' spread).
    With the batch size known, the swing must exceed what sampling explains: swing·√B ≥ 1.5 (swing in
    units of the starting loss). Why 1.5: σ at a plateau is of the order of the starting loss (measured
    swing·√B on healthy runs that converge to their noise floor — tanh and ReLU nets on a 2-class
    problem with 15 % label noise, SGD batch 16/64 and Adam batch 128, plateauing at 0.85 accuracy: 0.47
    to 0.70); twice the largest is beyond sampling, while overshooting steps reach 5.9 (SGD lr 5 on that
    problem) and 25 (tanh digits, SGD lr 3). A run whose swing *is* sampling noise (batch 1 or 2, or a
    step size that stalls the loss at a high level) is noise-limited, not oscillating: the step curve
    alone cannot tell its plateau from a healthy one at the noise floor of a hard task.
    """
    x = [float(v) for v in (step_loss or []) if v is not None and math.isfinite(float(v))]
    if len(x) < OSC_MIN_POINTS:
        return []
    start = median(x[:5])
    w = x[-OSC_WINDOW:]
    if start <= 0:
        return []
    tail = w[len(w) // 2:]
    k = OSC_SMOOTH
    trend = [sum(tail[max(0, i - k):i + k + 1]) / len(tail[max(0, i - k):i + k + 1]) for i in range(len(tail))]
    resid = [abs(a - b) for a, b in zip(tail, trend)]
    swing = median(resid) / start
    q = len(w) // 4
    late, before = median(w[-q:]), median(w[-2 * q:-q])
    drift = late / before if before > 0 else math.inf
    d = [b - a for a, b in zip(tail, tail[1:])]
    reversals = sum(1 for a, b in zip(d, d[1:]) if a * b < 0) / max(1, len(d) - 1)
    epoch_pairs = epoch_swings(epoch_loss)
    by_epochs = epoch_pairs >= max(1.0, OSC_EPOCH_PAIRS * len(epoch_loss or []))
    if swing < OSC_SWING or still_falling(epoch_loss) or (drift < OSC_SETTLED and not by_epochs):
        return []
    noise = swing * math.sqrt(batch_size) if batch_size else None
    if noise is not None and noise < OSC_NOISE and not by_epochs:
        return []
    ev = {"swing": swing, "swing_vs_level": median(resid) / max(median(tail), 1e-12), "trend_ratio": drift,
          "reversal_rate": reversals, "start_loss": start, "level": median(tail), "points": len(w),
          "lr": lr, "batch_size": batch_size, "threshold": OSC_SWING, "epoch_swings": epoch_pairs,
          "swing_sqrt_batch": noise, "noise_threshold": OSC_NOISE,
          "epoch_loss": [float(v) for v in epoch_loss or []]}
    step = int(steps[-1]) if steps is not None and len(steps) else None
    small_batch = batch_size is not None and batch_size < SMALL_BATCH
    fix = lr_fix(lr, 0.1)
    how = (f"lower the learning rate 10× (lr={fmt(lr)} → {fmt(fix['lr'])})" if "lr" in fix
           else "lower the learning rate 10×")
    if small_batch:
        how += f", or use larger batches than {batch_size} (e.g. {USUAL_BATCH})"
        fix["batch_size"] = USUAL_BATCH
    lr_txt = f" with lr={fmt(lr)}" if lr is not None else ""
    bs_txt = f", batch size {batch_size}" if batch_size is not None else ""
    return [Finding("oscillating_loss", "warning",
                    f"The training loss swings by {swing:.0%} of its starting value "
                    + ("around a trend that no longer falls" if drift >= OSC_SETTLED else
                       f"and the epoch loss reverses {epoch_pairs}× by ≥ {OSC_EPOCH_GAP:.0%}")
                    + f"{lr_txt}{bs_txt}: the steps overshoot instead of settling.", ev,
                    sentence(how) + "; or add a learning-rate schedule that decays it.", [], step, fix=fix)]


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
