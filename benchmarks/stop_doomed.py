"""Stopping doomed runs: a grid with too-large, too-small and sensible learning rates and a zero init,
swept with and without ``stop_on``.

    PYTHONPATH=src python benchmarks/stop_doomed.py [--epochs 10] [--seeds 2] [--width 32] [--depth 3]

Grid: digits, lr in {0.01, 0.1, 50, 1e-6} x init in {he, zeros}, `seeds` seeds, batch 64, plain SGD.
Doomed: lr=50 (diverges), init=zeros (symmetric/dead units: stuck at chance), lr=1e-6 (stalled updates).
Every sweep runs on the local engine (one torch thread), so steps and wall times compare like for like.
Printed per setting: total optimizer steps, runs stopped, wall time, and the best configuration (lowest
mean ``best_val_loss`` over seeds) with its mean best validation loss and final validation accuracy;
then the fraction of steps saved and whether the best configuration is the same.
"""
from __future__ import annotations

import argparse
import time

import torch

import deepdiag as dd

GRID = {"lr": [0.01, 0.1, 50.0, 1e-6], "init": ["he", "zeros"]}


def best_config(df):
    g = df.groupby(["lr", "init"])[["best_val_loss", "val_acc"]].mean()
    key = g.best_val_loss.idxmin()
    return (float(key[0]), key[1]), g.loc[key, "best_val_loss"], g.loc[key, "val_acc"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = {"dataset": "digits", "width": args.width, "depth": args.depth, "epochs": args.epochs}
    n = len(GRID["lr"]) * len(GRID["init"]) * args.seeds
    print(f"digits, width {args.width}, depth {args.depth}, {args.epochs} epochs, grid {GRID}, "
          f"{args.seeds} seeds: {n} runs, engine local, 1 torch thread\n")
    print(f"{'stop_on':>8} {'steps':>6} {'stopped':>8} {'wall s':>7}  {'best config (lr, init)':<24} "
          f"{'best val loss':>13} {'val acc':>8}")
    rows = {}
    for stop_on in (None, "error", "warning"):
        start = time.perf_counter()
        df = dd.sweep(base, GRID, seeds=args.seeds, engine="local", progress=False, stop_on=stop_on)
        wall = time.perf_counter() - start
        key, loss, acc = best_config(df)
        rows[stop_on] = (int(df.steps.sum()), key)
        print(f"{str(stop_on):>8} {int(df.steps.sum()):>6} {int(df.stopped.sum()):>8} {wall:>7.2f}  "
              f"{str(key):<24} {loss:>13.4f} {acc:>8.3f}")
        if stop_on is not None:
            why = df[df.stopped].groupby(["lr", "init"]).agg(code=("stop_code", "first"),
                                                             step=("stop_step", "max"),
                                                             steps=("steps", "max"))
            for (lr, init), r in why.iterrows():
                print(f"{'':>10}stopped lr={lr:g} init={init}: {r.code} seen by step {int(r.step)}, "
                      f"trained {int(r.steps)} steps")
    full, best = rows[None]
    print()
    for stop_on in ("error", "warning"):
        steps, key = rows[stop_on]
        print(f"stop_on={stop_on!r}: {1 - steps / full:.1%} fewer steps ({steps} of {full}); "
              f"best config {'identical' if key == best else f'DIFFERENT: {key} vs {best}'}")


if __name__ == "__main__":
    main()
