"""Stacked weight layers with nothing nonlinear between them: measured by checkup (``measure.affine``), judged
by ``rules.depth.linear_network`` (underfitting, cause linear_network), fixed by the activation fix."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepdiag as dd
from deepdiag.measure.affine import affine_links


def mlp(act=nn.Identity):
    return nn.Sequential(nn.Linear(12, 32), act(), nn.Linear(32, 32), act(), nn.Linear(32, 3))


def cnn(act=nn.Identity):
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), act(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), act(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


class Composed(nn.Module):
    """Two Linear layers called one on the other in forward: no module stands between them."""

    def __init__(self, act=None):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(12, 32), nn.Linear(32, 3), act

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(self.act(h) if self.act else h)


class Parallel(nn.Module):
    """Two projections of the same input, summed: neither feeds the other (no pair to collapse)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(12, 3), nn.Linear(12, 3)

    def forward(self, x):
        return self.a(x) + self.b(x)


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.LSTM(12, 16, batch_first=True), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class Encoder(nn.Module):
    """Tokens -> nn.TransformerEncoderLayer (feed-forward activation `act`) -> mean -> Linear."""

    def __init__(self, act):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, activation=act, batch_first=True,
                                                dropout=0.0)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.layer(self.embed(x)).mean(dim=1))


def flat(n=64):
    return torch.randn(n, 12, generator=torch.Generator().manual_seed(1)), torch.randint(0, 3, (n,))


def image(n=64):
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(1)), torch.randint(0, 3, (n,))


def tokens(n=64):
    return torch.randint(0, 20, (n, 7), generator=torch.Generator().manual_seed(1)), torch.randint(0, 3, (n,))


CASES = {  # name: (model builder, batch, expected severity of the linear_network finding; None: none)
    "mlp_identity": (lambda: mlp(nn.Identity), flat, "warning"),
    "mlp_relu": (lambda: mlp(nn.ReLU), flat, None),
    "mlp_tanh": (lambda: mlp(nn.Tanh), flat, None),
    "mlp_gelu": (lambda: mlp(nn.GELU), flat, None),
    "single_linear": (lambda: nn.Linear(12, 3), flat, None),
    "cnn_identity": (lambda: cnn(nn.Identity), image, "warning"),
    "cnn_relu": (lambda: cnn(nn.ReLU), image, None),
    "lstm": (Recurrent, lambda: (torch.randn(64, 5, 12), torch.randint(0, 3, (64,))), None),
    "composed_in_forward": (Composed, flat, "warning"),
    "functional_relu": (lambda: Composed(F.relu), flat, None),
    "parallel_projections": (Parallel, flat, None),
    "low_rank_factorisation": (lambda: nn.Sequential(nn.Linear(12, 2), nn.Linear(2, 12)), flat, "info"),
    "transformer_linear_ffn": (lambda: Encoder(nn.Identity()), tokens, "warning"),
    # the last block's linear reaches the head through the residual stream only: one term of a sum
    "preact_residual_into_head": (lambda: dd.mlp(12, 3, width=32, depth=3, residual=True, seed=0), flat, "info"),
    "transformer_relu_ffn": (lambda: Encoder("relu"), tokens, None),
}


def linear_findings(report):
    return [f for f in report.findings if f.code == "underfitting" and f.evidence.get("cause") == "linear_network"]


@pytest.mark.parametrize("name", CASES)
def test_checkup_flags_collapsed_layers_only(name):
    build, batch, severity = CASES[name]
    torch.manual_seed(0)
    model, (x, y) = build(), batch()
    found = linear_findings(dd.checkup(model, x, y))
    assert [f.severity for f in found] == ([severity] if severity else []), [f.summary for f in found]
    if severity:
        assert found[0].evidence["max_deviation"] <= found[0].evidence["tolerance"]


def test_whole_linear_mlp_names_its_layers_and_a_fix_that_works():
    torch.manual_seed(0)
    model, (x, y) = mlp(nn.Identity), flat()
    f = linear_findings(dd.checkup(model, x, y))[0]
    assert f.evidence["whole_model"] and f.layers == ["0", "2", "4"]
    assert [(link["from"], link["to"]) for link in f.evidence["links"]] == [("0", "2"), ("2", "4")]
    assert f.fix == {"activation": "relu"}
    fixed, changes = dd.apply_fix(model, f.fix)
    assert [type(m) for m in fixed] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear], changes
    assert not linear_findings(dd.checkup(fixed, x, y))


def test_transformer_fix_fills_the_feed_forward_activation():
    torch.manual_seed(0)
    model, (x, y) = Encoder(nn.Identity()), tokens()
    f = linear_findings(dd.checkup(model, x, y))[0]
    assert not f.evidence["whole_model"] and f.evidence["tokens"]  # attention and LayerNorm stay nonlinear
    assert f.layers == ["layer.linear1", "layer.linear2"] and f.fix == {"activation": "relu"}
    fixed, _ = dd.apply_fix(model, f.fix)
    assert isinstance(fixed.layer.activation, nn.ReLU)
    assert not linear_findings(dd.checkup(fixed, x, y))


def test_no_fix_where_no_module_stands_between_the_layers():
    f = linear_findings(dd.checkup(Composed(), *flat()))[0]
    assert f.fix is None and "F.relu" in f.remedy


def test_a_weak_nonlinearity_is_not_round_off():
    """tanh at pre-activations of ~0.03 deviates from affine by ~z² ≈ 10⁻³ relative: far above the
    float32 tolerance (1.2·10⁻⁵), so it is a nonlinearity, not a linear network."""
    torch.manual_seed(0)
    model = mlp(nn.Tanh)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.1)
                m.bias.zero_()
    facts = affine_links(model, flat()[0])
    assert facts is not None and facts.judged == 3 and not facts.links


def test_affinity_passes_leave_the_model_as_it_was():
    torch.manual_seed(0)
    model = cnn(nn.Identity).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    facts = affine_links(model, image()[0])
    assert facts is not None and len(facts.links) == 2 and facts.whole_model  # conv→conv, conv→pool→head
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class CalledTwice(nn.Module):
    """One Linear called twice through its hooks and once by .forward, one called with a keyword."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(12, 12), nn.Linear(12, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.c(self.a(self.a(x)) + self.a.forward(x) + self.b(input=x))


@pytest.mark.parametrize("name", [*CASES, "called_twice"])
def test_skipped_products_match_computed_ones(name, monkeypatch):
    """Passes 2 and 3 skip the products of torch's weight layers (their output is replaced anyway): the
    facts are those of computing every product, to the bit, and no layer keeps a replaced forward."""
    from deepdiag.measure import affine

    build, data = (CalledTwice, flat) if name == "called_twice" else CASES[name][:2]
    x = data()[0]
    facts = []
    for skippable in (affine.SKIPPABLE, ()):
        monkeypatch.setattr(affine, "SKIPPABLE", skippable)
        torch.manual_seed(0)
        model = build()
        facts.append(affine_links(model, x))
        assert not any("forward" in vars(m) for m in model.modules())
    assert facts[0] == facts[1]


def test_activation_fix_keeps_an_identity_where_the_model_has_activations():
    """Only a model built without any activation gets its nn.Identity slots filled: elsewhere an Identity
    may be a deliberate linear bottleneck."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.Identity(), nn.Linear(32, 3))
    fixed, _ = dd.apply_fix(model, {"activation": "gelu"})
    assert [type(m) for m in fixed] == [nn.Linear, nn.GELU, nn.Linear, nn.Identity, nn.Linear]


@pytest.mark.parametrize("name", CASES)
def test_two_row_screen_gives_the_full_measurement(name, monkeypatch):
    """The passes run on ``SCREEN_ROWS`` rows first and on all rows only when the screen could miss a
    link: the links and the whole-model verdict are those of measuring all rows, and a network whose
    every chain is nonlinear is settled by the screen alone."""
    from deepdiag.measure import affine

    build, data, _ = CASES[name]
    x = data()[0]
    measured, results = [], []
    real = affine._measure
    monkeypatch.setattr(affine, "_measure", lambda *a: measured.append(a[-1]) or real(*a))
    for screen in (affine.SCREEN_ROWS, 10 ** 9):
        monkeypatch.setattr(affine, "SCREEN_ROWS", screen)
        torch.manual_seed(0)
        facts = affine_links(build(), x)
        results.append(None if facts is None else (facts.links, facts.whole_model, facts.activation_modules))
    assert results[0] == results[1]
    screened = measured[:-1] if measured else []  # the last call is the unscreened run's
    if name in ("single_linear", "lstm"):  # fewer than two weight layers: nothing measured
        assert measured == []
    elif name in SETTLED_BY_SCREEN:
        assert screened == [2] and not results[0][0]
    else:  # an affine input, or no layer fed by another (parallel projections): all 64 pairs measured
        assert screened == [2, 64]


SETTLED_BY_SCREEN = {"mlp_relu", "mlp_tanh", "mlp_gelu", "cnn_relu", "functional_relu", "transformer_relu_ffn"}
