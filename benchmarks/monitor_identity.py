"""Monitor statistics of two versions of deepdiag compared number for number (not a test: it needs an
older copy of the package, imported as ``ddold``; it exits 1 when anything differs).

Each case trains one seeded model twice, once under ``Monitor`` from the code under ``src`` ("new") and
once under the older copy ("old"), with the same batches, an evaluation pass under ``torch.no_grad()``
and a two-micro-batch step now and then (gradient accumulation), a small `capacity` and `window` so
that decimation and window rolls happen, and ``every`` 1, 3 and 10. Compared exactly (bit for bit, NaN
equal to NaN): the statistics buffer and losses with their steps, ``history`` (layers, steps, epochs),
``rows()``, ``diagnose()``, the findings ``check()`` returned along the way, ``coverage`` and the
gradient-carry facts.

`--skip weight_norm,unit_frac` leaves statistics out of the comparison (their buffer column and the
history columns made from them): for comparing across a change that reads them on purpose at other steps.

    git archive REV src/deepdiag | tar -x -C /tmp/old && mv /tmp/old/src/deepdiag /tmp/old/ddold
    PYTHONPATH=src:/tmp/old python benchmarks/monitor_identity.py [--steps 90] [--skip weight_norm,unit_frac]
"""
from __future__ import annotations

import argparse
import copy
import math
import warnings

import torch
from torch import nn

from deepdiag.monitor import STATS, Monitor

DERIVED = {"weight_norm": ("weight_norm", "grad_rel", "update_rel"), "unit_frac": ("dead_frac", "saturated_frac"),
           "update_norm": ("update_rel",), "grad_norm": ("grad_norm", "grad_rel")}  # history columns made from a statistic


class _Seq(nn.Module):
    """A recurrent or attention body over (batch, 6, 8) inputs and a linear head on the last position."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body, self.head = body, nn.Linear(16, 5)

    def forward(self, x):
        h = self.body(x)
        return self.head((h[0] if isinstance(h, tuple) else h)[:, -1])


class _Functional(nn.Module):
    """ReLU called as a function (units measured at the next layer's input) and a LayerNorm on the path."""

    def __init__(self):
        super().__init__()
        self.a, self.n, self.b, self.c = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 16), nn.Linear(16, 5)

    def forward(self, x):
        return self.c(torch.relu(self.b(self.n(torch.relu(self.a(x))))))


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5))


CASES = {  # name -> (model factory, input shape without the batch)
    "mlp": (lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)), (8,)),
    "inplace_relu_dropout": (lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(inplace=True), nn.Dropout(0.1),
                                                   nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Linear(32, 5)), (8,)),
    "tanh_sigmoid": (lambda: nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Sigmoid(),
                                           nn.Linear(16, 5)), (8,)),
    "functional_relu": (_Functional, (8,)),
    "cnn_bn": (_cnn, (1, 7, 7)),
    "lstm": (lambda: _Seq(nn.LSTM(8, 16, batch_first=True)), (6, 8)),
    "gru": (lambda: _Seq(nn.GRU(8, 16, num_layers=2, batch_first=True)), (6, 8)),
    "transformer": (lambda: _Seq(nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True), 2, enable_nested_tensor=False))),
                    (6, 8)),
}


def _train(monitor_cls, name: str, every: int, steps: int, skip: tuple = ()):
    """Train case `name` under `monitor_cls`; return everything the Monitor recorded, as plain values
    (without the statistics in `skip`)."""
    factory, shape = CASES[name]
    torch.manual_seed(0)
    model = factory()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, *shape, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(12)]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    seen = []
    mon = monitor_cls(model, every=every, capacity=8, window=5, loss_fn=loss_fn, n_classes=5,
                      on_finding=seen.append, check_every=25, optimizer=opt)
    checks = []
    for s in range(steps):
        x, y = data[s % len(data)]
        opt.zero_grad()
        if s % 7 == 3:  # two micro-batches (gradient accumulation): the second pass is the recorded one
            (loss_fn(model(x[:8]), y[:8]) / 2).backward()
            loss = loss_fn(model(x[8:]), y[8:]) / 2
        else:
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
        if s % 11 == 5:
            model.eval()
            with torch.no_grad():
                model(x)  # an evaluation pass: not training statistics
            model.train()
        if s % 30 == 29:
            mon.epoch(train_loss=loss.detach(), val_loss=float(loss) * 1.1)
        if s % 40 == 39:
            checks.append([_finding(f) for f in mon.check()])
    hist = mon.history
    rows = mon._buf.rows[:mon._buf.n].clone()
    rows[:, :, [STATS.index(k) for k in skip]] = math.nan
    layers = hist.layers.drop(columns=[c for k in skip for c in DERIVED.get(k, (k,))])
    out = {"buffer": _bits(rows), "losses": _bits(mon._buf.loss[:mon._buf.n]),
           "steps": list(mon._buf.steps), "recorded": mon.recorded,
           "layers": layers.to_dict("list"), "step_df": hist.steps.to_dict("list"),
           "epochs": hist.epochs.to_dict("list"), "rows": [repr(r) for r in mon.rows()],
           "diagnose": [_finding(f) for f in mon.diagnose()], "checks": checks,
           "notified": [_finding(f) for f in seen], "coverage": repr(mon.coverage),
           "carry": repr(mon._carry.facts())}
    mon.close()
    return out


def _bits(t: torch.Tensor) -> list:
    """A float32 tensor's bit patterns (NaN equal to NaN, -0.0 unequal to 0.0)."""
    return t.contiguous().view(torch.int32).flatten().tolist()


def _finding(f) -> str:
    return repr((f.code, f.severity, tuple(f.layers), f.step, f.summary, f.remedy, _nan_safe(f.evidence),
                 _nan_safe(f.fix)))


def _nan_safe(v):
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, dict):
        return {k: _nan_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nan_safe(x) for x in v]
    return v


def _diff(a, b, path="") -> str | None:
    """The first place where a and b differ (NaN equal to NaN), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(a)} != {sorted(b)}"
        return next((d for k in a if (d := _diff(a[k], b[k], f"{path}.{k}"))), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _diff(x, y, f"{path}[{i}]"))), None)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if a == b and type(a) is type(b) else f"{path}: {a!r} != {b!r}"


def _leaves(v) -> int:
    if isinstance(v, dict):
        return sum(_leaves(x) for x in v.values())
    return sum(_leaves(x) for x in v) if isinstance(v, list) else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--skip", default="", help=f"statistics left out, comma-separated, of {', '.join(STATS)}")
    a = p.parse_args()
    skip = tuple(k for k in a.skip.split(",") if k)
    unknown = [k for k in skip if k not in STATS]
    if unknown:
        p.error(f"--skip: unknown {', '.join(unknown)}; allowed: {', '.join(STATS)}")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import ddold.monitor  # the older version (see the module docstring)

    bad = 0
    for name in CASES:
        for every in (1, 3, 10):
            old = _train(ddold.monitor.Monitor, name, every, a.steps, skip)
            new = _train(Monitor, name, every, a.steps, skip)
            d = _diff(old, new)
            print(f"{name:22s} every={every}: {'identical' if d is None else 'DIFFERENT ' + d} "
                  f"({len(new['steps'])} rows, {new['recorded']} recorded, {len(new['diagnose'])} findings, "
                  f"{_leaves(new)} values compared)")
            bad += d is not None
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
