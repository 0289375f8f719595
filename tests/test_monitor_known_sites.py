"""The Monitor's fast paths held to their references: the per-site measurement of known sites
(``Recorder._forward_known``) to the generic hook (``Recorder._forward``) on the same pass, and the
flat-buffer dead/saturated shares (``UnitWindows.bad_counts``, numerators over denominators) to each
window's ``bad_fraction``, the units-only passes of recorded steps whose row is dropped to full passes, and
the short path of ``Monitor.step`` between recorded steps to the hooks and checks it must leave in place."""
import math

import pytest
import torch
from torch import nn

from deepdiag.measure.history import UnitWindows
from deepdiag.measure.recorder import Recorder
from deepdiag.monitor import Monitor


class _Functional(nn.Module):
    """ReLU called as a function (units inferred at the next layer's input) and a LayerNorm on the path."""

    def __init__(self):
        super().__init__()
        self.a, self.n, self.b, self.c = nn.Linear(12, 16), nn.LayerNorm(16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.c(torch.relu(self.b(self.n(torch.relu(self.a(x))))))


MODELS = {
    "relu_mlp": lambda: nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)),
    "tanh_sigmoid": lambda: nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.Sigmoid(),
                                          nn.Linear(16, 3)),
    "functional_relu": _Functional,
    "conv": lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)),
}


def _input(name):
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 1, 6, 6, generator=g) if name == "conv" else torch.randn(32, 12, generator=g)


def _pass(model, rec, x):
    """One training forward/backward pass; rec.latest as plain values (tensors and numbers)."""
    rec.latest = {}
    model.zero_grad()
    model(x).square().mean().backward()
    return {i: dict(d) for i, d in rec.latest.items()}


@pytest.mark.parametrize("name", MODELS)
def test_known_site_measurement_matches_generic_hook(name):
    torch.manual_seed(0)
    model, x = MODELS[name](), _input(name)
    with Monitor(model) as mon:
        model(x).square().mean().backward()
        mon.step()  # discovery; from here on the known-site hooks measure
        rec = mon.rec
        assert rec._plans  # the fast path is in use
        fast = _pass(model, rec, x)
        rec.detach()  # every site's module, hooked by the generic measurement
        rec.hooks.add(model.register_forward_pre_hook(rec._root_pre))
        for m in {id(s.module): s.module for s in rec.sites}.values():
            rec.hooks.add(m.register_forward_hook(rec._forward))
        generic = _pass(model, rec, x)
    assert fast.keys() == generic.keys() and fast
    for i, d in generic.items():
        assert fast[i].keys() == d.keys(), rec.sites[i].name
        for k, v in d.items():
            same = torch.equal(fast[i][k], v) if isinstance(v, torch.Tensor) else fast[i][k] == v
            assert same, (rec.sites[i].name, k)


def _window_steps(widths, is_max, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        if is_max:  # per-unit maxima, some units never above 0
            yield [(i, {"unit_max": torch.randn(w, generator=g) - 1.5, "positions": 8}) for i, w in enumerate(widths)]
        else:
            yield [(i, {"unit_count": torch.randint(0, 9, (w,), generator=g), "positions": 8})
                   for i, w in enumerate(widths)]


CASES = {"relu_equal_widths": ((16, 16, 16), True), "relu_mixed_widths": ((16, 8, 5), True),
         "saturation_counts": ((16, 8), False)}


@pytest.mark.parametrize("case", CASES)
def test_bad_fractions_match_each_window(case):
    widths, is_max = CASES[case]
    units = UnitWindows(window=3)
    for k, items in enumerate(_window_steps(widths, is_max, 10)):
        if k == 4:  # a layer appears later: no previous window while the others have one
            items = items + [(9, {"unit_max": torch.zeros(4), "positions": 8} if is_max
                              else {"unit_count": torch.zeros(4, dtype=torch.long), "positions": 8})]
        elif k > 4:
            items = items + [(9, {"unit_max": torch.full((4,), 0.5), "positions": 8} if is_max
                              else {"unit_count": torch.full((4,), 8), "positions": 8})]
        units.add_all(items)
        got = {i: float(f) for indices, num, den in units.bad_counts()  # the Monitor divides them in float32
               for i, f in zip(indices, num / torch.tensor(den, dtype=torch.float32))}
        want = {i: float(w.bad_fraction()) for i, w in units.units.items()}
        assert got.keys() == want.keys()
        assert all(got[i] == want[i] or (math.isnan(got[i]) and math.isnan(want[i])) for i in want), (k, got, want)
        units.tick()


class _AlwaysFull(Recorder):
    """A Recorder that measures everything at every pass (the reference for passes without ``full``)."""

    full = property(lambda self: True, lambda self, value: None)


def _train_bits(name, every, always_full):
    """Statistics of 23 steps under a Monitor whose rows are decimated from the 4th kept one on."""
    torch.manual_seed(0)
    model, x = MODELS[name](), _input(name)
    y = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(model, every=every, capacity=4, window=3)
    if always_full:
        mon.rec.__class__ = _AlwaysFull
    for _ in range(23):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss)
    units = {i: w.counts().tolist() for i, w in mon._units.units.items()}
    out = (mon._buf.rows[:mon._buf.n].view(torch.int32).tolist(), mon._buf.loss.view(torch.int32).tolist(),
           list(mon._buf.steps), units, mon.recorded)
    mon.close()
    return out


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("name", MODELS)
def test_dropped_rows_measure_units_only_with_the_same_numbers(name, every):
    """A recorded step whose row decimation drops measures only the per-unit evidence (``Recorder.full``
    off): the kept rows, losses and unit windows are bit for bit those of a monitor measuring everything."""
    fast, full = _train_bits(name, every, False), _train_bits(name, every, True)
    assert fast == full
    assert len(fast[2]) < fast[4]  # rows were dropped (the case under test)


def test_steps_between_recorded_ones_keep_hooks_and_checks():
    """The short path of ``Monitor.step`` between recorded steps: the hooks go on at the step before each
    recorded one and off after it, and the automatic checks run every `check_every` steps."""
    torch.manual_seed(0)
    model, x = MODELS["relu_mlp"](), _input("relu_mlp")
    checked = []
    mon = Monitor(model, every=4, on_finding=lambda f: None, check_every=3)
    check = mon.check
    mon.check = lambda: checked.append(mon.steps) or check()
    for s in range(20):
        model.zero_grad()
        model(x).square().mean().backward()
        mon.step()
        assert bool(mon.rec.hooks) == (mon.steps % 4 == 0), s  # on for the next step exactly when recorded
    assert checked == [3, 6, 9, 12, 15, 18] and mon.steps == 20 and mon.recorded == 5
    mon.close()


@pytest.mark.parametrize("change", [None, "every", "on_finding", "no_zero_grad"])
def test_quiet_steps_leave_everything_as_the_full_path(change):
    """The short path of ``Monitor.step`` between recorded steps against a Monitor that takes the full path
    at every step (``_next_busy`` answering "now"): the same automatic checks, recorded steps, rows and
    losses bit for bit, first non-finite step and findings, with a NaN loss at a recorded step and with
    ``every`` or ``on_finding`` set by hand at step 5 (the quiet steps are planned again), and the
    gradient-reset probe's facts in a loop that never calls ``zero_grad()``."""
    def run(quiet: bool):
        torch.manual_seed(0)
        model, x = MODELS["relu_mlp"](), _input("relu_mlp")
        y = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(2))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        checked = []
        mon = Monitor(model, every=4, on_finding=None if change == "on_finding" else (lambda f: None), check_every=3)
        if not quiet:
            mon._next_busy = lambda: mon.steps
        check = mon.check
        mon.check = lambda: checked.append(mon.steps) or check()
        for s in range(40):
            if s == 5 and change == "every":
                mon.every = 2
            if s == 5 and change == "on_finding":
                mon.on_finding = lambda f: None
            loss = nn.functional.cross_entropy(model(x), y) * (float("nan") if s == 24 else 1.0)
            if change != "no_zero_grad":
                opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
        mon._fold_losses()
        out = (checked, mon.recorded, int(mon._bad_step), mon._buf.rows[:mon._buf.n].view(torch.int32).tolist(),
               mon._buf.loss.view(torch.int32).tolist(), list(mon._buf.steps), [f.code for f in mon.diagnose()],
               repr(mon._carry.facts()))  # (repr: NaN fields compare equal)
        mon.close()
        return out

    quiet, full = run(True), run(False)
    assert quiet == full
    assert quiet[0] and quiet[2] == 24  # checks ran, and the NaN step was found


def _forward_hooks(module):
    return len(module._forward_hooks)


def test_activations_without_units_are_not_hooked():
    """After discovery an activation without units (GELU) is not hooked (it measures nothing in a
    Monitor); the weight layers and the ReLU/Tanh units keep their hooks and their evidence."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16),
                          nn.GELU(), nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
    x = torch.randn(32, 12)
    with Monitor(model) as mon:
        for _ in range(3):
            model(x).square().mean().backward()
            mon.step()
        hooked = [_forward_hooks(m) > 0 for m in model]
        assert hooked == [True, True, True, True, True, False, True, True, False, True]
        acts = {s.name: s.index for s in mon.rec.sites if s.kind == "activation"}
        for name in ("1", "3", "7"):  # every unit activation still has its evidence
            assert mon._units.units[acts[name]].positions == 3 * 32


class _Route(nn.Module):
    """Linear → ReLU → Linear; with `flip`, the ReLU's output is negated before the second layer."""

    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)
        self.flip = False

    def forward(self, x):
        h = self.act(self.a(x))
        return self.b(-h if self.flip else h)


def test_unit_window_holds_the_activations_own_outputs_when_the_route_changes():
    """When the next layer's input stops being the activation's output (here negated), the window still
    holds the maxima of the ReLU's own outputs, over every pass."""
    torch.manual_seed(0)
    model, g = _Route(), torch.Generator().manual_seed(2)
    seen = []
    model.act.register_forward_hook(lambda m, a, out: seen.append(out.detach().amax(0)))
    with Monitor(model) as mon:
        for i in range(6):
            model.flip = i >= 3
            model(torch.randn(32, 12, generator=g)).square().mean().backward()
            mon.step()
        relu = next(s.index for s in mon.rec.sites if s.kind == "activation")
        w = mon._units.units[relu]
        assert _forward_hooks(model.act) == 2  # ours, and the test's
        assert w.positions == 6 * 32
        expected = torch.stack(seen).amax(0)
        assert torch.equal(w.current, expected)


def test_weight_norms_and_unit_shares_are_the_latest_readings_carried_forward():
    """A row's ‖W‖ is the norm at the latest weight snapshot (every UPDATE_EVERY recorded steps, and at
    once when a weight is replaced), and its dead-unit share the windows' ``bad_fraction`` at the latest
    reading: both exact, carried forward in between."""
    from deepdiag.monitor import STATS, UPDATE_EVERY

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(3)
    weights = [model[0], model[2], model[4]]
    norms, fracs = [], []
    with Monitor(model, capacity=1000, window=4) as mon:
        for step in range(2 * UPDATE_EVERY + 5):
            if step == 13:  # a weight replaced: read again at once
                model[2].weight = nn.Parameter(torch.randn(16, 16) * 0.3)
                opt = torch.optim.SGD(model.parameters(), lr=0.05)
            opt.zero_grad()
            model(torch.randn(32, 12, generator=g) - 1).square().mean().backward()
            opt.step()
            mon.step()
            norms.append([torch.linalg.vector_norm(m.weight.detach()) for m in weights])
            fracs.append({i: w.bad_fraction() for i, w in mon._units.units.items()})
        rows = mon._buf.rows[:mon._buf.n]
        sites = {s.index: s for s in mon.rec.sites}
    w_col, u_col = STATS.index("weight_norm"), STATS.index("unit_frac")
    w_sites = [i for i, s in sites.items() if s.kind == "weight"]
    read_w = read_u = 0
    for r in range(len(rows)):
        if r % UPDATE_EVERY == 0 or r == 13:
            read_w = r
        if r - read_u >= UPDATE_EVERY:
            read_u = r
        assert rows[r, w_sites, w_col].tolist() == torch.stack(norms[read_w]).tolist(), r
        for i, frac in fracs[read_u].items():
            assert rows[r, i, u_col].item() == frac.item(), (r, i)


def test_activation_whose_layers_are_replaced_by_wider_ones_restarts_its_evidence():
    """Layers replaced by wider ones mid-run: the ReLU between them now has more units, so its evidence
    restarts at the new width, with the width warning."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(32, 12)
    with Monitor(model) as mon:
        for step in range(6):
            if step == 3:
                model[0], model[2] = nn.Linear(12, 24), nn.Linear(24, 3)
            model(x).square().mean().backward()
            if step == 3:
                with pytest.warns(RuntimeWarning, match="changed width from"):
                    mon.step()
            else:
                mon.step()
        relu = next(s.index for s in mon.rec.sites if s.kind == "activation")
        assert mon._units.units[relu].current.shape == (24,) and mon._units.units[relu].positions == 3 * 32


class _Shifted(nn.Module):
    """Linear → ReLU6, its output shifted in place, → Linear: the next layer's input is the activation's
    output tensor, but not its values (ReLU6's backward reads its input, so autograd allows this)."""

    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = nn.Linear(12, 16), nn.ReLU6(), nn.Linear(16, 3)

    def forward(self, x):
        h = self.act(self.a(x))
        return self.b(h.sub_(0.5))


def test_activation_changed_in_place_before_the_next_layer_is_measured_before_the_change():
    torch.manual_seed(0)
    model, g = _Shifted(), torch.Generator().manual_seed(2)
    seen = []
    model.act.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone().amax(0)))
    with Monitor(model) as mon:
        for _ in range(4):
            model(torch.randn(32, 12, generator=g)).square().mean().backward()
            mon.step()
        relu = next(s.index for s in mon.rec.sites if s.kind == "activation")
        assert _forward_hooks(model.act) == 2
        assert torch.equal(mon._units.units[relu].current, torch.stack(seen).amax(0))
