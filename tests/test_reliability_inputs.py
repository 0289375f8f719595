"""Common mistakes at the public boundary are refused with ValueError/TypeError naming the argument,
instead of crashing inside deepdiag or torch (IndexError, AttributeError, a shape RuntimeError) or
being silently misread ("no" is a truthy string)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import deepdiag as dd


def digits():
    return dd.data.load("digits", n_train=40)


def small(out_features=10):
    return dd.mlp(64, out_features, width=8, depth=1, seed=0)


def data_with(**changes):
    ds = digits()
    fields = {"x_train": ds.x_train, "y_train": ds.y_train, "x_val": ds.x_val, "y_val": ds.y_val,
              "task": "classification"}
    return SimpleNamespace(**{**fields, **changes})


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(x), x


def frozen():
    model = small()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


FIT_MISTAKES = {  # id: (model factory, data factory, fit keywords, exception, words in the message)
    "x_y_lengths": (small, lambda: data_with(y_train=digits().y_train[:-3]), {}, ValueError,
                    ["data.x_train", "data.y_train", "40", "37"]),
    "val_lengths": (small, lambda: data_with(y_val=digits().y_val[:5]), {}, ValueError, ["data.y_val"]),
    "feature_count": (small, lambda: data_with(x_train=digits().x_train[:, :10]), {}, ValueError,
                      ["data.x_train", "10", "in_features=64"]),
    "float_classes": (small, lambda: data_with(y_train=torch.as_tensor(digits().y_train).float()), {},
                      ValueError, ["data.y_train", "integer class ids"]),
    "ids_beyond_outputs": (lambda: small(3), digits, {}, ValueError, ["data.y_train", "3 output"]),
    "non_scalar_loss": (small, digits, {"loss_fn": nn.CrossEntropyLoss(reduction="none")}, ValueError,
                        ["loss_fn", "scalar", "reduction"]),
    "config_unknown_key": (small, digits, {"config": {"learning_rate": 0.1}}, ValueError,
                           ["config", "learning_rate", "lr"]),
    "config_wrong_type": (small, digits, {"config": 0.1}, TypeError, ["config", "TrainConfig"]),
    "unknown_override": (small, digits, {"epoch": 2}, ValueError, ["epoch", "epochs"]),
    "all_frozen": (frozen, digits, {}, ValueError, ["requires_grad"]),
    "tuple_output": (TupleOut, digits, {}, TypeError, ["tuple", "tensor"]),
    "no_x_train": (small, lambda: SimpleNamespace(y_train=[0]), {}, TypeError, ["data", "x_train"]),
}


@pytest.mark.parametrize("case", FIT_MISTAKES)
def test_fit_mistakes_name_the_argument(case):
    make_model, make_data, kwargs, exc, words = FIT_MISTAKES[case]
    kwargs = {"epochs": 1, **kwargs} if "config" not in kwargs else kwargs
    with pytest.raises(exc) as info:
        dd.fit(make_model(), make_data(), **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_fit_accepts_config_as_a_mapping():
    """A dict of TrainConfig fields is what it looks like: the same run as the TrainConfig."""
    ds = digits()
    a = dd.fit(small(), ds, config={"lr": 0.05, "epochs": 2})
    b = dd.fit(small(), ds, config=dd.TrainConfig(lr=0.05, epochs=2))
    assert a.train_loss == b.train_loss


def test_fit_healthy_control_still_trains():
    hist = dd.fit(small(), digits(), epochs=2)
    assert len(hist.train_loss) == 2


@pytest.mark.parametrize("call, argument", [
    (lambda: dd.mlp(4, 2, bias="no"), "bias"),
    (lambda: dd.mlp(4, 2, residual="yes"), "residual"),
    (lambda: dd.TrainConfig(restore_best="no"), "restore_best"),
    (lambda: dd.TrainConfig(eval_train="false"), "eval_train"),
    (lambda: dd.data.load("iris", random_labels="no"), "random_labels"),
    (lambda: dd.mlp(4, 2, width=True), "width"),
    (lambda: dd.TrainConfig(epochs=np.bool_(True)), "epochs"),
], ids=["bias", "residual", "restore_best", "eval_train", "random_labels", "bool-width", "numpy-bool-epochs"])
def test_strings_and_bools_are_not_taken_for_each_other(call, argument):
    with pytest.raises(TypeError, match=argument):
        call()


def test_mlp_bias_false_builds_no_bias_and_numpy_sizes_work():
    model = dd.mlp(4, 2, width=np.int64(8), depth=np.int32(2), bias=False)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    assert model.hidden[0].linear.out_features == 8 and type(model.hidden[0].linear.out_features) is int
    assert dd.TrainConfig(epochs=np.int64(3)).epochs == 3 and type(dd.TrainConfig(epochs=np.int64(3)).epochs) is int


@pytest.mark.parametrize("gain", [-1, 0, -0.5, float("nan")])
def test_init_gain_must_be_positive(gain):
    with pytest.raises(ValueError, match="gain"):
        dd.init_weights(small(), "he", gain=gain)


def test_conv_net_names_in_channels():
    with pytest.raises(ValueError, match="in_channels"):
        dd.conv_net(0, 10)
    with pytest.raises(TypeError, match=r"channels\[1\]"):
        dd.conv_net(1, 10, channels=(4, "8"))
