"""The vectorized engine: N runs of one architecture trained as one batched model.

Every member's weights are stacked, ``W: (N, fan_out, fan_in)`` and ``b: (N, fan_out)``, and applied with
``baddbmm`` to its own mini-batch ``x[idx]: (N, B, fan_in)``. The members reproduce ``dd.fit`` (to float
rounding, see Exactness):

- init: each member's ``dd.mlp(seed=config.seed)`` parameters (``dd.mlp``'s draws replayed on one model);
- batch order: each member has its own ``torch.Generator().manual_seed(seed)`` and ``randperm(n)`` per
  epoch, as ``fit`` does; the last partial batch is included;
- loss: each member's loss is the mean over *its* batch; the batched objective is their **sum**, so every
  member's gradient is exactly its own (a mean over N·B rows would divide each gradient by N);
- gradients: plain nets with a cross-entropy or MSE loss (the common case) take a hand-written backward
  (``_fast_step``: no autograd graph, the activations' own aten backward kernels, outputs written into
  reused buffers); residual nets (and ``compile=True``) go through autograd (``_autograd_step``);
- L2: ``λ/(2n)·Σw²`` per member on its batch loss; its gradient ``(λ/n)·w`` is added in the update, with
  L2-style weight decay (weights only);
- optimizers: SGD (momentum buffer = the first gradient, as torch's), Adam and AdamW written out on flat
  vectors holding all parameters of all members (a few elementwise ops per step, whatever the depth)
  with per-member ``lr``, ``momentum``, ``λ`` and weight decay, following ``torch.optim``'s foreach
  formulas (bias corrections in Python floats, ``eps`` after ``√v/√bc2``);
- evaluation: at the end of each epoch, in eval mode, on the whole training and validation sets; the
  batch losses are read in one host sync per epoch (never ``.item()`` in the step loop);
- divergence: the first non-finite batch loss of a member marks it diverged at that step; like ``fit``
  it finishes that epoch and stops. It is then removed from the stack, so its NaN cannot reach the
  others (nothing couples the members anyway: bmm, the per-row loss and the elementwise updates are
  all member-separable).

Exactness: equal to ``local`` to float rounding (<= 1e-5 in parameters and histories in float32; batched
and single matrix products sum in different orders). Logits are laid out ``(N, classes, B)``: CPU
log_softmax and class reductions along a short last dim are 20x slower.

Dropout masks come from one generator for the whole stack (each member gets its own masks, but they are
not ``fit``'s masks), so with dropout the engine equals ``local`` in distribution only.

Vectorizable: same data set / n_train / data_seed, width, depth, activation, residual, optimizer, batch
size, epochs, dtype, device; no early stopping (``patience=None``); no normalisation layers. Other runs
go to the local loop.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..models import _initialise, mlp
from ..regularization import weight_parameters
from ..runs import EXTENDED, RunConfig, RunResult, check_device, dataset, result_from_history
from ..train import History, _prepare, loss_kind
from .base import Engine
from .local import train_run
from .stop import UPDATE_GAP, first_stop, member_findings, member_layer_stats, update_ratios

log = logging.getLogger("deepdiag.sweep")

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam / AdamW defaults, as dd.fit uses them

_aten = torch.ops.aten
ACT_FORWARD = {"relu": torch.relu, "leaky_relu": F.leaky_relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
               "gelu": F.gelu, "linear": lambda z: z}  # the functions behind deepdiag.models.ACTIVATIONS
# in place where only a is needed afterwards (eval; the fast path's relu, tanh, sigmoid, linear)
ACT_INPLACE = {"relu": torch.relu_, "leaky_relu": F.leaky_relu_, "tanh": torch.tanh_, "sigmoid": torch.sigmoid_,
               "gelu": F.gelu, "linear": lambda z: z}
A_ONLY = ("relu", "tanh", "sigmoid", "linear")  # activations whose derivative is a function of a = act(z)
# a = act(z); the backward autograd itself runs for each, (∂ℓ/∂a, z, a) -> ∂ℓ/∂z, written over ∂ℓ/∂a:
ACT_BACKWARD = {
    "relu": lambda g, z, a: _aten.threshold_backward.grad_input(g, a, 0, grad_input=g),  # g·[a > 0]
    "leaky_relu": lambda g, z, a: _aten.leaky_relu_backward.grad_input(g, z, 0.01, False, grad_input=g),
    "tanh": lambda g, z, a: _aten.tanh_backward.grad_input(g, a, grad_input=g),  # g·(1 − a²)
    "sigmoid": lambda g, z, a: _aten.sigmoid_backward.grad_input(g, a, grad_input=g),  # g·a·(1 − a)
    "gelu": lambda g, z, a: _aten.gelu_backward.grad_input(g, z, approximate="none", grad_input=g),
    "linear": lambda g, z, a: g,
}  # leaky_relu: g·(1 if z > 0 else 0.01); gelu: g·(Φ(z) + z·φ(z))


def shape_key(c: RunConfig) -> tuple | None:
    """Configs with the same key train as one batched model; None: not vectorizable. Runs that use a
    field added after schema 1 (data options, evaluation, stop rule, probes: ``EXTENDED``) go to the
    local loop, which honours them all; the batched model knows only the original fields."""
    if c.patience is not None or c.norm is not None:
        return None
    if any(getattr(c, k) != v for k, v in EXTENDED.items()):
        return None
    return (c.dataset, c.n_train, c.data_seed, c.width, c.depth, c.activation, c.residual, c.optimizer,
            c.batch_size, c.epochs, c.dtype, c.device, c.dropout > 0)


def not_vectorizable(c: RunConfig) -> str | None:
    """Why `c` cannot join a batched model (one short reason, the same for every run of that kind), or None
    when it can (``shape_key`` is not None)."""
    if c.patience is not None:
        return "vectorized cannot stop early (patience)"
    if c.norm is not None:
        return f"vectorized cannot train {c.norm} layers"
    if c.probes != EXTENDED["probes"]:
        return f"vectorized cannot run probes: {', '.join(c.probes)}"
    other = [k for k, v in EXTENDED.items() if getattr(c, k) != v]
    return f"vectorized cannot honour {', '.join(other)}" if other else None


def group(configs: list[RunConfig]) -> tuple[list[list[RunConfig]], list[RunConfig]]:
    """(groups of vectorizable configs sharing a shape key, configs that are not vectorizable)."""
    groups, rest = {}, []
    for c in configs:
        key = shape_key(c)
        if key is None:
            rest.append(c)
        else:
            groups.setdefault(key, []).append(c)
    return list(groups.values()), rest


class VectorizedEngine(Engine):
    """Trains each group of same-shaped runs as one batched model (up to ``max_members`` at a time);
    single runs and non-vectorizable ones go to the local loop."""

    name = "vectorized"

    def __init__(self, max_members: int = 128, compile: bool = False, **options):
        if options:
            raise TypeError(f"engine='vectorized' takes the options max_members and compile; got "
                            f"{', '.join(map(repr, options))}")
        self.max_members, self.compile = max_members, compile
        self.fallbacks: dict[str, str] = {}  # run hash -> why it trained on the local loop instead

    def run(self, configs: list[RunConfig]) -> Iterator[RunResult]:
        groups, rest = group(configs)
        self.fallbacks.update((c.hash, not_vectorizable(c)) for c in rest)
        for g in groups:
            for i in range(0, len(g), self.max_members):
                chunk = g[i:i + self.max_members]
                if len(chunk) == 1:
                    self.fallbacks[chunk[0].hash] = "vectorized had no other run of its shape to batch with"
                    rest.append(chunk[0])
                    continue
                try:
                    results, _ = train_group(chunk, compile=self.compile, stop_on=self.stop_on)
                except Exception as e:  # e.g. out of memory: the reference loop records each run's fate
                    log.warning("vectorized group of %d runs failed (%s: %s); training them one by one",
                                len(chunk), type(e).__name__, e)
                    self.fallbacks.update((c.hash, f"vectorized group failed ({type(e).__name__})") for c in chunk)
                    results = [train_run(c, self.stop_on) for c in chunk]
                yield from results
        for c in rest:
            yield train_run(c, self.stop_on)


# ------------------------------------------------------------------------------------ batched model

def _per(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-member vector (N,) shaped to broadcast against a stacked tensor (N, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _initial_params(configs: list[RunConfig], ds) -> tuple[nn.Module, list[dict[str, torch.Tensor]]]:
    """(a model of the group's shape, each member's initial parameters), bit-identical to
    ``build_model(config, ds)``. ``dd.mlp(seed=s)`` draws from the CPU generator seeded with s: each
    Linear's default init as it is constructed (module order), then the init scheme. One float32 model
    is built and those draws are replayed per member, 5x faster than building N models (~0.5 ms each
    for Module construction and ``torch.manual_seed``'s lazy CUDA seeding)."""
    c0 = configs[0]
    model = mlp(ds.in_features, ds.out_features, seed=c0.seed, **c0.model_kwargs())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    inits = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for c in configs:
            torch.default_generator.manual_seed(c.seed)
            for m in linears:
                m.reset_parameters()
            _initialise(model, c.init, c.activation)
            inits.append({k: p.to(device=check_device(c.device), dtype=getattr(torch, c.dtype), copy=True)
                          for k, p in model.named_parameters()})
    return model, inits


class _Scratch:
    """Output buffers kept from step to step, one per (key, shape): on CPU a fresh multi-MB tensor per op
    is paid for in page faults on its first touch (the allocator hands freed memory back to the OS),
    ~10% of a step at width 64."""

    def __init__(self, like: torch.Tensor):
        self.like, self.bufs = like, {}

    def __call__(self, key: str, *shape: int) -> torch.Tensor:
        out = self.bufs.get((key, shape))
        if out is None:
            out = self.bufs[(key, shape)] = self.like.new_empty(shape)
        return out


class _Stack:
    """The members still training: parameters, gradients and optimizer state as flat vectors.

    Parameter k of all N members is one contiguous block ``(N, *shape_k)`` of ``flat`` (``params[k]`` is
    a view of it, ``grads[k]`` the same view of ``grad``), so one optimizer step is a few elementwise ops
    on whole vectors, whatever the number of parameters. A per-member knob enters those ops as a Python
    float when all members share it, else as a vector like ``flat`` (``full``), computed in float64 and
    rounded once, as torch.optim rounds its Python-float knobs.
    """

    def __init__(self, configs, model: nn.Module, inits: list[dict], n: int, optimizer: str):
        """model: one of the group's shape (names, weights); inits: each member's initial parameters."""
        named = list(model.named_parameters())
        weight_ids = {id(p) for p in weight_parameters(model)}
        self.weights = {k for k, p in named if id(p) in weight_ids}
        self.shapes = {k: tuple(p.shape) for k, p in named}
        self.size = sum(math.prod(s) for s in self.shapes.values())  # parameters of one member
        self.flat = torch.cat([torch.stack([P[k] for P in inits]).reshape(-1) for k in self.shapes])
        self.n, self.optimizer = n, optimizer
        self.state: dict[str, torch.Tensor] = {}  # "buf" (SGD) or "m", "v" (Adam, AdamW): like flat
        self.step = 0
        self.members = list(range(len(configs)))  # original index of each row still training
        self.configs = list(configs)
        self._refresh()

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """name -> the (N, *shape) view of that parameter's block in a flat vector."""
        N, out, i = flat.numel() // self.size, {}, 0
        for k, shape in self.shapes.items():
            size = N * math.prod(shape)
            out[k] = flat[i:i + size].view(N, *shape)
            i += size
        return out

    def full(self, values: list[float], weights_only: bool = False, other: float = 0.0) -> torch.Tensor:
        """A vector like ``flat`` holding member m's value on each of its entries (`other` on the
        entries of non-weights when `weights_only`)."""
        v = torch.tensor(values, dtype=torch.float64).view(-1, 1)
        blocks = [(v if not weights_only or k in self.weights else torch.full_like(v, other))
                  .expand(len(values), math.prod(s)).reshape(-1) for k, s in self.shapes.items()]
        return torch.cat(blocks).to(self.flat)

    def knob(self, values: list[float]) -> float | torch.Tensor:
        """The float shared by all members, or the vector ``full(values)``."""
        return float(values[0]) if len(set(values)) == 1 else self.full(values)

    def _refresh(self) -> None:
        """Views and per-member knobs of the current members.
        decay c = λ/n + wd (Adam: wd too; AdamW: λ/n only) multiplies w in d = g + c·w: the L2 term's
        gradient (λ/n)·w and torch's L2-style weight decay, on weights only; None where c = 0 for all."""
        cs, dev = self.configs, self.flat.device
        self.params, self.grad = self.split(self.flat), torch.zeros_like(self.flat)
        self.grads, self.scratch = self.split(self.grad), _Scratch(self.flat)
        self.p = torch.tensor([c.dropout for c in cs], dtype=self.flat.dtype, device=dev)
        decay = [c.l2 / self.n + (c.weight_decay if self.optimizer != "adamw" else 0.0) for c in cs]
        self.decay = self.full(decay, weights_only=True) if any(decay) else None
        self.mom = self.knob([c.momentum for c in cs]) if any(c.momentum for c in cs) else None
        self.neg_lr = self.knob([-c.lr for c in cs])
        wd = self.optimizer == "adamw" and any(c.weight_decay for c in cs)
        self.shrink = self.full([1 - c.lr * c.weight_decay for c in cs], True, 1.0) if wd else None

    def keep(self, rows: list[int]) -> None:
        """Drop every member not in `rows` (positions in the current stack)."""
        idx = torch.tensor(rows, device=self.flat.device)
        pick = lambda f: torch.cat([t.index_select(0, idx).reshape(-1) for t in self.split(f).values()])  # noqa: E731
        self.flat = pick(self.flat)
        self.state = {k: pick(t) for k, t in self.state.items()}
        self.members = [self.members[r] for r in rows]
        self.configs = [self.configs[r] for r in rows]
        self._refresh()


def _forward(P: dict, h: torch.Tensor, depth: int, residual: bool, act, drop, scratch=None) -> torch.Tensor:
    """The MLP of ``dd.mlp`` on stacked parameters: h (N, B, in) -> logits (N, out, B), each member's
    logits with the class along dim 1, where log_softmax and the class reductions run an order of
    magnitude faster on CPU than along a short last dim. act: an ``ACT_FORWARD`` function; drop(h)
    applies each member's dropout (identity in eval mode). Residual nets here have no norm layer, so,
    as in ``deepdiag.models``, each branch is scaled by 1/sqrt(depth). scratch (no autograd): a
    ``_Scratch`` for a plain net's layer outputs, which `act` may then overwrite."""
    alpha = depth ** -0.5 if residual and depth else 1.0  # the same float deepdiag.models.MLP uses
    N, B = h.shape[:2]
    for i in range(depth):
        w, b = P[f"hidden.{i}.linear.weight"], P[f"hidden.{i}.linear.bias"]  # (N, out, in), (N, out)
        if not residual:
            out = scratch(f"e{i % 2}", N, B, w.shape[1]) if scratch is not None else None
            h = drop(act(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2), out=out)))  # (N, B, width)
        else:
            proj = P.get(f"hidden.{i}.proj.weight")
            skip = torch.bmm(h, proj.transpose(1, 2)) if proj is not None else h
            branch = drop(torch.baddbmm(b.unsqueeze(1), act(h), w.transpose(1, 2)))
            h = skip + (branch if alpha == 1.0 else alpha * branch)
    return torch.baddbmm(P["out.bias"].unsqueeze(2), P["out.weight"], h.transpose(1, 2))  # (N, out, B)


def _member_loss(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Each member's mean loss over its own rows: out (N, C, B), y (N, B[, k]) -> (N,); `kind` is
    ``dd.train.loss_kind``'s choice, computed here as ``default_loss`` would per member."""
    if kind == "ce":
        return F.cross_entropy(out, y, reduction="none").mean(1)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(out[:, 0], y.to(out.dtype), reduction="none").mean(1)
    return F.mse_loss(out, y.transpose(1, 2), reduction="none").mean(dim=(1, 2))


def _predict(out: torch.Tensor) -> torch.Tensor:
    """Class ids (N, B) from logits (N, C, B): torch.argmax over the classes (first index among ties,
    NaN counts as the maximum), as ``accuracy_sum`` takes it; logit > 0 for one output unit."""
    if out.shape[1] == 1:
        return (out[:, 0] > 0).long()
    return out.transpose(1, 2).contiguous().argmax(-1)


@torch.no_grad()
def _evaluate(S: _Stack, x, y, kind, depth, residual, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member (mean loss, accuracy) on the whole (x, y) in eval mode, as (N,) device tensors."""
    N, act = len(S.members), (ACT_FORWARD if residual else ACT_INPLACE)[act]  # residual: h is the skip
    rows = max(1, 2**20 // (N * max(S.params["out.weight"].shape[2], x.shape[1], 64)))  # cache-sized
    total = torch.zeros(N, dtype=torch.float64, device=x.device)
    correct = torch.zeros(N, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), rows):
        xb, yb = x[i:i + rows], y[i:i + rows]
        out = _forward(S.params, xb.expand(N, *xb.shape), depth, residual, act, lambda h: h,
                       None if residual else S.scratch)
        total += _member_loss(out, yb.expand(N, *yb.shape), kind).double() * len(xb)
        if kind != "mse":
            correct += (_predict(out) == yb).sum(1).double()
    acc = correct / len(x) if kind != "mse" else torch.full_like(total, float("nan"))
    return total / len(x), acc


# ------------------------------------------------------------------- plain MLPs: hand-written backward

def _fast_step(S: _Stack, xb: torch.Tensor, target, kind: str, depth: int, act: str, drop) -> torch.Tensor:
    """One step's forward and backward of a plain MLP with no autograd graph. Writes each member's
    gradient of its own batch-mean loss into ``S.grad`` and returns the losses (N,).

    Forward (hidden rows (N, B, ·)):  z_i = h_i W_iᵀ + b_i,  a_i = act(z_i),  h_{i+1} = a_i·keep_i/(1−p)
    (h_{i+1} = a_i without dropout), logits o = W h_Lᵀ + b (N, out, B). Backward from δ = ∂ℓ/∂o:
    ∂W = δ h_L, ∂b = Σ_B δ, ∂h_L = δᵀ W; per hidden layer, top down: ∂a_i = ∂h_{i+1}·keep_i/(1−p),
    ∂z_i = act'(z_i)·∂a_i (``ACT_BACKWARD``), ∂W_i = ∂z_iᵀ h_i, ∂b_i = Σ_B ∂z_i, ∂h_i = ∂z_i W_i.
    `drop` is None or the dropout mask maker ``keep = drop(a)`` (the autograd path's draws, in order).
    """
    P, G, buf, (N, B) = S.params, S.grads, S.scratch, xb.shape[:2]
    f = (ACT_INPLACE if act in A_ONLY else ACT_FORWARD)[act]
    hs, zs, acts, keeps = [xb], [], [], []
    for i in range(depth):
        w = P[f"hidden.{i}.linear.weight"]
        z = torch.baddbmm(P[f"hidden.{i}.linear.bias"].unsqueeze(1), hs[-1], w.mT, out=buf(f"z{i}", N, B, w.shape[1]))
        a = f(z)  # a is z (overwritten) for A_ONLY
        keep = drop(a) if drop is not None else None
        zs.append(z), acts.append(a), keeps.append(keep)
        hs.append(a if keep is None else a * keep / _per(1 - S.p, a))
    w = P["out.weight"]
    o = torch.baddbmm(P["out.bias"].unsqueeze(2), w, hs[-1].mT, out=buf("o", N, w.shape[1], B))
    loss, dz = _loss_and_grad(o, target, kind)
    torch.bmm(dz, hs[-1], out=G["out.weight"])
    torch.sum(dz, 2, out=G["out.bias"])
    dh = torch.bmm(dz.mT, w, out=buf(f"d{depth % 2}", N, B, w.shape[2])) if depth else None
    for i in reversed(range(depth)):
        if keeps[i] is not None:
            dh = dh.div_(_per(1 - S.p, dh)).mul_(keeps[i])
        dz = ACT_BACKWARD[act](dh, zs[i], acts[i])  # dz is dh, overwritten
        torch.bmm(dz.mT, hs[i], out=G[f"hidden.{i}.linear.weight"])
        torch.sum(dz, 1, out=G[f"hidden.{i}.linear.bias"])
        w = P[f"hidden.{i}.linear.weight"]
        dh = torch.bmm(dz, w, out=buf(f"d{i % 2}", N, B, w.shape[2])) if i else None
    return loss


def _loss_and_grad(o: torch.Tensor, target, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(each member's batch-mean loss (N,), its gradient δ = ∂ℓ/∂o (N, out, B)) for logits o.
    ce, target (−onehot/B (N, C, B), y (N, 1, B)):  ℓ = −mean_B log softmax(o)[y],
                                                    δ = (softmax(o) − onehot)/B;
    mse, target y (N, k, B):  ℓ = mean (o − y)²,  δ = 2(o − y)/(B·k)."""
    if kind == "ce":
        neg_onehot, y = target
        ls = o.log_softmax(1)
        loss = ls.gather(1, y).mean((1, 2)).neg_()
        return loss, torch.add(neg_onehot, ls.exp_(), alpha=1.0 / o.shape[2], out=ls)
    diff = o.sub_(target)  # o is not needed any more
    return diff.square().mean((1, 2)), diff.mul_(2.0 / (o.shape[1] * o.shape[2]))


def _batches(x, y, order: torch.Tensor, batch: int, kind: str, fast: bool, n_out: int):
    """Each step's (x rows (N, B, in), target): member m's batch i is rows order[m, i·B:(i+1)·B].
    The targets are gathered once per epoch: autograd path y (N, B[, k]); fast path as
    ``_loss_and_grad`` takes them, with −1/B of the row's own batch (the last may be shorter)."""
    N, n = order.shape
    ys = y[order]  # (N, n[, k])
    if not fast:
        target = lambda i, j: ys[:, i:j]  # noqa: E731
    elif kind == "mse":
        target = lambda i, j: ys.mT[:, :, i:j]  # noqa: E731
    else:
        last = (n - 1) // batch * batch
        scale = torch.full((1, 1, n), -1.0 / batch, dtype=x.dtype, device=x.device)
        scale[..., last:] = -1.0 / (n - last)
        neg_onehot = torch.zeros(N, n_out, n, dtype=x.dtype, device=x.device).scatter_(
            1, ys.unsqueeze(1), scale.expand(N, 1, n))
        target = lambda i, j: (neg_onehot[:, :, i:j], ys.unsqueeze(1)[:, :, i:j])  # noqa: E731
    for i in range(0, n, batch):
        idx = order[:, i:i + batch]
        yield x.index_select(0, idx.reshape(-1)).view(*idx.shape, -1), target(i, i + batch)


def _autograd_step(S: _Stack, xb, yb, loss_fn) -> torch.Tensor:
    """One step's forward (loss_fn(P, xb, yb) -> (N,) losses) and backward by autograd on the sum of
    the members' losses (each gradient is the member's own); writes ``S.grad``, returns the losses."""
    P = {k: p.detach().requires_grad_() for k, p in S.params.items()}
    loss = loss_fn(P, xb, yb)
    grads = torch.autograd.grad(loss.sum(), list(P.values()))  # sum, not mean
    torch.cat([g.reshape(-1) for g in grads], out=S.grad)
    return loss.detach()


# ------------------------------------------------------------------------------------ optimizers

@torch.no_grad()
def _update(S: _Stack) -> None:
    """One optimizer step of every member on the flat vectors, with torch.optim's formulas and each
    member's knobs: first d = g + c·w (``S.decay``: the L2 gradient (λ/n)·w and L2-style weight decay,
    computed before AdamW's shrink as autograd would), then SGD, Adam or AdamW."""
    S.step += 1
    if S.decay is not None:
        S.grad.addcmul_(S.flat, S.decay)
    (_sgd if S.optimizer == "sgd" else _adam)(S, S.grad)


def _add_scaled(p: torch.Tensor, t: torch.Tensor, scale) -> None:
    """p ← p + scale·t, scale a float or a vector like p."""
    p.add_(t, alpha=scale) if isinstance(scale, float) else p.addcmul_(t, scale)


def _sgd(S: _Stack, d: torch.Tensor) -> None:
    """buf ← μ·buf + d (buf = d on the first step, as torch's; no buffer when μ = 0 for all),
    w ← w − lr·buf."""
    if S.mom is not None:
        if "buf" not in S.state:
            S.state["buf"] = d = d.clone()
        else:  # one pass over buf: d + μ·buf
            buf = S.state["buf"]
            d = torch.add(d, buf, alpha=S.mom, out=buf) if isinstance(S.mom, float) else \
                torch.addcmul(d, buf, S.mom, out=buf)
    _add_scaled(S.flat, d, S.neg_lr)


def _adam(S: _Stack, g: torch.Tensor) -> None:
    """AdamW first shrinks w ← (1 − lr·wd)·w; then m ← m + (1−β1)(g − m), v ← β2·v + (1−β2)·g²,
    w ← w − lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε)  (torch's foreach order: bias corrections in Python
    floats, ε added after the division)."""
    p = S.flat
    if S.shrink is not None:
        p.mul_(S.shrink)
    if "m" not in S.state:
        S.state["m"], S.state["v"] = torch.zeros_like(p), torch.zeros_like(p)
    m, v = S.state["m"], S.state["v"]
    m.lerp_(g, 1 - BETAS[0])
    v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
    bc1, bc2 = 1 - BETAS[0] ** S.step, 1 - BETAS[1] ** S.step
    denom = v.sqrt().div_(bc2**0.5).add_(EPS)
    if isinstance(S.neg_lr, float):
        p.addcdiv_(m, denom, value=S.neg_lr / bc1)  # −(lr / bc1): the same double torch computes
    else:
        p.add_(torch.mul(m, S.full([-(c.lr / bc1) for c in S.configs])).div_(denom))


def train_group(configs: list[RunConfig], return_params: bool = False, compile: bool = False,
                fast: bool | None = None, stop_on: str | None = None):
    """Train same-shaped configs as one batched model. Returns (results, params) where params is, with
    return_params, each member's final parameters as {name: tensor} (else None).
    fast: the hand-written backward of ``_fast_step`` (plain nets, cross-entropy or MSE); None: wherever
    it applies and compile=False; False: autograd (``torch.compile``-d forward with compile=True).
    stop_on: "warning" / "error": judge each member at every epoch end with the Monitor's rules on
    per-member statistics (``deepdiag.engines.stop``) and end it there when a finding that severe appears."""
    c0 = configs[0]
    if any(shape_key(c) != shape_key(c0) for c in configs) or shape_key(c0) is None:
        raise ValueError("train_group needs configs that share one vectorizable shape_key")
    start = time.perf_counter()
    ds = dataset(c0.dataset, c0.n_train, c0.data_seed)
    model, inits = _initial_params(configs, ds)
    device, dtype = inits[0]["out.weight"].device, inits[0]["out.weight"].dtype
    x, y, x_val, y_val = _prepare(ds, device, dtype)
    kind = loss_kind(ds.task, ds.out_features)
    n, N = len(x), len(configs)
    batch = n if c0.batch_size is None else min(c0.batch_size, n)
    can_fast = not c0.residual and kind in ("ce", "mse")
    if fast and not can_fast:
        raise ValueError("fast=True needs a plain (non-residual) net with a cross-entropy or MSE loss")
    fast = can_fast and not compile if fast is None else fast
    S = _Stack(configs, model, inits, n, c0.optimizer)
    del inits
    act = ACT_FORWARD[c0.activation]
    shuffles = [torch.Generator().manual_seed(c.seed) for c in configs]
    masks = torch.Generator(device=device).manual_seed(
        int.from_bytes(hashlib.sha256(",".join(c.hash for c in configs).encode()).digest()[:7], "big"))

    def mask(h):  # each member's own inverted-dropout keep mask: True with probability 1 − p
        return torch.rand(h.shape, generator=masks, device=h.device, dtype=h.dtype) >= _per(S.p, h)

    def loss_fn(P, xb, yb):  # (N,) losses; the L2 term's gradient is added by _update
        drop = (lambda h: h * mask(h) / _per(1 - S.p, h)) if c0.dropout > 0 else (lambda h: h)
        return _member_loss(_forward(P, xb, c0.depth, c0.residual, act, drop), yb, kind)

    loss_fn = torch.compile(loss_fn, dynamic=False) if compile else loss_fn
    hists = [History() for _ in configs]
    final: list[dict | None] = [None] * N
    stops: list = [None] * N
    for epoch in range(1, c0.epochs + 1):
        before = _weights_now(S) if stop_on else None
        moved = None
        order = torch.stack([torch.randperm(n, generator=shuffles[m]) for m in S.members]).to(device)  # (N, n)
        losses = []
        for xb, target in _batches(x, y, order, batch, kind, fast, ds.out_features):
            if fast:
                loss = _fast_step(S, xb, target, kind, c0.depth, c0.activation, mask if c0.dropout > 0 else None)
            else:
                loss = _autograd_step(S, xb, target, loss_fn)
            _update(S)
            losses.append(loss)
            if stop_on and len(losses) == UPDATE_GAP:
                moved = (_weights_now(S), len(losses))  # the update ratio is measured over these steps
        epoch_losses = torch.stack(losses).double().cpu()  # (steps, N); host sync: once per epoch
        train = _evaluate(S, x, y, kind, c0.depth, c0.residual, c0.activation)
        val = (_evaluate(S, x_val, y_val, kind, c0.depth, c0.residual, c0.activation) if x_val is not None
               else (torch.full((len(S.members),), float("nan")),) * 2)
        table = torch.stack([t.double().cpu() for t in (*train, *val)]).tolist()  # host sync
        judged = _judge_members(S, before, moved, len(losses), x, c0) if stop_on else None
        alive = []
        for row, m in enumerate(S.members):
            h = hists[m]
            h.record_epoch(epoch, epoch_losses[:, row], *(table[k][row] for k in range(4)), x_val is not None)
            if judged is not None:
                stops[m] = first_stop(judged(row, h.steps, h.diverged_step), stop_on)
                h.stopped_early = stops[m] is not None and epoch < c0.epochs
            if h.diverged or stops[m] is not None:
                if return_params:
                    final[m] = {k: p[row].detach().clone() for k, p in S.params.items()}
            else:
                alive.append(row)
        if len(alive) < len(S.members):
            if not alive:
                break
            S.keep(alive)  # diverged (and stopped) members leave the stack
    if return_params:
        for row, m in enumerate(S.members):
            if final[m] is None:
                final[m] = {k: p[row].detach().clone() for k, p in S.params.items()}
    wall = (time.perf_counter() - start) / N  # the group's time, shared evenly
    results = []
    for c, h, stop in zip(configs, hists, stops):
        h.wall_time = wall
        results.append(result_from_history(c, h, wall, "vectorized", stop))
    return results, (final if return_params else None)


# ------------------------------------------------------------------ stop_on: per-member statistics

def _weights_now(S: _Stack) -> dict[str, torch.Tensor]:
    """A copy of every stacked weight matrix (the params are views of one flat vector)."""
    return {k: p.detach().clone() for k, p in S.params.items() if k in S.weights}


@torch.no_grad()
def _fired(S: _Stack, x: torch.Tensor, depth: int) -> dict[str, torch.Tensor]:
    """{hidden ReLU layer: (N, width) bool, the unit's output was > 0 on some row of x} (plain nets)."""
    N, fired = len(S.members), {}
    rows = max(1, 2**20 // (N * max(x.shape[1], 64)))
    for i in range(0, len(x), rows):
        h = x[i:i + rows].expand(N, *x[i:i + rows].shape)
        for d in range(depth):
            w, b = S.params[f"hidden.{d}.linear.weight"], S.params[f"hidden.{d}.linear.bias"]
            h = torch.relu(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)))
            on = (h > 0).any(dim=1)
            name = f"hidden.{d}.act"
            fired[name] = on if name not in fired else fired[name] | on
    return fired


def _judge_members(S: _Stack, before: dict, moved: tuple | None, steps: int, x: torch.Tensor, c0: RunConfig):
    """A function (row, steps so far, diverged step or None) -> that member's findings this epoch.
    `before`: the weights at the epoch's start; `moved`: (weights, k) after its first k = UPDATE_GAP
    steps, or None for a shorter epoch (then the whole epoch is the gap)."""
    now = {k: p.detach() for k, p in S.params.items() if k in S.weights}
    after, gap = moved if moved is not None else (now, steps)
    ratios = update_ratios(after, before, gap)
    norms = {k: w.norm(dim=tuple(range(1, w.dim()))) for k, w in now.items()}
    fired = _fired(S, x, c0.depth) if c0.activation == "relu" and not c0.residual else None
    biases = {f"hidden.{d}.act": S.params[f"hidden.{d}.linear.bias"] for d in range(c0.depth)} if fired else None
    ratios, norms = ({k: v.cpu() for k, v in t.items()} for t in (ratios, norms))  # host sync, once per epoch
    fired = {k: v.cpu() for k, v in fired.items()} if fired else None
    biases = {k: v.detach().cpu() for k, v in biases.items()} if biases else None
    lrs = [c.lr for c in S.configs]

    def judge(row: int, done: int, diverged_step: int | None):
        rows = member_layer_stats(row, ratios, norms, fired, len(x), biases)
        step = (diverged_step if diverged_step is not None else done) - 1  # 0-based, as Monitor steps
        return member_findings(rows, lrs[row], diverged_step, step)

    return judge
