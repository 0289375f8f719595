"""Repair rate of the machine-readable remedies: every pathology scenario of ``tests/test_remedies.py``
is diagnosed (checkup, then a Monitor in a plain training loop), its ``Finding.fix`` applied exactly as
stated, and the model retrained with the same seed and step budget.

    PYTHONPATH=src python benchmarks/repair_rate.py

Printed per scenario: the fix, the validation metric before -> after (accuracy; minus the validation
loss for the regression and overfitting scenarios) and whether it counts as repaired: the finding gone,
no other warning or error, and the metric improved. Then the count, "k of n repaired" (the number
docs/diagnosis.md quotes). The tests assert the same for each scenario; this only tabulates it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_remedies as T  # noqa: E402  (the scenarios live with their tests)

import deepdiag as dd  # noqa: E402


def repair(case: T.Case) -> tuple[dict, float, float, bool]:
    before = T.run(case)
    fix = {}
    for f in T.serious(before.findings, case.code):
        fix.update(f.fix or {})
    after = T.run(T.apply(case, fix)) if fix else before
    repaired = bool(fix) and not T.serious(after.findings) and after.score(case.metric) > before.score(case.metric)
    return fix, before.score(case.metric), after.score(case.metric), repaired


def degradation() -> tuple[dict, float, float, bool]:
    shallow = T.Case("shallow", "degradation", depth=2, lr=0.02, momentum=0.9, steps=400, epochs=5)
    deep = T.Case("deep", "degradation", depth=30, lr=0.02, momentum=0.9, steps=400, epochs=5)
    s, d = T.run(shallow), T.run(deep)
    found = dd.compare_depths({2: s.train_curve, 30: d.train_curve})
    fix = found[0].fix if found else {}
    fixed = T.run(T.apply(deep, fix)) if fix else d
    repaired = bool(fix) and not dd.compare_depths({2: s.train_curve, 30: fixed.train_curve}) and fixed.acc > d.acc
    return fix, d.acc, fixed.acc, repaired


def main() -> None:
    torch.set_num_threads(1)
    results = {c.id: repair(c) for c in T.CASES}
    results["degradation_depth30"] = degradation()
    print(f"{'scenario':40s} {'before':>8s}    {'after':>8s}  repaired  fix")
    for k, (fix, b, a, ok) in results.items():
        print(f"{k:40s} {b:8.3f} -> {a:8.3f}  {'yes' if ok else 'NO':8s}  {fix}")
    print(f"{sum(r[3] for r in results.values())} of {len(results)} repaired")


if __name__ == "__main__":
    main()
