"""Ranked alternative remedies for a finding: what ``dd.repair`` trains, best guess first.

A finding names a mechanism; several remedies act on it, through different causes. Vanishing gradients
in a deep sigmoid net, for instance, shrink by σ'(z)·‖W‖ per layer: a re-initialisation changes ‖W‖, a
ReLU changes σ' (1 on the active half instead of ≤ 1/4), a normalisation layer resets the scale at every
layer, a residual path adds an identity term to every layer's Jacobian. Which one works on a given model
is an empirical question; the repair search answers it by training each. The first candidate is always
the finding's own ``Finding.fix`` (the single best guess), then the alternatives below, each labelled
with the cause it tests (``CAUSES``), so the winning candidate also attributes the finding: init or
learning rate, data or model.

Everything here is pure: the inputs are findings and the training setup (``Setup``), the output is a
list of ``Candidate`` (a fix dict in ``FIX_KEYS`` terms, its cause and the reason it is tried).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .findings import Finding, sort_findings
from .rules.remedies import lr_fix

CAUSES = ("init", "activation", "architecture", "output", "loss", "lr", "optimizer", "budget", "data",
          "regularization", "frozen")


@dataclass(frozen=True)
class Setup:
    """What the candidates depend on in the training setup: the optimizer's name, lr, batch size,
    epochs, weight decay, training-set size, and the task ("classification" or "regression")."""
    optimizer: str = "sgd"
    lr: float = 0.1
    batch_size: int | None = 64
    epochs: int = 10
    weight_decay: float = 0.0
    n_train: int = 1000
    task: str = "classification"


@dataclass(frozen=True)
class Candidate:
    """One remedy to train: `fix` (keys of ``FIX_KEYS``), the `cause` it tests, the finding `codes` it
    answers and a short `reason`; `source` is "finding" for a finding's own fix, "alternative", or
    "combination" (fixes of several findings merged)."""
    fix: dict
    cause: str
    codes: tuple[str, ...]
    reason: str
    source: str = "alternative"
    parents: tuple = field(default=(), compare=False)

    @property
    def key(self) -> str:
        """A canonical text of the fix (two candidates with the same fix are the same training run)."""
        return repr(sorted((k, _hashable(v)) for k, v in self.fix.items()))


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def cause_of(fix: dict) -> str:
    """The cause a fix tests, from its keys (the first that applies, in the order below)."""
    order = [("unfreeze", "frozen"), ("replace_output", "output"), ("out_features", "output"),
             ("loss", "loss"), ("target_range", "data"), ("standardize_inputs", "data"),
             ("standardize_targets", "data"), ("drop_disputed_labels", "data"), ("activation", "activation"), ("norm", "architecture"),
             ("residual", "architecture"), ("init", "init"), ("optimizer", "optimizer"),
             ("weight_decay", "regularization"), ("epochs", "budget"), ("batch_size", "budget"),
             ("lr", "lr"), ("lr_factor", "lr"), ("warmup_steps", "lr"), ("clip_grad_norm", "lr")]
    return next((cause for key, cause in order if key in fix), "lr")


def _lr(s: Setup, factor: float) -> dict:
    """``{"lr": s.lr·factor}`` to one significant digit (``rules.remedies.lr_fix``: 0.1 → 0.01)."""
    return lr_fix(s.lr, factor)


def _bigger_batch(s: Setup) -> dict:
    bs = s.batch_size or s.n_train
    return {"batch_size": min(s.n_train, bs * 4)} if bs < s.n_train else {}


def _more_epochs(s: Setup, k: int = 3) -> dict:
    return {"epochs": s.epochs * k}


def _adam(s: Setup) -> dict:
    """Adam at its usual 1e-3 (Kingma & Ba 2015): per-parameter step sizes that do not depend on the
    gradient's scale, the standard cure for steps too small or badly scaled across layers. An Adam run
    already gets its lr back to 1e-3 when it is more than 3× away from it."""
    if s.optimizer not in ("adam", "adamw"):
        return {"optimizer": "adam", "lr": 1e-3}
    return {"lr": 1e-3} if not 1 / 3 <= s.lr / 1e-3 <= 3 else {}


def _smaller_batch(s: Setup) -> dict:
    """Mini-batches of 32 when an epoch holds fewer than 8 steps: with the whole set per step, an
    epoch budget buys only a handful of updates."""
    bs = s.batch_size or s.n_train
    return {"batch_size": 32} if s.n_train / bs < 8 and bs > 32 else {}


def _alternatives(code: str, s: Setup) -> list[tuple[dict, str]]:
    """(fix, reason) alternatives for `code`, most likely first. The reasons state the mechanism."""
    signal = [
        ({"init": "lsuv"}, "rescale every layer so its output has unit variance on a batch (LSUV): "
                           "the per-layer gain becomes 1 whatever the activation"),
        ({"norm": "batch"}, "a normalisation layer after every hidden weight layer resets the scale each layer"),
        ({"activation": "relu"}, "ReLU's derivative is 1 where active, sigmoid's ≤ 1/4, tanh's ≤ 1"),
        ({"residual": True}, "an identity path adds 1 to every block's Jacobian"),
        ({"norm": "layer"}, "layer normalisation, which does not depend on the batch"),
    ]
    default = ({"init": "default"}, "the layers' own default initialisation (PyTorch's reset_parameters, a "
                                    "transformers model's _init_weights): the scale the architecture was "
                                    "designed with, what removing a custom initialisation gives back")
    grow = ({"activation": "relu"}, "an activation that grows faster than its input (exp, a large-gain custom "
                                    "unit) compounds across layers; ReLU's gain is at most 1")
    lr_down = [(_lr(s, 0.1), "a 10× smaller step stays inside the region where the loss is smooth"),
               ({"clip_grad_norm": 1.0}, "clipping bounds every step whatever the gradient"),
               ({"warmup_steps": max(10, min(200, s.epochs * 10))}, "a linear warm-up lets the first, "
                                                                    "largest gradients pass with small steps"),
               (_lr(s, 0.01), "a 100× smaller step")]
    table: dict[str, list[tuple[dict, str]]] = {
        "vanishing_gradients": [signal[0], default, *signal[1:]],
        "vanishing_activations": [signal[0], default, *signal[1:]],
        "exploding_gradients": [signal[0], default, *lr_down[:2], signal[1], signal[4], grow],
        "exploding_activations": [signal[0], grow, default, signal[1], signal[4], lr_down[1]],
        "symmetric_units": [({"init": "he"}, "a random draw breaks the symmetry"), default, signal[0],
                            ({"init": "xavier"}, "a random draw at Xavier scale")],
        "dead_units": [({"activation": "leaky_relu"}, "a leaky unit keeps a gradient when its input is negative"),
                       ({"init": "he"}, "He scale with zero biases: half the units active at the start"),
                       signal[0], lr_down[0], signal[1]],
        "saturated_units": [signal[0], ({"standardize_inputs": True}, "inputs of unit scale keep the "
                                                                      "pre-activations off the asymptotes"),
                            signal[2], signal[1], lr_down[0]],
        "divergence": [*lr_down, grow],
        "oscillating_loss": [(_lr(s, 0.3), "a 3× smaller step"), (_bigger_batch(s), "4× less gradient noise "
                                                                                    "per step"),
                             lr_down[0], lr_down[1]],
        "stalled_updates": [(_lr(s, 10.0), "a 10× larger step"),
                            (_adam(s), "Adam's steps do not depend on the gradient's scale"), signal[0]],
        "underfitting": [(_more_epochs(s), "3× the epochs"), (_lr(s, 3.0), "a 3× larger step"),
                         (_adam(s), "Adam at 1e-3"), (_smaller_batch(s), "more, smaller steps per epoch"),
                         (_lr(s, 0.1), "a 10× smaller step: a step too large also plateaus high"),
                         ({"weight_decay": 0.0} if s.weight_decay else {}, "no weight decay"),
                         (signal[0][0], signal[0][1])],
        "overfitting": [({"weight_decay": 5e-4 if not s.weight_decay else s.weight_decay * 10},
                         "weight decay shrinks the weights the noise fits"),
                        ({"epochs": max(1, s.epochs // 2)}, "stop earlier"),
                        ({"drop_disputed_labels": True} if s.task == "classification" else {},
                         "wrong training labels are what a network memorises: train without the ones "
                         "out-of-fold predictions dispute")],
        "output_loss_mismatch": [({"replace_output": "identity"}, "the loss gets raw logits"),
                                 ({"loss": "cross_entropy"}, "cross-entropy on logits")],
        "unscaled_inputs": [({"standardize_inputs": True}, "inputs of unit scale"), signal[0], signal[1]],
        "unscaled_targets": [({"standardize_targets": True}, "targets of unit scale"),
                             (_lr(s, 10.0) if s.optimizer in ("adam", "adamw") else {},
                              "Adam's step is bounded by its lr: reaching far targets needs a larger one")],
        "degradation": [({"residual": True}, "identity paths"), signal[1]],
        "nonfinite_values": [],
    }
    return [(fix, reason) for fix, reason in table.get(code, []) if fix]


def candidates_for(finding: Finding, setup: Setup) -> list[Candidate]:
    """The ranked candidates for one finding: its own fix first (when it has one), then the
    alternatives of its code, without repeats."""
    out, seen = [], set()
    if finding.fix:
        c = Candidate(dict(finding.fix), cause_of(finding.fix), (finding.code,),
                      f"{finding.code}: deepdiag's remedy", source="finding")
        out.append(c)
        seen.add(c.key)
    for fix, reason in _alternatives(finding.code, setup):
        c = Candidate(fix, cause_of(fix), (finding.code,), f"{finding.code}: {reason}")
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


# Where each code sits on the causal chain: a setup fault (tier 0) produces bad layer scales at the start
# (tier 1), which produce bad training dynamics (tier 2: divergence, oscillation, stalls, and layer
# pathologies that appeared during training), which produce poor curves (tier 3). Fixing the most
# upstream cause usually clears what it caused; adding a symptom's fix on top often overshoots (a double
# softmax also "underfits": raising the lr as well breaks the repaired net).
TIERS = {"output_loss_mismatch": 0, "unscaled_inputs": 0, "unscaled_targets": 0, "nonfinite_values": 0,
         "symmetric_units": 1, "dead_units": 1, "saturated_units": 1, "vanishing_gradients": 1,
         "exploding_gradients": 1, "vanishing_activations": 1, "exploding_activations": 1, "degradation": 1,
         "divergence": 2, "oscillating_loss": 2, "stalled_updates": 2, "underfitting": 3, "overfitting": 3}


def tier(f: Finding) -> int:
    """The finding's place on the causal chain (``TIERS``); a layer pathology that appeared during
    training (its evidence records the step it was still healthy at) is a training-dynamics symptom."""
    t = TIERS.get(f.code, 2)
    return 2 if t == 1 and "healthy_at_step" in f.evidence else t


SAME_KNOB = {"lr": "lr", "lr_factor": "lr"}  # two keys that set the same knob: one of them per fix


def _knob(key: str) -> str:
    return SAME_KNOB.get(key, key)


def first_guess(findings: Iterable[Finding]) -> Candidate | None:
    """What applying ``Finding.fix`` alone, without any search, does: the fix of the most upstream finding
    (lowest ``tier``, then most severe, then first reported) that has one, merged with the fixes of
    the other findings of the same code (e.g. one per layer; a knob already set is kept, lr and lr_factor
    being one knob). Other findings' fixes are not stacked on it: a cause's fix usually clears its
    symptoms, and a symptom's fix added on top often overshoots (an init fix plus the lr cut of a
    divergence it caused trains far worse than the init fix alone). None when no finding has a fix."""
    with_fix = [f for f in sort_findings(findings) if f.fix]
    if not with_fix:
        return None
    top = min(with_fix, key=lambda f: (tier(f), -f.rank, with_fix.index(f)))
    fix: dict = {}
    for f in with_fix:
        if f.code == top.code:
            for k, v in f.fix.items():
                if not any(_knob(k) == _knob(have) for have in fix):
                    fix[k] = v
    return Candidate(fix, cause_of(fix), (top.code,), f"{top.code}: deepdiag's remedy", source="finding")


def ranked(findings: Iterable[Finding], setup: Setup, limit: int = 12) -> list[Candidate]:
    """Candidates for all `findings` (warning or worse), interleaved so that each finding's best guesses
    come before any finding's long shots: the merged first guess, then rank 1 of every finding (most
    severe first), then rank 2, ...; at most `limit`, without repeats."""
    serious = [f for f in sort_findings(findings) if f.rank >= 1]
    lists = [candidates_for(f, setup) for f in serious]
    out, seen = [], set()
    first = first_guess(serious)
    if first is not None:
        out.append(first)
        seen.add(first.key)
    for depth in range(max((len(x) for x in lists), default=0)):
        for cands in lists:
            if depth < len(cands) and cands[depth].key not in seen and len(out) < limit:
                seen.add(cands[depth].key)
                out.append(cands[depth])
    return out


def combine(parts: Iterable[Candidate]) -> Candidate | None:
    """The candidates' fixes merged into one, or None when two of them set the same key differently
    (a combination is only tried where the fixes do not contradict each other)."""
    parts = list(parts)
    fix: dict = {}
    for c in parts:
        for k, v in c.fix.items():
            if any(_knob(k) == _knob(have) and (have != k or fix[have] != v) for have in fix):
                return None
            fix[k] = v
    codes = tuple(dict.fromkeys(code for c in parts for code in c.codes))
    return Candidate(fix, cause_of(fix), codes, " + ".join(c.reason.split(":")[0] for c in parts),
                     source="combination", parents=tuple(c.key for c in parts))


def on_top(base: Candidate, extra: Candidate) -> Candidate:
    """`extra`'s fix applied on top of `base`'s (its keys win): a second-round candidate."""
    fix = {k: v for k, v in base.fix.items() if not any(_knob(k) == _knob(e) for e in extra.fix)}
    fix.update(extra.fix)
    return Candidate(fix, extra.cause, tuple(dict.fromkeys(base.codes + extra.codes)),
                     f"{extra.reason} (on top of the round-1 fix)", source=extra.source,
                     parents=(base.key, extra.key))
