"""Model builders: plain and residual MLPs, and a small conv net, with readable layer names.

``mlp(in, out, width, depth)`` has `depth` hidden layers and one output layer::

    plain     hidden.i = linear -> norm -> act -> dropout          h_{i+1} = block_i(h_i)
    residual  hidden.i = norm -> act -> linear -> dropout          h_{i+1} = proj_i(h_i) + block_i(h_i)
    out       linear (width -> out_features)

The residual blocks are pre-activation blocks (He et al. 2016, "Identity mappings in deep residual
networks"): the skip path is the identity, with a bias-free linear projection only where the widths
differ (the first block when in_features != width). Findings quote names such as ``hidden.3.linear``.

Without a normalisation layer the branch sees the raw stream, and under He init it returns a signal
of the stream's own variance: Var(h + f(h)) = 2·Var(h), so the stream would grow 2^depth. The branch
is therefore scaled by α = 1/√depth (h + α·f(h)): the variance grows by (1 + 1/depth) per block, at
most e ≈ 2.7 over the whole network, as in the depth-scaled residual inits of Fixup (Zhang et al. 2019)
and GPT-2. With ``norm`` the branch input is normalised, the stream grows only linearly, and α = 1.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn

from ._validate import check_bool, check_choice, check_number
from .init import init_weights

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "linear": nn.Identity,
}
NORMS = ("batch", "layer")  # the normalisation layers; norm=None: none
INITS = ("zeros", "constant", "normal", "uniform", "xavier", "glorot", "lecun", "he", "kaiming",
         "orthogonal", "identity", "default")


def activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of ACTIVATIONS)."""
    return ACTIVATIONS[check_choice("activation", name, ACTIVATIONS)]()


def _norm(kind: str | None, width: int) -> nn.Module:
    if kind is None:
        return nn.Identity()
    return nn.BatchNorm1d(width) if kind == "batch" else nn.LayerNorm(width)


class Block(nn.Module):
    """One hidden layer. Plain: dropout(act(norm(linear(h)))).
    Residual: skip(h) + α·dropout(linear(act(norm(h)))), α = `branch_scale`."""

    def __init__(self, fan_in: int, fan_out: int, act: str, norm: str | None, dropout: float,
                 residual: bool, bias: bool, branch_scale: float = 1.0):
        super().__init__()
        self.residual = residual
        self.branch_scale = branch_scale
        self.linear = nn.Linear(fan_in, fan_out, bias=bias)
        self.norm = _norm(norm, fan_in if residual else fan_out)
        self.act = activation(act)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if residual and fan_in != fan_out:
            self.proj = nn.Linear(fan_in, fan_out, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: (batch, fan_in) -> (batch, fan_out)
        if not self.residual:
            return self.dropout(self.act(self.norm(self.linear(h))))
        skip = self.proj(h) if hasattr(self, "proj") else h
        branch = self.dropout(self.linear(self.act(self.norm(h))))
        return skip + (branch if self.branch_scale == 1.0 else self.branch_scale * branch)


class MLP(nn.Module):
    """`depth` hidden blocks (``hidden.0`` ... ``hidden.{depth-1}``) then the output layer ``out``."""

    def __init__(self, in_features: int, out_features: int, width: int, depth: int, act: str,
                 norm: str | None, dropout: float, residual: bool, bias: bool):
        super().__init__()
        widths = [in_features] + [width] * depth
        alpha = depth ** -0.5 if residual and norm is None and depth > 0 else 1.0
        self.hidden = nn.ModuleList(
            Block(widths[i], widths[i + 1], act, norm, dropout, residual, bias, alpha) for i in range(depth)
        )
        self.out = nn.Linear(widths[-1], out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, in_features)
        h = x.flatten(1)
        for block in self.hidden:
            h = block(h)
        return self.out(h)  # (batch, out_features)


def _check_common(in_features, out_features, width, dropout,
                  in_name: str = "in_features") -> tuple[int, int, int, float]:
    """The sizes as Python ints (numpy integers accepted) and dropout as a float, each checked."""
    return (check_number(in_name, in_features, low=1, integer=True),
            check_number("out_features", out_features, low=1, integer=True),
            check_number("width", width, low=1, integer=True),
            float(check_number("dropout", dropout, low=0.0, high=1.0, high_inclusive=False)))


@contextmanager
def seeded(seed: int | None):
    """Run the block with the global CPU RNG seeded by `seed`, restoring the caller's state after.
    With seed=None the block uses (and advances) the global RNG as usual."""
    if seed is None:
        yield
        return
    seed = check_number("seed", seed, low=0, integer=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _initialise(model: nn.Module, init: str, activation_name: str) -> nn.Module:
    if init == "default":
        return model
    gain = None
    if init in ("he", "kaiming") and activation_name == "leaky_relu":
        gain = (2.0 / (1.0 + 0.01**2)) ** 0.5  # nn.LeakyReLU's default slope
    return init_weights(model, init, gain)


def mlp(
    in_features: int,
    out_features: int,
    width: int = 64,
    depth: int = 10,
    activation: str = "relu",
    init: str = "he",
    dropout: float = 0.0,
    residual: bool = False,
    norm: str | None = None,
    bias: bool = True,
    seed: int | None = None,
) -> nn.Module:
    """A multilayer perceptron with `depth` hidden layers of `width` units.

    activation: relu, leaky_relu, tanh, sigmoid, gelu, linear (identity); init: any scheme of
    ``dd.init_weights`` (weights with default options, biases zero), or "default" for PyTorch's own;
    dropout: inverted dropout probability p in [0, 1) after each hidden activation (off in eval mode);
    residual: pre-activation residual blocks x + f(x); norm: None, "batch" or "layer";
    seed: when given, the initial weights depend on it alone (the global RNG is left untouched).

    >>> model = dd.mlp(64, 10, width=128, depth=3)
    >>> [n for n, _ in model.named_modules()][:4]
    ['', 'hidden', 'hidden.0', 'hidden.0.linear']
    """
    in_features, out_features, width, dropout = _check_common(in_features, out_features, width, dropout)
    depth = check_number("depth", depth, low=0, integer=True)
    residual, bias = check_bool("residual", residual), check_bool("bias", bias)
    act = check_choice("activation", activation, ACTIVATIONS)
    if norm is not None:
        norm = check_choice("norm", norm, NORMS)
    init = check_choice("init", init, INITS)
    with seeded(seed):
        model = MLP(in_features, out_features, width, depth, act, norm, dropout, residual, bias)
        return _initialise(model, init, act)


class ConvNet(nn.Module):
    """conv.i = Conv2d(3x3, padding 1) -> norm -> act -> 2x2 max-pool; then global average pool -> out."""

    def __init__(self, in_channels: int, out_features: int, channels: list[int], act: str,
                 norm: str | None, dropout: float):
        super().__init__()
        layers = []
        for c_in, c_out in zip([in_channels] + channels[:-1], channels):
            block = nn.Sequential()
            block.add_module("conv", nn.Conv2d(c_in, c_out, 3, padding=1))
            block.add_module("norm", nn.BatchNorm2d(c_out) if norm == "batch" else nn.Identity())
            block.add_module("act", activation(act))
            block.add_module("pool", nn.MaxPool2d(2, ceil_mode=True))
            layers.append(block)
        self.conv = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Linear(channels[-1], out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, in_channels, H, W)
        for block in self.conv:
            x = block(x)  # (batch, c_out, ceil(H/2), ceil(W/2))
        return self.out(self.dropout(x.mean(dim=(2, 3))))  # (batch, out_features)


def conv_net(
    in_channels: int,
    out_features: int,
    channels: tuple[int, ...] = (16, 32),
    activation: str = "relu",
    init: str = "he",
    dropout: float = 0.0,
    norm: str | None = None,
    seed: int | None = None,
) -> nn.Module:
    """A small CNN for images (e.g. digits reshaped to 1x8x8, MNIST to 1x28x28).

    Each stage is a 3x3 convolution, optional batch norm, the activation and a 2x2 max-pool; a
    global average pool feeds the linear output layer.

    >>> dd.conv_net(1, 10)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    in_channels, out_features, _, dropout = _check_common(in_channels, out_features, 1, dropout, "in_channels")
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Iterable):
        raise TypeError(f"channels={channels!r} must be a sequence of positive integers, e.g. (16, 32)")
    channels = list(channels)
    if not channels:
        raise ValueError("channels=[] must hold at least one positive integer, e.g. (16, 32)")
    channels = [check_number(f"channels[{i}]", c, low=1, integer=True) for i, c in enumerate(channels)]
    act = check_choice("activation", activation, ACTIVATIONS)
    if norm is not None:
        norm = check_choice("norm", norm, ("batch",))
    init = check_choice("init", init, INITS)
    with seeded(seed):
        return _initialise(ConvNet(in_channels, out_features, channels, act, norm, dropout), init, act)
