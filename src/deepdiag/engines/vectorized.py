"""The vectorized engine: N runs of one architecture trained as one batched model.

Every member's weights are stacked, ``W: (N, fan_out, fan_in)`` and ``b: (N, fan_out)``, and applied with
``baddbmm`` to its own mini-batch ``x[idx]: (N, B, fan_in)``. The members reproduce ``dd.fit`` exactly:

- init: each member is built by ``dd.mlp(seed=config.seed)`` and its parameters are stacked;
- batch order: each member has its own ``torch.Generator().manual_seed(seed)`` and ``randperm(n)`` per
  epoch, as ``fit`` does; the last partial batch is included;
- loss: each member's loss is the mean over *its* batch; the batched objective is their **sum**, so every
  member's gradient is exactly its own (a mean over N·B rows would divide each gradient by N);
- L2: ``λ/(2n)·Σw²`` per member, added to its batch loss; weight decay on weights only;
- optimizers: SGD (momentum buffer = the first gradient, as torch's), Adam and AdamW written out on the
  stacked tensors with per-member ``lr``, ``momentum``, ``λ`` and weight decay, following
  ``torch.optim``'s foreach formulas (bias corrections in Python floats, ``eps`` after ``√v/√bc2``);
- evaluation: at the end of each epoch, in eval mode, on the whole training and validation sets; the
  batch losses are read in one host sync per epoch (never ``.item()`` in the step loop);
- divergence: the first non-finite batch loss of a member marks it diverged at that step; like ``fit``
  it finishes that epoch and stops. It is then removed from the stack, so its NaN cannot reach the
  others (nothing couples the members anyway: bmm, the per-row loss and the per-member updates are all
  member-separable).

Dropout masks come from one generator for the whole stack (each member gets its own masks, but they are
not ``fit``'s masks), so with dropout the engine equals ``local`` in distribution only.

Vectorizable: same data set / n_train / data_seed, width, depth, activation, residual, optimizer, batch
size, epochs, dtype, device; no early stopping (``patience=None``); no normalisation layers. Other runs
go to the local loop.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..models import ACTIVATIONS
from ..regularization import weight_parameters
from ..sweep import RunConfig, RunResult, metrics_from_history, versions
from ..train import History, _prepare
from . import Engine
from .local import build_model, dataset, train_run

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam / AdamW defaults, as dd.fit uses them


def shape_key(c: RunConfig) -> tuple | None:
    """Configs with the same key train as one batched model; None: not vectorizable."""
    if c.patience is not None or c.norm is not None:
        return None
    return (c.dataset, c.n_train, c.data_seed, c.width, c.depth, c.activation, c.residual, c.optimizer,
            c.batch_size, c.epochs, c.dtype, c.device, c.dropout > 0)


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

    def __init__(self, max_members: int = 128, compile: bool = False):
        self.max_members, self.compile = max_members, compile

    def run(self, configs: list[RunConfig]) -> Iterator[RunResult]:
        groups, rest = group(configs)
        for g in groups:
            for i in range(0, len(g), self.max_members):
                chunk = g[i:i + self.max_members]
                if len(chunk) == 1:
                    rest.append(chunk[0])
                    continue
                try:
                    results, _ = train_group(chunk, compile=self.compile)
                except Exception:  # e.g. out of memory: the reference loop records each run's fate
                    results = [train_run(c) for c in chunk]
                yield from results
        for c in rest:
            yield train_run(c)


# ------------------------------------------------------------------------------------ batched model

def _per(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-member vector (N,) shaped to broadcast against a stacked tensor (N, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


class _Stack:
    """The stacked parameters, optimizer state and per-member knobs of the members still training."""

    def __init__(self, configs, models, device, dtype):
        names = [n for n, _ in models[0].named_parameters()]
        weight_ids = {id(p) for p in weight_parameters(models[0])}
        self.weights = {n for n, p in models[0].named_parameters() if id(p) in weight_ids}
        self.params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
                       .requires_grad_() for n in names}  # name -> (N, *shape)
        vec = lambda f, dt=dtype: torch.tensor([f(c) for c in configs], dtype=dt, device=device)  # noqa: E731
        self.lr, self.lr64 = vec(lambda c: c.lr), vec(lambda c: c.lr, torch.float64)
        self.momentum, self.wd = vec(lambda c: c.momentum), vec(lambda c: c.weight_decay)
        self.wd64 = vec(lambda c: c.weight_decay, torch.float64)
        self.l2 = vec(lambda c: c.l2, torch.float64)  # λ, turned into λ/(2n) by the caller
        self.p = vec(lambda c: c.dropout)
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.step = 0
        self.members = list(range(len(configs)))  # original index of each row still training

    def keep(self, rows: list[int]) -> None:
        """Drop every member not in `rows` (positions in the current stack)."""
        idx = torch.tensor(rows, device=self.lr.device)
        self.params = {n: p.detach().index_select(0, idx).requires_grad_() for n, p in self.params.items()}
        for n in ("lr", "lr64", "momentum", "wd", "wd64", "l2", "p"):
            setattr(self, n, getattr(self, n).index_select(0, idx))
        self.state = {n: {k: t.index_select(0, idx) for k, t in s.items()} for n, s in self.state.items()}
        self.members = [self.members[r] for r in rows]


def _forward(P: dict, h: torch.Tensor, depth: int, residual: bool, act, drop) -> torch.Tensor:
    """The MLP of ``dd.mlp`` on stacked parameters. h: (N, B, in) -> (N, B, out).
    drop(h) applies each member's dropout (identity in eval mode). Residual nets here have no norm
    layer, so, as in ``deepdiag.models``, each branch is scaled by 1/sqrt(depth)."""
    alpha = depth ** -0.5 if residual else 1.0  # the same float deepdiag.models.MLP uses
    for i in range(depth):
        w, b = P[f"hidden.{i}.linear.weight"], P[f"hidden.{i}.linear.bias"]  # (N, out, in), (N, out)
        if not residual:
            h = drop(act(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))))  # (N, B, width)
        else:
            proj = P.get(f"hidden.{i}.proj.weight")
            skip = torch.bmm(h, proj.transpose(1, 2)) if proj is not None else h
            branch = drop(torch.baddbmm(b.unsqueeze(1), act(h), w.transpose(1, 2)))
            h = skip + (branch if alpha == 1.0 else alpha * branch)
    return torch.baddbmm(P["out.bias"].unsqueeze(1), h, P["out.weight"].transpose(1, 2))  # (N, B, out)


def _member_loss(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Each member's mean loss over its own rows: out (N, B, C), y (N, B[, k]) -> (N,)."""
    N, B = out.shape[:2]
    if kind == "ce":
        return F.cross_entropy(out.reshape(N * B, -1), y.reshape(N * B), reduction="none").view(N, B).mean(1)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(out.squeeze(-1), y.to(out.dtype), reduction="none").mean(1)
    return F.mse_loss(out, y, reduction="none").mean(dim=(1, 2))


@torch.no_grad()
def _evaluate(S: _Stack, x, y, kind, depth, residual, act) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member (mean loss, accuracy) on the whole (x, y) in eval mode, as (N,) device tensors."""
    N = len(S.members)
    rows = max(1, 2**24 // (N * max(S.params["out.weight"].shape[-1], x.shape[1], 64)))
    total = torch.zeros(N, dtype=torch.float64, device=x.device)
    correct = torch.zeros(N, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), rows):
        xb, yb = x[i:i + rows], y[i:i + rows]
        out = _forward(S.params, xb.expand(N, *xb.shape), depth, residual, act, lambda h: h)
        total += _member_loss(out, yb.expand(N, *yb.shape), kind).double() * len(xb)
        if kind != "mse":
            pred = out.argmax(-1) if out.shape[-1] > 1 else (out.squeeze(-1) > 0).long()
            correct += (pred == yb).sum(1).double()
    acc = correct / len(x) if kind != "mse" else torch.full_like(total, float("nan"))
    return total / len(x), acc


@torch.no_grad()
def _update(S: _Stack, grads: dict, optimizer: str) -> None:
    """One optimizer step on every member, with torch.optim's formulas and per-member knobs."""
    S.step += 1
    for name, p in S.params.items():
        g, st, is_w = grads[name], S.state.setdefault(name, {}), name in S.weights
        if optimizer == "sgd":
            d = g.add(p * _per(S.wd, p)) if is_w else g  # torch: grad + wd·p (weights only)
            if "buf" not in st:
                st["buf"] = d.clone()  # the first step's buffer is the gradient itself
            else:
                st["buf"].mul_(_per(S.momentum, p)).add_(d)
            p.addcmul_(_per(-S.lr, p), st["buf"])  # p - lr·buf
            continue
        if optimizer == "adam" and is_w:
            g = g.add(p * _per(S.wd, p))  # Adam: L2-style decay enters the gradient
        elif optimizer == "adamw" and is_w:
            p.mul_(_per((1 - S.lr64 * S.wd64).to(p.dtype), p))  # AdamW: decoupled decay
        if "m" not in st:
            st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
        st["m"].lerp_(g, 1 - BETAS[0])
        st["v"].mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
        bc1, bc2 = 1 - BETAS[0] ** S.step, 1 - BETAS[1] ** S.step
        step_size = _per((-(S.lr64 / bc1)).to(p.dtype), p)
        denom = (st["v"].sqrt() / bc2**0.5).add_(EPS)
        p.add_(step_size * st["m"] / denom)  # addcdiv: p + value·m / denom


def train_group(configs: list[RunConfig], return_params: bool = False, compile: bool = False):
    """Train same-shaped configs as one batched model. Returns (results, params) where params is, with
    return_params, each member's final parameters as {name: tensor} (else None)."""
    c0 = configs[0]
    if any(shape_key(c) != shape_key(c0) for c in configs) or shape_key(c0) is None:
        raise ValueError("train_group needs configs that share one vectorizable shape_key")
    start = time.perf_counter()
    ds = dataset(c0.dataset, c0.n_train, c0.data_seed)
    models = [build_model(c, ds) for c in configs]
    device, dtype = next(models[0].parameters()).device, next(models[0].parameters()).dtype
    x, y, x_val, y_val = _prepare(ds, device, dtype)
    kind = "mse" if ds.task == "regression" else ("ce" if ds.out_features > 1 else "bce")
    n, N = len(x), len(configs)
    batch = n if c0.batch_size is None else min(c0.batch_size, n)
    S = _Stack(configs, models, device, dtype)
    del models
    l2_on = bool((S.l2 > 0).any())
    act = ACTIVATIONS[c0.activation]()
    shuffles = [torch.Generator().manual_seed(c.seed) for c in configs]
    masks = torch.Generator(device=device).manual_seed(
        int.from_bytes(hashlib.sha256(",".join(c.hash for c in configs).encode()).digest()[:7], "big"))

    def drop(h):  # each member's own inverted-dropout mask
        keep = torch.rand(h.shape, generator=masks, device=h.device, dtype=h.dtype) >= _per(S.p, h)
        return h * keep / _per(1 - S.p, h)

    def step_fn(P, xb, yb, l2c):
        loss = _member_loss(_forward(P, xb, c0.depth, c0.residual, act, drop if c0.dropout > 0 else
                                     (lambda h: h)), yb, kind)  # (N,)
        objective = loss
        if l2_on:
            squares = sum(P[w].pow(2).sum(dim=tuple(range(1, P[w].dim()))) for w in sorted(S.weights))
            objective = loss + l2c * squares
        return loss, objective

    step = torch.compile(step_fn, dynamic=False) if compile else step_fn
    hists = [History() for _ in configs]
    final: list[dict | None] = [None] * N
    for epoch in range(1, c0.epochs + 1):
        order = torch.stack([torch.randperm(n, generator=shuffles[m]) for m in S.members]).to(device)  # (N, n)
        l2c = (S.l2 / (2.0 * n)).to(dtype)
        losses = []
        for i in range(0, n, batch):
            idx = order[:, i:i + batch]  # (N, B): each member's own rows
            names = list(S.params)
            loss, objective = step(S.params, x[idx], y[idx], l2c)
            grads = torch.autograd.grad(objective.sum(), [S.params[k] for k in names])  # sum, not mean
            _update(S, dict(zip(names, grads)), c0.optimizer)
            losses.append(loss.detach())
        epoch_losses = torch.stack(losses).double().cpu()  # (steps, N); host sync: once per epoch
        train = _evaluate(S, x, y, kind, c0.depth, c0.residual, act)
        val = (_evaluate(S, x_val, y_val, kind, c0.depth, c0.residual, act) if x_val is not None
               else (torch.full((len(S.members),), float("nan")),) * 2)
        table = torch.stack([t.double().cpu() for t in (*train, *val)]).tolist()  # host sync
        alive = []
        for row, m in enumerate(S.members):
            h, col = hists[m], epoch_losses[:, row]
            tl, ta, vl, va = (table[k][row] for k in range(4))
            h.epoch.append(epoch)
            h.batch_loss.append(float(col.mean()))
            h.train_loss.append(tl)
            h.train_acc.append(ta)
            h.val_loss.append(vl)
            h.val_acc.append(va)
            score = vl if x_val is not None else tl
            if score == score and abs(score) != float("inf") and score < h.best_val_loss:
                h.best_epoch, h.best_val_loss = epoch, score
            h.steps += len(losses)
            bad = (~torch.isfinite(col)).nonzero()
            if len(bad):
                h.diverged, h.diverged_step = True, h.steps - len(losses) + int(bad[0]) + 1
                if return_params:
                    final[m] = {k: p[row].detach().clone() for k, p in S.params.items()}
            else:
                alive.append(row)
        if len(alive) < len(S.members):
            if not alive:
                break
            S.keep(alive)  # diverged members leave the stack
    if return_params:
        for row, m in enumerate(S.members):
            if final[m] is None:
                final[m] = {k: p[row].detach().clone() for k, p in S.params.items()}
    wall = (time.perf_counter() - start) / N  # the group's time, shared evenly
    vers = versions()
    results = []
    for c, h in zip(configs, hists):
        h.wall_time = wall
        d = h.to_dict()
        results.append(RunResult(c, "diverged" if h.diverged else "done", d, metrics_from_history(d),
                                 None, wall, vers, "vectorized"))
    return results, (final if return_params else None)
