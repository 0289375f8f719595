"""The training loop every program runs, plain or watched by deepdiag, and the kill criterion.

``train(program, seed, watch=False)`` is an ordinary PyTorch loop: shuffled mini-batches from a
seeded generator, forward, loss, ``zero_grad``, backward, ``step``; after each epoch the validation
loss and metric. With ``watch=True`` it is used as deepdiag's README shows: ``dd.checkup(model, x, y,
loss_fn)`` on the first training batch before training, and ``dd.Monitor(model, loss_fn=...,
optimizer=..., n_classes=...)`` fed the batch loss at every step and the curves at every epoch, then
``diagnose()``. deepdiag must not change training (checkup forks the RNG and restores the model), so the
watched run reaches the same metric as the plain one; the runner records both and flags a difference.

Kill criterion (``killed``): a mutant is a real fault when, at seed 0 and the base's budget, its
final training loss is non-finite, or its metric is worse than the base's mean over seeds 0, 1, 2 by
more than ``max(3 * sd, floor)``, where sd is the base's seed-to-seed standard deviation and the floor
(0.02 accuracy, or 10 % of the base's validation MSE) keeps a base whose seeds agree to the last digit
from turning a rounding difference into a "fault".
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

import deepdiag as dd
from deepdiag.findings import severity_rank

from .programs import Program

ACC_FLOOR, MSE_FLOOR = 0.02, 0.10
WARNING = severity_rank("warning")


@dataclass
class Run:
    """What one training run produced. metric: val accuracy or val MSE (base units); codes: deepdiag
    codes at severity >= warning (checkup and Monitor together), info: the info-level ones."""
    program: str
    seed: int
    metric: float
    train_loss: float
    finite: bool
    steps: int
    seconds: float
    codes: list[str] = field(default_factory=list)
    checkup_codes: list[str] = field(default_factory=list)
    monitor_codes: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)


def _targets(p: Program, y: Tensor) -> Tensor:
    return y * p.target_scale + p.target_shift if p.data.task == "regression" else y


def _score(p: Program, out: Tensor, y: Tensor) -> float:
    """Validation metric in the base's units (y: the clean, unscaled validation targets)."""
    if p.data.task == "regression":
        pred = (out.reshape(y.shape) - p.target_shift) / p.target_scale
        return float(((pred - y) ** 2).mean())
    pred = p.predict(out) if p.predict is not None else out.argmax(dim=-1)
    return float((pred == y).float().mean())


def _batches(p: Program, n: int, g: torch.Generator) -> list[Tensor]:
    order = torch.randperm(n, generator=g) if p.shuffle else torch.arange(n)
    bs = min(p.batch_size, n)
    return [order[i:i + bs] for i in range(0, n, bs)]


def train(p: Program, seed: int = 0, watch: bool = False, found: list | None = None) -> Run:
    """Train `p` once; with `watch`, collect deepdiag's findings (see the module doc); `found`, when given,
    also receives every finding as ("checkup" or "monitor", ``Finding``)."""
    t0 = time.perf_counter()
    d = p.data
    model = p.model(seed)
    optimizer = p.make_optimizer(model)
    g = torch.Generator().manual_seed(seed)
    y_train, y_val = _targets(p, d.y_train), _targets(p, d.y_val)
    epochs = [_batches(p, len(d.x_train), g) for _ in range(p.epochs)]
    classes = d.n_classes if d.task != "regression" else None
    run = Run(p.name, seed, math.nan, math.nan, True, 0, 0.0)
    monitor = None
    if watch:
        first = epochs[0][0]
        report = dd.checkup(model, d.x_train[first], y_train[first], p.loss_fn)
        _collect(run, report.findings, "checkup")
        if found is not None:
            found += [("checkup", f) for f in report.findings]
        monitor = dd.Monitor(model, loss_fn=p.loss_fn, optimizer=optimizer, n_classes=classes)
    steps, last = 0, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. MSELoss broadcasting warnings in mutants
        for batches in epochs:
            model.train()
            losses, hits = [], []
            for idx in batches:
                x, y = d.x_train[idx], y_train[idx]
                out = model(x)
                loss = p.loss_fn(out, y)
                if p.zero_grad:
                    optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if monitor is not None:
                    monitor.step(loss)
                losses.append(loss.detach())
                if classes:
                    pred = p.predict(out) if p.predict is not None else out.argmax(dim=-1)
                    hits.append((pred == y).float().mean().detach())
                steps += 1
                if p.max_steps is not None and steps >= p.max_steps:
                    break
            model.eval()
            with torch.no_grad():
                out = model(d.x_val)
                val_loss = float(p.loss_fn(out, y_val))
                metric = _score(p, out, d.y_val)
            last = torch.stack(losses)
            train_loss = float(last.mean())
            if monitor is not None:
                monitor.epoch(train_loss=train_loss, val_loss=val_loss,
                              train_acc=float(torch.stack(hits).mean()) if hits else None,
                              val_acc=metric if classes else None)
            if p.max_steps is not None and steps >= p.max_steps:
                break
    run.metric, run.train_loss, run.steps = metric, train_loss, steps
    run.finite = bool(torch.isfinite(last).all()) and math.isfinite(val_loss)
    if monitor is not None:
        diagnosed = monitor.diagnose()
        _collect(run, diagnosed, "monitor")
        if found is not None:
            found += [("monitor", f) for f in diagnosed]
        monitor.close()
    run.seconds = time.perf_counter() - t0
    return run


def _collect(run: Run, findings, source: str) -> None:
    for f in findings:
        if severity_rank(f.severity) >= WARNING:
            (run.checkup_codes if source == "checkup" else run.monitor_codes).append(f.code)
            if f.code not in run.codes:
                run.codes.append(f.code)
            run.summaries.append(f"{source}: {f.severity} {f.code}: {f.summary}")
        elif f.code not in run.info:
            run.info.append(f.code)


def killed(base_metrics: list[float], metric: float, finite: bool, task: str) -> bool:
    """True when the mutant measurably hurts training (see the module doc)."""
    if not finite or not math.isfinite(metric):
        return True
    mean = sum(base_metrics) / len(base_metrics)
    sd = math.sqrt(sum((m - mean) ** 2 for m in base_metrics) / (len(base_metrics) - 1))
    return worse(metric, mean, sd, task)


def worse(metric: float, mean: float, sd: float, task: str) -> bool:
    """`metric` worse than the base's seed mean by more than max(3·sd, floor) (see the module doc)."""
    if task == "regression":
        return metric - mean > max(3 * sd, MSE_FLOOR * mean)
    return mean - metric > max(3 * sd, ACC_FLOOR)
