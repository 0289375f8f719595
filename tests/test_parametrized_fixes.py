"""Fixes on layers whose weight is computed from other tensors (``torch.nn.utils.parametrizations``
weight_norm / spectral_norm / orthogonal, the old hook-based ``weight_norm`` / ``spectral_norm``): an
initialisation writes where the weight comes from (through the parametrization's ``right_inverse``), says
so when the parametrization keeps a scale of its own, and never touches the model it was given."""
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as P
from torch.nn.utils import parametrize

import deepdiag as dd
from deepdiag import surgery
from deepdiag.computed_weights import set_weight
from deepdiag.init import scheme_std
from deepdiag.measure.sites import read_weight

WRAPS = {
    "weight_norm": P.weight_norm,
    "old_weight_norm": nn.utils.weight_norm,
    "spectral_norm": P.spectral_norm,
    "old_spectral_norm": nn.utils.spectral_norm,
    "orthogonal": P.orthogonal,
}
SCALE_KEPT = ("spectral_norm", "old_spectral_norm", "orthogonal")


def _model(wrap: str, shrink: float = 1e-3) -> nn.Sequential:
    """Linear(20, 64) → ReLU → wrapped Linear(64, 64) → ReLU → Linear(64, 3), the hidden weights shrunk
    (a vanishing-signal init for the fixes to repair)."""
    torch.manual_seed(0)
    layers = [nn.Linear(20, 64), nn.Linear(64, 64), nn.Linear(64, 3)]
    with torch.no_grad():
        for layer in layers[:2]:
            layer.weight.mul_(shrink)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm is deprecated
        wrapped = WRAPS[wrap](layers[1])
    return nn.Sequential(layers[0], nn.ReLU(), wrapped, nn.ReLU(), layers[2])


def _row_std(w):
    return float(w.detach().std(dim=1, unbiased=False).median())


def _sigma_max(w):
    return float(torch.linalg.matrix_norm(w.detach(), ord=2))


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_init_he_writes_where_the_weight_comes_from(wrap):
    """init='he': a weight-normed layer computes with He's std (√(2/64) = 0.177) through its own g and v
    (the same Parameter objects, so an optimizer holding them still does); a spectral-normed or orthogonal
    layer's original is redrawn (the weight changes) and it keeps σ_max = 1, with a note saying so."""
    model = _model(wrap)
    params = {k: id(p) for k, p in model.named_parameters()}
    before = read_weight(model[2]).detach().clone()
    fixed, changes = dd.apply_fix(model, {"init": "he"})
    w = read_weight(fixed[2])
    assert not torch.equal(w, before)
    assert {k: id(p) for k, p in fixed.named_parameters()}.keys() == params.keys()
    notes = " ".join(changes.applied + changes.skipped)
    if wrap in SCALE_KEPT:
        assert abs(_sigma_max(w) - 1) < 0.02, _sigma_max(w)
        assert "2 computes its weight" in notes and "scale is its parametrization's" in notes
    else:
        assert abs(_row_std(w) / scheme_std("he", 64, 64) - 1) < 0.15, _row_std(w)
        assert "computes its weight" not in notes
    assert abs(_row_std(fixed[0].weight) / scheme_std("he", 20, 64) - 1) < 0.2  # the plain layer as before


@pytest.mark.parametrize("wrap", list(WRAPS))
def test_fixes_leave_the_given_model_as_it_was(wrap):
    """apply_fix works on a deep copy, and init='default' redraws a computed layer on a copy of that copy
    (the parametrization removed there): the model given still computes its weight, from the same
    tensors, and gives the same outputs. (A deep copy of a parametrized layer shares its class with the
    original, from which removing a parametrization deletes the weight's property.)"""
    model = _model(wrap)
    x = torch.randn(8, 20)
    model.eval()
    with torch.no_grad():
        out = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for scheme in ("he", "default", "lsuv"):
        dd.apply_fix(model, {"init": scheme}, inputs=x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(model(x), out)
    if wrap in ("weight_norm", "spectral_norm", "orthogonal"):
        assert parametrize.is_parametrized(model[2], "weight")
        assert isinstance(type(model[2]).__dict__.get("weight"), property)


@pytest.mark.parametrize("wrap", ["weight_norm", "old_weight_norm", "spectral_norm", "old_spectral_norm"])
def test_init_default_redraws_a_computed_layer_as_built(wrap):
    """init='default' on the shrunk model: the weight-normed layer gets torch's default draw back (row std
    of U(±1/√64): 1/√(3·64) = 0.072); a spectral-normed one is redrawn (its weight changes, σ_max stays 1)."""
    model = _model(wrap)
    before = read_weight(model[2]).detach().clone()
    fixed, changes = dd.apply_fix(model, {"init": "default"})
    w = read_weight(fixed[2])
    assert any("redrawn as their layers' library default" in a for a in changes.applied)
    assert not torch.equal(w, before)
    if wrap in SCALE_KEPT:
        assert abs(_sigma_max(w) - 1) < 0.02
    else:
        assert abs(_row_std(w) * math.sqrt(3 * 64) - 1) < 0.15, _row_std(w)


@pytest.mark.parametrize("wrap", ["weight_norm", "old_weight_norm", "spectral_norm"])
def test_lsuv_rescales_a_weight_normed_layer_and_leaves_a_spectral_one(wrap):
    """init='lsuv': a weight-normed layer's output variance is brought to 1 (through g); a spectral-normed
    layer stays orthogonal (σ_max 1, every singular value 1) and a note says it was not rescaled."""
    model = _model(wrap)
    x = torch.randn(256, 20)
    fixed, changes = dd.apply_fix(model, {"init": "lsuv"}, inputs=x)
    fixed.eval()
    with torch.no_grad():
        h = fixed[2](fixed[1](fixed[0](x)))
    notes = " ".join(changes.applied + changes.skipped)
    if wrap in SCALE_KEPT:
        s = torch.linalg.svdvals(read_weight(fixed[2]))
        assert float((s - 1).abs().max()) < 1e-3
        assert "2 computes its weight" in notes and "not rescaled" in notes
    else:
        assert abs(float(h.var(unbiased=False)) - 1) < surgery.LSUV_TOL + 0.02
        assert "computes its weight" not in notes


def test_order_lists_a_parametrized_layer_and_not_its_parametrizations():
    model = _model("weight_norm")
    names = surgery.order(model, torch.randn(4, 20))
    assert names == ["0", "1", "2", "3", "4"]
    assert surgery.output_layer(model, torch.randn(4, 20)) == "4"


def test_set_weight_reports_whether_the_layer_computes_with_it():
    """set_weight returns True when the layer now computes with exactly w (plain, weight norm) and False
    when the parametrization imposes its own scale (spectral norm)."""
    w = torch.randn(64, 64) * 0.3
    for wrap, exact in (("weight_norm", True), ("old_weight_norm", True), ("spectral_norm", False)):
        layer = _model(wrap)[2]
        assert set_weight(layer, w) is exact
        assert torch.allclose(read_weight(layer), w, rtol=1e-4) is exact
    plain = nn.Linear(64, 64)
    assert set_weight(plain, w) and torch.equal(plain.weight, w)


def test_resizing_a_computed_output_layer_says_it_becomes_plain():
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), P.weight_norm(nn.Linear(16, 3)))
    fixed, changes = dd.apply_fix(model, {"out_features": 5}, inputs=torch.randn(4, 20))
    assert fixed(torch.randn(4, 20)).shape == (4, 5)
    assert any("2: its weight was computed (WeightNorm)" in a for a in changes.applied), changes.applied
