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

import itertools
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
        # each row flattened and each loss slot, as views made once (indexing is a dispatched op per step);
        # decimation writes in place, so they stay valid
        self._flat_rows = [r.view(-1) for r in self.rows]  # (n_sites * n_stats,) each
        self._loss_at = self.loss.unbind()  # 0-d each

    def keeps(self, recorded: int) -> bool:
        """Whether the `recorded`-th recorded step gets a row at the current stride."""
        return recorded % self.stride == 0

    def append(self, step: int, row: Tensor | None, loss=None, cols: Tensor | None = None) -> None:
        """Keep `row` (n_sites, n_stats) and the step's loss (a tensor or number; NaN when None). With
        `cols`, `row` holds only the entries at these places of the flattened row (the rest stays NaN)."""
        if self.n == self.capacity:
            self._decimate()
        if cols is None:
            self.rows[self.n] = row
        elif row is not None:  # a kept row is all NaN until written (created so, and so after decimation)
            src = row if row.dtype == self.rows.dtype else row.to(self.rows.dtype)
            self._flat_rows[self.n].index_copy_(0, cols, src)
        if isinstance(loss, Tensor):  # (copy_ rounds to float32 as .float() does; records nothing under no_grad)
            t = loss.detach() if torch.is_grad_enabled() else loss
            self._loss_at[self.n].copy_(t.reshape(()) if t.dim() else t)
        elif loss is not None:  # rounded as a cast to the buffer's dtype rounds it (1e39 -> Inf in float32)
            self.loss[self.n] = torch.tensor(float(loss), dtype=torch.float64).to(self.loss.dtype).item()
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
        self.version = 0  # bumped whenever a window is created, dropped or rolled (its tensors replaced)
        self.layout = 0  # bumped whenever a window is created or dropped (the layers and widths of bad_counts)
        self._segs: dict[tuple, tuple[Tensor, Tensor]] = {}  # (widths, device) -> (_segments)
        self._groups: tuple[int, list] | None = None  # (version, ``_group()``) for bad_counts

    def add(self, index: int, d: dict) -> None:
        """Add one recorded step of site `index` (its ``unit_max`` or ``unit_count``, and ``positions``)."""
        is_max = "unit_max" in d
        u = d["unit_max"] if is_max else d["unit_count"]
        w = self.units.get(index)
        if w is None:
            init = -math.inf if is_max else 0
            w = self.units[index] = UnitWindow(torch.full_like(u, init), 0, None, 0, init, is_max)
            self.version += 1
            self.layout += 1
        w.add(u, d["positions"])

    def drop(self, index: int) -> None:
        """Forget site `index`'s evidence (a layer whose width changed starts again)."""
        del self.units[index]
        self.version += 1
        self.layout += 1

    def add_all(self, items: list[tuple[int, dict]], resized=None) -> None:
        """``add`` for several sites of one recorded step: the ReLU maxima in one fused kernel. A site whose
        number of units changed starts a new window (``drop``; counts of different units cannot be added),
        after ``resized(index, old shape, new shape)`` when given."""
        fused_cur, fused_new = [], []
        for index, d in items:
            w = self.units.get(index)
            if w is not None:
                u = d["unit_max"] if "unit_max" in d else d.get("unit_count")
                if isinstance(u, Tensor) and w.current.shape != u.shape:
                    if resized is not None:
                        resized(index, tuple(w.current.shape), tuple(u.shape))
                    self.drop(index)
                    w = None
            if w is None or "unit_max" not in d or not w.is_max:
                self.add(index, d)
                continue
            fused_cur.append(w.current)
            fused_new.append(d["unit_max"])
            w.positions += d["positions"]
        if fused_cur:
            torch._foreach_maximum_(fused_cur, fused_new)  # = UnitWindow.add, per window

    def bad_counts(self) -> list[tuple[list[int], Tensor, tuple[float, ...]]]:
        """The share of units in trouble of every unit layer as (site indices, 1-d float32 numerators,
        denominators) groups, numerator / denominator (in float32) = ``UnitWindow.bad_fraction``: the
        number of ReLU units that never fired, or of tanh/sigmoid units saturated, over the layer's units
        (the division is left to the caller, which divides its whole row at once). In a fixed number of
        kernels whatever the number of layers: the windows' values are concatenated, compared with their
        threshold (ReLU: fired iff maximum > 0; tanh/sigmoid: saturated iff count > half the positions
        seen) and summed per layer (``index_add_``). Sums of 0/1 over n units are exact in float32, so
        (n − fired)/n equals the mean of the 0/1s. The grouping is made once per ``version``. A layer
        that is not fused gives its fraction over 1."""
        if self._groups is None or self._groups[0] != self.version:
            self._groups = (self.version, self._group())
        out: list[tuple[list[int], Tensor, tuple[float, ...]]] = []
        for indices, ws, is_max, fused in self._groups[1]:
            if fused is None:  # nothing to fuse (or layers on several devices)
                out += [([i], w.bad_fraction().reshape(1), (1.0,)) for i, w in zip(indices, ws)]
                continue
            sizes, seg, n, flat = fused
            if is_max:  # max(c, c) = c: a window without a previous one is its own
                if flat is not None:  # (layers of one width: (layers, width) buffers)
                    cur, prev = flat
                    v = torch.maximum(cur, prev) if prev is not None else cur
                else:
                    v = torch.cat([m.reshape(-1) for m in torch._foreach_maximum(
                        [w.current for w in ws], [w.previous if w.previous is not None else w.current for w in ws])])
                hit = v > 0  # fired
            else:
                prev = [w.previous if w.previous is not None else torch.zeros_like(w.current) for w in ws]
                v = torch.cat([c.reshape(-1) for c in torch._foreach_add([w.current for w in ws], prev)]).float()
                hit = v > _half_seen(ws, sizes, v.device)  # saturated
            if len(set(sizes)) == 1:  # layers of one width: a row each (the same exact sums of 0/1)
                count = (hit if hit.dim() == 2 else hit.view(len(ws), -1)).sum(1, dtype=torch.float32)
            else:
                count = torch.zeros(len(ws), dtype=torch.float32, device=v.device).index_add_(0, seg, hit.float())
            out.append((indices, n - count if is_max else count, tuple(float(k) for k in sizes)))
        return out

    def _group(self) -> list[tuple]:
        """The unit layers by kind (ReLU maxima, then saturation counts): (site indices, windows, is_max,
        fused), fused = (widths, ``_segments``, flat ReLU buffers or None), or None when there is nothing
        to fuse (one layer, or layers on several devices)."""
        groups = []
        for is_max in (True, False):
            ws = [(i, w) for i, w in self.units.items() if w.is_max == is_max]
            if not ws:
                continue
            fused = None
            if len(ws) > 1 and len({w.current.device for _, w in ws}) == 1:
                sizes = tuple(w.current.numel() for _, w in ws)
                flat = self._flatten([w for _, w in ws], sizes) if is_max else None
                if flat is not None and len(set(sizes)) == 1:
                    flat = tuple(f.view(len(ws), -1) if f is not None else None for f in flat)
                fused = (sizes, *self._segments(sizes, ws[0][1].current.device), flat)
            groups.append(([i for i, _ in ws], [w for _, w in ws], is_max, fused))
        return groups

    @staticmethod
    def _flatten(ws: list[UnitWindow], sizes: tuple) -> tuple[Tensor, Tensor | None] | None:
        """The ReLU windows' current (and previous) values as views into one flat buffer each (one copy),
        so max(current, previous) of all of them is one kernel: (current buffer, previous buffer or None).
        None when only some of them have a previous window, or their dtypes differ (one buffer: one
        dtype); the caller then takes them one by one."""
        cur, prev = [w.current for w in ws], [w.previous for w in ws]
        if (any(p is None for p in prev) and not all(p is None for p in prev)) or len({t.dtype for t in cur}) > 1:
            return None
        flats = [torch.cat([t.reshape(-1) for t in ts]) if ts[0] is not None else None for ts in (cur, prev)]
        views = [[f[a - k:a].view(t.shape) for k, a, t in zip(sizes, itertools.accumulate(sizes), ts)]
                 if f is not None else [None] * len(ts) for f, ts in zip(flats, (cur, prev))]
        for w, c, p in zip(ws, *views):
            w.current, w.previous = c, p
        return flats[0], flats[1]

    def _segments(self, sizes: tuple, device) -> tuple[Tensor, Tensor]:
        """(layer index of each concatenated unit, units per layer as float32), kept for the layer widths."""
        key = (sizes, device)
        if key not in self._segs:
            seg = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
            self._segs[key] = (seg, torch.tensor(sizes, dtype=torch.float32, device=device))
        return self._segs[key]

    def tick(self) -> None:
        self.in_window += 1
        if self.in_window >= self.window:
            for w in self.units.values():
                w.roll()
            self.in_window = 0
            self.version += 1

    def min_seen(self) -> int | None:
        """The fewest positions any unit layer has seen over both windows (None: no unit layers)."""
        return min((w.seen for w in self.units.values()), default=None)


def _half_seen(ws: list, sizes: tuple, device) -> float | Tensor:
    """Half the positions each saturation window has seen (at least ½), per unit of the concatenated
    windows: one Python number when the windows agree (the usual case: layers fed by the same batch), else
    a vector made on the device by fills (``torch.tensor`` of host numbers would copy them to the device
    at every step: on CUDA a copy that waits for the stream). Exact either way: 0.5·seen is exact in
    float32 up to 2²⁴ positions, as the comparison with a float32 count needs."""
    half = [0.5 * max(1, w.seen) for w in ws]
    if len(set(half)) == 1:
        return half[0]
    return torch.cat([torch.full((k,), h, dtype=torch.float32, device=device) for k, h in zip(sizes, half)])

