"""Findings about what a training setup can fit: logits squashed before cross-entropy, class ids
regressed with MSE, loss functions recognised from their autograd graph, frozen layers judged against
the run, and a run stopped before it converged. Each with a healthy control beside it; curve rules are
tested on constructed loss sequences (no chaotic run has to cross a threshold)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepdiag as dd
from deepdiag.measure.io import graph_loss_kind
from deepdiag.measure.records import LayerStats
from deepdiag.measure.weights import frozen_modules
from deepdiag.monitor import Monitor
from deepdiag.rules import Curves, judge_curves
from deepdiag.rules.curves import not_converged
from deepdiag.rules.io import bounded_logit_limits
from deepdiag.rules.updates import frozen_layers


def warned(findings):
    return {f.code for f in findings if f.severity in ("warning", "error")}


def mismatches(findings):
    return {f.evidence.get("mismatch"): f for f in findings if f.code == "output_loss_mismatch"}


def net(head=None, out=10, n_in=16):
    torch.manual_seed(0)
    layers = [nn.Linear(n_in, 32), nn.ReLU(), nn.Linear(32, out)]
    return nn.Sequential(*layers, *([head] if head is not None else []))


def batch(n=64, n_in=16, classes=10):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, n_in, generator=g), torch.randint(0, classes, (n,), generator=g)


def token_ce(out, y):
    """A user's own token loss: cross-entropy over every position of (batch, T, vocab)."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def mse_on_ids(out, y):
    """One output unit regressed onto the class id."""
    return F.mse_loss(out.reshape(-1), y.float())


# ---- loss functions recognised from the graph ----

@pytest.mark.parametrize("make, kind", [
    (lambda x, y: F.cross_entropy(x, y), "cross_entropy"),
    (lambda x, y: token_ce(x.reshape(4, 2, 5), y.reshape(4, 2)), "cross_entropy"),
    (lambda x, y: 0.5 * F.cross_entropy(x, y), "cross_entropy"),
    (lambda x, y: F.nll_loss(x, y), "nll"),
    (lambda x, y: F.mse_loss(x[:, 0], y.float()), "mse"),
    (lambda x, y: F.binary_cross_entropy_with_logits(x[:, 0], (y > 2).float()), "bce_with_logits"),
    (lambda x, y: F.cross_entropy(x, y) + F.mse_loss(x, torch.zeros_like(x)), None),  # two losses: not one kind
    (lambda x, y: (x ** 2).mean(), None),
], ids=["ce", "token_ce", "scaled_ce", "nll", "mse", "bce_logits", "sum_of_two", "not_a_loss"])
def test_graph_loss_kind(make, kind):
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.arange(8) % 5
    loss = make(x, y)
    assert graph_loss_kind(loss) == kind
    loss.backward()
    assert graph_loss_kind(loss) == kind  # node types outlive the saved tensors


# ---- bounded logits into cross-entropy ----

def test_bounded_logit_limits():
    p, floor = bounded_logit_limits(1.0, 10)
    assert p == pytest.approx(math.e / (math.e + 9)) and floor == pytest.approx(math.log(1 + 9 / math.e))
    assert floor == pytest.approx(-math.log(p))  # the loss floor is the best case's −log p


@pytest.mark.parametrize("head, loss_fn", [(nn.Sigmoid(), nn.CrossEntropyLoss()), (nn.Sigmoid(), F.cross_entropy),
                                           (nn.Tanh(), nn.CrossEntropyLoss())], ids=["sigmoid_module", "sigmoid_function", "tanh"])
def test_squashed_logits_into_cross_entropy(head, loss_fn):
    x, y = batch()
    f = mismatches(dd.checkup(net(head), x, y, loss_fn).findings)["bounded_logits"]
    assert f.severity == "warning" and f.fix == {"replace_output": "identity"}
    assert "Remove the final" in f.remedy


def test_plain_logits_into_cross_entropy_are_silent():
    x, y = batch()
    assert not warned(dd.checkup(net(), x, y, nn.CrossEntropyLoss()).findings)
    assert not warned(dd.checkup(net(), x, y, F.cross_entropy).findings)


def test_sigmoid_into_a_token_loss_function_through_the_monitor():
    """A (batch, T, vocab) output through a Sigmoid into the user's own token loss function: the Monitor
    recognises cross-entropy from the loss tensor's graph; without the Sigmoid it is silent."""
    for head, expect in ((nn.Sigmoid(), True), (None, False)):
        torch.manual_seed(0)
        emb = nn.Sequential(nn.Embedding(8, 16), nn.Linear(16, 8), *([head] if head is not None else []))
        opt = torch.optim.SGD(emb.parameters(), lr=0.01)
        x = torch.randint(0, 8, (16, 5))
        with Monitor(emb, loss_fn=token_ce, optimizer=opt) as mon:
            for _ in range(3):
                loss = token_ce(emb(x), x)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.step(loss)
            found = mismatches(mon.diagnose())
        assert ("bounded_logits" in found) is expect


# ---- class ids regressed with MSE ----

def test_mse_on_class_ids():
    x, y = batch()
    f = mismatches(dd.checkup(net(out=1), x, y, mse_on_ids).findings)["regression_on_class_ids"]
    assert f.severity == "warning" and f.fix == {"loss": "cross_entropy", "out_features": int(y.max()) + 1}


@pytest.mark.parametrize("case", ["float_targets", "two_classes"])
def test_mse_controls_are_silent(case):
    x, y = batch(classes=2)
    targets = torch.randn(64) if case == "float_targets" else y  # a real regression; 0/1 least squares
    findings = dd.checkup(net(out=1), x, targets, mse_on_ids).findings
    assert "regression_on_class_ids" not in mismatches(findings)


# ---- frozen layers ----

def rows(frozen_body_at_init=True):
    scheme = "default" if frozen_body_at_init else "unknown"
    return [LayerStats("0", kind="weight", init_scheme=scheme), LayerStats("2", kind="weight", init_scheme=scheme),
            LayerStats("4", kind="weight", init_scheme="unknown")]


def test_frozen_layers_with_high_loss_warn_with_unfreeze():
    f, = frozen_layers(rows(False), ("0", "2"), 0.9, loss_left=0.8)
    assert f.code == "stalled_updates" and f.severity == "warning" and f.fix == {"unfreeze": ["0", "2"]}


def test_frozen_body_at_random_init_warns():
    f, = frozen_layers(rows(True), ("0", "2"), 0.9, loss_left=0.2)
    assert f.severity == "warning" and "random" in f.summary


def test_frozen_on_purpose_and_fitting_is_info():
    """A pretrained-looking body (scale not an init's) and a run that removed 80 % of its loss."""
    f, = frozen_layers(rows(False), ("0", "2"), 0.9, loss_left=0.2)
    assert f.severity == "info"
    f, = frozen_layers(rows(True), ("0",), 0.5, loss_left=0.2)  # one frozen random layer in a trainable body
    assert f.severity == "info"


def test_frozen_modules_reads_requires_grad():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.LSTM(4, 8, batch_first=True))
    assert frozen_modules(model) == ((), 0.0)
    model[1].requires_grad_(False)
    names, share = frozen_modules(model)
    assert names == ("1",) and share == pytest.approx(sum(p.numel() for p in model[1].parameters() if p.dim() >= 2)
                                                     / sum(p.numel() for p in model.parameters() if p.dim() >= 2))


# ---- a run stopped before it converged ----

def falling(n=30, start=2.3, end=2.0, noise=0.01):
    g = torch.Generator().manual_seed(0)
    return [start + (end - start) * i / (n - 1) + noise * float(torch.randn((), generator=g)) for i in range(n)]


def test_not_converged_after_one_epoch():
    sl = falling()
    f, = not_converged([sum(sl) / len(sl)], sl, list(range(len(sl))))
    assert f.code == "underfitting" and f.severity == "warning" and f.evidence["cause"] == "not_converged"
    assert 2 <= f.fix["epochs"] <= 10


@pytest.mark.parametrize("case", ["flat", "fitted", "three_epochs", "few_steps"])
def test_not_converged_controls(case):
    sl = {"flat": falling(end=2.3, noise=0.05), "fitted": falling(end=0.3), "few_steps": falling(n=6)}.get(case, falling())
    epochs = [2.2, 2.1, 2.0] if case == "three_epochs" else [sl[-1]]
    assert not_converged(epochs, sl, list(range(len(sl)))) == []


def test_not_converged_runs_in_judge():
    sl = falling()
    found = judge_curves(Curves(train_loss=[2.1], step_loss=sl, steps=list(range(len(sl))), baseline=math.log(10)))
    assert any(f.code == "underfitting" and f.fix for f in found)
