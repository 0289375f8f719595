"""checkup: every layer code from plain-torch pathologies, healthy controls, restoration, reference stats."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepdiag as dd
from deepdiag.checkup import checkup


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: the shared CI machine's cores are oversubscribed and OpenMP spin-waits badly."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def digits(n=128):
    ds = dd.data.load("digits", seed=0)
    return ds.x_train[:n], ds.y_train[:n]


def warned(report):
    return {f.code for f in report.findings if f.severity in ("warning", "error")}


def find(report, code, severity=None):
    hits = [f for f in report.findings if f.code == code and (severity is None or f.severity == severity)]
    assert hits, f"no {code} in {[(f.code, f.severity) for f in report.findings]}"
    return hits


# ---- plain-torch builders ----

def linear_chain(a: float, depth: int = 100, width: int = 2) -> nn.Module:
    """The seed text's deep linear net: depth layers W = a·I, no bias, no activation."""
    layers = [nn.Linear(width, width, bias=False) for _ in range(depth)]
    with torch.no_grad():
        for lin in layers:
            lin.weight.copy_(a * torch.eye(width))
    return nn.Sequential(*layers)


class FunctionalMLP(nn.Module):
    """A custom class with functional activations only (no activation modules)."""

    def __init__(self, act=F.relu, width=64, depth=3, std=None, bias=0.0):
        super().__init__()
        self.act = act
        self.blocks = nn.ModuleDict({f"fc{i}": nn.Linear(64 if i == 0 else width, width) for i in range(depth)})
        self.head = nn.Linear(width, 10)
        with torch.no_grad():
            for lin in self.blocks.values():
                gain = 2.0 if act is F.relu else 1.0
                lin.weight.normal_(0, std if std is not None else math.sqrt(gain / lin.in_features))
                lin.bias.fill_(bias)

    def forward(self, x):
        for lin in self.blocks.values():
            x = self.act(lin(x))
        return self.head(x)


class ResidualMLP(nn.Module):
    """Plain-torch residual MLP: x + f(x) with branches scaled by 1/√depth (keeps Var bounded)."""

    def __init__(self, depth=40, width=64):
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.branches = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Linear(width, width)) for _ in range(depth))
        self.out = nn.Linear(width, 10)
        with torch.no_grad():
            for b in self.branches:
                nn.init.kaiming_normal_(b[1].weight, nonlinearity="relu")
                b[1].weight.mul_(depth ** -0.5)
                b[1].bias.zero_()

    def forward(self, x):
        h = self.inp(x)
        for b in self.branches:
            h = h + b(h)
        return self.out(h)


def small_cnn(conv_bias=None) -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    for m in net:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    if conv_bias is not None:
        with torch.no_grad():
            net[0].bias[:15] = conv_bias  # 15 of 16 channels switched off
    return net


# ---- gradient and activation scale: the seed's W = a·I chain ----

def test_seed_chain_0_9_vanishes_exactly_as_a_to_the_L_minus_1():
    torch.manual_seed(0)
    report = checkup(linear_chain(0.9), torch.randn(128, 2))
    g = find(report, "vanishing_gradients", "error")[0]
    assert g.evidence["ratio_first_last"] == pytest.approx(0.9 ** 99, rel=1e-3)
    assert g.evidence["per_layer_factor"] == pytest.approx(0.9, rel=1e-4)
    assert g.layers[0] == "0" and "99" not in g.layers
    a = find(report, "vanishing_activations", "error")[0]
    assert a.evidence["ratio_last_first"] == pytest.approx(0.9 ** 99, rel=1e-3)
    assert "99" in a.layers and "0" not in a.layers
    assert "orthogonal" in g.remedy
    assert report.surrogate


def test_seed_chain_1_1_explodes():
    torch.manual_seed(0)
    report = checkup(linear_chain(1.1), torch.randn(128, 2))
    g = find(report, "exploding_gradients", "error")[0]
    assert g.evidence["ratio_first_last"] == pytest.approx(1.1 ** 99, rel=1e-3)
    a = find(report, "exploding_activations", "error")[0]
    assert a.evidence["ratio_last_first"] == pytest.approx(1.1 ** 99, rel=1e-3)
    assert "vanishing_gradients" not in {f.code for f in report.findings}


def test_small_init_tanh_vanishes_with_specific_remedy():
    x, y = digits()
    model = FunctionalMLP(act=torch.tanh, depth=6, std=0.01)
    report = checkup(model, x, y)
    g = find(report, "vanishing_gradients", "error")[0]
    assert g.evidence["ratio_first_last"] < 1e-4
    assert "blocks.fc0" in g.layers
    assert "dd.init_weights(model, 'xavier')" in g.remedy and "std 0.01" in g.remedy
    assert find(report, "vanishing_activations")[0].evidence["ratio_last_first"] < 1e-2


def test_float32_underflow_is_not_read_as_zero():
    torch.manual_seed(0)
    report = checkup(linear_chain(0.3, depth=60), torch.randn(64, 2))  # 0.3^59 ~ 1e-31
    g = find(report, "vanishing_gradients", "error")[0]
    assert 0 < g.evidence["ratio_first_last"] == pytest.approx(0.3 ** 59, rel=1e-2)


def test_default_init_deep_relu_vanishes():
    x, _ = digits()
    report = checkup(dd.mlp(64, 10, width=64, depth=20, init="default", seed=0), x)
    g = find(report, "vanishing_gradients", "error")[0]
    assert "dd.init_weights(model, 'he')" in g.remedy


# ---- units ----

def test_symmetric_zero_init_plain_sequential():
    x, y = digits()
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight), nn.init.zeros_(m.bias)
    report = checkup(net, x, y)
    errs = find(report, "symmetric_units", "error")
    assert [f.layers for f in errs] == [["0"], ["2"]]
    assert errs[0].evidence["max_row_difference"] == 0.0 and errs[0].evidence["units"] == 32
    assert find(report, "symmetric_units", "info")[0].layers == ["4"]


def test_constant_init_is_symmetric_too():
    x, y = digits()
    net = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.fill_(0.05), m.bias.fill_(0.0)
    report = checkup(net, x, y % 3)
    assert {tuple(f.layers) for f in find(report, "symmetric_units", "error")} == {("0",), ("2",)}
    assert find(report, "symmetric_units", "error")[0].evidence["activation_spread"] == pytest.approx(0, abs=1e-6)


def test_zero_hidden_layer_before_random_layer_is_only_info():
    """Identical units whose outgoing weights differ get different gradients (tanh'(0) = 1): they separate."""
    x, y = digits()
    net = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10))
    nn.init.zeros_(net[2].weight), nn.init.zeros_(net[2].bias)
    report = checkup(net, x, y)
    (f,) = [f for f in report.findings if f.code == "symmetric_units"]
    assert (f.severity, f.layers) == ("info", ["2"])
    assert f.evidence["outgoing_difference"] > 0.1 and f.evidence["next_layer"] == "4"


def test_zero_output_layer_alone_is_only_info():
    x, y = digits()
    model = dd.mlp(64, 10, width=64, depth=5, seed=0)
    nn.init.zeros_(model.out.weight)
    report = checkup(model, x, y)
    assert warned(report) == set()
    assert find(report, "symmetric_units", "info")[0].layers == ["out"]


def test_single_output_unit_is_not_symmetric():
    x, y = digits()
    model = dd.mlp(64, 1, width=32, depth=3, seed=0)
    nn.init.zeros_(model.out.weight)
    report = checkup(model, x, (y > 4).long())
    assert "symmetric_units" not in {f.code for f in report.findings}


def test_dead_units_functional_relu_in_custom_class():
    x, y = digits()
    model = FunctionalMLP(depth=3)
    with torch.no_grad():
        model.blocks["fc1"].bias[:56] = -1e3  # 56 of 64 units can never fire
    report = checkup(model, x, y)
    f = find(report, "dead_units", "warning")[0]
    assert f.layers == ["blocks.fc1"]
    assert f.evidence["dead"] == 56 and f.evidence["units"] == 64
    assert f.evidence["frac_dead"] == pytest.approx(56 / 64)
    assert f.evidence["positions"] == 128
    assert "biases average" in f.summary and f.evidence["bias_mean"] == pytest.approx(-875.0)
    with torch.no_grad():
        model.blocks["fc1"].bias[:62] = -1e3  # 62 of 64 (97 %): error
    e = find(checkup(model, x, y), "dead_units", "error")[0]
    assert e.layers == ["blocks.fc1"] and e.evidence["dead"] == 62


def test_dead_units_all_dead_is_error_and_blocks_gradient():
    x, y = digits()
    model = FunctionalMLP(depth=3, bias=-20.0)
    report = checkup(model, x, y)
    f = find(report, "dead_units", "error")[0]
    assert f.layers == ["blocks.fc0"] and f.evidence["frac_dead"] == 1.0
    assert find(report, "vanishing_gradients", "error")[0].evidence["ratio_first_last"] == 0.0


def test_dead_channels_in_cnn_are_per_channel():
    x, y = digits()
    report = checkup(small_cnn(conv_bias=-50.0), x.reshape(-1, 1, 8, 8), y)
    f = find(report, "dead_units", "warning")[0]
    assert f.layers == ["1"] and f.evidence["dead"] == 15 and f.evidence["units"] == 16
    assert f.evidence["positions"] == 128 * 64


def test_saturated_tanh_modules():
    x, y = digits()
    net = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 1.0)
    report = checkup(net, x, y)
    fs = find(report, "saturated_units", "error")
    assert [f.layers for f in fs] == [["1"], ["3"]]
    assert fs[0].evidence["frac_saturated_units"] >= 0.9 and fs[0].evidence["z_threshold"] == 3.0
    assert "xavier" in fs[0].remedy


def test_saturated_sigmoid_functional():
    x, y = digits()
    model = FunctionalMLP(act=torch.sigmoid, depth=2, std=2.0)
    report = checkup(model, x, y)
    f = find(report, "saturated_units")[0]
    assert f.layers[0].startswith("blocks.fc") and f.evidence["z_threshold"] == 5.0


# ---- healthy controls: no warning, no error ----

HEALTHY = {
    "he_relu_depth50": lambda: dd.mlp(64, 10, width=64, depth=50, init="he", seed=0),
    "xavier_tanh_depth50": lambda: dd.mlp(64, 10, width=64, depth=50, activation="tanh", init="xavier", seed=0),
    "residual_layernorm_depth40": lambda: dd.mlp(64, 10, width=64, depth=40, residual=True, norm="layer", seed=0),
    "residual_plain_torch_depth40": lambda: ResidualMLP(depth=40),
    "residual_mlp_depth40": lambda: dd.mlp(64, 10, width=64, depth=40, residual=True, seed=0),
    "residual_tanh_depth60": lambda: dd.mlp(64, 10, width=64, depth=60, residual=True, activation="tanh",
                                            init="xavier", seed=0),
    "layernorm_depth20": lambda: dd.mlp(64, 10, width=64, depth=20, norm="layer", seed=0),
    "batchnorm_depth20": lambda: dd.mlp(64, 10, width=64, depth=20, norm="batch", seed=0),
    "functional_relu_custom": lambda: FunctionalMLP(depth=6),
    "functional_tanh_custom": lambda: FunctionalMLP(act=torch.tanh, depth=6),
    "default_init_shallow": lambda: dd.mlp(64, 10, width=64, depth=2, init="default", seed=0),
    "leaky_relu_depth30": lambda: dd.mlp(64, 10, width=64, depth=30, activation="leaky_relu", seed=0),
    "conv_net": lambda: dd.conv_net(1, 10, seed=0),
    "plain_cnn": lambda: small_cnn(),
}


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_controls_are_silent(name):
    torch.manual_seed(1)
    x, y = digits()
    if "conv" in name or "cnn" in name:
        x = x.reshape(-1, 1, 8, 8)
    model = HEALTHY[name]()
    report = checkup(model, x, y)
    assert warned(report) == set(), [str(f) for f in report.findings]
    surrogate = checkup(model, x)  # the surrogate loss must agree
    assert warned(surrogate) == set(), [str(f) for f in surrogate.findings]


# ---- checkup leaves the model exactly as it was ----

def test_checkup_restores_everything():
    torch.manual_seed(0)
    x, y = digits()
    model = dd.mlp(64, 10, width=32, depth=3, norm="batch", dropout=0.3, seed=0)
    model.train()
    model.hidden[1].eval()  # a mixed mode
    model.hidden[0].linear.weight.requires_grad_(False)
    model.out.weight.grad = torch.full_like(model.out.weight, 7.0)
    grad_obj = model.out.weight.grad
    calls = []
    model.hidden[2].register_forward_hook(lambda *a: calls.append(1))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    hooks = {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    checkup(model, x, y)
    checkup(model, x)
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
        assert p.requires_grad == flags[n], n
        assert p.grad is grads[n], n
    assert model.out.weight.grad is grad_obj and torch.all(grad_obj == 7.0)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for n, m in model.named_modules()} == hooks
    assert torch.equal(torch.get_rng_state(), rng)
    assert len(calls) == 2 + 2 * 3  # the user's own hook still runs (checkup's pass, three affinity passes)


# ---- stats match a plain reference computation ----

def test_stats_match_reference():
    torch.manual_seed(0)
    x, y = digits(64)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 10))
    report = checkup(net, x, y)
    rows = {r.name: r for r in report.rows}
    # reference: plain autograd
    z1 = net[0](x)
    z1.retain_grad()
    h1 = torch.relu(z1)
    z2 = net[2](h1)
    z2.retain_grad()
    h2 = torch.tanh(z2)
    z3 = net[4](h2)
    z3.retain_grad()
    F.cross_entropy(z3, y).backward()
    for name, z in (("0", z1), ("2", z2), ("4", z3)):
        r = rows[name]
        assert r.act_mean == pytest.approx(z.mean().item(), rel=1e-4, abs=1e-6)
        assert r.act_std == pytest.approx(z.std(unbiased=False).item(), rel=1e-4)
        assert r.signal_norm == pytest.approx(z.grad.pow(2).sum(1).mean().sqrt().item(), rel=1e-4)
        w = net[int(name)].weight
        assert r.grad_norm == pytest.approx(w.grad.norm().item(), rel=1e-4)
        assert r.grad_rel == pytest.approx((w.grad.norm() / w.norm()).item(), rel=1e-4)
        assert r.fan_in == w.shape[1] and r.fan_out == w.shape[0]
    assert rows["0"].in_rms == pytest.approx(x.pow(2).mean().sqrt().item(), rel=1e-4)
    assert rows["1"].frac_zero == pytest.approx((h1 == 0).float().mean().item())
    assert rows["1"].frac_dead == pytest.approx(((h1 > 0).sum(0) == 0).float().mean().item())
    assert rows["3"].frac_saturated == pytest.approx((z2.abs() > 3).float().mean().item())
    assert list(report.layers["name"]) == ["0", "1", "2", "3", "4"]  # forward order
    assert report.layers.loc[0, "init_scheme"] == "default"
    assert report.layers.loc[0, "init_std"] == pytest.approx(1 / math.sqrt(3 * 64))


def test_init_recognition_and_str():
    x, y = digits()
    he = checkup(dd.mlp(64, 10, width=64, depth=2, seed=0), x, y)
    assert set(he.layers[he.layers.kind == "weight"]["init_scheme"]) <= {"he"}
    xa = checkup(dd.mlp(64, 10, width=64, depth=2, activation="tanh", init="xavier", seed=0), x, y)
    assert "xavier" in xa.layers.loc[xa.layers.kind == "weight", "init_scheme"].iloc[1]
    text = str(he)
    assert "hidden.0.linear" in text and "no findings" in text
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(he)
    assert "hidden.1.linear" in console.export_text()


def test_checkup_argument_errors():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        checkup("model", torch.zeros(2, 2))
    with pytest.raises(TypeError, match="targets"):
        checkup(nn.Linear(2, 2), torch.zeros(2, 2), targets=[0, 1])


def _bad_entries(case: str) -> torch.Tensor:
    """Seeded tensors for the NaN/Inf count: bad entries on both sides of a chunk boundary, finite
    entries whose sum overflows (float32 and float16), complex and non-contiguous tensors."""
    from deepdiag.measure.io import CHUNK

    torch.manual_seed(0)
    if case == "chunks":
        t = torch.randn(2 * CHUNK + 3)
        t[[5, CHUNK - 1, CHUNK, 2 * CHUNK + 2]] = torch.tensor([float("nan"), float("inf"), -float("inf"), float("nan")])
        return t
    if case == "overflow":
        return torch.full((64,), 3e38)
    if case == "half_overflow":
        t = torch.full((4096,), 6e4, dtype=torch.float16)
        t[3] = float("inf")
        return t
    if case == "complex":
        t = torch.randn(4, 5, dtype=torch.complex64)
        t[1, 2] = complex(float("nan"), 0.0)
        return t
    t = torch.randn(6, 7)
    t[2, 3] = -float("inf")
    return t.t()  # non-contiguous


@pytest.mark.parametrize("case", ["chunks", "overflow", "half_overflow", "complex", "transposed"])
def test_nonfinite_count_matches_isfinite(case):
    from deepdiag.measure.io import _count_bad

    t = _bad_entries(case)
    assert _count_bad([t, torch.randn(3)]) == [int((~torch.isfinite(t)).sum()), 0]


@pytest.mark.parametrize("shape,bdim", [((8, 16, 5, 5), 0), ((6, 33), 0), ((7, 3, 10), 1), ((2, 4), 0)])
def test_batch_spread_matches_std(shape, bdim):
    from deepdiag.measure.recorder import _batch_spread

    torch.manual_seed(0)
    for scale in (1.0, 1e-30):  # 1e-30: squares below float32's range, still measured
        t = torch.randn(shape) * scale
        ref = t.double().std(dim=bdim).pow(2).mean().sqrt() / t.double().pow(2).mean().sqrt()
        torch.testing.assert_close(_batch_spread(t, bdim), ref, rtol=1e-6, atol=0)  # float32 centring
        same = t.narrow(bdim, 0, 1).expand_as(t) * 3.3  # every sample identical: exactly 0
        assert float(_batch_spread(same, bdim)) == 0.0


@pytest.mark.parametrize("case", ["conv", "transposed", "mean_dominated", "constant", "zeros", "half", "nan"])
def test_weight_summary_matches_float64(case):
    """std and Frobenius norm over all entries, against float64 (the one-pass formula, its two-pass
    fallback when the mean dominates, exact 0 for a constant weight)."""
    from deepdiag.measure.weights import weight_summary

    torch.manual_seed(0)
    w = {"conv": torch.randn(64, 32, 3, 3) * 0.05, "transposed": (torch.randn(30, 70) * 0.1).t(),
         "mean_dominated": 1 + 1e-4 * torch.randn(300, 200), "constant": torch.full((64, 64), 0.37),
         "zeros": torch.zeros(8, 8), "half": torch.randn(64, 64).half(),
         "nan": torch.tensor([[1.0, float("nan")], [2.0, 3.0]])}[case]
    std, norm = weight_summary(w)
    ref_std, ref_norm = float(w.double().std()), float(w.double().norm())
    if case == "nan":
        assert math.isnan(std) and math.isnan(norm)
    elif case in ("constant", "zeros"):
        assert std == 0.0 and norm == pytest.approx(ref_norm, rel=1e-5)
    else:
        assert std == pytest.approx(ref_std, rel=1e-4) and norm == pytest.approx(ref_norm, rel=1e-5)
