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


# The machine-readable remedies (``Finding.fix``) and what each key asks for:
FIX_KEYS = {
    "init": "re-initialise the model: dd.init_weights(model, value) ('he', 'xavier', 'orthogonal')",
    "lr": "train with this learning rate",
    "lr_factor": "multiply the learning rate by this factor (when the monitor was not told the lr)",
    "clip_grad_norm": "clip the gradient norm to this value (torch.nn.utils.clip_grad_norm_)",
    "unfreeze": "give these layers' parameters to the optimizer (and set requires_grad=True)",
    "replace_output": "replace the model's last module by this ('identity': drop the softmax/sigmoid/ReLU)",
    "loss": "use this loss: 'cross_entropy' (raw logits), 'bce_with_logits' (one logit per sample)",
    "out_features": "give the output layer this many units (one per class)",
    "target_range": "map the targets into this [low, high] range",
    "standardize_inputs": "standardize every input feature with the training set's mean and std",
    "standardize_targets": "standardize the regression targets with the training set's mean and std",
    "epochs": "stop training after this epoch (early stopping)",
    "residual": "add residual connections (dd.mlp(..., residual=True))",
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
