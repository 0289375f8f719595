"""Diagnosis under bad input: NaN/Inf is its own error finding (and not read as exploding gradients),
``checkup`` names the argument for common mistakes, and the ``Monitor`` never breaks the user's loop."""
import gc
import math
import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import deepdiag as dd
from deepdiag.cli import app
from deepdiag.findings import CODES

runner = CliRunner()


def batch(n=64, features=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, 3, (n,), generator=g)


def model(seed=0):
    return dd.mlp(8, 3, width=16, depth=2, seed=seed)


def seq(seed=0, out=3):
    """A plain Sequential (layers by index): 8 -> 16 -> 16 -> out, He-initialised."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, out))
    return dd.init_weights(m, "he")


def hooks_on(m: nn.Module) -> int:
    """Hooks on the modules and on the parameters (tensor hooks)."""
    return sum(len(s._forward_hooks) + len(s._forward_pre_hooks) + len(s._backward_hooks)
               + len(s._backward_pre_hooks) for s in m.modules()) + sum(len(p._backward_hooks or ())
                                                                        for p in m.parameters())


# ------------------------------------------------------------------------------------ NaN and Inf

def test_nonfinite_values_is_a_code():
    assert "nonfinite_values" in CODES


@pytest.mark.parametrize("with_targets", [False, True], ids=["no-targets", "targets"])
def test_nan_input_is_an_error_and_nothing_else(with_targets):
    """One NaN in the batch: before, nothing was found (no targets) or it was called exploding gradients
    with the fix 'use He init' (targets)."""
    x, y = batch()
    x[3, 2] = math.nan
    report = dd.checkup(model(), x, y if with_targets else None)
    assert [f.code for f in report.findings] == ["nonfinite_values"]
    (f,) = report.findings
    assert f.severity == "error" and f.evidence["first_source"] == "inputs" and f.evidence["inputs"] == 1
    assert "input" in f.remedy and "init" not in (f.fix or {})


def test_inf_target_is_named():
    x, _ = batch()
    y = torch.randn(64, 1)
    y[0, 0] = math.inf
    report = dd.checkup(dd.mlp(8, 1, width=16, depth=2, seed=0), x, y)
    assert [f.code for f in report.findings] == ["nonfinite_values"]
    assert report.findings[0].evidence["first_source"] == "targets"


def test_nan_weight_names_its_layer():
    m = seq()
    with torch.no_grad():
        m[0].weight[0, 0] = math.nan
    x, y = batch()
    (f,) = dd.checkup(m, x, y).findings
    assert f.code == "nonfinite_values" and f.evidence["first_source"] == "weights" and f.layers == ["0"]


def test_a_non_finite_output_from_finite_data_keeps_the_other_findings():
    """Finite inputs and weights, an output that overflows: the output is named and the layer findings
    that explain it stay."""
    m = seq()
    with torch.no_grad():
        for layer in m:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(1e30)
    x, y = batch()
    report = dd.checkup(m, x, y)
    codes = [f.code for f in report.findings]
    assert "nonfinite_values" in codes and len(codes) > 1
    assert report.findings[codes.index("nonfinite_values")].evidence["first_source"] == "output"


def test_healthy_batch_has_no_nonfinite_finding():
    x, y = batch()
    assert "nonfinite_values" not in dd.checkup(model(), x, y).codes()


def test_check_fails_the_ci_gate_on_a_nan_batch(tmp_path):
    """`deepdiag check nan.py:build --fail-on warning` used to exit 0, "nothing looks wrong"."""
    (tmp_path / "nan.py").write_text(
        "import torch, deepdiag as dd\n"
        "def build():\n"
        "    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))\n"
        "    x[3, 2] = float('nan')\n"
        "    return dd.mlp(8, 3, width=16, depth=2, seed=0), x\n")
    result = runner.invoke(app, ["check", f"{tmp_path / 'nan.py'}:build", "--fail-on", "warning", "--json"])
    assert result.exit_code == 1, result.output
    assert "nonfinite_values" in result.stdout and "exploding_gradients" not in result.stdout


def test_monitor_names_a_nan_first_batch_and_not_divergence():
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = batch()
    x[0, 0] = math.nan
    with dd.Monitor(m, loss_fn=nn.CrossEntropyLoss()) as mon:
        for _ in range(5):
            loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
        found = mon.diagnose()
    assert [f.code for f in found] == ["nonfinite_values"]
    assert found[0].evidence["first_source"] == "inputs"


# ------------------------------------------------------------------------------ checkup arguments

@pytest.mark.parametrize("call, error, names", [
    (lambda m, x, y: dd.checkup(m, x[:0]), ValueError, "inputs"),
    (lambda m, x, y: dd.checkup(m, x, y, loss_fn=lambda o, t: 1.0), TypeError, "loss_fn"),
    (lambda m, x, y: dd.checkup(m, x, y, loss_fn=lambda o, t: nn.functional.cross_entropy(o, t).item()),
     TypeError, "loss_fn"),
    (lambda m, x, y: dd.checkup(m, x, y, loss_fn=nn.CrossEntropyLoss(reduction="none")), ValueError, "loss_fn"),
    (lambda m, x, y: dd.checkup(nn.Linear(8, 3, device="meta"), x), ValueError, "meta"),
    (lambda m, x, y: dd.checkup(m, x.tolist()), TypeError, "inputs"),
], ids=["empty-batch", "float-loss", "item-loss", "per-sample-loss", "meta-model", "list-inputs"])
def test_checkup_mistakes_name_the_argument(call, error, names):
    x, y = batch()
    with pytest.raises(error, match=names):
        call(model(), x, y)


def test_float64_model_with_float32_inputs_is_cast_with_a_note():
    x, y = batch()
    m = model().double()
    with pytest.warns(UserWarning, match="inputs are torch.float32.*float64"):
        cast = dd.checkup(m, x, y)
    same = dd.checkup(m, x.double(), y)
    assert cast.codes() == same.codes() and cast.loss == pytest.approx(same.loss, rel=1e-12)


# ---------------------------------------------------------------------------------------- Monitor

def train(m, mon, steps, x, y, loss_of=lambda out, y: nn.functional.cross_entropy(out, y), change=None):
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    for i in range(steps):
        if change is not None and i == steps // 2:
            opt = change(m)
        loss = loss_of(m(x), y)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        mon.step(loss)


def test_per_sample_loss_is_averaged_with_one_note():
    m = model()
    x, y = batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dd.Monitor(m) as mon:
            train(m, mon, 4, x, y, lambda out, y: nn.functional.cross_entropy(out, y, reduction="none"))
    notes = [w for w in caught if "reduction" in str(w.message)]
    assert len(notes) == 1
    losses = mon.history.steps["loss"]
    assert len(losses) == 4 and losses.notna().all()


def _widen(m):
    """Net2net-style growth of the first hidden layer in place: 16 -> 24 units."""
    with torch.no_grad():
        m[0].weight = nn.Parameter(torch.cat([m[0].weight, m[0].weight[:8]]))
        m[0].bias = nn.Parameter(torch.cat([m[0].bias, m[0].bias[:8]]))
        m[0].out_features = 24
        nxt = m[2]
        nxt.weight = nn.Parameter(torch.cat([nxt.weight, torch.zeros(nxt.weight.shape[0], 8)], dim=1))
        nxt.in_features = 24
    return torch.optim.SGD(m.parameters(), lr=0.05)


def _replace(m):
    m[0] = nn.Linear(8, 32)
    m[2] = nn.Linear(32, 16)
    return torch.optim.SGD(m.parameters(), lr=0.05)


@pytest.mark.parametrize("change", [_widen, _replace], ids=["widened-in-place", "replaced"])
def test_a_layer_changing_width_does_not_break_the_loop(change):
    m = seq()
    x, y = batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dd.Monitor(m) as mon:
            train(m, mon, 40, x, y, change=change)
            found = mon.diagnose()
    assert mon.steps == 40 and not mon.problems
    assert any("width" in str(w.message) or "replaced" in str(w.message) for w in caught)
    assert all(f.code != "stalled_updates" for f in found)  # the old layers are not "frozen"


def test_unclosed_monitors_do_not_accumulate_hooks():
    """50 monitors never closed used to leave 50 monitors' hooks on the model; an unreferenced one now
    releases its hooks when collected, and a second open one is warned about."""
    m = model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(50):
            dd.Monitor(m)
    gc.collect()
    assert hooks_on(m) == 0
    first = dd.Monitor(m)
    with pytest.warns(RuntimeWarning, match="already has 1 open Monitor"):
        second = dd.Monitor(m)
    assert hooks_on(m) == first.n_hooks + second.n_hooks
    first.close()
    second.close()
    assert hooks_on(m) == 0


def test_an_unwritable_log_dir_never_hides_the_users_exception(tmp_path):
    pytest.importorskip("tensorboard")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    m = model()
    with pytest.warns(RuntimeWarning, match="could not close"):
        with pytest.raises(KeyError, match="the user's own"):
            with dd.Monitor(m, log_dir=blocker / "logs"):
                raise KeyError("the user's own")
    assert hooks_on(m) == 0
    with pytest.raises(OSError, match="log_dir"):
        with dd.Monitor(m, log_dir=blocker / "logs"):
            pass
    assert hooks_on(m) == 0
