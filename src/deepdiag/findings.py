"""A ``Finding``: one named pathology, the numbers that show it and what to do about it.

Findings are frozen dataclasses with JSON-safe evidence (plain floats, ints, strings, lists, dicts;
``deepdiag.jsonsafe``: a non-finite number becomes None), so they cross engines, the results store and
the command line unchanged. Severity is one of ``SEVERITIES`` in increasing order: ``info`` (worth
knowing, nothing to fix), ``warning`` (likely hurts training), ``error`` (training cannot work as set up).
A healthy model gives no warning or error.

>>> f = Finding("dead_units", "warning", "3 of 4 ReLU units never fire.", {"fraction": 0.75},
...             "Use dd.init_weights(model, 'he').", ["fc1"])
>>> f.to_dict()["severity"]
'warning'
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from .jsonsafe import json_safe

SEVERITIES = ("info", "warning", "error")

CODES = (
    "vanishing_gradients", "exploding_gradients", "vanishing_activations", "exploding_activations",
    "symmetric_units", "dead_units", "saturated_units", "overfitting", "underfitting", "divergence",
    "degradation", "oscillating_loss", "stalled_updates", "output_loss_mismatch", "unscaled_inputs",
    "unscaled_targets",
    "nonfinite_values",
)


# The machine-readable remedies (``Finding.fix``): per key, (the value's type, what the key asks for). Precise
# enough to apply a fix from this table alone; ``deepdiag.fixes.apply_fix`` performs every key.
FIX_KEYS = {
    # model keys: performed on a copy of the model
    "init": ("str: 'he' | 'xavier' | 'orthogonal' | 'lecun' | 'lsuv' | 'default'",
             "re-initialise the computing weights (Linear, ConvNd, RNN/LSTM/GRU weight matrices per gate, "
             "attention in/out projections, transformers Conv1D; not embeddings, not normalisation layers) "
             "with this scheme (deepdiag.init), biases zero; 'lsuv': orthogonal, then each weight layer in "
             "forward order rescaled to unit output variance on a batch (Mishkin & Matas 2016); 'default': "
             "weights and biases of those layers redrawn as their library draws them (a transformers "
             "model's _init_weights, else the module's reset_parameters: PyTorch's default init). A redraw "
             "whose layers all already have a median weight std within 20 % of the scheme's is a no-op"),
    "activation": ("str: 'relu' | 'leaky_relu' | 'gelu' | 'tanh' | 'sigmoid' | 'selu' | 'elu' | 'silu'",
                   "replace every activation module (torch.nn, transformers.activations, "
                   "nn.TransformerEncoderLayer.activation) by this one, except one right after the output "
                   "layer; in a model with no activation at all, the nn.Identity modules between two weight "
                   "layers instead; activations called as functions in a forward cannot be reached"),
    "norm": ("str: 'batch' | 'layer'",
             "insert BatchNorm1d/2d (or LayerNorm; GroupNorm(1, C) after a convolution) on the output "
             "channels of every hidden weight layer (every Linear/ConvNd but the output layer)"),
    "residual": ("bool: true",
                 "wrap every shape-preserving block of an nn.Sequential ([Linear(w, w) or Conv(c, c, same "
                 "padding, stride 1), then its norm/activation/dropout modules]) as x + f(x)"),
    "replace_output": ("str: 'identity'",
                       "drop the activation module (Softmax, LogSoftmax, Sigmoid, ReLU, Tanh) that follows "
                       "the output layer, so the model returns raw logits"),
    "out_features": ("int >= 1", "give the output layer (the last Linear / Conv1D) this many units (one per "
                                 "class), freshly initialised"),
    "unfreeze": ("list[str] (layer or parameter names) | true (all)",
                 "set requires_grad=True on these layers' parameters and give them to the optimizer"),
    # training keys
    "lr": ("float > 0", "train with this learning rate"),
    "lr_factor": ("float > 0", "multiply the learning rate by this factor (resolved to 'lr' when the lr is "
                               "known)"),
    "warmup_steps": ("int >= 0", "raise the learning rate linearly over the first k optimizer steps: step s "
                                 "uses lr·min(1, s/k)"),
    "batch_size": ("int >= 1", "train with mini-batches of this size"),
    "clip_grad_norm": ("float > 0", "before each step, rescale the gradient so that its global L2 norm over "
                                    "all parameters is at most this (torch.nn.utils.clip_grad_norm_)"),
    "weight_decay": ("float >= 0", "the optimizer's weight_decay, on the weights only (not biases or norm parameters)"),
    "optimizer": ("str: 'sgd' | 'adam' | 'adamw'", "train with this optimizer"),
    "epochs": ("int >= 1", "train for this many epochs (early stopping: stop after this epoch)"),
    "loss": ("str: 'cross_entropy' | 'bce_with_logits' | 'mse'",
             "use this loss: cross-entropy on raw logits, binary cross-entropy on one raw logit per sample, "
             "or mean squared error (deepdiag.fixes.make_loss)"),
    # data keys
    "standardize_inputs": ("bool: true", "standardise every input feature (per channel for images) with the "
                                         "training set's mean and std (ddof 0); validation and test use "
                                         "the training statistics"),
    "standardize_targets": ("bool: true", "standardise the regression targets (per column) with the training "
                                          "set's mean and std"),
    "target_range": ("[low, high], two numbers, low < high",
                     "map the targets affinely from the training set's [min, max] onto [low, high] (binary "
                     "targets such as ±1 become low and high)"),
    "drop_disputed_labels": ("bool: true",
                             "train without the training samples whose label the data dispute (classification): "
                             "the training split is cut in 4 parts by a seeded permutation; for each part the "
                             "same model and training, fitted on the other 3 and kept at its epoch of lowest "
                             "loss on that part, predicts it; with t_j the mean predicted "
                             "probability of class j over the samples labelled j, a sample is dropped when the "
                             "most probable class j among those with p_j >= t_j is not its label (confident "
                             "learning, Northcutt et al. 2021; deepdiag.labels); the epochs are scaled by "
                             "n/(n - dropped) so training keeps its number of optimizer steps"),
}


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(f"unknown severity={severity!r}; allowed values: {', '.join(SEVERITIES)}") from None


@dataclass(frozen=True)
class Finding:
    """A pathology: `code` (one of ``CODES``), `severity`, a one-sentence `summary`, the `evidence`
    numbers, a `remedy` specific to what was seen, the offending `layers`, the `step` (optimizer
    step, or epoch for curve findings) at which it was seen, when known, and `fix`: the remedy in
    machine-readable form where one exists (a JSON-safe dict such as ``{"init": "he"}``,
    ``{"lr": 0.01}``, ``{"standardize_inputs": True}``, ``{"replace_output": "identity"}``; keys in
    ``FIX_KEYS``), else None."""

    code: str
    severity: str
    summary: str
    evidence: dict = field(default_factory=dict)
    remedy: str = ""
    layers: list = field(default_factory=list)
    step: int | None = None
    fix: dict | None = None

    def __post_init__(self):
        if not isinstance(self.code, str) or not self.code:
            raise TypeError(f"code={self.code!r} must be a non-empty string, e.g. 'dead_units'")
        severity_rank(self.severity)
        if not isinstance(self.evidence, dict):
            raise TypeError(f"evidence={self.evidence!r} must be a dict of numbers")
        object.__setattr__(self, "evidence", json_safe(self.evidence))
        object.__setattr__(self, "layers", [str(n) for n in self.layers])
        if self.fix is not None:
            if not isinstance(self.fix, dict):
                raise TypeError(f"fix={self.fix!r} must be a dict such as {{'lr': 0.01}} or None")
            object.__setattr__(self, "fix", json_safe(self.fix))

    @property
    def rank(self) -> int:
        return severity_rank(self.severity)

    def to_dict(self, strict: bool = True) -> dict:
        """The finding as a JSON-safe dict: its evidence and fix already are (non-finite numbers are None),
        so `strict` changes nothing; it stays for callers that pass it."""
        return asdict(self)

    def __str__(self) -> str:
        where = f" [{', '.join(self.layers[:6])}{', ...' if len(self.layers) > 6 else ''}]" if self.layers else ""
        return f"{self.severity.upper()} {self.code}{where}: {self.summary} Remedy: {self.remedy}"


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first; stable within a severity (the order the rules produced them)."""
    return sorted(findings, key=lambda f: -f.rank)


def worst(findings: Iterable[Finding]) -> str | None:
    """The highest severity among `findings`, or None when there are none."""
    ranks = [f.rank for f in findings]
    return SEVERITIES[max(ranks)] if ranks else None


def at_least(findings: Iterable[Finding], severity: str) -> list[Finding]:
    """The findings of severity `severity` or worse."""
    r = severity_rank(severity)
    return [f for f in findings if f.rank >= r]
