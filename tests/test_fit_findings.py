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
from deepdiag.rules import Context, Curves, judge_curves
from deepdiag.rules.curves import (not_converged, short_run_at_chance, underfitting,
                                  underfitting_cause)
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


# ---- a run of few updates per epoch stopped while still falling (>= 3 epochs) ----

def test_not_converged_when_the_batch_size_rations_the_updates():
    """Full-batch: one update per epoch, the epoch loss falls every epoch, 92 % of the start is left."""
    epochs = [2.0, 1.9, 1.8, 1.7]
    f, = not_converged(epochs, epochs, [0, 1, 2, 3])
    assert f.code == "underfitting" and f.evidence["cause"] == "not_converged" and f.fix == {"batch_size": 32}
    assert f.evidence["updates_per_epoch"] == 1 and "batch_size=32" in f.remedy


def _slow(n_epochs, per_epoch):
    """Epoch losses falling 0.01 per epoch from 2.0; `per_epoch` recorded updates in each epoch."""
    epochs = [2.0 - 0.01 * i for i in range(n_epochs)]
    steps = list(range(round(n_epochs * per_epoch)))
    return epochs, [2.0 - 0.01 * s / per_epoch for s in steps], steps


@pytest.mark.parametrize("n_epochs, per_epoch, fires", [
    (4, 3.75, True), (4, 4.0, False),  # fewer than 4 updates per epoch: just below / at the limit
    (33, 3.0, True), (34, 3.0, False),  # 99 updates in all / 102
])
def test_not_converged_counts_the_updates(n_epochs, per_epoch, fires):
    epochs, sl, steps = _slow(n_epochs, per_epoch)
    assert bool(not_converged(epochs, sl, steps)) == fires


@pytest.mark.parametrize("epochs, fires", [
    ([2.0, 1.9, 1.9, 1.7], False),  # one epoch that did not fall: no sign of a steady fall
    ([2.0, 1.9, 1.8], False),  # three epochs: two falls only
    ([2.0, 1.5, 1.2, 0.68], True),  # start: median of the first four steps, 1.35; 0.68 / 1.35 = 0.504 left
    ([2.0, 1.5, 1.2, 0.67], False),  # 0.67 / 1.35 = 0.496: fitted more than half
])
def test_not_converged_many_epochs_controls(epochs, fires):
    assert bool(not_converged(epochs, epochs, list(range(len(epochs))))) == fires


def test_one_underfitting_finding_per_run():
    """The level rule and the stopped-early rule both speak on a full-batch run at chance: one finding."""
    epochs = [2.30, 2.29, 2.28, 2.27]
    c = Curves(train_loss=epochs, step_loss=epochs, steps=[0, 1, 2, 3], baseline=math.log(10))
    assert underfitting(epochs, math.log(10)) and not_converged(epochs, epochs, [0, 1, 2, 3])
    found = [f for f in judge_curves(c, Context(epochs=4)) if f.code == "underfitting"]
    assert len(found) == 1 and found[0].fix == {"batch_size": 32}


# ---- the final model: a collapse after learning ----

LN10 = math.log(10)  # 0.9 * ln 10 = 2.0723


def test_underfitting_judges_the_last_epoch():
    f, = underfitting([2.3, 1.5, 1.2, 2.08], LN10)  # learnt, then lost it: the last epoch is back at chance
    assert f.evidence["collapsed"] and f.evidence["best_epoch"] == 3
    assert underfitting([2.3, 1.5, 1.2, 2.07], LN10) == []  # just below 90 % of chance
    never, = underfitting([2.31, 2.30, 2.30], LN10)
    assert not never.evidence["collapsed"]


def test_a_collapse_blames_the_step_size():
    f, = underfitting([2.3, 1.5, 1.2, 2.2], LN10)
    slow = underfitting_cause(f, lr=0.05, usual=0.1, bottleneck=("1", 4, 10), frozen=["0"])
    assert slow.fix == {"lr": 0.005} and slow.evidence["cause"] == "collapsed" and "0.005" in slow.remedy
    assert underfitting_cause(f).fix == {"lr_factor": 0.1}
    assert underfitting_cause(f, lr=10.0, usual=0.1).fix == {"lr": 0.1}  # 100x the usual: back to it
    assert underfitting_cause(f, weight_decay=0.5, lr=0.05, weight_ratio=0.3).fix == {"weight_decay": 0.0}
    assert underfitting_cause(f, weight_decay=0.5, lr=0.05, weight_ratio=0.6).fix == {"lr": 0.005}


# ---- a short run that fits nothing: the level of its recent step losses ----

def _short(mean, spread, tail=16, head=16):
    """Step losses: `head` at 2.5, then `tail` alternating mean ± spread (sample sd = spread·√(n/(n-1)))."""
    return [2.5] * head + [mean + (spread if i % 2 else -spread) for i in range(tail)]


@pytest.mark.parametrize("mean, spread, tail, fires", [
    (0.95, 0.10, 16, True),
    (0.901, 0.01, 16, True), (0.899, 0.01, 16, False),  # the level: 90 % of chance
    (0.95, 0.28, 16, True), (0.95, 0.30, 16, False),  # m - 2 se = 0.805 / 0.795 of chance
    (0.95, 0.10, 15, False),  # 15 points in the second half: too few to judge
])
def test_short_run_at_chance(mean, spread, tail, fires):
    sl = _short(mean, spread, tail, head=tail)
    found = short_run_at_chance([sum(sl) / len(sl)], sl, 1.0, list(range(len(sl))))
    assert bool(found) == fires
    if fires:
        f, = found
        assert f.evidence["cause"] == "at_chance" and f.fix == {"epochs": 10} and "about 10" in f.remedy
        assert f.evidence["recent_loss"] == pytest.approx(mean)


def test_short_run_at_chance_controls():
    sl = _short(0.95, 0.1)
    assert short_run_at_chance([0.9, 0.9, 0.9], sl, 1.0) == []  # three epochs: underfitting's level speaks
    assert short_run_at_chance([0.9], sl, None) == []  # no chance level known
    assert short_run_at_chance([0.9], _short(0.5, 0.1), 1.0) == []  # learnt half of it


def test_short_run_at_chance_in_judge_names_tiny_batches():
    sl = _short(2.25, 0.3)
    c = Curves(train_loss=[2.3], step_loss=sl, steps=list(range(len(sl))), baseline=LN10)
    f, = [f for f in judge_curves(c, Context(batch_size=1)) if f.code == "underfitting"]
    assert f.fix == {"batch_size": 32} and f.evidence["cause"] == "small_batch" and "batch_size=32" in f.remedy
    g, = [f for f in judge_curves(c, Context(batch_size=8)) if f.code == "underfitting"]
    assert g.fix == {"epochs": 10}
    # a cause without a fix of its own (a bottleneck) does not keep the default fix
    h, = [f for f in judge_curves(c, Context(bottleneck=("1", 4, 10))) if f.code == "underfitting"]
    assert h.fix is None and "Widen 1" in h.remedy


def test_a_spike_that_left_the_run_at_its_start_is_divergence():
    """A validation (or step) loss > 10x the loss at initialisation and a last epoch still >= 90 % of that
    start: thrown out and never back. A run that learns after its spike, or a spike under 10x, is silent."""
    from deepdiag.rules.curves import divergence

    steps = [2.35, 11.5, 2.7, 3.0, 4.3, 6.4, 3.5, 4.7, 3.6, 3.4] + [2.4] * 20
    train = [4.28, 2.70, 2.49, 2.39, 2.32, 2.46]
    (f,) = divergence(train, [57936.3, 122.4, 12.3, 2.39, 2.66, 2.47], steps)
    assert f.code == "divergence" and f.severity == "warning" and f.evidence["peak_in"] == "validation"
    assert f.fix == {"lr_factor": 0.1, "clip_grad_norm": 1.0}
    assert divergence(train[:-1] + [2.0], [57936.3, 122.4, 12.3, 2.39, 2.66, 2.47], steps) == []  # 85 %: learnt
    assert divergence(train, [23.4, 12.0, 2.4, 2.39, 2.66, 2.47], steps) == []  # 9.96x: under the bar
    assert divergence(train, [2.4] * 6, steps[:1] + [23.6] + steps[2:])[0].evidence["peak_in"] == "step"
