"""Monitor -> TensorBoard, read back with tensorboard's own event reader."""
import pytest
import torch
from torch import nn

import deepdiag as dd

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="pip install tensorboard")


def _train(monitor, model, steps=12):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    for s in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        monitor.step(loss)
        if s % 4 == 3:
            monitor.epoch(train_loss=loss.detach(), val_loss=loss.item() + 0.1)


def _read(log_dir):
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_log_dir_written_on_close_and_read_back(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with dd.Monitor(model, every=2, log_dir=tmp_path) as mon:
        _train(mon, model)
    acc = _read(tmp_path)
    tags = set(acc.Tags()["scalars"])
    assert {"epoch/train_loss", "epoch/val_loss", "loss/step"} <= tags
    assert "layers/0/grad_norm" in tags and "layers/2/weight_norm" in tags
    steps = [e.step for e in acc.Scalars("layers/0/grad_norm")]
    assert steps == mon.history.layers.query("layer == '0'")["step"].tolist() == [0, 2, 4, 6, 8, 10]
    expected = mon.history.epochs["val_loss"].tolist()
    assert [e.value for e in acc.Scalars("epoch/val_loss")] == pytest.approx(expected, rel=1e-6)
    assert set(acc.Tags()["histograms"]) == {"weights/0.weight", "weights/2.weight"}


def test_to_tensorboard_on_demand(tmp_path):
    model = dd.mlp(8, 3, width=16, depth=2, seed=0)
    mon = dd.Monitor(model)
    _train(mon, model, steps=3)
    path = mon.to_tensorboard(tmp_path / "tb")
    mon.close()
    values = [e.value for e in _read(path).Scalars("loss/step")]
    assert values == pytest.approx(mon.history.steps["loss"].tolist(), rel=1e-6) and len(values) == 3
