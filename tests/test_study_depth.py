"""depth study: quick run, identity construction, checks that can fail."""
import pytest
import torch

import deepdiag as dd
from deepdiag.studies import depth as D


def test_quick_run(tmp_path):
    r = dd.run_study("depth", quick=True, out=tmp_path)
    assert r.verdict == "reproduced", str(r)
    final = r.data[r.data.experiment == "final"].set_index(["family", "depth"])
    assert final.loc[("plain", 40), "train_err"] > 0.3 and final.loc[("residual", 40), "train_err"] < 0.05
    assert len(r.figures) == 3 and all((tmp_path / "depth" / f"{n}.png").exists()
                                       for n in ("depth_training", "depth_curves", "depth_identity"))


def test_identity_extension_exact():
    ds = dd.data.load("digits")
    net = dd.mlp(64, 10, width=16, depth=2, seed=0)
    dd.fit(net, ds, epochs=2, seed=0)
    deep = D.extend_with_identity(net, 8).eval()
    assert len(deep.hidden) == 10
    with torch.no_grad():
        assert torch.equal(deep(ds.x_train), net.eval()(ds.x_train))


def test_identity_check_fails_on_negative_inputs():
    # inserted on the standardised inputs (negative half the time) ReLU(I·x) != x: the check must fail
    r = dd.run_study("depth", quick=True, width=64, depths=(1, 2), epochs=1, identity_insert_at=0,
                     identity_deep=4)
    c = {k.name: k for k in r.checks}
    assert c["identity_outputs"].passed is False and r.verdict == "not reproduced"


def test_degradation_checks_can_fail():
    import pandas as pd
    cfg = D.Config()
    rows = [{"family": f, "depth": d, "seed": 0, "train_err": 0.01, "best_train_loss": 0.05}
            for f in ("plain", "residual") for d in cfg.depths]
    checks = D._depth_checks(cfg, pd.DataFrame(rows), [0])
    assert [c.passed for c in checks] == [False, False, False, True]
    assert D.identity_bound({4: 0.5, 20: 0.2, 40: 0.9}) == {4: 0.5, 20: 0.2, 40: 0.2}


@pytest.mark.parametrize("bad", [dict(depths=(4,)), dict(depths=(20, 4)), dict(lr=0.0), dict(threads=0)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        D.Config(**bad)


@pytest.mark.slow
def test_full_mode():
    assert dd.run_study("depth").verdict == "reproduced"
