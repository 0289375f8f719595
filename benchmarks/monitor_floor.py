"""The Monitor against the least a recorded step can cost (not a test: it reports, it does not assert).

Loop of ``monitor_overhead.py`` (MLP width 256 depth 8, digits, batch 128, SGD with momentum, CPU). Three
kinds, 20-step blocks in rotating order, CPU time: the bare loop; ``Monitor(every=1)`` keeping every row;
and ``floor``, a hand-written loop that makes the kernels a kept Monitor step makes for this MLP and
nothing else — a norm of each Linear's output, the first and last Linear's input norms, a per-unit
maximum of each hidden ReLU's output (read at the next Linear's input), a gradient pre-hook per Linear
with a norm of ∂L/∂output, one ``_foreach_norm`` of the weight gradients, the unit windows' fused maximum
and dead count, and the row stacked, divided and written into a preallocated buffer. No bookkeeping:
no sites, no checks, no carried values, no loss. The Monitor's distance to it is what its Python costs.

    PYTHONPATH=src python benchmarks/monitor_floor.py [--rounds 60] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import deepdiag as dd
from deepdiag.monitor import Monitor

from monitor_overhead import batches, make
from paired_blocks import rotate, table

_norm, _set_grad = torch.linalg.vector_norm, torch._C._set_grad_enabled


class Floor:
    """The kernels of a kept Monitor step on ``dd.mlp``'s Linear/ReLU stack, with no bookkeeping."""

    def __init__(self, model: nn.Module, steps: int):
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        n = len(self.linears)
        self.latest: list = [None] * (2 * n + 2)  # output norms, signal norms, two input norms
        self.unit_max: list = [None] * (n - 1)  # hidden ReLU outputs' per-unit maxima
        width = self.linears[0].out_features
        self.current = torch.full((n - 1, width), -torch.inf)
        self.previous = torch.full((n - 1, width), -torch.inf)
        self.windows = list(self.current.unbind())
        self.units = torch.full((n - 1,), float(width))
        self.rows = torch.full((steps, 8 * (2 * n + 1)), torch.nan)
        self.n = 0
        for i, m in enumerate(self.linears):
            m.register_forward_hook(self._hook(i, edge=i in (0, n - 1)))

    def _hook(self, i: int, edge: bool):
        latest, unit_max, n = self.latest, self.unit_max, len(self.linears)

        def signal(grad_outputs):
            latest[n + i] = _norm(grad_outputs[0])

        def hook(module, args, y):
            _set_grad(False)
            x = args[0]
            latest[i] = _norm(y)
            if edge:
                latest[2 * n + (i > 0)] = _norm(x)
            if i > 0:
                unit_max[i - 1] = x.amax(0)
            y.grad_fn.register_prehook(signal)
            _set_grad(True)
        return hook

    @torch.no_grad()
    def step(self, loss=None) -> None:
        grads = torch._foreach_norm([m.weight.grad for m in self.linears])
        torch._foreach_maximum_(self.windows, self.unit_max)
        fired = (torch.maximum(self.current, self.previous) > 0).sum(1, dtype=torch.float32)
        row = torch.cat([torch.stack(self.latest + list(grads)), self.units - fired])
        row = row / torch.ones_like(row)  # (the Monitor divides by each entry's count)
        self.rows[self.n % len(self.rows), :len(row)].copy_(row)
        self.n += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = batches(dd.data.load("digits", seed=0), 128, 400)
    loss_fn = nn.CrossEntropyLoss()
    runs = {}
    for kind in ("bare", "floor", "monitor every=1"):
        model, opt = make()
        if kind == "bare":
            watcher = None
        elif kind == "floor":
            watcher = Floor(model, 100_000)
        else:
            watcher = Monitor(model, every=1, capacity=100_000)
        runs[kind] = [model, opt, watcher, 0]

    times = rotate(runs, data, loss_fn, a.rounds)
    bare = statistics.median(times["bare"])
    print(f"torch {torch.__version__}, threads {a.threads}, {a.rounds} rounds of 20-step blocks, bare "
          f"{bare / 20 * 1e3:.3f} ms/step (CPU)")
    print("\n".join(table(times)))

if __name__ == "__main__":
    main()
