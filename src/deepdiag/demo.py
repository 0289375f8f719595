"""The README's first demo: an MLP trained on scikit-learn's digits, one line per epoch."""
from __future__ import annotations

from collections.abc import Callable

from . import data as datasets
from .models import mlp
from .train import History, fit


def run_demo(epochs: int = 8, seed: int = 0, print_fn: Callable[[str], None] = print) -> History:
    """Train a 2x128 ReLU MLP (He init, Adam lr 3e-3, batch 32) on digits; print train/val loss and accuracy."""
    ds = datasets.load("digits", seed=seed)
    model = mlp(ds.in_features, ds.out_features, width=128, depth=2, seed=seed)
    print_fn(f"digits: {len(ds.x_train)} train / {len(ds.x_val)} val images of 8x8 pixels, 10 classes")
    print_fn(f"{'epoch':>5}  {'train loss':>10}  {'val loss':>8}  {'train acc':>9}  {'val acc':>7}")

    def show(h: History) -> None:
        print_fn(f"{h.epoch[-1]:>5}  {h.train_loss[-1]:>10.4f}  {h.val_loss[-1]:>8.4f}  "
                 f"{h.train_acc[-1]:>9.1%}  {h.val_acc[-1]:>7.1%}")

    hist = fit(model, ds, optimizer="adam", lr=3e-3, batch_size=32, epochs=epochs, seed=seed, on_epoch=show)
    print_fn(f"best val loss {hist.best_val_loss:.4f} at epoch {hist.best_epoch}; {hist.wall_time:.1f} s")
    return hist
