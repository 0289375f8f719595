"""``DeepdiagCallback``: a ``dd.Monitor`` on the ``LightningModule`` that a PyTorch Lightning ``Trainer`` fits.

    from deepdiag.integrations.lightning import DeepdiagCallback
    cb = DeepdiagCallback(n_classes=10)
    lightning.Trainer(callbacks=[cb]).fit(module, train_loader, val_loader)
    cb.findings                       # also logged when first seen; saved under <log_dir>/deepdiag

What it does, hook by hook:

* ``on_train_start`` (after the sanity check, optimizers set up): a Monitor on `pl_module`, given the first
  optimizer (``trainer.optimizers[0]``) for its learning-rate hints. Only the global-zero process monitors
  (the other ranks train the same model on other shards; their statistics would repeat it).
* ``on_train_batch_end`` (after the batch's optimizer step, if any): ``monitor.step(loss)`` once per
  optimizer step, i.e. when ``trainer.global_step`` (Lightning's count of optimizer steps) has moved since
  the last call. With ``accumulate_grad_batches=k`` only every k-th batch (and the last of an epoch) steps;
  the batches in between only add their loss. The step's loss is the mean of its micro-batch losses:
  Lightning hands ``outputs["loss"]`` already divided by k (what it back-propagates), so the sum of the m
  micro-batch values is multiplied by k/m (m = k except for a short last accumulation). Under manual
  optimization the training step's returned loss is not divided, so the mean is Σ/m; a batch that steps
  several optimizers (GANs) counts as one step.
* ``on_validation_end`` / ``on_train_epoch_end``: ``monitor.epoch(...)`` with the epoch's values of the
  metrics named by `metrics` from ``trainer.callback_metrics`` (a name logged with ``on_step=True`` and
  ``on_epoch=True`` is found as ``<name>_epoch`` too). Validation values count only for an epoch in which
  validation ran (not the sanity check). The training loss is the mean step loss of the epoch unless
  `metrics` names a logged one. Log accuracies with ``on_epoch=True``: a metric logged per step only
  holds the epoch's last batch value.
* Each finding, when the Monitor first sees it (every `check_every` steps): a Python log record on the
  ``deepdiag.integrations.lightning`` logger (WARNING for warnings and errors), and the counts
  ``deepdiag/findings_{info,warning,error}`` through every logger of the trainer (``log_metrics``);
  ``self.findings`` holds the findings reported so far.
* ``on_train_end`` (and ``on_exception``): the final findings in ``self.findings``, the Monitor closed (its
  hooks removed), the run saved in `save_dir` (default ``<trainer.log_dir>/deepdiag``; see
  ``_common.save_run``).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from torch import Tensor

from ..monitor import Monitor
from ._common import FindingLog, StepLoss, check_metrics, check_options, finish, require

pl = require("lightning.pytorch", "lightning")

log = logging.getLogger(__name__)

# Monitor.epoch argument -> logged metric. train_loss None: the mean of the epoch's step losses (exactly the
# loss Lightning optimised; a metric logged with on_step only would give the last batch's value instead).
METRICS = {"train_loss": None, "val_loss": "val_loss", "train_acc": "train_acc", "val_acc": "val_acc"}


def _metric(metrics: Mapping, name: str | None):
    """The epoch value logged as `name` (or `name`_epoch), detached; None when not logged."""
    if name is None:
        return None
    v = metrics.get(name, metrics.get(f"{name}_epoch"))
    return v.detach().clone() if isinstance(v, Tensor) else v


class DeepdiagCallback(pl.Callback):
    """Monitor the module a Lightning ``Trainer`` fits (see the module docstring for what each hook does).

    save_dir: where the run is saved at the end (default ``<trainer.log_dir>/deepdiag``). metrics: which
    logged metric feeds each curve of ``Monitor.epoch``, e.g. ``{"val_acc": "val/accuracy"}`` (default
    ``val_loss``, ``train_acc``, ``val_acc``; the training loss is the epoch's mean step loss unless
    named; None leaves a curve out, or for train_loss gives the mean step loss). monitor_options:
    passed to ``dd.Monitor`` (every, capacity, window, n_classes, baseline, log_dir, loss_fn,
    check_every, lr, batch_size).
    """

    def __init__(self, save_dir: str | os.PathLike | None = None, *, metrics: dict | None = None,
                 **monitor_options):
        self.save_dir = save_dir
        self.metrics = check_metrics(metrics, METRICS)
        self.options = check_options(monitor_options)
        self.monitor: Monitor | None = None
        self.saved: list = []  # paths written at the end
        self._findings = None
        self._log = FindingLog(log)

    @property
    def findings(self) -> list:
        """The findings at the end of training; while it runs, those reported so far."""
        return self._findings if self._findings is not None else list(self._log.seen)

    def on_train_start(self, trainer, pl_module) -> None:
        self._dir = self.save_dir or os.path.join(trainer.log_dir or trainer.default_root_dir, "deepdiag")
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.close()
        self.monitor, self._findings, self._log = None, None, FindingLog(log)
        if not trainer.is_global_zero:
            return
        opt = trainer.optimizers[0] if trainer.optimizers else None
        self.monitor = Monitor(pl_module, optimizer=opt, on_finding=self._log, **self.options)
        self._loss, self._val = StepLoss(), {}
        self._stepped = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.monitor is not None:
            # a training_step that calls its submodules (self.net(x)) never calls pl_module itself, by which
            # the Monitor would recognise a new pass (see Monitor.new_pass)
            self.monitor.new_pass()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            self._loss.add(loss)
        if trainer.global_step == self._stepped:
            return  # accumulating gradients: no optimizer step yet
        self._stepped = trainer.global_step
        k = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        m = self._loss.count
        self.monitor.step(self._loss.take(k / m) if m else None)
        self._publish(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.monitor is None or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self._val = {k: _metric(m, self.metrics[k]) for k in ("val_loss", "val_acc")}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.monitor is None:
            return
        m = trainer.callback_metrics
        train_loss = _metric(m, self.metrics["train_loss"])
        step_mean = self._loss.take_epoch()
        self.monitor.epoch(train_loss=train_loss if train_loss is not None else step_mean,
                           train_acc=_metric(m, self.metrics["train_acc"]),
                           val_loss=self._val.get("val_loss"), val_acc=self._val.get("val_acc"))
        self._val = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        try:
            self._finish(trainer)
        except Exception as e:  # the training error is what the user must see
            log.warning("deepdiag: could not save the run after %s: %s", type(exception).__name__, e)

    def _finish(self, trainer) -> None:
        if self.monitor is None or self.monitor.closed:
            return
        self._findings, self.saved = finish(self.monitor, self._dir)
        self._publish(trainer)

    def _publish(self, trainer) -> None:
        """The findings counts through the trainer's loggers, when a new finding arrived."""
        if not self._log.fresh:
            return
        self._log.fresh = False
        for logger in trainer.loggers:
            logger.log_metrics(self._log.counts(), step=trainer.global_step)
