"""The update rules: how far each weight layer moves per optimizer step (a Monitor's ``update_rel``), which
layers are frozen, and whether the gradient each step applies is that step's own (``carried_gradients``)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from ..findings import Finding
from ..measure.records import CarryFacts, LayerStats
from .remedies import far_from_usual, fmt, lr_fix, median, sentence, weight_layers

STALL = 1e-5  # update-to-weight ratio ‖Δw‖/‖w‖ per step below this: the layer barely moves
TARGET_UPDATE = 1e-3  # the common practitioner target for ‖Δw‖/‖w‖ per step


def stalled_updates(rows: Sequence[LayerStats], step: int | None = None, lr: float | None = None,
                    knows_optimizer: bool = False, frozen_judged: bool = False,
                    usual: float | None = None) -> list[Finding]:
    """stalled_updates from the per-step update-to-weight ratio u = ‖Δw‖/‖w‖ of each weight layer
    (rows' ``update_rel``: median over the recent recorded steps; ``frozen``: Δw exactly 0 at every one).

    * Some layers move, others are bit-identical across checks → warning per frozen layer that still
      has ``requires_grad`` (left out of the optimizer by mistake), info for ``requires_grad=False``
      (frozen on purpose, e.g. fine-tuning). Remedy names the layer: ``{"unfreeze": [...]}``. With
      ``frozen_judged`` the ``requires_grad=False`` layers are left to ``frozen_layers``.
    * Every moving layer has u < 10⁻⁵ → warning: the learning rate is too small. Suggested lr =
      lr · 10⁻³ / median u (one significant digit), the practitioner target u ≈ 10⁻³; at least the
      optimizer's usual lr (`usual`, ``remedies.usual_lr``) when the lr is more than 30× below it (the
      target ratio is a floor: healthy runs move 10⁻³–10⁻², so a ×10 from a 1000× too small lr still crawls).
    * Nothing moved and every gradient is exactly 0 → error naming the cause: the loss does not depend
      on the parameters (a constant loss, a detached graph); exact zeros are not small gradients.
    * Nothing moved at all otherwise → warning when the monitor was given the optimizer (optimizer.step()
      not called), info otherwise (a measuring loop without an optimizer looks the same).
    Why 10⁻⁵: DeepDiagnosis flags u outside 10⁻⁵…10⁻¹; measured healthy digits runs (SGD lr 0.01–0.1,
    Adam 1e-3, batch 32/64) keep every layer at u ≥ 10⁻³, lr 10⁻⁵ gives 7·10⁻⁷.
    """
    w = [r for r in weight_layers(rows) if r.update_rel is not None and (r.weight_norm or 0) > 0
         and math.isfinite(r.update_rel)]
    if not w:
        return []
    frozen = [r for r in w if r.frozen]
    moving = [r for r in w if not r.frozen and r.update_rel > 0]
    out = []
    ev_all = {r.name: r.update_rel for r in w}
    if frozen and moving:
        trainable = [r.name for r in frozen if r.trainable]
        fixed = [r.name for r in frozen if not r.trainable]
        if trainable:
            out.append(Finding("stalled_updates", "warning",
                               f"The weights of {', '.join(trainable)} are bit-identical across checks while other "
                               f"layers train: they are not updated.",
                               {"frozen_layers": trainable, "update_rel": ev_all, "threshold": STALL},
                               f"Give {', '.join(trainable)}'s parameters to the optimizer (and check requires_grad "
                               f"and that nothing zeroes their gradient).", trainable, step,
                               fix={"unfreeze": trainable}))
        if fixed and not frozen_judged:
            out.append(Finding("stalled_updates", "info",
                               f"{', '.join(fixed)} have requires_grad=False and do not change (frozen on purpose?).",
                               {"frozen_layers": fixed, "update_rel": ev_all, "threshold": STALL},
                               "Nothing to do if they are meant to stay frozen; otherwise set requires_grad=True and "
                               "add them to the optimizer.", fixed, step, fix={"unfreeze": fixed}))
        return out
    if not moving and all(r.grad_norm == 0.0 and r.trainable is not False for r in w):
        return [Finding("stalled_updates", "error",
                        "Every gradient is exactly 0, so no weight can change: the loss does not depend on the "
                        "parameters (a loss that is identically constant, such as 0, or a graph detached from "
                        "the model).",
                        {"grad_norm": {r.name: r.grad_norm for r in w}, "update_rel": ev_all, "cause": "zero_gradients"},
                        "Check the loss: that it is computed from the model's output without .detach()/.item()/"
                        "torch.no_grad(), that it is not constant (e.g. cross-entropy over one class, a masked-out "
                        "batch), and that the targets are not the outputs themselves.", [r.name for r in w], step)]
    if not moving:
        sev = "warning" if knows_optimizer else "info"
        return [Finding("stalled_updates", sev, "No weight changed between the recorded steps.",
                        {"update_rel": ev_all, "threshold": STALL},
                        "Check that optimizer.step() is called after backward(), that the model's parameters are "
                        "in the optimizer, and that the gradients are not all zero (dead units, detached graph).",
                        [r.name for r in w], step)]
    ratios = [r.update_rel for r in moving]
    med = median(ratios)
    slow = [r for r in moving if r.update_rel < STALL]
    if len(slow) == len(moving):
        factor = min(1e4, max(10.0, TARGET_UPDATE / med))
        fix = lr_fix(lr, factor)
        if far_from_usual(lr, usual) and lr < usual and fix["lr"] < usual:
            fix = {"lr": usual}
        how = (f"raise the learning rate from {fmt(lr)} to about {fmt(fix['lr'])}" if "lr" in fix
               else f"raise the learning rate about {fmt(fix['lr_factor'])}×")
        return [Finding("stalled_updates", "warning",
                        f"Every layer's weights move by only {fmt(med)} of their size per step (median ‖Δw‖/‖w‖; "
                        f"< {STALL:g}): training has all but stopped.",
                        {"median_update_rel": med, "update_rel": ev_all, "lr": lr, "threshold": STALL,
                         "target": TARGET_UPDATE},
                        sentence(how) + f" (aim for ‖Δw‖/‖w‖ ≈ {TARGET_UPDATE:g} per step).",
                        [r.name for r in slow], step, fix=fix)]
    if slow:
        names = [r.name for r in slow]
        return [Finding("stalled_updates", "warning",
                        f"{', '.join(names)} barely move (‖Δw‖/‖w‖ < {STALL:g} per step) while the median layer "
                        f"moves {fmt(med)}.",
                        {"slow_layers": names, "update_rel": ev_all, "median_update_rel": med, "threshold": STALL},
                        "Check these layers' gradient flow (vanishing gradients, dead units feeding them) and "
                        "their weight scale; an optimizer with per-parameter steps (Adam) also helps.",
                        names, step)]
    return []


FROZEN_LOSS_LEFT = 0.5  # the run ends with >= half of its starting loss: it has not fit its training data


def frozen_layers(rows: Sequence[LayerStats], frozen: Sequence[str], frozen_share: float | None,
                  loss_left: float | None, step: int | None = None) -> list[Finding]:
    """stalled_updates for modules whose every ≥ 2-D parameter has ``requires_grad=False`` (`frozen`,
    module names; `frozen_share`: their share of the model's ≥ 2-D parameter entries), judged against
    what the run achieved (`loss_left`: the final training loss over the loss at initialisation).

    Freezing is a choice (a pretrained backbone under a new head) or a mistake (a fine-tuning script that
    never unfreezes, a ``requires_grad_(False)`` left in). Which one the run says:

    * The training loss stays high: the run ends with ≥ 50 % of its starting loss → warning, fix
      ``{"unfreeze": [...]}``. Why: only the trainable rest fits the data, and its capacity is that of a
      model on fixed features; a network of ordinary size fits its training set (Zhang et al. 2017 fit
      even random labels), so keeping more than half of the initial loss — for a classifier, the chance
      loss ln k — is high bias, and the frozen layers are the capacity it lacks.
    * The whole body is frozen at a random initialisation: every weight layer but the output layer is
      frozen, and each matches a standard scheme's std within ±15 % (``init_scheme`` recognised) →
      warning, same fix. Why: the model is then a linear model on random features; a pretrained body has
      moved away from its initial scale during pretraining, while one frozen at its initialisation
      computes features no step will ever improve. (A coincidental match of every frozen layer with a
      pretrained checkpoint is possible on a shallow backbone: the remedy says to leave it if it is meant
      to stay frozen.) One frozen random layer inside a trainable body is not judged so: the layers
      after it learn to use its random projection.
    * Otherwise → info (frozen on purpose, and the run fits).
    """
    if not frozen:
        return []
    names = list(frozen)
    w = weight_layers(rows)
    at_init = [r for r in w if r.name in set(names)]
    body = len(w) >= 2 and all(r.name in set(names) for r in w[:-1])  # only the output layer trains
    random_features = body and all(r.init_scheme not in (None, "unknown", "zeros", "constant") for r in at_init)
    high = loss_left is not None and math.isfinite(loss_left) and loss_left >= FROZEN_LOSS_LEFT
    ev = {"frozen_layers": names, "frozen_share": frozen_share, "loss_left": loss_left,
          "loss_left_threshold": FROZEN_LOSS_LEFT, "at_init": {r.name: r.init_scheme for r in at_init}}
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    share = f" ({frozen_share:.0%} of the weights)" if frozen_share is not None else ""
    if not (high or random_features):
        return [Finding("stalled_updates", "info",
                        f"{shown}{share} have requires_grad=False and do not change (frozen on purpose?).", ev,
                        "Nothing to do if they are meant to stay frozen; otherwise set requires_grad=True and "
                        "add them to the optimizer.", names, step, fix={"unfreeze": names})]
    why = []
    if high:
        why.append(f"the training loss ends at {loss_left:.0%} of where it started")
    if random_features:
        why.append("their weights are still at a random initialisation's scale (random features)")
    return [Finding("stalled_updates", "warning",
                    f"{shown}{share} are frozen (requires_grad=False) and {' and '.join(why)}: only the "
                    f"trainable rest learns, " + ("and it cannot fit the data (high bias)." if high else
                                                  "on features no step will improve."), ev,
                    f"Unfreeze them (requires_grad=True, and give them to the optimizer); leave them frozen only "
                    f"if they are pretrained and meant to stay so.", names, step, fix={"unfreeze": names})]


def _spacing_at(facts: CarryFacts, step: int) -> int:
    """Optimizer steps between the checks around `step` (dense at the start, sparse later)."""
    sparse = facts.sparse_from is not None and facts.sparse_every and step >= facts.sparse_from
    return facts.sparse_every if sparse else facts.every


def _check_spacing(facts: CarryFacts) -> str:
    """", every 10th" for the run's checks ("" when every step was checked), naming both spacings when the
    run goes from the dense checks at the start into the sparse ones."""
    first, last = _spacing_at(facts, facts.first_step), _spacing_at(facts, facts.last_step)
    every = lambda k: "every step" if k == 1 else f"every {k}th"  # noqa: E731
    if first != last:
        return f", {every(first)}, then {every(last)} from step {facts.sparse_from}"
    return f", {every(last)}" if last > 1 else ""


CARRY_RUN = 9  # consecutive checked optimizer steps whose backward pass found .grad still holding a gradient


def carried_gradients(facts: CarryFacts | None, step: int | None = None) -> list[Finding]:
    """exploding_gradients (error) when the gradients are not reset between optimizer steps
    (``optimizer.zero_grad()`` forgotten), read from the mechanism (``deepdiag.measure.carryover``).

    Autograd adds each backward pass's gradient g_s into ``.grad``; without a reset the optimizer applies
    G_t = Σ_{s≤t} g_s at step t instead of g_t. For batch gradients of a consistent direction
    ‖G_t‖ = t·‖g‖ (linear growth; √t for independent ones): the effective gradient, and with plain SGD the
    step, explodes whatever the learning rate, and Adam's normalised step keeps following the stale sum.
    The probe reads, at the first backward pass after each checked optimizer step, whether ``.grad``
    already held a non-zero gradient (accumulation within one optimizer step is never read).

    * At ≥ CARRY_RUN = 9 consecutive checks → error, evidence: the checks, the optimizer steps they span,
      ‖G‖ the optimizer applied at the run's first and last check and one batch's ‖g‖ at the last.
    Why 9: after k consecutive carried steps the applied gradient sums k + 1 batch gradients, 10× a
    batch's norm at k = 9 for a consistent direction: an order of magnitude, the explosion under way. And
    no deliberate pattern repeats 9 times: one backward pass outside the loop (a gradient probe, a
    saliency map) carries over once; gradient accumulation over m micro-batches, when the monitor counts
    each micro-batch as a step (``Monitor.step`` per micro-batch and no optimizer given), shows runs of
    m − 1 ≤ 7 for the usual m ≤ 8, then a reset. The checks are every `every`-th step for the first 32 checks,
    then every 10th of those (``deepdiag.measure.carryover``); sparser checks only shorten such runs.
    """
    if facts is None or facts.longest < CARRY_RUN:
        return []
    span = facts.last_step - facts.first_step + 1
    growth = facts.held_last / facts.fresh_last if facts.held_last is not None and facts.fresh_last else None
    seen = (f"; the gradient the optimizer applied grew from {fmt(facts.held_first)} to {fmt(facts.held_last)} "
            f"(‖·‖), {fmt(growth)}× one batch's gradient" if growth is not None else "")
    every = _check_spacing(facts)
    return [Finding("exploding_gradients", "error",
                    f"The gradients are not reset between optimizer steps (optimizer.zero_grad() is missing): at "
                    f"each of {facts.longest} consecutive checked optimizer steps ({facts.first_step}–"
                    f"{facts.last_step}{every}) backward added the new gradient to the previous steps' sum, so "
                    f"each step applies the sum of all past gradients{seen}.",
                    {"cause": "gradients_not_reset", "consecutive_checks": facts.longest,
                     "carried_steps": span, "first_step": facts.first_step, "last_step": facts.last_step,
                     "checked_every": _spacing_at(facts, facts.last_step), "checks": facts.checks,
                     "carried_checks": facts.carried,
                     "applied_grad_norm_first": facts.held_first, "applied_grad_norm_last": facts.held_last,
                     "batch_grad_norm_last": facts.fresh_last, "applied_over_batch": growth,
                     "probes": list(facts.probes), "threshold": CARRY_RUN},
                    "Call optimizer.zero_grad() once per optimizer step (before backward), e.g. at the top of the "
                    "loop body; with gradient accumulation, zero after each optimizer.step(), not after each "
                    "micro-batch.", [], step)]
