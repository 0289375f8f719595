"""Layers whose weight is computed from other tensors (``torch.nn.utils.parametrizations.weight_norm`` /
``spectral_norm``, the old hook-based ``weight_norm``): measured from the tensors the weight is made of,
and never computed in a way that changes the run (a spectral norm in training mode advances its power
iteration whenever its weight is computed)."""
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as P

import deepdiag as dd
from deepdiag.measure.sites import weight_leaves
from deepdiag.monitor import STATS, Monitor


def _model():
    torch.manual_seed(0)
    return nn.Sequential(P.weight_norm(nn.Linear(20, 32)), nn.ReLU(), P.spectral_norm(nn.Linear(32, 32)),
                         nn.ReLU(), nn.Linear(32, 3))


def _train(model, mon=None, steps=25):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(32, 20, generator=g), torch.randint(0, 3, (32,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(loss)
    return model


def _state(model):
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]


def test_monitor_leaves_the_run_of_a_parametrized_model_unchanged():
    """With a Monitor that judges during training (on_finding every 5 steps reads the layers), the
    parameters and the spectral norm's power-iteration vectors end exactly as without it."""
    plain = _state(_train(_model()))
    model = _model()
    with Monitor(model, on_finding=lambda f: None, check_every=5) as mon:
        _train(model, mon)
        mon.diagnose()
    watched = _state(model)
    assert len(plain) == len(watched) and all(torch.equal(a, b) for a, b in zip(plain, watched))


def test_monitor_reads_gradients_and_updates_from_the_originals():
    """‖∂L/∂W‖ of a parametrized layer is the norm over its originals' gradients (weight_norm: g and v
    together); ‖ΔW‖ per step is measured (not None), as for a plain layer."""
    model = _model()
    with Monitor(model, capacity=1000) as mon:
        _train(model, mon)
        last = mon._buf.rows[mon._buf.n - 1]
        sites = [s for s in mon.rec.sites if s.kind == "weight"]
        for s in sites:
            leaves = weight_leaves(s.module)
            expected = math.sqrt(sum(float(torch.linalg.vector_norm(t.grad)) ** 2 for t in leaves))
            assert last[s.index, STATS.index("grad_norm")].item() == pytest.approx(expected, rel=1e-5), s.name
        rows = {r.name: r for r in mon.rows()}
    assert [len(weight_leaves(s.module)) for s in sites] == [2, 1, 1]  # g and v; original; the weight
    for s in sites:
        assert rows[s.name].grad_norm > 0 and rows[s.name].update_rel is not None and rows[s.name].trainable


def test_checkup_reads_parametrized_gradients_without_touching_the_model():
    model = _model()
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    before = _state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when .grad of a computed (non-leaf) weight is read
        report = dd.checkup(model, x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, _state(model)))
    grads = {r.name: r.grad_norm for r in report.rows if r.kind == "weight"}
    assert all(g is not None and g > 0 for g in grads.values()), grads


def test_old_hook_based_weight_norm_is_read_from_its_g_and_v():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        layer = torch.nn.utils.weight_norm(nn.Linear(4, 3))
    assert [tuple(t.shape) for t in weight_leaves(layer)] == [(3, 1), (3, 4)]
