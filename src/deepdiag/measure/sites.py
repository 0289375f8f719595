"""Layer discovery: the *sites* deepdiag measures, their kinds and activation families, and the device
reductions the hooks compute (no host sync).

A *site* is one place in the forward pass that deepdiag measures, found generically on any
``nn.Module``:

* ``weight`` sites: modules with a weight of two or more dimensions (Linear, Bilinear, Conv1d/2d/3d and
  their transposes). Measured: the scale of the output (pre-activation) and of the input, and the
  back-propagated signal ∂L/∂output (a tensor hook on the output) as its per-sample norm
  ‖∂L/∂out‖_F/√B: per-sample rather than per-element, because a convolution's weight gradient sums
  over positions (a global average pool divides each position's gradient by H·W, which a per-element
  measure would read as a 64× "vanishing" on 8×8 inputs).
* ``norm`` sites: BatchNorm/LayerNorm/GroupNorm. Measured: the scale of the output.
* ``activation`` sites: activation modules (ReLU, Tanh, Sigmoid, ...). Measured per unit: how often a
  ReLU unit fires, how often a tanh/sigmoid unit sits at its asymptote (read from the output, which is
  equivalent and survives ``inplace=True``: |tanh z| > tanh 3 ⟺ |z| > 3).
* activations applied functionally (``F.relu``, ``torch.tanh`` inside a custom ``forward``) have no
  module: they are read from the *input of the next weight layer* when that input is not the output of
  an activation module, the raw output of a weight layer, or the model's own input. Their family is
  inferred once, on the first forward pass: x = relu/tanh/sigmoid(z) of the previous weight layer's
  output z, or, with pooling/reshaping in between, ≥ 0 with exact zeros → relu. Their statistics
  belong to the previous weight layer in forward order.

Units are output features for Linear layers (last dimension) and channels for convolutions (dimension 1).
A module called several times in one forward pass (a shared ``self.relu``) gives one site per call,
named ``name#k`` for the k-th call after the first.

The hooks only compute reductions on the device (no ``.item()``): a ``Recorder`` holds, per site, the
tensors of the latest forward/backward pass; ``checkup`` reads them once, ``Monitor`` accumulates them.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..init import NORM_LAYERS
WEIGHT_LAYERS = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
CONV_LAYERS = (nn.modules.conv._ConvNd,)
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
RECURRENT = (nn.RNN, nn.LSTM, nn.GRU)
ATTENTION = (nn.MultiheadAttention,)
PATH_KINDS = ("weight", "norm", "embedding", "recurrent", "attention")  # their outputs may lie on the main path
ACTIVATION_FAMILIES = {
    nn.ReLU: "relu", nn.ReLU6: "relu",
    nn.Tanh: "tanh", nn.Hardtanh: "tanh", nn.Softsign: "tanh",
    nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "sigmoid",
    nn.LeakyReLU: "leaky_relu", nn.PReLU: "leaky_relu", nn.RReLU: "leaky_relu",
    nn.ELU: "smooth", nn.SELU: "smooth", nn.CELU: "smooth", nn.GELU: "smooth", nn.SiLU: "smooth",
    nn.Mish: "smooth", nn.Softplus: "smooth", nn.Identity: None,
}
# Saturation: tanh'(z) = 1 − tanh² z < 0.01 for |z| > 3 (tanh 3 = 0.99505);
# σ'(z) = σ(1 − σ) < 0.0066 (< 3 % of its peak 1/4) for |z| > 5 (σ(5) = 0.99331).
TANH_Z, SIGMOID_Z = 3.0, 5.0
TANH_SAT = math.tanh(TANH_Z)
SIGMOID_LO, SIGMOID_HI = 1.0 / (1.0 + math.exp(SIGMOID_Z)), 1.0 / (1.0 + math.exp(-SIGMOID_Z))


@dataclass
class Site:
    """One measured place of the forward pass (see the module docstring)."""

    index: int
    name: str
    module: nn.Module
    kind: str  # "weight" | "norm" | "activation"
    type: str
    family: str | None = None  # activation sites: the family of the module; weight sites: of their input
    unit_dim: int = -1  # dimension of the units in the measured tensor (output, or input when inferred)
    units: int = 0
    producer: str | None = None  # weight sites with an inferred input family: the layer whose units they are
    fan_in: int | None = None
    fan_out: int | None = None
    is_model_input: bool = False  # weight site fed by the model's input directly
    path: str | None = None  # "in" / "out": this site's input / output lies on the main path (measure.paths)
    extra: dict = field(default_factory=dict)


def is_transposed_linear(m: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): y = x·W + b with W of shape (in, out), a Linear with W transposed."""
    if type(m).__name__ != "Conv1D" or not hasattr(m, "nf"):
        return False
    w = read_weight(m)
    return isinstance(w, Tensor) and w.dim() == 2


def weight_matrix(m: nn.Module) -> Tensor | None:
    """The module's weight as (out, in, *kernel): transposed for ``Conv1D``; None without a ≥ 2-D weight."""
    w = read_weight(m)
    if not isinstance(w, Tensor) or w.dim() < 2:
        return None
    return w.t() if is_transposed_linear(m) else w


def read_weight(m: nn.Module) -> Tensor | None:
    """``m.weight`` without side effects. A parametrized weight (``torch.nn.utils.parametrize``:
    ``parametrizations.weight_norm``, ``spectral_norm``, ``orthogonal``, ...) is computed at every read,
    and a spectral norm in training mode advances its power iteration when computed: reading it would
    change the run. It is computed here with its parametrizations in eval mode and autograd off."""
    if not parametrize.is_parametrized(m, "weight"):
        w = getattr(m, "weight", None)
        return w if isinstance(w, Tensor) else None
    modes = [(p, p.training) for p in m.parametrizations["weight"].modules()]
    try:
        for p, _ in modes:
            p.training = False
        with torch.no_grad():
            return m.weight
    finally:
        for p, training in modes:
            p.training = training


def weight_slots(m: nn.Module) -> list[tuple[dict, str]]:
    """Where the trainable tensors a layer's weight is made of live, as (dict, key) pairs: the weight
    itself (``m._parameters["weight"]``), or for a weight computed from others their originals — a
    parametrization's ``original`` / ``original0``, ``original1``, ... (weight_norm: g and v), the old
    hook-based ``weight_norm``'s ``weight_g``/``weight_v`` and ``spectral_norm``'s ``weight_orig``. Their
    gradients are the layer's (a computed weight is not a leaf: its ``.grad`` is never filled); reading
    them never computes the weight."""
    if parametrize.is_parametrized(m, "weight"):
        plist = m.parametrizations["weight"]
        return [(plist._parameters, k) for k, v in plist._parameters.items() if v is not None]
    own = m._parameters
    if own.get("weight") is not None:
        return [(own, "weight")]
    for keys in (("weight_g", "weight_v"), ("weight_orig",)):
        if all(own.get(k) is not None for k in keys):
            return [(own, k) for k in keys]
    return []


def weight_leaves(m: nn.Module) -> list[Tensor]:
    """The tensors of ``weight_slots``."""
    return [d[k] for d, k in weight_slots(m)]


def module_kind(m: nn.Module) -> str | None:
    """weight (Linear, Bilinear, Conv, transformers' Conv1D), embedding, recurrent (RNN/LSTM/GRU),
    attention (MultiheadAttention), norm, activation, or None (not a site)."""
    if isinstance(m, WEIGHT_LAYERS) and (w := read_weight(m)) is not None and w.dim() >= 2:
        return "weight"
    if is_transposed_linear(m):
        return "weight"
    if isinstance(m, EMBEDDINGS):
        return "embedding"
    if isinstance(m, RECURRENT):
        return "recurrent"
    if isinstance(m, ATTENTION):
        return "attention"
    if isinstance(m, NORM_LAYERS) or is_rms_norm(m):
        return "norm"
    if type(m) in ACTIVATION_FAMILIES and ACTIVATION_FAMILIES[type(m)] is not None:
        return "activation"
    return None


def is_rms_norm(m: nn.Module) -> bool:
    """An RMS normalisation, y = g ⊙ x / RMS(x) over the last dimension: ``nn.RMSNorm`` or a library's own
    (transformers' ``LlamaRMSNorm``, ``Qwen2RMSNorm``, ``MistralRMSNorm``, ``T5LayerNorm``, ...: a leaf
    module named so, with a 1-D weight). Measured as a normalisation layer (a depth position of the
    pre-norm transformers that use it), never reset by the fixes (some libraries store g − 1)."""
    if isinstance(m, getattr(nn, "RMSNorm", ())):
        return True
    name = type(m).__name__
    w = getattr(m, "weight", None)
    return ((name.endswith("RMSNorm") or name == "T5LayerNorm") and isinstance(w, Tensor) and w.dim() == 1
            and next(m.children(), None) is None)


def is_activation(m: nn.Module) -> bool:
    """A hidden-layer activation module: torch's (ReLU, Tanh, GELU, ... and their subclasses; not
    nn.Identity) or transformers' (GELUActivation, NewGELUActivation, ...; not its identity
    ``LinearActivation``)."""
    if isinstance(m, tuple(t for t, fam in ACTIVATION_FAMILIES.items() if fam is not None)):
        return True
    cls = type(m)
    return cls.__module__.startswith("transformers.activations") and cls.__name__ != "LinearActivation"


def matrix_params(m: nn.Module, kind: str) -> list[Tensor]:
    """The ≥ 2-D parameters a site's weight statistics cover: the weight of a weight/embedding site (read
    by ``read_weight``), every ≥ 2-D parameter of a recurrent or attention module (its gates; in_proj
    and out_proj)."""
    if kind in ("weight", "embedding"):
        w = read_weight(m)
        return [w] if isinstance(w, Tensor) and w.dim() >= 2 else []
    if kind in ("recurrent", "attention"):
        return [p for p in m.parameters() if p.dim() >= 2]
    return []


def grad_params(m: nn.Module, kind: str) -> list[Tensor]:
    """The leaf tensors whose gradients a site's ‖∂L/∂W‖ covers: ``weight_leaves`` of a weight/embedding
    site (a parametrized weight's originals), ``matrix_params`` of a recurrent or attention module."""
    return weight_leaves(m) if kind in ("weight", "embedding") else matrix_params(m, kind)


def first_tensor(obj) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = first_tensor(o)
            if t is not None:
                return t
    if isinstance(obj, dict):
        for o in obj.values():
            t = first_tensor(o)
            if t is not None:
                return t
    return None


def tensors(value) -> list[Tensor]:
    """Every tensor in `value` (a tensor, or a tuple/list/dict of them, nested), in order."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors(v)]
    return []


def ptr(t: Tensor | None) -> int | None:
    return t.data_ptr() if isinstance(t, Tensor) else None


def reduce_dims(t: Tensor, unit_dim: int) -> tuple[int, ...]:
    """The dimensions of `t` other than its unit dimension `unit_dim` (the ones a per-unit statistic
    reduces over)."""
    return dims_except(t.dim(), unit_dim)


@functools.lru_cache(maxsize=64)
def dims_except(ndim: int, unit_dim: int) -> tuple[int, ...]:
    """``reduce_dims`` by the number of dimensions: the same tuple, kept (the Monitor asks at every step)."""
    d = unit_dim % ndim
    return tuple(i for i in range(ndim) if i != d)


def infer_family(x: Tensor, z: Tensor | None = None) -> str | None:
    """The activation family of a functional activation, read once at discovery (host syncs).

    When the previous weight layer's output `z` has x's shape, the family is the function f with
    x = f(z) (relu, tanh or sigmoid), or None (no known activation, e.g. a residual sum). Otherwise
    (pooling or reshaping in between) only a ReLU is recognised, by its values: >= 0 with exact zeros.
    """
    x = x.detach()
    if z is not None and z.shape == x.shape:
        z = z.detach()
        for fam, f in (("relu", torch.relu), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid)):
            if torch.allclose(f(z), x, rtol=1e-4, atol=1e-6):
                return fam
        return None
    if float(x.min()) >= 0.0 and bool((x == 0).any()):
        return "relu"
    return None


def unit_counts(v: Tensor, family: str, unit_dim: int) -> Tensor:
    """Per unit, the number of positions (samples × spatial) where a ReLU unit fires (v > 0) or a
    tanh/sigmoid unit is saturated, read from post-activation values v. Shape (units,), int64."""
    dims = reduce_dims(v, unit_dim)
    if family == "relu":
        hit = v > 0
    elif family == "tanh":
        hit = v.abs() > TANH_SAT
    else:
        hit = (v < SIGMOID_LO) | (v > SIGMOID_HI)
    return hit.sum(dims) if dims else hit.long()


def safe_norm(t: Tensor) -> Tensor:
    """‖t‖₂ that survives float32 underflow: float32 first (fast, no copy); when that is below 10⁻¹⁵ —
    entries below ~10⁻¹⁹ square to float32 denormals or 0 — again with float64 accumulation, so values
    of ~1e-30 are still measured. One host sync (checkup only)."""
    t = t.detach()
    n = torch.linalg.vector_norm(t, dtype=torch.float32 if t.dtype != torch.float64 else None)
    if float(n) < 1e-15:  # host sync
        n = torch.linalg.vector_norm(t, dtype=torch.float64)
    return n.double()
