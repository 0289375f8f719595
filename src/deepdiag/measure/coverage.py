"""Coverage: which modules that own a ≥ 2-D weight deepdiag measured, and a fallback for the rest.

Hooks see modules that are *called* (``deepdiag.measure.sites``). A module whose weight is used
functionally (MultiheadAttention's ``out_proj``, a custom layer doing ``x @ self.weight``), or whose
class deepdiag does not know, is measured by its parameters instead: ‖W‖ and ‖∂L/∂W‖ after the
backward pass (rows of kind "parameter"), which the rules do not judge for depth but show. What is
neither (no gradient: unused in this pass, or frozen) is listed as not measured.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from .records import Coverage, LAYER_FIELDS, LayerStats
from .sites import Site, safe_norm
from .weights import weight_summary


def weight_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module owning a parameter of ≥ 2 dimensions directly."""
    return [(n, m) for n, m in model.named_modules()
            if any(p.dim() >= 2 for p in m.parameters(recurse=False))]


def coverage(model: nn.Module, sites: list[Site], seen: set[int]) -> tuple[Coverage, list[LayerStats]]:
    """(``Coverage``, "parameter" rows for the modules measured by their parameters only). `seen`:
    indices of the sites that were measured in the pass."""
    hooked = {id(s.module) for s in sites if s.index in seen}
    parents = [s.module for s in sites if s.index in seen and s.kind in ("attention", "recurrent")]
    inside = {id(m) for p in parents for m in p.modules()}
    measured, by_param, missing, rows = 0, [], [], []
    for name, m in weight_modules(model):
        if id(m) in hooked or id(m) in inside:
            measured += 1
            continue
        ps = [p for p in m.parameters(recurse=False) if p.dim() >= 2]
        gs = [p.grad for p in ps if isinstance(p.grad, Tensor)]
        if not gs:
            missing.append(name)
            continue
        by_param.append(name)
        wn = math.sqrt(sum(weight_summary(p)[1] ** 2 for p in ps))
        gn = math.sqrt(sum(float(safe_norm(g)) ** 2 for g in gs))
        r = dict.fromkeys(LAYER_FIELDS)
        r.update(name=name, type=type(m).__name__, kind="parameter", weight_norm=wn, grad_norm=gn,
                 grad_rel=gn / wn if wn > 0 else None, is_model_input=False)
        rows.append(LayerStats(**r))
    return Coverage(len(weight_modules(model)), measured, tuple(by_param), tuple(missing)), rows
