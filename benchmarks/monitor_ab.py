"""Monitor overhead of two versions of deepdiag side by side in one process (not a test: it reports).

Loop as in ``monitor_overhead.py`` (MLP width 256 depth 8, digits, batch 128, SGD momentum, CPU). Kinds:
the bare loop, and ``Monitor(every=1)`` / ``Monitor(every=10)`` from the code under ``src`` ("new") and
from an older copy of the package imported as ``ddold`` ("old"). 20-step blocks in rotating order, CPU
time (time.process_time); per kind the median over rounds of its block time over the same round's bare
block (paired ratio), and the ratio of the medians. Interleaving in one process makes load on a shared
machine hit all kinds alike; separate runs of ``monitor_overhead.py`` swing by several percent.
With the default `capacity` most of a long run's recorded steps are dropped by decimation (from 256
recorded steps on); ``--capacity 4096`` keeps every row, as the first 256 recorded steps of any run do.

    git archive REV src/deepdiag | tar -x -C /tmp/old && mv /tmp/old/src/deepdiag /tmp/old/ddold
    PYTHONPATH=src:/tmp/old python benchmarks/monitor_ab.py [--rounds 80] [--threads 1] [--capacity 256]
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import deepdiag as dd
from deepdiag.monitor import Monitor

from paired_blocks import rotate, table

BLOCK = 20  # steps per timed block


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=80)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--capacity", type=int, default=256, help="the Monitors' capacity (rows kept)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import ddold.monitor  # the older version (see the module docstring)

    monitors = {"old": ddold.monitor.Monitor, "new": Monitor}
    ds = dd.data.load("digits", seed=0)
    g = torch.Generator().manual_seed(0)
    n, order = len(ds.x_train), []
    while len(order) < 400:
        perm = torch.randperm(n, generator=g)
        order += [perm[i:i + 128] for i in range(0, n - 127, 128)]
    data = [(ds.x_train[i], ds.y_train[i]) for i in order[:400]]
    loss_fn = nn.CrossEntropyLoss()
    kinds = ["bare", "old every=1", "new every=1", "old every=10", "new every=10"]
    runs = {}
    for k in kinds:
        model = dd.mlp(64, 10, width=256, depth=8, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        version, _, every = k.partition(" every=")
        runs[k] = [model, opt, monitors[version](model, every=int(every), capacity=a.capacity) if every else None, 0]

    times = rotate(runs, data, loss_fn, a.rounds, BLOCK, warmup=3)
    bare = statistics.median(times["bare"])
    print(f"torch {torch.__version__}, threads {a.threads}, rounds {a.rounds} of {BLOCK}-step blocks, "
          f"capacity {a.capacity}, bare {bare / BLOCK * 1e3:.3f} ms/step (CPU)")
    print("\n".join(table(times)))

if __name__ == "__main__":
    main()
