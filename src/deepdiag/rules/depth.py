"""The depth rule: deeper nets that train worse than shallower ones (``degradation``)."""
from __future__ import annotations

import math

from ..findings import Finding
from .remedies import fmt

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
                    f"The {kind} net of depth {d2} reaches a best training loss of {fmt(b)}, worse than "
                    f"{fmt(a)} at depth {d1}: deeper is harder to optimize here, not overfitting.", ev,
                    "Add residual connections (dd.mlp(..., residual=True)), normalization (norm='batch' or "
                    "'layer') and He init (dd.init_weights(model, 'he'))." if not residual else
                    "Check the learning rate and training length of the deeper residual nets.",
                    [f"depth={d2}"], fix=None if residual else {"residual": True})]
