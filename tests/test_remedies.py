"""Proven remedies: every pathology scenario is diagnosed, the remedy applied exactly as ``Finding.fix``
states it, the model retrained with the same seed and step budget; the finding must be gone and the
validation accuracy better. Plain-torch models throughout (nn.Sequential), digits / breast cancer."""
import copy
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import deepdiag as dd
from deepdiag.monitor import Monitor

REPAIRS: dict = {}  # scenario -> (before acc, after acc, fix): printed by the last test


@dataclass
class Case:
    id: str
    code: str
    data: str = "digits"
    standardize: bool = True
    act: str = "relu"
    width: int = 64
    depth: int = 2  # hidden layers
    out: int = 10
    head: str | None = None  # "softmax", "sigmoid", "relu" after the last Linear
    init: str | None = None  # None: PyTorch default; "zeros", "std:0.01", "bias:-5"
    loss: str = "cross_entropy"
    opt: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    bs: int = 32
    steps: int = 300
    frozen: list = field(default_factory=list)  # layer names left out of the optimizer
    clip: float | None = None


CASES = [
    Case("oscillating_batch1", "oscillating_loss", lr=0.1, bs=1),
    Case("oscillating_large_lr", "oscillating_loss", lr=1.0),
    Case("stalled_tiny_lr", "stalled_updates", lr=1e-5),
    Case("frozen_layer", "stalled_updates", frozen=["0"], lr=0.05),
    Case("double_softmax", "output_loss_mismatch", head="softmax"),
    Case("relu_into_cross_entropy", "output_loss_mismatch", head="relu"),
    Case("double_sigmoid", "output_loss_mismatch", data="breast_cancer", out=1, head="sigmoid",
         loss="bce_with_logits"),
    Case("single_unit_cross_entropy", "output_loss_mismatch", data="breast_cancer", out=1),
    Case("unscaled_breast_cancer", "unscaled_inputs", data="breast_cancer", standardize=False, act="tanh", lr=0.01),
    Case("vanishing_small_tanh_init", "vanishing_gradients", act="tanh", depth=6, init="std:0.01"),
    Case("symmetric_zero_init", "symmetric_units", act="tanh", init="zeros"),
    Case("dead_negative_bias", "dead_units", init="bias:-5"),
    Case("saturated_large_tanh_init", "saturated_units", act="tanh", init="std:1.0"),
]

_DATA = {}


def data(name, standardize):
    key = (name, standardize)
    if key not in _DATA:
        _DATA[key] = dd.data.load(name, seed=0, standardize=standardize)
    return _DATA[key]


def build(c: Case) -> nn.Sequential:
    torch.manual_seed(0)
    d = data(c.data, c.standardize)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[c.act]
    layers, n = [], d.x_train.shape[1]
    for _ in range(c.depth):
        layers += [nn.Linear(n, c.width), act()]
        n = c.width
    layers.append(nn.Linear(n, c.out))
    if c.head:
        layers.append({"softmax": nn.Softmax(dim=1), "sigmoid": nn.Sigmoid(), "relu": nn.ReLU()}[c.head])
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if not isinstance(m, nn.Linear):
                continue
            if c.init == "zeros":
                m.weight.zero_(), m.bias.zero_()
            elif c.init and c.init.startswith("std:"):
                m.weight.normal_(0, float(c.init[4:])), m.bias.zero_()
            elif c.init and c.init.startswith("bias:") and m is not model[len(model) - 1]:
                m.bias.fill_(float(c.init[5:]))
    return model


def loss_of(c: Case):
    return {"cross_entropy": nn.CrossEntropyLoss(), "bce_with_logits": nn.BCEWithLogitsLoss()}[c.loss]


def targets(c: Case, y):
    # one output unit: float 0/1 targets (with cross-entropy these are the soft labels that make it 0)
    return y.float().reshape(-1, 1) if c.loss == "bce_with_logits" or c.out == 1 else y


def accuracy(c: Case, model, x, y) -> float:
    with torch.no_grad():
        out = model(x)
        if not torch.isfinite(out).all():
            return 0.0
        pred = (out.reshape(-1) > (0.5 if c.head == "sigmoid" else 0.0)).long() if out.shape[1] == 1 else out.argmax(1)
        return float((pred == y).float().mean())


def run(c: Case):
    """Train c for c.steps steps with a Monitor; (codes at >= warning, their findings, val accuracy)."""
    d = data(c.data, c.standardize)
    model = build(c)
    loss_fn = loss_of(c)
    pre = dd.checkup(model, d.x_train[:256], targets(c, d.y_train[:256]), loss_fn=loss_fn)
    params = [p for n, m in model.named_children() if n not in c.frozen for p in m.parameters()]
    opt = (torch.optim.SGD(params, lr=c.lr, momentum=c.momentum) if c.opt == "sgd"
           else torch.optim.Adam(params, lr=c.lr))
    g = torch.Generator().manual_seed(0)
    with Monitor(model, loss_fn=loss_fn, optimizer=opt) as mon:
        for _ in range(c.steps):
            idx = torch.randint(0, len(d.x_train), (c.bs,), generator=g)
            loss = loss_fn(model(d.x_train[idx]), targets(c, d.y_train[idx]))
            opt.zero_grad()
            loss.backward()
            if c.clip:
                nn.utils.clip_grad_norm_(model.parameters(), c.clip)
            opt.step()
            mon.step(loss)
        found = mon.diagnose()
    found = pre.findings + found
    return found, accuracy(c, model, d.x_val, d.y_val)


def apply(c: Case, fix: dict) -> Case:
    """The remedy exactly as Finding.fix states it."""
    c = copy.deepcopy(c)
    for k, v in fix.items():
        if k == "init":
            c.init = {"he": None, "xavier": None}.get(v, v)  # PyTorch default is replaced below
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
        elif k == "standardize_inputs":
            c.standardize = True
        elif k == "clip_grad_norm":
            c.clip = v
        else:
            raise AssertionError(f"fix key {k!r} has no applier")
    return c


_build = build


def build(c: Case) -> nn.Sequential:  # noqa: F811  (adds the scheme re-initialisation of a fix)
    if c.init and c.init.startswith("scheme:"):
        scheme = c.init[7:]
        model = _build(Case(**{**c.__dict__, "init": None}))
        torch.manual_seed(0)
        dd.init_weights(model, scheme)
        return model
    return _build(c)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_remedy_repairs(case):
    found, before = run(case)
    hits = [f for f in found if f.code == case.code and f.severity in ("warning", "error")]
    assert hits, f"{case.id}: no {case.code} in {[(f.code, f.severity) for f in found]}"
    fix = {}
    for f in hits:
        assert f.fix, f"{case.id}: {f.code} has no machine-readable fix"
        fix.update(f.fix)
    fixed = apply(case, fix)
    found2, after = run(fixed)
    REPAIRS[case.id] = (before, after, fix)
    assert case.code not in {f.code for f in found2 if f.severity in ("warning", "error")}, \
        [str(f) for f in found2 if f.code == case.code]
    assert after > before, (before, after, fix)


def test_repair_rate_report():
    """Prints the table for the docs (run after the scenarios, -s to see it)."""
    for k, (b, a, fix) in REPAIRS.items():
        print(f"{k:28s} {b:.3f} -> {a:.3f} {fix}")
