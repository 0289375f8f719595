"""A Monitor's memory, on the model's device: a bounded buffer of per-step layer statistics, and the
per-unit evidence of the last two windows of steps.

``StepBuffer``: rows of shape (sites, stats) go into a fixed buffer of `capacity` rows; when it is full
every other row is dropped and the stride between kept rows doubles (decimation), so any run length
keeps between capacity/2 and capacity rows, evenly spread from the first step to the last.

``UnitWindows``: per unit layer, the ReLU maxima (max) or tanh/sigmoid saturation counts (sum) of the
current window of `window` recorded steps and of the previous one, so units that die during training
are seen once a whole window passes without them firing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


class StepBuffer:
    """`capacity` rows of (n_sites, n_stats) float32 statistics and a loss per row, with decimation."""

    def __init__(self, capacity: int, n_sites: int, n_stats: int, device):
        self.capacity = capacity
        self.rows = torch.full((capacity, n_sites, n_stats), math.nan, dtype=torch.float32, device=device)
        self.loss = torch.full((capacity,), math.nan, dtype=torch.float32, device=device)
        self.steps: list[int] = []  # the optimizer step of each kept row
        self.n = 0
        self.stride = 1  # keep every stride-th recorded step

    def keeps(self, recorded: int) -> bool:
        """Whether the `recorded`-th recorded step gets a row at the current stride."""
        return recorded % self.stride == 0

    def append(self, step: int, row: Tensor, loss=None) -> None:
        """Keep `row` (n_sites, n_stats) and the step's loss (a tensor or number; NaN when None)."""
        if self.n == self.capacity:
            self._decimate()
        self.rows[self.n] = row
        if loss is not None:
            self.loss[self.n] = loss.detach().float() if isinstance(loss, Tensor) else float(loss)
        self.steps.append(step)
        self.n += 1

    def _decimate(self) -> None:
        half = self.capacity // 2
        self.rows[:half] = self.rows[0::2].clone()
        self.rows[half:] = math.nan
        self.loss[:half] = self.loss[0::2].clone()
        self.loss[half:] = math.nan
        self.steps = self.steps[0::2]
        self.n = half
        self.stride *= 2

    def host(self) -> tuple[Tensor, Tensor, list[int]]:
        """(rows, losses, steps) of the kept rows on the host: one .cpu() each (host sync)."""
        return self.rows[:self.n].cpu(), self.loss[:self.n].cpu(), list(self.steps)


@dataclass
class UnitWindow:
    """One unit layer's evidence: `current` window's per-unit values over `positions` samples/positions,
    the `previous` window's (None before the first roll) over `previous_positions`. `is_max`: ReLU
    maxima (a unit fired iff its maximum > 0), else saturation counts; `initial`: a fresh window's value."""

    current: Tensor
    positions: int
    previous: Tensor | None
    previous_positions: int
    initial: float
    is_max: bool

    def add(self, values: Tensor, positions: int) -> None:
        if self.is_max:
            torch.maximum(self.current, values, out=self.current)
        else:
            self.current += values
        self.positions += positions

    def roll(self) -> None:
        """The current window becomes the previous one; a new one starts."""
        self.previous, self.previous_positions = self.current, self.positions
        self.current, self.positions = torch.full_like(self.current, self.initial), 0

    @property
    def seen(self) -> int:
        """Positions over both windows."""
        return self.positions + self.previous_positions

    def counts(self) -> Tensor:
        """Per unit over both windows: firing indicators (0/1, ReLU) or saturation counts (device)."""
        cur = self.current
        if self.previous is not None:
            cur = torch.maximum(cur, self.previous) if self.is_max else cur + self.previous
        return (cur > 0).long() if self.is_max else cur

    def bad_fraction(self) -> Tensor:
        """The share of units in trouble over both windows, 0-d on the device (no host sync): ReLU units
        that never fired (dead), or tanh/sigmoid units at their asymptote on more than half the positions
        seen (saturated) — the unit rules' definitions (``deepdiag.measure.layer_stats``)."""
        c = self.counts()
        if self.is_max:
            return (c == 0).float().mean()
        return (c.float() > 0.5 * max(1, self.seen)).float().mean()


class UnitWindows:
    """Every unit layer's ``UnitWindow``; ``tick()`` after each recorded step rolls them every `window`."""

    def __init__(self, window: int):
        self.window, self.in_window = window, 0
        self.units: dict[int, UnitWindow] = {}

    def add(self, index: int, d: dict) -> None:
        """Add one recorded step of site `index` (its ``unit_max`` or ``unit_count``, and ``positions``)."""
        is_max = "unit_max" in d
        u = d["unit_max"] if is_max else d["unit_count"]
        w = self.units.get(index)
        if w is None:
            init = -math.inf if is_max else 0
            w = self.units[index] = UnitWindow(torch.full_like(u, init), 0, None, 0, init, is_max)
        w.add(u, d["positions"])

    def tick(self) -> None:
        self.in_window += 1
        if self.in_window >= self.window:
            for w in self.units.values():
                w.roll()
            self.in_window = 0

    def min_seen(self) -> int | None:
        """The fewest positions any unit layer has seen over both windows (None: no unit layers)."""
        return min((w.seen for w in self.units.values()), default=None)
