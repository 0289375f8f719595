"""Rules from theory that catch faults the scale rules miss on shallow or real models: memorising
(validation loss above chance while training learns), training labels that disagree with validation
labels, hidden activations whose derivative is <= 1/4 (sigmoid), and layers whose output is the same for
every sample. Curve rules are tested on constructed curves; layer rules on fixed-seed models at
initialisation (one forward and backward, no training)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import deepdiag as dd
from deepdiag.rules import Curves, judge_curves
from deepdiag.rules.curves import labels_disagree, memorising

LN4 = math.log(4)


# ---- memorising ----

def test_memorising_fires_when_validation_is_worse_than_chance_and_rising():
    train = [1.39, 1.36, 1.33, 1.28, 1.20]  # learns: ends at 87 % of ln 4
    val = [1.392, 1.397, 1.42, 1.49, 1.50]  # above chance, 7.8 % above its minimum
    [f] = memorising(train, val, LN4)
    assert f.code == "overfitting" and f.severity == "warning"
    assert f.fix == {"epochs": 1} and "1" in f.remedy
    assert f.evidence["cause"] == "memorising"
    # judge_curves runs it where the sustained-rise overfitting rule is silent (rise < 10 %)
    found = judge_curves(Curves(train_loss=train, val_loss=val, baseline=LN4))
    assert [g.code for g in found if g.rank >= 1] == ["overfitting"]


@pytest.mark.parametrize("train, val", [
    ([1.39, 1.36, 1.33, 1.28, 1.20], [1.0, 0.9, 0.95, 1.0, 1.05]),  # rising, but below chance: not this rule
    ([1.39, 1.38, 1.37, 1.36, 1.35], [1.392, 1.397, 1.42, 1.49, 1.50]),  # training has learnt nothing (97 %)
    ([1.39, 1.36, 1.33, 1.28, 1.20], [1.40, 1.41, 1.41, 1.42, 1.42]),  # above chance but flat (1.4 % rise)
])
def test_memorising_is_silent_otherwise(train, val):
    assert memorising(train, val, LN4) == []


def test_memorising_needs_a_baseline_and_three_epochs():
    assert memorising([1.3, 1.2, 1.1], [1.4, 1.45, 1.5], None) == []
    assert memorising([1.3, 1.1], [1.4, 1.5], LN4) == []


# ---- training labels that disagree with validation labels ----

def test_labels_disagree_fires_on_training_accuracy_far_below_validation():
    # half the digits labels redrawn (measured): training accuracy ~0.51, validation 0.92-0.94
    train_acc = [0.11, 0.18, 0.34, 0.41, 0.47, 0.49, 0.50, 0.51]
    val_acc = [0.31, 0.30, 0.53, 0.85, 0.88, 0.89, 0.92, 0.94]
    [f] = labels_disagree(train_acc, val_acc)
    assert f.code == "underfitting" and f.severity == "warning" and f.evidence["cause"] == "labels"
    assert f.evidence["gap"] == pytest.approx(0.92 - 0.51)
    found = judge_curves(Curves(train_loss=[2.3, 2.2, 2.1, 2.0, 1.9, 1.85, 1.8, 1.75],
                                train_acc=train_acc, val_acc=val_acc, baseline=math.log(10)))
    assert "underfitting" in [g.code for g in found if g.rank >= 1]


def test_labels_disagree_discounts_the_lag_of_an_epoch_mean():
    """The training accuracy is averaged while the model improves: compared with the validation accuracy
    before the epoch (0.80) the gap is 0.05, whatever the validation accuracy after it (0.95)."""
    assert labels_disagree([0.4, 0.6, 0.75], [0.6, 0.80, 0.95]) == []
    # the same gap held at both ends of the epoch is label disagreement
    assert labels_disagree([0.4, 0.6, 0.75], [0.6, 0.90, 0.95])


@pytest.mark.parametrize("train_acc, val_acc", [
    ([0.26, 0.39, 0.59, 0.67, 0.72, 0.74, 0.80, 0.87, 0.89, 0.91], [0.27, 0.52, 0.57, 0.69, 0.70, 0.74, 0.89, 0.81, 0.95, 0.96]),  # BERT base, dropout 0.1
    ([0.6, 0.7], [0.9, 0.95]),  # two epochs: not judged
    ([0.5, 0.8, 0.95], [0.7, 0.9, 0.93]),  # training above validation
])
def test_labels_disagree_is_silent_on_healthy_runs(train_acc, val_acc):
    assert labels_disagree(train_acc, val_acc) == []


# ---- hidden activations whose derivative is <= 1/4 ----

def _mlp(act: nn.Module, head: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(20, 64), act, nn.Linear(64, 64), type(act)(), nn.Linear(64, 4)]
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers, *([head] if head is not None else []))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(128, 20, generator=g), torch.randint(0, 4, (128,), generator=g)


def test_sigmoid_hidden_layers_are_reported_as_vanishing_gradients():
    x, y = _data()
    report = dd.checkup(_mlp(nn.Sigmoid()), x, y)
    [f] = [f for f in report.findings if f.code == "vanishing_gradients"]
    assert f.severity == "warning" and f.layers == ["1", "3"]
    assert f.fix == {"activation": "relu"} and "relu" in f.remedy.lower()
    gains = f.evidence["activation_gain"]
    assert all(0.15 < g <= 0.25 for g in gains.values())  # sigma' <= 1/4, ~0.2 at unit-scale pre-activations
    assert f.evidence["product"] == pytest.approx(gains["1"] * gains["3"])


def test_tanh_hidden_layers_and_a_sigmoid_output_are_silent():
    x, y = _data()
    assert [f.code for f in dd.checkup(_mlp(nn.Tanh()), x, y).findings if f.rank >= 1] == []
    xb, yb = x, (y % 2).float()[:, None]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 1), nn.Sigmoid())
    codes = [f.code for f in dd.checkup(model, xb, yb, nn.BCELoss()).findings if f.rank >= 1]
    assert "vanishing_gradients" not in codes


def test_the_derivative_is_read_from_the_activation_output():
    x, y = _data()
    layers = dd.checkup(_mlp(nn.Sigmoid()), x, y).layers.set_index("name")
    model = _mlp(nn.Sigmoid())
    with torch.no_grad():
        a = torch.sigmoid(model[0](x))
    assert layers.loc["1", "deriv_rms"] == pytest.approx(float((a * (1 - a)).pow(2).mean().sqrt()), rel=1e-6)


# ---- a layer whose output is the same for every sample ----

def _zero_hidden(zero: str) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        model[int(zero)].weight.zero_()  # biases keep their random init: rows differ, output is the bias
    return model


def test_a_hidden_layer_with_zero_weights_loses_the_input():
    x, y = _data()
    report = dd.checkup(_zero_hidden("2"), x, y)
    [f] = [f for f in report.findings if f.code == "vanishing_activations"]
    assert f.severity == "error" and f.layers == ["2"]
    assert f.evidence["zero_weights"] == ["2"] and f.evidence["batch_spread"]["2"] == 0.0
    assert f.fix == {"init": "he"} and "he" in f.remedy.lower()


def test_a_zero_head_and_a_constant_input_are_not_reported():
    x, y = _data()
    codes = [f.code for f in dd.checkup(_zero_hidden("4"), x, y).findings]  # zero-initialised output layer
    assert "vanishing_activations" not in codes
    torch.manual_seed(0)
    model = _zero_hidden("0")  # the first layer's output is the bias; the next layer sees a constant input
    found = [f for f in dd.checkup(model, x, y).findings if f.code == "vanishing_activations"]
    assert [f.layers for f in found] == [["0"]]  # the layer that lost the input, not the one after it


def test_a_recurrent_layer_with_zero_weights_loses_the_input():
    class Seq(nn.Module):
        def __init__(self, batch_first: bool):
            super().__init__()
            self.batch_first = batch_first
            self.embed = nn.Embedding(16, 8)
            self.rnn = nn.LSTM(8, 16, batch_first=batch_first)
            self.head = nn.Linear(16, 4)

        def forward(self, t):
            e = self.embed(t if self.batch_first else t.T)
            out, _ = self.rnn(e)
            return self.head(out[:, -1] if self.batch_first else out[-1])

    g = torch.Generator().manual_seed(0)
    t, y = torch.randint(0, 16, (64, 10), generator=g), torch.randint(0, 4, (64,), generator=g)
    for batch_first in (True, False):
        torch.manual_seed(0)
        model = Seq(batch_first)
        assert "vanishing_activations" not in [f.code for f in dd.checkup(model, t, y).findings]
        with torch.no_grad():
            model.rnn.weight_ih_l0.zero_()
            model.rnn.weight_hh_l0.zero_()
        found = [f for f in dd.checkup(model, t, y).findings if f.code == "vanishing_activations"]
        assert [f.layers for f in found] == [["rnn"]], batch_first


# ---- an output scale far beyond what the loss expects ----

def _scaled_mlp(std: float | None, out: int = 10) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, out))
    if std is not None:
        with torch.no_grad():
            for m in (model[0], model[2]):
                m.weight.normal_(0.0, std)
    return model


def test_a_confidently_wrong_classifier_is_reported():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 20, generator=g), torch.randint(0, 10, (128,), generator=g)
    report = dd.checkup(_scaled_mlp(1.0), x, y)  # N(0, 1) weights: logits of RMS ~30
    [f] = [f for f in report.findings if f.code == "saturated_units" and f.layers == ["2"]]
    assert f.severity == "warning" and f.evidence["loss"] >= math.log(10) + 2
    assert f.fix == {"init": "he"} and "he" in f.remedy.lower()
    for model in (_scaled_mlp(None), _scaled_mlp(math.sqrt(2 / 64))):  # torch default; He (hidden and output)
        assert "saturated_units" not in [f.code for f in dd.checkup(model, x, y).findings]


def test_a_regression_output_far_above_its_targets_is_reported():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 20, generator=g), torch.randn(128, 1, generator=g)
    [f] = [f for f in dd.checkup(_scaled_mlp(1.0, out=1), x, y).findings if f.code == "exploding_activations"
           and f.layers == ["2"]]
    assert f.evidence["ratio"] >= 10 and f.fix == {"init": "he"}
    # near-zero targets do not make a unit-scale output "exploding" (the reference is max(target RMS, 1))
    assert "exploding_activations" not in [f.code for f in dd.checkup(_scaled_mlp(None, out=1), x, 1e-3 * y).findings]


def test_the_output_scale_rule_reads_the_loss_against_chance():
    from deepdiag.measure.records import LayerStats, OutputFacts
    from deepdiag.rules.io import output_scale

    def facts(loss):
        return OutputFacts("cross_entropy", out_width=4, out_rms=3.0, peak_prob=0.9, out_loss=loss)

    def layers(std):  # a ReLU net; He's std at fan_in 64 is 0.177
        return [LayerStats("0", kind="weight", fan_in=64, fan_out=64, weight_std=std),
                LayerStats("1", kind="activation", family="relu"),
                LayerStats("2", kind="weight", fan_in=64, fan_out=4, weight_std=std)]

    assert output_scale(facts(LN4 + 2.01), layers(1.0))
    assert output_scale(facts(LN4 + 1.9), layers(1.0)) == []  # He/Xavier logits stay within ~1 nat of chance
    # weights at He's scale: the logits' size has another cause (a deep residual sum), not the init
    assert output_scale(facts(LN4 + 5.0), layers(0.18)) == []
    assert output_scale(facts(LN4 + 5.0)) == []  # no layer records: the cause cannot be told


def test_an_output_that_ignores_the_labels_is_judged_by_its_expected_loss():
    """A batch's loss reads one log-probability per row and may fall short of ln k + 2 by luck; an output
    whose rows do not point at their labels (label_z > −2) is judged by its uniform-label loss."""
    from deepdiag.measure.records import LayerStats, OutputFacts
    from deepdiag.rules.io import output_scale

    big = [LayerStats("0", kind="weight", fan_in=64, fan_out=64, weight_std=1.0),
           LayerStats("1", kind="activation", family="relu"),
           LayerStats("2", kind="weight", fan_in=64, fan_out=4, weight_std=1.0)]

    def facts(uniform, z):
        return OutputFacts("cross_entropy", out_width=4, out_rms=3.0, peak_prob=0.6, out_loss=LN4 + 1.9,
                           uniform_loss=uniform, label_z=z)

    [f] = output_scale(facts(LN4 + 2.2, -1.0), big)
    assert f.evidence["uniform_label_loss"] == LN4 + 2.2 and "in expectation" in f.summary
    assert output_scale(facts(LN4 + 2.2, -2.5), big) == []  # the rows point at their labels: learnt
    assert output_scale(facts(LN4 + 1.5, 0.0), big) == []  # logits of spread < 2: within the bound
    assert output_scale(facts(LN4 + 2.2, math.nan), big) == []  # one row: no standard error


def test_the_uniform_label_loss_is_the_mean_over_classes():
    from deepdiag.measure.io import output_facts

    g = torch.Generator().manual_seed(0)
    out, y = 3 * torch.randn(256, 5, generator=g), torch.randint(0, 5, (256,), generator=g)
    f = output_facts(out, "Linear", "cross_entropy", y)
    logp = torch.log_softmax(out.double(), 1)
    assert f.uniform_loss == pytest.approx(float(-logp.mean()))  # every (row, class) pair counted once
    assert f.out_loss == pytest.approx(float(torch.nn.functional.cross_entropy(out.double(), y)))
    assert -2 < f.label_z < 2  # labels drawn independently of the output
    assert output_facts(out, "Linear", "cross_entropy", out.argmax(1)).label_z < -10  # the output names them


# ---- no epoch below the loss at initialisation ----

def test_a_run_that_never_trains_below_its_starting_loss_diverges():
    from deepdiag.rules.curves import divergence

    steps = [1.37, 2.7, 4.8, 4.4, 5.0, 4.2] + [3.0 + 0.3 * (i % 3) for i in range(60)]  # GRU at lr x100 (measured shape)
    [f] = divergence([3.62, 3.30, 3.55, 3.48, 3.02, 3.29], [3.5] * 6, steps, list(range(len(steps))))
    assert f.code == "divergence" and f.severity == "warning"
    assert f.evidence["ratio"] == pytest.approx(3.02 / 1.37)
    assert f.fix == {"lr_factor": 0.1, "clip_grad_norm": 1.0}


@pytest.mark.parametrize("epochs", [
    [1.39, 1.39, 1.38, 1.39],  # stuck at its initial level: underfitting's case, not this one
    [1.60, 1.20, 0.90, 0.70],  # a first epoch above the start (warm-up bump), then learning
    [1.70, 1.70],  # two epochs: not judged
])
def test_runs_that_stay_at_or_return_below_their_start_are_not_divergence(epochs):
    from deepdiag.rules.curves import divergence

    steps = [1.39] + [1.4] * 40
    assert divergence(epochs, None, steps, list(range(len(steps)))) == []


def test_an_epoch_loss_that_climbs_twofold_is_divergence():
    from deepdiag.rules.curves import divergence

    epochs = [1.23, 1.74, 6.55, 8.87, 4.08]  # SGD without zero_grad (measured): gradients pile up
    [f] = divergence(epochs)
    assert f.code == "divergence" and f.severity == "warning"
    assert (f.evidence["best_epoch"], f.evidence["peak_epoch"]) == (1, 4)
    assert f.evidence["ratio"] == pytest.approx(8.87 / 1.23)
    assert "zero_grad" in f.remedy
    assert divergence([1.23, 1.5, 1.8, 1.1, 0.9]) == []  # a bump under 2x that recovered
    assert divergence([1.0, 1.9, 1.5]) == []  # a rise under 2x
    assert divergence([1.46, 0.93, 0.36, 0.90]) == []  # one epoch's spike at the end (digits MLP, SGD lr 0.3)
    assert divergence([1.46, 0.93, 0.36, 0.90, 0.95])  # ... held over two epochs


def test_labels_disagree_is_not_judged_under_heavy_dropout():
    """With dropout p >= 0.3 a train-mode accuracy trails the validation accuracy by design."""
    from deepdiag.rules.judge import Context, Curves, judge_curves

    curves = Curves(train_loss=[1.2, 1.1, 1.0, 1.0], val_loss=[1.1, 1.0, 0.9, 0.9], train_acc=[0.5, 0.55, 0.6, 0.6],
                    val_acc=[0.7, 0.75, 0.8, 0.8], baseline=2.3)
    codes = lambda ctx: [f.code for f in judge_curves(curves, ctx) if f.rank >= 1]  # noqa: E731
    assert "underfitting" in codes(Context())
    assert "underfitting" not in codes(Context(dropout=0.5))
