"""Training-loop throughput: dd.fit's achieved FLOP/s at width 512 as a fraction of a bare matmul's.

    PYTHONPATH=src python benchmarks/train_throughput.py [--threads 2] [--epochs 3]

FLOPs of one step of an MLP with layer sizes (d_0, ..., d_L) on B rows: forward 2·B·Σ d_i·d_(i+1),
backward twice that (input and weight gradients; the first layer's input gradient is still counted
since autograd does not skip it for the flattened input), so 6·B·Σ d_i·d_(i+1) per step. The reference
is torch.mm of (B, 512) x (512, 512) timed in the same run. Goal: >= 40 %.
"""
from __future__ import annotations

import argparse
import time

import torch

from deepdiag.engines.local import train_model
from deepdiag.runs import RunConfig


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    width, depth = 512, 3
    a, b = torch.randn(args.batch, width), torch.randn(width, width)
    for _ in range(10):
        a @ b
    reps, t = 200, time.perf_counter()
    for _ in range(reps):
        a @ b
    mm = 2 * args.batch * width * width * reps / (time.perf_counter() - t)
    cfg = RunConfig(dataset="mnist", width=width, depth=depth, batch_size=args.batch, epochs=args.epochs)
    train_model(RunConfig(dataset="mnist", width=width, depth=depth, batch_size=args.batch, epochs=1))
    t = time.perf_counter()
    hist = train_model(cfg).history
    wall = time.perf_counter() - t
    sizes = [784] + [width] * depth + [10]
    from deepdiag.runs import dataset
    n = len(dataset("mnist", None, 0).x_train)
    rows = args.epochs * n
    flops = 6 * rows * sum(i * o for i, o in zip(sizes, sizes[1:]))
    print(f"| what | GFLOP/s |\n|---|---|\n| bare matmul ({args.batch}x{width} @ {width}x{width}) | {mm / 1e9:.1f} |")
    print(f"| dd.fit, mnist, MLP 784-{width}x{depth}-10, batch {args.batch}, {args.epochs} epochs "
          f"(incl. per-epoch eval) | {flops / wall / 1e9:.1f} |")
    print(f"| fraction of bare matmul | {flops / wall / mm:.0%} |")


if __name__ == "__main__":
    main()
