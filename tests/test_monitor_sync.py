"""Monitor: no host sync per step. On CUDA a host sync stalls the training loop until the device
catches up; the Monitor promises none between its reads (``diagnose()``, ``check()``, the first
training step). Measured here on CPU, where a sync costs nothing but the operations that would cause
one are still visible: a tensor read as a Python number (``aten._local_scalar_dense``: ``item()``,
``float()``, ``int()``, ``bool()``, a tensor in an ``if``) or a comparison answered on the host
(``aten.equal``), counted by a ``TorchDispatchMode`` around the whole loop (forward and backward
hooks included), a copy to the host (``.tolist()``, ``.cpu()``, ``.numpy()``, which on a CPU tensor
do not dispatch: counted by wrapping the methods), and a tensor made from host data (``torch.tensor``,
``torch.as_tensor``: on CUDA a copy from pageable memory, which waits for the stream)."""
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import deepdiag as dd
from deepdiag.monitor import Monitor

SYNC_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default,
            # outputs whose size depends on the values: on CUDA the host waits to learn it
            torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default, torch.ops.aten.bincount.default,
            torch.ops.aten._unique2.default, torch.ops.aten.unique_consecutive.default}
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


HOST_DATA = ("tensor", "as_tensor")


@pytest.fixture
def host_copies(monkeypatch):
    """Calls of .tolist() / .cpu() / .numpy() on any tensor and of torch.tensor / torch.as_tensor, by name."""
    seen = []

    def counted(name, function):
        def wrapped(*a, **k):
            seen.append(name)
            return function(*a, **k)
        return wrapped
    for name in HOST_COPIES:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    for name in HOST_DATA:
        monkeypatch.setattr(torch, name, counted(name, getattr(torch, name)))
    return seen


MODELS = {
    "mlp": lambda: (dd.mlp(16, 4, width=32, depth=3, seed=0), torch.randn(32, 16)),
    "cnn_bn": lambda: (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                     nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 36, 4)),
                       torch.randn(32, 3, 6, 6)),
    "lstm": lambda: (_LSTMNet(), torch.randn(32, 5, 8)),
    "tanh_sigmoid": lambda: (nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 24), nn.Sigmoid(),
                                           nn.Linear(24, 4)), torch.randn(32, 16)),
}


class _LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.head = nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def _train(model, x, mon, steps, syncs=None, copies=None, start=3, loss_fn=nn.functional.cross_entropy):
    """`steps` optimizer steps with `mon.step(loss)`; the sync counters are active from step `start`
    on (the first two recorded steps may read the host once: discovery, input/output facts, start
    weights, the layout of a row)."""
    torch.manual_seed(0)
    y = torch.randint(0, 4, (len(x),))
    y[:2] = -100  # ignored targets (a loss module's ignore_index)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    counted = []
    for i in range(steps):
        mode = syncs if (syncs is not None and i >= start) else None
        before = len(copies) if copies is not None else 0
        if mode is not None:
            mode.__enter__()
        try:
            loss = loss_fn(model(x), y)
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


@pytest.mark.parametrize("loss", ["function", "module"])  # a loss module: the batches' classes are kept too
@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_monitor_steps_read_nothing_on_the_host(name, every, loss, host_copies):
    model, x = MODELS[name]()
    syncs = _Syncs()
    loss_fn = nn.functional.cross_entropy if loss == "function" else nn.CrossEntropyLoss()
    with Monitor(model, every=every, window=2, loss_fn=loss_fn) as mon:  # windows roll
        start = max(3, 2 * every)  # from the third recorded step on
        copied = _train(model, x, mon, steps=start + 4 * every, syncs=syncs, copies=host_copies, start=start,
                        loss_fn=loss_fn)
        assert syncs.seen == [] and copied == [], (syncs.seen, copied)
        assert loss == "function" or mon._classes.counts()[-1] == torch.bincount(
            torch.randint(0, 4, (len(x),), generator=torch.manual_seed(0))[2:], minlength=4).tolist()
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


LOSSES = {  # loss passed to step() at each of 12 steps; the first non-finite one is the answer
    "tensors": [torch.tensor(1.0)] * 9 + [torch.tensor(float("nan"))] + [torch.tensor(2.0)] * 2,
    "tensor_inf_late": [torch.tensor(1.0)] * 7 + [torch.tensor(float("inf"))] * 5,
    "gaps": [torch.tensor(1.0), None, torch.tensor(1.0), None, None, torch.tensor(float("nan"))] + [None] * 6,
    "numbers": [1.0, 2.0, 1e39, 3.0] + [1.0] * 8,  # 1e39: Inf in float32, as a tensor loss would be
    "mixed": [1.0, torch.tensor(1.0), 2.0, torch.tensor(float("nan")), float("nan")] + [1.0] * 7,
    "finite": [torch.tensor(0.5)] * 12,
}


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("case", list(LOSSES))
def test_first_nonfinite_step_is_found_without_host_data(case, every, monkeypatch, host_copies):
    """The first recorded step whose loss is NaN/Inf, folded every 2 tracked losses (``LOSS_FOLD``), is the
    host's answer; folds of tensor losses whose steps advance by `every` make no tensor from host data."""
    import deepdiag.monitor as monitor_module

    monkeypatch.setattr(monitor_module, "LOSS_FOLD", 2)
    model, x = MODELS["mlp"]()
    losses = LOSSES[case]
    with Monitor(model, every=every) as mon:
        for i, loss in enumerate(losses):
            out = model(x).square().mean()
            model.zero_grad()
            out.backward()
            before = len(host_copies)
            mon.step(loss)
            made = host_copies[before:]
            if case in ("tensors", "tensor_inf_late", "finite") and i >= 2 * every:
                assert made == [], (i, made)
        mon._fold_losses()
        got = int(mon._bad_step)
        assert mon.problems == []  # every step recorded (a 1e39 number is stored as Inf, not an error)
    recorded = [(s, v) for s, v in enumerate(losses) if s % every == 0 and v is not None]
    bad = [s for s, v in recorded if not math.isfinite(float(torch.tensor(float(v))))]
    assert got == (bad[0] if bad else -1)
