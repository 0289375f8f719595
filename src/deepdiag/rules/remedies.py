"""Remedies: the advice and machine-readable fixes (``Finding.fix``) the rules attach, built in one place.

Every learning-rate remedy goes through ``lr_fix``; every initialisation remedy through ``remedy_init`` /
``init_advice``, which name the scheme that suits the net's activation family (He for ReLU-like units,
Xavier for tanh/sigmoid, orthogonal for a linear chain). ``appeared_in_training`` re-aims a layer
finding at the learning rate when the layers were healthy at the start of training.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from ..findings import Finding
from ..measure.records import LayerStats

RECOMMENDED = {"relu": "he", "leaky_relu": "he", "smooth": "he", "tanh": "xavier", "sigmoid": "xavier",
               "linear": "orthogonal", "mixed": "xavier"}
SCHEME_TITLE = {"he": "He", "xavier": "Xavier", "orthogonal": "orthogonal"}


def weight_layers(rows: Sequence[LayerStats]) -> list[LayerStats]:
    """The weight layers (Linear/Conv) of `rows`, in forward order."""
    return [r for r in rows if r.kind == "weight"]


def fmt(x: float | None) -> str:
    """A number to 3 significant digits in text ("nan"/"inf"/"None" as they are)."""
    return f"{x:.3g}" if x is not None and math.isfinite(x) else str(x)


def sentence(text: str) -> str:
    """`text` with its first letter capitalised."""
    return text[0].upper() + text[1:]


def median(xs) -> float:
    """The median of `xs` (0 for none)."""
    xs = sorted(xs)
    n = len(xs)
    return 0.0 if not n else (xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2]))


def pow10_round(x: float) -> float:
    """x rounded to one significant digit (lr suggestions read like 0.003, not 0.00317)."""
    if not x > 0 or not math.isfinite(x):
        return x
    return float(f"{x:.0e}")


def lr_fix(lr: float | None, factor: float) -> dict:
    """The learning-rate remedy as data: ``{"lr": lr·factor}`` to one significant digit when the lr is
    known (a factor < 1 divides by its inverse, so 0.1 gives exactly lr/10), else ``{"lr_factor":
    factor}`` (also to one digit)."""
    if not lr:
        return {"lr_factor": pow10_round(factor)}
    return {"lr": pow10_round(lr * factor if factor >= 1 else lr / (1 / factor))}


def net_family(rows: Sequence[LayerStats]) -> str:
    """The activation family that follows most weight layers of the net: relu, leaky_relu, smooth, tanh,
    sigmoid (a recurrent layer counts as tanh); "linear" for a plain chain of weight layers with no
    activation, normalization, embedding, recurrent or attention module seen; "mixed" when no family
    covers at least half of the weight layers (a transformer whose only activation module is its
    pooler's Tanh is not a "Tanh net": its GELUs are functions no hook sees)."""
    fams = [r.unit_family or r.family for r in rows if (r.unit_family or r.family)]
    fams = [f.split(" ")[0] for f in fams] + ["tanh" for r in rows if r.kind == "recurrent"]
    n_weights = len(weight_layers(rows))
    if not fams:
        other = any(r.kind in ("norm", "embedding", "recurrent", "attention") for r in rows)
        return "mixed" if other else "linear"
    top = max(set(fams), key=fams.count)
    return top if 2 * fams.count(top) >= n_weights else "mixed"


def init_ratio(rows: Sequence[LayerStats]) -> float | None:
    """The median over weight layers of weight std / the recommended scheme's std (None: no weight
    layer with a known std, or a linear chain, whose scheme is orthogonal)."""
    from ..init import scheme_std  # deferred: importing the rules does not import torch

    scheme = RECOMMENDED.get(net_family(rows), "he")
    ws = [r for r in weight_layers(rows) if r.weight_std is not None and r.fan_in]
    if not ws or scheme == "orthogonal":
        return None
    ratios = sorted(r.weight_std / scheme_std(scheme, r.fan_in, r.fan_out) for r in ws)
    return ratios[len(ratios) // 2]


def init_advice(rows: Sequence[LayerStats]) -> tuple[str, str]:
    """(scheme to recommend, a phrase comparing the current weights with it)."""
    fam = net_family(rows)
    scheme = RECOMMENDED.get(fam, "he")
    ws = [r for r in weight_layers(rows) if r.weight_std is not None and r.fan_in]
    k = init_ratio(rows)
    if k is None:
        return scheme, ""
    stds = sorted(r.weight_std for r in ws)
    inits = {r.init_scheme for r in ws}
    what = f"initialised as {inits.pop()}" if len(inits) == 1 and "unknown" not in inits else \
        f"initialised with std {fmt(stds[len(stds) // 2])}"
    layers = "weight layers" if fam == "mixed" else f"{fam} layers"
    return scheme, f"{layers} {what} ≈ {k:.2g}× {SCHEME_TITLE[scheme]}"


def remedy_init(rows: Sequence[LayerStats], extra: str = "") -> str:
    scheme, phrase = init_advice(rows)
    depth = len(weight_layers(rows))
    if scheme == "orthogonal":
        text = (f"this linear chain multiplies the signal by the same factor at each of its {depth} layers; "
                f"use weights with singular values 1: dd.init_weights(model, 'orthogonal')")
    else:
        text = (f"{phrase}; use dd.init_weights(model, '{scheme}')" if phrase else
                f"use dd.init_weights(model, '{scheme}')")
    if extra:
        text += f"; {extra}"
    return sentence(text) + "."


TRAINING_CAUSED = ("dead_units", "saturated_units", "vanishing_gradients", "exploding_gradients",
                   "vanishing_activations", "exploding_activations")


WD_SHRINK = 0.5  # weights below half their starting norm under weight decay: the decay wins


def usual_lr(optimizer: str | None, momentum: float = 0.0) -> float | None:
    """The learning rate an optimizer conventionally trains with, or None when it is not one of these.
    Adam/AdamW: 1e-3 (Kingma & Ba 2015's default; Adam's step is ≈ lr per parameter whatever the
    gradient's scale, so its lr is an absolute step size and the default trains most nets). SGD: an
    effective step lr/(1 − momentum) of 0.1 (the classic default), i.e. 0.1·(1 − momentum)."""
    if optimizer in ("adam", "adamw"):
        return 1e-3
    if optimizer == "sgd":
        return pow10_round(0.1 * (1.0 - momentum)) if momentum < 1 else None
    return None


def far_from_usual(lr: float | None, usual: float | None, factor: float = 30.0) -> bool:
    """Whether `lr` lies more than `factor`× away from the optimizer's usual lr (either way): far enough
    that the step size itself, not the model, is the first suspect."""
    return bool(lr and usual) and not usual / factor <= lr <= usual * factor


def appeared_in_training(f: Finding, healthy_step: int | None, lr: float | None = None,
                         weight_decay: float | None = None, weight_ratio: float | None = None) -> Finding:
    """`f` (a layer finding of a Monitor) re-aimed at the learning rate when the same rule was silent on
    the layers at the start of training (step `healthy_step`). Why: the init and the data were the same
    then, so what changed the layers is the updates; units that die (a large step pushes every
    pre-activation of a ReLU negative, and a dead unit gets no gradient to come back), saturate or a
    signal that collapses or blows up mid-training are the classic symptoms of a step too large for the
    curvature. Re-initialising would only restart the same path; the fix is a 10× smaller learning rate
    (``{"lr": lr/10}`` when the lr is known, else ``{"lr_factor": 0.1}``). Other findings pass unchanged.

    Under weight decay that shrank the weights below half their starting norm (``weight_ratio`` <
    ``WD_SHRINK``), the updates that changed the layers are the decay's: each step multiplies w by
    (1 − lr·wd) unless the loss gradient pushes back, so the signal through the net shrinks with the
    weights (vanishing) and units fall silent. The fix is then to train without the decay
    (``{"weight_decay": 0}``), the counterfactual that tells whether it was the cause."""
    if f.code not in TRAINING_CAUSED or f.rank < 1 or healthy_step is None:
        return f
    if weight_decay and weight_ratio is not None and weight_ratio < WD_SHRINK:
        return replace(f, summary=f"{f.summary} It appeared during training (the layers were healthy at step "
                                     f"{healthy_step}) while weight decay {fmt(weight_decay)} shrank the weights "
                                     f"to {weight_ratio:.0%} of their starting norm.",
                       evidence={**f.evidence, "healthy_at_step": healthy_step, "weight_decay": weight_decay,
                                 "weight_norm_ratio": weight_ratio},
                       remedy=f"Train without the weight decay (weight_decay=0; it is {fmt(weight_decay)}): it "
                              f"outweighs the loss gradient and shrinks the weights until the signal fades.",
                       fix={"weight_decay": 0.0})
    fix = lr_fix(lr, 0.1)
    what = f"lr={fmt(fix['lr'])}" if "lr" in fix else "a 10× smaller learning rate"
    return replace(f, summary=f"{f.summary} It appeared during training (the layers were healthy at step "
                                 f"{healthy_step}), so the updates caused it.",
                   evidence={**f.evidence, "healthy_at_step": healthy_step, "lr": lr},
                   remedy=f"Lower the learning rate ({what}) or add warm-up; clip gradients "
                          f"(torch.nn.utils.clip_grad_norm_). Re-initialising alone would retrace the same path.",
                   fix=fix)
