"""Export a Monitor's statistics to TensorBoard (``torch.utils.tensorboard``; needs ``tensorboard``).

Scalars: ``layers/<layer>/<stat>`` at each kept step (activation RMS, input RMS, back-propagated
signal norm, gradient norm, weight norm, gradient norm relative to weight norm), ``loss/step`` for
the step losses, and ``epoch/<curve>`` (train/val loss and accuracy) at each epoch. Histograms: each
weight tensor of the model as it is at export time, under ``weights/<parameter name>``.
"""
from __future__ import annotations

import math
from pathlib import Path

STATS = ("act_rms", "in_rms", "signal_norm", "grad_norm", "weight_norm", "grad_rel")


def write_tensorboard(monitor, log_dir: str | Path) -> Path:
    """Write `monitor`'s history to an event file under `log_dir`; return the directory."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises ImportError when the tensorboard package is missing
        raise ImportError("TensorBoard export needs the tensorboard package: pip install tensorboard") from e
    hist = monitor.history
    log_dir = Path(log_dir)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for row in hist.layers.itertuples(index=False):
            for stat in STATS:
                value = getattr(row, stat)
                if value is not None and math.isfinite(value):
                    writer.add_scalar(f"layers/{row.layer}/{stat}", value, int(row.step))
        for row in hist.steps.itertuples(index=False):
            if math.isfinite(row.loss):
                writer.add_scalar("loss/step", row.loss, int(row.step))
        for row in hist.epochs.to_dict(orient="records"):
            for curve in ("train_loss", "val_loss", "train_acc", "val_acc"):
                if row[curve] is not None and math.isfinite(row[curve]):
                    writer.add_scalar(f"epoch/{curve}", row[curve], int(row["epoch"]))
        for name, p in monitor.model.named_parameters():
            if p.dim() >= 2:
                writer.add_histogram(f"weights/{name}", p.detach().cpu(), monitor.steps)
    return log_dir
