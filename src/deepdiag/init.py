"""Weight initialisation schemes, each with the variance it gives and the paper it comes from.

Every scheme fills a weight tensor ``w`` of shape ``(fan_out, fan_in, *kernel)`` in place. For a
convolution, ``fan_in = in_channels * prod(kernel)`` and ``fan_out = out_channels * prod(kernel)``.

==============  ======================================  ===============================================
scheme          weight distribution                     source
==============  ======================================  ===============================================
zeros           w = 0                                   (symmetric: every unit computes the same thing)
constant        w = value                               (symmetric as well)
normal          N(0, std²)                              "random initialization"
uniform         U(-a, a), Var = a²/3                    "random initialization"
xavier/glorot   Var = gain² · 2/(fan_in + fan_out)      Glorot & Bengio (2010)
lecun           Var = gain² · 1/fan_in                  LeCun et al. (1998), "Efficient BackProp"
he/kaiming      Var = gain² / fan  with gain = √2       He et al. (2015), "Delving deep into rectifiers"
orthogonal      gain · Q, Q with orthonormal rows/cols  Saxe et al. (2014)
identity        gain · I (rectangular or Dirac)         the identity map of the depth argument
==============  ======================================  ===============================================

A note on the first seed text: it writes Xavier as ``Var(w) = sqrt(1/n_in)`` and He as
``Var(w) = sqrt(2/n_in)``. Those square roots are the *standard deviations*; the variances are 1/n_in
(which is LeCun's scheme; Glorot's own normalised init is Var = 2/(n_in + n_out)) and 2/n_in.

``init_weights`` applies a scheme to every weight matrix of any ``nn.Module`` (parameters of two or
more dimensions), sets biases to zero (or N(0, bias_std²)), and leaves normalisation layers alone.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._validate import check_choice, check_number

SCHEMES = (
    "zeros", "constant", "normal", "uniform", "xavier", "glorot", "lecun", "he", "kaiming",
    "orthogonal", "identity",
)
ALIASES = {"glorot": "xavier", "kaiming": "he"}
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def fans(w: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel): each multiplied by prod(kernel)."""
    if w.dim() < 2:
        raise ValueError(f"fan_in and fan_out need a weight with >= 2 dimensions, got shape {tuple(w.shape)}")
    receptive = math.prod(w.shape[2:])
    return w.shape[1] * receptive, w.shape[0] * receptive


def default_gain(scheme: str, negative_slope: float = 0.0) -> float:
    """The gain a scheme uses when none is given: √(2/(1+a²)) for He (a = leaky-ReLU slope), else 1."""
    scheme = ALIASES.get(scheme, scheme)
    return math.sqrt(2.0 / (1.0 + negative_slope**2)) if scheme == "he" else 1.0


def scheme_std(
    scheme: str,
    fan_in: int,
    fan_out: int,
    gain: float | None = None,
    *,
    std: float = 0.01,
    a: float = 0.05,
    value: float = 0.0,
    mode: str = "fan_in",
    negative_slope: float = 0.0,
    distribution: str = "normal",
) -> float:
    """The standard deviation of the weights a scheme produces (the theory the tests check against).

    The standard deviation does not depend on `distribution` (normal or uniform, same variance).

    For orthogonal and identity it is the root-mean-square weight, gain·√(1/max(fan_in, fan_out))
    for a square-or-wider orthogonal matrix and gain·√(min(fan_in, fan_out))/(fan_in·fan_out)^(1/2)
    for identity, so that std² · fan_in · fan_out equals the sum of squared entries.
    """
    scheme = ALIASES.get(scheme, scheme)
    g = default_gain(scheme, negative_slope) if gain is None else gain
    if scheme in ("zeros", "constant"):
        return 0.0
    if scheme == "normal":
        return g * std
    if scheme == "uniform":
        return g * a / math.sqrt(3.0)
    if scheme == "xavier":
        return g * math.sqrt(2.0 / (fan_in + fan_out))
    if scheme == "lecun":
        return g * math.sqrt(1.0 / fan_in)
    if scheme == "he":
        return g * math.sqrt(1.0 / (fan_in if mode == "fan_in" else fan_out))
    if scheme in ("orthogonal", "identity"):
        # Sum of squares is min(fan_in, fan_out) for both (orthonormal rows or columns; a partial eye).
        return g * math.sqrt(min(fan_in, fan_out) / (fan_in * fan_out))
    raise ValueError(f"unknown scheme={scheme!r}; allowed values: {', '.join(SCHEMES)}")


@torch.no_grad()
def zeros_(w: Tensor) -> Tensor:
    """w = 0. Every unit of the next layer computes the same function and gets the same gradient."""
    return w.zero_()


@torch.no_grad()
def constant_(w: Tensor, value: float = 0.0) -> Tensor:
    """w = value. Symmetric like zeros: all units of a layer stay identical under gradient descent."""
    return w.fill_(value)


@torch.no_grad()
def normal_(w: Tensor, std: float = 0.01, gain: float = 1.0) -> Tensor:
    """w ~ N(0, (gain·std)²): plain "random initialization" with a hand-picked scale."""
    return w.normal_(0.0, gain * std)


@torch.no_grad()
def uniform_(w: Tensor, a: float = 0.05, gain: float = 1.0) -> Tensor:
    """w ~ U(-gain·a, gain·a): Var(w) = (gain·a)²/3."""
    return w.uniform_(-gain * a, gain * a)


def _fill(w: Tensor, std: float, distribution: str) -> Tensor:
    """Fill w with mean 0 and standard deviation std, normal or uniform (U(-√3·std, √3·std))."""
    if distribution == "normal":
        return w.normal_(0.0, std)
    bound = math.sqrt(3.0) * std
    return w.uniform_(-bound, bound)


@torch.no_grad()
def xavier_(w: Tensor, gain: float = 1.0, distribution: str = "uniform") -> Tensor:
    """Var(w) = gain² · 2/(fan_in + fan_out). Glorot & Bengio (2010), "Understanding the difficulty
    of training deep feedforward neural networks": keeps the forward and backward variance of a
    linear/tanh layer equal on average. Glorot's original draw is uniform.

    >>> dd.init_weights(dd.mlp(4, 2, activation="tanh"), "xavier")
    """
    fan_in, fan_out = fans(w)
    return _fill(w, gain * math.sqrt(2.0 / (fan_in + fan_out)), distribution)


@torch.no_grad()
def lecun_(w: Tensor, gain: float = 1.0, distribution: str = "normal") -> Tensor:
    """Var(w) = gain² / fan_in. LeCun et al. (1998), "Efficient BackProp". This is what the first
    seed text calls Xavier (its "Var = sqrt(1/n_in)" is this scheme's standard deviation).
    With ReLU it halves the signal's second moment at every layer.
    """
    fan_in, _ = fans(w)
    return _fill(w, gain * math.sqrt(1.0 / fan_in), distribution)


@torch.no_grad()
def he_(
    w: Tensor,
    gain: float | None = None,
    mode: str = "fan_in",
    distribution: str = "normal",
    negative_slope: float = 0.0,
) -> Tensor:
    """Var(w) = gain²/fan with gain = √(2/(1+a²)) (= 2/fan_in for ReLU). He et al. (2015),
    "Delving deep into rectifiers": a ReLU zeroes half the pre-activations, so doubling the weight
    variance keeps the second moment of the signal constant in depth (fan_in mode), or that of the
    back-propagated gradient (fan_out mode).

    >>> dd.init_weights(dd.mlp(4, 2), "he")
    """
    fan_in, fan_out = fans(w)
    g = default_gain("he", negative_slope) if gain is None else gain
    return _fill(w, g * math.sqrt(1.0 / (fan_in if mode == "fan_in" else fan_out)), distribution)


@torch.no_grad()
def orthogonal_(w: Tensor, gain: float = 1.0) -> Tensor:
    """gain · Q with Q orthonormal (QᵀQ = I on the smaller side). Saxe et al. (2014), "Exact solutions
    to the nonlinear dynamics of learning in deep linear neural networks": all singular values are
    equal, so a deep linear chain neither shrinks nor grows any direction.
    """
    return nn.init.orthogonal_(w, gain=gain)


@torch.no_grad()
def identity_(w: Tensor, gain: float = 1.0) -> Tensor:
    """gain · I: the (rectangular) identity for a matrix, the Dirac delta for a convolution kernel.

    This is the seed text's deep linear net W = a·I (``gain=0.9`` or ``1.1``), and the identity-map
    construction of the depth argument (``gain=1``: an added layer that changes nothing).
    """
    if w.dim() == 2:
        nn.init.eye_(w)
    elif w.dim() in (3, 4, 5):
        nn.init.dirac_(w)
    else:
        raise ValueError(f"identity init needs a 2-D to 5-D weight, got shape {tuple(w.shape)}")
    return w.mul_(gain)


def _weight_filler(scheme: str, gain: float | None, kw: dict):
    """A function w -> w that applies `scheme` with its keyword arguments."""
    g = 1.0 if gain is None else gain
    dist = kw.get("distribution")
    if scheme == "zeros":
        return zeros_
    if scheme == "constant":
        return lambda w: constant_(w, kw.get("value", 0.0))
    if scheme == "normal":
        return lambda w: normal_(w, kw.get("std", 0.01), g)
    if scheme == "uniform":
        return lambda w: uniform_(w, kw.get("a", 0.05), g)
    if scheme == "xavier":
        return lambda w: xavier_(w, g, dist or "uniform")
    if scheme == "lecun":
        return lambda w: lecun_(w, g, dist or "normal")
    if scheme == "he":
        return lambda w: he_(w, gain, kw.get("mode", "fan_in"), dist or "normal", kw.get("negative_slope", 0.0))
    if scheme == "orthogonal":
        return lambda w: orthogonal_(w, g)
    return lambda w: identity_(w, g)


_KWARGS = {
    "zeros": set(), "constant": {"value"}, "normal": {"std"}, "uniform": {"a"},
    "xavier": {"distribution"}, "lecun": {"distribution"},
    "he": {"distribution", "mode", "negative_slope"}, "orthogonal": set(), "identity": set(),
}


def _check_kwargs(scheme: str, gain: float | None, kw: dict) -> None:
    allowed = _KWARGS[scheme]
    unknown = sorted(set(kw) - allowed)
    if unknown:
        listed = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"init scheme {scheme!r} takes no option {unknown[0]!r}; its options: {listed}")
    if gain is not None:  # a negative gain only flips signs; 0 is the zeros scheme, asked for by name
        check_number("gain", gain, low=0.0, low_inclusive=False)
    if "distribution" in kw:
        check_choice("distribution", kw["distribution"], ("normal", "uniform"))
    if "mode" in kw:
        check_choice("mode", kw["mode"], ("fan_in", "fan_out"))
    if "std" in kw:
        check_number("std", kw["std"], low=0.0)
    if "a" in kw:
        check_number("a", kw["a"], low=0.0)


def init_weights(
    model: nn.Module,
    scheme: str,
    gain: float | None = None,
    *,
    bias_std: float = 0.0,
    **kw,
) -> nn.Module:
    """Re-initialise every weight of any ``nn.Module`` in place with `scheme`; return the module.

    Weights are the parameters with two or more dimensions (Linear, Conv*d, Bilinear, Embedding...),
    outside normalisation layers, which keep their own parameters (scale 1, shift 0). Biases become
    zero, or N(0, bias_std²) when asked (the σ_b² of mean-field theory).

    Options by scheme: ``normal(std=0.01)``, ``uniform(a=0.05)``, ``constant(value=0.0)``,
    ``xavier/lecun/he(distribution="normal"|"uniform")``, ``he(mode="fan_in"|"fan_out",
    negative_slope=0.0)``. `gain` multiplies the standard deviation (He's default gain is √2).

    >>> model = dd.init_weights(dd.mlp(64, 10), "xavier", distribution="normal")
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    scheme = ALIASES.get(check_choice("scheme", scheme, SCHEMES), scheme.lower())
    _check_kwargs(scheme, gain, kw)
    check_number("bias_std", bias_std, low=0.0)
    fill = _weight_filler(scheme, gain, kw)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, NORM_LAYERS):
                continue
            for name, p in module.named_parameters(recurse=False):
                if p.dim() >= 2:
                    fill(p)
                elif name.endswith("bias"):
                    p.normal_(0.0, bias_std) if bias_std > 0 else p.zero_()
    return model
