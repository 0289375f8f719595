"""The Lightning callback with the real library on CPU: a healthy fit stays silent, a layer left out of the
optimizer is found, logged when first seen and saved; step losses respect gradient accumulation."""
import logging

import pytest
import torch
from torch import nn

import deepdiag as dd
from conftest import require_integration

require_integration("lightning", "lightning")
import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402

from deepdiag.integrations.lightning import DeepdiagCallback  # noqa: E402
from deepdiag.runreport import load_run  # noqa: E402


class RecordingLogger(Logger):
    """A Lightning logger that keeps what it is given (stands in for TensorBoard/CSV/W&B)."""

    def __init__(self):
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))


class Classifier(pl.LightningModule):
    """An MLP on the digits; `frozen` names a layer whose parameters are left out of the optimizer."""

    def __init__(self, frozen: str | None = None, lr: float = 0.05):
        super().__init__()
        self.net = dd.mlp(64, 10, width=64, depth=2, seed=0)
        self.frozen, self.lr = frozen, lr
        self.batch_losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.batch_losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        params = [p for n, p in self.named_parameters() if not (self.frozen and n.startswith(self.frozen + "."))]
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9)


@pytest.fixture(scope="module")
def loaders():
    d = dd.data.load("digits", seed=0)
    g = torch.Generator().manual_seed(0)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(d.x_train, d.y_train), batch_size=64,
                                        shuffle=True, generator=g)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(d.x_val, d.y_val), batch_size=256)
    return train, val


def fit(module, loaders, tmp_path, callback, epochs=3, **trainer_args):
    logger = RecordingLogger()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=[logger], callbacks=[callback],
                         default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, **trainer_args)
    trainer.fit(module, *loaders)
    return trainer, logger


def warned(findings):
    return {f.code for f in findings if f.rank >= 1}


def test_healthy_fit_is_silent_and_records_epochs(loaders, tmp_path):
    cb = DeepdiagCallback(n_classes=10)
    trainer, logger = fit(Classifier(), loaders, tmp_path, cb)
    assert warned(cb.findings) == set(), [str(f) for f in cb.findings]
    mon = cb.monitor
    assert mon.closed and mon.n_hooks == 0 and mon.steps == trainer.global_step == 3 * 17
    layers = mon.history.layers  # every step measured, though training_step calls self.net, not the module
    assert layers.step.nunique() == 3 * 17 and layers.signal_norm.notna().any()
    epochs = mon.history.epochs
    assert len(epochs) == 3 and epochs.val_loss.notna().all() and epochs.val_acc.iloc[-1] > 0.9
    assert epochs.val_loss.iloc[-1] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert epochs.train_loss.iloc[-1] == pytest.approx(sum(trainer.lightning_module.batch_losses[-17:]) / 17)
    saved = tmp_path / "deepdiag"  # no save_dir: default_root_dir (the logger has no directory)
    assert saved.is_dir() and cb.saved and all(str(p).startswith(str(saved)) for p in cb.saved)
    assert cb.saved == [saved, saved / "report.html"] and (saved / "report.html").stat().st_size > 0
    assert load_run(saved).findings == cb.findings


def test_layer_left_out_of_optimizer_is_found_logged_and_saved(loaders, tmp_path, caplog):
    first = "net.hidden.0.linear"
    cb = DeepdiagCallback(tmp_path / "dd", n_classes=10)
    with caplog.at_level(logging.INFO, logger="deepdiag.integrations.lightning"):
        trainer, logger = fit(Classifier(frozen=first), loaders, tmp_path, cb, epochs=2)
    stalled = [f for f in cb.findings if f.code == "stalled_updates"]
    assert stalled and stalled[0].severity == "warning" and stalled[0].layers == [first]
    assert stalled[0].fix == {"unfreeze": [first]}
    # logged when first seen, during training (the Monitor checks every 10 steps), not only at the end
    records = [r for r in caplog.records if "stalled_updates" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert stalled[0].step < trainer.global_step - 1
    counts = [(step, m) for step, m in logger.metrics if "deepdiag/findings_warning" in m]
    assert counts and counts[0][1]["deepdiag/findings_warning"] >= 1 and counts[0][0] < trainer.global_step
    assert (tmp_path / "dd").is_dir() and cb.saved
    saved = load_run(tmp_path / "dd")
    assert any(f.code == "stalled_updates" and f.layers == [first] for f in saved.findings)
    assert (tmp_path / "dd" / "report.html").exists()


def test_gradient_accumulation_steps_once_per_optimizer_step(loaders, tmp_path):
    """17 batches, accumulate 4: 5 optimizer steps (4+4+4+4+1); each step's loss is the mean of its batches."""
    module = Classifier()
    cb = DeepdiagCallback(tmp_path, capacity=64)
    trainer, _ = fit(module, loaders, tmp_path, cb, epochs=1, accumulate_grad_batches=4, limit_val_batches=0)
    assert trainer.global_step == cb.monitor.steps == 5
    b = module.batch_losses
    expected = [sum(b[i:i + 4]) / len(b[i:i + 4]) for i in range(0, 17, 4)]
    got = cb.monitor.history.steps.loss.tolist()
    assert got == pytest.approx(expected, rel=1e-5)
    assert cb.monitor.history.epochs.val_loss.isna().all()  # no validation ran: no value


def test_callback_argument_errors():
    with pytest.raises(TypeError, match="optimizer"):
        DeepdiagCallback(optimizer=None)
    with pytest.raises(TypeError, match="unknown Monitor option"):
        DeepdiagCallback(n_class=10)
    with pytest.raises(ValueError, match="val_accuracy"):
        DeepdiagCallback(metrics={"val_accuracy": "acc"})
