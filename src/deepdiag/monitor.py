"""``Monitor``: per-layer statistics inside the user's own training loop, judged by ``diagnose()``
(``deepdiag.rules.judge``, the same rules as ``checkup``).

    with dd.Monitor(model, every=1) as mon:
        for epoch in range(epochs):
            for x, y in loader:
                loss = loss_fn(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
                mon.step(loss)                       # loss optional; no host sync
            mon.epoch(train_loss=..., val_loss=...)
        findings = mon.diagnose()                    # one stacked .cpu()

What is recorded. Every `every`-th optimizer step, the hooks of ``deepdiag.measure.recorder.Recorder`` measure
the training forward/backward pass (forward passes under ``torch.no_grad()``, e.g. evaluation, are
ignored): per layer the output's mean and variance, the input's RMS, the back-propagated signal's RMS,
per-unit firing/saturation counts; ``step()`` adds the weight-gradient norms of all layers with one
``torch._foreach_norm`` call. The input scale is measured at the first and last weight layers
only (what the activation-scale rule compares); ``checkup`` measures it everywhere. A non-finite loss
is looked for at recorded steps (a diverged run stays NaN, so the step is found within `every`).
Between recorded steps the hooks are removed and ``step()`` only counts, so unrecorded steps cost next
to nothing; a recorded step whose row decimation (below) drops measures only the per-unit evidence (no
norms, no gradient hooks). Everything stays on the model's device as tensors until ``diagnose()`` or
``history`` reads it in one stacked ``.cpu()``.

Bounded memory (``deepdiag.measure.history``). Rows go into a fixed buffer of `capacity` rows; when it is full every other row is
dropped and the stride between kept rows doubles (decimation), so any run length keeps between
capacity/2 and capacity rows, evenly spread from the first step to the last. Unit counts (for dead
and saturated units) are kept per window of `window` recorded steps: the current and the previous
window, so units that die during training are seen once a whole window passes without them firing.
Epoch curves are kept in full (one row per epoch).

Update sizes. Every ``UPDATE_EVERY`` recorded steps the weights are copied, their norms ‖W‖ taken, and
compared with the weights of the next recorded step (one fused subtract/norm/copy into preallocated
buffers, on the device): ‖Δw‖/‖w‖ per step for the stalled-updates rule; weights bit-identical across
checks are "frozen". Rows in between carry ‖ΔW‖ and ‖W‖ forward: reading all the weights costs as much
as the rest of a row, and ‖W‖ moves by about update_rel per step (~10⁻³), so by ~1 % between
readings. The rules never read ‖W‖ from the rows (they take it from the module when judging); the
history's weight_norm, grad_rel and update_rel use the carried value. The same holds for the rows' share
of dead or saturated units (history only; the rules read the unit windows themselves): it is read at a
kept row once ``UPDATE_EVERY`` recorded steps have passed since the last reading, and carried forward in
between; it moves only as units start or stop firing over windows of `window` recorded steps.

Gradients carried over (``deepdiag.measure.carryover``). At the first backward pass after every
`every`-th optimizer step, a tensor hook on the first and last trainable parameter reads whether
``.grad`` was reset before the fresh gradient is added (``optimizer.zero_grad()`` called): when it still
holds the previous steps' sum over consecutive checks, ``diagnose()`` reports exploding_gradients as an
error, first. Optimizer steps are the given optimizer's (its post-step hook), else ``step()`` calls, so
gradient accumulation over micro-batches is never mistaken for it.

Early warning. ``check()`` may be called at any time and returns the findings so far; with
``on_finding`` the monitor checks by itself every `check_every` optimizer steps (one host sync each)
and calls ``on_finding(finding)`` once per new finding (new = a (code, layers, severity) not reported
before), with ``finding.step`` set to the step at which it was first seen. A callback that raises does
not break the training loop: the first error is reported once as a ``RuntimeWarning`` and kept in
``callback_errors``. The first training forward pass also records the input batch's per-feature
statistics (unscaled_inputs), and, when `loss_fn` is given, the output, its last module and (for a loss
module) the targets (output_loss_mismatch): host syncs on that step only.
"""
from __future__ import annotations

import math
import operator
import warnings
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ._validate import check_number
from .findings import Finding
from .measure.batches import BatchClasses
from .measure.carryover import CarryProbe
from .measure.history import StepBuffer, UnitWindows
from .measure.io import IOProbe, function_output_facts, input_facts, loss_kind, nonfinite_facts, output_facts
from .measure.layer_stats import build_layer_stats
from .measure.recorder import Recorder
from .measure.coverage import coverage
from .measure.records import UNIT_FAMILIES, Coverage, LayerStats
from .measure.sites import weight_leaves, weight_slots
from .measure.weights import frozen_modules
from .rules import Context, Curves, judge, judge_layers, start_key
from .rules.judge import bottleneck
from .rules.layers import MIN_POSITIONS

STATS = ("act_rms", "in_rms", "signal_norm", "grad_norm", "weight_norm", "update_norm", "unit_frac",
         "path_norm")
UNIT_FRAC, PATH_NORM = STATS.index("unit_frac"), STATS.index("path_norm")  # columns read by name below
GRAD_NORM = STATS.index("grad_norm")  # then weight_norm, update_norm
MEASURED = (("act_norm", 0, "numel"), ("in_norm", 1, "in_numel"), ("signal_norm", 2, "signal_numel"),
            ("path_norm", PATH_NORM, "path_numel"))  # a recorder entry, its column, the count it is divided by
RECENT = 10  # diagnose() judges the median of the last RECENT kept rows
LOSS_FOLD = 256  # step losses kept before they are searched for a non-finite one (bounds their memory)
UPDATE_EVERY = 10  # recorded steps between weight snapshots (‖W‖ and the update-to-weight ratio)
_OPEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> WeakSet of its Monitors


def _release(rec: Recorder, probe: IOProbe, classes: BatchClasses, carry: CarryProbe) -> None:
    """Remove a Monitor's hooks; run by ``close()`` or, for one never closed, when it is collected."""
    rec.detach()
    probe.remove()
    classes.remove()
    carry.remove()


def _weight_norm(rows: list[LayerStats]) -> float:
    """√Σ‖W_l‖² over the weight layers of `rows`."""
    return math.sqrt(sum(r.weight_norm ** 2 for r in rows if r.kind == "weight" and r.weight_norm))


def _seen_key(f: Finding) -> tuple:
    """A finding is new for on_finding when its (code, layers, severity) was not reported before: an info
    that grows into a warning (a validation gap that starts rising) is reported again."""
    return (f.code, tuple(f.layers), f.severity)


@dataclass
class MonitorHistory:
    """``layers``: one row per kept step and layer (long format): act_rms, in_rms (RMS of the output and
    input), signal_norm (per-sample ‖∂L/∂output‖), grad_norm and weight_norm (‖∂L/∂W‖, and ‖W‖ from the
    latest weight snapshot), grad_rel and update_rel (‖∂L/∂W‖/‖W‖, and ‖ΔW‖ per step/‖W‖ from the latest
    weight snapshot), dead_frac /
    saturated_frac (share of the layer's ReLU units that never fired / tanh-sigmoid units saturated over
    the last one or two unit windows); NaN where not measured. ``steps``: the loss per kept step (when
    ``step(loss)`` was given); ``epochs``: one row per ``epoch()`` call."""

    layers: object
    steps: object
    epochs: object


class Monitor:
    """Attach to any ``nn.Module``; call ``step()`` once per optimizer step (see the module docstring).

    every: record every `every`-th step (1 = all). capacity: rows kept in memory (>= 4, even).
    window: recorded steps per dead/saturated-unit window. n_classes / baseline: the chance-level
    training loss for the underfitting rule (ln n_classes for cross-entropy, Var(y) for MSE).
    log_dir: when given, ``close()`` writes the statistics there as TensorBoard scalars and
    histograms (see ``to_tensorboard``).
    loss_fn: the loss (module or function) the loop uses: its first call is checked against the
    model's output (output_loss_mismatch). on_finding: called once per new finding (early warning);
    check_every: optimizer steps between its automatic checks. optimizer / lr / batch_size: hints for
    the oscillation and stalled-update remedies (the lr is read from ``optimizer.param_groups[0]``); the
    optimizer's steps are also the ones the gradient-reset check counts.
    """

    def __init__(self, model: nn.Module, every: int = 1, *, capacity: int = 256, window: int = 50,
                 n_classes: int | None = None, baseline: float | None = None, log_dir=None, loss_fn=None,
                 on_finding=None, check_every: int = 10, optimizer=None, lr: float | None = None,
                 batch_size: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_number("every", every, low=1, integer=True)
        check_number("capacity", capacity, low=4, integer=True)
        if capacity % 2:
            raise ValueError(f"capacity={capacity} must be even (decimation halves it)")
        check_number("window", window, low=1, integer=True)
        if n_classes is not None:
            check_number("n_classes", n_classes, low=2, integer=True)
        if baseline is not None:
            check_number("baseline", baseline, low=0.0, low_inclusive=False)
        if on_finding is not None and not callable(on_finding):
            raise TypeError(f"on_finding must be callable (finding -> None), got {on_finding!r}")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (e.g. torch.nn.CrossEntropyLoss()), got {loss_fn!r}")
        check_number("check_every", check_every, low=1, integer=True)
        if optimizer is not None and not hasattr(optimizer, "param_groups"):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if lr is not None:
            check_number("lr", lr, low=0.0, low_inclusive=False)
        if batch_size is not None:
            check_number("batch_size", batch_size, low=1, integer=True)
        self.loss_fn, self.on_finding, self.check_every = loss_fn, on_finding, check_every
        self._lr_hint, self._bs_hint = lr, batch_size
        self._carry = CarryProbe(model, every)  # was .grad reset between optimizer steps?
        self.optimizer = optimizer  # (the property: optimizer steps are also taken from its post-step hook)
        self.callback_errors: list[BaseException] = []
        self._first_seen: dict[tuple, int] = {}  # (code, layers, severity) -> step first seen
        self._notified: set[tuple] = set()
        self._io: tuple | None = None  # (output facts, input facts, step) of the first training pass
        self._batch_seen: int | None = None
        self.probe = IOProbe(model, loss_fn)
        self._classes = BatchClasses(loss_fn)  # the class mix of the first epoch's batches (a loss module's targets)
        self.model, self.every, self.capacity, self.window = model, every, capacity, window
        self.n_classes, self.baseline, self.log_dir = n_classes, baseline, log_dir
        self.rec = Recorder(model)
        self.steps = 0  # optimizer steps seen
        self._quiet_until = 0  # steps before this one are only counted (``_next_busy``) ...
        self._quiet_for: tuple = ()  # ... while every, check_every and on_finding are these
        self.recorded = 0  # steps whose statistics were taken
        self.closed = False
        self._buf: StepBuffer | None = None  # (capacity, n_sites, len(STATS)) statistics, created on the first row
        self._bad_step: Tensor | None = None  # first step with a non-finite loss or gradient, -1 if none
        self._tracked: list[tuple[int, object]] = []  # (step, loss) not yet folded into _bad_step
        self._units = UnitWindows(window)
        self._epochs: list[dict] = []
        self._weights: list[tuple[int, Tensor]] = []
        self._start: frozenset | None = None  # layer findings present at the start of training (_take_start)
        self._start_step: int | None = None
        self._start_weight: float | None = None  # total weight norm at the start
        self.problems: list[BaseException] = []  # what the monitor could not measure (warned once each)
        self._warned: set[str] = set()
        self._nonfinite = None  # NaN/Inf counts: weights now, the first batch's inputs/targets/output later
        self._start_weights = nonfinite_facts(model=model)  # host sync, once
        others = [m for m in _OPEN.get(model, ()) if not m.closed]
        if others:
            warnings.warn(f"deepdiag Monitor: this model already has {len(others)} open Monitor(s) with "
                          f"{sum(m.n_hooks for m in others)} hooks; close each (mon.close() or a `with` "
                          "block) when done: an open Monitor's hooks stay on the model until it is closed "
                          "or garbage-collected", RuntimeWarning, stacklevel=2)
        _OPEN.setdefault(model, weakref.WeakSet()).add(self)
        # a Monitor never closed releases its hooks when it is garbage-collected (the hooks hold only the
        # recorder and the probe, never the Monitor, so an unreferenced Monitor is collectable)
        self._finalizer = weakref.finalize(self, _release, self.rec, self.probe, self._classes, self._carry)
        self.rec.attach()

    def _warn_once(self, key: str, message: str, error: BaseException | None = None) -> None:
        """One RuntimeWarning per kind of problem (the training loop goes on; see ``problems``)."""
        if error is not None:
            self.problems.append(error)
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"deepdiag Monitor: {message}", RuntimeWarning, stacklevel=4)

    # -- the loop --
    def step(self, loss: Tensor | float | None = None) -> None:
        """Call once per optimizer step, after ``optimizer.step()``; `loss` (the batch loss) is optional."""
        if self.closed:
            raise RuntimeError("Monitor is closed; create a new one to keep monitoring")
        s = self.steps
        if s < self._quiet_until and self._quiet_for == (self.every, self.check_every, self.on_finding):
            # a step between recorded ones with nothing due (under the settings it was planned with): only
            # counted, its loss unread
            self.steps = s + 1
            self._carry.stepped()
            return
        loss = self._scalar_loss(loss)
        try:
            self._step(loss)
        except Exception as e:  # never break the user's loop: skip this step's statistics, say so once
            self.rec.latest = {}
            self.steps = s + 1
            self._warn_once(f"step:{type(e).__name__}", f"could not record step {self.steps - 1} "
                            f"({type(e).__name__}: {e}); its statistics are skipped, training goes on "
                            "(see monitor.problems)", e)
        # the next recorded step's row is kept, or dropped by decimation: then its pass measures only
        # the per-unit evidence (the same numbers as a full pass; a dropped row's norms are never read)
        self.rec.full = self._buf is None or self._buf.keeps(self.recorded)
        self._quiet_until = self._next_busy()
        self._quiet_for = (self.every, self.check_every, self.on_finding)  # (set by hand later: plan again)

    def _next_busy(self) -> int:
        """The first step from now at which ``step`` has more to do than count it (the steps before it take
        a short path, so that a step between recorded ones costs next to nothing): the step before the next
        recorded one (it registers the hooks) or the next automatic check (on_finding); this step while the
        hooks are on (every=1, or the sites not found yet) or the first training pass is not judged yet."""
        s = self.steps
        if self.every == 1 or self.rec.hooks or self._io is None:
            return s
        busy = s + (-(s + 1)) % self.every  # the first t >= s with (t + 1) % every == 0
        if self.on_finding is not None:
            busy = min(busy, s + (-(s + 1)) % self.check_every)
        return busy

    def _scalar_loss(self, loss):
        """The batch loss as a scalar: a per-sample loss (``reduction="none"``) is averaged, with a note
        once; anything that is not a number is ignored, with a note once."""
        if loss is None or (isinstance(loss, Tensor) and loss.numel() == 1):
            return loss
        if isinstance(loss, Tensor) and loss.is_floating_point() and loss.numel() > 1:
            self._warn_once("loss_shape", f"step(loss) got a loss of shape {tuple(loss.shape)} (reduction="
                            "'none'?); its mean is recorded")
            return loss.detach().mean()
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            return loss
        self._warn_once("loss_type", f"step(loss) got {type(loss).__name__} {loss!r:.40}, not a number or "
                        "a floating tensor; the loss is not recorded")
        return None

    def _step(self, loss) -> None:
        s = self.steps
        self._carry.stepped()  # (ignored once the optimizer's own post-step hook has counted its steps)
        if self._io is None and self.probe.results:
            self._judge_io(s, loss)
        if s % self.every == 0:
            if loss is not None:
                self._track_loss(s, loss)
            if self.rec.latest:
                self._commit(s, loss)
                if self._start is None and self._start_ready():
                    self._take_start(s)
        self.steps += 1
        if self.steps % self.every == 0:
            self.rec.attach() if self.rec.discovered else None
        elif self.rec.hooks and self.rec.discovered:  # (between recorded steps they are off already)
            self.rec.detach()
        if self.on_finding is not None and (s + 1) % self.check_every == 0:
            self.check()

    def _start_ready(self) -> bool:
        """Enough seen to judge the start: every unit layer has >= MIN_POSITIONS samples (what the
        unit rules need to speak at all; with a batch of 1 that is 32 steps), or there are no unit
        layers. Judging earlier would find no dead units yet and later blame the lr for units that were
        dead from the initialisation."""
        seen = self._units.min_seen()
        return seen is None or seen >= MIN_POSITIONS

    def _take_start(self, s: int) -> None:
        """Judge the layers once, at the start of training (host syncs, once): a layer pathology seen
        later but not here appeared during training, which the learning rate, not the init, explains."""
        rows = self.rows()
        self._start = frozenset(start_key(f) for f in judge_layers(rows) if f.rank >= 1)
        self._start_step = s
        self._start_weight = _weight_norm(rows)

    @property
    def optimizer(self):
        """The optimizer given (or handed over later, as ``dd.fit`` does): remedy hints, and its steps
        (``register_step_post_hook``) are the optimizer steps the gradient-reset check counts; without it
        ``step()`` calls count them."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer) -> None:
        self._optimizer = optimizer
        self._carry.watch(optimizer)

    @property
    def lr(self) -> float | None:
        """The learning rate: the optimizer's (first parameter group), else the ``lr=`` hint."""
        if self.optimizer is not None:
            return float(self.optimizer.param_groups[0]["lr"])
        return self._lr_hint

    @property
    def base_lr(self) -> float | None:
        """The learning rate the run was configured with: ``initial_lr`` when a torch scheduler has
        decayed it (what fixes scale: "lr/10" of a decayed lr would be a 1000× smaller step), else lr."""
        if self.optimizer is not None and "initial_lr" in self.optimizer.param_groups[0]:
            return float(self.optimizer.param_groups[0]["initial_lr"])
        return self.lr

    @property
    def batch_size(self) -> int | None:
        return self._bs_hint or self._batch_seen

    def _judge_io(self, s: int, loss=None) -> None:
        """Output and input facts of the first training forward pass (host syncs, once), judged by
        output_loss_mismatch / unscaled_inputs at every diagnose(). A loss function that is not one of
        torch's is recognised from the graph of the `loss` tensor given to ``step`` (its targets are not
        seen then)."""
        seen = self.probe.results[0]
        self.probe.remove()
        x, out = seen.get("input"), seen.get("output")
        self._batch_seen = int(x.shape[0]) if x is not None and x.dim() else None
        kind = loss_kind(self.loss_fn)
        output = None
        if kind is not None and out is not None:
            output = output_facts(out, seen.get("last_module"), kind, seen.get("target"), seen.get("last_name"),
                                  last_op=seen.get("last_op"))
        elif self.loss_fn is not None and isinstance(loss, Tensor) and out is not None:
            output = function_output_facts(out, loss, seen.get("last_module"), None, seen.get("last_name"),
                                           seen.get("last_op"))
        first = next((si for si in self.rec.sites if si.kind == "weight"), None)
        inputs = input_facts(x, first.name if first is not None else None)
        self.probe.results = []
        self._io = (output, inputs, s)
        first_batch = nonfinite_facts(x, seen.get("target"), None, out)
        self._nonfinite = replace(first_batch, weights=self._start_weights.weights,
                                  n_weights=self._start_weights.n_weights)
        for f in judge(output=output, inputs=inputs, step=s, nonfinite=self._nonfinite):  # seen at this step, whenever check() next runs
            self._first_seen.setdefault(_seen_key(f), s)

    def check(self) -> list[Finding]:
        """The findings so far (any time during training), each with ``step`` = the optimizer step at
        which it was first seen; calls ``on_finding`` once for each finding not seen before."""
        now = max(0, self.steps - 1)
        if self._io is None and self.probe.results:
            self._judge_io(now)
        out = []
        for f in self.diagnose():
            key = _seen_key(f)
            new = key not in self._notified
            self._notified.add(key)
            self._first_seen.setdefault(key, now)
            f = replace(f, step=self._first_seen[key])
            out.append(f)
            if new and self.on_finding is not None:
                self._notify(f)
        return out

    def _notify(self, f: Finding) -> None:
        try:
            self.on_finding(f)
        except Exception as e:  # the user's training loop must not break because of a callback
            self.callback_errors.append(e)
            if len(self.callback_errors) == 1:
                warnings.warn(f"deepdiag Monitor: on_finding raised {type(e).__name__}: {e} (for {f.code}); "
                              f"later errors are not reported again (see monitor.callback_errors)",
                              RuntimeWarning, stacklevel=3)

    def epoch(self, train_loss=None, val_loss=None, train_acc=None, val_acc=None) -> None:
        """Record one epoch's curves (floats or 0-d tensors, read lazily)."""
        self._epochs.append({"epoch": len(self._epochs) + 1, "step": self.steps, "train_loss": train_loss,
                             "val_loss": val_loss, "train_acc": train_acc, "val_acc": val_acc})
        self._classes.epoch_end()

    def _track_loss(self, s: int, loss) -> None:
        """Keep step s's loss for the first-non-finite-step search (no kernel: ``_fold_losses`` runs it)."""
        self._tracked.append((s, loss.detach() if isinstance(loss, Tensor) else float(loss)))
        if len(self._tracked) >= LOSS_FOLD:
            self._fold_losses()

    @torch.no_grad()
    def _fold_losses(self) -> None:
        """Fold the kept losses into ``_bad_step`` (the first tracked step whose loss is NaN or ±Inf, -1 if
        none) with no host sync: the tensor losses on their device, a few kernels for all of them; the
        losses given as numbers on the host (the caller has read them already), as the default float
        dtype holds them (1e39 overflows to Inf in float32, as a tensor loss would). No tensor is made from
        host data on the device either (on CUDA that copy waits for the stream): the tensor losses' steps,
        when they advance by ``every`` (the usual case), are made there from the first one; otherwise
        (recorded steps without a loss or skipped by an error, ``every`` changed) they are copied."""
        if not self._tracked:
            return
        if self._bad_step is None:
            dev = next((t.device for _, t in self._tracked if isinstance(t, Tensor)), torch.device("cpu"))
            self._bad_step = torch.full((), -1, dtype=torch.long, device=dev)
        dev, never = self._bad_step.device, torch.iinfo(torch.long).max
        numbers = [(s, t) for s, t in self._tracked if not isinstance(t, Tensor)]
        tensors = [(s, t) for s, t in self._tracked if isinstance(t, Tensor)]
        self._tracked = []
        first_number = never
        if numbers:  # host only (a CPU tensor: the default dtype's overflow)
            finite = torch.isfinite(torch.tensor([t for _, t in numbers])).tolist()
            first_number = min((s for (s, _), ok in zip(numbers, finite) if not ok), default=never)
        if not tensors:
            first = torch.full((), first_number, dtype=torch.long, device=dev)
        else:
            losses = torch.stack([(t.reshape(-1)[0] if t.dim() else t).to(dev, torch.float64) for _, t in tensors])
            s0, k = tensors[0][0], len(tensors)
            if all(s == s0 + i * self.every for i, (s, _) in enumerate(tensors)):
                steps = torch.arange(k, dtype=torch.long, device=dev) * self.every + s0
            else:  # (recorded steps without a loss: the steps as they are, copied)
                steps = torch.tensor([s for s, _ in tensors], dtype=torch.long, device=dev)
            first = torch.where(torch.isfinite(losses), never, steps).amin().clamp_max(first_number)
        self._bad_step = torch.where((self._bad_step < 0) & (first < never), first, self._bad_step)

    def _setup(self) -> None:
        self.rec.finish_discovery()
        sites = self.rec.sites
        dev = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self._buf = StepBuffer(self.capacity, len(sites), len(STATS), dev)
        self._weight_sites = [s for s in sites if s.kind == "weight"]
        # the sites whose entries can hold per-unit evidence, and the others with their row offset (an
        # activation site measures its units only): the loops of _commit, without the sites they skip
        self._unit_sites = [s.index for s in sites if s.kind in ("weight", "activation") and s.family in UNIT_FAMILIES]
        self._row_sites = [(s.index, s.index * len(STATS)) for s in sites if s.kind != "activation"]
        self._take_weights()
        self._prev_step = None
        self._upd = None  # latest ‖Δw‖ per step of each weight layer (device tensors)
        self._wnorm = None  # ‖W‖ of each weight layer at the latest snapshot (device tensors)
        self._nan = torch.full((), math.nan, dtype=torch.float32, device=dev)
        self._scale = None
        self._bad = None  # (recorded step, unit layout, ``UnitWindows.bad_counts()``) of the latest reading
        if self._bad_step is None:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=dev)

    def _take_weights(self) -> None:
        """The tensors each weight layer's weight is made of (``weight_slots``: the weight itself, or a
        parametrized weight's originals, read without computing it), flattened for the fused norms
        (``_layer_norms`` folds a layer's several tensors into one norm), and the snapshot copies."""
        layers = [(s.index, weight_slots(s.module)) for s in self._weight_sites]
        self._weights = [(i, [d[k] for d, k in slots]) for i, slots in layers if slots]
        self._slots = [slot for _, slots in layers for slot in slots]
        self._ws = [w for _, ts in self._weights for w in ts]
        self._leaf_layer = None if len(self._ws) == len(self._weights) else torch.tensor(
            [j for j, (_, ts) in enumerate(self._weights) for _ in ts], device=self._ws[0].device)
        self._prev = [w.detach().clone() for w in self._ws]  # weights at the previous snapshot

    def _layer_norms(self, norms) -> Tensor:
        """One norm per weight layer (1-d) from one per tensor of ``_ws``: a layer made of several tensors
        (weight_norm's g and v) gets √(Σ‖tᵢ‖²), the norm of all its entries."""
        if self._leaf_layer is None:
            return torch.stack(norms)
        sq = torch.stack(norms).square()
        return torch.zeros(len(self._weights), dtype=sq.dtype, device=sq.device).index_add_(
            0, self._leaf_layer, sq).sqrt()

    @torch.no_grad()
    def _commit(self, s: int, loss) -> None:
        if self._buf is None:
            self._setup()
        latest = self.rec.latest
        self._fit_weights(shapes=self._prev_step is not None or self.recorded % UPDATE_EVERY == 0)
        ws = self._ws  # the parameters themselves (no_grad: nothing recorded); .grad read below
        if ws and self._prev_step is not None:
            # ‖Δw‖ per step between this recorded step and the snapshot taken at the previous one: fused,
            # no sync. Snapshots are taken every UPDATE_EVERY recorded steps (a copy of every weight
            # costs as much as the rest of the statistics); rows in between carry the value forward.
            # In place: the snapshot becomes -Δw (its norm is ‖Δw‖'s, bit for bit) until the next snapshot.
            gap = max(1, s - self._prev_step)
            torch._foreach_sub_(self._prev, ws)
            self._upd = self._layer_norms(torch._foreach_div(torch._foreach_norm(self._prev), gap))  # (layers,)
            self._prev_step = None
        if ws and self.recorded % UPDATE_EVERY == 0:
            torch._foreach_copy_(self._prev, ws)
            self._wnorm = self._layer_norms(torch._foreach_norm(ws))  # (weight layers,)
            self._prev_step = s
        # per-unit evidence: every recorded step
        self._units.add_all([(i, d) for i in self._unit_sites if (d := latest.get(i)) is not None and "positions" in d],
                            self._resized)
        self._units.tick()
        if not self._buf.keeps(self.recorded):
            return self._done()  # decimated away: no row for this step
        # gradient norms of every weight layer: one fused kernel, no host sync
        gs = [w.grad if w.grad is not None else torch.zeros_like(w) for w in ws]
        norms = torch._foreach_norm(gs) if ws else []
        # the row's measured entries (0-d tensors), their places in the flattened (site, stat) row and the
        # count each is divided by the square root of (norm -> RMS / per sample); entries not measured stay
        # NaN. Activation sites measure only their units (``Recorder._plan``), so only the others are read.
        vals, cols, counts = [], [], []
        for i, base in self._row_sites:
            d = latest.get(i)
            if d is not None:
                for key, col, numel in MEASURED:
                    v = d.get(key)
                    if v is not None:
                        vals.append(v)
                        cols.append(base + col)
                        counts.append(d.get(numel, 1))
        if self._leaf_layer is None:
            vals += norms  # the weight layers' ‖∂L/∂W‖ (then ‖W‖ and ‖ΔW‖ per step, 1-d)
        # dead / saturated share of each unit layer's units (history only), by groups of layers: counts,
        # divided by the layer's number of units with the rest of the row; read again once UPDATE_EVERY
        # recorded steps have passed (or the unit layers changed), carried forward in between
        if self._bad is None or self.recorded - self._bad[0] >= UPDATE_EVERY or self._bad[1] != self._units.layout:
            self._bad = (self.recorded, self._units.layout, self._units.bad_counts())
        bad = self._bad[2]
        key = (tuple(cols), tuple(counts), self._units.layout)
        if self._scale is None or self._scale[0] != key:  # other entries, batch size or layers: new places, divisors
            n_stats, dev = len(STATS), self._buf.rows.device
            cols += [i * n_stats + GRAD_NORM + off for off in range(3) for i, _ in self._weights]
            scale = [math.sqrt(max(1, n)) for n in counts] + [1.0] * (3 * len(self._weights))
            for indices, _, den in bad:
                cols += [i * n_stats + UNIT_FRAC for i in indices]
                scale += den
            self._scale = (key, torch.tensor(cols, device=dev), torch.tensor(scale, dtype=torch.float32, device=dev))
        parts = [torch.stack(vals)] if vals else []
        if ws:
            n = len(self._weights)
            if self._leaf_layer is not None:  # (a layer made of several tensors: ‖∂L/∂W‖ per layer here)
                parts.append(self._layer_norms(norms))
            parts += [t if t is not None else self._nan.expand(n) for t in (self._wnorm, self._upd)]
        parts += [num for _, num, _ in bad]
        # one kernel each: stack, cat, divide (x / 1 = x: the norms that need no scaling are unchanged)
        row = (torch.cat(parts) if len(parts) > 1 else parts[0]) / self._scale[2] if parts else None
        self._buf.append(s, row, loss, self._scale[1])
        self._done()

    def _resized(self, index: int, before: tuple, now: tuple) -> None:
        """A unit layer whose width changed (a layer grown or pruned during training): its per-unit evidence
        restarts from this step (``UnitWindows.add_all``: counts of different units cannot be added), noted once."""
        name = self.rec.sites[index].name
        self._warn_once(f"width:{name}", f"layer {name!r} changed width from {before} to {now} units; its "
                        "dead/saturated-unit evidence restarts from this step")

    def _fit_weights(self, shapes: bool = True) -> None:
        """Weights replaced or resized since the last snapshot (``layer.weight = nn.Parameter(...)``): the
        update-size snapshots start again from the weights the model has now, and ‖W‖ is read again.
        Without `shapes` (a step that does not touch the snapshots) only the parameters' identity is
        checked: a weight resized in place (``w.data = ...``) is found at the next step that does."""
        ws = self._ws
        if all(map(operator.is_, [d.get(k) for d, k in self._slots], ws)) \
                and (not shapes or all(w.shape == p.shape for w, p in zip(ws, self._prev))):
            return  # (the usual case: the same parameters, read where they live)
        self._take_weights()
        self._prev_step, self._upd, self._scale = None, None, None
        self._wnorm = self._layer_norms(torch._foreach_norm(self._ws)) if self._ws else None

    def _done(self) -> None:
        self.recorded += 1
        self.rec.latest = {}

    # -- reading --
    def _host(self):
        """(buffer rows, losses, steps) on the host: one stacked .cpu() each."""
        if self._buf is None:
            return None, None, []
        return self._buf.host()  # host sync

    @property
    def history(self) -> MonitorHistory:
        """Per-layer statistics over the kept steps, step losses, and epochs, as pandas DataFrames."""
        import pandas as pd

        buf, losses, steps = self._host()
        recs = []
        # units measured at a weight layer's input (functional activations) belong to the layer producing them
        owner = {s.index: s.producer if s.kind == "weight" else s.name for s in self.rec.sites}
        rel = lambda x, w: x / w if 0 < w < math.inf else math.nan  # noqa: E731  (x relative to ‖W‖)
        if buf is not None:
            arr = buf.double().numpy()
            for k, step in enumerate(steps):
                units = {owner[s.index]: (s.family, arr[k, s.index, UNIT_FRAC]) for s in self.rec.sites
                         if not math.isnan(arr[k, s.index, UNIT_FRAC])}
                for site in self.rec.sites:
                    v = arr[k, site.index]
                    fam, frac = units.get(site.name, (None, math.nan))
                    recs.append({"step": step, "layer": site.name, "kind": site.kind, "act_rms": v[0],
                                 "in_rms": v[1], "signal_norm": v[2], "grad_norm": v[3], "weight_norm": v[4],
                                 "grad_rel": rel(v[3], v[4]), "update_rel": rel(v[5], v[4]),
                                 "dead_frac": frac if fam == "relu" else math.nan,
                                 "saturated_frac": frac if fam in ("tanh", "sigmoid") else math.nan})
        layers = pd.DataFrame(recs, columns=["step", "layer", "kind", "act_rms", "in_rms", "signal_norm",
                                             "grad_norm", "weight_norm", "grad_rel", "update_rel", "dead_frac",
                                             "saturated_frac"])
        step_df = pd.DataFrame({"step": steps, "loss": losses.double().numpy() if losses is not None else []})
        return MonitorHistory(layers, step_df, pd.DataFrame(self._epoch_rows(),
                                                            columns=["epoch", "step", "train_loss", "val_loss",
                                                                     "train_acc", "val_acc"]))

    def _epoch_rows(self) -> list[dict]:
        flat, where = [], []
        for i, e in enumerate(self._epochs):
            for k in ("train_loss", "val_loss", "train_acc", "val_acc"):
                v = e[k]
                if isinstance(v, Tensor):
                    flat.append(v.detach().double().reshape(()).cpu())
                    where.append((i, k))
        rows = [dict(e) for e in self._epochs]
        if flat:
            vals = torch.stack(flat).tolist()  # host sync
            for (i, k), v in zip(where, vals):
                rows[i][k] = v
        for r in rows:
            for k in ("train_loss", "val_loss", "train_acc", "val_acc"):
                r[k] = None if r[k] is None else float(r[k])
        return rows

    def rows(self) -> list[LayerStats]:
        """The per-layer records the rules judge: median of the last kept steps, unit counts of the last
        one or two windows, weights as they are now."""
        buf, _, steps = self._host()
        if buf is None or not len(steps):
            return []
        recent = buf[-RECENT:].double()
        med = torch.nanmedian(recent, dim=0).values  # (n_sites, len(STATS))
        meas = {}
        for site in self.rec.sites:
            v = med[site.index].tolist()
            m: dict = {"numel": 1}
            if not math.isnan(v[0]):
                m["act_norm"] = v[0]
            if not math.isnan(v[1]):
                m["in_norm"], m["in_numel"] = v[1], 1
            if not math.isnan(v[2]):
                m["signal_norm"], m["signal_numel"] = v[2], 1
            if not math.isnan(v[3]):
                m["grad_norm"] = v[3]
            if not math.isnan(v[PATH_NORM]):
                m["path_norm"], m["path_numel"] = v[PATH_NORM], 1
            u = self._units.units.get(site.index)
            if u is not None:
                m["unit_count"] = u.counts().cpu().tolist()  # host sync (per unit layer)
                m["positions"], m["indicator"] = u.seen, u.is_max  # ReLU maxima: fired / not, no counts
            meas[site.index] = m
        rows = build_layer_stats(self.rec.sites, meas)
        upd = recent[:, :, 5]  # (recent steps, n_sites): ‖Δw‖ per step
        live = {id(m) for m in self.model.modules()}  # a layer replaced during training is not judged
        gone = [site.name for site in self.rec.sites if id(site.module) not in live]
        if gone:
            self._warn_once("replaced", f"layer(s) {', '.join(gone)} were replaced in the model after the "
                            "first step; they are no longer judged (a new Monitor measures the new ones)")
        return [self._with_updates(site, r, upd[:, site.index]) if site.kind == "weight" else r
                for site, r in zip(self.rec.sites, rows) if id(site.module) in live]

    @staticmethod
    def _with_updates(site, r: LayerStats, u: Tensor) -> LayerStats:
        """`r` with its update ratio (median ‖Δw‖ per step over ‖w‖), frozen and trainable flags."""
        u = u[~torch.isnan(u)]
        leaves = weight_leaves(site.module)  # (not the weight itself: a parametrized one would be computed)
        more = {"trainable": any(t.requires_grad for t in leaves) if leaves else None}
        if len(u) >= 2 and r.weight_norm:
            more.update(update_rel=float(u.median()) / r.weight_norm, frozen=bool((u == 0).all()))
        return replace(r, **more)

    @property
    def coverage(self) -> Coverage | None:
        """Which weight-bearing modules the monitor measures (``deepdiag.measure.records.Coverage``);
        None before the first recorded step."""
        if not self.rec.discovered:
            return None
        return coverage(self.model, self.rec.sites, {s.index for s in self.rec.sites})[0]

    def diagnose(self, baseline: float | None = None, n_classes: int | None = None) -> list[Finding]:
        """Findings from the layer statistics (their current state) and the epoch/step loss curves,
        most severe first (``deepdiag.rules.judge``). `baseline` / `n_classes` override the
        constructor's for underfitting."""
        _, losses, steps = self._host()
        n_classes = n_classes or self.n_classes
        base = baseline or self.baseline or (math.log(n_classes) if n_classes else None)
        rows = self.rows() if steps else []
        ep = self._epoch_rows()
        self._fold_losses()
        bad = int(self._bad_step) if self._bad_step is not None else -1  # host sync
        curve = lambda k: [r[k] for r in ep if r[k] is not None] if ep else None  # noqa: E731
        step_loss = losses.double().tolist() if losses is not None and len(steps) else None
        if step_loss is not None and all(math.isnan(x) for x in step_loss):
            step_loss = None
        curves = Curves(curve("train_loss"), curve("val_loss"), curve("train_acc"), curve("val_acc"), base,
                        step_loss, steps, bad if bad >= 0 else None)
        wd = float(self.optimizer.param_groups[0].get("weight_decay", 0.0)) if self.optimizer is not None else None
        frozen, share = frozen_modules(self.model)
        group = self.optimizer.param_groups[0] if self.optimizer is not None else {}
        context = Context(lr=self.lr, base_lr=self.base_lr, batch_size=self.batch_size,
                          knows_optimizer=self.optimizer is not None, weight_decay=wd,
                          optimizer=type(self.optimizer).__name__.lower() if self.optimizer is not None else None,
                          momentum=float(group.get("momentum", 0.0) or 0.0), epochs=len(self._epochs) or None,
                          dropout=max((float(m.p) for m in self.model.modules()
                                       if isinstance(m, nn.modules.dropout._DropoutNd)), default=0.0),
                          weight_ratio=_weight_norm(rows) / self._start_weight if rows and self._start_weight
                          else None, start=self._start, start_step=self._start_step, bottleneck=bottleneck(rows),
                          frozen=frozen, frozen_share=share)
        output, inputs, io_step = self._io or (None, None, None)
        return judge(rows, output=output, inputs=inputs, curves=curves, context=context,
                     step=steps[-1] if steps else None, io_step=io_step, nonfinite=self._nonfinite,
                     carry=self._carry.facts(), batch_classes=self._classes.counts())

    # -- cleanup --
    def to_tensorboard(self, log_dir):
        """Write the per-layer statistics, step losses and epoch curves as TensorBoard scalars, and the
        weights as histograms, under `log_dir` (``tensorboard --logdir`` reads them); return the path."""
        from .tensorboard import write_tensorboard

        return write_tensorboard(self, log_dir)

    def save(self, directory) -> Path:
        """Write the run (history, findings with the step first seen, metadata) into `directory`, read
        back by ``deepdiag.runreport.load_run`` and ``deepdiag report DIR``; returns the directory."""
        from .runreport import snapshot

        return snapshot(self).save(directory)

    def report(self, path="run.html") -> Path:
        """Write the run as one self-contained HTML page (curves, per-layer heatmaps, findings); returns
        its path. The same page as ``deepdiag report DIR`` draws from ``save(DIR)``."""
        from .runreport import render, snapshot

        return render(snapshot(self), path)

    def new_pass(self) -> None:
        """Say that a new training forward pass starts. Needed only when the loop never calls the monitored
        module itself (e.g. a Lightning ``training_step`` that calls ``self.net(x)``): the monitor
        recognises a new pass by that call, and would otherwise take each later pass for repeated calls
        of the same layers."""
        self.rec._reset_pass()

    def close(self) -> None:
        """Remove every hook (and export to ``log_dir`` if one was given); safe to call twice.
        Recorded statistics stay readable."""
        self._finalizer()  # the hooks, once (nothing left to release when collected later)
        was_closed, self.closed = self.closed, True
        if self.log_dir is not None and not was_closed:
            try:
                self.to_tensorboard(self.log_dir)
            except OSError as e:
                raise OSError(e.errno, f"Monitor log_dir={str(self.log_dir)!r}: cannot write the TensorBoard "
                                       f"files there ({e.strerror or e}); give a writable directory",
                              e.filename) from e

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Close; when the block is ending with an exception, that exception goes on unchanged and a
        failure to close (an unwritable ``log_dir``) becomes a warning instead of replacing it."""
        if exc_type is None:
            self.close()
            return False
        try:
            self.close()
        except Exception as e:
            warnings.warn(f"deepdiag Monitor: could not close cleanly while {exc_type.__name__} was "
                          f"propagating: {e}", RuntimeWarning, stacklevel=2)
        return False

    @property
    def n_hooks(self) -> int:
        """Hooks currently registered by this monitor."""
        return (len(self.rec.hooks) + len(self.rec._discovery_hooks) + len(self.probe.hooks)
                + self._classes.n_hooks + self._carry.n_hooks)
