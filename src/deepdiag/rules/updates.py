"""The update rule: how far each weight layer moves per optimizer step (a Monitor's ``update_rel``)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from ..findings import Finding
from ..measure.records import LayerStats
from .remedies import fmt, lr_fix, median, sentence, weight_layers

STALL = 1e-5  # update-to-weight ratio ‖Δw‖/‖w‖ per step below this: the layer barely moves
TARGET_UPDATE = 1e-3  # the common practitioner target for ‖Δw‖/‖w‖ per step


def stalled_updates(rows: Sequence[LayerStats], step: int | None = None, lr: float | None = None,
                    knows_optimizer: bool = False) -> list[Finding]:
    """stalled_updates from the per-step update-to-weight ratio u = ‖Δw‖/‖w‖ of each weight layer
    (rows' ``update_rel``: median over the recent recorded steps; ``frozen``: Δw exactly 0 at every one).

    * Some layers move, others are bit-identical across checks → warning per frozen layer that still
      has ``requires_grad`` (left out of the optimizer by mistake), info for ``requires_grad=False``
      (frozen on purpose, e.g. fine-tuning). Remedy names the layer: ``{"unfreeze": [...]}``.
    * Every moving layer has u < 10⁻⁵ → warning: the learning rate is too small. Suggested lr =
      lr · 10⁻³ / median u (one significant digit), the practitioner target u ≈ 10⁻³.
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
        if fixed:
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
