"""The training loop: mini-batch SGD (with momentum), Adam or AdamW, L2 or weight decay, early stopping.

One step on a batch B of the training set minimises::

    J_B = mean_{i∈B} loss(f(x_i), y_i) + λ/(2n)·Σ w²      (the L2 term only when l2=λ > 0)

``weight_decay`` is handed to the optimizer for the weights only (not biases or norm parameters), so
``l2=λ`` and ``weight_decay=λ/n`` take identical steps under plain SGD (see ``deepdiag.regularization``).

Everything random is seeded by ``seed``: the order of the mini-batches (a private generator) and the
dropout masks (the global RNG, forked so the caller's RNG state is left as it was). The same seed on
the same device gives bit-identical histories and weights.

No host synchronisation happens inside the step loop: batch losses stay on the device and are read
once per epoch. A run whose loss turns NaN or Inf is marked ``diverged`` (with the first such step)
and stopped at the end of that epoch instead of raising.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import nn

from ._validate import check_bool, check_choice, check_keys, check_number
from .jsonsafe import json_safe
from .regularization import l2_penalty, weight_parameters

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """Knobs of one training run. ``batch_size=None`` is full-batch gradient descent;
    ``patience=None`` trains all epochs (the best epoch is still recorded).

    ``clip_grad_norm=c`` rescales the gradient of all parameters together before each step so that its
    global L2 norm is at most c (``torch.nn.utils.clip_grad_norm_``); None leaves it alone.
    ``warmup_steps=k`` ramps the learning rate linearly over the first k optimizer steps: step s
    (1-based) uses lr·min(1, s/k); 0 starts at the full lr."""

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    batch_size: int | None = 64
    epochs: int = 10
    l2: float = 0.0
    weight_decay: float = 0.0
    patience: int | None = None
    restore_best: bool = False
    seed: int = 0
    eval_train: bool = True
    clip_grad_norm: float | None = None
    warmup_steps: int = 0

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: normalise in place)
        set_("optimizer", check_choice("optimizer", self.optimizer, OPTIMIZERS))
        set_("lr", float(check_number("lr", self.lr, low=0.0, low_inclusive=False)))
        set_("momentum", float(check_number("momentum", self.momentum, low=0.0, high=1.0, high_inclusive=False)))
        if self.batch_size is not None:
            set_("batch_size", check_number("batch_size", self.batch_size, low=1, integer=True))
        set_("epochs", check_number("epochs", self.epochs, low=1, integer=True))
        set_("l2", float(check_number("l2", self.l2, low=0.0)))
        set_("weight_decay", float(check_number("weight_decay", self.weight_decay, low=0.0)))
        if self.patience is not None:
            set_("patience", check_number("patience", self.patience, low=1, integer=True))
        set_("restore_best", check_bool("restore_best", self.restore_best))
        set_("seed", check_number("seed", self.seed, low=0, integer=True))
        set_("eval_train", check_bool("eval_train", self.eval_train))
        if self.clip_grad_norm is not None:
            set_("clip_grad_norm", float(check_number("clip_grad_norm", self.clip_grad_norm, low=0.0,
                                                      low_inclusive=False)))
        set_("warmup_steps", check_number("warmup_steps", self.warmup_steps, low=0, integer=True))

    @classmethod
    def coerce(cls, config) -> TrainConfig:
        """`config` as a TrainConfig: None gives the defaults, a mapping its keys (unknown keys named)."""
        if config is None or isinstance(config, cls):
            return cls() if config is None else config
        if isinstance(config, Mapping):
            return cls(**check_keys("config", config, [f.name for f in fields(cls)]))
        raise TypeError(f"config={config!r} must be a dd.TrainConfig, a dict of its fields or None, "
                        f"not {type(config).__name__}")


@dataclass
class History:
    """Per-epoch curves of one run and how it ended. ``train_loss``/``train_acc`` are measured on the
    whole training set in eval mode at the end of each epoch (``eval_train=True``); ``batch_loss`` is the
    mean of the mini-batch losses seen during the epoch (with dropout active, without the L2 term)."""

    epoch: list[int] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_loss: float = math.inf
    steps: int = 0
    wall_time: float = 0.0
    diverged: bool = False
    diverged_step: int | None = None
    stopped_early: bool = False

    def record_epoch(self, epoch: int, step_losses, train_loss: float, train_acc: float, val_loss: float,
                     val_acc: float, has_val: bool) -> None:
        """Append one epoch: its batch losses (a 1-d CPU tensor, one per step), the evaluations; update the
        best epoch (lowest finite val loss, or train loss without a validation split), the step count and,
        at the first non-finite batch loss, ``diverged`` / ``diverged_step`` (1-based)."""
        self.epoch.append(epoch)
        self.batch_loss.append(float(step_losses.mean()))
        self.train_loss.append(train_loss)
        self.train_acc.append(train_acc)
        self.val_loss.append(val_loss)
        self.val_acc.append(val_acc)
        score = val_loss if has_val else train_loss
        if math.isfinite(score) and score < self.best_val_loss:
            self.best_epoch, self.best_val_loss = epoch, score
        self.steps += len(step_losses)
        bad = (~torch.isfinite(step_losses)).nonzero()
        if len(bad) and not self.diverged:
            self.diverged, self.diverged_step = True, self.steps - len(step_losses) + int(bad[0]) + 1

    def to_frame(self):
        """The per-epoch curves as a pandas DataFrame, one row per epoch."""
        import pandas as pd

        cols = ("epoch", "batch_loss", "train_loss", "train_acc", "val_loss", "val_acc")
        return pd.DataFrame({c: getattr(self, c) for c in cols})

    def to_dict(self) -> dict:
        """JSON-safe dict (``deepdiag.jsonsafe``: non-finite floats become None)."""
        return json_safe(asdict(self))


def loss_kind(task: str, out_features: int) -> str:
    """Which loss fits these targets and outputs: "mse" for regression, "ce" (cross-entropy on logits) for
    classification with several output units, "bce" (BCE-with-logits) with one. The one place this
    choice is made: ``default_loss`` builds it, the vectorized engine computes it per member."""
    if task == "regression":
        return "mse"
    return "ce" if out_features > 1 else "bce"


def default_loss(task: str, out_features: int) -> nn.Module:
    """The loss module of ``loss_kind(task, out_features)``: ``dd.fit``'s default."""
    return {"mse": nn.MSELoss, "ce": _LastDimCrossEntropy, "bce": _BinaryLogitLoss}[loss_kind(task, out_features)]()


class _LastDimCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy with the classes on the last dimension of (batch, ..., classes) outputs and (batch,
    ...) targets (a token model's (batch, T, vocab) against (batch, T): ``dd.fit``'s convention, the one
    its accuracy uses), where torch's own reads dimension 1 as the classes. When both layouts fit the
    shapes (T = vocab), the last dimension wins, as in the accuracy; (batch, classes) outputs and
    torch-layout targets (batch, d1, ...) of (batch, C, d1, ...) outputs are torch's case unchanged."""

    def forward(self, logits, target):
        if logits.dim() > 2 and target.shape == logits.shape[:-1]:  # also when torch's layout would fit
            logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
        return super().forward(logits, target)


class _BinaryLogitLoss(nn.BCEWithLogitsLoss):
    """BCE-with-logits taking class ids (0/1) with a (batch, 1) logit, or float targets of the logits' shape."""

    def forward(self, logits, target):
        if logits.dim() == target.dim() + 1 and logits.shape[-1] == 1:
            logits = logits.squeeze(-1)
        return super().forward(logits, target.to(logits.dtype))


def accuracy_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions (a device tensor): argmax over the last (class) dimension for several
    outputs, logit > 0 for one. Outputs (batch, ..., classes) with targets (batch, ...) count every
    position (a token model's (batch, T, vocab) against (batch, T))."""
    pred = out.argmax(dim=-1) if out.shape[-1] > 1 else (out.squeeze(-1) > 0).long()
    if y.shape != pred.shape and y.numel() == pred.numel():  # (batch, 1) float targets of a BCE loss
        y = y.reshape(pred.shape)
    return (pred == y).sum()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module,
             classify: bool, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, accuracy) on (x, y) in eval mode, as device tensors (accuracy NaN for regression; over
    every position, y.numel() predictions, for outputs with positions). Assumes the loss is a per-batch
    mean, so chunk means are weighted by chunk size."""
    was_training = model.training
    model.eval()
    total, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), chunk):
        out = model(x[i:i + chunk])
        total += loss_fn(out, y[i:i + chunk]).double() * len(out)
        if classify:
            correct += accuracy_sum(out, y[i:i + chunk])
    model.train(was_training)
    acc = correct / y.numel() if classify else torch.full((), math.nan, device=x.device)
    return total / len(x), acc


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer, with weight decay on the weights only (see ``weight_parameters``)."""
    decay = weight_parameters(model)
    decay_ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in decay_ids]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=True)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=config.lr, foreach=True)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError("model has no parameters to train")
    return p.device, p.dtype


def _prepare(data, device, dtype, tokens: bool = False):
    """Training and validation tensors on the model's device; x in the model's dtype (integer x stays as
    it is for a model holding an embedding, whose inputs are token ids: `tokens`)."""
    def put(t, is_x):
        if t is None:
            return None
        t = torch.as_tensor(t).to(device)
        return t.to(dtype) if (is_x and not tokens) or t.is_floating_point() else t
    return (put(data.x_train, True), put(data.y_train, False),
            put(getattr(data, "x_val", None), True), put(getattr(data, "y_val", None), False))


def fit(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    *,
    loss_fn: nn.Module | None = None,
    on_step: Callable[[], None] | None = None,
    on_epoch: Callable[[History], None] | None = None,
    monitor=None,
    **overrides,
) -> History:
    """Train `model` in place on ``data`` (a ``deepdiag.data.Dataset`` or anything with ``x_train``,
    ``y_train`` and optionally ``x_val``, ``y_val``) and return its ``History``.

    Knobs come from `config` (a ``TrainConfig``) and/or keyword overrides, e.g.
    ``fit(model, ds, optimizer="adam", lr=1e-3, epochs=5)``. `loss_fn` defaults to cross-entropy for
    classification and MSE for regression. `on_step()` is called after every optimizer step (e.g.
    ``monitor.step``), `on_epoch(history)` after every epoch; a true return value stops training
    there (``history.stopped_early``), e.g. ``on_epoch=lambda h: h.train_acc[-1] == 1.0``.

    `monitor` (a ``dd.Monitor``, or anything with ``step(loss)`` and ``epoch(...)``) is fed
    ``monitor.step(loss)`` with the batch loss after every optimizer step and
    ``monitor.epoch(train_loss=, val_loss=, train_acc=, val_acc=)`` after every epoch; a Monitor built
    without an optimizer is handed fit's (its remedies then quote the lr and weight decay).

    With a `loss_fn`, the model may return (batch, ..., classes), e.g. a token model's (batch, T, vocab)
    with y of shape (batch, T); accuracy then counts every position.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    config = TrainConfig.coerce(config)
    if overrides:
        config = replace(config, **check_keys("fit's keyword arguments", overrides,
                                              [f.name for f in fields(TrainConfig)]))
    device, dtype = _model_device_dtype(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no trainable parameter (every requires_grad is False): fit would "
                         "change nothing; unfreeze some with p.requires_grad_(True)")
    _check_data(data)
    tokens = any(isinstance(m, nn.Embedding) for m in model.modules())  # integer ids stay integers
    x, y, x_val, y_val = _prepare(data, device, dtype, tokens=tokens)
    task = getattr(data, "task", "classification" if not y.is_floating_point() else "regression")
    classify = task == "classification"
    out_features = _output_width(model, x, positions=loss_fn is not None)
    if classify and loss_fn is None:  # a loss of the user's own may take other targets (soft labels)
        _check_classes(y, "data.y_train", out_features)
        if y_val is not None:
            _check_classes(y_val, "data.y_val", out_features)
    if loss_fn is None:
        loss_fn = default_loss(task, out_features)
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        return _loop(model, x, y, x_val, y_val, config, loss_fn, classify, on_step, on_epoch, monitor)


def _check_data(data) -> None:
    """data has x_train and y_train (and x_val with y_val) of matching lengths: errors name the field."""
    for name in ("x_train", "y_train"):
        if getattr(data, name, None) is None:
            raise TypeError(f"data={type(data).__name__} has no {name}: give a dd.data.Dataset or an object "
                            "with x_train, y_train (and optionally x_val, y_val)")
    for split in ("train", "val"):
        xs, ys = getattr(data, f"x_{split}", None), getattr(data, f"y_{split}", None)
        if (xs is None) != (ys is None):
            raise ValueError(f"data.x_{split} and data.y_{split} come together: one of them is None")
        if xs is not None and len(xs) != len(ys):
            raise ValueError(f"data.x_{split} has {len(xs)} rows but data.y_{split} has {len(ys)}: "
                             "they must have one target per input")
        if xs is not None and len(xs) == 0 and split == "train":
            raise ValueError("data.x_train is empty: fit needs at least one training example")


def _output_width(model: nn.Module, x: torch.Tensor, positions: bool = False) -> int:
    """The model's number of outputs (its last dimension), from one forward pass on x[:1] in eval mode:
    errors name what does not fit (the feature count, a tuple output). `positions`: outputs of shape
    (batch, ..., classes) are allowed (a loss of the user's own handles them)."""
    first = next((m for m in model.modules() if next(m.parameters(recurse=False), None) is not None), None)
    if isinstance(first, nn.Linear) and x.dim() == 2 and x.shape[1] != first.in_features:
        raise ValueError(f"data.x_train has {x.shape[1]} features per row but the model's first layer "
                         f"expects in_features={first.in_features}")
    was_training = model.training
    with torch.no_grad():
        try:
            out = model.eval()(x[:1])
        except RuntimeError as e:
            raise ValueError(f"the model cannot take data.x_train of shape {tuple(x.shape)}: {e}") from None
        finally:
            model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned a {type(out).__name__}, not a tensor: fit needs model(x) to "
                        "be a (batch, outputs) tensor; wrap it to return the logits")
    if out.dim() != 2 and not (positions and out.dim() > 2):
        raise ValueError(f"the model's output has shape {tuple(out.shape)}; fit needs (batch, outputs), "
                         "or (batch, ..., classes) with a loss_fn that takes them")
    return out.shape[-1]


def _check_classes(y: torch.Tensor, name: str, out_features: int) -> None:
    """Class targets for the default loss are integer ids in [0, out_features) (0/1 for one output)."""
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name} holds {y.dtype} values, but classification needs integer class ids "
                         "(e.g. y.long()); for real-valued targets use a regression data set "
                         "(task='regression')")
    if len(y) == 0:
        return
    classes = max(out_features, 2)  # one output unit: binary ids 0 and 1
    low, high = int(y.min()), int(y.max())  # host sync: once, before training
    if low < 0 or high >= classes:
        raise ValueError(f"{name} holds class ids from {low} to {high}, but the model has "
                         f"{out_features} output(s): ids must lie in [0, {classes - 1}]; "
                         "give the model one output per class")


def _loop(model, x, y, x_val, y_val, config, loss_fn, classify, on_step, on_epoch, monitor) -> History:
    n = len(x)
    batch = n if config.batch_size is None else min(config.batch_size, n)
    shuffle = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # the warm-up scales these
    if monitor is not None and getattr(monitor, "optimizer", False) is None:
        monitor.optimizer = optimizer  # a Monitor told nothing reads its remedy hints (lr, weight decay) here
    hist, best_state, start = History(), None, time.perf_counter()
    model.train()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, generator=shuffle).to(x.device)
        losses = []
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            loss = loss_fn(model(x[idx]), y[idx])
            if hist.steps == 0 and not losses and (not isinstance(loss, torch.Tensor) or loss.dim() != 0):
                raise ValueError(f"loss_fn returned {_shape_of(loss)}, not a scalar tensor: use a loss that "
                                 "averages over the batch (reduction='mean')")
            objective = loss + l2_penalty(model, config.l2, n) if config.l2 > 0 else loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if config.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm, foreach=True)
            step = hist.steps + len(losses) + 1  # 1-based
            if step <= config.warmup_steps:  # linear warm-up: lr·s/k, the full lr from step k on
                _set_lr(optimizer, base_lrs, step / config.warmup_steps)
            optimizer.step()
            losses.append(loss.detach())
            if monitor is not None:
                monitor.step(loss.detach())
            if on_step is not None:
                on_step()
        epoch_losses = torch.stack(losses).double().cpu()  # host sync: once per epoch
        _record(hist, model, epoch, epoch_losses, x, y, x_val, y_val, loss_fn, classify, config)
        if monitor is not None:
            monitor.epoch(train_loss=hist.train_loss[-1], val_loss=hist.val_loss[-1],
                          train_acc=hist.train_acc[-1], val_acc=hist.val_acc[-1])
        improved = hist.best_epoch == epoch
        if improved and config.restore_best:
            best_state = copy.deepcopy(model.state_dict())
        if on_epoch is not None and on_epoch(hist):
            hist.stopped_early = True
            break
        if hist.diverged:
            break
        if config.patience is not None and epoch - (hist.best_epoch or 0) >= config.patience:
            hist.stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    hist.wall_time = time.perf_counter() - start
    return hist


def _set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    """Every parameter group's lr = its base lr · factor (the linear warm-up)."""
    for group, lr in zip(optimizer.param_groups, base_lrs):
        group["lr"] = lr * factor


def _shape_of(value) -> str:
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _record(hist, model, epoch, epoch_losses, x, y, x_val, y_val, loss_fn, classify, config):
    """Append one epoch's row: evaluations stacked on the device and read in one host sync."""
    nan = torch.full((), math.nan, dtype=torch.float64, device=x.device)
    train = evaluate(model, x, y, loss_fn, classify) if config.eval_train else (nan, nan)
    val = evaluate(model, x_val, y_val, loss_fn, classify) if x_val is not None else (nan, nan)
    tl, ta, vl, va = torch.stack([t.double() for t in (*train, *val)]).tolist()  # host sync
    hist.record_epoch(epoch, epoch_losses, tl, ta, vl, va, x_val is not None)
