"""Overhead of ``dd.Monitor`` on a plain training loop (not a test: it reports, it does not assert).

Loop: ``dd.mlp(64, 10, width=256, depth=8)`` on the digits set, batch 128, SGD with momentum, CPU.
Each configuration runs `--steps` optimizer steps, `--repeats` times, interleaved (bare, every=1,
every=10, bare, ...) so that load on a shared machine hits all alike; the table gives the median
time per step and its ratio to the bare loop, and the median over repeats of each repeat's CPU-time
ratio to the bare run next to it (paired: load that drifts between repeats cancels). Goals: <= 1.15x
at every=1, <= 1.02x at every=10.

Cockpit's "economy" preset (f-dangel/cockpit, ``cockpit-for-pytorch``) is timed on the same loop
when it imports (it needs BackPACK and an older torch; install it in a separate venv).

    PYTHONPATH=src python benchmarks/monitor_overhead.py [--steps 200] [--repeats 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

import deepdiag as dd
from deepdiag.monitor import Monitor


def make(seed: int = 0):
    model = dd.mlp(64, 10, width=256, depth=8, seed=seed)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def batches(ds, batch: int, steps: int):
    g = torch.Generator().manual_seed(0)
    n = len(ds.x_train)
    out = []
    while len(out) < steps:
        order = torch.randperm(n, generator=g)
        out += [order[i:i + batch] for i in range(0, n - batch + 1, batch)]
    return [(ds.x_train[i], ds.y_train[i]) for i in out[:steps]]


def run(kind: str, data) -> tuple[float, float]:
    """(wall, CPU) seconds per step of one timed run, after a warm-up of 10 steps. CPU time
    (time.process_time) is the steadier number on a shared machine: it does not count time spent
    waiting for a core."""
    model, opt = make()
    loss_fn = nn.CrossEntropyLoss()
    mon = Monitor(model, every=int(kind.split("=")[1])) if kind.startswith("every") else None
    cockpit = _cockpit(model, loss_fn) if kind == "cockpit" else None

    def step(i, x, y):
        out = model(x)
        loss = loss_fn(out, y)
        opt.zero_grad()
        if cockpit is None:
            loss.backward()
        else:
            cockpit_step(cockpit, model, loss_fn, out, y, loss, i)
        opt.step()
        if mon is not None:
            mon.step(loss)

    for i, (x, y) in enumerate(data[:10]):
        step(i, x, y)
    t, c = time.perf_counter(), time.process_time()
    for i, (x, y) in enumerate(data[10:], 10):
        step(i, x, y)
    n = len(data) - 10
    dt = ((time.perf_counter() - t) / n, (time.process_time() - c) / n)
    if mon is not None:
        mon.diagnose()
        mon.close()
    return dt


def _cockpit(model, loss_fn):
    from backpack import extend
    from cockpit import Cockpit, CockpitPlotter  # noqa: F401
    from cockpit.utils.configuration import configuration

    extend(model)
    lf = extend(nn.CrossEntropyLoss(reduction="none"))
    return Cockpit(list(model.parameters()), quantities=configuration("economy")), lf


def cockpit_step(ck, model, loss_fn, out, y, loss, i):
    cockpit, lf = ck
    losses = lf(out, y)
    with cockpit(i, info={"batch_size": len(y), "individual_losses": losses, "loss": loss}):
        loss.backward(create_graph=cockpit.create_graph(i))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")  # BackPACK warns once per container module
    ds = dd.data.load("digits", seed=0)
    data = batches(ds, 128, a.steps + 10)
    kinds = ["bare", "every=1", "every=10"]
    try:
        model, _ = make()
        _cockpit(model, nn.CrossEntropyLoss())
        kinds.append("cockpit")
    except Exception as e:  # noqa: BLE001 - report why it is absent
        print(f"cockpit economy: not timed ({type(e).__name__}: {e})")
    times = {k: [] for k in kinds}
    for _ in range(a.repeats):
        for k in kinds:
            times[k].append(run(k, data))
    med = {k: [statistics.median(t[j] for t in times[k]) for j in (0, 1)] for k in kinds}
    print(f"torch {torch.__version__}, threads {a.threads}, steps {a.steps}, repeats {a.repeats}, "
          f"MLP width 256 depth 8, batch 128, digits, CPU")
    print(f"| loop | wall ms/step | wall ratio | CPU ms/step | CPU ratio | paired CPU ratio | goal |")
    print("|---|---|---|---|---|---|---|")
    goals = {"every=1": "<= 1.15x", "every=10": "<= 1.02x"}
    for k in kinds:
        (w, c), (bw, bc) = med[k], med["bare"]
        paired = statistics.median(t[1] / b[1] for t, b in zip(times[k], times["bare"]))
        print(f"| {k} | {w * 1e3:.3f} | {w / bw:.3f}x | {c * 1e3:.3f} | {c / bc:.3f}x | {paired:.3f}x | "
              f"{goals.get(k, '')} |")


if __name__ == "__main__":
    main()
