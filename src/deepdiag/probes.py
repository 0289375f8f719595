"""Post-training probes: named measurements of a trained model, taken where it trained.

A run lists probes by name (``RunConfig(probes=("test_eval", "weight_norm"))``). The engine's worker
trains the run, then calls each probe on the trained model and stores what it returns with the result
(``RunResult.probes``, the store's ``result`` JSON); scalar values also become columns of the sweep
table. So a study needs neither the model nor the worker's memory back: only numbers travel, and a
resumed run keeps its measurements.

A probe is ``fn(model, ds, history, config) -> dict`` of JSON-safe values (numbers, strings, None, and
lists or dicts of them), where ``ds`` is the run's full ``deepdiag.data.Dataset`` (train, val and test
splits), ``history`` the ``dd.History`` of ``dd.fit`` and ``config`` the ``RunConfig``. Its keys name
table columns, so they must not repeat a config field, a metric or another probe's key. Register one
with ``@probe("name")`` (the registry, ``PROBES``, lives in ``deepdiag.runs`` so that a ``RunConfig``
can check the names it is given); the process, Dask and Ray workers only know the probes registered when
``deepdiag`` is imported (the built-in ones below).

============== ======================================================================================
probe          returns
============== ======================================================================================
test_eval      ``test_loss``, ``test_acc``: the test split in eval mode, with the loss ``dd.fit`` used
final_eval     ``final_train_loss/acc``, ``final_val_loss/acc``: for runs trained without per-epoch
               evaluation (``eval_train=False``, ``val_split=None``)
weight_norm    ``weight_norm``, ``weight_norm_init``: ‖w‖ over the weights (not biases), trained and at init
hidden_stats   ``z_rms``, ``z_spread``, ``nonlinearity``: the first hidden layer's pre-activations on the
               training split (see the l2 study)
n_params       ``n_params``: number of trainable parameters
curve_findings ``curve_findings``, ``chance_loss``: ``deepdiag.rules.judge`` findings (warning or worse) on the
               run's curves, with the chance loss of the training labels as the underfitting baseline
eval_determinism ``eval_max_diff``, ``train_max_diff``: two forward passes on 256 validation rows, in eval
               mode and (seeded by the run's seed) in training mode
first_hidden   ``first_hidden``: the first hidden block's eval-mode output on 32 validation rows (a list)
state_dict     ``state_dict``: every parameter and buffer as nested lists, to rebuild the trained model
============== ======================================================================================
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .jsonsafe import json_safe
from .regularization import weight_parameters
from .rules import Curves, judge
from .runs import FIELDS, METRICS, PROBES, build_model, probe
from .theory import chance_loss
from .train import default_loss, evaluate

RESERVED = ("hash", "status", "error", "wall_time", "engine")  # table columns besides fields and metrics
DETERMINISM_ROWS, HIDDEN_ROWS = 256, 32  # validation rows of eval_determinism and first_hidden


def run_probes(config, model: nn.Module, ds, history) -> dict[str, dict]:
    """Each of ``config.probes`` on the trained model, in order: {probe name: its dict}. A key that
    repeats a table column or another probe's key is a ValueError (the run is recorded as failed)."""
    taken = set(FIELDS) | set(METRICS) | set(RESERVED)
    out = {}
    for name in config.probes:
        values = PROBES[name](model, ds, history, config)
        _check_plain(name, values)  # the store writes JSON: a value that is not fails this run, not the sweep
        values = json_safe(values)
        clash = sorted(taken & set(values))
        if clash:
            raise ValueError(f"probe {name!r} returns key(s) {', '.join(map(repr, clash))} that another "
                             "probe or the sweep table already uses; rename them")
        taken |= set(values)
        out[name] = values
    return out


# ---------------------------------------------------------------------------------------- helpers

def _check_plain(name: str, value) -> None:
    """TypeError unless `value` is a dict of numbers, strings, None, numpy / torch values and lists or
    dicts of them: what ``json_safe`` writes without turning an object into its ``str()``."""
    if isinstance(value, dict):
        for v in value.values():
            _check_plain(name, v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(name, v)
    elif not (value is None or isinstance(value, (bool, int, float, str)) or hasattr(value, "tolist")):
        raise TypeError(f"probe {name!r} returned a value that is not JSON-safe ({type(value).__name__}); "
                        "return plain floats, ints, strings, lists or dicts")


def _evaluate(model: nn.Module, ds, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(loss, accuracy) of `model` on (x, y) in eval mode with the loss ``dd.fit`` picks for `ds`
    (accuracy NaN for regression)."""
    p = next(model.parameters())
    x = x.to(device=p.device, dtype=p.dtype)
    y = y.to(device=p.device, dtype=p.dtype) if y.is_floating_point() else y.to(p.device)
    classify = ds.task == "classification"
    loss, acc = evaluate(model, x, y, default_loss(ds.task, ds.out_features), classify)
    return float(loss), float(acc)


def _weight_norm(model: nn.Module) -> float:
    with torch.no_grad():
        return float(torch.stack([w.pow(2).sum() for w in weight_parameters(model)]).sum().sqrt())


def _rows(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = next(model.parameters())
    return x.to(device=p.device, dtype=p.dtype)


# ---------------------------------------------------------------------------------------- probes

@probe("test_eval")
def test_eval(model, ds, history, config) -> dict:
    """Loss and accuracy on the test split (eval mode)."""
    loss, acc = _evaluate(model, ds, ds.x_test, ds.y_test)
    return {"test_loss": loss, "test_acc": acc}


@probe("final_eval")
def final_eval(model, ds, history, config) -> dict:
    """Loss and accuracy on the whole training and validation splits once, after training: what a run
    trained without per-epoch evaluation (faster) is judged by."""
    (tl, ta), (vl, va) = (_evaluate(model, ds, x, y) for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val)))
    return {"final_train_loss": tl, "final_train_acc": ta, "final_val_loss": vl, "final_val_acc": va}


@probe("weight_norm")
def weight_norm(model, ds, history, config) -> dict:
    """‖w‖ = √Σw² over the weights (not biases or norm parameters), after training and at init (the
    initial model rebuilt from the run's seed)."""
    return {"weight_norm": _weight_norm(model), "weight_norm_init": _weight_norm(build_model(config, ds))}


@probe("hidden_stats")
@torch.no_grad()
def hidden_stats(model, ds, history, config) -> dict:
    """Spread and nonlinearity of the first hidden layer's pre-activations z = W₁x + b₁ on the training
    split: ``z_rms`` = RMS of z, ``z_spread`` = std over samples, RMS over units, ``nonlinearity`` =
    ‖act(z) − z‖/‖z‖ (NaN without a hidden layer or with z = 0)."""
    if not len(getattr(model, "hidden", ())):
        return {"z_rms": math.nan, "z_spread": math.nan, "nonlinearity": math.nan}
    layer = model.hidden[0]
    z = layer.linear(_rows(model, ds.x_train))  # (n, width)
    act = layer.act(z)
    z_rms = float(z.pow(2).mean().sqrt())
    spread = float(z.std(dim=0).pow(2).mean().sqrt())  # std over samples, RMS over units
    nonlin = float((act - z).norm() / z.norm()) if z_rms > 0 else math.nan
    return {"z_rms": z_rms, "z_spread": spread, "nonlinearity": nonlin}


@probe("n_params")
def n_params(model, ds, history, config) -> dict:
    return {"n_params": sum(p.numel() for p in model.parameters())}


@probe("curve_findings")
def curve_findings(model, ds, history, config) -> dict:
    """The curve findings of severity warning or error for the run (``deepdiag.rules.judge`` on each
    epoch's training and validation loss, as a ``dd.Monitor`` fed them would give), with the chance loss
    (entropy of the training labels' frequencies) as the underfitting baseline. Codes sorted and
    comma-joined ("none" when there are none)."""
    baseline = chance_loss(ds.y_train.cpu(), ds.out_features) if ds.task == "classification" else None
    n = min(len(history.train_loss), len(history.val_loss))
    findings = judge(curves=Curves([float(v) for v in history.train_loss[:n]],
                                   [float(v) for v in history.val_loss[:n]], baseline=baseline))
    codes = sorted({f.code for f in findings if f.severity in ("warning", "error")})
    return {"curve_findings": ",".join(codes) or "none", "chance_loss": baseline}


@probe("eval_determinism")
@torch.no_grad()
def eval_determinism(model, ds, history, config) -> dict:
    """Max |f(x) − f(x)| over two forward passes on the first 256 validation rows: in eval mode (0 when
    dropout is off at test time) and in training mode with the RNG seeded by the run's seed (> 0 with
    dropout). The model's state (batch-norm statistics) is restored after."""
    x = _rows(model, ds.x_val[:DETERMINISM_ROWS])
    state, was = copy.deepcopy(model.state_dict()), model.training
    model.eval()
    a, b = model(x), model(x)
    model.train()
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        c, d = model(x), model(x)
    model.load_state_dict(state)
    model.train(was)
    return {"eval_max_diff": float((a - b).abs().max()), "train_max_diff": float((c - d).abs().max())}


@probe("first_hidden")
@torch.no_grad()
def first_hidden(model, ds, history, config) -> dict:
    """The first hidden block's output in eval mode (dropout off) on the first 32 validation rows:
    (32, width) as nested lists, e.g. to push it through dropout many times."""
    was = model.training
    model.eval()
    h = model.hidden[0](_rows(model, ds.x_val[:HIDDEN_ROWS]))  # (32, width)
    model.train(was)
    return {"first_hidden": h.cpu().tolist()}


@probe("state_dict")
def state_dict(model, ds, history, config) -> dict:
    """Every parameter and buffer of the trained model as nested lists (exact: float32 and float64 values
    survive JSON), to rebuild it with ``load_state(build_model(config, ds), values)``."""
    return {"state_dict": {k: v.detach().cpu().tolist() for k, v in model.state_dict().items()}}


def load_state(model: nn.Module, values: dict) -> nn.Module:
    """Load a ``state_dict`` probe's lists into `model` (built from the same config), in place."""
    ref = model.state_dict()
    model.load_state_dict({k: torch.tensor(v, dtype=ref[k].dtype, device=ref[k].device) for k, v in values.items()})
    return model


__all__ = ["PROBES", "probe", "run_probes", "load_state"]
