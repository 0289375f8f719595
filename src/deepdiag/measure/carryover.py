"""``CarryProbe``: does a parameter's ``.grad`` still hold earlier steps' gradients when backward brings
the fresh one (``optimizer.zero_grad()`` forgotten)?

Autograd adds every backward pass's gradient g into ``p.grad``; ``optimizer.zero_grad()`` resets it (to
None, or to zeros with ``set_to_none=False``). Without the reset the optimizer applies, at step t,
G_t = Σ_{s≤t} g_s: for batch gradients of a consistent direction ‖G_t‖ grows linearly with t (as √t for
independent ones), so the effective gradient explodes. The probe reads the mechanism, not its
consequences: a tensor hook on a leaf parameter (``p.register_hook``) runs with the fresh gradient g
*before* autograd adds it into ``p.grad``; at the first backward pass after an optimizer step ``p.grad``
is then None or all zeros when the loop zeroes it, and G_{t−1} ≠ 0 when it does not.

Only the first backward pass after an optimizer step is read: later passes before the next step are
gradient accumulation (several micro-batches per step), which adds into ``.grad`` on purpose. Optimizer
steps are seen through ``optimizer.register_step_post_hook`` when the optimizer is known (``watch``; a
wrapper's inner ``.optimizer`` is hooked, e.g. accelerate's), and through the caller (``Monitor.step``,
once per optimizer step) until that hook has fired once: a wrapper whose steps never reach the hook
leaves the caller's count. Forward passes without a backward pass (evaluation) never run the hook.

Probes: the first and the last trainable parameter (among the optimizer's, when it is known); a check
counts as carried only when every probe that received a gradient held one, so a loop that keeps some
gradients on purpose (a parameter left out of the optimizer) is not taken for one that never zeroes.

Which steps are checked: every `every`-th optimizer step (a Monitor's recorded steps) for the first
``DENSE_CHECKS`` checks, then every ``SPARSE``-th of those. A forgotten reset is a property of the loop's
code, there from the first step on: the dense checks at the start find it within CARRY_RUN + 1 checks
(the rule's run), and the sparse ones still find a loop that changes later (a second training phase)
within SPARSE·CARRY_RUN·every steps. Reading it at every step of a long run adds nothing, and cost ~2 %
of a small model's step (two parameter hooks, a Python call at every backward pass and every step).

Cost: the hooks are registered only while a checked optimizer step runs, and return at once after its
first backward pass; a probe whose ``.grad`` is None (reset, the default) costs no kernel, otherwise
two norms on the device. The readings stay on the device until ``facts()`` (or, to bound memory, every
``FOLD`` checks) reads them in one stacked copy to the host (host sync).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .hooks import Hooks
from .records import CarryFacts

FOLD = 1024  # checks kept on the device before they are read into the host-side counts (one sync each)
DENSE_CHECKS = 32  # checks at every `every`-th step at the start of training (> CARRY_RUN + 1 = 10, with room)
SPARSE = 10  # then every SPARSE-th of those steps is checked


def _norm(t: Tensor) -> Tensor:
    """‖t‖₂ on t's device (a sparse gradient by its stored values)."""
    t = t.detach()
    return torch.linalg.vector_norm(t._values() if t.is_sparse else t).float()


class CarryProbe:
    """Reads, at the first backward pass after every `every`-th optimizer step, whether the probed
    parameters' ``.grad`` was reset (see the module docstring); ``facts()`` returns the counts."""

    def __init__(self, model: nn.Module, every: int = 1):
        self.model, self.every = model, every
        self.steps = 0  # optimizer steps seen
        self.optimizer_seen = False  # the optimizer's post-step hook fired: it alone counts steps from then on
        self._optimizer = None
        self._step_hook = None
        self._probes: list[tuple[str, Tensor]] | None = None  # (name, parameter), chosen at the first arming
        self._hooks = Hooks()
        self._armed: int | None = None  # the optimizer step whose first backward pass is read
        self._seen: dict[int, tuple] = {}  # probe index -> (‖held‖ or None, ‖fresh‖) at the armed step
        self._pending: list[tuple[int, list]] = []  # (step, readings) not yet read on the host
        self._checks = self._carried = self._run = self._longest = 0
        self._run_start: tuple | None = None  # (step, ‖held‖) of the current run's first check
        self._best: tuple = (None, None, None, None, None)  # longest run: first/last step, held first/last, fresh
        self._closed = False
        self._arm(0)

    # -- optimizer steps --
    def watch(self, optimizer) -> None:
        """Take optimizer steps from `optimizer`'s post-step hook (torch >= 2.0) once it fires, and probe its
        parameters; None or an optimizer without the hook: steps come from ``stepped()``."""
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        self._optimizer, self.optimizer_seen = optimizer, False
        inner = getattr(optimizer, "optimizer", None)  # a wrapper (accelerate, Lightning) steps its inner one
        target = inner if isinstance(inner, torch.optim.Optimizer) else optimizer
        if not self._closed and isinstance(target, torch.optim.Optimizer):
            try:
                self._step_hook = target.register_step_post_hook(lambda opt, args, kwargs: self.stepped(True))
            except (AttributeError, RuntimeError):  # an Optimizer subclass that skipped Optimizer.__init__
                self._step_hook = None
        if self._armed is not None:  # probe the optimizer's own parameters from now on
            self._probes = None
            self._hooks.remove()
            self._arm(self._armed)

    def stepped(self, by_optimizer: bool = False) -> None:
        """One optimizer step happened (`by_optimizer`: said by the optimizer's hook, else by the loop, which
        is ignored once the optimizer has spoken): file the step's reading, arm the next if checked."""
        if by_optimizer:
            self.optimizer_seen = True
        elif self.optimizer_seen:
            return
        if self._armed is not None:
            self._file()
        self.steps += 1
        if self.checked(self.steps):
            self._arm(self.steps)  # (the hooks stay registered from one checked step to the next)
        elif self._hooks.items:
            self._hooks.remove()

    @property
    def sparse_from(self) -> int:
        """The first optimizer step from which only every SPARSE-th `every`-th step is checked."""
        return DENSE_CHECKS * self.every

    @property
    def sparse_every(self) -> int:
        """Optimizer steps between checks from ``sparse_from`` on."""
        return self.every * SPARSE

    def checked(self, step: int) -> bool:
        """Is optimizer `step` checked: every `every`-th step, every ``sparse_every``-th from ``sparse_from``."""
        return step % (self.every if step < self.sparse_from else self.sparse_every) == 0

    def _arm(self, step: int) -> None:
        if self._closed:
            return
        self._armed = step
        if self._hooks:
            return
        if self._probes is None:
            self._probes = self._choose()
        for i, (_, p) in enumerate(self._probes):
            self._hooks.add(p.register_hook(self._hook(i, p)))

    def _choose(self) -> list[tuple[str, Tensor]]:
        """The first and the last trainable parameter (of the optimizer's, when known and shared)."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and p.is_leaf]
        if self._optimizer is not None:
            ids = {id(p) for g in getattr(self._optimizer, "param_groups", ()) for p in g.get("params", ())}
            named = [(n, p) for n, p in named if id(p) in ids] or named
        return [named[0], named[-1]] if len(named) > 1 else named

    def _hook(self, i: int, p: Tensor):
        def hook(g: Tensor):
            if self._armed is not None and i not in self._seen:  # the first backward pass after the step
                held = p.grad  # before autograd adds g into it; None: reset, nothing to measure
                self._seen[i] = (None, None) if held is None else (_norm(held), _norm(g))
        return hook

    def _file(self) -> None:
        """Move the armed step's reading (if a backward pass ran) to the pending checks; disarm."""
        if self._armed is None:
            return  # (nothing armed: a step between checked ones)
        if self._seen:
            if not self._pending and all(h is None for h, _ in self._seen.values()):
                self._checks, self._run = self._checks + 1, 0  # every .grad was reset: counted as _fold would
            else:
                self._pending.append((self._armed, [self._seen[i] for i in sorted(self._seen)]))
                if len(self._pending) >= FOLD:
                    self._fold()
        self._armed, self._seen = None, {}

    # -- reading --
    def _fold(self) -> None:
        """Read the pending checks on the host (one stacked copy) into the run counts."""
        if not self._pending:
            return
        flat = [t for _, rs in self._pending for h, f in rs if h is not None for t in (h, f)]
        host = iter(torch.stack([t.to(flat[0].device) for t in flat]).tolist() if flat else [])  # host sync
        for step, readings in self._pending:
            vals = [(next(host), next(host)) if h is not None else (None, None) for h, _ in readings]
            self._checks += 1
            if not all(h is not None and h != 0 for h, _ in vals):  # NaN != 0: a NaN gradient is held too
                self._run = 0
                continue
            self._carried += 1
            held, fresh = vals[-1]
            if self._run == 0:
                self._run_start = (step, held)
            self._run += 1
            if self._run >= self._longest:
                self._longest = self._run
                self._best = (self._run_start[0], step, self._run_start[1], held, fresh)
        self._pending = []

    def facts(self) -> CarryFacts:
        """What the checks so far found (reads the pending ones: host sync)."""
        self._fold()
        first, last, held_first, held_last, fresh = self._best
        return CarryFacts(checks=self._checks, carried=self._carried, longest=self._longest, first_step=first,
                          last_step=last, held_first=held_first, held_last=held_last, fresh_last=fresh,
                          every=self.every, sparse_from=self.sparse_from, sparse_every=self.sparse_every,
                          probes=tuple(n for n, _ in self._probes or ()))

    @property
    def n_hooks(self) -> int:
        """Hooks registered now (on the probed parameters and the optimizer)."""
        return len(self._hooks) + (self._step_hook is not None)

    def remove(self) -> None:
        """Remove the parameter hooks and the optimizer hook; safe to call twice."""
        self._closed, self._armed = True, None
        self._hooks.remove()
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
