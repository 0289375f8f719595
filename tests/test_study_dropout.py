"""dropout study: quick run, theory functions, checks that can fail."""
import math

import pytest
import torch
from torch import nn

import deepdiag as dd
from deepdiag.studies import dropout as D


def test_quick_run(tmp_path):
    r = dd.run_study("dropout", quick=True, out=tmp_path)
    c = {k.name: k for k in r.checks}
    # quick mode: 20 % wrong training labels provoke memorisation that dropout visibly hinders
    assert r.verdict == "reproduced", str(r)
    assert r.config["label_noise"] == 0.2
    final = r.data[r.data.experiment == "final"]
    assert final[final.p == 0].train_err.max() < 0.01  # no-dropout net memorises its training set, wrong labels too
    no_drop, drop = final[final.p == 0].val_err.mean(), final[final.p == 0.5].val_err.mean()
    assert 0.15 < no_drop < 0.3 and drop < no_drop - 0.03
    assert len(r.figures) == 3 and all((tmp_path / "dropout" / f"{n}.png").exists()
                                       for n in ("dropout_curves", "dropout_sweep", "dropout_scaling"))


def test_theory_closed_forms():
    h = torch.tensor([1.0, 2.0])
    assert torch.equal(D.dropout_mean(h, 0.3), h)
    assert torch.allclose(D.dropout_mean(h, 0.3, inverted=False), 0.7 * h)
    assert torch.allclose(D.dropout_variance(h, 0.5), h * h)
    assert D.dropout_zero_fraction(0.2) == 0.2
    mc = D.monte_carlo_moments(nn.Dropout(0.5), torch.ones(1000), 2000)
    assert abs(mc["mean_ratio"] - 1) < 4 * mc["mean_ratio_se"]
    assert abs(mc["var_ratio"] - 1) < 0.02 and abs(mc["zero_fraction"] - 0.5) < 0.01
    with pytest.raises(ValueError, match="p="):
        D.dropout_variance(h, 1.0)


class _Plain(nn.Module):  # dropout without the 1/(1-p) scale: the expectation check must fail
    def __init__(self, p):
        super().__init__()
        self.p, self.drop = p, nn.Dropout(p)

    def forward(self, x):
        return self.drop(x) * (1 - self.p)


def test_scaling_check_detects_plain_dropout():
    mc = D.monte_carlo_moments(_Plain(0.5), torch.ones(1000), 500)
    assert not math.isclose(mc["mean_ratio"], 1.0, abs_tol=4 * mc["mean_ratio_se"])


def test_sweep_checks_can_fail():
    import pandas as pd
    cfg = D.Config(ps=(0.0, 0.5, 0.9))
    rows = [{"p": p, "seed": s, "gap": 0.3, "val_err": 0.1, "train_err": 0.0} for p in cfg.ps for s in (0, 1)]
    checks = D._sweep_checks(cfg, pd.DataFrame(rows), 2)
    assert [c.passed for c in checks] == [False, False, False]


@pytest.mark.parametrize("bad", [dict(ps=(0.5, 0.9)), dict(p_moderate=0.3), dict(ps=(0.0, 1.0)),
                                 dict(p_large=0.2, ps=(0.0, 0.2, 0.5), p_moderate=0.5), dict(width=0)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        D.Config(**bad)


@pytest.mark.slow
def test_full_mode():
    assert dd.run_study("dropout").verdict == "reproduced"
