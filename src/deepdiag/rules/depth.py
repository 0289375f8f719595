"""The depth rules: deeper nets that train worse than shallower ones (``degradation``), and depth that
adds nothing because stacked weight layers collapse into one linear map (``linear_network``)."""
from __future__ import annotations

import math

from ..findings import Finding
from ..measure.records import AffineFacts
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


LINKS_SHOWN = 3  # links named in the summary (all are in the evidence)


def linear_network(facts: AffineFacts | None, step: int | None = None) -> list[Finding]:
    """underfitting (cause ``linear_network``): two or more weight layers with nothing nonlinear between
    them (``deepdiag.measure.affine``: the input of the later layer is, to float round-off, an affine
    function of the earlier layer's output) → warning when at least one such pair is no deliberate
    factorisation and either the whole model is affine or the pair is a plain chain (the earlier layer
    feeds only the later one, which reads only it); info otherwise.

    Why: a composition of affine maps is affine, W₂(A(W₁x + b₁)) + b₂ = W'x + b', so such a pair computes
    what one layer computes. A network made only of such links (``whole_model``) has the capacity of a
    linear model whatever its depth: it cannot fit a nonlinear target (high bias, the seed's
    underfitting); inside a nonlinear model (a transformer's feed-forward block without its activation, a
    CNN whose only nonlinearity left is max pooling) the pair wastes its depth and parameters, and in a
    transformer that block is the only position-wise nonlinearity. Why not always: a factorisation is a
    design when it constrains the map — a rank bottleneck (inner width < min(fan_in, fan_out): low-rank
    adapters, the linear bottlenecks of MobileNetV2) or fewer parameters than the one layer it equals
    (depthwise-separable convolutions) — so those pairs are info only. So is a pair that is one term of a
    sum inside a nonlinear model (the last block of a pre-activation residual net reaching the head
    through the residual stream): merging it saves one matrix of one branch, while every other path
    through the model keeps its nonlinearities; a practitioner calls that a design, not a fault. The tolerance is round-off
    (100 ε of the dtype; see ``deepdiag.measure.affine``), so a weak nonlinearity never passes as none.
    A single weight layer (logistic or linear regression) has no pair and is never flagged.

    >>> facts = AffineFacts((AffineLink("fc1", "fc2", 0.0, 0.4, 30, 32, 2, 1024, 60),), True, 1.2e-5, 0.3, 64, 2)
    >>> linear_network(facts)[0].evidence["cause"]
    'linear_network'
    """
    if facts is None or not facts.links:
        return []
    wasted = [link for link in facts.links if not link.compression and (link.pure or facts.whole_model)]
    shown = wasted or list(facts.links)
    pairs = ", ".join(f"{link.source} → {link.to}" for link in shown[:LINKS_SHOWN])
    more = f" and {len(shown) - LINKS_SHOWN} more" if len(shown) > LINKS_SHOWN else ""
    worst = max(link.deviation for link in shown)
    after = " (after the embeddings: token inputs cannot be mixed)" if facts.tokens else ""
    measured = (f"the later layer's input is an affine function of the earlier layer's output: relative "
                f"deviation from affinity {fmt(worst)}, within float round-off (tolerance "
                f"{fmt(facts.tolerance)}), on {facts.pairs} mixed pairs of samples")
    if facts.whole_model and wasted:
        what = (f"The whole model is one affine map{after}: weight layers {pairs}{more} have no nonlinearity "
                f"between them ({measured}), so its {len(_layers(facts.links))} weight layers have the "
                "capacity of a single linear layer.")
    elif wasted:
        what = (f"Weight layers {pairs}{more} have no nonlinearity between them ({measured}): each pair "
                "computes what one layer computes, wasting its depth and parameters.")
    else:
        what = (f"Weight layers {pairs}{more} compose into one linear map ({measured}); each pair is a "
                "factorisation (a rank bottleneck or fewer parameters than one layer) or one term of a sum "
                "(a residual stream) in an otherwise nonlinear model, a common design.")
    remedy = ("Put a nonlinearity (ReLU, GELU, tanh) between the layers: an activation module where the "
              "nn.Identity (or nothing) stands now, or F.relu in the forward." if wasted else
              "Nothing to fix if the factorisation is deliberate; otherwise put a nonlinearity between them.")
    slots = all(link.placeholder for link in wasted) and facts.activation_modules == 0
    ev = {"cause": "linear_network", "whole_model": facts.whole_model, "tokens": facts.tokens,
          "max_deviation": worst, "tolerance": facts.tolerance, "mix": facts.mix, "pairs": facts.pairs,
          "judged_layers": facts.judged, "wasted_pairs": len(wasted), "factorised_pairs": len(facts.links) - len(wasted),
          "links": [{"from": link.source, "to": link.to, "deviation": link.deviation, "spread": link.spread,
                     "fan_in": link.fan_in, "inner": link.inner, "fan_out": link.fan_out, "params": link.params,
                     "single_params": link.single_params, "factorised": link.compression,
                     "placeholder": link.placeholder} for link in facts.links]}
    return [Finding("underfitting", "warning" if wasted else "info", what, ev, remedy, _layers(shown), step,
                    fix={"activation": "relu"} if wasted and slots else None)]


def _layers(links) -> list[str]:
    """The layer names of `links`, each once, in order."""
    return list(dict.fromkeys(n for link in links for n in (link.source, link.to)))
