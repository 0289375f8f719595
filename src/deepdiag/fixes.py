"""A fix applied: ``apply_fix(model, fix)`` performs a ``Finding.fix`` (keys and meanings in
``deepdiag.findings.FIX_KEYS``) on a copy of the model, and resolves its training, loss and data keys.

Model keys are done by ``deepdiag.surgery`` on a deep copy, in this order: unfreeze, replace_output,
out_features, activation, norm, residual, init (the init last, so it covers layers the other keys added).
Training keys come back resolved in ``changes.train`` (``lr_factor`` becomes ``lr`` when the config or the
optimizer tells the current lr), applied to a given ``TrainConfig`` and to a new optimizer of the given
optimizer's class over the fixed model's parameters. The loss key names a loss ``make_loss`` builds; data
keys are performed by ``fix_data``.

>>> fixed, changes = dd.apply_fix(model, {"activation": "leaky_relu", "lr_factor": 0.1}, config=cfg)
>>> fit(fixed, fix_data(ds, changes), changes.config)
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from . import surgery
from ._validate import check_bool, check_choice, check_number
from .computed_weights import deepcopy_model
from .data import STD_FLOOR
from .findings import FIX_KEYS
from .jsonsafe import json_safe
from .train import OPTIMIZERS, TrainConfig, default_loss

# model keys, performed in this order
MODEL_KEYS = ("unfreeze", "replace_output", "out_features", "activation", "norm", "residual", "init")
TRAIN_KEYS = ("lr", "lr_factor", "warmup_steps", "batch_size", "clip_grad_norm", "weight_decay", "optimizer",
              "epochs")
DATA_KEYS = ("standardize_inputs", "standardize_targets", "target_range", "drop_disputed_labels")
LOSSES = {"cross_entropy": ("classification", 2), "bce_with_logits": ("classification", 1),
          "mse": ("regression", 1)}  # name -> the (task, outputs) whose default loss it is
OPTIMIZER_CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


# ---- checking a fix ---------------------------------------------------------------------------------------

def _number(key, value, integer=False, low=0.0, low_inclusive=False):
    return check_number(f"fix[{key!r}]", value, low=low, low_inclusive=low_inclusive, integer=integer)


CHECKS = {  # key -> its value checked and normalised (errors name fix['key'] and what is allowed)
    "init": lambda v: check_choice("fix['init']", v, surgery.INIT_SCHEMES),
    "activation": lambda v: check_choice("fix['activation']", v, surgery.ACTIVATIONS),
    "norm": lambda v: check_choice("fix['norm']", v, surgery.NORM_KINDS),
    "residual": lambda v: check_bool("fix['residual']", v),
    "replace_output": lambda v: check_choice("fix['replace_output']", v, ("identity",)),
    "out_features": lambda v: _number("out_features", v, integer=True, low=1, low_inclusive=True),
    "unfreeze": lambda v: _check_unfreeze(v),
    "lr": lambda v: float(_number("lr", v)),
    "lr_factor": lambda v: float(_number("lr_factor", v)),
    "warmup_steps": lambda v: _number("warmup_steps", v, integer=True, low=0, low_inclusive=True),
    "batch_size": lambda v: _number("batch_size", v, integer=True, low=1, low_inclusive=True),
    "clip_grad_norm": lambda v: float(_number("clip_grad_norm", v)),
    "weight_decay": lambda v: float(_number("weight_decay", v, low_inclusive=True)),
    "optimizer": lambda v: check_choice("fix['optimizer']", v, OPTIMIZERS),
    "epochs": lambda v: _number("epochs", v, integer=True, low=1, low_inclusive=True),
    "loss": lambda v: check_choice("fix['loss']", v, LOSSES),
    "standardize_inputs": lambda v: check_bool("fix['standardize_inputs']", v),
    "standardize_targets": lambda v: check_bool("fix['standardize_targets']", v),
    "target_range": lambda v: _check_range(v),
    "drop_disputed_labels": lambda v: check_bool("fix['drop_disputed_labels']", v),
}


def _check_unfreeze(v):
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return bool(v)
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)) or not all(isinstance(n, str) for n in v):
        raise TypeError(f"fix['unfreeze']={v!r} must be a list of layer names or True (every layer)")
    return list(v)


def _check_range(v):
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)) or len(v) != 2:
        raise TypeError(f"fix['target_range']={v!r} must be [low, high], two numbers")
    low, high = (float(check_number(f"fix['target_range'][{i}]", x)) for i, x in enumerate(v))
    if not low < high:
        raise ValueError(f"fix['target_range']={v!r} needs low < high")
    return [low, high]


def check_fix(fix) -> dict:
    """`fix` as a dict with every value checked and normalised; TypeError/ValueError name the key and what
    it allows (``FIX_KEYS``)."""
    if not isinstance(fix, Mapping):
        raise TypeError(f"fix={fix!r} must be a dict such as {{'init': 'he'}} (keys: {', '.join(FIX_KEYS)})")
    out = {}
    for key, value in fix.items():
        if key not in FIX_KEYS:
            raise ValueError(f"unknown fix key {key!r}; allowed keys: {', '.join(FIX_KEYS)}")
        out[key] = CHECKS[key](value)
    if "lr" in out and "lr_factor" in out:
        raise ValueError(f"fix gives both 'lr'={out['lr']} and 'lr_factor'={out['lr_factor']}: give one of them")
    return out


# ---- the result ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FixChanges:
    """What ``apply_fix`` did and what is left to the caller: `train` (training keys, lr_factor resolved to
    lr when the lr was known), `loss` (a ``make_loss`` name or None), `data` (data keys, for ``fix_data``),
    `config` (the given TrainConfig with the training keys applied), `optimizer` (a new optimizer over the
    fixed model's parameters), `applied` / `skipped` (no-ops and why) / `unreached` (what the model keys
    could not touch): one sentence each."""

    train: dict = field(default_factory=dict)
    loss: str | None = None
    data: dict = field(default_factory=dict)
    config: TrainConfig | None = None
    optimizer: torch.optim.Optimizer | None = None
    applied: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    unreached: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-safe: the optimizer as its class name, the config as a dict."""
        return json_safe({
            "train": self.train, "loss": self.loss, "data": self.data,
            "config": dataclasses.asdict(self.config) if self.config is not None else None,
            "optimizer": type(self.optimizer).__name__ if self.optimizer is not None else None,
            "applied": self.applied, "skipped": self.skipped, "unreached": self.unreached})


# ---- applying it -----------------------------------------------------------------------------------------

def apply_fix(model: nn.Module, fix: Mapping, *, optimizer: torch.optim.Optimizer | None = None,
              config: TrainConfig | Mapping | None = None, inputs=None) -> tuple[nn.Module, FixChanges]:
    """Perform `fix` (a ``Finding.fix``; keys in ``deepdiag.findings.FIX_KEYS``) on a deep copy of `model`;
    return (the fixed model, ``FixChanges``). `model`, `optimizer` and `config` are never modified.

    `inputs` (a batch the model takes: a tensor, a tuple of arguments or a dict of keyword arguments) is
    needed by ``init='lsuv'`` and makes the layer order the forward order (``deepdiag.surgery.order``).
    The new optimizer has `optimizer`'s class and hyper-parameters (or the class ``fix['optimizer']`` names,
    with lr and weight decay carried over) and fresh state; parameters it did not hold (new or unfrozen
    layers) form one more group with its defaults.

    >>> fixed, changes = dd.apply_fix(model, {"init": "he", "lr_factor": 0.1}, optimizer=opt)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    fix = check_fix(fix)
    config = None if config is None else TrainConfig.coerce(config)
    memo: dict = {}
    fixed = deepcopy_model(model, memo)  # memo: id(original object) -> its copy (the parameters' map)
    applied, skipped, unreached = [], [], []
    for key in MODEL_KEYS:
        if key in fix:
            _apply_model_key(fixed, key, fix[key], inputs, applied, skipped, unreached)
    train = {k: fix[k] for k in TRAIN_KEYS if k in fix}
    factor = train.get("lr_factor")
    if factor is not None and (config is not None or optimizer is not None):
        base = config.lr if config is not None else optimizer.param_groups[0]["lr"]
        train["lr"] = base * factor
        del train["lr_factor"]
    new_config = None if config is None else replace(config, **train)
    new_optimizer = None
    if optimizer is not None:
        new_optimizer = _rebuild_optimizer(optimizer, fixed, memo, fix, factor)
    for k, v in train.items():
        applied.append(f"{k}: {v}")
    data = {k: fix[k] for k in DATA_KEYS if k in fix}
    return fixed, FixChanges(train, fix.get("loss"), data, new_config, new_optimizer, applied, skipped,
                             list(dict.fromkeys(unreached)))


# key -> (edit(model, value, inputs) -> (what was done: names or a count, notes), the sentence when something
# was done, when nothing was, and where the notes go)
EDITS = {
    "replace_output": (lambda m, v, x: surgery.drop_output_activation(m, x),
                       "replace_output: {done} is now nn.Identity (the model returns raw outputs)",
                       "replace_output: no activation module follows the output layer", "unreached"),
    "out_features": (surgery.resize_output, "out_features: {done} now has {value} units (freshly initialised)",
                     "out_features: the output layer already has {value} units", "applied"),
    "activation": (surgery.swap_activations, "activation: {done} activation modules are now {value}",
                   "activation: no activation module other than {value} to replace", "unreached"),
    "norm": (surgery.insert_norms, "norm: {value} normalisation inserted as {done}",
             "norm: no hidden weight layer without a normalisation after it", "unreached"),
    "residual": (lambda m, v, x: surgery.wrap_residual(m, x), "residual: {done} now compute x + f(x)",
                 "residual: no shape-preserving block inside an nn.Sequential", "unreached"),
}


def _apply_model_key(model, key, value, inputs, applied, skipped, unreached) -> None:
    """Perform one model key on `model` (in place), appending sentences to the three lists."""
    if key == "unfreeze":
        if value is False or value == []:
            skipped.append(f"unfreeze: {value!r} names no layer")
            return
        thawed = surgery.unfreeze(model, value)
        (applied if thawed else skipped).append(
            f"unfreeze: requires_grad set on {len(thawed)} parameters ({', '.join(thawed[:4])}"
            f"{', ...' if len(thawed) > 4 else ''})" if thawed else "unfreeze: every named parameter is trainable")
    elif key == "residual" and not value:
        skipped.append("residual: False asks for nothing")
    elif key in EDITS:
        edit, did, nothing, notes_to = EDITS[key]
        done, notes = edit(model, value, inputs)
        if done:
            applied.append(did.format(value=value, done=", ".join(done) if isinstance(done, list) else done))
        else:
            skipped.append(nothing.format(value=value))
        (applied if notes_to == "applied" else unreached).extend(notes)
    elif key == "init":
        done, notes = surgery.reinit(model, value, inputs)
        if done:
            norms = [n for n in done if n.rsplit(".", 1)[-1] in ("weight", "bias") and _is_norm(model, n)]
            mats = len(done) - len(norms)
            if mats:
                applied.append(f"init: {mats} parameters redrawn as their layers' library default" if value == "default"
                               else f"init: {mats} weight matrices re-initialised with {value}, biases zero")
            if norms:
                applied.append(f"init: normalisation parameters back to scale 1 / shift 0: {', '.join(norms)}")
            applied += notes
        else:
            skipped += notes


def _is_norm(model: nn.Module, name: str) -> bool:
    layer = name.rpartition(".")[0]
    return isinstance(model.get_submodule(layer) if layer else model, surgery.NORM_LAYERS)


def _group_hyper(group: dict, same_class: bool, fix: dict, factor: float | None, params) -> dict:
    """A parameter group's hyper-parameters with the fix's lr and weight decay: lr set (fix['lr']) or
    multiplied (lr_factor, every group keeping its ratio); weight_decay set on groups holding weights (≥ 2-D
    parameters), groups of biases and norm parameters keep theirs."""
    hyper = {k: v for k, v in group.items() if k != "params"} if same_class else \
        {"lr": group["lr"], "weight_decay": group.get("weight_decay", 0.0)}
    if "lr" in fix:
        hyper["lr"] = fix["lr"]
    elif factor is not None:
        hyper["lr"] = hyper["lr"] * factor
    if "weight_decay" in fix and any(p.dim() >= 2 for p in params):
        hyper["weight_decay"] = fix["weight_decay"]
    return hyper


def _rebuild_optimizer(old: torch.optim.Optimizer, fixed: nn.Module, memo: dict, fix: dict,
                       factor: float | None) -> torch.optim.Optimizer:
    """`old`'s class (or fix['optimizer']'s) and groups over the fixed model's copies of its parameters."""
    cls = OPTIMIZER_CLASSES[fix["optimizer"]] if "optimizer" in fix else type(old)
    same = cls is type(old)
    present = {id(p) for p in fixed.parameters()}
    groups, covered = [], set()
    for g in old.param_groups:
        params = [memo[id(p)] for p in g["params"] if id(memo.get(id(p))) in present]
        covered |= {id(p) for p in params}
        if params:
            groups.append({"params": params, **_group_hyper(g, same, fix, factor, params)})
    rest = [p for p in fixed.parameters() if id(p) not in covered and p.requires_grad]
    defaults = _group_hyper(old.defaults, same, fix, factor, rest)
    if rest:
        groups.append({"params": rest, **defaults})
    return cls(groups, **defaults)


# ---- loss and data -----------------------------------------------------------------------------------------

def make_loss(name: str) -> nn.Module:
    """The loss a fix's "loss" names, as ``dd.fit`` uses it: cross_entropy (raw logits, class ids),
    bce_with_logits (one raw logit per sample with 0/1 ids, or float targets of the logits' shape), mse."""
    return default_loss(*LOSSES[check_choice("loss", name, LOSSES)])


def _standardize(xs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (ddof 0) of the training tensor per feature (dim 1 and every dimension after it pooled
    for an image: per channel); a std below STD_FLOOR becomes 1. Shapes broadcast against the tensor."""
    x = xs["train"].double()
    dims = [d for d in range(x.dim()) if d != 1] if x.dim() > 2 else [0]
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return mean, torch.where(std < STD_FLOOR, torch.ones_like(std), std)


def fix_data(data, changes: FixChanges | Mapping, *, disputed: torch.Tensor | None = None):
    """A new data object (``dd.data.Dataset`` or anything with x_train, y_train and optional x_val, y_val,
    x_test, y_test) with the data keys of `changes` (a ``FixChanges`` or a dict of data keys) performed; the
    statistics come from the training split and are applied to every split:

    standardize_inputs: x ← (x − mean)/std per feature (per channel for (n, C, ...) inputs);
    standardize_targets: y ← (y − mean)/std per column (float targets);
    target_range [low, high]: y ← low + (high − low)·(y − min)/(max − min), min and max of the training
    targets (binary targets such as ±1 become exactly low and high);
    drop_disputed_labels: the training samples where `disputed` (a boolean mask over the training split,
    from ``deepdiag.labels``: out-of-fold predictions of the same model and training) is true are removed.
    """
    keys = changes.data if isinstance(changes, FixChanges) else check_fix(changes)
    unknown = [k for k in keys if k not in DATA_KEYS]
    if unknown:
        raise ValueError(f"fix_data: {unknown[0]!r} is not a data key; data keys: {', '.join(DATA_KEYS)}")
    splits = [s for s in ("train", "val", "test") if getattr(data, f"x_{s}", None) is not None]
    if "train" not in splits or getattr(data, "y_train", None) is None:
        raise TypeError(f"data={type(data).__name__} has no x_train / y_train")
    new = {}
    if keys.get("drop_disputed_labels"):
        data = _without(data, disputed)
    if keys.get("standardize_inputs"):
        xs = {s: torch.as_tensor(getattr(data, f"x_{s}")) for s in splits}
        mean, std = _standardize(xs)
        new.update({f"x_{s}": ((x.double() - mean) / std).to(x.dtype if x.is_floating_point() else torch.float32)
                    for s, x in xs.items()})
    ys = {s: torch.as_tensor(getattr(data, f"y_{s}")) for s in splits if getattr(data, f"y_{s}", None) is not None}
    if keys.get("standardize_targets"):
        if not ys["train"].is_floating_point():
            raise ValueError("standardize_targets: the targets are class ids, not real values; it applies to "
                             "regression targets")
        mean = ys["train"].double().mean(dim=0, keepdim=True)
        std = ys["train"].double().std(dim=0, keepdim=True, unbiased=False)
        std = torch.where(std < STD_FLOOR, torch.ones_like(std), std)
        ys = {s: ((y.double() - mean) / std).to(y.dtype) for s, y in ys.items()}
        new.update({f"y_{s}": y for s, y in ys.items()})
    if "target_range" in keys:
        low, high = keys["target_range"]
        lo, hi = float(ys["train"].min()), float(ys["train"].max())  # host sync
        span = hi - lo if hi > lo else 1.0
        dtype = lambda y: y.dtype if y.is_floating_point() else torch.float32
        ys = {s: (low + (high - low) * (y.double() - lo) / span).to(dtype(y)) for s, y in ys.items()}
        new.update({f"y_{s}": y for s, y in ys.items()})
    return _replaced(data, new)


def _without(data, disputed):
    """`data` without the training samples where the mask `disputed` is true."""
    if disputed is None:
        raise ValueError("fix_data: 'drop_disputed_labels' needs disputed= (a boolean mask over the training "
                         "samples), e.g. from deepdiag.labels.disputed_samples(deepdiag.labels.out_of_fold(...), "
                         "data.y_train); dd.repair computes it")
    keep = ~torch.as_tensor(disputed, dtype=torch.bool)
    if keep.shape != (len(data.x_train),):
        raise ValueError(f"fix_data: disputed has shape {tuple(keep.shape)}; one entry per training sample "
                         f"({len(data.x_train)}) is needed")
    return _replaced(data, {"x_train": torch.as_tensor(data.x_train)[keep],
                            "y_train": torch.as_tensor(data.y_train)[keep]})


def _replaced(data, new: dict):
    """A copy of `data` with the attributes in `new` replaced (a dataclass through dataclasses.replace)."""
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.replace(data, **new)
    out = copy.copy(data)
    for k, v in new.items():
        setattr(out, k, v)
    return out
