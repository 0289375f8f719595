"""Mutation operators from the taxonomy of real deep-learning faults, and the codes each one accepts.

Each operator is a function ``(base Program) -> mutant Program | None`` (None: not applicable to
that base, e.g. an input-scaling fault on token ids). Where DeepCrime (ISSTA 2021) has the operator,
its name is given; the others are faults of the taxonomy (Humbatova et al., ICSE 2020) that DeepCrime
does not implement:

| DeepCrime operator | here |
| --- | --- |
| change_activation_function | act_sigmoid, act_exponential |
| remove_activation_function | act_linear |
| add_activation_function (to the output) | out_sigmoid, out_relu |
| change_weights_initialisation | init_zeros, init_large, init_small |
| remove_bias | remove_bias |
| change_learning_rate | lr_up (x100), lr_down (/1000) |
| change_optimisation_function | opt_sgd_plain (SGD lr 1e-3, no momentum) |
| add_weights_regularisation | weight_decay |
| change_loss_function | loss_mse_ids, loss_nll_raw, loss_double_softmax |
| change_batch_size | batch_one (same steps), batch_full (same epochs) |
| change_epochs | epochs_few |
| change_label | labels_shuffled, labels_noisy |
| (taxonomy) wrong bias initialisation | bias_negative |
| (taxonomy) layers wrongly not trainable | freeze |
| (taxonomy) missing input / target normalisation | inputs_x1000, inputs_offset, targets_x1000, targets_offset |
| (taxonomy) training data not shuffled | no_shuffle |
| (taxonomy) wrong gradient handling: zero_grad missing | no_zero_grad |

``ACCEPTED`` maps each operator to the finding codes that name its mechanism, written from theory
(the meaning of each code in DESIGN.md's table) before deepdiag was run on any mutant. A code is
accepted when it names the cause the operator introduces, or the direct physical effect of that cause
that a user would act on; ``underfitting`` (a symptom that almost every broken run shows) is accepted
only where the fault *is* too little optimisation or capacity (epochs, batch size, tiny steps, a
linear network, heavy weight decay, label corruption).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .programs import Program, token_cross_entropy

# ---- model edits (applied to the built model; each returns it) ----

_ACT_TYPES = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SiLU)


class Exp(nn.Module):
    """The exponential activation (Keras' "exponential", one of DeepCrime's ACH choices)."""

    def forward(self, x):
        return torch.exp(x)


def _is_activation(m: nn.Module) -> bool:
    return isinstance(m, _ACT_TYPES) or type(m).__module__.startswith("transformers.activations")


def _activations(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every activation module, and of nn.TransformerEncoderLayer's functional one."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if _is_activation(child):
                found.append((parent, name))
        if isinstance(parent, nn.TransformerEncoderLayer):
            found.append((parent, "activation"))
    return found


def _swap_activations(make: Callable[[], nn.Module]):
    def edit(model):
        for parent, name in _activations(model):
            setattr(parent, name, make())
            if isinstance(parent, nn.TransformerEncoderLayer):
                parent.activation_relu_or_gelu = 0  # else its eval fast path keeps the built-in ReLU
        return model
    return edit


def _weights(model: nn.Module) -> list[Tensor]:
    """The >= 2-D weights of the computing layers (embedding tables are left alone: a lookup table's
    N(0, 1) default is not a propagation scale)."""
    skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [p for n, p in model.named_parameters() if p.dim() >= 2 and id(p) not in skip]


def _init(fill: Callable[[Tensor], None]):
    def edit(model):
        with torch.no_grad():
            for w in _weights(model):
                fill(w)
        return model
    return edit


def _biases(model: nn.Module) -> list[Tensor]:
    return [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1].startswith("bias")]


def _bias_fill(value: float):
    def edit(model):
        with torch.no_grad():
            for b in _biases(model):
                b.fill_(value)
        return model
    return edit


def _remove_bias(model):
    """nn.Linear / nn.ConvNd lose their bias; other biases (RNN gates, transformers' Conv1D, norm
    layers excepted) become a frozen zero, which computes the same function."""
    norms = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)
    # nn.TransformerEncoderLayer reads its linears' biases directly (its fast-path check): keep them
    # as frozen zeros there, as its own bias=False would leave none
    inside = {id(m) for layer in model.modules() if isinstance(layer, nn.TransformerEncoderLayer)
              for m in layer.modules()}
    for m in model.modules():
        if isinstance(m, norms) or type(m).__name__.endswith("LayerNorm"):
            continue
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.bias is not None and id(m) not in inside:
            m.register_parameter("bias", None)
        else:
            for n, p in m.named_parameters(recurse=False):
                if n.startswith("bias"):
                    with torch.no_grad():
                        p.zero_()
                    p.requires_grad_(False)
    return model


def _last_layer(model: nn.Module) -> tuple[nn.Module, str, nn.Module] | None:
    """(parent, name, module) of the last registered nn.Linear: the output layer of every base."""
    last = None
    for path, child in model.named_modules():  # depth-first, in registration order
        if isinstance(child, nn.Linear):
            last = path
    if last is None:
        return None
    parent_path, _, name = last.rpartition(".")
    parent = model.get_submodule(parent_path)
    return parent, name, getattr(parent, name)


def _freeze(model):
    """Every parameter except the output layer's stops training (requires_grad False), the mistake
    of a fine-tuning script that never unfreezes its backbone; the optimizer still gets all of them."""
    _, _, head = _last_layer(model)
    keep = {id(p) for p in head.parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
    return model


def _one_output(model):
    parent, name, head = _last_layer(model)
    setattr(parent, name, nn.Linear(head.in_features, 1))
    return model


def _append(make: Callable[[], nn.Module]):
    return lambda model: nn.Sequential(model, make())


# ---- operators ----

def _edit(p: Program, op: str, edit) -> Program:
    return replace(p, name=f"{p.name}/{op}", operator=op, edits=p.edits + (edit,))


def _has_activations(p: Program) -> bool:
    return bool(_activations(p.build()))


def act(kind: str):
    make = {"sigmoid": nn.Sigmoid, "exponential": Exp, "linear": nn.Identity}[kind]

    def op(p):
        return _edit(p, f"act_{kind}" if kind != "linear" else "act_linear", _swap_activations(make)) \
            if _has_activations(p) else None
    return op


def out_act(kind: str):
    make = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}[kind]
    return lambda p: _edit(p, f"out_{kind}", _append(make))


def init(kind: str):
    fill = {"zeros": lambda w: w.zero_(), "large": lambda w: w.normal_(0.0, 1.0),
            "small": lambda w: w.normal_(0.0, 1e-4)}[kind]
    return lambda p: _edit(p, f"init_{kind}", _init(fill))


def bias_negative(p):
    return _edit(p, "bias_negative", _bias_fill(-10.0))


def remove_bias(p):
    return _edit(p, "remove_bias", _remove_bias)


def freeze(p):
    return _edit(p, "freeze", _freeze)


def _with_optimizer(p: Program, op: str, name: str, **change) -> Program:
    kw = dict(p.optimizer[1]) if name == p.optimizer[0] else {}
    kw.update(change)
    return replace(p, name=f"{p.name}/{op}", operator=op, optimizer=(name, tuple(sorted(kw.items()))))


def lr_up(p):
    return _with_optimizer(p, "lr_up", p.optimizer[0], lr=dict(p.optimizer[1])["lr"] * 100)


def lr_down(p):
    return _with_optimizer(p, "lr_down", p.optimizer[0], lr=dict(p.optimizer[1])["lr"] / 1000)


def opt_sgd_plain(p):
    return _with_optimizer(p, "opt_sgd_plain", "sgd", lr=1e-3, momentum=0.0)


def weight_decay(p):
    return _with_optimizer(p, "weight_decay", p.optimizer[0], weight_decay=1.0)


def _round_ids(n_classes: int):
    return lambda out: out.reshape(-1).round().clamp(0, n_classes - 1).long()


def _mse_on_ids(out: Tensor, y: Tensor) -> Tensor:
    """MSE between a one-unit output and the class id as a number (classes treated as ordinal)."""
    return F.mse_loss(out.reshape(-1), y.float())


def loss_mse_ids(p):
    if p.data.task != "classification":
        return None
    return replace(_edit(p, "loss_mse_ids", _one_output), loss_fn=_mse_on_ids,
                   predict=_round_ids(p.data.n_classes))


def _nll_tokens(out: Tensor, y: Tensor) -> Tensor:
    return F.nll_loss(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def loss_nll_raw(p):
    """NLLLoss on raw logits: the log_softmax was forgotten, the loss is unbounded below."""
    if p.data.task == "regression":
        return None
    fn = _nll_tokens if p.loss_fn is token_cross_entropy else nn.NLLLoss()
    return replace(p, name=f"{p.name}/loss_nll_raw", operator="loss_nll_raw", loss_fn=fn)


def loss_double_softmax(p):
    """A Softmax output layer feeding CrossEntropyLoss, which applies its own log_softmax."""
    if p.data.task == "regression":
        return None
    return _edit(p, "loss_double_softmax", _append(lambda: nn.Softmax(dim=-1)))


def batch_one(p):
    """Batch size 1 at the base's number of optimizer steps (an epoch budget would cost 32-64x)."""
    steps = p.epochs * math.ceil(len(p.data.x_train) / p.batch_size)
    return replace(p, name=f"{p.name}/batch_one", operator="batch_one", batch_size=1, max_steps=steps)


def batch_full(p):
    """The whole training set as one batch, at the base's number of epochs."""
    return replace(p, name=f"{p.name}/batch_full", operator="batch_full", batch_size=len(p.data.x_train))


def epochs_few(p):
    """One tenth of the epochs, at least one."""
    return replace(p, name=f"{p.name}/epochs_few", operator="epochs_few", epochs=max(1, p.epochs // 10))


def _data(p: Program, op: str, **change) -> Program:
    return replace(p, name=f"{p.name}/{op}", operator=op, data=replace(p.data, **change))


def _float_inputs(p: Program) -> bool:
    return p.data.x_train.is_floating_point()


def inputs_x1000(p):
    if not _float_inputs(p):
        return None
    return _data(p, "inputs_x1000", x_train=p.data.x_train * 1000, x_val=p.data.x_val * 1000)


def inputs_offset(p):
    if not _float_inputs(p):
        return None
    return _data(p, "inputs_offset", x_train=p.data.x_train + 100, x_val=p.data.x_val + 100)


def targets_x1000(p):
    if p.data.task != "regression":
        return None
    return replace(p, name=f"{p.name}/targets_x1000", operator="targets_x1000", target_scale=1000.0)


def targets_offset(p):
    if p.data.task != "regression":
        return None
    return replace(p, name=f"{p.name}/targets_offset", operator="targets_offset", target_shift=2000.0)


def _relabel(p: Program, op: str, fraction: float) -> Program | None:
    if p.data.task == "regression":
        return None
    g = torch.Generator().manual_seed(1234)
    y = p.data.y_train.clone()
    flip = torch.rand(y.shape, generator=g) < fraction
    y[flip] = torch.randint(p.data.n_classes, (int(flip.sum()),), generator=g)
    return _data(p, op, y_train=y)


def labels_shuffled(p):
    """Every training label redrawn uniformly (validation labels stay clean)."""
    return _relabel(p, "labels_shuffled", 1.0)


def labels_noisy(p):
    """Half of the training labels redrawn uniformly."""
    return _relabel(p, "labels_noisy", 0.5)


def no_shuffle(p):
    """Training rows sorted by class and never shuffled: each batch holds one class."""
    if p.data.task != "classification":
        return None
    order = p.data.y_train.argsort(stable=True)
    data = replace(p.data, x_train=p.data.x_train[order], y_train=p.data.y_train[order])
    return replace(p, name=f"{p.name}/no_shuffle", operator="no_shuffle", data=data, shuffle=False)


def no_zero_grad(p):
    """optimizer.zero_grad() forgotten: gradients accumulate over every step."""
    return replace(p, name=f"{p.name}/no_zero_grad", operator="no_zero_grad", zero_grad=False)


OPERATORS: dict[str, Callable[[Program], Program | None]] = {
    "act_sigmoid": act("sigmoid"), "act_exponential": act("exponential"), "act_linear": act("linear"),
    "out_sigmoid": out_act("sigmoid"), "out_relu": out_act("relu"),
    "init_zeros": init("zeros"), "init_large": init("large"), "init_small": init("small"),
    "bias_negative": bias_negative, "remove_bias": remove_bias, "freeze": freeze,
    "lr_up": lr_up, "lr_down": lr_down, "opt_sgd_plain": opt_sgd_plain, "weight_decay": weight_decay,
    "loss_mse_ids": loss_mse_ids, "loss_nll_raw": loss_nll_raw, "loss_double_softmax": loss_double_softmax,
    "batch_one": batch_one, "batch_full": batch_full, "epochs_few": epochs_few,
    "inputs_x1000": inputs_x1000, "inputs_offset": inputs_offset,
    "targets_x1000": targets_x1000, "targets_offset": targets_offset,
    "labels_shuffled": labels_shuffled, "labels_noisy": labels_noisy,
    "no_shuffle": no_shuffle, "no_zero_grad": no_zero_grad,
}

# Theory: which codes name each fault's mechanism (see the module doc). Written before any verdict.
_EXPLODE = {"divergence", "exploding_gradients", "exploding_activations"}
ACCEPTED: dict[str, set[str]] = {
    # sigmoid everywhere: derivative <= 1/4 per layer, units pinned at the asymptotes
    "act_sigmoid": {"vanishing_gradients", "saturated_units", "vanishing_activations"},
    # exp compounds across layers: activations and gradients blow up, loss overflows
    "act_exponential": _EXPLODE | {"saturated_units"},
    # a linear network: the capacity of one linear map
    "act_linear": {"underfitting"},
    # a probability loss fed a sigmoid/ReLU output: the output range cannot match the loss
    "out_sigmoid": {"output_loss_mismatch", "saturated_units"},
    "out_relu": {"output_loss_mismatch", "dead_units"},
    # zero weights: every unit identical, nothing propagates, no gradient reaches earlier layers
    "init_zeros": {"symmetric_units", "stalled_updates", "vanishing_gradients", "vanishing_activations",
                   "dead_units"},
    # N(0, 1) weights: per-layer gain sqrt(fan_in) >> 1
    "init_large": _EXPLODE | {"saturated_units"},
    # N(0, 1e-4 squared) weights: the signal shrinks ~1e-4 * sqrt(fan_in) per layer
    "init_small": {"vanishing_activations", "vanishing_gradients", "stalled_updates", "symmetric_units"},
    # bias -10: ReLU units never fire, tanh/sigmoid units sit at an asymptote
    "bias_negative": {"dead_units", "saturated_units", "vanishing_activations", "vanishing_gradients",
                      "stalled_updates"},
    # fewer parameters; ReLU units without a bias die more easily
    "remove_bias": {"underfitting", "dead_units"},
    "freeze": {"stalled_updates"},
    # steps 100x too large: the loss diverges or bounces, units are knocked dead or into saturation
    "lr_up": _EXPLODE | {"oscillating_loss", "dead_units", "saturated_units"},
    "lr_down": {"stalled_updates", "underfitting"},
    "opt_sgd_plain": {"stalled_updates", "underfitting"},
    "weight_decay": {"underfitting", "vanishing_activations", "stalled_updates"},
    # a categorical target treated as a number; NLL on raw logits is unbounded below; double softmax
    "loss_mse_ids": {"output_loss_mismatch", "underfitting"},
    "loss_nll_raw": {"output_loss_mismatch", "divergence", "exploding_activations"},
    "loss_double_softmax": {"output_loss_mismatch"},
    # one sample per step: gradient noise; the full set per step: too few steps
    "batch_one": {"oscillating_loss", "underfitting"},
    "batch_full": {"underfitting"},
    "epochs_few": {"underfitting"},
    # inputs far from unit scale saturate or blow up the first layer
    "inputs_x1000": {"unscaled_inputs", "saturated_units", "dead_units"} | _EXPLODE,
    "inputs_offset": {"unscaled_inputs", "saturated_units", "dead_units"} | _EXPLODE,
    # MSE on targets of scale 1e3: gradients 1e3x, the output cannot reach the targets' range in the
    # budget. deepdiag's fixed code list has no target-scale code: output_loss_mismatch (output vs
    # targets) and unscaled_inputs (data far from unit scale) are the two whose meaning covers it.
    "targets_x1000": {"output_loss_mismatch", "unscaled_inputs", "exploding_gradients", "divergence",
                      "oscillating_loss"},
    "targets_offset": {"output_loss_mismatch", "unscaled_inputs", "exploding_gradients", "divergence",
                       "oscillating_loss"},
    # labels with no (or half the) signal: memorised (overfitting) or not learnt (underfitting)
    "labels_shuffled": {"overfitting", "underfitting"},
    "labels_noisy": {"overfitting", "underfitting"},
    # one class per batch: the loss swings from batch to batch
    "no_shuffle": {"oscillating_loss", "underfitting"},
    # accumulated gradients: the effective step grows with every step
    "no_zero_grad": {"oscillating_loss"} | _EXPLODE,
}

if set(ACCEPTED) != set(OPERATORS):
    raise RuntimeError(f"ACCEPTED and OPERATORS differ: {set(ACCEPTED) ^ set(OPERATORS)}")


def mutants(base: Program, operators: list[str] | None = None) -> list[Program]:
    """Every applicable operator applied to `base` (in OPERATORS order)."""
    out = []
    for name, op in OPERATORS.items():
        if operators is not None and name not in operators:
            continue
        m = op(base)
        if m is not None:
            out.append(m)
    return out
