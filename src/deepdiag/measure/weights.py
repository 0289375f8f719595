"""What a layer's weights say: the initialisation they look like, and whether its units are identical
(symmetric). Read from the module on the host when the statistics are built."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..init import fans, scheme_std
from .sites import Site, weight_matrix

INIT_TOLERANCE = 0.15  # a measured weight std within ±15 % of a scheme's std is read as that scheme
RECOGNISED = ("he", "lecun", "xavier", "default")


def weight_of(site: Site) -> Tensor | None:
    """The site's weight as (out, in, *kernel) (transformers' Conv1D transposed), or None."""
    return weight_matrix(site.module)


def recognise_init(w: Tensor) -> tuple[str, float]:
    """(scheme, its std) whose std is within ±15 % of the measured std of `w`, else ("unknown", nan).

    Compared: he (√(2/fan_in)), lecun (√(1/fan_in)), xavier (√(2/(fan_in+fan_out))) and PyTorch's
    default (kaiming_uniform with a=√5: std = 1/√(3·fan_in)); "zeros" for an all-constant weight. Names of
    schemes that coincide (xavier = lecun on square layers) are joined by "/".
    """
    fan_in, fan_out = fans(w)
    std = float(w.detach().double().std()) if w.numel() > 1 else 0.0
    if std == 0.0:
        return ("zeros" if float(w.detach().abs().max()) == 0.0 else "constant"), 0.0
    cands = {s: (scheme_std(s, fan_in, fan_out) if s != "default" else 1.0 / math.sqrt(3.0 * fan_in))
             for s in RECOGNISED}
    close = {s: v for s, v in cands.items() if abs(std / v - 1.0) <= INIT_TOLERANCE}
    if not close:
        return "unknown", math.nan
    best = min(close, key=lambda s: abs(std / close[s] - 1.0))
    same = [s for s in close if abs(close[s] / close[best] - 1.0) < 1e-6]
    return "/".join(sorted(same, key=RECOGNISED.index)), close[best]


def row_symmetry(w: Tensor, b: Tensor | None) -> float:
    """max_i ‖r_i − r̄‖ / max_i ‖r_i‖ over the rows r_i = (W_i, b_i) of a layer's incoming weights
    (one row per unit; flattened kernels for convolutions). 0 when all units have identical incoming
    weights (zero or constant init); ~1 for random init. An all-zero layer gives 0."""
    rows = w.detach().reshape(w.shape[0], -1).double()
    if b is not None:
        rows = torch.cat([rows, b.detach().reshape(-1, 1).double()], dim=1)
    scale = rows.norm(dim=1).max()
    dev = (rows - rows.mean(0, keepdim=True)).norm(dim=1).max()
    return 0.0 if float(scale) == 0.0 else float(dev / scale)


def column_symmetry(w: Tensor) -> float:
    """The same measure over the *outgoing* weights of the previous layer's units: columns of W
    (input channels for convolutions). 0 when every unit feeding this layer is wired identically."""
    cols = w.detach().transpose(0, 1).reshape(w.shape[1], -1).double()
    scale = cols.norm(dim=1).max()
    dev = (cols - cols.mean(0, keepdim=True)).norm(dim=1).max()
    return 0.0 if float(scale) == 0.0 else float(dev / scale)
