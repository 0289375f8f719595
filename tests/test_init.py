"""Init schemes against their formulas, written out here independently of deepdiag.init."""
import math

import pytest
import torch
from torch import nn

import deepdiag as dd
from deepdiag.init import fans, scheme_std

SHAPES = {  # name -> (module factory, fan_in, fan_out)
    "linear_square": (lambda: nn.Linear(256, 256), 256, 256),
    "linear_wide": (lambda: nn.Linear(512, 128), 512, 128),
    "linear_tall": (lambda: nn.Linear(100, 400), 100, 400),
    "conv2d": (lambda: nn.Conv2d(16, 32, 3), 16 * 9, 32 * 9),
    "conv1d": (lambda: nn.Conv1d(24, 48, 5), 24 * 5, 48 * 5),
}

# scheme, options -> expected std from (fan_in, fan_out), written from the papers
FORMULAS = {
    "xavier": ({}, lambda fi, fo: math.sqrt(2 / (fi + fo))),
    "glorot_normal": ({"distribution": "normal"}, lambda fi, fo: math.sqrt(2 / (fi + fo))),
    "lecun": ({}, lambda fi, fo: math.sqrt(1 / fi)),
    "lecun_uniform": ({"distribution": "uniform"}, lambda fi, fo: math.sqrt(1 / fi)),
    "he": ({}, lambda fi, fo: math.sqrt(2 / fi)),
    "kaiming_fan_out": ({"mode": "fan_out"}, lambda fi, fo: math.sqrt(2 / fo)),
    "he_uniform": ({"distribution": "uniform"}, lambda fi, fo: math.sqrt(2 / fi)),
    "normal": ({"std": 0.05}, lambda fi, fo: 0.05),
    "uniform": ({"a": 0.3}, lambda fi, fo: 0.3 / math.sqrt(3)),
}
SCHEME_OF = {"glorot_normal": "glorot", "kaiming_fan_out": "kaiming", "he_uniform": "he",
             "lecun_uniform": "lecun"}


def sample_std_tolerance(n: int) -> float:
    """Six standard errors of a sample std relative to the true one (normal: SE = 1/sqrt(2n))."""
    return 6 * math.sqrt(1 / (2 * n))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", FORMULAS)
def test_weight_std_matches_formula(case, shape):
    opts, formula = FORMULAS[case]
    factory, fan_in, fan_out = SHAPES[shape]
    layer = factory()
    dd.init_weights(layer, SCHEME_OF.get(case, case), **opts)
    w = layer.weight.detach().double()
    expected = formula(fan_in, fan_out)
    assert abs(w.std().item() / expected - 1) < sample_std_tolerance(w.numel())
    assert abs(w.mean().item()) < 6 * expected / math.sqrt(w.numel())
    assert torch.count_nonzero(layer.bias) == 0  # biases zero unless asked
    assert scheme_std(SCHEME_OF.get(case, case), fan_in, fan_out, **opts) == pytest.approx(expected)


def test_fans_of_conv_include_kernel():
    assert fans(torch.empty(32, 16, 3, 3)) == (16 * 9, 32 * 9)
    assert fans(torch.empty(10, 20)) == (20, 10)


def test_gain_scales_std():
    layer = dd.init_weights(nn.Linear(400, 400), "xavier", gain=3.0, distribution="normal")
    expected = 3.0 * math.sqrt(2 / 800)
    assert abs(layer.weight.std().item() / expected - 1) < sample_std_tolerance(160000)


def test_leaky_relu_he_gain():
    layer = dd.init_weights(nn.Linear(500, 500), "he", negative_slope=0.2)
    expected = math.sqrt(2 / (1 + 0.2**2) / 500)
    assert abs(layer.weight.std().item() / expected - 1) < sample_std_tolerance(250000)


@pytest.mark.parametrize("shape", [(64, 64), (32, 100), (100, 32)])
def test_orthogonal_is_orthonormal(shape):
    layer = dd.init_weights(nn.Linear(shape[1], shape[0]), "orthogonal")
    w = layer.weight.detach().double()
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    torch.testing.assert_close(gram, torch.eye(min(shape), dtype=torch.float64), atol=1e-5, rtol=0)
    assert w.pow(2).mean().sqrt().item() == pytest.approx(scheme_std("orthogonal", shape[1], shape[0]), rel=1e-5)


def test_identity_linear_and_conv():
    lin = dd.init_weights(nn.Linear(5, 5), "identity", gain=0.9)
    torch.testing.assert_close(lin.weight.detach(), 0.9 * torch.eye(5))
    conv = dd.init_weights(nn.Conv2d(3, 3, 3, padding=1), "identity")
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(conv(x), x)


def test_zeros_and_constant_make_units_identical():
    model = dd.init_weights(dd.mlp(4, 3, width=8, depth=2), "constant", value=0.1)
    for p in model.parameters():
        if p.dim() == 2:
            assert torch.all(p == 0.1)
    dd.init_weights(model, "zeros")
    assert all(torch.count_nonzero(p) == 0 for p in model.parameters())


def test_bias_std_and_norm_layers_untouched():
    model = dd.mlp(10, 3, width=300, depth=2, norm="layer")
    dd.init_weights(model, "he", bias_std=0.5)
    bias = model.hidden[1].linear.bias.detach()
    assert abs(bias.std().item() / 0.5 - 1) < 0.25
    ln = model.hidden[1].norm
    assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0)


def test_init_on_any_module_returns_it():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleDict({"a": nn.Linear(50, 60), "b": nn.Sequential(nn.Conv2d(2, 4, 3))})

    m = Custom()
    assert dd.init_weights(m, "zeros") is m
    assert torch.count_nonzero(m.blocks["b"][0].weight) == 0


@pytest.mark.parametrize("bad, match", [
    (dict(scheme="glorious"), "scheme"),
    (dict(scheme="he", distribution="cauchy"), "distribution"),
    (dict(scheme="he", mode="fan_both"), "mode"),
    (dict(scheme="normal", std=-1.0), "std"),
    (dict(scheme="xavier", std=0.1), "std"),
])
def test_bad_init_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        dd.init_weights(nn.Linear(3, 3), **bad)


def test_unknown_scheme_lists_allowed():
    with pytest.raises(ValueError, match="xavier") as e:
        dd.init_weights(nn.Linear(3, 3), "glorious")
    assert "he" in str(e.value) and "orthogonal" in str(e.value)
