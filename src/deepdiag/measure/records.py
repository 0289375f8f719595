"""The typed contract between measuring and judging: what one layer, the model's output and its input
batch looked like, as frozen records of plain Python numbers (no torch: the rules import them).

``LayerStats`` is one measured site (see ``deepdiag.measure.sites``) in forward order. Every field is
None where it was not measured (a norm layer has no weight, a Monitor row has no per-unit spread).
Scales are root-mean-square values of the tensor's entries unless stated otherwise; "per sample"
norms are ‖·‖_F/√B over a batch of B samples.
"""
from __future__ import annotations

from copy import deepcopy
from dataclasses import asdict, dataclass, fields

UNIT_FAMILIES = ("relu", "tanh", "sigmoid")  # the activations whose units are counted (dead / saturated)


@dataclass(frozen=True)
class LayerStats:
    """One measured layer (a *site*), host-side.

    Identity: ``name`` (module path, ``name#k`` for the k-th extra call), ``type`` (module class),
    ``kind`` ("weight" | "norm" | "activation"), ``family`` (activation family of an activation site;
    "relu (functional)" etc. on a weight layer whose units feed a functional activation).
    Shape: ``fan_in``/``fan_out`` (weight sites), ``units`` (output features / channels).
    Weights (weight sites, read from the module): ``weight_std``, ``weight_norm`` (‖W‖_F), ``init_scheme``
    and ``init_std`` (the recognised scheme, ±15 %), ``bias_mean``, ``sym_rows`` (max row deviation over max
    row norm of (W, b): 0 = identical units), ``sym_next`` (the same over the next weight layer's columns),
    ``next_layer``.
    Forward signal: ``act_mean``, ``act_std`` (of the output), ``act_rms`` (RMS of the output), ``in_rms``
    (RMS of the input), ``unit_spread`` (largest spread of one sample's output across units, relative to
    max |output|; checkup only).
    Backward signal: ``signal_norm`` (per-sample ‖∂L/∂output‖), ``grad_norm`` (‖∂L/∂W‖_F), ``grad_rel``
    (grad_norm / weight_norm).
    Units (on the activation site, or on the weight layer that produced functionally-activated units):
    ``positions`` (samples × spatial positions seen), ``dead`` / ``frac_dead`` (ReLU units that never
    fired), ``frac_zero`` (fraction of zero ReLU outputs; None when only maxima were kept),
    ``saturated`` / ``frac_saturated_units`` (tanh/sigmoid units past their asymptote on more than half
    the positions), ``frac_saturated`` (fraction of saturated values).
    Updates (Monitor only): ``update_rel`` (median per-step ‖ΔW‖/‖W‖ over recent steps), ``frozen``
    (ΔW exactly 0 at every one), ``trainable`` (``weight.requires_grad``).
    Depth: ``path_signal`` (per-sample ‖∂L/∂h‖ at this site's main-path tensor, ``path_side`` "in" or
    "out": its input or output; None off the main path, see ``deepdiag.measure.paths``).
    Attention (MultiheadAttention, checkup): ``attention_peak`` (mean over queries and heads of the
    largest attention probability: 1/keys when uniform, 1 when collapsed onto one key).
    Recurrent (RNN/LSTM/GRU, checkup): ``gate_saturation`` (((gate, fraction of its units saturated on
    more than half of the samples × time steps), ...)), ``time_ratio`` (per-sample ‖∂L/∂h_1‖ over
    ‖∂L/∂h_T‖ of the last layer's state: > 1 when the gradient grows back through time), ``stacked``
    (its ``num_layers``).
    Derivative (sigmoid/tanh activation modules, checkup): ``deriv_rms`` (RMS over the batch of the
    activation's derivative f′(z), read from its output: σ(1 − σ) or 1 − tanh²; the factor by which
    the activation scales the back-propagated signal).
    Sample spread (weight, recurrent and attention sites, checkup): ``batch_spread`` / ``in_batch_spread``
    (RMS of the standard deviation across the batch's samples of the output / input, over its RMS: 0
    when every sample gives the same tensor).
    Kinds beyond weight/norm/activation: "embedding", "recurrent", "attention" (their ≥ 2-D parameters
    summarised in ``weight_norm``/``grad_norm``), "parameter" (a module no hook saw: only its
    parameters' norms).
    Wiring: ``is_model_input`` (fed by the model's input), ``source`` (an activation's producing layer),
    ``inferred_family`` (relu/tanh/sigmoid of functionally-activated units on a weight layer).
    """

    name: str
    type: str | None = None
    kind: str | None = None
    family: str | None = None
    fan_in: int | None = None
    fan_out: int | None = None
    units: int | None = None
    weight_std: float | None = None
    init_scheme: str | None = None
    init_std: float | None = None
    act_mean: float | None = None
    act_std: float | None = None
    act_rms: float | None = None
    in_rms: float | None = None
    frac_zero: float | None = None
    frac_dead: float | None = None
    frac_saturated: float | None = None
    frac_saturated_units: float | None = None
    signal_norm: float | None = None
    grad_norm: float | None = None
    grad_rel: float | None = None
    weight_norm: float | None = None
    bias_mean: float | None = None
    sym_rows: float | None = None
    sym_next: float | None = None
    next_layer: str | None = None
    unit_spread: float | None = None
    positions: int | None = None
    dead: int | None = None
    saturated: int | None = None
    update_rel: float | None = None
    frozen: bool | None = None
    trainable: bool | None = None
    is_model_input: bool = False
    source: str | None = None
    inferred_family: str | None = None
    path_signal: float | None = None
    path_side: str | None = None
    attention_peak: float | None = None
    gate_saturation: tuple | None = None
    time_ratio: float | None = None
    stacked: int | None = None
    deriv_rms: float | None = None
    batch_spread: float | None = None
    in_batch_spread: float | None = None

    @property
    def unit_family(self) -> str | None:
        """relu / tanh / sigmoid when this record carries unit statistics (module or inferred), else None."""
        return self.inferred_family or (self.family if self.family in UNIT_FAMILIES else None)

    def to_dict(self) -> dict:
        """The record as a dict (``inferred_family`` only where set, as the layer table shows it); what
        ``dataclasses.asdict`` gives, without its deep copy of every float (a tenth of a ResNet checkup)."""
        d = {k: getattr(self, k) for k in LAYER_FIELDS}
        if d["gate_saturation"] is not None:  # the one container field: copied as asdict copies it
            d["gate_saturation"] = deepcopy(d["gate_saturation"])
        for k in ("inferred_family", "path_side", "attention_peak", "gate_saturation", "time_ratio", "deriv_rms",
                  "batch_spread", "in_batch_spread"):
            if d[k] is None:
                del d[k]
        return d


LAYER_FIELDS = tuple(f.name for f in fields(LayerStats))

_OUTPUT_ALWAYS = ("loss", "last_module", "last_name", "out_width", "n_samples")


@dataclass(frozen=True)
class OutputFacts:
    """The model's output and the loss, as ``output_loss_mismatch`` reads them.

    ``loss``: cross_entropy / nll / bce_with_logits / bce / mse; ``last_module`` / ``last_name``: type
    and name of the leaf module whose output is the model's output (None when not a module's output);
    ``last_op``: the activation that computed the output, module or function (``measure.io.output_op``:
    "Sigmoid", "ReLU", ...; "" another op; None no graph);
    ``out_width``: size of dimension 1 (1 for a 1-D output); ``n_samples``; ``out_min`` / ``out_max``;
    ``strictly_inside01``: every output in (0, 1) on ≥ 8 samples; ``rows_sum_to_one``: every row sums to
    1 ± 10⁻⁴; ``target_kind`` ("int" / "float"), ``target_min`` / ``target_max``, ``target_rms`` (float
targets: √mean(y²)), ``target_distinct`` (integer targets: how many distinct values); ``default_loss``:
    checkup chose the loss itself; ``out_rms`` (RMS of the output); for cross-entropy over ≥ 2 class
    scores with integer targets: ``peak_prob`` (mean over samples of the largest softmax probability)
    and ``out_loss`` (the cross-entropy of this output), ``uniform_loss`` (the cross-entropy it would score
    with every row's label drawn uniformly: mean over rows and classes of −log pᵢⱼ, what a label-independent
    output scores in expectation, from all k log-probabilities of a row rather than one) and ``label_z``
    (the mean of ℓᵢ − uᵢ, row i's loss minus its uniform-label loss, over its standard error: well below
    0 when the output points at the labels). None: not measured.
    """

    loss: str | None
    last_module: str | None = None
    last_name: str | None = None
    last_op: str | None = None
    out_width: int | None = None
    n_samples: int | None = None
    out_min: float | None = None
    out_max: float | None = None
    strictly_inside01: bool | None = None
    rows_sum_to_one: bool | None = None
    target_kind: str | None = None
    target_min: float | None = None
    target_max: float | None = None
    target_rms: float | None = None
    target_distinct: int | None = None
    default_loss: bool | None = None
    out_rms: float | None = None
    peak_prob: float | None = None
    out_loss: float | None = None
    uniform_loss: float | None = None
    label_z: float | None = None

    def evidence(self) -> dict:
        """The measured facts as a dict: always the loss and output shape, the rest where measured."""
        return {k: v for k, v in asdict(self).items() if k in _OUTPUT_ALWAYS or v is not None}


@dataclass(frozen=True)
class InputFacts:
    """Per-feature ``feature_mean`` and ``feature_std`` of a floating input batch (feature = last dim of
    a 2-D batch, channel = dim 1 otherwise), the ``first_layer`` it feeds and, when measured, that
    layer's output std ``first_out_std``."""

    feature_mean: tuple
    feature_std: tuple
    first_layer: str | None = None
    first_out_std: float | None = None


@dataclass(frozen=True)
class NonFiniteFacts:
    """NaN/±Inf entries where a training step reads numbers: ``inputs`` and ``targets`` (entries of the
    batch's floating tensors, out of ``n_inputs`` / ``n_targets``), ``weights`` ((parameter name, count)
    pairs of the parameters holding any, out of ``n_weights`` entries in all), ``output`` (entries of
    the model's output, out of ``n_output``) and ``loss`` (True when the loss value is not finite).
    None: not measured."""

    inputs: int | None = None
    n_inputs: int | None = None
    targets: int | None = None
    n_targets: int | None = None
    weights: tuple = ()
    n_weights: int | None = None
    output: int | None = None
    n_output: int | None = None
    loss: bool | None = None

    def sources(self) -> list[str]:
        """Where non-finite values are, in the order data flows: inputs, targets, weights, output, loss."""
        return [name for name, bad in (("inputs", self.inputs), ("targets", self.targets),
                                       ("weights", sum(n for _, n in self.weights)), ("output", self.output),
                                       ("loss", self.loss)) if bad]


@dataclass(frozen=True)
class Coverage:
    """Which weight-bearing modules (those owning a parameter of ≥ 2 dimensions) were measured.

    ``weight_modules``: how many the model has; ``measured``: seen by a hook (their own, or that of the
    attention/recurrent module that calls them functionally, e.g. MultiheadAttention's ``out_proj``);
    ``by_parameter``: no hook saw them but their parameters got a gradient (weight and gradient norms
    only, rows of kind "parameter"); ``not_measured``: neither (unused in the pass, or frozen).
    """

    weight_modules: int
    measured: int
    by_parameter: tuple = ()
    not_measured: tuple = ()

    @property
    def fraction(self) -> float:
        """Measured (by hook or by parameter) over weight-bearing modules (1.0 for none)."""
        return (self.measured + len(self.by_parameter)) / self.weight_modules if self.weight_modules else 1.0

    def to_dict(self) -> dict:
        return {"weight_modules": self.weight_modules, "measured": self.measured,
                "by_parameter": list(self.by_parameter), "not_measured": list(self.not_measured),
                "fraction": self.fraction}

    def __str__(self) -> str:
        s = f"{self.measured} of {self.weight_modules} weight-bearing modules measured"
        if self.by_parameter:
            s += f", {len(self.by_parameter)} by their parameters only"
        if self.not_measured:
            s += f"; not measured: {', '.join(self.not_measured[:8])}{' ...' if len(self.not_measured) > 8 else ''}"
        return s


@dataclass(frozen=True)
class AffineLink:
    """Two weight layers with nothing nonlinear between them: the input of layer ``to`` was measured to
    be an affine function of the output of layer ``source`` (and of whatever else feeds it directly),
    so W_to·(affine map)·W_source is one linear map.

    ``deviation``: ‖u(a·z₁ + (1−a)·z₂) − (a·u(z₁) + (1−a)·u(z₂))‖ / max(‖u(z₁)‖, ‖u(z₂)‖) over the
    pairs; ``spread``: ‖u(z₁) − u(z₂)‖ / max(‖u(z₁)‖, ‖u(z₂)‖) (how much the input varied between the
    paired samples). Shapes: ``fan_in`` (input features/channels of ``source``), ``inner`` (its output
    units), ``fan_out`` (output units of ``to``); ``params`` (entries of both weights) and
    ``single_params`` (entries of the one layer from ``source``'s input to ``to``'s output, with
    ``source``'s kernel). ``placeholder``: an ``nn.Identity`` module called between the two (an activation
slot left empty), or None. ``pure``: ``source`` feeds only ``to`` and ``to`` reads only ``source`` (a plain
chain, not one term of a sum such as a residual stream). ``compression``: the pair is a deliberate factorisation (a rank bottleneck,
    inner < min(fan_in, fan_out), or fewer parameters than the single layer)."""

    source: str
    to: str
    deviation: float
    spread: float
    fan_in: int
    inner: int
    fan_out: int
    params: int
    single_params: int
    placeholder: str | None = None
    pure: bool = True

    @property
    def compression(self) -> bool:
        return self.inner < min(self.fan_in, self.fan_out) or self.params < self.single_params


@dataclass(frozen=True)
class AffineFacts:
    """What the affinity test measured (``deepdiag.measure.affine``): the ``links`` found affine, whether
    the ``whole_model`` (output as a function of the input, or of the embeddings' outputs when the input
    is token ids) is affine, the ``tolerance`` the deviations were held to, the mixture weight ``mix``,
    the number of sample ``pairs``, how many weight-layer inputs were ``judged`` and whether the inputs
    were ``tokens`` (integer ids: mixed after the embeddings); ``activation_modules``: activation modules
(ReLU, Tanh, ...; not nn.Identity) called in the forward pass."""

    links: tuple[AffineLink, ...]
    whole_model: bool
    tolerance: float
    mix: float
    pairs: int
    judged: int
    tokens: bool = False
    activation_modules: int = 0


@dataclass(frozen=True)
class CarryFacts:
    """Whether the gradient a parameter already held when backward brought its fresh one was zero, at
    the first backward pass after each checked optimizer step (``deepdiag.measure.carryover``).

    ``checks``: optimizer steps checked (every ``every``-th, every ``sparse_every``-th from step
    ``sparse_from`` on); ``carried``: of those, the ones where every
    probed parameter that got a gradient already held a non-zero one (left over from earlier steps);
    ``longest``: the longest run of consecutive checks that found it, from optimizer step ``first_step``
    to ``last_step`` (0-based, as the optimizer steps were counted); ``held_first`` / ``held_last``:
    ‖held gradient‖ of the last probe at the run's first and last check (what the optimizer applied at the
    step before), ``fresh_last``: ‖fresh gradient‖ of one backward pass at the last check; ``probes``:
    the probed parameters' names. None: not measured.
    """

    checks: int = 0
    carried: int = 0
    longest: int = 0
    first_step: int | None = None
    last_step: int | None = None
    held_first: float | None = None
    held_last: float | None = None
    fresh_last: float | None = None
    every: int = 1
    sparse_from: int | None = None
    sparse_every: int | None = None
    probes: tuple = ()
