"""Proven remedies: every pathology scenario is diagnosed, the remedy applied exactly as ``Finding.fix``
states it, the model retrained with the same seed and step budget; the finding must be gone, no other
warning may appear, and the validation metric must improve. Plain-torch models throughout
(``nn.Sequential`` and a hand-written residual MLP), digits / breast cancer, a ``dd.Monitor`` in a plain
training loop with per-epoch curves, ``dd.checkup`` before training. The repair rate over all scenarios is
tabulated by ``benchmarks/repair_rate.py``."""
import copy
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import deepdiag as dd
from deepdiag.monitor import Monitor

@dataclass
class Case:
    id: str
    code: str
    data: str = "digits"
    n_train: int | None = None
    standardize: bool = True
    labels: str = "01"  # binary targets as 0/1, or "pm1": ±1 (outside BCE's range)
    act: str = "relu"
    width: int = 64
    depth: int = 2  # hidden layers
    out: int = 10
    head: str | None = None  # "softmax", "sigmoid", "relu" after the last Linear
    init: str | None = None  # None: PyTorch default; "zeros", "std:0.01", "bias:-5", "scheme:he"
    residual: bool = False
    loss: str = "cross_entropy"
    opt: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    bs: int = 32
    steps: int = 300
    epochs: int = 5  # the steps are split into this many epochs, each ending with train/val curves
    frozen: list = field(default_factory=list)  # layer names left out of the optimizer
    clip: float | None = None
    metric: str = "acc"  # what "improved" means: validation accuracy up, or "val_loss" down


CASES = [
    Case("divergence_large_lr_regression", "divergence", data="teacher", out=1, loss="mse", act="tanh", lr=1.0,
         metric="val_loss"),
    Case("dead_units_during_training_large_lr", "dead_units", lr=0.5, momentum=0.9),
    Case("stalled_tiny_lr", "stalled_updates", lr=1e-5),
    Case("frozen_layer", "stalled_updates", frozen=["0"], lr=0.05),
    Case("double_softmax", "output_loss_mismatch", head="softmax"),
    Case("relu_into_cross_entropy", "output_loss_mismatch", head="relu"),
    Case("double_sigmoid", "output_loss_mismatch", data="breast_cancer", out=1, head="sigmoid",
         loss="bce_with_logits"),
    Case("single_unit_cross_entropy", "output_loss_mismatch", data="breast_cancer", out=1),
    Case("nll_without_log_softmax", "output_loss_mismatch", loss="nll"),
    Case("unbounded_into_bce", "output_loss_mismatch", data="breast_cancer", out=1, loss="bce"),
    Case("class_count", "output_loss_mismatch", out=8),
    Case("target_range_pm1", "output_loss_mismatch", data="breast_cancer", out=1, loss="bce_with_logits",
         labels="pm1"),
    Case("unscaled_breast_cancer", "unscaled_inputs", data="breast_cancer", standardize=False, act="tanh", lr=0.01),
    Case("vanishing_small_tanh_init", "vanishing_gradients", act="tanh", depth=6, init="std:0.01"),
    Case("vanishing_activations_small_relu_init", "vanishing_activations", depth=8, init="std:0.05"),
    Case("exploding_gradients_large_relu_init", "exploding_gradients", depth=8, init="std:0.4", lr=0.01),
    Case("exploding_activations_large_relu_init", "exploding_activations", depth=8, init="std:0.4", lr=0.01),
    Case("symmetric_zero_init", "symmetric_units", act="tanh", init="zeros"),
    Case("dead_negative_bias", "dead_units", init="bias:-5"),
    Case("saturated_large_tanh_init", "saturated_units", act="tanh", init="std:1.0"),
    Case("overfitting_small_train_set", "overfitting", n_train=100, width=256, opt="adam", lr=0.01, steps=400,
         epochs=20, metric="val_loss"),
    Case("underfitting_weight_decay", "underfitting", weight_decay=0.5, lr=0.05),
    Case("underfitting_slow_lr", "underfitting", lr=2e-3),
]

_DATA = {}


def data(c: Case):
    key = (c.data, c.standardize, c.n_train)
    if key not in _DATA:
        _DATA[key] = dd.data.load(c.data, seed=0, standardize=c.standardize, n_train=c.n_train)
    return _DATA[key]


class Residual(nn.Module):
    """h + α·W·act(h), α = 1/√depth: the pre-activation block of dd.mlp(..., residual=True), which the
    'residual' remedy names, written in plain torch."""

    def __init__(self, width, act, depth):
        super().__init__()
        self.act, self.linear, self.alpha = act(), nn.Linear(width, width), depth ** -0.5

    def forward(self, h):
        return h + self.alpha * self.linear(self.act(h))


def build(c: Case) -> nn.Sequential:
    torch.manual_seed(0)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[c.act]
    layers, n = [], data(c).x_train.shape[1]
    for i in range(c.depth):
        if c.residual and i > 0:
            layers.append(Residual(c.width, act, c.depth))
        else:
            layers += [nn.Linear(n, c.width), act()]
        n = c.width
    layers.append(nn.Linear(n, c.out))
    if c.head:
        layers.append({"softmax": nn.Softmax(dim=1), "sigmoid": nn.Sigmoid(), "relu": nn.ReLU()}[c.head])
    model = nn.Sequential(*layers)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        if c.init and c.init.startswith("scheme:"):
            dd.init_weights(model, c.init[7:])
        for m in linears:
            if c.init == "zeros":
                m.weight.zero_(), m.bias.zero_()
            elif c.init and c.init.startswith("std:"):
                m.weight.normal_(0, float(c.init[4:])), m.bias.zero_()
            elif c.init and c.init.startswith("bias:") and m is not linears[-1]:
                m.bias.fill_(float(c.init[5:]))
    return model


def loss_of(c: Case):
    return {"cross_entropy": nn.CrossEntropyLoss(), "bce_with_logits": nn.BCEWithLogitsLoss(),
            "nll": nn.NLLLoss(), "bce": nn.BCELoss(), "mse": nn.MSELoss()}[c.loss]


def targets(c: Case, y):
    if c.loss == "mse":  # regression: y is already float (n, 1)
        return y
    if not (c.loss in ("bce_with_logits", "bce") or c.out == 1):
        return y
    # one output unit: float targets (with cross-entropy these are the soft labels that make it 0)
    y = y.float().reshape(-1, 1)
    return 2 * y - 1 if c.labels == "pm1" else y


def accuracy(c: Case, model, x, y) -> float:
    if c.loss == "mse":
        return math.nan
    with torch.no_grad():
        out = model(x)
        if not torch.isfinite(out).all():
            return 0.0
        if out.shape[1] == 1:
            pred = (out.reshape(-1) > (0.5 if c.head == "sigmoid" else 0.0)).long()
        else:
            pred = out.argmax(1)
        return float((pred == y).float().mean())


def curve_point(c: Case, model, loss_fn, x, y) -> float:
    with torch.no_grad():
        try:
            return float(loss_fn(model(x), targets(c, y)))
        except (RuntimeError, IndexError, ValueError):
            return math.nan


@dataclass
class Outcome:
    findings: list
    acc: float
    val_loss: float
    train_curve: list

    def score(self, metric: str) -> float:
        """Higher is better."""
        if metric == "acc":
            return self.acc
        return -self.val_loss if math.isfinite(self.val_loss) else -math.inf


def run(c: Case, **monitor_kw) -> Outcome:
    """checkup, then c.steps SGD/Adam steps (mini-batches drawn with replacement) split into c.epochs
    epochs under a Monitor given the loss and optimizer; each epoch hands the monitor the full training
    and validation losses. A loss that cannot run (class ids out of range, outputs outside BCE's range)
    ends training: the model is scored as it stands. monitor_kw go to the Monitor (e.g. on_finding)."""
    d = data(c)
    model = build(c)
    loss_fn = loss_of(c)
    pre = dd.checkup(model, d.x_train[:256], targets(c, d.y_train[:256]), loss_fn=loss_fn)
    params = [p for n, m in model.named_children() if n not in c.frozen for p in m.parameters()]
    opt = (torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay) if c.opt == "sgd"
           else torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay))
    g = torch.Generator().manual_seed(0)
    per_epoch = c.steps // c.epochs
    chance = {"n_classes": d.n_classes} if d.task == "classification" else {"baseline": float(d.y_train.var())}
    train_curve = []
    with Monitor(model, loss_fn=loss_fn, optimizer=opt, **chance, **monitor_kw) as mon:
        try:
            for _ in range(c.epochs):
                for _ in range(per_epoch):
                    idx = torch.randint(0, len(d.x_train), (c.bs,), generator=g)
                    loss = loss_fn(model(d.x_train[idx]), targets(c, d.y_train[idx]))
                    opt.zero_grad()
                    loss.backward()
                    if c.clip:
                        nn.utils.clip_grad_norm_(model.parameters(), c.clip)
                    opt.step()
                    mon.step(loss)
                train_curve.append(curve_point(c, model, loss_fn, d.x_train, d.y_train))
                mon.epoch(train_loss=train_curve[-1], val_loss=curve_point(c, model, loss_fn, d.x_val, d.y_val))
        except (RuntimeError, IndexError, ValueError):
            pass  # the loss cannot run at all: checkup has said why
        found = mon.diagnose()
    val_loss = curve_point(c, model, loss_fn, d.x_val, d.y_val)
    return Outcome(pre.findings + found, accuracy(c, model, d.x_val, d.y_val), val_loss, train_curve)


def apply(c: Case, fix: dict) -> Case:
    """The remedy exactly as Finding.fix states it (keys: deepdiag.findings.FIX_KEYS)."""
    c = copy.deepcopy(c)
    for k, v in fix.items():
        if k == "init":
            c.init = f"scheme:{v}"
        elif k == "lr":
            c.lr = v
        elif k == "lr_factor":
            c.lr *= v
        elif k == "batch_size":
            c.bs = v
        elif k == "unfreeze":
            c.frozen = [n for n in c.frozen if n not in v]
        elif k == "replace_output":
            assert v == "identity"
            c.head = None
        elif k == "loss":
            c.loss = v
        elif k == "out_features":
            c.out = v
        elif k == "target_range":
            assert v == [0, 1]
            c.labels = "01"
        elif k == "standardize_inputs":
            c.standardize = True
        elif k == "clip_grad_norm":
            c.clip = v
        elif k == "weight_decay":
            c.weight_decay = v
        elif k == "epochs":  # stop at that epoch: the same seed replays the same epochs
            c.steps = v * (c.steps // c.epochs)
            c.epochs = v
        elif k == "residual":
            c.residual = v
        else:
            raise AssertionError(f"fix key {k!r} has no applier")
    return c


def serious(findings, code=None):
    return [f for f in findings if f.severity in ("warning", "error") and (code is None or f.code == code)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_remedy_repairs(case):
    before = run(case)
    hits = serious(before.findings, case.code)
    assert hits, f"{case.id}: no {case.code} in {[(f.code, f.severity) for f in before.findings]}"
    fix = {}
    for f in hits:
        assert f.fix, f"{case.id}: {f.code} has no machine-readable fix"
        fix.update(f.fix)
    after = run(apply(case, fix))
    assert not serious(after.findings), [str(f) for f in serious(after.findings)]
    assert after.score(case.metric) > before.score(case.metric), (before.score(case.metric),
                                                                  after.score(case.metric), fix)


def test_degradation_remedy():
    """A deep plain net trains worse than a shallow one (compare_depths); the stated remedy, residual
    connections, makes the deep net at least as good on the training set (judged by the *plain* rule,
    not the residual one that only informs) and better on validation."""
    shallow = Case("shallow", "degradation", depth=2, lr=0.02, momentum=0.9, steps=400, epochs=5)
    deep = Case("deep", "degradation", depth=30, lr=0.02, momentum=0.9, steps=400, epochs=5)
    s, d = run(shallow), run(deep)
    (f,) = dd.compare_depths({2: s.train_curve, 30: d.train_curve})
    assert f.code == "degradation" and f.severity == "warning" and f.fix == {"residual": True}
    fixed = run(apply(deep, f.fix))
    assert dd.compare_depths({2: s.train_curve, 30: fixed.train_curve}) == []
    assert fixed.acc > d.acc


# what a remedy's text must name for each fix key: the remedy a reader follows and the fix a program
# applies are the same advice (a value of None: the key's name is enough)
_WORDS = {
    "init": lambda v: {"he": "He", "xavier": "Xavier", "orthogonal": "orthogonal", "lecun": "LeCun",
                       "lsuv": "unit variance"}[v],
    "activation": lambda v: v.replace("_", ""),
    "norm": lambda v: "norm",
    "residual": lambda v: "residual",
    "replace_output": lambda v: "",
    "out_features": lambda v: str(v),
    "unfreeze": lambda v: "" if v is True else v[0],
    "lr": lambda v: f"{v:.3g}",
    "lr_factor": lambda v: "",
    "clip_grad_norm": lambda v: "clip",
    "warmup_steps": lambda v: "warm",
    "batch_size": lambda v: str(v),
    "weight_decay": lambda v: "decay",
    "optimizer": lambda v: v,
    "epochs": lambda v: str(v),
    "loss": lambda v: {"cross_entropy": "cross", "bce_with_logits": "BCE", "mse": "MSE"}[v],
    "standardize_inputs": lambda v: "standardi",
    "standardize_targets": lambda v: "standardi",
    "target_range": lambda v: "",
    "drop_disputed_labels": lambda v: "disputed",
}


def remedy_disagrees(f) -> list[str]:
    """The fix keys whose value the remedy text does not name (case-insensitive)."""
    text = f.remedy.lower().replace("-", "").replace("_", "")
    return [k for k, v in (f.fix or {}).items() if _WORDS[k](v).lower().replace("_", "") not in text]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_remedy_text_and_fix_agree(case):
    found = [f for f in run(case).findings if f.fix]
    assert found
    for f in found:
        assert not remedy_disagrees(f), (f.code, f.fix, f.remedy)
