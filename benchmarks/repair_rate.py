"""Repair rate on deepdiag's own pathology scenarios (``tests/test_remedies.py``), through ``dd.repair``.

    PYTHONPATH=src python benchmarks/repair_rate.py [--rounds 2] [--candidates 8] [--only ID,...]

Each scenario (a plain-torch MLP with one injected pathology) becomes what ``dd.repair`` takes: the
model builder (layers the scenario leaves out of the optimizer are frozen with ``requires_grad=False``),
the data with the targets as the scenario feeds them to its loss, its loss, and a ``dd.TrainConfig``
with its optimizer, lr, momentum, weight decay and batch size, and as many epochs as its step budget
covers (at least one). Printed per scenario: detected (a finding at warning or worse), repaired
(verified and confirmed at seeds 0 and 1), the first guess (every finding's ``Finding.fix`` merged,
one round) repaired, the fix kept, the metric before -> after, the candidate trainings and the wall
time; then the totals. The real-fault benchmark's repair rate is ``python -m benchmarks.real_faults.repair``.
"""
from __future__ import annotations

import argparse
import copy
import functools
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_remedies as T

import deepdiag as dd
from deepdiag.repair import ArrayData


def build(case: T.Case):
    model = T.build(case)
    for name, child in model.named_children():
        if name in case.frozen:
            child.requires_grad_(False)
    return model


def inputs(case: T.Case):
    d = T.data(case)
    data = ArrayData(d.x_train, T.targets(case, d.y_train), d.x_val, T.targets(case, d.y_val),
                   "regression" if case.loss == "mse" else "classification")
    epochs = max(1, math.ceil(case.steps * case.bs / len(d.x_train)))
    config = dd.TrainConfig(optimizer=case.opt, lr=case.lr, momentum=case.momentum, batch_size=case.bs,
                            weight_decay=case.weight_decay, epochs=epochs, clip_grad_norm=case.clip)
    return functools.partial(build, copy.deepcopy(case)), data, config, T.loss_of(case)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--only", help="comma-separated scenario ids")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = [c for c in T.CASES if a.only is None or c.id in a.only.split(",")]
    rows, t0 = [], time.perf_counter()
    print(f"{'scenario':40s} {'detected':>8s} {'repaired':>8s} {'first':>6s} {'before':>8s}    {'after':>8s} "
          f"{'runs':>4s} {'s':>4s}  fix")
    for c in cases:
        b, data, config, loss_fn = inputs(c)
        t = time.perf_counter()
        r = dd.repair(b, data, config, loss_fn=loss_fn, rounds=a.rounds, max_candidates=a.candidates,
                      engine="local", progress=False)
        d = r.to_dict()
        row = (c.id, bool(r.findings), r.repaired, bool(r.first_guess_repaired), d["before"], d["after"],
               r.trainings, time.perf_counter() - t, r.fix)
        rows.append(row)
        before, after = (("-" if v is None else f"{v:8.3f}") for v in (d["before"], d["after"]))
        print(f"{c.id:40s} {row[1]!s:>8s} {row[2]!s:>8s} {row[3]!s:>6s} {before:>8s} -> {after:>8s} "
              f"{row[6]:4d} {row[7]:4.0f}  {r.fix}", flush=True)
    det = [r for r in rows if r[1]]
    n = max(len(det), 1)
    print(f"\ndetected {len(det)} of {len(rows)}; repaired {sum(r[2] for r in det)} of {len(det)} "
          f"({100 * sum(r[2] for r in det) / n:.1f} %); Finding.fix alone {sum(r[3] for r in det)} of {len(det)} "
          f"({100 * sum(r[3] for r in det) / n:.1f} %); {sum(r[6] for r in det) / n:.1f} trainings and "
          f"{sum(r[7] for r in det) / n:.0f} s per repair; {time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
