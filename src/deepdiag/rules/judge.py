"""``judge``: the one place the rules are run. ``checkup``, ``Monitor`` and the engines' stop logic all
call it with what they measured; it returns the findings, most severe first.

Order (stable within a severity): gradients carried over between optimizer steps (a loop fault that
every other measurement follows from), layer rules (``RULES["layers"]``), stalled updates, output/loss
mismatch, unscaled inputs, a linear network (weight layers with nothing nonlinear between), batches
ordered by class (unshuffled data), curve rules
(divergence; else overfitting and underfitting — one underfitting finding per run — and labels that
disagree), oscillation.
A diverged run is not also judged for over/underfitting or oscillation.

What the run knows beyond the measurements (``Context``) turns generic remedies into specific ones:
a layer finding absent at the start of training is blamed on the learning rate
(``appeared_in_training``), an underfitting run gets its cause (``underfitting_cause``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..findings import Finding, sort_findings
from ..measure.records import AffineFacts, CarryFacts, InputFacts, LayerStats, NonFiniteFacts, OutputFacts
from .curves import (divergence, labels_disagree, loss_left, memorising, not_converged, oscillating_loss, overfitting,
                     short_run_at_chance, underfitting, underfitting_cause)
from .batches import unshuffled_batches
from .depth import compare_depths, linear_network
from .io import UPSTREAM, nonfinite_values, output_loss_mismatch, output_scale, unscaled_inputs, unscaled_targets
from .layers import LAYER_RULES
from .remedies import appeared_in_training, usual_lr
from .updates import carried_gradients, frozen_layers, stalled_updates

RULES = {  # every rule, by family (the registry the shared checks iterate over)
    "layers": LAYER_RULES,
    "updates": (carried_gradients, stalled_updates, frozen_layers),
    "io": (output_loss_mismatch, unscaled_inputs, unscaled_targets, output_scale, nonfinite_values),
    "curves": (divergence, overfitting, memorising, underfitting, labels_disagree, not_converged, short_run_at_chance,
               oscillating_loss),
    "depth": (compare_depths, linear_network),
    "order": (unshuffled_batches,),
}
ALL_RULES = tuple(rule for family in RULES.values() for rule in family)

UNIT_CODES = ("dead_units", "saturated_units", "symmetric_units")


@dataclass(frozen=True)
class Curves:
    """Loss curves: per epoch (``train_loss``, ``val_loss``, ``train_acc``, ``val_acc``), per recorded
    step (``step_loss`` at ``steps``), the first step with a non-finite loss (``first_bad_step``) and
    the chance-level training loss (``baseline``: ln k for k classes, Var(y) for MSE)."""

    train_loss: Sequence[float] | None = None
    val_loss: Sequence[float] | None = None
    train_acc: Sequence[float] | None = None
    val_acc: Sequence[float] | None = None
    baseline: float | None = None
    step_loss: Sequence[float] | None = None
    steps: Sequence[int] | None = None
    first_bad_step: int | None = None


@dataclass(frozen=True)
class Context:
    """What the training run knows beyond the measurements. ``lr``: the current learning rate;
    ``base_lr``: the configured one (what fixes scale); ``batch_size``; ``knows_optimizer``: the
    optimizer was given; ``weight_decay``; ``weight_ratio``: total weight norm now over at the start;
    ``start``: ``start_key``s of the layer findings present at the start of training (None: not judged
    yet), ``start_step``: the step they were judged at; ``bottleneck``: (name, units, output units) of the
    narrowest hidden weight layer; ``frozen``: modules whose ≥ 2-D parameters all have
    requires_grad=False (None: not read), ``frozen_share``: their share of the ≥ 2-D parameter entries;
    ``optimizer``: its kind ("sgd", "adam", "adamw", or another class name in lower case) and
    ``momentum``; ``epochs``: epochs handed to the monitor so far (with the steps: updates per epoch);
    ``dropout``: the largest dropout probability among the model's dropout modules."""

    lr: float | None = None
    base_lr: float | None = None
    batch_size: int | None = None
    knows_optimizer: bool = False
    weight_decay: float | None = None
    weight_ratio: float | None = None
    start: frozenset | None = None
    start_step: int | None = None
    bottleneck: tuple | None = None
    frozen: tuple | None = None
    frozen_share: float | None = None
    optimizer: str | None = None
    momentum: float = 0.0
    epochs: int | None = None
    dropout: float = 0.0


DROPOUT_DEPRESSES = 0.3  # from this dropout on, a training accuracy taken in train mode may trail the
# validation accuracy by 10 points on its own (each unit kept with probability 1 − p), so a training
# accuracy below the validation one no longer says the labels disagree


def start_key(f: Finding) -> tuple:
    """What identifies a layer finding across time: per layer for unit rules, per network otherwise (the
    offending layers of a gradient-flow finding shift as training goes on)."""
    return (f.code, tuple(f.layers)) if f.code in UNIT_CODES else (f.code,)


def bottleneck(layers: Sequence[LayerStats]) -> tuple | None:
    """(name, units, output units) of the narrowest hidden weight layer, or None without one."""
    w = [r for r in layers if r.kind == "weight" and r.units]
    if len(w) < 2:
        return None
    narrow = min(w[:-1], key=lambda r: r.units)
    return narrow.name, narrow.units, w[-1].units


def judge_layers(layers: Sequence[LayerStats], step: int | None = None) -> list[Finding]:
    """Every layer rule on `layers`, most severe first."""
    return sort_findings(f for rule in LAYER_RULES for f in rule(layers, step))


def judge(layers: Sequence[LayerStats] = (), *, output: OutputFacts | None = None,
          inputs: InputFacts | None = None, curves: Curves | None = None, context: Context = Context(),
          step: int | None = None, io_step: int | None = None,
          nonfinite: NonFiniteFacts | None = None, affine: AffineFacts | None = None,
          carry: CarryFacts | None = None, batch_classes: Sequence[Sequence[int]] | None = None) -> list[Finding]:
    """Every rule that has something to judge, most severe first (see the module docstring).

    `layers`: per-layer records; `output` / `inputs`: the output and input facts; `curves`; `context`.
    `step`: the step the layer and update findings are stamped with; `io_step`: that of the output and
    input findings (default `step`: a Monitor measures them on its first training step only).
    `nonfinite`: NaN/Inf counts; NaN/Inf in the inputs, targets or weights is reported alone
    (``nonfinite_values``: every other measurement is computed from them). `affine`: the weight-layer
    pairs measured to compose affinely (``linear_network``). `carry`: whether ``.grad`` was reset between
    optimizer steps (a Monitor's ``CarryProbe``). `batch_classes`: the class counts of the first epoch's
    training batches (``unshuffled_batches``; when it fires, it is the oscillation's cause and the curve
    rule's own ``oscillating_loss`` is left out).
    """
    io_step = step if io_step is None else io_step
    poisoned = nonfinite_values(nonfinite, io_step)
    if poisoned and poisoned[0].evidence["first_source"] in UPSTREAM:
        return poisoned
    found = carried_gradients(carry, step) + poisoned
    for f in (f for rule in LAYER_RULES for f in rule(layers, step)):
        if context.start is not None and start_key(f) not in context.start:
            f = appeared_in_training(f, context.start_step, context.base_lr, context.weight_decay,
                                     context.weight_ratio)
        found.append(f)
    if layers:
        found += stalled_updates(layers, step, lr=context.lr, knows_optimizer=context.knows_optimizer,
                                 frozen_judged=context.frozen is not None,
                                 usual=usual_lr(context.optimizer, context.momentum))
    if context.frozen:
        found += frozen_layers(layers, context.frozen, context.frozen_share,
                               loss_left(curves) if curves is not None else None, step)
    mismatch, unscaled = output_loss_mismatch(output, io_step), unscaled_inputs(inputs, io_step)
    found += mismatch + unscaled + unscaled_targets(output, io_step)
    if not unscaled and not any(f.rank >= 1 for f in mismatch):  # the output's scale follows from those
        found += output_scale(output, layers, io_step)
    found += linear_network(affine, io_step)
    order = unshuffled_batches(batch_classes, io_step) if batch_classes else []
    found += order
    if curves is not None:
        found += [f for f in judge_curves(curves, context) if not (order and f.code == "oscillating_loss")]
    return sort_findings(found)


def judge_curves(c: Curves, context: Context = Context()) -> list[Finding]:
    """The curve rules: divergence; else overfitting, underfitting (with its cause) and oscillation."""
    div = divergence(c.train_loss, c.val_loss, c.step_loss, c.steps if c.step_loss else None, c.first_bad_step)
    if div:
        return div
    found = []
    if c.train_loss and c.val_loss:
        found += overfitting(c.train_loss, c.val_loss) or memorising(c.train_loss, c.val_loss, c.baseline)
    if c.train_loss:
        updates = len(c.step_loss) if c.step_loss else None
        per_epoch = updates / context.epochs if updates and context.epochs else None
        cause = lambda f: underfitting_cause(  # noqa: E731
            f, context.weight_decay, context.base_lr, context.weight_ratio, context.bottleneck, context.frozen,
            usual=usual_lr(context.optimizer, context.momentum),
            updates=(c.steps[-1] if c.steps else updates, per_epoch), batch_size=context.batch_size,
            optimizer=context.optimizer)
        # one underfitting finding per run: the first rule that speaks, from the level of a run of >= 3
        # epochs, to a run stopped while still falling, to the level of a short run
        found += ([cause(f) for f in underfitting(c.train_loss, c.baseline, c.train_acc, c.val_acc)]
                  or not_converged(c.train_loss, c.step_loss, c.steps)
                  or [cause(f) for f in short_run_at_chance(c.train_loss, c.step_loss, c.baseline, c.steps)])
    if not any(f.code == "underfitting" for f in found):
        if context.dropout < DROPOUT_DEPRESSES:  # train-mode dropout lowers the training accuracy by design
            found += labels_disagree(c.train_acc, c.val_acc)
    if c.step_loss:
        found += oscillating_loss(c.step_loss, c.steps, lr=context.lr, batch_size=context.batch_size,
                                  epoch_loss=c.train_loss)
    return found
