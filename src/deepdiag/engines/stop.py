"""Stopping doomed runs (``dd.sweep(..., stop_on=...)``): the measuring side of the stop policy, for
each engine; which finding stops a run is ``deepdiag.rules.stop`` and the findings come from
``deepdiag.rules.judge``, as for a user's ``Monitor``.

* local (and process) engine: ``Stopper``, a ``Monitor`` attached to the run, checking every
  ``CHECK_EVERY`` steps and at every epoch end; the run ends at the end of the epoch in which a finding
  of severity ``stop_on`` or worse was first seen.
* vectorized engine: a ``Monitor`` cannot be attached to one member of a stack (its hooks see all N
  members at once), but the statistics ``stop_on`` needs are per-member by construction, so they are
  measured on the stack at each epoch end (no host sync inside the step loop), turned into the same
  ``LayerStats`` records a Monitor builds, and judged by the same ``judge``:

  - divergence: the member's first non-finite batch loss (tracked by the engine) → ``divergence`` (error);
  - stalled updates: u_l = ‖W_l(k) − W_l(0)‖ / (k · ‖W_l(k)‖) over the first k = min(10, steps) steps
    of the epoch, per weight layer — the Monitor's measure (it compares weights 10 recorded steps
    apart); a whole epoch would underestimate the per-step ratio of noisy SGD, whose steps partly
    cancel (a random walk grows like √steps) → ``stalled_updates``;
  - dead units: a ReLU hidden unit is dead when its output is 0 on every training example of the
    epoch-end evaluation pass (positions = n_train, far above the rule's 32) → ``dead_units``.

  The local engine checks every 10 steps and records the step a finding was first seen; here a
  finding is seen at the end of the epoch in which it appears, so ``stop_step`` is that epoch's last
  step (a divergence: the member's first non-finite step).
"""
from __future__ import annotations

import torch

from ..findings import Finding, severity_rank
from ..measure.records import LayerStats
from ..monitor import Monitor
from ..rules import Context, Curves, judge
from ..rules.stop import STOP_FIRST, first_stop

__all__ = ["CHECK_EVERY", "STOP_FIRST", "UPDATE_GAP", "Stopper", "first_stop", "update_ratios",
           "member_layer_stats", "member_findings"]

CHECK_EVERY = 10  # optimizer steps between a stopping monitor's checks (one host sync and diagnose each)
UPDATE_GAP = 10  # steps between the two weight snapshots (the Monitor's UPDATE_EVERY recorded steps)


class Stopper:
    """A ``Monitor`` on one run that says when to stop: a finding of severity ``stop_on`` or worse.

    Findings are collected through ``on_finding`` (checks every `check_every` steps) and by a check at
    each epoch end (after the epoch's curves are handed to the monitor); ``on_epoch`` returns True once
    one was seen, so ``dd.fit`` ends the run there. ``finding`` is the reason (``first_stop``).
    `config`: the run's ``RunConfig`` (its lr and batch size are the monitor's remedy hints).
    """

    def __init__(self, model: torch.nn.Module, stop_on: str, config, ds, loss_fn, check_every: int = CHECK_EVERY):
        self.stop_on, self.rank = stop_on, severity_rank(stop_on)
        self.hits = []
        out = getattr(ds, "out_features", None)
        classify = getattr(ds, "task", "classification") == "classification"
        n_classes = (max(2, out) if out else None) if classify else None
        self.monitor = Monitor(model, every=1, loss_fn=loss_fn, on_finding=self._seen, check_every=check_every,
                               lr=config.lr, batch_size=config.batch_size, n_classes=n_classes)

    def _seen(self, finding) -> None:
        if finding.rank >= self.rank:
            self.hits.append(finding)

    def on_step(self) -> None:
        self.monitor.step()

    def on_epoch(self, hist) -> bool:
        self.monitor.epoch(train_loss=hist.train_loss[-1], val_loss=hist.val_loss[-1],
                           train_acc=hist.train_acc[-1], val_acc=hist.val_acc[-1])
        self.monitor.check()
        return bool(self.hits)

    @property
    def finding(self) -> Finding | None:
        return first_stop(self.hits, self.stop_on)

    def close(self) -> None:
        self.monitor.close()


# ---- the vectorized engine: per-member statistics ----

@torch.no_grad()
def update_ratios(now: dict, before: dict, steps: int) -> dict[str, torch.Tensor]:
    """{weight name: (N,) per-step ‖ΔW‖/‖W‖ over `steps` steps} (N-stacked weights)."""
    out = {}
    for name, w in now.items():
        dims = tuple(range(1, w.dim()))
        norm = w.norm(dim=dims)
        out[name] = (w - before[name]).norm(dim=dims) / (max(1, steps) * norm.clamp_min(1e-30))
    return out


def member_layer_stats(member: int, ratios: dict, weight_norms: dict, fired: dict | None, n_seen: int,
                       biases: dict | None = None) -> list[LayerStats]:
    """The records the rules read, for one member: a weight layer per stacked weight (update ratio) and
    a ReLU activation per hidden layer (units that fired at least once on `n_seen` examples, and the
    mean bias feeding them)."""
    rows = []
    for name, u in ratios.items():
        ratio = float(u[member])
        rows.append(LayerStats(name.removesuffix(".weight"), kind="weight", update_rel=ratio,
                               weight_norm=float(weight_norms[name][member]), frozen=ratio == 0.0, trainable=True))
    for name, f in (fired or {}).items():
        alive = f[member]
        units = int(alive.numel())
        dead = units - int(alive.sum())
        bias = biases.get(name) if biases else None
        rows.append(LayerStats(name, kind="activation", family="relu", units=units, dead=dead,
                               frac_dead=dead / units if units else None, positions=n_seen,
                               bias_mean=float(bias[member].mean()) if bias is not None else None))
    return rows


def member_findings(rows: list[LayerStats], lr: float, diverged_step: int | None, step: int) -> list[Finding]:
    """The findings of one member (``judge``): divergence (`diverged_step` 1-based, as ``History`` keeps
    it), stalled updates, dead units; `step` is 0-based, as a Monitor's."""
    curves = Curves(first_bad_step=diverged_step - 1) if diverged_step is not None else None
    return judge(rows, curves=curves, context=Context(lr=lr, base_lr=lr, knows_optimizer=True), step=step)
