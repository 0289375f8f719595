"""Per-member findings for the vectorized engine's ``stop_on``: the Monitor's own rules, fed with
statistics measured on the stacked model one member at a time.

A ``Monitor`` cannot be attached to one member of a stack (its hooks see all N members at once), but
the statistics ``stop_on`` needs are per-member by construction, so they are measured on the stack at
each epoch end (no host sync inside the step loop) and judged by the same rule functions:

- divergence: the member's first non-finite batch loss (tracked by the engine) → ``divergence`` (error);
- stalled updates: u_l = ‖W_l(k) − W_l(0)‖ / (k · ‖W_l(k)‖) over the first k = min(10, steps) steps of
  the epoch, per weight layer — the Monitor's measure (it compares weights 10 recorded steps apart); a
  whole epoch would underestimate the per-step ratio of noisy SGD, whose steps partly cancel (a random
  walk grows like √steps) → ``stalled_updates``;
- dead units: a ReLU hidden unit is dead when its output is 0 on every training example of the
  epoch-end evaluation pass (positions = n_train, far above the rule's 32) → ``dead_units``.

The local engine checks every 10 steps and records the step a finding was first seen; here a finding
is seen at the end of the epoch in which it appears, so ``stop_step`` is that epoch's last step (a
divergence: the member's first non-finite step).
"""
from __future__ import annotations

import torch

from ..diagnose import dead_units, divergence, stalled_updates
from ..findings import Finding, severity_rank
from .local import STOP_FIRST


UPDATE_GAP = 10  # steps between the two weight snapshots (the Monitor's UPDATE_EVERY recorded steps)


@torch.no_grad()
def update_ratios(now: dict, before: dict, steps: int) -> dict[str, torch.Tensor]:
    """{weight name: (N,) per-step ‖ΔW‖/‖W‖ over `steps` steps} (N-stacked weights)."""
    out = {}
    for name, w in now.items():
        dims = tuple(range(1, w.dim()))
        norm = w.norm(dim=dims)
        out[name] = (w - before[name]).norm(dim=dims) / (max(1, steps) * norm.clamp_min(1e-30))
    return out


def layer_rows(member: int, ratios: dict, weight_norms: dict, fired: dict | None, n_seen: int,
               biases: dict | None = None) -> list[dict]:
    """The rows the Monitor's rules read, for one member: a weight row per layer (update ratio) and a
    ReLU unit row per hidden layer (units that fired at least once on `n_seen` examples)."""
    rows = []
    for name, u in ratios.items():
        wn = float(weight_norms[name][member])
        ratio = float(u[member])
        rows.append({"name": name.removesuffix(".weight"), "kind": "weight", "family": None, "update_rel": ratio,
                     "weight_norm": wn, "frozen": ratio == 0.0, "trainable": True})
    for name, f in (fired or {}).items():
        alive = f[member]
        units = int(alive.numel())
        dead = units - int(alive.sum())
        bias = biases.get(name) if biases else None
        rows.append({"name": name, "kind": "unit", "family": "relu", "units": units, "dead": dead,
                     "frac_dead": dead / units if units else None, "frac_zero": None, "positions": n_seen,
                     "bias_mean": float(bias[member].mean()) if bias is not None else None})
    return rows


def member_findings(rows: list[dict], lr: float, diverged_step: int | None, step: int) -> list[Finding]:
    """The findings of one member: divergence (`diverged_step` 1-based, as ``History`` keeps it), stalled
    updates, dead units (the rules of diagnose); `step` is 0-based, as a Monitor's."""
    if diverged_step is not None:
        return divergence(first_bad_step=diverged_step - 1)  # Finding steps are 0-based, as a Monitor's
    return stalled_updates(rows, step, lr=lr, knows_optimizer=True) + dead_units(rows, step)


def first_stop(findings: list[Finding], stop_on: str) -> Finding | None:
    """The finding that stops the run: at least `stop_on`; the local ``Stopper``'s order (``STOP_FIRST``
    codes, then the most severe) among these findings, which are all seen at the same step."""
    hits = [f for f in findings if severity_rank(f.severity) >= severity_rank(stop_on)]
    if not hits:
        return None
    return min(hits, key=lambda f: (f.code not in STOP_FIRST, -f.rank))
