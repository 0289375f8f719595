"""``DeepdiagCallback``: a ``dd.Monitor`` on the model that a transformers ``Trainer`` trains.

    from deepdiag.integrations.transformers import DeepdiagCallback
    cb = DeepdiagCallback(n_classes=2)
    Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[cb]).train()
    cb.findings                       # also logged when first seen; saved under <output_dir>/deepdiag

What it does, event by event:

* ``on_train_begin`` (optimizer and scheduler created): a Monitor on ``kwargs["model"]`` given the Trainer's
  optimizer for its learning-rate hints, and a forward hook that reads the loss the model returns. Only the
  world-process-zero monitors.
* The step loss. The Trainer hands callbacks no per-step loss: ``state.log_history`` gets one only every
  ``logging_steps`` (an average over them), and after ``on_step_end``. So the hook reads ``outputs.loss``
  of each training forward pass (grad enabled, model in training mode) and sums it on the device, as the
  Trainer sums what it back-propagates: a model called with ``num_items_in_batch`` (transformers' loss
  normalisation over the whole accumulated batch) returns its share of the step's loss, so the shares add
  up; otherwise each micro-batch returns its mean, and the step loss is the mean over the micro-batches.
  This is the value the Trainer logs as ``loss`` with ``logging_steps=1`` (one process). When the model
  returns no loss (``compute_loss_func``, label smoothing, a ``compute_loss`` override) the Monitor gets
  none: the layer statistics and evaluation curves are still judged, the step-loss rules are not.
* ``on_step_end`` (after ``optimizer.step()``, the scheduler step and ``zero_grad``): ``monitor.step(loss)``.
* ``on_evaluate`` / ``on_epoch_end``: ``monitor.epoch(...)`` with the epoch's mean step loss as the training
  loss and the metrics named by `metrics` (default ``eval_loss``, ``eval_accuracy``) of the last evaluation
  by the end of the epoch. The Trainer evaluates after ``on_epoch_end``, so the epoch is recorded when the
  next one begins or training ends.
* Each finding, when the Monitor first sees it (every `check_every` steps): a record on the
  ``deepdiag.integrations.transformers`` logger (WARNING for warnings and errors), and the counts
  ``deepdiag/findings_{info,warning,error}`` appended to ``state.log_history`` with the step (saved with
  the trainer state in each checkpoint); ``self.findings`` holds the findings reported so far.
* ``on_train_end``: the final findings in ``self.findings``, the Monitor closed (hooks removed), the run
  saved in `save_dir` (default ``<args.output_dir>/deepdiag``; see ``_common.save_run``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import Tensor

from ..monitor import Monitor
from ._common import FindingLog, StepLoss, check_metrics, check_options, finish, require

transformers = require("transformers", "transformers")

log = logging.getLogger(__name__)

# Monitor.epoch argument -> evaluation metric (the training loss is the epoch's mean step loss; the Trainer
# computes no training accuracy).
METRICS = {"val_loss": "eval_loss", "val_acc": "eval_accuracy"}


class DeepdiagCallback(transformers.TrainerCallback):
    """Monitor the model a transformers ``Trainer`` trains (see the module docstring for each event).

    save_dir: where the run is saved at the end (default ``<args.output_dir>/deepdiag``). metrics: which
    evaluation metric feeds ``val_loss`` / ``val_acc`` of ``Monitor.epoch``, e.g. ``{"val_acc": "eval_f1"}``
    (None leaves one out). monitor_options: passed to ``dd.Monitor`` (every, capacity, window, n_classes,
    baseline, log_dir, loss_fn, check_every, lr, batch_size).
    """

    def __init__(self, save_dir: str | os.PathLike | None = None, *, metrics: dict | None = None,
                 **monitor_options):
        self.metrics = check_metrics(metrics, METRICS)
        bad = {"train_loss", "train_acc"} & {k for k, v in self.metrics.items() if v is not None}
        if bad:
            raise ValueError(f"metrics {sorted(bad)}: the Trainer evaluates no training metrics; the training "
                             f"loss is the epoch's mean step loss. Allowed keys: val_loss, val_acc")
        self.save_dir = save_dir
        self.options = check_options(monitor_options)
        self.monitor: Monitor | None = None
        self.saved: list = []  # paths written at the end
        self._findings = None
        self._log = FindingLog(log)
        self._hook = None

    @property
    def findings(self) -> list:
        """The findings at the end of training; while it runs, those reported so far."""
        return self._findings if self._findings is not None else list(self._log.seen)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._close()
        self.monitor, self._findings, self._log = None, None, FindingLog(log)
        if not state.is_world_process_zero or model is None:
            return
        self._dir = self.save_dir or os.path.join(args.output_dir, "deepdiag")
        self.monitor = Monitor(model, optimizer=optimizer, on_finding=self._log, **self.options)
        self._loss, self._shares, self._eval, self._epoch = StepLoss(), False, {}, None
        self._hook = model.register_forward_hook(self._read_loss, with_kwargs=True)

    def _read_loss(self, module, args, kwargs, output) -> None:
        if not (torch.is_grad_enabled() and module.training):
            return  # evaluation
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, Tensor):
            self._loss.add(loss)
            self._shares = kwargs.get("num_items_in_batch") is not None

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        n = self._loss.count
        self.monitor.step(self._loss.take(1.0 if self._shares else 1.0 / n) if n else None)
        self._publish(state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.monitor is None or not metrics:
            return
        self._eval = {k: metrics.get(name) for k, name in self.metrics.items() if name is not None}

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self._epoch = self._loss.take_epoch()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._record_epoch()

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is None or self.monitor.closed:
            return
        self._record_epoch()
        self._close()
        self._findings, self.saved = finish(self.monitor, self._dir)
        self._publish(state)

    def _record_epoch(self) -> None:
        """monitor.epoch for the epoch that ended, with the evaluation that ran since (if any)."""
        if self.monitor is None or self._epoch is None:
            return
        self.monitor.epoch(train_loss=self._epoch, val_loss=self._eval.get("val_loss"),
                           val_acc=self._eval.get("val_acc"))
        self._epoch, self._eval = None, {}

    def _close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _publish(self, state) -> None:
        """The findings counts into the trainer state's log history, when a new finding arrived."""
        if self._log.fresh:
            self._log.fresh = False
            state.log_history.append({**self._log.counts(), "step": state.global_step})
