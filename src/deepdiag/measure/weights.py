"""What a layer's weights say: the initialisation they look like, and whether its units are identical
(symmetric). Read from the module on the host when the statistics are built."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..init import fans, scheme_std
from .sites import Site, weight_matrix

INIT_TOLERANCE = 0.15  # a measured weight std within ±15 % of a scheme's std is read as that scheme
RECOGNISED = ("he", "lecun", "xavier", "default")


def weight_of(site: Site) -> Tensor | None:
    """The site's weight as (out, in, *kernel) (transformers' Conv1D transposed), or None."""
    return weight_matrix(site.module)


CANCELLATION = 10  # mean² / variance above which the one-pass variance is redone in two passes


def weight_summary(w: Tensor) -> tuple[float, float]:
    """(std, ‖w‖_F) of a weight over all its entries, from two reductions and one host sync.

    With N entries, m = Σw/N and Var = (‖w‖² − N·m²)/(N − 1): a norm and a sum, each one read of `w`
    in place, in its own dtype (float32 for half precision, which is copied; ``Tensor.std`` took 9× as
    long on a 512×512×3×3 weight). float32 accumulation errs by δ ≲ 10⁻⁴ relative (4·10⁻⁵ measured on
    2.4M entries), which moves Var by ~δ·(Var + m²), a few 10⁻³ at most while m² ≤ ``CANCELLATION``·Var:
    far inside the ±15 % that init recognition allows. When the mean dominates (m² > 10·Var: never so
    at initialisation, where m² ≈ Var/N), a min/max check first gives a constant weight std exactly 0,
    then Var is taken in two passes, d = w − m and (‖d‖² − (Σd)²/N)/(N − 1) (the second term corrects
    the rounding of m to first order). float32 is enough: weights are O(1/√fan_in), far from float32's
    underflow (gradients, which reach 10⁻³⁰, use ``safe_norm``)."""
    wd = w.detach()
    x = wd if wd.dtype in (torch.float32, torch.float64) else wd.float()
    n = x.numel()
    if n < 2:
        return 0.0, float(x.abs().sum())
    norm, total = torch.stack([torch.linalg.vector_norm(x), x.sum()]).tolist()  # host sync
    if norm == 0.0:
        return 0.0, 0.0
    mean = total / n
    var = (norm * norm - n * mean * mean) / (n - 1)
    if not mean * mean <= CANCELLATION * var:  # the mean dominates (a constant weight too), or NaN
        lo, hi = torch.aminmax(x)
        if lo == hi:
            return 0.0, norm
        d = x - mean
        d_norm, d_sum = torch.stack([torch.linalg.vector_norm(d), d.sum()]).tolist()  # host sync
        var = (d_norm * d_norm - d_sum * d_sum / n) / (n - 1)
    return math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.nan, norm


def recognise_init(w: Tensor, std: float | None = None) -> tuple[str, float]:
    """(scheme, its std) whose std is within ±15 % of the measured std of `w` (or `std`, when the caller
    has it), else ("unknown", nan).

    Compared: he (√(2/fan_in)), lecun (√(1/fan_in)), xavier (√(2/(fan_in+fan_out))) and PyTorch's
    default (kaiming_uniform with a=√5: std = 1/√(3·fan_in)); "zeros" for an all-constant weight. Names of
    schemes that coincide (xavier = lecun on square layers) are joined by "/".
    """
    fan_in, fan_out = fans(w)
    if std is None:
        std = weight_summary(w)[0]
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


PROJECTIONS = 4  # random directions the symmetry measures project on


def _spread(p: Tensor) -> float:
    """max_i ‖p_i − p̄‖ / max_i ‖p_i‖ over the rows of `p` (float64: `p` is small)."""
    p = p.double()
    scale = p.norm(dim=1).max()
    dev = (p - p.mean(0, keepdim=True)).norm(dim=1).max()
    return 0.0 if float(scale) == 0.0 else float(dev / scale)


def _directions(n: int, like: Tensor) -> Tensor:
    g = torch.Generator(device=like.device).manual_seed(0)
    return torch.randn(n, PROJECTIONS, generator=g, device=like.device, dtype=torch.float32)


def _project(rows: Tensor, r: Tensor) -> Tensor:
    """rows @ r, (units, k) @ (k, 4), computed as (rᵀ rowsᵀ)ᵀ: the same products, but a GEMM with the
    long dimension inside runs 2.5-6× faster on CPU than one with a 4-column output (VGG-11's
    4096×25088 layer: 48 ms instead of 122 ms), and still maps identical rows to identical rows."""
    return (r.t() @ rows.t()).t()


def row_symmetry(w: Tensor, b: Tensor | None) -> float:
    """max_i ‖r_i − r̄‖ / max_i ‖r_i‖ over the rows r_i = (W_i, b_i) of a layer's incoming weights
    (one row per unit; flattened kernels for convolutions), measured on a random projection: 0 when all
    units have identical incoming weights (zero or constant init); ~1 for random init. An all-zero
    layer gives 0.

    Why a projection: W·R with R a seeded (fan_in × 4) Gaussian maps identical rows to identical rows
    (up to float32 rounding, ~10⁻⁶ relative, far below the rule's 10⁻⁴) and distinct rows to distinct
    ones with probability 1: E‖(r_i − r̄)R‖² = 4‖r_i − r̄‖², and the maximum over many rows of a χ²₄
    variable is not small, so a random layer still reads ~1. It reads W once in float32, where a
    float64 copy of VGG's 4096×25088 layer doubled checkup's peak memory and took longer than the
    layer's own forward pass."""
    rows = w.detach().reshape(w.shape[0], -1)
    p = _project(rows.float(), _directions(rows.shape[1], rows))  # (units, 4)
    if b is not None:
        p = torch.cat([p, b.detach().reshape(-1, 1).float()], dim=1)
    return _spread(p)


def column_symmetry(w: Tensor) -> float:
    """The same measure over the *outgoing* weights of the previous layer's units: columns of W
    (input channels for convolutions), projected on 4 random directions. 0 when every unit feeding
    this layer is wired identically."""
    wd = w.detach().float()
    if wd.dim() == 2:
        p = (_directions(wd.shape[0], wd).t() @ wd).t()  # (in, 4), no transposed copy of W
    else:
        cols = wd.transpose(0, 1).reshape(wd.shape[1], -1)  # conv kernels are small
        p = _project(cols, _directions(cols.shape[1], cols))
    return _spread(p)


def frozen_modules(model: nn.Module) -> tuple[tuple[str, ...], float | None]:
    """(names of the modules whose own ≥ 2-D parameters all have ``requires_grad=False``, their share of
    all ≥ 2-D parameter entries; None without any). Read from the flags, not from the values: a frozen
    layer is a structural fact (no host sync)."""
    frozen, n_frozen, n_all = [], 0, 0
    for name, m in model.named_modules():
        ps = [p for p in m.parameters(recurse=False) if p.dim() >= 2]
        if not ps:
            continue
        size = sum(p.numel() for p in ps)
        n_all += size
        if not any(p.requires_grad for p in ps):
            frozen.append(name or type(m).__name__)
            n_frozen += size
    return tuple(frozen), (n_frozen / n_all if n_all else None)
