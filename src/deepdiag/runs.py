"""The run nouns every part of the run pipeline shares: a frozen ``RunConfig`` with a content hash, the
``RunResult`` of a finished run and its metrics, and the two things every engine and probe builds from a
config: its data set (``dataset_of``) and its initial model (``build_model``).

A run is a ``RunConfig``; its key in the results store is ``config.hash``: SHA-256 of the canonical JSON
of its fields (sorted keys, no spaces, floats as Python's shortest round-trip repr, ints in float fields
made floats), so the same run has the same key in every process and on every machine. Python's ``hash``
is salted per process and is never used.

The training knobs (optimizer, lr, ..., seed, eval_train) are ``dd.TrainConfig``'s fields: ``RunConfig``
takes their defaults from it and ``TrainConfig`` validates them. Post-training probes are registered here
by name (``PROBES``, ``probe``) so that a config can name them; the built-in ones are in
``deepdiag.probes``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ._validate import check_choice, check_number
from ._version import __version__
from .data import NAMES, REGRESSION, _check_args, load
from .models import ACTIVATIONS, INITS, NORMS, mlp
from .train import OPTIMIZERS, History, TrainConfig

DTYPES = ("float32", "float64")
DEVICES = ("cpu", "cuda")
VAL_SPLITS = ("val", "test")  # RunConfig.val_split: the split behind the per-epoch validation curve
STANDARDIZE = ("auto", "features", "pixels", "none")  # RunConfig.standardize ("none": raw values)
HASH_SCHEMA = "deepdiag.RunConfig/1"  # part of the hashed JSON: bump only when a field's meaning changes
_TRAIN = TrainConfig()  # the training knobs' defaults: RunConfig takes them from here (one source)

PROBES: dict[str, Callable] = {}  # probe name -> fn(model, ds, history, config) -> dict (see deepdiag.probes)


def probe(name: str):
    """Register ``fn(model, ds, history, config) -> dict`` as the probe `name` (see ``deepdiag.probes``)."""
    def register(fn: Callable) -> Callable:
        PROBES[name] = fn
        return fn
    return register


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on. Validated on construction; frozen; ``hash`` keys the store.

    Data: ``dd.data.load(dataset, n_train=n_train, seed=data_seed, val_fraction, test_fraction, noise,
    label_noise, random_labels, standardize)``. Model: ``dd.mlp(width, depth, activation, init, dropout,
    residual, norm, seed=seed)``. Training: ``dd.fit`` with the optimizer knobs and ``seed`` (mini-batch
    order and dropout masks); ``eval_train`` as in ``dd.TrainConfig``; ``val_split`` is the split behind
    the per-epoch validation curve ("val", "test", or None for none); ``stop_at_train_acc`` ends the run
    at the end of the first epoch whose training accuracy reaches it (needs ``eval_train``). ``probes``:
    names of ``deepdiag.probes`` measured on the trained model in the worker and stored with the result.

    The training knobs (``TRAIN_FIELDS``: optimizer ... seed, eval_train) are ``dd.TrainConfig``'s fields
    with its defaults (``_TRAIN``), validated by it (``train_config()``); their order here is the table's
    column order. The fields after schema 1 (``EXTENDED``) enter the hashed JSON only when they differ
    from their default, so a run hashed before they existed keeps its key.
    """

    dataset: str = "digits"
    n_train: int | None = None
    data_seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    noise: float | None = None
    label_noise: float = 0.0
    random_labels: bool = False
    standardize: str = "auto"
    width: int = 64
    depth: int = 3
    activation: str = "relu"
    init: str = "he"
    dropout: float = 0.0
    residual: bool = False
    norm: str | None = None
    optimizer: str = _TRAIN.optimizer
    lr: float = _TRAIN.lr
    momentum: float = _TRAIN.momentum
    batch_size: int | None = _TRAIN.batch_size
    epochs: int = _TRAIN.epochs
    l2: float = _TRAIN.l2
    weight_decay: float = _TRAIN.weight_decay
    patience: int | None = _TRAIN.patience
    eval_train: bool = _TRAIN.eval_train
    val_split: str | None = "val"
    stop_at_train_acc: float | None = None
    seed: int = _TRAIN.seed
    dtype: str = "float32"
    device: str = "cpu"
    probes: tuple = ()

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: normalise in place)
        set_("dataset", check_choice("dataset", self.dataset, NAMES))
        if self.n_train is not None:
            check_number("n_train", self.n_train, low=1, integer=True)
        check_number("data_seed", self.data_seed, low=0, integer=True)
        self._check_data(set_)
        check_number("width", self.width, low=1, integer=True)
        check_number("depth", self.depth, low=0, integer=True)
        set_("activation", check_choice("activation", self.activation, ACTIVATIONS))
        set_("init", check_choice("init", self.init, INITS))
        check_number("dropout", self.dropout, low=0.0, high=1.0, high_inclusive=False)
        if not isinstance(self.residual, bool):
            raise TypeError(f"residual={self.residual!r} must be a bool")
        if self.norm is not None:
            set_("norm", check_choice("norm", self.norm, NORMS))
        set_("optimizer", check_choice("optimizer", self.optimizer, OPTIMIZERS))
        self.train_config()  # TrainConfig validates the training knobs (lr, momentum, batch size, ...)
        set_("dtype", check_choice("dtype", self.dtype, DTYPES))
        set_("device", check_choice("device", self.device, DEVICES))
        self._check_evaluation(set_)
        for name in ("dropout", "lr", "momentum", "l2", "weight_decay", "val_fraction", "test_fraction",
                     "label_noise"):  # 1 and 1.0 hash alike
            set_(name, float(getattr(self, name)))
        for name in ("n_train", "data_seed", "width", "depth", "batch_size", "epochs", "patience", "seed"):
            if getattr(self, name) is not None:  # numpy integers are accepted; the hash needs Python ints
                set_(name, int(getattr(self, name)))

    def _check_data(self, set_) -> None:
        """The data options, checked by the data module's own rules (errors name the option)."""
        if isinstance(self.standardize, bool):  # dd.data.load's True / False
            set_("standardize", "auto" if self.standardize else "none")
        set_("standardize", check_choice("standardize", self.standardize, STANDARDIZE))
        if not isinstance(self.random_labels, bool):
            raise TypeError(f"random_labels={self.random_labels!r} must be a bool")
        task = "regression" if self.dataset in REGRESSION else "classification"
        _check_args(self.dataset, task, self.n_train, self.val_fraction, self.test_fraction, self.data_seed,
                    self.label_noise, self.random_labels, self.noise, None)
        if self.noise is not None:
            set_("noise", float(self.noise))

    def _check_evaluation(self, set_) -> None:
        """eval_train, val_split, stop_at_train_acc and probes (names of ``deepdiag.probes.PROBES``)."""
        if not isinstance(self.eval_train, bool):
            raise TypeError(f"eval_train={self.eval_train!r} must be a bool")
        if self.val_split is not None:
            set_("val_split", check_choice("val_split", self.val_split, VAL_SPLITS))
        if self.stop_at_train_acc is not None:
            set_("stop_at_train_acc", float(check_number("stop_at_train_acc", self.stop_at_train_acc,
                                                         low=0.0, high=1.0, low_inclusive=False)))
            if not self.eval_train:
                raise ValueError(f"stop_at_train_acc={self.stop_at_train_acc!r} reads the training accuracy "
                                 "of each epoch: it needs eval_train=True")
        if isinstance(self.probes, str) or not isinstance(self.probes, (tuple, list)):
            raise TypeError(f"probes={self.probes!r} must be a tuple of probe names, e.g. ('test_eval',)")
        set_("probes", tuple(dict.fromkeys(check_choice("probes", p, PROBES) for p in self.probes)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def canonical_json(self) -> str:
        """The hashed text: sorted keys, compact separators, ASCII, the schema tag included; fields added
        after schema 1 only when they differ from their default (older runs keep their keys)."""
        d = {k: v for k, v in self.to_dict().items() if k not in EXTENDED or v != EXTENDED[k]}
        return json.dumps({"schema": HASH_SCHEMA, **d}, sort_keys=True,
                          separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    def data_options(self) -> dict[str, Any]:
        """Keyword arguments of ``dd.data.load`` for this run's data set."""
        return dict(n_train=self.n_train, seed=self.data_seed, val_fraction=self.val_fraction,
                    test_fraction=self.test_fraction, noise=self.noise, label_noise=self.label_noise,
                    random_labels=self.random_labels,
                    standardize=False if self.standardize == "none" else self.standardize)

    @property
    def hash(self) -> str:
        """SHA-256 hex digest of ``canonical_json()``: stable across processes and machines."""
        return hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        return cls(**{k: v for k, v in d.items() if k != "schema"})

    def model_kwargs(self) -> dict[str, Any]:
        return dict(width=self.width, depth=self.depth, activation=self.activation, init=self.init,
                    dropout=self.dropout, residual=self.residual, norm=self.norm)

    def train_config(self) -> TrainConfig:
        """The run's ``dd.TrainConfig``: its values of TrainConfig's fields (``TRAIN_FIELDS``)."""
        return TrainConfig(**{name: getattr(self, name) for name in TRAIN_FIELDS})


FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name in FIELDS)  # all but the fit-only
# knobs restore_best, clip_grad_norm, warmup_steps (RunConfig does not take them: its hash stays)
# fields added after schema 1, with their defaults: hashed only when set to something else
EXTENDED = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name in (
    "val_fraction", "test_fraction", "noise", "label_noise", "random_labels", "standardize", "eval_train",
    "val_split", "stop_at_train_acc", "probes")}
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "batch_loss", "best_epoch", "best_val_loss",
           "epochs_run", "steps", "diverged_step", "stopped", "stop_code", "stop_severity", "stop_step")


@dataclass
class RunResult:
    """How one run ended: status ``done`` / ``diverged`` / ``failed`` (with ``error``), its history
    (``History.to_dict()``), final metrics, wall time and the versions that produced it."""

    config: RunConfig
    status: str
    history: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    wall_time: float = 0.0
    versions: dict = field(default_factory=dict)
    engine: str = "local"
    probes: dict = field(default_factory=dict)  # probe name -> its dict (see deepdiag.probes)

    @property
    def hash(self) -> str:
        return self.config.hash

    def row(self) -> dict[str, Any]:
        """One table row: config columns, status, metrics, the probes' scalar values, error, wall time."""
        return {**self.config.to_dict(), "hash": self.hash, "status": self.status,
                **{m: self.metrics.get(m) for m in METRICS}, **self.probe_values(), "error": self.error,
                "wall_time": self.wall_time, "engine": self.engine}

    def probe_values(self) -> dict[str, Any]:
        """The probes' scalar values by key, in probe order (lists and dicts stay in ``probes``)."""
        return {k: v for out in self.probes.values() for k, v in out.items()
                if v is None or isinstance(v, (bool, int, float, str))}

    def to_history(self) -> History:
        """The run's ``dd.History`` rebuilt from its stored dict: values stored as None (NaN or Inf
        when measured) come back as NaN in the curves and Inf as ``best_val_loss``, as ``dd.fit`` had them."""
        nan = lambda v: math.nan if v is None else v  # noqa: E731
        h = dict(self.history)
        for key in ("batch_loss", "train_loss", "train_acc", "val_loss", "val_acc"):
            h[key] = [nan(v) for v in h.get(key, [])]
        h["best_val_loss"] = math.inf if h.get("best_val_loss") is None else h["best_val_loss"]
        names = {f.name for f in dataclasses.fields(History)}
        return History(**{k: v for k, v in h.items() if k in names})


def versions() -> dict[str, str]:
    """The versions recorded with every result."""
    return {"deepdiag": __version__, "torch": torch.__version__, "python": sys.version.split()[0]}


def metrics_from_history(h: dict, stop=None) -> dict[str, Any]:
    """Final-epoch metrics of a ``History.to_dict()`` (None where a value was not finite). `stop`: the
    ``Finding`` that ended the run early under ``sweep(stop_on=...)``, or None."""
    last = lambda k: h[k][-1] if h.get(k) else None  # noqa: E731
    return {"train_loss": last("train_loss"), "train_acc": last("train_acc"), "val_loss": last("val_loss"),
            "val_acc": last("val_acc"), "batch_loss": last("batch_loss"), "best_epoch": h.get("best_epoch"),
            "best_val_loss": h.get("best_val_loss"), "epochs_run": len(h.get("epoch", [])),
            "steps": h.get("steps"), "diverged_step": h.get("diverged_step"),
            "stopped": stop is not None, "stop_code": getattr(stop, "code", None),
            "stop_severity": getattr(stop, "severity", None),
            "stop_step": None if stop is None or stop.step is None else stop.step + 1,
            **({"stop_finding": stop.to_dict(strict=True)} if stop is not None else {})}


def result_from_history(config: RunConfig, hist, wall_time: float, engine: str, stop=None,
                        probes: dict | None = None) -> RunResult:
    """A finished run; `stop` is the finding that stopped it early (``stop_on``), recorded in its metrics
    (``stopped``, ``stop_code``, ``stop_severity``, ``stop_step``, ``stop_finding``). The status stays
    ``done`` or ``diverged``. `probes`: the outputs of the config's probes."""
    d = hist.to_dict()
    return RunResult(config, "diverged" if hist.diverged else "done", d, metrics_from_history(d, stop),
                     None, wall_time, versions(), engine, probes or {})


# ------------------------------------------------------------------------------ a run's data and model

@functools.lru_cache(maxsize=16)
def dataset(name: str, n_train: int | None, data_seed: int, **options):
    """The data set of a run, loaded once per process (``Dataset`` tensors are never modified).
    `options`: the other keyword arguments of ``dd.data.load`` (``RunConfig.data_options``)."""
    return load(name, n_train=n_train, seed=data_seed, **options)


def dataset_of(config: RunConfig):
    """The run's full data set (train, val and test splits), with every data option of the config."""
    options = config.data_options()
    return dataset(config.dataset, options.pop("n_train"), options.pop("seed"), **options)


def check_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch.cuda.is_available() is False; use device='cpu'")
    return torch.device(device)


def build_model(config: RunConfig, ds) -> torch.nn.Module:
    """``dd.mlp`` for the run, initialised from ``config.seed``, on its device and dtype."""
    model = mlp(ds.in_features, ds.out_features, seed=config.seed, **config.model_kwargs())
    return model.to(device=check_device(config.device), dtype=getattr(torch, config.dtype))


__all__ = ["RunConfig", "RunResult", "FIELDS", "TRAIN_FIELDS", "EXTENDED", "METRICS", "PROBES", "probe",
           "metrics_from_history", "result_from_history", "versions", "dataset_of", "build_model"]
