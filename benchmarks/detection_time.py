"""Time to detection: the optimizer step at which a Monitor (check_every=1, on_finding) first reports
each scenario's code, for every pathology scenario of tests/test_remedies.py (plain-torch models).
Findings from the pre-training checkup count as step 0.

    python benchmarks/detection_time.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_remedies as scenarios  # noqa: E402  (the scenarios live with their test)


def first_seen(case) -> int | None:
    seen = {}

    def note(f):
        if f.code == case.code and f.severity in ("warning", "error"):
            seen.setdefault("step", f.step)

    scenarios.run(case, on_finding=note, check_every=1)
    pre = scenarios.dd.checkup(scenarios.build(case), scenarios.data(case).x_train[:256],
                               scenarios.targets(case, scenarios.data(case).y_train[:256]),
                               loss_fn=scenarios.loss_of(case))
    if any(f.code == case.code and f.rank >= 1 for f in pre.findings):
        return 0
    return seen.get("step")


def main():
    torch.set_num_threads(1)
    print(f"{'scenario':42s} {'code':22s} first seen at step (of steps)")
    for case in scenarios.CASES:
        step = first_seen(case)
        print(f"{case.id:42s} {case.code:22s} {step if step is not None else 'epoch-end only':>6} ({case.steps})")


if __name__ == "__main__":
    main()
