"""Model surgery: edit the structure of any ``nn.Module`` in place (activations, normalisation layers,
residual connections, the output layer, frozen parameters, the initial weights).

Works on what is *reachable as a module*: plain ``nn.Sequential`` MLPs, CNNs, RNN/LSTM/GRU models,
``nn.TransformerEncoder`` and transformers' BERT / GPT-2. Every function returns what it did and, in a
list of sentences, what it could not reach (an activation called functionally, ``F.relu`` in a
``forward``; a layer used by its parent through its weight, as ``nn.MultiheadAttention`` uses
``out_proj``) instead of guessing.

*Order* of the layers: with `inputs` (a tensor, a tuple of positional arguments or a dict of keyword
arguments the model takes), the order in which the leaf modules finish their forward pass on them;
without, the order of registration (which is the forward order of an ``nn.Sequential``). The *output
layer* is the last weight layer (Linear, ConvNd, transformers' ``Conv1D``) in that order.

>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> swap_activations(model, "tanh")
(1, [])
"""
from __future__ import annotations

import inspect
import math
import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._validate import check_choice
from .computed_weights import (
    computed_by,
    deepcopy_model,
    is_computed,
    plain_weight,
    scale_is_fixed,
    set_weight,
)
from .init import NORM_LAYERS, he_, lecun_, orthogonal_, scheme_std, xavier_
from .measure.io import call_model
from .measure.sites import (
    ATTENTION,
    EMBEDDINGS,
    RECURRENT,
    is_activation,
    is_transposed_linear,
    module_kind,
    read_weight,
    weight_matrix,
)
from .models import ACTIVATIONS as BASE_ACTIVATIONS

ACTIVATIONS = {**{k: v for k, v in BASE_ACTIVATIONS.items() if k != "linear"},
               "selu": nn.SELU, "elu": nn.ELU, "silu": nn.SiLU}
NORM_KINDS = ("batch", "layer")
INIT_SCHEMES = ("he", "xavier", "orthogonal", "lecun", "lsuv", "default")
OUTPUT_ACTIVATIONS = (nn.Softmax, nn.LogSoftmax, nn.Softmax2d, nn.Sigmoid, nn.ReLU, nn.Tanh)
GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}  # row blocks of weight_ih / weight_hh, one per gate
# A redraw is a no-op when every layer's median row std is within this factor of the scheme's std: He and
# LeCun differ by √2 (41 %), so 20 % (about half of it on a log scale, √√2 = 1.19) separates two schemes
# while the sampling error of a median row std (≈ 1/√(2·fan_in·rows)) stays far below it.
SAME_SCALE = 0.2
# LSUV (Mishkin & Matas 2016, Algorithm 1): stop when |Var - 1| < 0.1, at most 10 rescalings per layer.
LSUV_TOL, LSUV_ITERS = 0.1, 10
FUNCTIONAL = re.compile(r"\b(?:F|functional|torch)\.(relu|relu_|leaky_relu|gelu|tanh|sigmoid|selu|elu|silu|"
                        r"mish|softplus|softmax|log_softmax)\s*\(|\.(relu|tanh|sigmoid|softmax)\(")


# ---- what a module is ---------------------------------------------------------------------------------

def is_weight_layer(m: nn.Module) -> bool:
    """Linear, Bilinear, ConvNd (and transposed) or transformers' Conv1D."""
    return module_kind(m) == "weight"


def out_units(m: nn.Module) -> int:
    """Output features of a Linear/Conv1D, output channels of a convolution."""
    return weight_matrix(m).shape[0]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the submodule called `name`."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, child = _parent(model, name)
    setattr(parent, child, new)


def _like(new: nn.Module, old: nn.Module) -> nn.Module:
    """`new` on the device and in the floating dtype of `old`'s parameters (if it has any)."""
    p = next(old.parameters(), None)
    return new if p is None else new.to(device=p.device, dtype=p.dtype)


def _listed(name: str, m: nn.Module) -> bool:
    """The modules an order lists: leaves, attention (it uses its out_proj child functionally) and layers
    whose only child holds their weight's parametrizations (``torch.nn.utils.parametrize``), but not the
    parametrizations themselves (they run when the weight is computed, not as layers)."""
    if "parametrizations" in name.split("."):
        return False
    return not any(k != "parametrizations" for k, _ in m.named_children()) or isinstance(m, ATTENTION)


def order(model: nn.Module, inputs=None) -> list[str]:
    """Names of the leaf modules (and attention modules) in forward order: the order in which they finish
    on `inputs`, modules never called left out; without `inputs`, registration order.

    The pass runs in eval mode (no dropout, no running-statistics update) with autograd on: without
    autograd ``nn.TransformerEncoderLayer`` takes a fused fast path that calls none of its submodules."""
    return _traced(model, inputs)[0]


def _traced(model: nn.Module, inputs=None, watched: dict[str, nn.Module] | None = None
            ) -> tuple[list[str], dict[str, Tensor]]:
    """(``order(model, inputs)``, the first tensor input of each `watched` module in that same pass): one
    forward pass serves every question ``swap_activations`` asks. Without `inputs`: registration order and
    no inputs."""
    if inputs is None:
        return [n for n, m in model.named_modules() if n and _listed(n, m)], {}
    seen: dict[str, None] = {}
    taken: dict[str, Tensor] = {}

    def take(n: str, args: tuple) -> None:  # returns None: the module's output stays as it is
        if args and isinstance(args[0], Tensor):
            taken.setdefault(n, args[0])

    handles = [m.register_forward_hook(lambda _m, args, _out, n=n: take(n, args))
               for n, m in (watched or {}).items()]
    handles += [m.register_forward_hook(lambda *_, n=n: seen.setdefault(n) and None)
                for n, m in model.named_modules() if n and _listed(n, m)]
    was_training = model.training
    try:
        with torch.enable_grad():
            model.eval()
            call_model(model, inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return list(seen), taken


def output_layer(model: nn.Module, inputs=None, names: list[str] | None = None) -> str | None:
    """Name of the output layer: the last weight layer in `order` (None without any)."""
    names = order(model, inputs) if names is None else names
    layers = [n for n in names if is_weight_layer(model.get_submodule(n))]
    return layers[-1] if layers else None


def output_activation(model: nn.Module, inputs=None, names: list[str] | None = None) -> str | None:
    """Name of the activation module (Softmax, LogSoftmax, Sigmoid, ReLU, Tanh, any activation) that
    directly follows the output layer, with no weight layer between; None when there is none.

    Without `inputs`, registration order stands in for forward order, so the module must also sit in the
    output layer's parent or an ancestor of it (a sibling module registered later, ``self.softmax``), and
    the activation attribute of a ``nn.TransformerEncoderLayer``-like module (``activation_relu_or_gelu``)
    is never it (it runs inside the layer). `names`: ``order(model, inputs)`` when the caller has it."""
    names = order(model, inputs) if names is None else names
    out = output_layer(model, inputs, names)
    if out is None:
        return None
    for n in names[names.index(out) + 1:]:
        m = model.get_submodule(n)
        if is_weight_layer(m) or isinstance(m, (*ATTENTION, *RECURRENT, *EMBEDDINGS)):
            return None
        if not (isinstance(m, OUTPUT_ACTIVATIONS) or is_activation(m)):
            continue
        parent_name = n.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        if hasattr(parent, "activation_relu_or_gelu"):
            continue
        if inputs is None and not (out.startswith(parent_name + ".") or not parent_name):
            return None
        return n
    return None


def _functional_calls(model: nn.Module) -> list[str]:
    """For each module class of the model's own (defined outside torch), the activations its forward
    calls as functions (F.relu, torch.tanh, x.sigmoid(), ...): those have no module to replace."""
    out, seen = [], set()
    for name, m in model.named_modules():
        cls = type(m)
        if cls.__module__.startswith("torch.") or cls in seen:
            continue
        seen.add(cls)
        try:
            source = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            continue
        calls = sorted({a or b for a, b in FUNCTIONAL.findall(source)})
        if calls:
            out.append(f"{name or '(model)'} ({cls.__name__}.forward calls {', '.join(calls)} as a function)")
    return out


# ---- activations ---------------------------------------------------------------------------------------

def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of ``ACTIVATIONS``)."""
    return ACTIVATIONS[check_choice("activation", name, ACTIVATIONS)]()


AFFINE_TOL = 1e-4  # |g(2x) − 2g(x) + g(0)| below this share of the values' scale: g is affine (float32 round-off ~1e-7)


def custom_activations(model: nn.Module, inputs) -> list[str]:
    """Names of the model's own activation modules, found by measurement: leaf modules defined outside
    torch and transformers, with no parameters or buffers, that run before the output layer on `inputs`
    and act as a nonlinear elementwise map g. Elementwise: changing one input element changes no other
    output element. Nonlinear: g(2x) − 2g(x) + g(0) ≠ 0 (zero for every affine g), or non-finite (an
    exp that overflows). A custom ``Exp`` or ``Swish`` module is one; a reshape, a scaling or a custom
    dropout (the identity in eval mode) is not. Input entries that are not finite (an exp upstream
    overflowed) are replaced by unit-scale normal draws for the probe: a parameter-free elementwise map
    is the same function wherever it is probed. Empty without `inputs`."""
    own = _own_modules(model) if inputs is not None else {}
    if not own:
        return []
    return _measured_custom(model, own, *_traced(model, inputs, own))


def _own_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The candidates of ``custom_activations``: leaf modules without parameters or buffers, defined
    outside torch and transformers, not already known activations."""
    return {n: m for n, m in model.named_modules()
            if n and not any(True for _ in m.children()) and not any(True for _ in m.parameters(recurse=False))
            and not any(True for _ in m.buffers(recurse=False)) and not is_activation(m)
            and not type(m).__module__.startswith(("torch.", "transformers."))}


def _measured_custom(model: nn.Module, own: dict[str, nn.Module], names: list[str],
                     taken: dict[str, Tensor]) -> list[str]:
    """Of the `own` modules that ran before the output layer (forward order `names`, first inputs
    `taken`), those that act as a nonlinear elementwise map."""
    out = output_layer(model, None, names)
    last = names.index(out) if out in names else len(names)
    return [n for n in names[:last] if n in taken and _elementwise_nonlinear(own[n], taken[n].detach())]


def _elementwise_nonlinear(m: nn.Module, x: Tensor) -> bool:
    if not x.is_floating_point() or x.numel() < 2:
        return False
    x = x[:8]  # a few samples are enough to see the map
    bad = ~torch.isfinite(x)
    if bad.any():  # overflow upstream (an exp feeding this one): probe those entries at unit scale instead
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device, x.dtype)
        x = torch.where(bad, noise, x)
    with torch.no_grad():
        y = m(x)
        if not isinstance(y, Tensor) or y.shape != x.shape:
            return False
        bumped = x.clone()
        bumped.view(-1)[0] += 0.5
        changed = (m(bumped) != y).view(-1)
        if changed[1:].any():
            return False
        second = m(2 * x) - 2 * y + m(torch.zeros_like(x))
    if not torch.isfinite(second).all():
        return True
    scale = y.abs().mean() + x.abs().mean()
    return bool(second.abs().max() > AFFINE_TOL * scale)


def swap_activations(model: nn.Module, name: str, inputs=None) -> tuple[int, list[str]]:
    """Replace every activation module by a fresh `name` activation, except the one right after the output
    layer (``output_activation``: replacing a softmax is not this edit's job); return (number replaced,
    what could not be reached).

    Covered: torch.nn activation modules, transformers' activation modules (GELUActivation, ...) and the
    ``activation`` of ``nn.TransformerEncoderLayer``/``DecoderLayer`` (a function by default; it becomes the
    module and ``activation_relu_or_gelu = 0``, so the eval-mode fused path, which would apply the built-in
    relu/gelu, is not taken), and, given `inputs`, the model's own activation modules (``custom_activations``:
    measured nonlinear elementwise maps, e.g. a custom ``Exp``). Modules already of the target type stay.
    Unreached: activations called as functions in a forward, and the gate nonlinearities of RNN/LSTM/GRU
    (inside the fused kernel).

    A model with no activation at all (neither module, nor its own measured one, nor a transformer layer's
    function) was built linear — ``activation=nn.Identity`` or "linear" in a builder: its ``identity_slots``
    (the nn.Identity modules between two weight layers) get the activation instead. In a model that has
    activations an nn.Identity is left alone: there it may be a deliberate linear bottleneck or an unused
    option."""
    cls = type(make_activation(name))
    own = _own_modules(model) if inputs is not None else {}
    names, taken = _traced(model, inputs, own)  # one forward pass for the three questions below
    keep = output_activation(model, inputs, names)
    custom = set(_measured_custom(model, own, names, taken))
    swapped, unreached = 0, []
    linear = not custom and not any(is_activation(m) or (hasattr(m, "activation_relu_or_gelu")
                                          and not isinstance(getattr(m, "activation", None), nn.Module))
                     for m in model.modules())
    for n in identity_slots(model, inputs, names) if linear else []:
        _replace(model, n, make_activation(name))
        parent, _ = _parent(model, n)
        if hasattr(parent, "activation_relu_or_gelu"):
            parent.activation_relu_or_gelu = 0
        swapped += 1
    for n, m in list(model.named_modules()):
        if isinstance(m, RECURRENT):
            unreached.append(f"{n} ({type(m).__name__}): its gate nonlinearities are fixed inside the module")
        if hasattr(m, "activation_relu_or_gelu") and not isinstance(getattr(m, "activation", None), nn.Module):
            m.activation = make_activation(name)  # a function until now: Module.__setattr__ registers it
            m.activation_relu_or_gelu = 0
            swapped += 1
            continue
        if not n or n == keep or not (is_activation(m) or n in custom) or type(m) is cls:
            continue
        _replace(model, n, make_activation(name))
        parent, _ = _parent(model, n)
        if hasattr(parent, "activation_relu_or_gelu"):
            parent.activation_relu_or_gelu = 0
        swapped += 1
    return swapped, unreached + _functional_calls(model)


def identity_slots(model: nn.Module, inputs=None, names: list[str] | None = None) -> list[str]:
    """Names of the nn.Identity modules that `order` places after one weight layer and before another:
    the places of a hidden activation. `names`: ``order(model, inputs)`` when the caller has it."""
    names = order(model, inputs) if names is None else names
    weights = [i for i, n in enumerate(names) if is_weight_layer(model.get_submodule(n))]
    if len(weights) < 2:
        return []
    return [n for i, n in enumerate(names[weights[0] + 1:weights[-1]], weights[0] + 1)
            if type(model.get_submodule(n)) is nn.Identity]


def drop_output_activation(model: nn.Module, inputs=None) -> tuple[list[str], list[str]]:
    """Replace the activation module after the output layer (``output_activation``) by ``nn.Identity``, so
    the model returns raw logits; return ([its name] or [], unreached: functional calls that may apply a
    softmax/sigmoid in a forward)."""
    n = output_activation(model, inputs)
    if n is None:
        return [], _functional_calls(model)
    _replace(model, n, nn.Identity())
    return [n], []


# ---- normalisation and residual connections --------------------------------------------------------------

class FeatureBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the last dimension: an input (batch, ..., C) is normalised per feature C over all
    other dimensions (a Linear's output with positions, (batch, T, C)); (batch, C) exactly as BatchNorm1d."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() <= 2:
            return super().forward(x)
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)  # (batch·..., C) and back


def make_norm(kind: str, layer: nn.Module) -> nn.Module:
    """The normalisation for `layer`'s output: batch → BatchNorm{1,2,3}d (a convolution) or
    FeatureBatchNorm (a Linear/Conv1D); layer → GroupNorm(1, C) (a convolution) or LayerNorm(C)."""
    kind = check_choice("norm", kind, NORM_KINDS)
    c = out_units(layer)
    if isinstance(layer, nn.modules.conv._ConvNd):
        dims = weight_matrix(layer).dim() - 2
        if kind == "layer":
            return nn.GroupNorm(1, c)
        return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](c)
    return FeatureBatchNorm(c) if kind == "batch" else nn.LayerNorm(c)


def _set_children(seq: nn.Sequential, items: list[tuple[str, nn.Module]]) -> None:
    """Re-fill an nn.Sequential in place (it may be the model itself, which no parent can replace)."""
    seq._modules.clear()
    seq._modules.update(OrderedDict(items))


def _called_functionally(model: nn.Module, name: str) -> bool:
    """A layer whose parent uses its weight rather than calling it (MultiheadAttention's out_proj)."""
    parent, _ = _parent(model, name)
    return isinstance(parent, ATTENTION)


def insert_norms(model: nn.Module, kind: str, inputs=None) -> tuple[list[str], list[str]]:
    """After every hidden weight layer (every weight layer but the output layer), insert a normalisation
    of its output channels (``make_norm``); return (names of the inserted layers, unreached).

    In an nn.Sequential the norm becomes the next entry, ``<layer>_norm``; elsewhere the layer is replaced
    by ``nn.Sequential(layer=..., norm=...)`` at its name. A layer already followed by a normalisation
    layer (in `order`) is left, as is one its parent uses through its weight (listed as unreached) and,
    with `inputs`, one never called."""
    kind = check_choice("norm", kind, NORM_KINDS)
    names = order(model, inputs)
    out = output_layer(model, inputs, names)
    inserted, unreached = [], []
    layers = [n for n in names if n != out and is_weight_layer(model.get_submodule(n))]
    registered = {n for n, m in model.named_modules() if is_weight_layer(m)}
    if inputs is not None:
        unreached += [f"{n}: not called on the inputs" for n in sorted(registered - set(names))
                      if n != out and not _called_functionally(model, n)]
    layers += [n for n in sorted(registered - set(layers)) if n != out and _called_functionally(model, n)]
    for n in layers:
        if _called_functionally(model, n):
            unreached.append(f"{n}: its parent uses the weight directly, there is no output to normalise")
            continue
        i = names.index(n)
        if i + 1 < len(names) and isinstance(model.get_submodule(names[i + 1]), NORM_LAYERS):
            continue
        layer = model.get_submodule(n)
        norm = _like(make_norm(kind, layer), layer)
        parent, child = _parent(model, n)
        if isinstance(parent, nn.Sequential):
            items = []
            for k, v in parent._modules.items():
                items += [(k, v), (f"{k}_norm", norm)] if k == child else [(k, v)]
            _set_children(parent, items)
            inserted.append(f"{n}_norm")
        else:
            setattr(parent, child, nn.Sequential(OrderedDict([("layer", layer), ("norm", norm)])))
            inserted.append(f"{n}.norm")
    return inserted, unreached


class Residual(nn.Module):
    """x + f(x): the block's output added to its input (He et al. 2016, "Deep residual learning").

    The block must preserve the shape of its input."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def shape_preserving(m: nn.Module) -> bool:
    """A weight layer whose output has its input's shape: Linear(w, w), Conv1D(w, w), or a convolution with
    c → c channels, stride 1 and "same" padding (2·padding = dilation·(kernel − 1) on every side)."""
    if isinstance(m, nn.Linear):
        return m.in_features == m.out_features
    if is_transposed_linear(m):
        return m.weight.shape[0] == m.weight.shape[1]
    if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
        if m.in_channels != m.out_channels or any(s != 1 for s in m.stride):
            return False
        if m.padding == "same":
            return True
        return not isinstance(m.padding, str) and all(
            2 * p == d * (k - 1) for p, d, k in zip(m.padding, m.dilation, m.kernel_size))
    return False


def _elementwise(m: nn.Module) -> bool:
    return isinstance(m, (*NORM_LAYERS, nn.Dropout, nn.Identity)) or is_activation(m)


def wrap_residual(model: nn.Module, inputs=None) -> tuple[list[str], list[str]]:
    """In every nn.Sequential, wrap each shape-preserving block as ``Residual``: x + f(x), where the block is
    a shape-preserving weight layer (``shape_preserving``) with the normalisation, activation and dropout
    modules that follow it; the output layer is never wrapped. Return (names of the wrapped blocks,
    unreached: shape-preserving layers outside any nn.Sequential, whose forward decides where a skip
    would go)."""
    out = output_layer(model, inputs)
    wrapped, unreached = [], []
    sequentials = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Sequential)]
    in_sequential = set()
    for seq_name, seq in sequentials:
        prefix = f"{seq_name}." if seq_name else ""
        items, new, i = list(seq._modules.items()), [], 0
        in_sequential |= {prefix + k for k, _ in items}
        while i < len(items):
            k, m = items[i]
            if not (shape_preserving(m) and prefix + k != out):
                new.append((k, m))
                i += 1
                continue
            j = i + 1
            while j < len(items) and _elementwise(items[j][1]):
                j += 1
            new.append((k, Residual(nn.Sequential(OrderedDict(items[i:j])))))
            wrapped.append(prefix + k)
            i = j
        if len(new) != len(items):
            _set_children(seq, new)
    for n, m in model.named_modules():
        if n not in in_sequential and n != out and shape_preserving(m) and not _called_functionally(model, n) \
                and not any(n.startswith(w + ".") for w in wrapped):
            unreached.append(f"{n} ({type(m).__name__}): not inside an nn.Sequential; its parent's forward "
                             "decides where a skip connection would go")
    return wrapped, unreached


# ---- the output layer and frozen parameters --------------------------------------------------------------

def resize_output(model: nn.Module, n: int, inputs=None) -> tuple[list[str], list[str]]:
    """Give the output layer (the last Linear or Conv1D in `order`) `n` units: a fresh layer of the same
    type, input size and bias, with torch's default init. Return ([its name] or [] when it already has `n`,
    notes: a weight it shared with another module (tied embeddings) is no longer shared)."""
    names = [k for k in order(model, inputs)
             if isinstance(model.get_submodule(k), nn.Linear) or is_transposed_linear(model.get_submodule(k))]
    if not names:
        raise ValueError("out_features: the model has no Linear or Conv1D output layer to resize")
    name = names[-1]
    old = model.get_submodule(name)
    if out_units(old) == n:
        return [], []
    weight = read_weight(old)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, n, bias=old.bias is not None)
    else:
        new = type(old)(n, weight.shape[0])  # Conv1D(nf=out, nx=in), weight (in, out)
    _replace(model, name, _like(new, old))
    shared = [k for k, m in model.named_modules() if read_weight(m) is weight]
    notes = [f"{name}: its weight was shared with {', '.join(shared)}; the new layer has its own"] if shared else []
    if is_computed(old):
        notes.append(f"{name}: its weight was computed ({computed_by(old)}); the new layer holds a plain weight")
    return [name], notes


def unfreeze(model: nn.Module, names: list[str] | bool = True) -> list[str]:
    """requires_grad = True on the parameters of the named modules (or parameters), or on every parameter
    (`names` True); return the names of the parameters that were frozen. The root module's own
    parameters go by its class name (how deepdiag's measurements name the root). An unknown name raises
    ValueError listing the model's top-level modules."""
    params = dict(model.named_parameters())
    if names is True:
        chosen = list(params)
    else:
        modules = dict(model.named_modules())
        chosen = []
        for n in names:
            if n in params:
                chosen.append(n)
            elif n == type(model).__name__ and n not in modules:  # measure's name for the root module
                chosen += [k for k, _ in model.named_parameters(recurse=False)]
            elif n in modules:
                prefix = f"{n}." if n else ""
                chosen += [k for k in params if k.startswith(prefix)]
            else:
                top = ", ".join(k for k, _ in model.named_children())
                raise ValueError(f"unfreeze: unknown layer {n!r}; the model's layers are named like: {top}")
    thawed = [k for k in dict.fromkeys(chosen) if not params[k].requires_grad]
    for k in thawed:
        params[k].requires_grad_(True)
    return thawed


# ---- initial weights --------------------------------------------------------------------------------------

@dataclass
class Matrix:
    """One computing weight matrix: `param` of the module `layer`; `gates` row blocks initialised
    separately (an LSTM's weight_ih holds 4 gates, attention's in_proj q, k and v); `transposed`: stored
    (in, out), transformers' Conv1D. `module`: the weight layer whose weight it is, when that weight may be
    computed from other tensors (``deepdiag.computed_weights``): `param` is then the weight as the layer
    computes it, and ``set`` writes where it comes from."""

    layer: str
    name: str
    param: Tensor
    gates: int = 1
    transposed: bool = False
    module: nn.Module | None = None

    def set(self, w: Tensor) -> bool:
        """Make `w` (laid out as `param`) this matrix; False when the layer computes its weight with a
        scale of its own (``computed_weights.set_weight``)."""
        if self.module is None:
            self.param.copy_(w)
            return True
        exact = set_weight(self.module, w)
        self.param = read_weight(self.module)
        return exact

    @property
    def fixed_scale(self) -> bool:
        """The layer's weight scale is set by its parametrization (spectral norm, orthogonal)."""
        return self.module is not None and scale_is_fixed(self.module)

    def blocks(self, w: Tensor | None = None) -> list[Tensor]:
        """The (out, in, *kernel) views of each gate, of `w` (laid out as the parameter) or the parameter."""
        w = self.param if w is None else w
        w = w.t() if self.transposed else w
        rows = w.shape[0] // self.gates
        return [w[g * rows:(g + 1) * rows] for g in range(self.gates)]


def matrices(model: nn.Module) -> tuple[list[Matrix], list[Tensor]]:
    """The computing weight matrices (Linear, ConvNd, Conv1D, RNN/LSTM/GRU weight_ih/hh/hr, attention
    in-projections; not embeddings, not normalisation layers, not an output layer tied to an embedding,
    GPT-2's lm_head) and their biases."""
    mats, biases = [], []
    tied = {id(read_weight(m)) for m in model.modules() if isinstance(m, EMBEDDINGS)}
    for n, m in model.named_modules():
        if isinstance(m, (*NORM_LAYERS, *EMBEDDINGS)) or "parametrizations" in n.split("."):
            continue
        prefix = f"{n}." if n else ""
        if is_weight_layer(m) and id(read_weight(m)) in tied:
            continue
        if is_weight_layer(m):
            mats.append(Matrix(n, prefix + "weight", read_weight(m), 1, is_transposed_linear(m), m))
            biases += [m.bias] if isinstance(getattr(m, "bias", None), Tensor) else []
        elif isinstance(m, RECURRENT):
            for k, p in m.named_parameters(recurse=False):
                if k.startswith("weight_"):
                    gates = 1 if k.startswith("weight_hr") else GATES[next(c for c in GATES if isinstance(m, c))]
                    mats.append(Matrix(n, prefix + k, p, gates))
                elif k.startswith("bias"):
                    biases.append(p)
        elif isinstance(m, ATTENTION):
            for k, p in m.named_parameters(recurse=False):
                if k == "in_proj_weight":
                    mats.append(Matrix(n, prefix + k, p, 3))
                elif k.endswith("proj_weight"):
                    mats.append(Matrix(n, prefix + k, p, 1))
                elif k == "in_proj_bias":
                    biases.append(p)
    return mats, biases


def _block_fans(block: Tensor) -> tuple[int, int]:
    receptive = math.prod(block.shape[2:])
    return block.shape[1] * receptive, block.shape[0] * receptive


def scale_ratios(mats: list[Matrix], scheme: str) -> list[float]:
    """Per matrix block, its median row std (rows: output units; the whole block's std when a row holds
    fewer than 8 weights) divided by the std `scheme` gives it (``deepdiag.init.scheme_std``)."""
    ratios = []
    with torch.no_grad():
        for mat in mats:
            for b in mat.blocks():
                ratios.append(_row_std(b) / scheme_std(scheme, *_block_fans(b)))  # host sync per block
    return ratios


FILL = {"he": he_, "xavier": xavier_, "lecun": lecun_, "orthogonal": orthogonal_}


@torch.no_grad()
def _redraw(mats: list[Matrix], biases: list[Tensor], scheme: str, what: str | None = None) -> list[str]:
    """Draw every matrix from `scheme` (each gate block with its own fans), biases zero; return notes on
    the layers that keep a scale of their own (``_kept_scale``)."""
    kept = []
    for mat in mats:
        w = torch.empty_like(mat.param)
        for b in mat.blocks(w):  # a Conv1D's blocks are transposed views: filled through a copy
            if b.is_contiguous():
                FILL[scheme](b)
            else:
                b.copy_(FILL[scheme](torch.empty_like(b, memory_format=torch.contiguous_format)))
        if not mat.set(w):
            kept.append(mat)
    for b in biases:
        b.zero_()
    return [_kept_scale(m, what or f"init={scheme!r}") for m in kept]


def _kept_scale(mat: Matrix, what: str) -> str:
    return (f"{what}: {mat.layer} computes its weight ({computed_by(mat.module)}), which sets its scale; "
            "the tensor it is computed from was redrawn, the layer's scale is its parametrization's")


def _shifted(biases: list[Tensor], mats: list[Matrix]) -> bool:
    """Whether a bias sits far from its default: larger in magnitude than the largest weight standard
    deviation of the model (PyTorch draws a layer's bias from U(±1/√fan_in), the scale of its weights),
    the mark of a bias set on purpose (e.g. −5 to silence ReLUs), which a re-initialisation zeroes."""
    top = max(float(m.param.detach().float().std()) for m in mats)
    return any(b.numel() and float(b.detach().abs().max()) > max(3 * top, 0.5) for b in biases)


def _reset_norms(model: nn.Module) -> list[str]:
    """Normalisation layers whose affine parameters left their defaults (scale 1, shift 0) are put back
    there: re-initialising a model resets them too (a shift of −10 after BatchNorm silences every ReLU
    that follows, whatever the weights). Returns the reset parameters' names."""
    reset = []
    with torch.no_grad():
        for n, m in model.named_modules():
            if not isinstance(m, NORM_LAYERS):
                continue
            for k, default in (("weight", 1.0), ("bias", 0.0)):
                p = getattr(m, k, None)
                if isinstance(p, Tensor) and p.numel() and not bool((p == default).all()):
                    p.fill_(default)
                    reset.append(f"{n}.{k}" if n else k)
    return reset


def reinit(model: nn.Module, scheme: str, inputs=None) -> tuple[list[str], list[str]]:
    """Re-initialise the computing weights (``matrices``) with `scheme`, biases zero, and put normalisation
    layers' scale and shift back to 1 and 0 (``_reset_norms``); return (names of the re-initialised
    parameters, notes).

    he / xavier / lecun / orthogonal (``deepdiag.init``; gates and q/k/v blocks each get their own fans).
    The redraw is *measured*: when every block's ``scale_ratios`` lies within ``SAME_SCALE`` (20 %) of 1 and
    no bias is shifted (``_shifted``), the weights already have the scheme's scale, nothing is redrawn,
    and the note says so.

    default: each layer's parameters (weights and biases) redrawn as its library draws them: a
    transformers model's own ``_init_weights`` for the modules inside it, else the module's
    ``reset_parameters`` (PyTorch's defaults: U(±1/√fan_in)-scaled Kaiming-uniform for Linear/ConvNd,
    U(±1/√hidden) for RNN/LSTM/GRU, Xavier for attention in-projections) — the scale the architecture was
    designed and tested with, and what removing a custom initialisation gives back. Measured like the
    others: a no-op when every block's std is within 20 % of the default draw's and no bias is shifted.

    lsuv, layer-sequential unit variance (Mishkin & Matas 2016, "All you need is a good init"): orthogonal
    weights, then for each weight layer (Linear, ConvNd, Conv1D) in forward order on `inputs` (required),
    W ← W/√Var(output) until |Var − 1| < 0.1 (at most 10 times). Recurrent and attention in-projection
    matrices stay orthogonal (their output is not linear in the weight's scale), as do layers never called
    as modules (MultiheadAttention's out_proj)."""
    scheme = check_choice("init", scheme, INIT_SCHEMES)
    mats, biases = matrices(model)
    if not mats:
        return [], ["init: the model has no weight matrix to initialise"]
    norms = _reset_norms(model)
    if scheme == "default":
        done, notes = _library_default(model, mats, biases)
        return done + norms, ([] if norms else notes)
    if scheme != "lsuv":
        free = [m for m in mats if not m.fixed_scale]  # (a spectral norm's scale is its own: not judged)
        ratios = scale_ratios(free, scheme)
        if free and all(abs(r - 1.0) <= SAME_SCALE for r in ratios) and not _shifted(biases, mats):
            note = (f"init={scheme!r}: the weights already have the {scheme} scale (median std / "
                    f"{scheme} std from {min(ratios):.2f} to {max(ratios):.2f} over {len(ratios)} "
                    f"blocks, within {SAME_SCALE:.0%}) and the biases are small: a redraw at the same "
                    f"scale changes nothing")
            return norms, ([] if norms else [note])
        return [m.name for m in mats] + norms, _redraw(mats, biases, scheme)
    if inputs is None:
        raise ValueError("init='lsuv' needs inputs: a batch the model takes (a tensor, a tuple of "
                         "arguments or a dict of keyword arguments)")
    notes = _redraw(mats, biases, "orthogonal", "init='lsuv'")
    notes += [f"init='lsuv': {m.layer} computes its weight ({computed_by(m.module)}), which sets its scale: "
              "left orthogonal, not rescaled" for m in mats if m.fixed_scale]
    notes += _lsuv(model, inputs, {m.layer: m for m in mats if is_weight_layer(model.get_submodule(m.layer))
                                   and not m.fixed_scale})
    return [m.name for m in mats], notes


def _owner_init(model: nn.Module, name: str):
    """The ``_init_weights`` of the innermost transformers model holding the module `name`, or None."""
    owners = [n for n, m in model.named_modules()
              if callable(getattr(m, "_init_weights", None)) and hasattr(m, "config")]
    inside = [n for n in owners if not n or name == n or name.startswith(n + ".")]
    return model.get_submodule(max(inside, key=len))._init_weights if inside else None


def _redraw_default(model: nn.Module, name: str) -> bool:
    """Redraw the module `name` as its library does (``reinit``'s "default"); False when nothing can."""
    module = model.get_submodule(name)
    own = _owner_init(model, name)
    if own is not None:
        own(module)
        return True
    for method in ("reset_parameters", "_reset_parameters"):
        if callable(getattr(module, method, None)):
            getattr(module, method)()
            return True
    return False


@torch.no_grad()
def _library_default(model: nn.Module, mats: list[Matrix], biases: list[Tensor]) -> tuple[list[str], list[str]]:
    """``reinit``'s "default": the layers owning `mats` redrawn on a copy, compared block by block (median
    row std, as ``scale_ratios``), then copied in unless the model already has that scale. A layer that
    computes its weight (weight norm, spectral norm, ...) is redrawn as a plain layer and the draw assigned
    through its parametrization (``Matrix.set``): what building the layer and wrapping it again gives; its
    scale is judged only when the parametrization does not set it."""
    fresh = deepcopy_model(model)
    layers = list(dict.fromkeys(m.layer for m in mats))
    for n in layers:
        plain_weight(fresh.get_submodule(n))
    unreached = [n for n in layers if not _redraw_default(fresh, n)]
    drawn = {m.name: m for m in matrices(fresh)[0]}
    ratios = []
    for mat in mats:
        if not mat.fixed_scale:
            for b_old, b_new in zip(mat.blocks(), mat.blocks(drawn[mat.name].param), strict=True):
                ratios.append(_row_std(b_old) / max(_row_std(b_new), 1e-12))
    notes = [f"init='default': {n} has no reset_parameters and no transformers _init_weights; left as it is"
             for n in unreached]
    if ratios and all(abs(r - 1.0) <= SAME_SCALE for r in ratios) and not _shifted(biases, mats):
        return [], notes + [(f"init='default': the weights already have the default scale (std / default std "
                             f"from {min(ratios):.2f} to {max(ratios):.2f} over {len(ratios)} blocks, within "
                             f"{SAME_SCALE:.0%}) and the biases are small: a redraw changes nothing")]
    done, weights = [], {m.layer: m for m in mats if m.module is not None}  # (weight layers: set, not copied)
    for n in layers:
        if n in unreached:
            continue
        old, new = model.get_submodule(n), fresh.get_submodule(n)
        for k, p in old.named_parameters(recurse=False):
            if k in new._parameters and not (n in weights and k == "weight"):
                p.copy_(new.get_parameter(k))
                done.append(f"{n}.{k}" if n else k)
        if n in weights:
            mat = weights[n]
            if not mat.set(drawn[mat.name].param):
                notes.append(_kept_scale(mat, "init='default'"))
            done.append(mat.name)
    return done, notes


def _row_std(b: Tensor) -> float:
    rows = b.detach().reshape(b.shape[0], -1).float()
    return float(rows.std(dim=1, unbiased=False).median() if rows.shape[1] >= 8 else rows.std(unbiased=False))


@torch.no_grad()
def _lsuv(model: nn.Module, inputs, layers: dict[str, Matrix]) -> list[str]:
    """Rescale each weight layer, in forward order, to unit output variance on `inputs` (eval mode)."""
    names = [n for n in order(model, inputs) if n in layers]
    notes = [f"{n}: not called as a module, left orthogonal" for n in layers if n not in names]
    was_training = model.training
    model.eval()
    try:
        for n in names:
            seen = {}

            def hook(_m, _i, out, seen=seen):  # returns None: the output stays as it is
                seen.setdefault("var", out.detach().float().var(unbiased=False))
            handle = model.get_submodule(n).register_forward_hook(hook)
            try:
                for _ in range(LSUV_ITERS):
                    seen.clear()
                    with torch.enable_grad():  # the same path as `order` (no fused fast path)
                        call_model(model, inputs)
                    var = float(seen["var"])  # host sync per pass
                    if abs(var - 1.0) < LSUV_TOL or not math.isfinite(var) or var == 0.0:
                        break
                    layers[n].set(layers[n].param / math.sqrt(var))
            finally:
                handle.remove()
            if var == 0.0 or not math.isfinite(var):
                notes.append(f"{n}: output variance {var} on the inputs, not rescaled")
    finally:
        model.train(was_training)
    return notes
