"""The run nouns: RunConfig's hash keeps old store keys, its training knobs are TrainConfig's, one loss choice."""
from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from deepdiag import runs
from deepdiag.runs import RunConfig
from deepdiag.train import TrainConfig, default_loss, loss_kind

# made on the code before RunConfig moved out of the driver (deepdiag.sweep): store keys of that time
SET = dict(dataset="moons", width=16, depth=2, lr=0.05, optimizer="adam", momentum=0.9, batch_size=None, patience=3,
           eval_train=False, val_split="test", label_noise=0.1, probes=("test_eval", "n_params"), seed=3, l2=1)
SET_HASH = "02751e258603380c04ddb5e8c5b96b3942dffaf45fa51ba21703a2d7146ec6ca"


def test_an_old_store_key_is_unchanged():
    assert RunConfig(**SET).hash == SET_HASH


def test_the_training_knobs_are_train_configs():
    """Every TrainConfig field but the fit-only ones (restore_best, clip_grad_norm, warmup_steps: a
    RunConfig that took them would change its hash) is a RunConfig field with TrainConfig's type and
    default, and train_config() hands every one of them over."""
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    run = {f.name: f for f in dataclasses.fields(RunConfig)}
    assert set(runs.TRAIN_FIELDS) == set(train) - {"restore_best", "clip_grad_norm", "warmup_steps"}
    for name in runs.TRAIN_FIELDS:
        assert (run[name].type, run[name].default) == (train[name].type, train[name].default), name
    changed = {"optimizer": "adamw", "lr": 0.3, "momentum": 0.5, "batch_size": 7, "epochs": 2, "l2": 0.1,
               "weight_decay": 0.01, "patience": 4, "seed": 9, "eval_train": False}
    assert set(changed) == set(runs.TRAIN_FIELDS)
    assert RunConfig(**changed).train_config() == TrainConfig(**changed)


def test_a_config_names_only_registered_probes():
    with pytest.raises(ValueError, match="probes"):
        RunConfig(probes=("no_such_probe",))
    assert "test_eval" in runs.PROBES  # the built-in probes register on import deepdiag


@pytest.mark.parametrize("task, out, kind, module", [
    ("regression", 1, "mse", torch.nn.MSELoss), ("classification", 10, "ce", torch.nn.CrossEntropyLoss),
    ("classification", 1, "bce", torch.nn.BCEWithLogitsLoss)])
def test_one_loss_choice(task, out, kind, module):
    assert loss_kind(task, out) == kind
    assert isinstance(default_loss(task, out), module)


def test_train_config_annotations_resolve():
    typing.get_type_hints(RunConfig)  # the annotations RunConfig shares with TrainConfig are real types
