"""The vectorized engine's hand-written backward (fast path) against its autograd path and the local
engine: gradients of one step to float rounding, whole runs (parameters and histories) to <= 1e-5, for
every activation, SGD with and without momentum, L2, weight decay, Adam, AdamW, cross-entropy, MSE and
a member that diverges while the others train. Also: the replayed initialisation is build_model's."""
import dataclasses
import math

import pytest
import torch

import deepdiag.engines.vectorized as V
from deepdiag.engines.local import train_model
from deepdiag.runs import RunConfig, build_model, dataset
from deepdiag.train import _prepare

BASE = RunConfig(dataset="digits", n_train=200, width=16, depth=2, epochs=2, batch_size=32)  # last batch: 8
R = dataclasses.replace
TOL = 1e-5


def _members(base=BASE, **varying):
    """Configs with field lists zipped, e.g. _members(seed=[0, 1], lr=[0.1, 0.05])."""
    return [R(base, **dict(zip(varying, vals))) for vals in zip(*varying.values())]


TEACHER = R(BASE, dataset="teacher", n_train=100, lr=0.02)  # regression: MSE
GRIDS = {
    "relu_sgd_mixed_momentum": lambda: _members(seed=[0, 1, 2, 3], lr=[0.1, 0.05, 0.1, 0.02],
                                                momentum=[0.9, 0.9, 0.0, 0.5]),
    "relu_shared_knobs": lambda: _members(seed=[0, 1, 2], lr=[0.05] * 3, momentum=[0.9] * 3),
    "tanh_l2_wd": lambda: _members(seed=[0, 1, 2, 3], activation=["tanh"] * 4, l2=[0.0, 5.0, 0.0, 1.0],
                                   weight_decay=[0.0, 0.0, 0.01, 0.02], momentum=[0.9, 0.5, 0.0, 0.9]),
    "adam_l2_wd": lambda: _members(optimizer=["adam"] * 3, seed=[0, 1, 2], lr=[1e-3, 3e-3, 1e-2],
                                   weight_decay=[0.0, 0.01, 0.0], l2=[0.0, 0.0, 2.0]),
    "adam_shared_lr": lambda: _members(optimizer=["adam"] * 2, seed=[0, 1], lr=[3e-3] * 2),
    "adamw": lambda: _members(optimizer=["adamw"] * 3, seed=[0, 1, 2], lr=[1e-3, 3e-3, 3e-3],
                              weight_decay=[0.0, 0.1, 0.3], l2=[0.0, 0.0, 1.0]),
    "mse_momentum_l2": lambda: _members(TEACHER, seed=[0, 1, 2], momentum=[0.9, 0.9, 0.0], l2=[0.0, 1.0, 0.5]),
    "mse_one_diverges": lambda: _members(TEACHER, seed=[0, 1, 2], lr=[0.01, 0.8, 0.05], epochs=[4] * 3),
    "mse_nan_member": lambda: _members(TEACHER, seed=[0, 1, 2], lr=[0.02, 20.0, 0.05], momentum=[0.9] * 3,
                                       epochs=[3] * 3),  # member 1: NaN weights from step 3 of 4 in epoch 1
    "gelu_full_batch_depth3": lambda: _members(seed=[0, 1], activation=["gelu"] * 2, batch_size=[None] * 2,
                                               depth=[3, 3], lr=[0.1, 0.3]),
    "logistic_depth0": lambda: _members(seed=[0, 1], depth=[0, 0], lr=[0.1, 0.5], momentum=[0.9, 0.0]),
}


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= TOL * max(1.0, abs(b))  # absolute below 1, relative above (float32)


def _assert_run_matches(res, P, model, hist, what):
    ref = hist.to_dict()
    assert res.history["diverged_step"] == ref["diverged_step"] and res.history["steps"] == ref["steps"], what
    upto = len(ref["epoch"]) - 1 if hist.diverged else len(ref["epoch"])  # a diverged epoch is chaos
    for key in ("batch_loss", "train_loss", "val_loss", "train_acc", "val_acc"):
        assert len(res.history[key]) == len(ref[key]), (what, key)
        assert all(map(_same, res.history[key][:upto], ref[key][:upto])), (what, key, res.history[key], ref[key])
    if not hist.diverged:
        for name, p in model.named_parameters():
            torch.testing.assert_close(P[name], p.detach(), rtol=0, atol=TOL, msg=f"{what} {name}")


@pytest.mark.parametrize("grid", GRIDS)
def test_fast_path_equals_autograd_path_and_local(grid):
    configs = GRIDS[grid]()
    fast, fast_p = V.train_group(configs, return_params=True, fast=True)
    auto, auto_p = V.train_group(configs, return_params=True, fast=False)
    for config, rf, ra, pf, pa in zip(configs, fast, auto, fast_p, auto_p):
        run = train_model(config)
        model, hist = run.model, run.history
        _assert_run_matches(rf, pf, model, hist, "fast")
        _assert_run_matches(ra, pa, model, hist, "autograd")
    if grid == "mse_one_diverges":  # diverges at local's step, leaves the stack; the others train on
        assert [r.status for r in fast] == ["done", "diverged", "done"]
        assert fast[1].history["diverged_step"] == 5 and fast[1].history["epoch"] == [1, 2]
        assert all(len(r.history["epoch"]) == 4 for r in (fast[0], fast[2]))
    if grid == "mse_nan_member":
        assert [r.status for r in fast] == ["done", "diverged", "done"] and fast[1].history["diverged_step"] == 3
        assert not torch.isfinite(fast_p[1]["out.weight"]).all()
        assert all(torch.isfinite(p).all() for P in (fast_p[0], fast_p[2]) for p in P.values())


def _one_step(configs, fast, mask_seed=None):
    """(losses, S.grad) of one training step of the group on its first batch."""
    c0 = configs[0]
    ds = dataset(c0.dataset, c0.n_train, c0.data_seed)
    x, y, _, _ = _prepare(ds, torch.device("cpu"), torch.float32)
    kind = "mse" if ds.task == "regression" else "ce"
    S = V._Stack(configs, *V._initial_params(configs, ds), len(x), c0.optimizer)
    gen = torch.Generator().manual_seed(mask_seed or 0)
    mask = (lambda h: torch.rand(h.shape, generator=gen) >= V._per(S.p, h)) if mask_seed is not None else None
    order = torch.stack([torch.randperm(len(x), generator=torch.Generator().manual_seed(c.seed)) for c in configs])
    xb, target = next(V._batches(x, y, order, c0.batch_size, kind, fast, ds.out_features))
    if fast:
        loss = V._fast_step(S, xb, target, kind, c0.depth, c0.activation, mask)
    else:
        def loss_fn(P, xb, yb):
            drop = (lambda h: h * mask(h) / V._per(1 - S.p, h)) if mask else (lambda h: h)
            return V._member_loss(V._forward(P, xb, c0.depth, False, V.ACT_FORWARD[c0.activation], drop), yb, kind)
        loss = V._autograd_step(S, xb, target, loss_fn)
    return loss, S.grad.clone()


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "linear"])
@pytest.mark.parametrize("data", ["digits", "teacher"])
def test_fast_gradient_is_autograds(act, data):
    """One step's losses and gradients of every parameter of every member, to float rounding."""
    configs = _members(R(BASE, dataset=data, activation=act, depth=3), seed=[0, 1, 2])
    for mask_seed in (None, 7):  # without and with dropout (the same masks on both paths)
        if mask_seed is not None:
            configs = [R(c, dropout=p) for c, p in zip(configs, (0.2, 0.5, 0.1))]
        (lf, gf), (la, ga) = _one_step(configs, True, mask_seed), _one_step(configs, False, mask_seed)
        torch.testing.assert_close(lf, la, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(gf, ga, rtol=1e-5, atol=1e-7)
        assert ga.abs().sum() > 0


@pytest.mark.parametrize("fast", [True, False])
def test_a_nan_member_leaves_the_others_alone(fast):
    """One step of a stack whose member 1 has NaN weights: members 0 and 2 take the step they take
    without it (bmm, the per-row loss and the flat update ops are member-separable)."""
    configs = _members(seed=[0, 1, 2], lr=[0.05, 0.1, 0.02], momentum=[0.9, 0.5, 0.0], l2=[0.0, 1.0, 0.5])
    ds = dataset(BASE.dataset, BASE.n_train, BASE.data_seed)
    x, y, _, _ = _prepare(ds, torch.device("cpu"), torch.float32)
    order = torch.stack([torch.randperm(len(x), generator=torch.Generator().manual_seed(c.seed)) for c in configs])
    after = []
    for rows in ([0, 1, 2], [0, 2]):
        group = [configs[r] for r in rows]
        S = V._Stack(group, *V._initial_params(group, ds), len(x), "sgd")
        if len(rows) == 3:
            S.params["hidden.0.linear.weight"][1, 0, 0] = float("nan")
        def loss_fn(P, xb, yb):
            return V._member_loss(V._forward(P, xb, 2, False, torch.relu, lambda h: h), yb, "ce")

        xb, target = next(V._batches(x, y, order[rows], 32, "ce", fast, ds.out_features))
        for _ in range(2):  # the second step also runs the momentum buffer
            loss = V._fast_step(S, xb, target, "ce", 2, "relu", None) if fast else \
                V._autograd_step(S, xb, target, loss_fn)
            V._update(S)
        after.append((loss, S.split(S.flat)))
    (loss3, P3), (loss2, P2) = after
    assert torch.isnan(loss3[1])
    torch.testing.assert_close(loss3[[0, 2]], loss2, rtol=1e-6, atol=1e-7)
    for name, p in P3.items():
        assert torch.isnan(p[1]).any(), name
        torch.testing.assert_close(p[[0, 2]], P2[name], rtol=1e-6, atol=1e-7, msg=name)


def test_dropout_fast_path_equals_autograd_path():
    """Same mask draws in the same order: the two paths train the same runs (local only in distribution)."""
    configs = _members(seed=[0, 1, 2], dropout=[0.3, 0.1, 0.5], momentum=[0.9] * 3)
    fast, fast_p = V.train_group(configs, return_params=True, fast=True)
    auto, auto_p = V.train_group(configs, return_params=True, fast=False)
    for rf, ra, pf, pa in zip(fast, auto, fast_p, auto_p):
        assert all(map(_same, rf.history["batch_loss"], ra.history["batch_loss"]))
        for name in pa:
            torch.testing.assert_close(pf[name], pa[name], rtol=0, atol=TOL, msg=name)


CONFIGS_FOR_INIT = [
    R(BASE, width=8, depth=3), R(BASE, init="xavier", residual=True), R(BASE, init="orthogonal", depth=0),
    R(BASE, init="default", activation="leaky_relu"), R(BASE, init="normal", dtype="float64"),
    R(BASE, init="lecun", residual=True, width=64, dropout=0.2),
]


@pytest.mark.parametrize("config", CONFIGS_FOR_INIT, ids=lambda c: f"{c.init}-d{c.depth}-res{c.residual}-{c.dtype}")
def test_initial_params_are_build_models(config):
    """Replaying dd.mlp's draws per seed gives build_model's parameters bit for bit (and leaves the
    global RNG as it was)."""
    configs = [R(config, seed=s) for s in (0, 1, 17)]
    ds = dataset(config.dataset, config.n_train, config.data_seed)
    state = torch.random.get_rng_state()
    _, inits = V._initial_params(configs, ds)
    assert torch.equal(torch.random.get_rng_state(), state)
    for c, P in zip(configs, inits):
        ref = dict(build_model(c, ds).named_parameters())
        assert list(P) == list(ref)
        for name, p in ref.items():
            assert p.dtype == P[name].dtype and torch.equal(P[name], p.detach()), (c.init, name)


def test_flat_layout_and_knobs():
    """Parameter blocks tile the flat vector; a knob shared by all members is a float, else a vector
    holding each member's value on its own entries (weight decay on weights only)."""
    configs = _members(seed=[0, 1], lr=[0.1, 0.1], momentum=[0.9, 0.5], weight_decay=[0.0, 0.25])
    ds = dataset(BASE.dataset, BASE.n_train, BASE.data_seed)
    S = V._Stack(configs, *V._initial_params(configs, ds), 200, "sgd")
    assert S.flat.numel() == 2 * S.size == sum(p.numel() for p in S.params.values())
    assert S.neg_lr == -0.1 and isinstance(S.mom, torch.Tensor)
    mom, decay = S.split(S.mom), S.split(S.decay)
    assert (mom["out.bias"][0] == 0.9).all() and (mom["out.bias"][1] == 0.5).all()
    assert (decay["out.weight"][1] == 0.25).all() and (decay["out.weight"][0] == 0).all()
    assert (decay["out.bias"] == 0).all()
    S.keep([1])
    assert S.members == [1] and S.mom == 0.5 and S.flat.numel() == S.size


def test_fast_needs_a_plain_net():
    with pytest.raises(ValueError, match="fast=True"):
        V.train_group(_members(seed=[0, 1], residual=[True] * 2), fast=True)
    assert math.isfinite(V.train_group(_members(seed=[0, 1], residual=[True] * 2))[0][0].metrics["train_loss"])
