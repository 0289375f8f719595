"""``checkup``: one forward and backward pass on a batch, no optimizer step, and the findings.

The model is left exactly as it was: parameters, ``.grad`` fields (including None), the train/eval
flag of every submodule, ``requires_grad`` flags, buffers (BatchNorm running statistics), the global
RNG (dropout masks are drawn from a forked RNG) and its hooks (every hook checkup adds is removed).

The pass runs in the model's current mode (train or eval): that is the mode the user is asking about.
Three more forward passes in eval mode on 2 rows (repeated on at most 64 when a link is suspected), no
backward (``deepdiag.measure.affine``), test
whether stacked weight layers collapse into one linear map (nothing nonlinear between them); a user's
own hooks run on those passes too (on torch's Linear, Conv and Embedding layers the last two passes skip the
product, whose output the test replaces anyway: a hook there sees the test point).
In train mode BatchNorm uses batch statistics and updates its running statistics; those buffers are
snapshotted and restored.

Loss. With `targets`, the loss is ``loss_fn(output, targets)``; `loss_fn` defaults to what ``dd.fit``
uses (``deepdiag.train.default_loss``): cross-entropy for integer targets and several outputs,
BCE-with-logits for one output, MSE for float targets. With
``loss_fn`` but no targets, ``loss_fn(output)``. With neither, the surrogate

    L = Σ_i ⟨output_i, r_i⟩ / B,   r ~ N(0, 1) of the output's shape, seeded (torch.Generator seed 0)

so ∂L/∂output = r/B: unit-scale, independent of the output's own scale. The back-propagated signal
then measures the network's Jacobian alone, which is what the gradient-flow rules judge.

>>> report = dd.checkup(dd.mlp(64, 10, depth=50, init="normal"), torch.randn(128, 64))
>>> [f.code for f in report.findings][:2]
['vanishing_gradients', 'vanishing_activations']
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .findings import Finding, severity_rank
from .jsonsafe import json_safe
from .measure.affine import affine_links
from .measure.coverage import coverage
from .measure.io import (IOProbe, call_model, function_output_facts, input_facts, loss_kind, nonfinite_facts,
                         output_facts)
from .measure.layer_stats import build_layer_stats
from .measure.recorder import Recorder
from .measure.records import Coverage, LayerStats, OutputFacts
from .measure.recurrent import recurrent_facts
from .measure.sites import grad_params, safe_norm, tensors
from .rules import judge
from .rules.io import output_loss_mismatch
from .train import default_loss

TABLE_COLUMNS = ["name", "type", "family", "fan_in", "fan_out", "weight_std", "init_scheme", "init_std", "act_mean",
                 "act_std", "frac_zero", "frac_dead", "frac_saturated", "signal_norm", "grad_norm", "grad_rel"]


@dataclass
class Checkup:
    """What ``checkup`` found: ``findings`` (most severe first), ``layers`` (a DataFrame, one row per
    measured layer in forward order) and ``rows`` (the same as ``LayerStats`` records: what the rules read)."""

    findings: list[Finding]
    layers: object  # pandas.DataFrame
    rows: list[LayerStats] = field(default_factory=list)
    loss: float | None = None
    surrogate: bool = False
    coverage: Coverage | None = None

    def to_dict(self) -> dict:
        """Findings, the layer rows, the loss and the coverage as a JSON-safe dict."""
        return json_safe({"findings": [f.to_dict() for f in self.findings], "layers": [r.to_dict() for r in self.rows],
                          "loss": self.loss, "surrogate": self.surrogate,
                          "coverage": self.coverage.to_dict() if self.coverage is not None else None})

    def codes(self, severity: str = "info") -> set[str]:
        """Codes of the findings at `severity` or worse."""
        r = severity_rank(severity)
        return {f.code for f in self.findings if f.rank >= r}

    def __str__(self) -> str:
        lines = [f"deepdiag checkup: {len(self.layers)} layers, "
                 f"{'surrogate loss' if self.surrogate else 'loss'} {self.loss:.4g}"]
        if self.coverage is not None:
            lines.append(f"coverage: {self.coverage}")
        if not self.findings:
            lines.append("no findings")
        lines += [str(f) for f in self.findings]
        cols = [c for c in TABLE_COLUMNS if c in self.layers.columns]
        with _pd().option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
            lines.append(self.layers[cols].to_string(index=False))
        return "\n".join(lines)

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        table = Table(title="deepdiag checkup", show_lines=False)
        cols = [c for c in TABLE_COLUMNS if c in self.layers.columns]
        for c in cols:
            table.add_column(c, justify="left" if c in ("name", "type", "family", "init_scheme") else "right")
        for _, row in self.layers[cols].iterrows():
            table.add_row(*[_cell(v) for v in row])
        style = {"error": "bold red", "warning": "yellow", "info": "dim"}
        items = [f"[{style[f.severity]}]{f.severity.upper()}[/] {f.code}: {f.summary}\n  → {f.remedy}"
                 for f in self.findings] or ["[green]no findings[/]"]
        return Group(table, *items)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _pd():
    import pandas as pd

    return pd


def _default_loss(out: Tensor, targets: Tensor) -> tuple[nn.Module, Tensor]:
    """(``deepdiag.train.default_loss`` for these targets (class ids: classification, floats:
    regression) and this output width, the targets shaped as that loss expects)."""
    width = int(out.shape[1]) if out.dim() >= 2 else 1
    loss = default_loss("regression" if targets.is_floating_point() else "classification", width)
    if targets.numel() == out.numel():  # one value per output: match the output's shape (MSE), or the
        targets = targets.reshape(out.shape if targets.is_floating_point() else out.shape[:-1] or out.shape)
    return loss, targets


def _call_default_loss(out: Tensor, targets: Tensor) -> Tensor:
    loss, targets = _default_loss(out, targets)
    return loss(out, targets)


def surrogate_loss(out: Tensor) -> Tensor:
    """Σ ⟨out, r⟩ / B with r ~ N(0, 1) drawn from a generator seeded 0: ∂L/∂out = r/B."""
    g = torch.Generator().manual_seed(0)
    r = torch.randn(out.shape, generator=g, dtype=torch.float32).to(out.device, out.dtype)
    return (out * r).sum() / max(1, out.shape[0] if out.dim() else 1)


def _output_tensor(out) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, dict):
        for v in out.values():
            if isinstance(v, Tensor):
                return v
    raise TypeError(f"the model's output must be a tensor (or a tuple/dict whose first entry is), got {type(out).__name__}")


def checkup(model: nn.Module, inputs, targets: Tensor | None = None, loss_fn=None) -> Checkup:
    """Run one forward and backward pass of `model` on `inputs` and diagnose it (see the module doc).

    inputs: a tensor, a tuple of positional tensors, or a dict of keyword tensors. A batch of ≥ 32
    samples is needed to judge dead units. Returns a ``Checkup``.

    >>> report = dd.checkup(model, x, y)          # x: (batch, features), y: class ids
    >>> print(report); report.findings[0].remedy
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if targets is not None and not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor or None, got {type(targets).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (e.g. torch.nn.CrossEntropyLoss()), got {loss_fn!r}")
    params = list(model.parameters())
    inputs, targets = _check_batch(model, params, inputs, targets)
    saved_grads = [p.grad for p in params]
    saved_flags = [p.requires_grad for p in params]
    saved_modes = [(m, m.training) for m in model.modules()]
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({p.device.index for p in params if p.device.type == "cuda" and p.device.index is not None})
    rec = Recorder(model, detail=True).attach()
    probe = IOProbe(model)
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            for p in params:
                p.grad = None
                p.requires_grad_(True)
            out = _output_tensor(call_model(model, inputs))
            rec.finish_discovery()
            probe.remove()
            seen = probe.results[0] if probe.results else {}
            output = _output_facts(seen, out, targets, loss_fn)
            surrogate = targets is None and loss_fn is None
            try:
                if surrogate:
                    loss = surrogate_loss(out)
                elif targets is None:
                    loss = loss_fn(out)
                elif loss_fn is None:
                    loss = _call_default_loss(out, targets)
                else:
                    loss = loss_fn(out, targets)
                if output is None and loss_fn is not None and isinstance(loss, Tensor):
                    output = function_output_facts(out, loss, seen.get("last_module"), targets, seen.get("last_name"),
                                                   seen.get("last_op"))
            except (IndexError, RuntimeError, ValueError):
                if not any(f.rank >= 2 for f in output_loss_mismatch(output)):
                    raise
                loss, surrogate = surrogate_loss(out), True  # the loss cannot run: say why, judge the layers anyway
            _check_loss(loss)
            if loss.requires_grad:
                loss.backward()
            meas = {i: dict(d) for i, d in rec.latest.items()}
            for s in rec.sites:
                gs = [p.grad for p in grad_params(s.module, s.kind) if p.grad is not None]
                if gs and s.index in meas:
                    meas[s.index]["grad_norm"] = torch.linalg.vector_norm(torch.stack([safe_norm(g) for g in gs]))
                if s.kind == "recurrent" and s.index in meas:
                    meas[s.index].update(recurrent_facts(s.module, meas[s.index]))
            meas = _to_host(meas)
            loss_value = float(loss.detach())
            rows = build_layer_stats(rec.sites, meas)
            nonfinite = nonfinite_facts(inputs, targets, model, out, None if surrogate else loss.detach())
            cover, param_rows = coverage(model, rec.sites, set(meas))
            rows += param_rows
            rec.detach()  # the affinity passes below are not the user's pass
            affine = affine_links(model, inputs) if not nonfinite.sources() else None
    finally:
        rec.detach()
        probe.remove()
        with torch.no_grad():
            for b, v in saved_buffers:
                b.copy_(v)
        for p, g, f in zip(params, saved_grads, saved_flags):
            p.grad = g
            p.requires_grad_(f)
        for m, t in saved_modes:
            m.training = t
    first = next((r for r in rows if r.kind == "weight"), None)  # the layer the inputs feed
    inputs = input_facts(seen.get("input"), first.name if first else None, first.act_std if first else None)
    findings = judge(rows, output=output, inputs=inputs, nonfinite=nonfinite, affine=affine)
    frame = _pd().DataFrame([r.to_dict() for r in rows])
    return Checkup(findings, frame, rows, loss_value, surrogate, cover)


def _cast(value, dtype: torch.dtype):
    """`value` (a tensor, or a tuple/list/dict of them) with its floating tensors cast to `dtype`."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def _check_batch(model: nn.Module, params: list[Tensor], inputs, targets):
    """The batch checked against the model at the public boundary (each error names the argument):
    a model with real data (not on the meta device), a batch of at least one sample, and floating
    inputs and targets in the model's dtype: a float64 model given float32 inputs (or the reverse)
    gets them cast, with a note, since that cast is what the model's own layers would need; return
    the (possibly cast) inputs and targets."""
    if any(p.device.type == "meta" for p in params) or any(b.device.type == "meta" for b in model.buffers()):
        raise ValueError("model has parameters on the meta device (shapes without data): materialise it "
                         "first, e.g. model.to_empty(device='cpu') and initialise it, or load its weights")
    given = tensors(inputs)
    if not given:
        raise TypeError(f"inputs must be a torch.Tensor, or a tuple/list/dict of tensors, got "
                        f"{type(inputs).__name__}")
    first = given[0]
    if first.dim() == 0 or first.shape[0] == 0:
        raise ValueError(f"inputs is an empty batch (shape {tuple(first.shape)}): give at least one sample "
                         "along the first dimension (32 or more to judge dead units)")
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if len(dtypes) == 1:
        dtype = dtypes.pop()
        found = sorted({str(t.dtype) for t in given if t.is_floating_point() and t.dtype != dtype})
        if found:
            warnings.warn(f"checkup: inputs are {', '.join(found)} but the model's parameters are {dtype}; "
                          f"the inputs were cast to {dtype} (do the same in training: x.to({dtype}))",
                          UserWarning, stacklevel=3)
            inputs = _cast(inputs, dtype)
        if targets is not None and targets.is_floating_point() and targets.dtype != dtype:
            targets = targets.to(dtype)
    return inputs, targets


def _check_loss(loss) -> None:
    """The loss must be a scalar tensor (what backward() needs): name loss_fn otherwise."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn returned {type(loss).__name__} {loss!r:.40}, not a tensor: return the loss "
                        "as a torch.Tensor computed from the output (e.g. nn.CrossEntropyLoss()(out, y)), "
                        "not .item() or a Python number")
    if loss.numel() != 1:
        raise ValueError(f"loss_fn returned a tensor of shape {tuple(loss.shape)}, not a scalar: use a loss "
                         "that averages over the batch (reduction='mean')")


def _output_facts(seen: dict, out: Tensor, targets, loss_fn) -> OutputFacts | None:
    """The output facts output_loss_mismatch reads, for the given loss or the default one (None
    without a loss to compare with)."""
    if loss_fn is not None:
        kind = loss_kind(loss_fn)
    else:
        kind = loss_kind(_default_loss(out, targets)[0]) if isinstance(targets, Tensor) else None
    if kind is None:
        return None
    return output_facts(out, seen.get("last_module"), kind, targets, seen.get("last_name"), loss_fn is None,
                        seen.get("last_op"))


def _to_host(meas: dict) -> dict:
    """All device tensors of `meas` read in one host sync per dtype group (stack + .cpu())."""
    scalars, where = [], []
    for i, d in meas.items():
        for k, v in d.items():
            if isinstance(v, Tensor) and v.numel() == 1 and k != "unit_count":  # one unit: still a list
                scalars.append(v.detach().double().reshape(()))
                where.append((i, k))
    if scalars:
        values = torch.stack(scalars).cpu().tolist()  # host sync
        for (i, k), v in zip(where, values):
            meas[i][k] = v
    for d in meas.values():
        if isinstance(d.get("unit_count"), Tensor):
            d["unit_count"] = d["unit_count"].cpu().tolist()
    return meas
