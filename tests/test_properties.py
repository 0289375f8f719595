"""Property tests (Hypothesis) over the public constructors and ``--set`` parsing: any value given to one
argument is either accepted or refused with ValueError/TypeError whose message names that argument and
says what is allowed; never another exception type (IndexError, AttributeError, a torch RuntimeError)."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepdiag as dd
from deepdiag.cli import parse_sets, parse_value

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
ALLOWED_WORDS = ("must", "allowed", "expected", "options", "only", "give", "choose")

# values a user might pass by mistake: wrong types, out-of-range numbers, non-finite floats, numpy scalars
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["yes", "no", "relu", "he", "batch", "0", "", "RELU", "fan_in"]),
    st.lists(st.integers(-2, 8), max_size=3), st.tuples(st.integers(1, 4)), st.just({}),
    st.builds(np.int64, st.integers(-2, 40)), st.builds(np.float32, st.floats(-2, 2)),
    st.just(np.bool_(True)), st.just(object()), st.just(float("nan")),
)


def refused_properly(call, argument: str) -> None:
    """call() either succeeds or raises ValueError/TypeError naming `argument` and what is allowed."""
    try:
        call()
    except (ValueError, TypeError) as e:
        message = str(e)
        assert argument in message, f"{type(e).__name__} does not name {argument!r}: {message}"
        assert any(w in message for w in ALLOWED_WORDS), f"no allowed values in: {message}"


MLP_ARGS = ["in_features", "out_features", "width", "depth", "activation", "init", "dropout", "residual",
            "norm", "bias", "seed"]


@SETTINGS
@given(argument=st.sampled_from(MLP_ARGS), value=junk)
def test_mlp_arguments(argument, value):
    kwargs = {"in_features": 3, "out_features": 2, "width": 4, "depth": 1, argument: value}
    refused_properly(lambda: dd.mlp(**kwargs), argument)


@SETTINGS
@given(argument=st.sampled_from(["in_channels", "out_features", "channels", "activation", "init", "dropout",
                                 "norm", "seed"]), value=junk)
def test_conv_net_arguments(argument, value):
    kwargs = {"in_channels": 1, "out_features": 2, "channels": (2,), argument: value}
    refused_properly(lambda: dd.conv_net(**kwargs), argument)


@SETTINGS
@given(argument=st.sampled_from(["scheme", "gain", "bias_std", "std", "a", "distribution", "mode",
                                 "negative_slope", "value"]), value=junk,
       scheme=st.sampled_from(["he", "xavier", "normal", "uniform", "constant", "lecun", "orthogonal"]))
def test_init_weights_arguments(argument, value, scheme):
    model = dd.mlp(3, 2, width=4, depth=1)
    kwargs = {"scheme": scheme, argument: value}
    refused_properly(lambda: dd.init_weights(model, **kwargs), argument)


TRAIN_FIELDS = ["optimizer", "lr", "momentum", "batch_size", "epochs", "l2", "weight_decay", "patience",
                "restore_best", "seed", "eval_train"]


@SETTINGS
@given(argument=st.sampled_from(TRAIN_FIELDS), value=junk)
def test_train_config_fields(argument, value):
    refused_properly(lambda: dd.TrainConfig(**{argument: value}), argument)


RUN_FIELDS = ["dataset", "n_train", "data_seed", "val_fraction", "test_fraction", "noise", "label_noise",
              "random_labels", "standardize", "width", "depth", "activation", "init", "dropout", "residual",
              "norm", "optimizer", "lr", "momentum", "batch_size", "epochs", "l2", "weight_decay", "patience",
              "eval_train", "val_split", "stop_at_train_acc", "seed", "dtype", "device", "probes"]


@SETTINGS
@given(argument=st.sampled_from(RUN_FIELDS), value=junk)
def test_run_config_fields(argument, value):
    def build():
        config = dd.RunConfig(**{argument: value})
        assert len(config.hash) == 64  # whatever is accepted can be hashed into the store
    refused_properly(build, argument)


@SETTINGS
@given(argument=st.sampled_from(["lam", "n"]), value=junk)
def test_l2_penalty_arguments(argument, value):
    model = dd.mlp(3, 2, width=4, depth=1)
    kwargs = {"lam": 0.1, "n": 10, argument: value}
    refused_properly(lambda: dd.l2_penalty(model, **kwargs), argument)


@SETTINGS
@given(argument=st.sampled_from(["name", "n_train", "val_fraction", "test_fraction", "seed", "label_noise",
                                 "random_labels", "noise", "n_samples", "standardize"]), value=junk,
       name=st.sampled_from(["iris", "moons", "polynomial"]))
def test_data_load_arguments(argument, value, name):
    kwargs = {"name": name, argument: value}
    if argument == "n_samples" and isinstance(value, (int, np.integer)) and value > 200:
        return  # large generated sets are valid, just slow
    refused_properly(lambda: dd.data.load(**kwargs), argument)


DEFAULTS = [True, 3, 0.5, "relu", (0.9, 1.1), (1, 2), None]


@SETTINGS
@given(default=st.sampled_from(DEFAULTS), raw=st.text(max_size=12))
def test_set_value_parsing(default, raw):
    """--set KEY=VALUE parses to the knob's type or is refused naming the knob (never another error)."""
    try:
        value = parse_value("knob", raw, default)
    except (ValueError, TypeError) as e:
        assert "knob" in str(e) and any(w in str(e) for w in ALLOWED_WORDS), str(e)
        return
    if isinstance(default, float):
        assert isinstance(value, float) and math.isfinite(value)


@SETTINGS
@given(pair=st.text(max_size=16))
def test_set_pairs(pair):
    try:
        parse_sets([pair], ["vanishing"])
    except (ValueError, TypeError) as e:
        assert "--set" in str(e) or "knob" in str(e), str(e)


@pytest.mark.parametrize("value", [np.int64(8), np.int32(8), np.uint8(8)])
def test_numpy_integers_are_integers(value):
    model = dd.mlp(3, 2, width=value, depth=1)
    assert model.hidden[0].linear.out_features == 8
    assert dd.RunConfig(width=value).hash == dd.RunConfig(width=8).hash
