"""Monitor: inside the user's loop, layer pathologies that appear during training, curves, hooks, memory."""
import math

import pytest
import torch
from torch import nn

import deepdiag as dd
from deepdiag.monitor import Monitor


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def warned(findings):
    return {f.code for f in findings if f.severity in ("warning", "error")}


def train(model, mon, x, y, steps, lr=0.05, after=None, loss_fn=nn.functional.cross_entropy):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for i in range(steps):
        if after is not None and i == after[0]:
            after[1]()
        idx = torch.randint(0, len(x), (64,))
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss)


@pytest.fixture(scope="module")
def digits():
    return dd.data.load("digits", seed=0)


def test_healthy_converging_run_is_silent(digits):
    model = dd.mlp(64, 10, width=64, depth=4, seed=0)
    with Monitor(model, n_classes=10) as mon:
        hist = dd.fit(model, digits, lr=0.05, momentum=0.9, epochs=6, seed=0, on_step=mon.step,
                      on_epoch=lambda h: mon.epoch(train_loss=h.train_loss[-1], val_loss=h.val_loss[-1],
                                                   train_acc=h.train_acc[-1], val_acc=h.val_acc[-1]))
        findings = mon.diagnose()
    assert hist.train_loss[-1] < 0.1
    assert warned(findings) == set(), [str(f) for f in findings]
    h = mon.history
    assert len(h.epochs) == 6 and h.epochs.train_loss.iloc[-1] == pytest.approx(hist.train_loss[-1])
    assert set(h.layers.layer) >= {"hidden.0.linear", "hidden.0.act", "out"}
    assert h.layers.step.max() == mon.steps - 1


def test_units_dying_during_training(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def kill():
        with torch.no_grad():
            model[2].bias.fill_(-1e4)  # every unit of layer 2 stops firing
    mon = Monitor(model, window=20)
    train(model, mon, digits.x_train, digits.y_train, 30, after=(10, kill))
    train(model, mon, digits.x_train, digits.y_train, 30)
    f = [f for f in mon.diagnose() if f.code == "dead_units"]
    assert f and f[0].severity == "error" and f[0].layers == ["3"]
    assert f[0].evidence["frac_dead"] == 1.0 and f[0].evidence["positions"] >= 20 * 64
    assert f[0].step == 59
    mon.close()


def test_dead_units_need_a_whole_window(digits):
    """A unit is dead only if it never fires over the window: one silent batch is not enough."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    mon = Monitor(model, window=10)
    train(model, mon, digits.x_train, digits.y_train, 25)
    assert "dead_units" not in warned(mon.diagnose())
    mon.close()


def test_gradients_vanishing_later_in_training(digits):
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(4) for m in (nn.LazyLinear(64), nn.Tanh())], nn.Linear(64, 10))
    model(digits.x_train[:2])

    def shrink():
        with torch.no_grad():
            for m in list(model)[2:8:2]:
                m.weight.mul_(1e-2)
    mon = Monitor(model)
    train(model, mon, digits.x_train, digits.y_train, 40, lr=0.001, after=(20, shrink))
    f = [f for f in mon.diagnose() if f.code == "vanishing_gradients"]
    assert f and f[0].severity == "error" and "0" in f[0].layers
    assert f[0].evidence["ratio_first_last"] < 1e-4
    early = mon.history.layers
    first = early[(early.step == 0) & (early.layer == "0")].signal_norm.item()
    last = early[(early.step == 39) & (early.layer == "0")].signal_norm.item()
    assert last < first * 1e-3  # the history shows when it happened
    mon.close()


def test_divergence_records_the_step(digits):
    torch.manual_seed(0)
    model = dd.mlp(64, 10, width=32, depth=3, activation="linear", seed=0)  # no ReLU to die: lr 20 must blow up
    mon = Monitor(model)
    train(model, mon, digits.x_train, digits.y_train, 60, lr=20.0)
    f = [f for f in mon.diagnose() if f.code == "divergence"]
    assert f and f[0].severity == "error"
    losses = mon.history.steps.loss.tolist()
    first_bad = next(i for i, v in enumerate(losses) if not math.isfinite(v))
    assert f[0].evidence["first_nonfinite_step"] <= first_bad and f[0].step == f[0].evidence["first_nonfinite_step"]
    mon.close()


def test_curves_through_monitor_overfitting_and_underfitting():
    model = nn.Linear(4, 3)
    mon = Monitor(model, n_classes=3)
    for tl, vl in [(1.0, 1.0), (0.6, 0.7), (0.4, 0.6), (0.3, 0.7), (0.2, 0.75), (0.1, 0.8), (0.05, 0.9)]:
        mon.epoch(train_loss=torch.tensor(tl), val_loss=vl)
    f = mon.diagnose()
    assert [x.code for x in f] == ["overfitting"] and f[0].severity == "warning"
    assert f[0].evidence["best_epoch"] == 3 and f[0].step == 3
    mon2 = Monitor(model)
    for tl in [1.10, 1.09, 1.08, 1.08]:
        mon2.epoch(train_loss=tl, val_loss=tl)
    assert mon2.diagnose() == []  # no baseline given: no underfitting claim
    u = mon2.diagnose(n_classes=3)
    assert [x.code for x in u] == ["underfitting"]
    assert u[0].evidence["baseline"] == pytest.approx(math.log(3))
    mon.close(), mon2.close()


def test_close_removes_every_hook_and_is_idempotent(digits):
    model = dd.conv_net(1, 10, seed=0)
    before = n_hooks(model)
    mon = Monitor(model, every=3)
    assert n_hooks(model) > before
    x = digits.x_train[:64].reshape(-1, 1, 8, 8)
    train(model, mon, x, digits.y_train[:64], 7)
    mon.close()
    mon.close()
    assert n_hooks(model) == before and mon.n_hooks == 0
    with Monitor(model) as m2:
        train(model, m2, x, digits.y_train[:64], 2)
        assert m2.diagnose() is not None
    assert n_hooks(model) == before
    with pytest.raises(RuntimeError, match="closed"):
        mon.step()


def test_unrecorded_steps_have_no_hooks(digits):
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    mon = Monitor(model, every=5)
    train(model, mon, digits.x_train, digits.y_train, 1)
    assert n_hooks(model) == 0  # steps 1..4 are not recorded
    train(model, mon, digits.x_train, digits.y_train, 4)
    assert n_hooks(model) > 0  # step 5 is
    train(model, mon, digits.x_train, digits.y_train, 6)
    assert mon.recorded == 3 and mon.history.layers.step.unique().tolist() == [0, 5, 10]
    mon.close()


def test_monitor_stats_match_checkup_reference():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    rows = {r.name: r for r in dd.checkup(model, x, y).rows}
    mon = Monitor(model)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    mon.step(loss)
    h = mon.history.layers.set_index("layer")
    for name in ("0", "2"):
        rms = math.sqrt(rows[name].act_mean ** 2 + rows[name].act_std ** 2)
        assert h.loc[name, "act_rms"] == pytest.approx(rms, rel=1e-5)
        assert h.loc[name, "in_rms"] == pytest.approx(rows[name].in_rms, rel=1e-5)
        assert h.loc[name, "signal_norm"] == pytest.approx(rows[name].signal_norm, rel=1e-5)
        assert h.loc[name, "grad_norm"] == pytest.approx(rows[name].grad_norm, rel=1e-5)
    dead = {r.name: r for r in mon.rows()}["1"]
    assert dead.frac_dead == pytest.approx(rows["1"].frac_dead) and dead.positions == 64
    assert mon.history.steps.loss.item() == pytest.approx(loss.item())
    mon.close()


def test_memory_bounded_over_100k_steps():
    """100 000 optimizer steps: the kept rows, tensors and host lists stay bounded (decimation).
    The forward/backward runs on the recorded steps only (every=10): the others cannot reach the
    monitor (no hooks are registered then, asserted), and skipping them keeps the test ~2 s."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(32, 4)
    mon = Monitor(model, every=10, capacity=64)
    sizes = {}
    for i in range(100_000):
        if i % 10 == 0:  # a recorded step: forward/backward with the hooks on
            model.zero_grad(set_to_none=True)
            loss = model(x).pow(2).mean()
            loss.backward()
        else:  # between recorded steps the monitor has no hooks: a forward pass would be invisible to it
            assert not mon.rec.hooks.items
        mon.step()
        if i + 1 in (10_000, 100_000):
            held = (sum(t.numel() for t in (mon._buf.rows, mon._buf.loss))
                    + sum(u.current.numel() for u in mon._units.units.values()))
            sizes[i + 1] = (held, len(mon._buf.steps), len(mon.rec.latest), n_hooks(model))
    assert mon.steps == 100_000 and mon.recorded == 10_000
    assert sizes[10_000][0] == sizes[100_000][0]  # same tensors, same sizes
    kept = mon._buf.steps
    assert 32 <= len(kept) <= 64 and kept[0] == 0 and kept[-1] >= 100_000 - 2 * 10 * mon._buf.stride
    assert all(b - a == kept[1] - kept[0] for a, b in zip(kept, kept[1:]))  # evenly spread
    assert len(mon.history.layers) == len(kept) * len(mon.rec.sites)
    assert warned(mon.diagnose()) == set()
    mon.close()


def test_monitor_argument_errors():
    with pytest.raises(ValueError, match="every"):
        Monitor(nn.Linear(2, 2), every=0)
    with pytest.raises(TypeError, match="model"):
        Monitor("net")
    with pytest.raises(ValueError, match="capacity"):
        Monitor(nn.Linear(2, 2), capacity=7)


def test_unit_windows_keep_the_current_and_the_previous_window():
    """A ReLU unit counts as fired over the last two windows only: one that fired in the window before
    the previous one is dead now (it died during training); saturation counts add up over both."""
    from deepdiag.measure.history import UnitWindows

    w = UnitWindows(window=2)
    w.add(0, {"unit_max": torch.tensor([1.0, 0.0, -1.0]), "positions": 8})  # unit 0 fires
    w.add(1, {"unit_count": torch.tensor([3, 0]), "positions": 8})
    w.tick()
    assert w.units[0].counts().tolist() == [1, 0, 0] and w.min_seen() == 8
    w.add(0, {"unit_max": torch.tensor([-1.0, 2.0, -1.0]), "positions": 8})  # unit 1 fires
    w.add(1, {"unit_count": torch.tensor([1, 1]), "positions": 8})
    w.tick()  # window full: it becomes the previous one
    assert w.units[0].counts().tolist() == [1, 1, 0] and w.units[1].counts().tolist() == [4, 1]
    for _ in range(2):
        w.add(0, {"unit_max": torch.tensor([-1.0, -1.0, -1.0]), "positions": 8})
        w.add(1, {"unit_count": torch.tensor([0, 0]), "positions": 8})
        w.tick()
    assert w.units[0].counts().tolist() == [0, 0, 0]  # nothing fired in the last two windows
    assert w.units[1].counts().tolist() == [0, 0] and w.min_seen() == 16  # the new window is still empty
