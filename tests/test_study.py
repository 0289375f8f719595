"""The study framework: schema, files, knob validation, verdicts computed from checks."""
import json
from dataclasses import dataclass

import pandas as pd
import pytest

import deepdiag as dd
from deepdiag import study as S


@dataclass(frozen=True)
class ToyConfig:
    a: float = 2.0
    steps: int = 10
    force_fail: bool = False
    label: str = "x"


def _measure(config, seeds):
    rows = [{"experiment": "toy", "seed": s, "value": config.a * (1 + 0.0 * s)} for s in seeds]
    measured = -1.0 if config.force_fail else config.a
    checks = [
        S.check_close("value", "value equals a", measured, config.a, rtol=1e-9),
        S.check_rule("count", "one row per seed", len(rows), len(seeds), "equal", len(rows) == len(seeds)),
    ]
    return S.Measurement(checks, pd.DataFrame(rows))


def _plot(result, folder):
    fig, (ax,) = dd.plots.figure()
    dd.plots.measured(ax, result.data["seed"], result.data["value"])
    return [dd.plots.save(fig, folder, "toy")]


TOY = S.register(S.Study("toy", claim='"a equals a"', theory="identity", config=ToyConfig,
                         quick={"steps": 2}, measure=_measure, plot=_plot))


def test_result_schema_and_files(tmp_path):
    result = dd.run_study("toy", quick=True, out=tmp_path, seeds=2)
    assert result.verdict == "reproduced" and result.passed == 2
    assert result.config["steps"] == 2 and result.seeds == [0, 1]
    folder = tmp_path / "toy"
    saved = json.loads((folder / "result.json").read_text())
    assert saved["verdict"] == "reproduced" and saved["checks"][0]["passed"] is True
    assert {"name", "claim", "measured", "expected", "rule", "passed", "tolerance"} <= set(saved["checks"][0])
    assert pd.read_csv(folder / "data.csv").shape == (2, 3)
    assert result.figures == ["toy.png"] and (folder / "toy.png").stat().st_size > 1000
    json.dumps(result.to_dict())  # JSON-safe with data


def test_forced_failure_gives_not_reproduced():
    assert dd.run_study("toy", quick=True, force_fail=True).verdict == "not reproduced"


def test_verdict_rules():
    ok = S.Check("a", "c", 1, 1, "r", True)
    bad = S.Check("b", "c", 1, 2, "r", False)
    unknown = S.Check("c", "c", float("nan"), 1, "r", None)
    assert S.verdict([ok, ok]) == "reproduced"
    assert S.verdict([ok, bad, unknown]) == "not reproduced"
    assert S.verdict([ok, unknown]) == "inconclusive"
    assert S.verdict([]) == "inconclusive"
    assert S.check_close("x", "c", float("nan"), 1.0, 0.1).passed is None
    assert S.check_rule("x", "c", float("nan"), 1.0, "r", True).passed is None


def test_unknown_knob_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown knob 'depth'.*a, steps, force_fail, label"):
        dd.run_study("toy", depth=3)


@pytest.mark.parametrize("bad", [dict(steps=1.5), dict(a="big"), dict(force_fail=1), dict(label=3)])
def test_knob_types_checked(bad):
    with pytest.raises(TypeError, match=next(iter(bad))):
        dd.run_study("toy", **bad)


def test_int_accepted_for_float_knob_and_seed_lists():
    result = dd.run_study("toy", a=3, seeds=[4, 7])
    assert result.seeds == [4, 7] and result.data["value"].tolist() == [3.0, 3.0]


@pytest.mark.parametrize("seeds", [0, [], [-1], "3"])
def test_bad_seeds(seeds):
    with pytest.raises((ValueError, TypeError), match="seeds"):
        dd.run_study("toy", seeds=seeds)


def test_unknown_study_lists_available():
    with pytest.raises(ValueError, match="unknown study 'nope'.*toy"):
        dd.run_study("nope")
    assert "toy" in dd.list_studies()


def test_str_shows_each_check():
    text = str(dd.run_study("toy", quick=True))
    assert "toy: reproduced (2/2 checks" in text and "[pass] value" in text
