"""Writing the weight of a layer whose weight is computed from other tensors.

A layer may compute its weight at every forward pass instead of holding it:
``torch.nn.utils.parametrize`` (``parametrizations.weight_norm``: W = g·v/‖v‖ per output unit,
``spectral_norm``: W = W₀/σ_max(W₀), ``orthogonal``, or a user's own), or the older hook-based
``torch.nn.utils.weight_norm`` / ``spectral_norm``, which recompute ``module.weight`` from
``weight_g``/``weight_v`` or ``weight_orig`` before each forward. Writing into such a weight in place
changes a temporary (or a tensor the next forward overwrites): nothing happens. ``set_weight`` writes
where the weight comes from, as torch itself initialises a computed weight — through the
parametrizations' ``right_inverse`` (what ``module.weight = w`` does on a parametrized module) — and says
whether the layer now computes with exactly `w`: yes for weight norm (g = ‖w‖ per unit, v = w), no for a
parametrization that fixes the weight's scale (spectral norm, orthogonal), whose original is set to `w`.
A spectral norm's power iteration then runs 15 steps on the new original, as torch's ``spectral_norm`` does
when it wraps a layer, so that σ_max is the new matrix's and not the old one's.
Reading goes through ``deepdiag.measure.sites.read_weight``.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm, _WeightNorm
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from .measure.sites import read_weight

SETTLE = 15  # power-iteration steps after a spectral norm's original is replaced (torch's spectral_norm: 15)


def _old_hook(m: nn.Module) -> WeightNorm | SpectralNorm | None:
    """The hook-based ``weight_norm``/``spectral_norm`` computing ``m.weight`` (a forward pre-hook), if any."""
    return next((h for h in m._forward_pre_hooks.values()
                 if isinstance(h, (WeightNorm, SpectralNorm)) and h.name == "weight"), None)


def is_computed(m: nn.Module) -> bool:
    """Whether `m`'s weight is computed from other tensors (parametrized, or the hook-based norms)."""
    return parametrize.is_parametrized(m, "weight") or _old_hook(m) is not None


def computed_by(m: nn.Module) -> str:
    """How `m` computes its weight, for notes: its parametrizations' class names in order ("WeightNorm",
    "SpectralNorm then Orthogonal"), or the hook-based one's; "" for a plain weight."""
    if parametrize.is_parametrized(m, "weight"):
        return " then ".join(type(p).__name__.lstrip("_") for p in m.parametrizations["weight"])
    hook = _old_hook(m)
    return type(hook).__name__ if hook is not None else ""


def scale_is_fixed(m: nn.Module) -> bool:
    """Whether the layer's weight scale is set by how it is computed, not by the tensors it is computed
    from: every parametrization but weight norm (which reproduces any weight: g = ‖w‖, v = w), and the
    hook-based spectral norm. An initialisation can redraw such a layer's original, not its scale."""
    if parametrize.is_parametrized(m, "weight"):
        return not all(isinstance(p, _WeightNorm) for p in m.parametrizations["weight"])
    return isinstance(_old_hook(m), SpectralNorm)


@torch.no_grad()
def set_weight(m: nn.Module, w: Tensor) -> bool:
    """Make `w` the weight layer `m` computes with, where its weight comes from (see the module docstring);
    True when the layer now computes with exactly `w` (up to rounding), False when its parametrization
    keeps its own scale or has no ``right_inverse`` (then nothing is written)."""
    if parametrize.is_parametrized(m, "weight"):
        try:
            m.weight = w.detach().clone()  # the originals from right_inverse (set_ into the same Parameters:
            # a clone, so that they never share memory with `w`, nor is `w` taken for a new Parameter)
        except NotImplementedError:  # a parametrization without right_inverse cannot be assigned to
            return False
        _settle(m)
    elif (hook := _old_hook(m)) is not None:
        if isinstance(hook, WeightNorm):
            m.weight_g.copy_(torch.norm_except_dim(w, 2, hook.dim))
            m.weight_v.copy_(w)
            m.weight = hook.compute_weight(m)
        else:  # spectral norm: the layer uses weight_orig / σ_max
            m.weight_orig.copy_(w)
            for _ in range(SETTLE):
                weight = hook.compute_weight(m, do_power_iteration=True)
            m.weight = weight
    else:
        m.weight.copy_(w)
        return True
    now = read_weight(m)
    return now is not None and torch.allclose(now.float(), w.float(), rtol=1e-4, atol=1e-7 * float(w.abs().max()))


def _settle(m: nn.Module) -> None:
    """SETTLE power-iteration steps of every spectral norm among `m`'s weight parametrizations (each
    computation of the weight in training mode takes n_power_iterations of them)."""
    norms = [p for p in m.parametrizations["weight"] if isinstance(p, _SpectralNorm)]
    modes = [p.training for p in norms]
    try:
        for p in norms:
            p.train()
        for _ in range(SETTLE if norms else 0):
            m.weight  # noqa: B018  (computing it advances the iteration)
    finally:
        for p, mode in zip(norms, modes):
            p.train(mode)


def plain_weight(m: nn.Module) -> None:
    """Turn `m`'s computed weight into a plain parameter holding the weight it computes now, in place
    (``parametrize.remove_parametrizations(leave_parametrized=True)``, ``remove_weight_norm``,
    ``remove_spectral_norm``): what a library's ``reset_parameters`` or ``_init_weights`` can draw into."""
    if parametrize.is_parametrized(m, "weight"):
        # parametrize gives each layer a class of its own holding the weight's property, and removal
        # deletes the property from that class; a deep copy shares the class with the layer it was copied
        # from, whose weight would then stop being computed: the copy gets its own class first
        cls = type(m)
        m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    hook = _old_hook(m)
    if isinstance(hook, WeightNorm):
        torch.nn.utils.remove_weight_norm(m)
    elif isinstance(hook, SpectralNorm):
        torch.nn.utils.remove_spectral_norm(m)


def deepcopy_model(model: nn.Module, memo: dict | None = None) -> nn.Module:
    """``copy.deepcopy(model, memo)``, also of a model with layers under the hook-based ``weight_norm``:
    their computed ``weight`` (a non-leaf tensor, recomputed before every forward) cannot be deep-copied,
    so it is set aside during the copy and computed again in the copy, as ``weight_norm`` computes it."""
    held = [(m, m.__dict__.pop("weight")) for m in model.modules()
            if isinstance(_old_hook(m), WeightNorm) and "weight" in m.__dict__]
    try:
        new = copy.deepcopy(model, memo)
    finally:
        for m, w in held:
            m.__dict__["weight"] = w
    for m in new.modules():
        if isinstance(hook := _old_hook(m), WeightNorm):
            m.weight = hook.compute_weight(m)
    return new
