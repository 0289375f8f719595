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
