"""Monitor: no host sync per step. On CUDA a host sync stalls the training loop until the device
catches up; the Monitor promises none between its reads (``diagnose()``, ``check()``, the first
training step). Measured here on CPU, where a sync costs nothing but the operations that would cause
one are still visible: a tensor read as a Python number (``aten._local_scalar_dense``: ``item()``,
``float()``, ``int()``, ``bool()``, a tensor in an ``if``) or a comparison answered on the host
(``aten.equal``), counted by a ``TorchDispatchMode`` around the whole loop (forward and backward
hooks included), and a copy to the host (``.tolist()``, ``.cpu()``, ``.numpy()``, which on a CPU tensor
do not dispatch: counted by wrapping the methods)."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import deepdiag as dd
from deepdiag.monitor import Monitor

SYNC_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default}
HOST_COPIES = ("tolist", "cpu", "numpy")


class _Syncs(TorchDispatchMode):
    """Counts the dispatched operations that read a tensor's value on the host."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_copies(monkeypatch):
    """Calls of .tolist() / .cpu() / .numpy() on any tensor, by name."""
    seen = []
    for name in HOST_COPIES:
        method = getattr(torch.Tensor, name)

        def wrapped(self, *a, _name=name, _method=method, **k):
            seen.append(_name)
            return _method(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return seen


MODELS = {
    "mlp": lambda: (dd.mlp(16, 4, width=32, depth=3, seed=0), torch.randn(32, 16)),
    "cnn_bn": lambda: (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                     nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 36, 4)),
                       torch.randn(32, 3, 6, 6)),
    "lstm": lambda: (_LSTMNet(), torch.randn(32, 5, 8)),
}


class _LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def _train(model, x, mon, steps, syncs=None, copies=None, start=3):
    """`steps` optimizer steps with `mon.step(loss)`; the sync counters are active from step `start`
    on (the first steps may read the host once: discovery, input/output facts, start weights)."""
    torch.manual_seed(0)
    y = torch.randint(0, 4, (len(x),))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    counted = []
    for i in range(steps):
        mode = syncs if (syncs is not None and i >= start) else None
        before = len(copies) if copies is not None else 0
        if mode is not None:
            mode.__enter__()
        try:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
        finally:
            if mode is not None:
                mode.__exit__(None, None, None)
        if mode is not None and copies is not None:
            counted += copies[before:]
    return counted


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_monitor_steps_read_nothing_on_the_host(name, every, host_copies):
    model, x = MODELS[name]()
    syncs = _Syncs()
    with Monitor(model, every=every, loss_fn=nn.functional.cross_entropy, optimizer=None) as mon:
        copied = _train(model, x, mon, steps=3 + 4 * every, syncs=syncs, copies=host_copies)
        assert syncs.seen == [] and copied == [], (syncs.seen, copied)
        assert mon.diagnose() is not None  # the reads happen here, once


def test_sync_counters_see_a_host_read(host_copies):
    """The counters are live: a step that reads the loss on the host is counted, by both routes."""
    model, x = MODELS["mlp"]()
    syncs = _Syncs()
    with Monitor(model, every=1) as mon:
        class Reading:
            def step(self, loss):
                mon.step(loss)
                float(loss.detach())
                loss.detach().tolist()

        copied = _train(model, x, Reading(), steps=5, syncs=syncs, copies=host_copies)
    assert len(syncs.seen) == 2 and copied == ["tolist", "tolist"]


def test_checks_read_the_host_only_at_their_steps():
    """With ``on_finding`` the Monitor reads the host every `check_every` steps, and only then."""
    model, x = MODELS["mlp"]()
    per_step = []
    with Monitor(model, every=1, on_finding=lambda f: None, check_every=4) as mon:
        torch.manual_seed(0)
        y = torch.randint(0, 4, (len(x),))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for i in range(12):
            syncs = _Syncs()
            with syncs:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.step(loss)
            per_step.append(len(syncs.seen))
    reading = [i for i, n in enumerate(per_step) if n and i >= 3]
    assert reading and all((i + 1) % 4 == 0 for i in reading), per_step
