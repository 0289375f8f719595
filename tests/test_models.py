import pytest
import torch
from torch import nn

import deepdiag as dd


def test_mlp_structure_and_names():
    model = dd.mlp(64, 10, width=32, depth=4)
    names = dict(model.named_modules())
    assert {"hidden.0.linear", "hidden.3.linear", "hidden.3.act", "out"} <= set(names)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 5  # depth hidden + output
    assert model(torch.randn(7, 64)).shape == (7, 10)


def test_depth_zero_is_linear_model():
    model = dd.mlp(5, 3, depth=0)
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [nn.Linear]


@pytest.mark.parametrize("act, cls", [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("tanh", nn.Tanh),
                                      ("sigmoid", nn.Sigmoid), ("gelu", nn.GELU), ("linear", nn.Identity)])
def test_activations(act, cls):
    model = dd.mlp(4, 2, width=8, depth=2, activation=act)
    assert isinstance(model.hidden[1].act, cls)


def test_residual_blocks_add_skip_and_project_only_where_widths_differ():
    model = dd.mlp(10, 3, width=16, depth=3, residual=True)
    assert hasattr(model.hidden[0], "proj") and not hasattr(model.hidden[1], "proj")
    block = model.hidden[1]
    h = torch.randn(4, 16)
    expected = h + 3 ** -0.5 * block.linear(block.act(h))  # no norm: branch scaled by 1/sqrt(depth)
    torch.testing.assert_close(block(h), expected)
    same_width = dd.mlp(16, 3, width=16, depth=2, residual=True)
    assert not any(hasattr(b, "proj") for b in same_width.hidden)


def test_residual_zero_branch_is_identity():
    model = dd.mlp(16, 16, width=16, depth=5, residual=True)
    for block in model.hidden:
        nn.init.zeros_(block.linear.weight); nn.init.zeros_(block.linear.bias)
    nn.init.eye_(model.out.weight); nn.init.zeros_(model.out.bias)
    x = torch.randn(3, 16)
    torch.testing.assert_close(model(x), x)


@pytest.mark.parametrize("norm", [None, "layer"])
def test_deep_residual_stream_does_not_explode(norm):
    """He-initialised pre-activation blocks: without the 1/sqrt(depth) branch scale (norm=None) the
    stream variance doubles per block (2^40 at depth 40); with it, it grows at most e-fold; with a norm
    layer only linearly in depth."""
    torch.manual_seed(0)
    model = dd.mlp(64, 10, width=256, depth=40, residual=True, norm=norm, seed=0)
    x = torch.randn(512, 64)
    h0 = model.hidden[0](x)
    h = x
    for block in model.hidden:
        h = block(h)
    growth = (h.var() / h0.var()).item()
    assert growth < (3.0 if norm is None else 60.0)


@pytest.mark.parametrize("norm, cls", [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)])
def test_norms(norm, cls):
    model = dd.mlp(6, 2, width=8, depth=2, norm=norm)
    assert isinstance(model.hidden[0].norm, cls)
    assert model(torch.randn(5, 6)).shape == (5, 2)


def test_bias_false_and_seed_reproducible():
    a = dd.mlp(6, 2, width=8, depth=3, bias=False, seed=3)
    b = dd.mlp(6, 2, width=8, depth=3, bias=False, seed=3)
    c = dd.mlp(6, 2, width=8, depth=3, bias=False, seed=4)
    assert all(p.dim() == 2 for p in a.parameters())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_seeded_build_leaves_global_rng_alone():
    state = torch.get_rng_state()
    dd.mlp(6, 2, seed=1)
    assert torch.equal(state, torch.get_rng_state())


def test_mlp_init_applies_scheme():
    model = dd.mlp(100, 10, width=400, depth=2, activation="tanh", init="xavier")
    w = model.hidden[1].linear.weight
    assert abs(w.std().item() / (2 / 800) ** 0.5 - 1) < 0.03


def test_dropout_modules_present_only_when_asked():
    assert not any(isinstance(m, nn.Dropout) for m in dd.mlp(4, 2, depth=2).modules())
    drops = [m for m in dd.mlp(4, 2, depth=2, dropout=0.3).modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 2 and drops[0].p == 0.3


def test_conv_net_shapes():
    model = dd.conv_net(1, 10, channels=(8, 16))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert "conv.1.conv" in dict(model.named_modules())


@pytest.mark.parametrize("kwargs, name", [
    (dict(activation="swish"), "activation"),
    (dict(init="random"), "init"),
    (dict(depth=-1), "depth"),
    (dict(width=0), "width"),
    (dict(dropout=1.0), "dropout"),
    (dict(dropout=-0.1), "dropout"),
    (dict(norm="group"), "norm"),
])
def test_bad_mlp_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        dd.mlp(4, 2, **kwargs)


def test_unknown_activation_lists_allowed():
    with pytest.raises(ValueError) as e:
        dd.mlp(4, 2, activation="swish")
    for allowed in ("relu", "leaky_relu", "tanh", "sigmoid", "gelu", "linear"):
        assert allowed in str(e.value)


def test_width_type_error():
    with pytest.raises(TypeError, match="width"):
        dd.mlp(4, 2, width=3.5)
