"""What the framework adapters share: importing the framework, checking the callback's options, the loss
of one optimizer step, logging findings when first seen, and saving the run at the end.

Each adapter (``lightning.py``, ``transformers.py``) only maps its framework's hooks onto these.
"""
from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from ..findings import SEVERITIES, Finding

# Monitor options a callback passes through; on_finding and optimizer are the callback's own.
MONITOR_OPTIONS = ("every", "capacity", "window", "n_classes", "baseline", "log_dir", "loss_fn", "check_every",
                   "lr", "batch_size")
EPOCH_FIELDS = ("train_loss", "val_loss", "train_acc", "val_acc")  # Monitor.epoch's arguments
REPORT_FILE = "report.html"


def require(module: str, extra: str):
    """Import `module` (the framework an adapter builds on), or say which deepdiag extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"deepdiag's {extra} integration needs the {module!r} package: "
                          f"pip install 'deepdiag[{extra}]'") from e


def check_options(options: dict) -> dict:
    """The Monitor keyword arguments a callback accepts (their values are checked by ``dd.Monitor``)."""
    own = {"on_finding", "optimizer"} & set(options)
    if own:
        raise TypeError(f"{', '.join(sorted(own))} is set by the callback (the trainer's optimizer, the "
                        f"framework's logger); allowed Monitor options: {', '.join(MONITOR_OPTIONS)}")
    unknown = set(options) - set(MONITOR_OPTIONS)
    if unknown:
        raise TypeError(f"unknown Monitor option(s) {', '.join(sorted(unknown))}; allowed: {', '.join(MONITOR_OPTIONS)}")
    return dict(options)


def check_metrics(metrics, defaults: dict) -> dict:
    """`defaults` (Monitor.epoch argument -> the framework's metric name) updated by `metrics`; a name of
    None leaves that curve out."""
    if metrics is None:
        return dict(defaults)
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict like {defaults!r}, got {type(metrics).__name__}")
    bad = set(metrics) - set(EPOCH_FIELDS)
    if bad:
        raise ValueError(f"metrics keys {sorted(bad)} are not Monitor.epoch arguments; allowed: {', '.join(EPOCH_FIELDS)}")
    for k, v in metrics.items():
        if v is not None and not isinstance(v, str):
            raise TypeError(f"metrics[{k!r}]={v!r} must be a metric name (str) or None")
    return {**defaults, **metrics}


class StepLoss:
    """The loss of one optimizer step from the losses of its micro-batches (gradient accumulation), summed on
    the device (no host sync); and the mean step loss of the current epoch.

    ``take(scale)`` returns scale · Σ micro-batch losses and starts the next step: the adapter picks `scale`
    from how its framework normalises each micro-batch loss (1/count for per-micro-batch means)."""

    def __init__(self):
        self._sum: Tensor | None = None
        self.count = 0  # micro-batch losses since the last take()
        self._epoch_sum: Tensor | None = None
        self._epoch_count = 0

    @torch.no_grad()
    def add(self, loss: Tensor) -> None:
        t = loss.detach().float().reshape(-1)[0]
        self._sum = t if self._sum is None else self._sum + t
        self.count += 1

    @torch.no_grad()
    def take(self, scale: float) -> Tensor | None:
        if self._sum is None:
            return None
        step = self._sum * scale
        self._epoch_sum = step if self._epoch_sum is None else self._epoch_sum + step
        self._epoch_count += 1
        self._sum, self.count = None, 0
        return step

    def take_epoch(self) -> Tensor | None:
        """The mean loss of the steps taken since the last call (None if no step had a loss)."""
        mean = self._epoch_sum / self._epoch_count if self._epoch_sum is not None else None
        self._epoch_sum, self._epoch_count = None, 0
        return mean


class FindingLog:
    """Findings as the Monitor first sees them (its ``on_finding``): each is logged once to `logger`
    (warning level for warnings and errors, info for infos) and counted by severity."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.seen: list[Finding] = []
        self.fresh = False  # a finding arrived since the adapter last published the counts

    def __call__(self, finding: Finding) -> None:
        self.seen.append(finding)
        self.fresh = True
        level = logging.INFO if finding.severity == "info" else logging.WARNING
        self.logger.log(level, "deepdiag: %s (first seen at optimizer step %s)", finding, finding.step)

    def counts(self) -> dict[str, int]:
        """Findings reported so far per severity, as metrics: ``deepdiag/findings_<severity>``."""
        return {f"deepdiag/findings_{s}": sum(f.severity == s for f in self.seen) for s in SEVERITIES}


def save_run(monitor, save_dir) -> list[Path]:
    """Write what the run left into `save_dir`: ``monitor.save(dir)`` (its history and findings, read back
    by ``deepdiag report DIR``) and the page ``dir/report.html``. Returns the two paths."""
    out = Path(save_dir)
    return [monitor.save(out), monitor.report(out / REPORT_FILE)]


def finish(monitor, save_dir: str | os.PathLike) -> tuple[list[Finding], list[Path]]:
    """End of training: the findings (new ones still go to ``on_finding``), every hook removed, the run saved."""
    findings = monitor.check()
    monitor.close()
    return findings, save_run(monitor, save_dir)
