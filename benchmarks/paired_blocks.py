"""Training loops timed side by side in one process (shared by ``monitor_ab.py`` and ``monitor_floor.py``).

Each loop runs `block` optimizer steps at a time, the loops in rotating order, for `rounds` rounds; CPU
time (``time.process_time``, which does not count time spent waiting for a core). Per loop, the median
over rounds of its block time over the same round's bare block (paired: load that drifts between rounds
hits both alike), and the ratio of the medians.
"""
from __future__ import annotations

import statistics
import time


def rotate(runs: dict, data: list, loss_fn, rounds: int, block: int = 20, warmup: int = 1) -> dict:
    """CPU seconds per block of each loop. `runs`: name -> [model, optimizer, watcher or None, next batch];
    a watcher's ``step(loss)`` is called after every optimizer step."""
    def one(name: str) -> float:
        model, opt, watcher, i = runs[name]
        t = time.process_time()
        for j in range(block):
            x, y = data[(i + j) % len(data)]
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if watcher is not None:
                watcher.step(loss)
        runs[name][3] = i + block
        return time.process_time() - t

    names = list(runs)
    for name in names:
        for _ in range(warmup):
            one(name)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(one(name))
    return times


def table(times: dict, bare: str = "bare") -> list[str]:
    """Markdown rows: each loop's paired ratio (median) and ratio of medians to the `bare` loop."""
    base = statistics.median(times[bare])
    rows = ["| loop | paired ratio (median) | ratio of medians |", "|---|---|---|"]
    for name, t in times.items():
        if name != bare:
            paired = statistics.median(x / b for x, b in zip(t, times[bare]))
            rows.append(f"| {name} | {paired:.3f}x | {statistics.median(t) / base:.3f}x |")
    return rows
