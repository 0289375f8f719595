"""Pure rules (curves, depth) and the Finding contract; shared checks over every rule of the registry."""
import inspect
import json
import math

import pytest

import deepdiag as dd
from deepdiag.rules import ALL_RULES, Curves, judge_curves
from deepdiag.rules import curves as dg
from deepdiag.findings import CODES, at_least, sort_findings, worst

CORE = ("vanishing_gradients", "exploding_gradients", "vanishing_activations", "exploding_activations",
        "symmetric_units", "dead_units", "saturated_units", "overfitting", "underfitting", "divergence",
        "degradation")


# ---- Finding ----

def test_finding_contract():
    f = dd.Finding("dead_units", "warning", "Units died.", {"fraction": 0.75, "per_layer": (1.0, 2.0)},
                   "Use He init.", ["fc1"])
    assert f.evidence["per_layer"] == [1.0, 2.0]  # tuples become lists: JSON-safe
    json.dumps(f.to_dict())
    with pytest.raises(AttributeError):
        f.code = "x"  # frozen
    with pytest.raises(ValueError, match="severity"):
        dd.Finding("dead_units", "fatal", "", {}, "", [])
    infos = dd.Finding("symmetric_units", "info", "s", {}, "r", [])
    err = dd.Finding("divergence", "error", "s", {"loss": math.nan}, "r", [])
    assert [x.severity for x in sort_findings([infos, f, err])] == ["error", "warning", "info"]
    assert worst([infos, f]) == "warning" and worst([]) is None
    assert at_least([infos, f, err], "warning") == [f, err]
    assert err.evidence["loss"] is None  # deepdiag.jsonsafe: a non-finite number is null
    assert json.loads(json.dumps(err.to_dict(), allow_nan=False))["evidence"]["loss"] is None
    assert set(CORE) <= set(CODES)


# ---- overfitting ----

def test_overfitting_val_rises_while_train_falls():
    train = [1.0, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05]
    val = [1.0, 0.7, 0.6, 0.7, 0.75, 0.8, 0.9]
    (f,) = dg.overfitting(train, val)
    assert (f.code, f.severity, f.step) == ("overfitting", "warning", 3)
    assert f.evidence["best_epoch"] == 3 and f.evidence["best_val_loss"] == 0.6
    assert f.evidence["last_val_loss"] == 0.9 and f.evidence["gap"] == pytest.approx(0.85)
    assert "epoch 3" in f.remedy


@pytest.mark.parametrize("val", [
    [1.0, 0.7, 0.6, 0.62, 0.61, 0.63, 0.62],  # noise around the minimum: < 10 %
    [1.0, 0.7, 0.6, 0.5, 0.45, 0.44, 0.43],  # still improving
    [1.0, 0.7, 0.6, 0.5, 0.45, 0.7, 0.44],  # one bad epoch, not sustained
], ids=["noise", "improving", "spike"])
def test_overfitting_controls(val):
    train = [1.0, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05]
    assert [f for f in dg.overfitting(train, val) if f.severity != "info"] == []


def test_large_gap_without_rise_is_info():
    (f,) = dg.overfitting([1.0, 0.1, 0.01, 0.005], [1.2, 0.6, 0.5, 0.5])
    assert f.severity == "info"


# ---- underfitting ----

def test_underfitting_near_chance():
    (f,) = dg.underfitting([2.31, 2.30, 2.29, 2.29], baseline=math.log(10))
    assert (f.code, f.severity) == ("underfitting", "warning")
    assert f.evidence["baseline"] == pytest.approx(math.log(10))
    assert f.evidence["fraction_of_baseline"] == pytest.approx(2.29 / math.log(10))
    assert dg.underfitting([2.3, 1.2, 0.6, 0.3], baseline=math.log(10)) == []
    assert dg.underfitting([2.3, 2.3], baseline=math.log(10)) == []  # too early to tell
    assert dg.underfitting([2.3, 2.3, 2.3], baseline=None) == []
    (r,) = dg.underfitting([0.95, 0.94, 0.93], baseline=1.0)  # regression: Var(y) = 1
    assert r.evidence["best_train_loss"] == 0.93


# ---- divergence ----

def test_divergence_nan_and_blowup():
    (f,) = dg.divergence([1.0, 0.8, math.nan])
    assert (f.severity, f.step, f.evidence["first_nonfinite_epoch_train_loss"]) == ("error", 3, 3)
    (g,) = dg.divergence([1.0, 3.0, 12.0, 40.0])
    assert g.evidence["growth"] == pytest.approx(40.0) and g.severity == "error"
    (s,) = dg.divergence(step_loss=[1.0, 2.0, math.inf, math.nan], steps=[0, 10, 20, 30])
    assert s.evidence["first_nonfinite_step"] == 20 and s.step == 20
    assert dg.divergence([1.0, 0.5, 0.3]) == []
    # a spike that turned back down is not the error (tenfold and still rising); the climb is a warning
    assert [(x.severity, x.evidence.get("peak_epoch")) for x in dg.divergence([1.0, 15.0, 12.0])] == [("warning", 2)]
    assert dg.divergence([1.0, 15.0, 0.9]) == []  # ... and a run that recovered below its best is silent
    assert [x.code for x in judge_curves(Curves([1.0, math.nan], [1.0, math.nan]))] == ["divergence"]


# ---- degradation ----

def test_compare_depths_degradation():
    losses = {2: [1.0, 0.30, 0.10], 10: [1.2, 0.5, 0.15], 50: [2.3, 2.0, 1.8]}
    (f,) = dd.compare_depths(losses)
    assert (f.code, f.severity, f.layers) == ("degradation", "warning", ["depth=50"])
    assert f.evidence["depths"] == [2, 10, 50] and f.evidence["best_train_loss"] == [0.10, 0.15, 1.8]
    assert f.evidence["shallow_depth"] == 2 and f.evidence["deep_depth"] == 50
    assert f.evidence["degraded_pairs"] == [[2, 50], [10, 50]]  # 2 -> 10: +0.05 is within the margin
    assert "residual" in f.remedy and "'he'" in f.remedy
    (m,) = dd.compare_depths({2: 1.0, 10: 1.2})  # 20 % and 0.2 worse: both margins exceeded
    assert m.evidence["deep_loss"] == 1.2
    (r,) = dd.compare_depths(losses, residual=True)
    assert r.severity == "info"


def test_compare_depths_controls_and_errors():
    assert dd.compare_depths({2: 0.10, 10: 0.12}) == []  # within 0.05 absolute
    assert dd.compare_depths({2: 1.0, 10: 1.09}) == []  # within 10 % relative
    assert dd.compare_depths({2: 0.5, 10: 0.2, 20: 0.1}) == []  # deeper is better
    (d,) = dd.compare_depths({2: 0.3, 20: [math.nan, math.nan]})  # diverged deep net
    assert d.evidence["deep_loss"] is None  # +inf: no finite loss (JSON null)
    with pytest.raises(TypeError):
        dd.compare_depths([0.1, 0.2])
    with pytest.raises(ValueError, match="depth"):
        dd.compare_depths({"deep": 0.1})


# ---- shared checks over every rule ----

def test_the_registry_holds_every_rule():
    """A rule module's public functions that return findings are all in the registry (a new rule that
    is not registered is never run by judge and escapes the checks below)."""
    from deepdiag.rules import batches, curves, depth, io, layers, updates

    public = {f for m in (batches, curves, depth, io, layers, updates) for n, f in vars(m).items()
              if inspect.isfunction(f) and f.__module__ == m.__name__ and not n.startswith("_")
              and inspect.signature(f).return_annotation == "list[Finding]"}
    assert public == set(ALL_RULES)
    assert len(ALL_RULES) == 27  # 8 layer, 3 update, 5 input/output, 8 curve, 2 depth, 1 batch-order rules


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: r.__name__)
def test_every_rule_states_its_threshold_and_reason(rule):
    doc = inspect.getdoc(rule)
    assert doc and ("Why" in doc or "why" in doc), f"{rule.__name__} must say why its threshold is that number"


def test_every_finding_from_checkup_is_json_safe_and_specific():
    import torch

    torch.manual_seed(0)
    model = dd.mlp(4, 3, width=16, depth=30, init="normal", seed=0)
    report = dd.checkup(model, torch.randn(64, 4), torch.randint(0, 3, (64,)))
    assert report.findings
    for f in report.findings:
        assert f.code in CODES and f.summary.endswith(".") and f.remedy
        json.dumps(f.to_dict(), allow_nan=False)


def test_importing_the_rules_does_not_import_torch():
    """The rules are pure functions of Python numbers: neither they nor what they import (findings,
    measure.records) load torch. The package's own __init__ loads the public API (torch included), so
    the package is stubbed here to import the rules layer alone."""
    import pathlib
    import subprocess
    import sys

    path = str(pathlib.Path(dd.__file__).parent)
    code = (f"import sys, types; pkg = types.ModuleType('deepdiag'); pkg.__path__ = [{path!r}]; "
            "sys.modules['deepdiag'] = pkg; import deepdiag.rules, deepdiag.findings; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
