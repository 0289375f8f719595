"""Rules on real training runs and on the model's output range and targets: divergence inside the first
epoch, a loss with zero gradients, regression targets far from unit scale, an output that cannot reach
its targets or its loss's range (module or function losses); a healthy control beside each."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepdiag as dd


def warned(findings):
    return {f.code for f in findings if f.rank >= 1}


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.fc = nn.Embedding(50, 16), nn.LSTM(16, 32, batch_first=True), nn.Linear(32, 2)

    def forward(self, x):
        return self.fc(self.rnn(self.emb(x))[0][:, -1])


def lstm_run(lr: float, steps: int = 12):
    """Embedding → LSTM → Linear on 2 classes, SGD at `lr`, every step given to a Monitor."""
    torch.manual_seed(0)
    model = fwd = LSTMClassifier()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 50, (256, 10), generator=g), torch.randint(0, 2, (256,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    with dd.Monitor(model, optimizer=opt) as mon:
        for s in range(steps):
            i = torch.arange(s * 16, s * 16 + 16) % 256
            loss = F.cross_entropy(fwd(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
            losses.append(float(loss.detach()))
        return mon.diagnose(), losses


def test_divergence_inside_the_first_epoch():
    """A step loss 10× its start that ends ≥ 2× its start, with no epoch curve yet (lr 100: the loss
    jumps two orders of magnitude above chance, far from either threshold)."""
    findings, losses = lstm_run(100.0)
    assert max(losses) > 10 * losses[0] and losses[-1] > 2 * losses[0]  # the construction holds
    (f,) = [f for f in findings if f.code == "divergence"]
    assert f.severity == "error" and f.evidence["per"] == "step" and f.fix["lr_factor"] == 0.1
    healthy, _ = lstm_run(0.1)
    assert "divergence" not in warned(healthy)


def test_step_blowup_rule_pure():
    from deepdiag.rules.curves import divergence
    (f,) = divergence(step_loss=[0.71, 0.7, 0.72, 5, 20, 45, 30, 4, 3.5, 3.6, 3.4, 3.5], steps=list(range(12)))
    assert f.evidence["peak_loss"] == 45 and f.step == 11
    spike_then_recovered = [2.3, 2.2, 2.1, 25, 1.5, 1.0, 0.9, 0.8, 0.7, 0.7, 0.6]  # one bad batch, then learning
    assert divergence(step_loss=spike_then_recovered, steps=list(range(11))) == []


def test_zero_loss_with_zero_gradients_names_the_cause():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dd.Monitor(model, optimizer=opt) as mon:
        for _ in range(25):
            out = model(torch.randn(32, 8))
            loss = F.cross_entropy(out, torch.zeros(32, dtype=torch.long))  # softmax over one unit: always 0
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
        f = next(f for f in mon.diagnose() if f.code == "stalled_updates")
    assert f.severity == "error" and f.evidence["cause"] == "zero_gradients" and "exactly 0" in f.summary


def test_regression_targets_far_from_unit_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
    x = torch.randn(64, 4)
    y = 2000 + 300 * torch.randn(64, 1)
    (f,) = [f for f in dd.checkup(model, x, y).findings if f.code == "unscaled_targets"]
    assert f.severity == "warning" and f.evidence["target_rms"] > 1000 and f.fix == {"standardize_targets": True}
    assert "unscaled_targets" not in dd.checkup(model, x, (y - y.mean()) / y.std()).codes()  # control


@pytest.mark.parametrize("loss_fn", [F.binary_cross_entropy, nn.BCELoss()], ids=["function", "module"])
def test_relu_output_into_bce(loss_fn):
    """ReLU outputs that happen to lie in [0, 1] on this batch still cannot be probabilities."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1), nn.ReLU())
    with torch.no_grad():
        model[2].weight.mul_(0.1)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64, 1)).float()
    f = next(f for f in dd.checkup(model, x, y, loss_fn=loss_fn).findings if f.code == "output_loss_mismatch")
    assert f.evidence["mismatch"] == "unbounded_into_bce" and f.fix == {"loss": "bce_with_logits"}
    healthy = nn.Sequential(*list(model)[:-1], nn.Sigmoid())
    assert "output_loss_mismatch" not in dd.checkup(healthy, x, y, loss_fn=loss_fn).codes()


def test_regression_output_that_cannot_reach_its_targets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1), nn.ReLU())
    x, y = torch.randn(64, 4), torch.randn(64, 1)  # half the targets are negative
    f = next(f for f in dd.checkup(model, x, y).findings if f.code == "output_loss_mismatch")
    assert f.evidence["mismatch"] == "output_range" and f.fix == {"replace_output": "identity"}
    assert "output_loss_mismatch" not in dd.checkup(model, x, y.abs()).codes()  # non-negative targets: fine


def _digits_run(hidden: tuple, epochs: int, opt: str = "adam", lr: float = 1e-2):
    """An MLP on digits under a Monitor given each epoch's training/validation loss and accuracy."""
    d = dd.data.load("digits", seed=0)
    torch.manual_seed(0)
    layers, n = [], 64
    for h in hidden:
        layers += [nn.Linear(n, h), nn.ReLU()]
        n = h
    model = nn.Sequential(*layers, nn.Linear(n, 10))
    o = torch.optim.Adam(model.parameters(), lr=lr) if opt == "adam" else torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    with dd.Monitor(model, optimizer=o, n_classes=10) as mon:
        for _ in range(epochs):
            for _ in range(len(d.x_train) // 64):
                i = torch.randint(0, len(d.x_train), (64,), generator=g)
                loss = F.cross_entropy(model(d.x_train[i]), d.y_train[i])
                o.zero_grad()
                loss.backward()
                o.step()
                mon.step(loss)
            with torch.no_grad():
                tr, va = model(d.x_train), model(d.x_val)
                mon.epoch(train_loss=F.cross_entropy(tr, d.y_train), val_loss=F.cross_entropy(va, d.y_val),
                          train_acc=(tr.argmax(1) == d.y_train).float().mean(),
                          val_acc=(va.argmax(1) == d.y_val).float().mean())
        return mon.diagnose(), mon.history.epochs


def test_underfitting_is_high_bias_with_its_cause():
    """A width-1 bottleneck plateaus far below a fit of its own training set (measured: ~0.4 training
    accuracy over 10 classes, against the rule's 0.55): underfitting, cause capacity, naming the layer."""
    findings, epochs = _digits_run((64, 1), epochs=12)  # 0.30 → 0.32 over the last 3 epochs
    assert epochs.train_acc.max() < 0.55 - 0.05  # the construction holds with a margin
    (f,) = [f for f in findings if f.code == "underfitting"]
    assert f.evidence["cause"] == "capacity" and f.evidence["bottleneck"] == "2" and "Widen 2" in f.remedy


def test_healthy_run_mid_training_is_not_underfitting():
    """SGD lr 0.03, 6 epochs, 0.2 → 0.7 training accuracy: still climbing: silent."""
    findings, epochs = _digits_run((64, 64), epochs=6, opt="sgd", lr=0.03)
    assert "underfitting" not in warned(findings)


def test_underfitting_plateau_rule_pure():
    import math

    from deepdiag.rules.curves import underfitting
    loss = [2.0, 1.9, 1.8, 1.8, 1.8, 1.8]  # below 90 % of chance: the old rule is silent
    climbing = [0.1, 0.15, 0.2, 0.3, 0.4, 0.5]  # halfway (0.55) is 0.5 epoch away at 0.1 per epoch
    assert underfitting(loss, math.log(10), climbing) == []
    flat = [0.3, 0.31, 0.31, 0.32, 0.32, 0.32]  # 70 epochs away at 0.003 per epoch
    (f,) = underfitting(loss, math.log(10), flat, flat)
    assert f.evidence["classes"] == 10 and f.evidence["skill"] < 0.5
    assert underfitting(loss, math.log(10), flat, [0.6] * 6) == []  # validation far above: not bias
    good = [0.8, 0.85, 0.86, 0.86, 0.86, 0.86]  # at the noise floor of a hard task: past halfway
    assert underfitting(loss, math.log(10), good) == []
