"""Affinity of the chains between weight layers: is anything nonlinear left between two weight layers?

A composition of affine maps is affine. Two weight layers with nothing nonlinear between them
(``nn.Identity`` where an activation was meant, Dropout and BatchNorm in eval mode, reshapes, average
pooling, residual sums) compute what one layer computes: W₂(A(W₁x + b₁)) + b₂ = W'x + b'. A network
made only of such links has the capacity of one linear model, whatever its depth.

This is measured, not read from module types (an activation may be a function call, a custom module,
or an identity standing where one was meant). Three forward passes in eval mode (dropout off, BatchNorm
on its running statistics: the function the model computes at test time), on at most ``ROWS`` rows of
the batch x₁, with every weight layer's (and embedding's) output replaced by a test point:

1. inputs x₁; each weight layer's output z replaced by p = z / RMS(z) (unit scale);
2. inputs x₂ = x₁ rolled by one row; each output replaced by q = p rolled by one row;
3. inputs a·x₁ + (1 − a)·x₂ with a = ``MIX``; each output replaced by a·p + (1 − a)·q.

The input u of each weight layer B is then F_B(test points of whatever feeds it directly: the weight
layers just upstream, the model's input), evaluated at p, at q and at their mixture; F_B is affine
exactly when u₃ = a·u₁ + (1 − a)·u₂ (the identity holds for any two points, natural or not). For one
a ∉ {0, 1} a nonlinear map misses it generically: relu where the two points' signs differ, tanh/sigmoid
by their curvature, LayerNorm by its division by the per-sample std (LayerNorm counts as nonlinear,
because it is). The unit scale is what makes a smooth activation show: at the natural scale of a deep
tanh net with small weights (pre-activations ~10⁻³) tanh is affine to 10⁻⁶, below float32 round-off;
at unit scale its curvature is plain. Deviation and spread are taken relative to
s = max(‖u₁‖, ‖u₂‖) over the rows:

    deviation = ‖u₃ − (a·u₁ + (1 − a)·u₂)‖ / s        spread = ‖u₁ − u₂‖ / s

Which weight layers feed B directly is read from pass 1's autograd graph, walked back from B's input
until the output of a weight layer or embedding (dataflow: parallel q/k/v projections, which read the
same tensor, do not feed each other). A link A → B is reported only when every consumer of A's output
takes it affinely: in a pre-activation residual net each block's last layer reaches the head through
the residual stream with nothing nonlinear between, but it also feeds the next blocks through their
activations, so it is not a layer that one matrix product could absorb.

Token inputs (integer tensors) cannot be mixed: they are kept as x₁ in pass 3 and the embeddings'
outputs are replaced and mixed like the weight layers' , so every chain after the embeddings is still judged (``tokens``); the
whole-model test is then on the map from the embedding vectors to the output.

Cost: three forward passes, no backward, first on ``SCREEN_ROWS`` = 2 rows, then on ≤ ``ROWS`` = 64
rows only when the screen could have missed a link (a layer's input measured affine, or too little
spread to judge): a nonlinearity seen on two pairs is proof, an affine verdict needs the full sample.
A healthy network pays for the passes on two rows. In passes 2 and 3 a weight layer's output is the
test point whatever it computes, so torch's own Linear, Conv and Embedding layers skip their product there
(``SKIPPABLE``): those two passes cost the model's other operations only (pooling, normalisation,
activations). On CPU, batch 8 of 3×64×64, the three passes on all 8 rows took the time of 2.4 plain
forward passes on ResNet-18 and 1.5 on VGG-11; the two-row screen settles both. Half-precision models (float16/bfloat16) are not
judged: their round-off (ε ≈ 10⁻³) is too close to a weak nonlinearity's deviation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .hooks import Hooks
from .io import call_model
from .records import AffineFacts, AffineLink
from .sites import first_tensor, is_activation, module_kind, tensors, weight_matrix

MIX = 0.3  # one mixture weight away from 1/2, so no symmetric nonlinearity can pass by symmetry
FAST_PATH = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)
ROWS = 64  # pairs of rows: enough for a sign change of a relu between paired samples in any live unit
# Screening pairs: the passes run first on this many rows, and again on ``ROWS`` only when the screen is
# not conclusive (some input judged affine, or too little spread to judge). A nonlinearity that shows on
# two pairs is proven; an affine verdict needs the full sample. A healthy network (every chain
# nonlinear) pays for the passes on 2 rows, a suspect one for both.
SCREEN_ROWS = 2
# Tolerance: 100 × the dtype's machine epsilon (float32: 1.2·10⁻⁵; float64: 2.2·10⁻¹⁴). An affine chain
# between two weight layers is elementwise ops (round-off ~ε), sums over P positions (average pooling,
# a residual stream; torch sums pairwise, error ~ε·log₂P, and ≤ ε·√P for a random walk: √P ≤ 100 up to
# 10⁴ positions) and the mixture itself (2ε). A nonlinearity deviates far more: relu by ~a(1−a)·|z₁ − z₂|
# on the units whose sign differs (10⁻² to 10⁻¹), tanh at the unit-scale test points by ~10⁻¹ (its z³/3
# term), and still by ~z² = 10⁻⁴ where a normalisation in the chain shrinks them to |z| = 0.01.
ROUNDOFF = 100
# Spread: an input that barely varies between the paired rows (‖u₁ − u₂‖ < 1 % of ‖u‖) tests F_B only on a
# tiny neighbourhood, where any smooth map is affine to second order (deviation ~ spread²): not judged.
MIN_SPREAD = 0.01
MAX_GRAPH = 200_000  # autograd nodes visited when reading the wiring: past this, the wiring is not read
LOW_PRECISION = (torch.float16, torch.bfloat16)
# Layers whose output in passes 2 and 3 is a function of their input's shape alone (then replaced by the
# test point): torch's own classes, exactly (a subclass may compute or change state in its forward).
SKIPPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
             nn.Embedding)


class _Unmeasurable(Exception):
    """The passes did not line up (a module called a different number of times, or with other shapes)."""


def affine_links(model: nn.Module, inputs) -> AffineFacts | None:
    """The weight-layer pairs of `model` with only an affine map between them, measured on `inputs`
    (see the module doc); None when there is nothing to judge (fewer than two weight layers, fewer
    than two rows, a half-precision model) or the passes cannot be lined up. The model's modes are
    restored; the caller restores buffers (eval mode updates none of torch's own)."""
    sites = [(n, m) for n, m in model.named_modules() if module_kind(m) in ("weight", "embedding")
             and not isinstance(m, nn.Bilinear)]  # a bilinear layer is quadratic in its input, not affine
    if sum(module_kind(m) == "weight" for _, m in sites) < 2:
        return None
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1 or next(iter(dtypes)) in LOW_PRECISION:
        return None
    first = first_tensor(inputs)
    rows = min(int(first.shape[0]), ROWS) if isinstance(first, Tensor) and first.dim() else 0
    if rows < 2:
        return None
    batch, dtype = int(first.shape[0]), next(iter(dtypes))
    if rows > SCREEN_ROWS:
        screen = _measure(model, inputs, sites, dtype, batch, SCREEN_ROWS)
        if screen is not None and screen.conclusive:
            return screen.facts
    measured = _measure(model, inputs, sites, dtype, batch, rows)
    return measured.facts if measured is not None else None


def _measure(model: nn.Module, inputs, sites: list, dtype: torch.dtype, batch: int, rows: int) -> _Measured | None:
    """The three passes on the first `rows` rows of `inputs` (see the module doc); None when they cannot
    be lined up."""
    first = first_tensor(inputs)
    x1 = _take(inputs, batch, torch.arange(rows, device=first.device))
    x2 = _take(inputs, batch, torch.arange(rows, device=first.device).roll(-1))
    tokens = any(not t.is_floating_point() for t in tensors(x1))
    modes = [(m, m.training) for m in model.modules()]
    devices = sorted({p.device.index for p in model.parameters() if p.device.type == "cuda"
                      and p.device.index is not None})
    others = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Identity) or is_activation(m)]
    passes = _Passes(sites, others)
    try:
        model.eval()
        with torch.random.fork_rng(devices=devices):
            with torch.enable_grad():
                x1 = _watched(x1)  # floating inputs as leaves of the graph: the wiring sees them
                out1 = passes.run(model, x1, "first")
                feeds = passes.wiring(out1, {id(t) for t in tensors(x1) if t.requires_grad})
                out1 = out1.detach()
                del x1
            x1 = _take(inputs, batch, torch.arange(rows, device=first.device))
            # passes 2 and 3 need no graph, except where a module takes another code path without one
            # (nn.TransformerEncoderLayer's fused fast path calls none of its submodules)
            graph = torch.enable_grad() if any(isinstance(m, FAST_PATH) for m in model.modules()) else torch.no_grad()
            with graph:
                passes.skip_products()
                out2 = passes.run(model, x2, "second").detach()
                out3 = passes.run(model, _blend(x1, x2), "mixed").detach()
    except (_Unmeasurable, RuntimeError, ValueError, TypeError, IndexError):
        return None
    finally:
        passes.hooks.remove()
        passes.restore_products()
        for m, t in modes:
            m.training = t
    if feeds is None or out1.shape != out2.shape or out1.shape != out3.shape:
        return None
    return _facts(passes, feeds, (out1, out2, out3), dtype, rows, tokens)


class _Passes:
    """Hooks on every weight layer and embedding that record, per call, its input in every pass, and
    replace its output by the pass's test point (see the module doc)."""

    def __init__(self, sites: list[tuple[str, nn.Module]], others: list[tuple[str, nn.Module]]):
        self.names = {m: n for n, m in sites}
        self.modules: dict[str, nn.Module] = {}  # key (name, "name#k" for the k-th extra call) -> module
        self.kinds = {m: module_kind(m) for _, m in sites}
        self.hooks = Hooks()
        self.seen: dict[str, dict] = {}  # pass -> {key: {"u": input, "p": test point (pass 1)}}
        self.nodes: dict[str, tuple] = {}  # key -> (grad_fn of the input, grad_fn of the output), pass 1
        self.mode, self.calls = "first", {}
        self.order: list[str] = []  # pass 1: weight-layer keys and Identity names, in the order they finish
        self.activations = 0  # pass 1: calls of activation modules
        self.stats: dict[str, Tensor] = {}  # key -> (deviation, spread) of its input, from pass 3
        self.shapes: dict[str, tuple] = {}  # key -> shape of its input, pass 1
        self.pending: dict[nn.Module, str] = {}  # passes 2 and 3: module -> key of the call under way
        self.made: Tensor | None = None  # the test point a skipped product returned
        self.skipped: list[nn.Module] = []  # modules whose forward is replaced during passes 2 and 3
        for _, m in sites:
            self.hooks.add(m.register_forward_pre_hook(self._pre))
            self.hooks.add(m.register_forward_hook(self._post))
        for n, m in others:
            self.hooks.add(m.register_forward_hook(lambda *_, n=n, m=m: self._other(n, m)))

    def key(self, m: nn.Module) -> str:
        k = self.calls.get(m, 0)
        return self.names[m] if k == 0 else f"{self.names[m]}#{k}"

    def run(self, model: nn.Module, inputs, mode: str) -> Tensor:
        self.mode, self.calls = mode, {}
        self.seen[mode] = {}
        torch.manual_seed(0)  # any eval-time randomness draws the same values in every pass
        out = first_tensor(call_model(model, inputs))
        if not isinstance(out, Tensor) or not out.is_floating_point():
            raise _Unmeasurable("the output is not a floating tensor")
        if mode != "first" and list(self.seen[mode]) != list(self.seen["first"]):
            raise _Unmeasurable("the passes called different layers")
        return out

    def skip_products(self) -> None:
        """For passes 2 and 3: torch's own Linear, Conv and Embedding layers return their test point
        without computing W·u (``SKIPPABLE``). The post-hook replaces their output by that point
        anyway, so the product is wasted work (most of a CNN's forward pass); the skip is taken only
        for a call through the module (hooks run) with one tensor of the shape it had in pass 1, whose
        output shape is then the one pass 1 gave; any other call computes as usual."""
        for m in dict.fromkeys(self.modules.values()):
            if type(m) in SKIPPABLE and "forward" not in vars(m) and getattr(m, "max_norm", None) is None:
                m.forward = self._skipping(m, m.forward)
                self.skipped.append(m)

    def restore_products(self) -> None:
        for m in self.skipped:
            del m.forward  # the class's forward again
        self.skipped = []

    def _skipping(self, m: nn.Module, real):
        def forward(*args, **kwargs):
            key = self.pending.pop(m, None)
            if key is None or kwargs or len(args) != 1 or not isinstance(args[0], Tensor) \
                    or tuple(args[0].shape) != self.shapes.get(key):
                return real(*args, **kwargs)
            self.made = self.point(key)
            return self.made
        return forward

    def point(self, key: str) -> Tensor:
        """The test point of `key` in the current pass 2 or 3: q = p rolled by one row, or MIX·p + (1 − MIX)·q."""
        p = self.seen["first"][key]["p"]
        q = p.roll(-1, 0)  # row i + 1, as the inputs of the second pass
        return q if self.mode == "second" else MIX * p + (1 - MIX) * q

    def _pre(self, m: nn.Module, args) -> None:
        u = first_tensor(args)
        key = self.key(m)
        self.modules[key] = m
        if self.mode == "first" and isinstance(u, Tensor):
            self.shapes[key] = tuple(u.shape)
        elif self.skipped:
            self.pending[m] = key
        rec = self.seen[self.mode].setdefault(key, {})
        if isinstance(u, Tensor) and u.is_floating_point():
            if self.mode == "mixed":  # judged at once: the inputs of passes 1 and 2 are not kept longer
                u1, u2 = (self.seen[p].get(key, {}).pop("u", None) for p in ("first", "second"))
                if u1 is not None and u2 is not None:
                    self.stats[key] = _deviation(u1, u2, u.detach())
                rec["u"] = True
                return
            rec["u"] = u.detach().clone()
            if self.mode == "first":
                self.nodes[key] = (u.grad_fn, None)

    def _post(self, m: nn.Module, args, out):
        key = self.key(m)
        self.calls[m] = self.calls.get(m, 0) + 1
        if not isinstance(out, Tensor) or not out.is_floating_point():
            raise _Unmeasurable(f"{key} returned {type(out).__name__}")
        if self.mode == "first":
            rms = out.detach().pow(2).mean().sqrt()
            p = out / torch.where(rms > 0, rms, torch.ones_like(rms))  # unit RMS, still on the graph
            self.nodes[key] = (self.nodes.get(key, (None, None))[0], p.grad_fn)
            self.order.append(key)
            self.seen["first"][key]["p"] = p.detach().clone()
            return p
        self.pending.pop(m, None)
        made, self.made = self.made, None
        if out is made:  # the skipped product returned it
            return out
        if self.seen["first"][key]["p"].shape != out.shape:
            raise _Unmeasurable(f"{key} changed shape between passes")
        return self.point(key)

    def _other(self, name: str, m: nn.Module) -> None:
        if self.mode == "first":
            if isinstance(m, nn.Identity):
                self.order.append(f"identity:{name}")
            else:
                self.activations += 1

    def placeholder(self, source: str, target: str) -> str | None:
        """The first nn.Identity called after `source` finished and before `target` did (pass 1), or None."""
        i, j = self.order.index(source), self.order.index(target)
        return next((k.split(":", 1)[1] for k in self.order[i + 1:j] if k.startswith("identity:")), None)

    def wiring(self, out: Tensor, leaves: set[int]) -> dict[str, set[str]] | None:
        """{weight layer (and "output"): the weight layers and embeddings whose outputs feed it directly,
        and "input" when the model's floating input (the tensors with ids `leaves`) does}, from pass 1's
        autograd graph; None when the graph is too large to walk."""
        stops = {z: key for key, (_, z) in self.nodes.items() if z is not None}
        starts = {key: u for key, (u, _) in self.nodes.items()
                  if self.kinds[self.modules[key]] == "weight"}
        starts["output"] = out.grad_fn
        feeds, budget = {}, MAX_GRAPH
        for key, node in starts.items():
            found, seen, stack = set(), set(), [node]
            while stack:
                n = stack.pop()
                if n is None or n in seen:
                    continue
                seen.add(n)
                if n in stops:
                    found.add(stops[n])
                    continue
                if id(getattr(n, "variable", None)) in leaves:  # AccumulateGrad of an input tensor
                    found.add("input")
                stack.extend(f for f, _ in n.next_functions)
            budget -= len(seen)
            if budget < 0:
                return None
            feeds[key] = found
        self.nodes = {}  # drop the graph
        return feeds



@dataclass(frozen=True)
class _Measured:
    """The facts of one set of passes, and whether they are `conclusive` whatever more rows would show:
    the input of every weight layer fed by another weight layer (the only inputs a link can end at; at
    least one) judged and not affine. No link is then possible, nor an affine whole model. A
    nonlinearity seen on a few pairs is proof; affinity seen on a few pairs is only as good as the
    pairs. (The first layer's input is the model's input, and an output straight from the last layer is
    its test point: both affine by construction, and never a link's end.)"""

    facts: AffineFacts
    conclusive: bool


def _facts(passes: _Passes, feeds: dict, outs: tuple, dtype: torch.dtype, rows: int, tokens: bool) -> _Measured:
    """Deviation and spread of every weight layer's input and of the output (one host sync), and the
    links: each weight layer whose input is judged affine, paired with each weight layer feeding it
    whose every consumer (weight layer or the output) takes it affinely."""
    keys = [k for k in feeds if k != "output" and k in passes.stats]
    stats = torch.stack([passes.stats[k] for k in keys] + [_deviation(*outs)]).cpu().tolist()  # host sync
    tol = ROUNDOFF * torch.finfo(dtype).eps
    judged = {k: (dev, spread) for k, (dev, spread) in zip(keys + ["output"], stats)
              if math.isfinite(dev) and math.isfinite(spread) and spread >= MIN_SPREAD}
    affine = {k for k, (dev, _) in judged.items() if dev <= tol}
    consumers: dict[str, set[str]] = {}
    for key, sources in feeds.items():
        for src in sources:
            consumers.setdefault(src, set()).add(key)
    links = []
    for key in keys:
        if key not in affine:
            continue
        dev, spread = judged[key]
        target = passes.modules[key]
        for src in sorted(feeds[key] - {"input"}):
            source = passes.modules[src]
            # a layer that also feeds a nonlinear chain (a residual stream read by the next block's
            # activation and by the head) is not collapsible: only its affine path would merge
            if passes.kinds[source] == "weight" and consumers[src] <= affine:
                pure = feeds[key] == {src} and consumers[src] == {key}
                links.append(_link(src, source, key, target, dev, spread, passes.placeholder(src, key), pure))
    whole = "output" in affine and all(k in affine for k in keys)
    facts = AffineFacts(tuple(links), whole, tol, MIX, rows, len([k for k in keys if k in judged]), tokens,
                        passes.activations)
    ends = [k for k in keys if any(passes.kinds[passes.modules[src]] == "weight" for src in feeds[k] - {"input"})]
    return _Measured(facts, conclusive=bool(ends) and all(k in judged and k not in affine for k in ends))


def _deviation(u1: Tensor, u2: Tensor, u3: Tensor) -> Tensor:
    """(deviation, spread) of one input (see the module doc), float64, on the device; NaN when shapes
    differ or the input is zero."""
    if not (u1.shape == u2.shape == u3.shape):
        return torch.full((2,), math.nan, dtype=torch.float64, device=u1.device)
    norm = lambda t: torch.linalg.vector_norm(t, dtype=torch.float64)
    scale = torch.maximum(norm(u1), norm(u2))
    dev = norm(u3 - (MIX * u1 + (1 - MIX) * u2))
    return torch.stack([dev, norm(u1 - u2)]) / scale


def _shape(m: nn.Module) -> tuple[int, int, int]:
    """(input features/channels, output units, kernel entries) of a weight layer."""
    w = weight_matrix(m)
    groups = getattr(m, "groups", 1)
    kernel = math.prod(w.shape[2:])
    if isinstance(m, nn.modules.conv._ConvTransposeNd):  # weight (in, out/groups, *k)
        return int(w.shape[0]), int(w.shape[1]) * groups, kernel
    return int(w.shape[1]) * groups, int(w.shape[0]), kernel


def _link(src: str, source: nn.Module, key: str, target: nn.Module, dev: float, spread: float,
          placeholder: str | None, pure: bool) -> AffineLink:
    fan_in, inner, kernel = _shape(source)
    fan_out = _shape(target)[1]
    params = weight_matrix(source).numel() + weight_matrix(target).numel()
    return AffineLink(src, key, dev, spread, fan_in, inner, fan_out, params, fan_in * fan_out * kernel, placeholder,
                      pure)


def _watched(value):
    """`value` with each floating tensor detached and requiring grad (a leaf the graph records)."""
    if isinstance(value, Tensor):
        return value.detach().requires_grad_(True) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_watched(v) for v in value)
    if isinstance(value, dict):
        return {k: _watched(v) for k, v in value.items()}
    return value


def _take(value, batch: int, index: Tensor):
    """`value` with the rows `index` of every tensor whose first dimension is the batch's."""
    if isinstance(value, Tensor):
        return value[index.to(value.device)] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_take(v, batch, index) for v in value)
    if isinstance(value, dict):
        return {k: _take(v, batch, index) for k, v in value.items()}
    return value


def _blend(a, b):
    """a·MIX + b·(1 − MIX) for floating tensors; integer tensors (token ids) are kept from `a`."""
    if isinstance(a, Tensor):
        return MIX * a + (1 - MIX) * b if a.is_floating_point() else a
    if isinstance(a, (tuple, list)):
        return type(a)(_blend(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return {k: _blend(v, b[k]) for k, v in a.items()}
    return a
