"""``Recorder``: forward hooks on every site, tensor hooks on weight-layer outputs for ∂L/∂output.

It finds the sites on the first training forward pass (``deepdiag.measure.sites``) and the main path
through them (``deepdiag.measure.paths``: each site's input or output tensor that every path from the
data to the output passes through), and then keeps, per site, the device tensors of the latest
forward/backward pass; ``checkup`` reads them once, ``Monitor`` accumulates them. Once the sites are found
(without ``detail``), only their modules stay hooked and each weight or activation site's measurement is
decided once (``Recorder._plan``): the same numbers with less Python per hook, at every recorded step.
A pass with ``full`` off measures only the per-unit evidence (``Recorder._units_plan``): what a Monitor
needs at a recorded step whose row of statistics its bounded history drops (decimation). Known passes
hook only the modules that have something to measure: an activation without units (GELU, LeakyReLU,
Identity, ...) measures nothing there and is not hooked.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..init import fans
from .hooks import Hooks
from .records import UNIT_FAMILIES
from .paths import dominators_of_sources
from .sites import (ACTIVATION_FAMILIES, CONV_LAYERS, PATH_KINDS, Site, dims_except, first_tensor, infer_family,
                    module_kind, ptr, safe_norm, unit_counts, weight_matrix)


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
        self.full = True  # off: known-site passes measure only the per-unit evidence (``_units_plan``)
        self.hooks, self._discovery_hooks = Hooks(), Hooks()
        self._targets: list | None = None  # (module, its forward hook) to register, once discovered (attach)
        self._plans: dict[int, object] = {}  # site index -> its measurement once discovered (``_plan``)
        self._by_key: dict[tuple[int, int], Site] = {}
        self._pass = 0  # training passes started (``_direct`` hooks count their calls by it)
        self._names = {id(m): n for n, m in model.named_modules()}
        self._reset_pass()

    # -- attaching --
    def attach(self) -> Recorder:
        """Register the hooks (a no-op while they are registered). Once the sites are found only their
        modules are hooked (a module without a site returns at once from ``_forward``), from a list kept
        since: a Monitor attaches before every recorded step, and walking the model costs more than that."""
        if self.hooks:
            return self
        if self.discovered and not self.detail:
            if self._targets is None:
                self._plans = {s.index: (self._plan(s), self._units_plan(s)) for s in self.sites}
                served = {s.index for s in self.sites if s.kind == "activation" and s.family not in UNIT_FAMILIES}
                by_module: dict[int, list[Site]] = {}
                for s in self.sites:
                    by_module.setdefault(id(s.module), []).append(s)
                self._targets = [(ss[0].module, self._direct(ss[0]) if len(ss) == 1 and self._plans[ss[0].index][0]
                                  is not None else self._forward_known)
                                 for ss in by_module.values() if any(s.index not in served for s in ss)]
            self.hooks.add(self.model.register_forward_pre_hook(self._root_pre_known))
            for m, hook in self._targets:
                self.hooks.add(m.register_forward_hook(hook))
            return self
        self.hooks.add(self.model.register_forward_pre_hook(self._root_pre))
        if not self.discovered:
            self._discovery_hooks.add(self.model.register_forward_hook(self._root_post))
        for name, m in self.model.named_modules():
            kind = module_kind(m)
            if kind is not None:
                self.hooks.add(m.register_forward_hook(self._forward))
                if kind == "attention" and self.detail:  # checkup: ask for the attention probabilities
                    self.hooks.add(m.register_forward_pre_hook(_attention_weights, with_kwargs=True))
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
        self._reset_pass()  # (drops what the discovery pass traced)
        if self.sites:
            self.discovered = True
            self._discovery_hooks.remove()
            weights = [s.index for s in self.sites if s.kind == "weight"]
            self._edges = {weights[0], weights[-1]} if weights else set()
            if len(self.hooks) and not self.detail:  # from now on only the sites' modules, measured as known
                self.hooks.remove()
                self.attach()

    # -- per forward pass --
    def _reset_pass(self):
        self._pass += 1  # (also a pass started by hand: ``Monitor.new_pass``)
        self._calls: dict[int, int] = {}
        self._nodes: dict[int, tuple] = {}  # discovery: site index -> (input node, output node, input has grad)
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

    def _root_pre_known(self, module, args):
        """``_root_pre`` once the sites are known: only the per-module call counts restart (and the pass
        count, at a training pass)."""
        self._calls = {}
        if _grad_enabled():
            self._pass += 1

    def _root_post(self, module, args, out):
        """End of the discovery pass: mark each site's main-path tensor (``site.path`` = "in"/"out")."""
        if self.discovered or not torch.is_grad_enabled():
            return
        y = first_tensor(out)
        root = y.grad_fn if isinstance(y, Tensor) else None
        sources = [o for i, (_, o, fed) in self._nodes.items()
                   if not fed and self.sites[i].kind in ("weight", "embedding", "recurrent", "attention")]
        if not sources:
            first = next((self._nodes[s.index][1] for s in self.sites if s.index in self._nodes), None)
            sources = [first]
        cuts = dominators_of_sources(root, sources)
        taken: set[int] = set()
        for s in self.sites:  # one position per site (output preferred) and per graph node
            n_in, n_out, _ = self._nodes.get(s.index, (None, None, False))
            for side, n in (("out", n_out), ("in", n_in)):
                if n is not None and id(n) in cuts and id(n) not in taken:
                    s.path = side
                    taken.add(id(n))
                    break
        self._nodes = {}

    def _passthrough(self, module, args, out):
        if not torch.is_grad_enabled():
            return
        x, y = first_tensor(args), first_tensor(out)
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
        x, y = first_tensor(args), first_tensor(out)
        if y is None or not y.is_floating_point():
            return
        site = self._by_key.get((id(module), k))
        if site is None:
            if self.discovered:
                return
            site = self._new_site(module, k, x, y)
        if not self.discovered:  # tracing what feeds what: only needed while sites are being found
            self._keep.append(y)  # hold it: a freed tensor's address could be reused by a later one
            if site.kind in PATH_KINDS:
                xin = x if x is not None and x.is_floating_point() and site.kind != "embedding" else None
                node_in = xin.grad_fn if xin is not None else None
                self._nodes[site.index] = (node_in, y.grad_fn, node_in is not None)
                self._keep += [n for n in (node_in, y.grad_fn) if n is not None]  # keep the ids valid
            if site.kind == "activation":
                self._covered.add(y.data_ptr())
            else:
                self._producer[y.data_ptr()] = site
                if site.kind == "weight":
                    self._last_out = (site, y)
        if self.enabled:
            self.latest[site.index] = self._measure(site, x, y, args, out)

    def _forward_known(self, module, args, out):
        """``_forward`` once the sites are known and without ``detail`` (a Monitor's recorded steps): the
        same measurements, with a weight or activation site's branches decided once (``_plan``)."""
        if not _grad_enabled():
            return  # evaluation passes are not training statistics
        mid = id(module)
        k = self._calls.get(mid, 0)
        self._calls[mid] = k + 1
        y = out if isinstance(out, Tensor) else first_tensor(out)
        if y is None or not y.is_floating_point():
            return
        site = self._by_key.get((mid, k))
        if site is None or not self.enabled:
            return
        x = args[0] if args and isinstance(args[0], Tensor) else first_tensor(args)
        plan = self._plans[site.index][0 if self.full else 1]
        _set_grad_enabled(False)  # reductions only: nothing for autograd to record, no detach() per tensor
        try:
            self.latest[site.index] = self._measure(site, x, y, args, out) if plan is None else plan(site, x, y)
        finally:
            _set_grad_enabled(True)

    def _direct(self, site: Site):
        """``_forward_known`` for a module with one site: the same checks and measurement, with the site
        and its plans bound once; its call count is kept as the pass it was last called in (a second call
        in one pass is not a site, as ``_forward_known`` finds no (module, 1) site)."""
        index, (full, units) = site.index, self._plans[site.index]
        last = [-1]

        def hook(module, args, out):
            if not _grad_enabled():
                return  # evaluation passes are not training statistics
            if last[0] == self._pass:
                return
            last[0] = self._pass
            y = out if isinstance(out, Tensor) else first_tensor(out)
            if y is None or not y.is_floating_point() or not self.enabled:
                return
            x = args[0] if args and isinstance(args[0], Tensor) else first_tensor(args)
            _set_grad_enabled(False)  # reductions only (see ``_forward_known``)
            try:
                self.latest[index] = (full if self.full else units)(site, x, y)
            finally:
                _set_grad_enabled(True)
        return hook

    def _plan(self, site: Site):
        """The measurement of a discovered weight or activation site without ``detail``: what ``_measure``
        computes for it, as a function of (site, x, y) with the per-site choices made here; None for other
        kinds (``_measure`` serves them). They run with autograd off (``_forward_known``), so the tensors
        they reduce need no ``detach()``; what they keep (a 1-d ReLU output as its own maximum) is detached."""
        if site.kind == "weight":
            in_norm = site.index in self._edges
            path_in = site.path == "in"
            unit = (site.family, 1 if isinstance(site.module, CONV_LAYERS) else -1) \
                if site.family in UNIT_FAMILIES else None

            signal = self._signal_prehook(site.index)

            def weight(site, x, y):
                s = {"numel": y.numel(), "act_norm": _vector_norm(y)}
                if path_in and isinstance(x, Tensor) and x.requires_grad:
                    x.register_hook(self._path_hook(site, "in", x.shape[0] if x.dim() > 1 else 1))
                if in_norm and x is not None and x.is_floating_point():
                    s["in_norm"], s["in_numel"] = _vector_norm(x), x.numel()
                if y.requires_grad:
                    s["signal_numel"] = y.shape[0] if y.dim() > 1 else 1
                    node = y.grad_fn
                    if node is not None and y.output_nr == 0:
                        node.register_prehook(signal)
                    else:  # (a leaf, or a later output of its node: the tensor's own hook)
                        y.register_hook(self._grad_hook(site.index, s["signal_numel"]))
                if unit is not None and x is not None:
                    self._units(s, x.detach(), *unit)
                return s
            return weight
        if site.kind == "activation":
            unit = (site.family, site.unit_dim) if site.family in UNIT_FAMILIES else None
            if site.family == "relu":  # ``_units`` without detail: the per-unit maximum
                def relu(site, x, y):
                    dims = dims_except(y.dim(), site.unit_dim)
                    n = y.numel()
                    u = y.amax(dims) if dims else y.detach()
                    return {"numel": n, "unit_max": u, "positions": n // max(1, u.numel())}
                return relu

            def activation(site, x, y):
                s = {"numel": y.numel()}
                if unit is not None:
                    self._units(s, y.detach(), *unit)
                return s
            return activation
        return None

    def _units_plan(self, site: Site):
        """The measurement of a known site in a pass without ``full``: only what the per-unit windows take
        (``_units``: ReLU maxima or saturation counts and their positions), computed as ``_plan`` and
        ``_measure`` compute it; no norms and no gradient hooks. Every hooked site called gets an entry
        (empty without units), so the pass is still seen as a recorded one."""
        if site.kind == "weight" and site.family in UNIT_FAMILIES:
            unit = (site.family, 1 if isinstance(site.module, CONV_LAYERS) else -1)

            def weight_units(site, x, y):
                s = {}
                if x is not None:
                    self._units(s, x.detach(), *unit)
                return s
            return weight_units
        if site.kind == "activation":
            return self._plan(site)  # (an activation site's measurement is its units, and its numel)
        return _no_units

    def _new_site(self, m: nn.Module, k: int, x: Tensor | None, y: Tensor) -> Site:
        kind = module_kind(m)
        base = self._names.get(id(m), type(m).__name__) or type(m).__name__
        name = base if k == 0 else f"{base}#{k}"
        site = Site(len(self.sites), name, m, kind, type(m).__name__)
        if kind == "weight":
            conv = isinstance(m, CONV_LAYERS)
            site.fan_in, site.fan_out = fans(weight_matrix(m))
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
        elif kind in ("embedding", "recurrent", "attention"):
            site.unit_dim = -1
            site.units = y.shape[-1] if y.dim() else 1
        elif kind == "norm":
            site.unit_dim = 1 if isinstance(m, nn.modules.batchnorm._NormBase) or isinstance(m, nn.GroupNorm) else -1
            site.units = y.shape[site.unit_dim] if y.dim() > 1 else 1
        else:
            site.family = ACTIVATION_FAMILIES[type(m)]
            src = self._producer.get(ptr(x)) if x is not None else None
            if src is not None:
                site.unit_dim = src.unit_dim
                site.extra["source"] = src.name
            else:
                site.unit_dim = 1 if y.dim() >= 2 else -1
            site.units = y.shape[site.unit_dim] if y.dim() else 1
        self.sites.append(site)
        self._by_key[(id(m), k)] = site
        return site

    def _measure(self, site: Site, x: Tensor | None, y: Tensor, args=(), out=None) -> dict[str, Tensor]:
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
        batch = yd.shape[0] if yd.dim() > 1 else 1
        if site.kind in PATH_KINDS:  # the main-path signal ∂L/∂h at this site's input or output
            for side, t in (("out", y), ("in", x)):
                if side == "out" and site.kind != "norm":
                    continue  # the output's signal hook measures it (signal_norm is the path signal there)
                if isinstance(t, Tensor) and t.requires_grad and (not self.discovered or site.path == side):
                    t.register_hook(self._path_hook(site, side, t.shape[0] if t.dim() > 1 else 1))
        if site.kind in ("embedding", "recurrent", "attention"):
            if y.requires_grad:
                y.register_hook(self._grad_hook(site.index, batch))
            if site.kind == "recurrent" and self.detail:  # re-computed step by step after the backward pass
                s["_rnn"] = (x.detach() if x is not None else None, _hidden_arg(args))
                s["_rnn_grads"] = {}
                for k, t in enumerate(_flat_tensors(out)):  # output, h_n (, c_n): ∂L/∂ of each
                    if t.requires_grad:
                        t.register_hook(self._keep_grad(site.index, k))
            if site.kind == "attention" and self.detail and isinstance(out, (tuple, list)) and len(out) > 1 \
                    and isinstance(out[1], Tensor) and out[1].dim() >= 3:
                p = out[1].detach()
                s["attention_peak"] = p.amax(-1).mean()  # mean over queries (and heads) of the largest probability
        if site.kind == "weight" and x is not None and x.is_floating_point() \
                and (self.detail or not self.discovered or site.index in self._edges):
            s["in_norm"], s["in_numel"] = norm(x.detach()), x.numel()
        if self.detail and site.kind in ("weight", "recurrent", "attention"):
            bdim = 1 if site.kind != "weight" and not getattr(site.module, "batch_first", True) and yd.dim() == 3 else 0
            s["batch_spread"] = _batch_spread(yd, bdim, s["act_norm"])
            if x is not None and x.is_floating_point() and x.dim() == yd.dim():
                s["in_batch_spread"] = _batch_spread(x.detach(), bdim, s.get("in_norm"))
        if site.kind == "weight":
            if y.requires_grad:
                y.register_hook(self._grad_hook(site.index, batch))
            if site.family in UNIT_FAMILIES and x is not None:
                self._units(s, x.detach(), site.family, 1 if isinstance(site.module, CONV_LAYERS) else -1)
            if self.detail and yd.dim() >= 2 and site.units > 1:
                d = site.unit_dim % yd.dim()
                lo, hi = torch.aminmax(yd)  # one pass for the largest |y| (abs().max() takes two)
                s["unit_spread"] = (yd.amax(d) - yd.amin(d)).max()  # ≥ 0 (NaN stays NaN)
                s["act_absmax"] = torch.maximum(hi, -lo)
        elif site.kind == "activation" and site.family in UNIT_FAMILIES:
            self._units(s, yd, site.family, site.unit_dim)
            if self.detail and site.family in ("sigmoid", "tanh"):  # the derivative, read from the output
                s["deriv_norm"] = norm(yd * (1 - yd) if site.family == "sigmoid" else 1 - yd * yd)
        return s

    def _units(self, s: dict, v: Tensor, family: str, unit_dim: int) -> None:
        if family == "relu" and not self.detail:
            dims = dims_except(v.dim(), unit_dim)
            u = s["unit_max"] = v.amax(dims) if dims else v
            s["positions"] = v.numel() // max(1, u.numel())
        else:
            s["unit_count"] = unit_counts(v, family, unit_dim)
            s["positions"] = v.numel() // max(1, s["unit_count"].numel())

    def _path_hook(self, site: Site, side: str, batch: int):
        """∂L/∂h at the site's main-path tensor (the side ``site.path`` names, known by backward time)."""
        norm = safe_norm if self.detail else torch.linalg.vector_norm

        def hook(g: Tensor):
            if self.enabled and site.index in self.latest and site.path == side:
                self.latest[site.index]["path_norm"] = norm(_plain(g))
                self.latest[site.index]["path_numel"] = batch
        return hook

    def _keep_grad(self, index: int, k: int):
        def hook(g: Tensor):
            if self.enabled and index in self.latest:
                self.latest[index]["_rnn_grads"][k] = g.detach()
        return hook

    def _signal_prehook(self, index: int):
        """``_grad_hook`` of a Monitor's weight site as a pre-hook of the node that made the layer's output
        (its output 0): called with that node's output gradients, the first being ∂L/∂output, before the
        node runs, as the tensor's own hook would be, also when the output is later changed in place (an
        in-place ReLU makes a new node; this one still receives ∂L/∂ of the value the layer returned).
        One function per site, made once (a tensor hook takes a new closure and handle at every pass);
        the forward pass sets ``signal_numel``."""

        def prehook(grad_outputs):
            d = self.latest.get(index) if self.enabled else None
            g = grad_outputs[0]
            if d is not None and g is not None:
                d["signal_norm"] = _vector_norm(_plain(g))
        return prehook

    def _grad_hook(self, index: int, batch: int):
        """∂L/∂output: its norm in float64; divided by √batch when read, the per-sample norm."""
        norm = safe_norm if self.detail else torch.linalg.vector_norm

        def hook(g: Tensor):
            d = self.latest.get(index) if self.enabled else None
            if d is not None:
                d["signal_norm"] = norm(_plain(g))
                d["signal_numel"] = batch
        return hook


_grad_enabled, _vector_norm = torch.is_grad_enabled, torch.linalg.vector_norm
_set_grad_enabled = torch._C._set_grad_enabled  # what torch.no_grad() calls, without its Python wrapper


def _no_units(site, x, y) -> dict:
    """``Recorder._units_plan`` of a site without units."""
    return {}


def _plain(g: Tensor) -> Tensor:
    """A gradient without autograd history: itself (a backward pass without ``create_graph``), else
    detached (``detach()`` is a dispatched op; the backward hooks run at every recorded step)."""
    return g.detach() if g.requires_grad else g


def _batch_spread(t: Tensor, bdim: int, norm: Tensor | None = None) -> Tensor:
    """How much `t` differs between the samples of the batch, relative to its scale: the RMS over the
    other entries of the standard deviation along the batch dimension `bdim`, over the RMS of `t`
    (0: every sample gives the same tensor; NaN for a batch of one).

    With n samples and P other entries, the mean over entries of the (n − 1)-normalised variance is
    ‖t − t̄‖² / ((n − 1)·P), t̄ the mean over the batch: one mean and two norms (``Tensor.std`` along the
    batch dimension, a strided reduction, took ~16× longer). t̄ accumulates in float64 and is rounded
    to float32, and t − t̄ is formed in float32 (a float64 copy of a conv layer's output took 8× longer):
    identical samples still give exactly 0 (the float64 mean of n equal float32 numbers is exact), and
    otherwise the rounding of t̄ (2⁻²⁴ relative) moves the ratio by ~10⁻⁷, far below the 10⁻⁵ at which
    an output counts as the same for every sample. The norms are ``safe_norm``: values of ~10⁻³⁰ are
    still measured; `norm`, when given, is ``safe_norm(t)`` already taken."""
    if t.dim() < 2 or t.shape[bdim] < 2:
        return torch.tensor(float("nan"), dtype=torch.float64, device=t.device)
    n, work = t.shape[bdim], torch.promote_types(t.dtype, torch.float32)
    centred = t.to(work) - t.mean(bdim, keepdim=True, dtype=torch.float64).to(work)
    rms = (safe_norm(t) if norm is None else norm) / math.sqrt(t.numel())
    sd = safe_norm(centred) / math.sqrt((n - 1) * (t.numel() // n))
    return torch.where(rms > 0, sd / rms, torch.zeros_like(sd))


def _hidden_arg(args) -> object:
    """The initial hidden state passed to a recurrent module (its second positional argument), or None."""
    return args[1] if len(args) > 1 else None


def _flat_tensors(obj) -> list[Tensor]:
    """The tensors of a (nested) tuple, in order."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _flat_tensors(o)]
    return []


def _attention_weights(module, args, kwargs):
    """MultiheadAttention pre-hook (checkup only): return per-head attention probabilities too."""
    kwargs = dict(kwargs)
    kwargs["need_weights"], kwargs["average_attn_weights"] = True, False
    return args, kwargs
