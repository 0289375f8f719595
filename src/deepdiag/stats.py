"""Layer discovery and per-layer statistics, measured by hooks and kept on the model's device.

A *site* is one place in the forward pass that deepdiag measures, found generically on any
``nn.Module``:

* ``weight`` sites: modules with a weight of two or more dimensions (Linear, Bilinear, Conv1d/2d/3d and
  their transposes). Measured: the scale of the output (pre-activation) and of the input, and the
  back-propagated signal ∂L/∂output (a tensor hook on the output) as its per-sample norm
  ‖∂L/∂out‖_F/√B: per-sample rather than per-element, because a convolution's weight gradient sums
  over positions (a global average pool divides each position's gradient by H·W, which a per-element
  measure would read as a 64× "vanishing" on 8×8 inputs).
* ``norm`` sites: BatchNorm/LayerNorm/GroupNorm. Measured: the scale of the output.
* ``activation`` sites: activation modules (ReLU, Tanh, Sigmoid, ...). Measured per unit: how often a
  ReLU unit fires, how often a tanh/sigmoid unit sits at its asymptote (read from the output, which is
  equivalent and survives ``inplace=True``: |tanh z| > tanh 3 ⟺ |z| > 3).
* activations applied functionally (``F.relu``, ``torch.tanh`` inside a custom ``forward``) have no
  module: they are read from the *input of the next weight layer* when that input is not the output of
  an activation module, the raw output of a weight layer, or the model's own input. Their family is
  inferred once, on the first forward pass: x = relu/tanh/sigmoid(z) of the previous weight layer's
  output z, or, with pooling/reshaping in between, ≥ 0 with exact zeros → relu. Their statistics
  belong to the previous weight layer in forward order.

Units are output features for Linear layers (last dimension) and channels for convolutions (dimension 1).
A module called several times in one forward pass (a shared ``self.relu``) gives one site per call,
named ``name#k`` for the k-th call after the first.

The hooks only compute reductions on the device (no ``.item()``): a ``Recorder`` holds, per site, the
tensors of the latest forward/backward pass; ``checkup`` reads them once, ``Monitor`` accumulates them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .init import NORM_LAYERS, fans, scheme_std

WEIGHT_LAYERS = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
CONV_LAYERS = (nn.modules.conv._ConvNd,)
ACTIVATION_FAMILIES = {
    nn.ReLU: "relu", nn.ReLU6: "relu",
    nn.Tanh: "tanh", nn.Hardtanh: "tanh", nn.Softsign: "tanh",
    nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "sigmoid",
    nn.LeakyReLU: "leaky_relu", nn.PReLU: "leaky_relu", nn.RReLU: "leaky_relu",
    nn.ELU: "smooth", nn.SELU: "smooth", nn.CELU: "smooth", nn.GELU: "smooth", nn.SiLU: "smooth",
    nn.Mish: "smooth", nn.Softplus: "smooth", nn.Identity: None,
}
# Saturation: tanh'(z) = 1 − tanh² z < 0.01 for |z| > 3 (tanh 3 = 0.99505);
# σ'(z) = σ(1 − σ) < 0.0066 (< 3 % of its peak 1/4) for |z| > 5 (σ(5) = 0.99331).
TANH_Z, SIGMOID_Z = 3.0, 5.0
TANH_SAT = math.tanh(TANH_Z)
SIGMOID_LO, SIGMOID_HI = 1.0 / (1.0 + math.exp(SIGMOID_Z)), 1.0 / (1.0 + math.exp(-SIGMOID_Z))
UNIT_FAMILIES = ("relu", "tanh", "sigmoid")
INIT_TOLERANCE = 0.15  # a measured weight std within ±15 % of a scheme's std is read as that scheme
RECOGNISED = ("he", "lecun", "xavier", "default")


# ---- hooks that own their handles (fastai's Hook style) ----

class Hook:
    """One registered hook; ``remove()`` is safe to call twice."""

    def __init__(self, handle):
        self.handle, self.removed = handle, False

    def remove(self) -> None:
        if not self.removed:
            self.handle.remove()
            self.removed = True


class Hooks:
    """Many hooks, removed together; a context manager."""

    def __init__(self):
        self.items: list[Hook] = []

    def add(self, handle) -> Hook:
        h = Hook(handle)
        self.items.append(h)
        return h

    def remove(self) -> None:
        for h in self.items:
            h.remove()
        self.items = []

    def __len__(self) -> int:
        return sum(not h.removed for h in self.items)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


# ---- sites ----

@dataclass
class Site:
    """One measured place of the forward pass (see the module docstring)."""

    index: int
    name: str
    module: nn.Module
    kind: str  # "weight" | "norm" | "activation"
    type: str
    family: str | None = None  # activation sites: the family of the module; weight sites: of their input
    unit_dim: int = -1  # dimension of the units in the measured tensor (output, or input when inferred)
    units: int = 0
    producer: str | None = None  # weight sites with an inferred input family: the layer whose units they are
    fan_in: int | None = None
    fan_out: int | None = None
    is_model_input: bool = False  # weight site fed by the model's input directly
    extra: dict = field(default_factory=dict)


def module_kind(m: nn.Module) -> str | None:
    if isinstance(m, WEIGHT_LAYERS) and getattr(m, "weight", None) is not None and m.weight.dim() >= 2:
        return "weight"
    if isinstance(m, NORM_LAYERS):
        return "norm"
    if type(m) in ACTIVATION_FAMILIES and ACTIVATION_FAMILIES[type(m)] is not None:
        return "activation"
    return None


def _first_tensor(obj) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for o in obj.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _ptr(t: Tensor | None) -> int | None:
    return t.data_ptr() if isinstance(t, Tensor) else None


def _reduce_dims(t: Tensor, unit_dim: int) -> tuple[int, ...]:
    d = unit_dim % t.dim()
    return tuple(i for i in range(t.dim()) if i != d)


def infer_family(x: Tensor, z: Tensor | None = None) -> str | None:
    """The activation family of a functional activation, read once at discovery (host syncs).

    When the previous weight layer's output `z` has x's shape, the family is the function f with
    x = f(z) (relu, tanh or sigmoid), or None (no known activation, e.g. a residual sum). Otherwise
    (pooling or reshaping in between) only a ReLU is recognised, by its values: >= 0 with exact zeros.
    """
    x = x.detach()
    if z is not None and z.shape == x.shape:
        z = z.detach()
        for fam, f in (("relu", torch.relu), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid)):
            if torch.allclose(f(z), x, rtol=1e-4, atol=1e-6):
                return fam
        return None
    if float(x.min()) >= 0.0 and bool((x == 0).any()):
        return "relu"
    return None


def unit_counts(v: Tensor, family: str, unit_dim: int) -> Tensor:
    """Per unit, the number of positions (samples × spatial) where a ReLU unit fires (v > 0) or a
    tanh/sigmoid unit is saturated, read from post-activation values v. Shape (units,), int64."""
    dims = _reduce_dims(v, unit_dim)
    if family == "relu":
        hit = v > 0
    elif family == "tanh":
        hit = v.abs() > TANH_SAT
    else:
        hit = (v < SIGMOID_LO) | (v > SIGMOID_HI)
    return hit.sum(dims) if dims else hit.long()


def safe_norm(t: Tensor) -> Tensor:
    """‖t‖₂ accumulated in float64, so values of ~1e-30 do not square to 0 in float32."""
    return torch.linalg.vector_norm(t.detach(), dtype=torch.float64)


class Recorder:
    """Forward hooks on every site, tensor hooks on weight-layer outputs for ∂L/∂output.

    ``latest[i]`` holds the device tensors of site i from the latest recorded forward/backward pass.
    Sites are created on the first forward pass (``discovered`` afterwards); later passes measure them.
    ``detail=True`` adds what only a one-off checkup needs (per-unit activation spread).
    """

    def __init__(self, model: nn.Module, detail: bool = False):
        self.model, self.detail = model, detail
        self.sites: list[Site] = []
        self.latest: dict[int, dict[str, Tensor]] = {}
        self.discovered = False
        self._edges: set[int] = set()  # first and last weight sites: their input scale is always measured
        self.enabled = True
        self.hooks, self._discovery_hooks = Hooks(), Hooks()
        self._by_key: dict[tuple[int, int], Site] = {}
        self._names = {id(m): n for n, m in model.named_modules()}
        self._reset_pass()

    # -- attaching --
    def attach(self) -> Recorder:
        """Register the hooks (a no-op while they are registered)."""
        if len(self.hooks):
            return self
        self.hooks.add(self.model.register_forward_pre_hook(self._root_pre))
        for name, m in self.model.named_modules():
            kind = module_kind(m)
            if kind is not None:
                self.hooks.add(m.register_forward_hook(self._forward))
            elif not self.discovered and not any(True for _ in m.children()) \
                    and not any(True for _ in m.parameters(recurse=False)):
                # parameter-free leaves (dropout, pooling, flatten): only to trace what feeds what
                self._discovery_hooks.add(m.register_forward_hook(self._passthrough))
        return self

    def detach(self) -> None:
        self.hooks.remove()
        self._discovery_hooks.remove()

    def finish_discovery(self) -> None:
        """Called after the first forward pass: the sites are fixed from now on."""
        self._keep, self._last_out = [], None
        if self.sites:
            self.discovered = True
            self._discovery_hooks.remove()
            weights = [s.index for s in self.sites if s.kind == "weight"]
            self._edges = {weights[0], weights[-1]} if weights else set()

    # -- per forward pass --
    def _reset_pass(self):
        self._calls: dict[int, int] = {}
        self._covered: set[int] = set()  # data_ptrs of activation-module outputs (and their pass-throughs)
        self._producer: dict[int, Site] = {}  # data_ptr -> weight/norm site that produced it
        self._inputs: set[int] = set()
        self._last_out: tuple[Site, Tensor] | None = None  # discovery: the latest weight layer output
        self._keep: list[Tensor] = []  # discovery: tensors whose data_ptr is in the maps above

    def _root_pre(self, module, args):
        self._reset_pass()
        for a in list(args):
            if isinstance(a, Tensor):
                self._inputs.add(a.data_ptr())

    def _passthrough(self, module, args, out):
        if not torch.is_grad_enabled():
            return
        x, y = _first_tensor(args), _first_tensor(out)
        if x is None or y is None:
            return
        px, py = x.data_ptr(), y.data_ptr()
        self._keep.append(y)
        if px in self._covered:
            self._covered.add(py)
        if px in self._producer:
            self._producer[py] = self._producer[px]
        if px in self._inputs:
            self._inputs.add(py)

    def _forward(self, module, args, out):
        if not torch.is_grad_enabled():
            return  # evaluation passes are not training statistics
        k = self._calls.get(id(module), 0)
        self._calls[id(module)] = k + 1
        x, y = _first_tensor(args), _first_tensor(out)
        if y is None or not y.is_floating_point():
            return
        site = self._by_key.get((id(module), k))
        if site is None:
            if self.discovered:
                return
            site = self._new_site(module, k, x, y)
        if not self.discovered:  # tracing what feeds what: only needed while sites are being found
            self._keep.append(y)  # hold it: a freed tensor's address could be reused by a later one
            if site.kind == "activation":
                self._covered.add(y.data_ptr())
            else:
                self._producer[y.data_ptr()] = site
                if site.kind == "weight":
                    self._last_out = (site, y)
        if self.enabled:
            self.latest[site.index] = self._measure(site, x, y)

    def _new_site(self, m: nn.Module, k: int, x: Tensor | None, y: Tensor) -> Site:
        kind = module_kind(m)
        base = self._names.get(id(m), type(m).__name__) or type(m).__name__
        name = base if k == 0 else f"{base}#{k}"
        site = Site(len(self.sites), name, m, kind, type(m).__name__)
        if kind == "weight":
            conv = isinstance(m, CONV_LAYERS)
            site.fan_in, site.fan_out = fans(m.weight)
            site.unit_dim = 1 if conv else -1
            site.units = y.shape[site.unit_dim] if y.dim() else 1
            if x is not None and x.is_floating_point():
                px = x.data_ptr()
                site.is_model_input = px in self._inputs
                prev = [s for s in self.sites if s.kind == "weight"]
                if not site.is_model_input and px not in self._covered and px not in self._producer and prev:
                    z = self._last_out if self._last_out is not None and self._last_out[0] is prev[-1] else None
                    site.family = infer_family(x, z[1] if z else None)  # host syncs: discovery pass only
                    site.producer = prev[-1].name
        elif kind == "norm":
            site.unit_dim = 1 if isinstance(m, nn.modules.batchnorm._NormBase) or isinstance(m, nn.GroupNorm) else -1
            site.units = y.shape[site.unit_dim] if y.dim() > 1 else 1
        else:
            site.family = ACTIVATION_FAMILIES[type(m)]
            src = self._producer.get(_ptr(x)) if x is not None else None
            if src is not None:
                site.unit_dim = src.unit_dim
                site.extra["source"] = src.name
            else:
                site.unit_dim = 1 if y.dim() >= 2 else -1
            site.units = y.shape[site.unit_dim] if y.dim() else 1
        self.sites.append(site)
        self._by_key[(id(m), k)] = site
        return site

    def _measure(self, site: Site, x: Tensor | None, y: Tensor) -> dict[str, Tensor]:
        """Device reductions for one site; a handful of kernels, no host sync.

        The output's scale is kept as ‖y‖₂ (and, with ``detail``, the mean: Var = ‖y‖²/n − mean² is
        formed when read). With ``detail`` (checkup) norms accumulate in float64, so ~1e-30 values do
        not square to 0, and ReLU units get firing counts; without it (Monitor, every step) norms are
        float32 and ReLU units get their per-unit maximum, which is all "never fired" needs.
        """
        yd = y.detach()
        s: dict = {"numel": yd.numel()}
        norm = safe_norm if self.detail else torch.linalg.vector_norm
        if self.detail:
            s["act_mean"] = yd.mean()
        if site.kind != "activation" or self.detail:
            s["act_norm"] = norm(yd)
        if site.kind == "weight":
            if x is not None and (self.detail or not self.discovered or site.index in self._edges):
                s["in_norm"], s["in_numel"] = norm(x.detach()), x.numel()
            if y.requires_grad:
                y.register_hook(self._grad_hook(site.index, yd.shape[0] if yd.dim() > 1 else 1))
            if site.family in UNIT_FAMILIES and x is not None:
                self._units(s, x.detach(), site.family, 1 if isinstance(site.module, CONV_LAYERS) else -1)
            if self.detail and yd.dim() >= 2 and site.units > 1:
                d = site.unit_dim % yd.dim()
                spread = (yd.amax(d) - yd.amin(d)).abs().max()
                s["unit_spread"], s["act_absmax"] = spread, yd.abs().max()
        elif site.kind == "activation" and site.family in UNIT_FAMILIES:
            self._units(s, yd, site.family, site.unit_dim)
        return s

    def _units(self, s: dict, v: Tensor, family: str, unit_dim: int) -> None:
        if family == "relu" and not self.detail:
            dims = _reduce_dims(v, unit_dim)
            s["unit_max"] = v.amax(dims) if dims else v
            s["positions"] = v.numel() // max(1, s["unit_max"].numel())
        else:
            s["unit_count"] = unit_counts(v, family, unit_dim)
            s["positions"] = v.numel() // max(1, s["unit_count"].numel())

    def _grad_hook(self, index: int, batch: int):
        """∂L/∂output: its norm in float64; divided by √batch when read, the per-sample norm."""
        norm = safe_norm if self.detail else torch.linalg.vector_norm

        def hook(g: Tensor):
            if self.enabled and index in self.latest:
                self.latest[index]["signal_norm"] = norm(g.detach())
                self.latest[index]["signal_numel"] = batch
        return hook


# ---- weights ----

def weight_of(site: Site) -> Tensor | None:
    w = getattr(site.module, "weight", None)
    return w if isinstance(w, Tensor) else None


def recognise_init(w: Tensor) -> tuple[str, float]:
    """(scheme, its std) whose std is within ±15 % of the measured std of `w`, else ("unknown", nan).

    Compared: he (√(2/fan_in)), lecun (√(1/fan_in)), xavier (√(2/(fan_in+fan_out))) and PyTorch's
    default (kaiming_uniform with a=√5: std = 1/√(3·fan_in)); "zeros" for an all-constant weight. Names of
    schemes that coincide (xavier = lecun on square layers) are joined by "/".
    """
    fan_in, fan_out = fans(w)
    std = float(w.detach().double().std()) if w.numel() > 1 else 0.0
    if std == 0.0:
        return ("zeros" if float(w.detach().abs().max()) == 0.0 else "constant"), 0.0
    cands = {s: (scheme_std(s, fan_in, fan_out) if s != "default" else 1.0 / math.sqrt(3.0 * fan_in))
             for s in RECOGNISED}
    close = {s: v for s, v in cands.items() if abs(std / v - 1.0) <= INIT_TOLERANCE}
    if not close:
        return "unknown", math.nan
    best = min(close, key=lambda s: abs(std / close[s] - 1.0))
    same = [s for s in close if abs(close[s] / close[best] - 1.0) < 1e-6]
    return "/".join(sorted(same, key=RECOGNISED.index)), close[best]


def row_symmetry(w: Tensor, b: Tensor | None) -> float:
    """max_i ‖r_i − r̄‖ / max_i ‖r_i‖ over the rows r_i = (W_i, b_i) of a layer's incoming weights
    (one row per unit; flattened kernels for convolutions). 0 when all units have identical incoming
    weights (zero or constant init); ~1 for random init. An all-zero layer gives 0."""
    rows = w.detach().reshape(w.shape[0], -1).double()
    if b is not None:
        rows = torch.cat([rows, b.detach().reshape(-1, 1).double()], dim=1)
    scale = rows.norm(dim=1).max()
    dev = (rows - rows.mean(0, keepdim=True)).norm(dim=1).max()
    return 0.0 if float(scale) == 0.0 else float(dev / scale)


def column_symmetry(w: Tensor) -> float:
    """The same measure over the *outgoing* weights of the previous layer's units: columns of W
    (input channels for convolutions). 0 when every unit feeding this layer is wired identically."""
    cols = w.detach().transpose(0, 1).reshape(w.shape[1], -1).double()
    scale = cols.norm(dim=1).max()
    dev = (cols - cols.mean(0, keepdim=True)).norm(dim=1).max()
    return 0.0 if float(scale) == 0.0 else float(dev / scale)


# ---- rows: host-side per-layer statistics, the input of the rules ----

ROW_COLUMNS = (
    "name", "type", "kind", "family", "fan_in", "fan_out", "units", "weight_std", "init_scheme", "init_std",
    "act_mean", "act_std", "act_rms", "in_rms", "frac_zero", "frac_dead", "frac_saturated", "frac_saturated_units",
    "signal_norm", "grad_norm", "grad_rel", "weight_norm", "bias_mean", "sym_rows", "sym_next", "next_layer",
    "unit_spread", "positions", "dead", "saturated", "update_rel", "frozen", "trainable",
)


def _f(v):
    if v is None:
        return None
    if isinstance(v, Tensor):
        v = v.double().item() if v.numel() == 1 else v
    return float(v)


def build_rows(sites: list[Site], meas: dict[int, dict]) -> list[dict]:
    """One dict per site in forward order, numbers as Python floats (None where not measured).

    `meas[i]` holds host values for site i: act_mean, act_norm, numel, in_norm, in_numel, signal_norm,
    signal_numel, unit_count (per-unit list), positions, grad_norm, unit_spread, act_absmax. Weight
    information (std, recognised init, symmetry of rows and of the next layer's columns, bias mean) is
    read from the modules now. Unit statistics inferred at a weight layer's input are moved onto the
    row of the layer that produced those units (the previous weight layer).
    """
    rows, by_name = [], {}
    weight_sites = [s for s in sites if s.kind == "weight"]
    for s in sites:
        m = meas.get(s.index, {})
        r = dict.fromkeys(ROW_COLUMNS)
        r.update(name=s.name, type=s.type, kind=s.kind, units=s.units, fan_in=s.fan_in, fan_out=s.fan_out,
                 family=s.family if s.kind == "activation" else None,
                 is_model_input=s.is_model_input, source=s.extra.get("source"))
        if m.get("act_norm") is not None:
            r["act_rms"] = _f(m["act_norm"]) / math.sqrt(max(1, m["numel"]))
        if m.get("act_mean") is not None and m.get("act_norm") is not None:
            mean, sq = _f(m["act_mean"]), _f(m["act_norm"]) ** 2 / max(1, m["numel"])
            var = sq - mean * mean
            r["act_mean"] = mean
            r["act_std"] = math.sqrt(max(var, 0.0)) if math.isfinite(var) else var
        if m.get("in_norm") is not None:
            r["in_rms"] = _f(m["in_norm"]) / math.sqrt(max(1, m["in_numel"]))
        if m.get("signal_norm") is not None:
            r["signal_norm"] = _f(m["signal_norm"]) / math.sqrt(max(1, m["signal_numel"]))
        if m.get("unit_spread") is not None:
            amax = _f(m["act_absmax"])
            r["unit_spread"] = 0.0 if amax == 0 else _f(m["unit_spread"]) / amax
        w = weight_of(s)
        if w is not None and s.kind == "weight":
            r["weight_std"] = float(w.detach().double().std()) if w.numel() > 1 else 0.0
            r["weight_norm"] = float(w.detach().double().norm())
            r["init_scheme"], r["init_std"] = recognise_init(w)
            b = getattr(s.module, "bias", None)
            b = b if isinstance(b, Tensor) else None
            r["bias_mean"] = float(b.detach().double().mean()) if b is not None else None
            r["sym_rows"] = row_symmetry(w, b) if w.shape[0] > 1 else None
            later = [t for t in weight_sites if t.index > s.index]
            if later:
                nxt = later[0]
                nw = weight_of(nxt)
                r["next_layer"] = nxt.name
                if nw is not None and nw.dim() >= 2 and nw.shape[1] == w.shape[0] and not isinstance(nxt.module, nn.Bilinear):
                    r["sym_next"] = column_symmetry(nw)
            if m.get("grad_norm") is not None:
                r["grad_norm"] = _f(m["grad_norm"])
                r["grad_rel"] = r["grad_norm"] / r["weight_norm"] if r["weight_norm"] > 0 else math.inf
        rows.append(r)
        by_name[s.name] = r
    for s in sites:  # unit statistics: on the activation row, or on the producer of inferred units
        m = meas.get(s.index, {})
        fam = s.family
        if m.get("unit_count") is None or fam not in UNIT_FAMILIES:
            continue
        target = by_name[s.name] if s.kind == "activation" else by_name.get(s.producer)
        if target is None:
            continue
        if s.kind != "activation":
            target["family"] = f"{fam} (functional)"
            target["inferred_family"] = fam
        counts = [float(c) for c in m["unit_count"]]
        P = max(1, int(m["positions"]))
        n = len(counts)
        total = sum(counts) / (P * n) if n else 0.0
        target["positions"] = P
        target["units"] = n
        if fam == "relu":
            dead = [i for i, c in enumerate(counts) if c == 0]
            target["frac_zero"] = None if m.get("indicator") else 1.0 - total
            target["frac_dead"] = len(dead) / n if n else 0.0
            target["dead"] = len(dead)
        else:
            sat = [i for i, c in enumerate(counts) if c / P > 0.5]
            target["frac_saturated"] = total
            target["frac_saturated_units"] = len(sat) / n if n else 0.0
            target["saturated"] = len(sat)
    return rows


def unit_family(row: dict) -> str | None:
    """relu / tanh / sigmoid for rows carrying unit statistics (module or inferred), else None."""
    return row.get("inferred_family") or (row["family"] if row["family"] in UNIT_FAMILIES else None)


# ---- the model's input and output, and the loss (output_loss_mismatch, unscaled_inputs) ----

_LOSS_KINDS = (
    (nn.CrossEntropyLoss, "cross_entropy"), (nn.NLLLoss, "nll"), (nn.BCEWithLogitsLoss, "bce_with_logits"),
    (nn.BCELoss, "bce"), (nn.MSELoss, "mse"), (nn.L1Loss, "mse"), (nn.SmoothL1Loss, "mse"), (nn.HuberLoss, "mse"),
)
_LOSS_FUNCTIONS = {
    "cross_entropy": "cross_entropy", "nll_loss": "nll", "binary_cross_entropy_with_logits": "bce_with_logits",
    "binary_cross_entropy": "bce", "mse_loss": "mse", "l1_loss": "mse", "smooth_l1_loss": "mse",
    "huber_loss": "mse",
}


def loss_kind(loss_fn) -> str | None:
    """cross_entropy / nll / bce_with_logits / bce / mse for torch's losses (modules or functions), else None."""
    if loss_fn is None:
        return None
    for cls, kind in _LOSS_KINDS:
        if isinstance(loss_fn, cls):
            return kind
    name = getattr(loss_fn, "__name__", None)
    if getattr(loss_fn, "__module__", "") in ("torch.nn.functional",) or name in _LOSS_FUNCTIONS:
        return _LOSS_FUNCTIONS.get(name)
    return None


class IOProbe:
    """Hooks that see the model's input, its output and the leaf module that produced the output (by
    tensor identity), for ``passes`` training forward passes; then they remove themselves.

    ``last`` holds, after a pass, {"input": tensor, "output": tensor, "last_module": type name or None,
    "last_name": name}; with ``loss_fn`` an ``nn.Module``, a pre-hook on it adds "target".
    """

    def __init__(self, model: nn.Module, loss_fn=None, passes: int = 1):
        self.model, self.passes, self.seen = model, passes, 0
        self.hooks = Hooks()
        self.last: dict = {}
        self.results: list[dict] = []
        self._leaf_out: tuple | None = None
        self._names = {id(m): n for n, m in model.named_modules()}
        self.hooks.add(model.register_forward_pre_hook(self._pre))
        self.hooks.add(model.register_forward_hook(self._post))
        for name, m in model.named_modules():
            if m is not model and not any(True for _ in m.children()):
                self.hooks.add(m.register_forward_hook(self._leaf))
        self._loss_hooked = isinstance(loss_fn, nn.Module)
        if self._loss_hooked:
            self.hooks.add(loss_fn.register_forward_pre_hook(self._loss_pre))

    def _pre(self, module, args, *rest):
        if torch.is_grad_enabled():
            x = _first_tensor(args)
            self.last = {"input": x.detach() if x is not None else None}
            self._leaf_out = None

    def _leaf(self, module, args, out):
        if torch.is_grad_enabled() and isinstance(out, Tensor):
            self._leaf_out = (module, out)

    def _post(self, module, args, out):
        if not torch.is_grad_enabled() or "input" not in self.last:
            return
        y = _first_tensor(out)
        self.last["output"] = y.detach() if y is not None else None
        if self._leaf_out is not None and y is not None and self._leaf_out[1] is y:
            m = self._leaf_out[0]
            self.last["last_module"], self.last["last_name"] = type(m).__name__, self._names.get(id(m))
        else:
            self.last["last_module"], self.last["last_name"] = None, None
        self.results.append(self.last)
        self.seen += 1
        if self.seen >= self.passes and not self._loss_hooked:
            self.remove()

    def _loss_pre(self, module, args, *rest):
        if len(args) >= 2 and isinstance(args[1], Tensor) and self.results:
            self.results[-1].setdefault("target", args[1].detach())
        if self.seen >= self.passes:
            self.remove()

    def remove(self) -> None:
        self.hooks.remove()


def output_facts(out: Tensor, last_module: str | None, loss: str | None, targets: Tensor | None = None,
                 last_name: str | None = None) -> dict:
    """The numbers ``output_loss_mismatch`` reads (host syncs: call once per checkup / first steps)."""
    o = out.detach()
    width = int(o.shape[1]) if o.dim() >= 2 else 1
    facts: dict = {"loss": loss, "last_module": last_module, "last_name": last_name, "out_width": width,
                   "n_samples": int(o.shape[0]) if o.dim() else 1}
    if o.numel() and o.is_floating_point():
        of = o.float()
        lo_hi = torch.stack([of.min(), of.max()]).tolist()  # host sync
        facts["out_min"], facts["out_max"] = lo_hi
        facts["strictly_inside01"] = lo_hi[0] > 0.0 and lo_hi[1] < 1.0 and facts["n_samples"] >= 8
        if o.dim() >= 2 and width > 1:
            facts["rows_sum_to_one"] = bool(((of.sum(1) - 1).abs() <= 1e-4).all())
    if targets is not None and isinstance(targets, Tensor) and targets.numel():
        t = targets.detach()
        facts["target_kind"] = "float" if t.is_floating_point() else "int"
        lo_hi = torch.stack([t.min(), t.max()]).double().tolist()  # host sync
        facts["target_min"], facts["target_max"] = lo_hi
    return facts


def input_facts(x: Tensor | None) -> dict | None:
    """Per-feature mean and std of a floating input batch (feature = last dim of a 2-D batch, channel
    dim 1 otherwise); None for non-float inputs (token ids) or fewer than 2 samples."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 2:
        return None
    xd = x.detach().double()
    dim = -1 if x.dim() == 2 else 1
    dims = _reduce_dims(xd, dim)
    mean, std = xd.mean(dims), xd.std(dims, correction=0)
    both = torch.stack([mean, std]).cpu().tolist()  # host sync
    return {"feature_mean": both[0], "feature_std": both[1]}
