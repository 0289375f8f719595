"""The model's input and output, and the loss: what ``output_loss_mismatch`` and ``unscaled_inputs``
read. ``IOProbe`` sees them on training passes; ``output_facts`` / ``input_facts`` reduce them to typed
records (host syncs: once per checkup, or on a Monitor's first step)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .hooks import Hooks
from .records import InputFacts, NonFiniteFacts, OutputFacts
from .sites import first_tensor, reduce_dims

_LOSS_KINDS = (
    (nn.CrossEntropyLoss, "cross_entropy"), (nn.NLLLoss, "nll"), (nn.BCEWithLogitsLoss, "bce_with_logits"),
    (nn.BCELoss, "bce"), (nn.MSELoss, "mse"), (nn.L1Loss, "mse"), (nn.SmoothL1Loss, "mse"), (nn.HuberLoss, "mse"),
)
_LOSS_FUNCTIONS = {
    "cross_entropy": "cross_entropy", "nll_loss": "nll", "binary_cross_entropy_with_logits": "bce_with_logits",
    "binary_cross_entropy": "bce", "mse_loss": "mse", "l1_loss": "mse", "smooth_l1_loss": "mse",
    "huber_loss": "mse",
}


def call_model(model: nn.Module, inputs):
    """model(inputs): a dict as keyword arguments, a tuple or list as positional arguments, else one argument."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def loss_kind(loss_fn) -> str | None:
    """cross_entropy / nll / bce_with_logits / bce / mse for torch's losses (modules or functions), else None."""
    if loss_fn is None:
        return None
    for cls, kind in _LOSS_KINDS:
        if isinstance(loss_fn, cls):
            return kind
    name = getattr(loss_fn, "__name__", None)
    if getattr(loss_fn, "__module__", "") in ("torch.nn.functional",) or name in _LOSS_FUNCTIONS:
        return _LOSS_FUNCTIONS.get(name)
    return None


_GRAPH_LOSSES = {  # autograd node of a torch loss -> loss kind (NLL: cross_entropy when fed by log_softmax)
    "NllLossBackward0": "nll", "NllLoss2DBackward0": "nll", "MseLossBackward0": "mse",
    "L1LossBackward0": "mse", "SmoothL1LossBackward0": "mse", "HuberLossBackward0": "mse",
    "BinaryCrossEntropyWithLogitsBackward0": "bce_with_logits", "BinaryCrossEntropyBackward0": "bce",
}
_RESHAPES = ("ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "SqueezeBackward0",
             "SqueezeBackward1", "UnsqueezeBackward0", "CloneBackward0", "ToCopyBackward0")
# nodes that rescale or reshape a loss without changing what it compares
_PASS_THROUGH = ("MeanBackward0", "MeanBackward1", "SumBackward0", "SumBackward1", "MulBackward0",
                 "DivBackward0") + _RESHAPES
_GRAPH_DEPTH = 8  # nodes walked from the loss: wrappers add one or two (a mean, a scale), never many


def _single_input(node):
    """The one differentiable input node of `node`, or None (none, or several: e.g. a sum of two losses)."""
    nxt = [n for n, _ in node.next_functions if n is not None]
    return nxt[0] if len(nxt) == 1 else None


_OUTPUT_MOVES = _RESHAPES + ("TBackward0", "TransposeBackward0", "PermuteBackward0", "ExpandBackward0",
                             "AliasBackward0", "SelectBackward0", "SliceBackward0")  # entries moved, not changed
# the op that made the model's output -> the module computing the same function (``output_op``)
OP_MODULES = {"SigmoidBackward0": "Sigmoid", "SoftmaxBackward0": "Softmax", "LogSoftmaxBackward0": "LogSoftmax",
              "ReluBackward0": "ReLU", "TanhBackward0": "Tanh", "SoftplusBackward0": "Softplus",
              "HardsigmoidBackward0": "Hardsigmoid"}


def output_op(y) -> str | None:
    """The activation that computed the tensor `y`, read from its autograd graph, as the module computing
    it is named ("Sigmoid", "Softmax", "ReLU", "Tanh", ...), through ops that only move entries (view,
    reshape, squeeze, transpose, ...): what ends the model, whether a module or a function
    (``torch.sigmoid(self.out(h))``) computed it. "" when another op made it (a Linear's addmm, an
    addition, ...); None without a graph (computed without autograd)."""
    node = getattr(y, "grad_fn", None)
    while node is not None and type(node).__name__ in _OUTPUT_MOVES:
        node = next((n for n, _ in node.next_functions if n is not None), None)
    return None if node is None else OP_MODULES.get(type(node).__name__, "")


def graph_loss_kind(loss) -> str | None:
    """The kind of torch loss that computed the tensor `loss`, read from its autograd graph: a user's own
    loss function (``def my_loss(out, y): return F.cross_entropy(out.reshape(-1, V), y.reshape(-1))``)
    is a torch loss wrapped in reshapes and scalings, and the node that made it says which (also after
    ``backward()``: node types outlive their saved tensors). Walks ≤ 8 nodes through rescaling/reshaping
    nodes only; a sum of several losses, or anything else, gives None (not recognised, not judged)."""
    node = getattr(loss, "grad_fn", None)
    for _ in range(_GRAPH_DEPTH):
        if node is None:
            return None
        name = type(node).__name__
        if name in _GRAPH_LOSSES:
            kind = _GRAPH_LOSSES[name]
            if kind == "nll":
                src = _single_input(node)
                while src is not None and type(src).__name__ in _RESHAPES:
                    src = _single_input(src)
                if src is not None and type(src).__name__ == "LogSoftmaxBackward0":
                    return "cross_entropy"
            return kind
        if name not in _PASS_THROUGH:
            return None
        node = _single_input(node)
    return None


class IOProbe:
    """Hooks that see the model's input, its output and the leaf module that produced the output (by
    tensor identity), for ``passes`` training forward passes; then they remove themselves.

    ``last`` holds, after a pass, {"input": tensor, "output": tensor, "last_module": type name or None,
    "last_name": name, "last_op": ``output_op`` of the output}; with ``loss_fn`` an ``nn.Module``, a pre-hook on it adds "target".
    """

    def __init__(self, model: nn.Module, loss_fn=None, passes: int = 1):
        self.model, self.passes, self.seen = model, passes, 0
        self.hooks = Hooks()
        self.last: dict = {}
        self.results: list[dict] = []
        self._leaf_out: tuple | None = None
        self._names = {id(m): n for n, m in model.named_modules()}
        self.hooks.add(model.register_forward_pre_hook(self._pre))
        self.hooks.add(model.register_forward_hook(self._post))
        for name, m in model.named_modules():
            if m is not model and not any(True for _ in m.children()):
                self.hooks.add(m.register_forward_hook(self._leaf))
        self._loss_hooked = isinstance(loss_fn, nn.Module)
        if self._loss_hooked:
            self.hooks.add(loss_fn.register_forward_pre_hook(self._loss_pre))

    def _pre(self, module, args, *rest):
        if torch.is_grad_enabled():
            x = first_tensor(args)
            self.last = {"input": x.detach() if x is not None else None}
            self._leaf_out = None

    def _leaf(self, module, args, out):
        if torch.is_grad_enabled() and isinstance(out, Tensor):
            self._leaf_out = (module, out)

    def _post(self, module, args, out):
        if not torch.is_grad_enabled() or "input" not in self.last:
            return
        y = first_tensor(out)
        self.last["output"] = y.detach() if y is not None else None
        self.last["last_op"] = output_op(y)
        if self._leaf_out is not None and y is not None and self._leaf_out[1] is y:
            m = self._leaf_out[0]
            self.last["last_module"], self.last["last_name"] = type(m).__name__, self._names.get(id(m))
        else:
            self.last["last_module"], self.last["last_name"] = None, None
        self.results.append(self.last)
        self.seen += 1
        if self.seen >= self.passes and not self._loss_hooked:
            self.remove()

    def _loss_pre(self, module, args, *rest):
        if len(args) >= 2 and isinstance(args[1], Tensor) and self.results:
            self.results[-1].setdefault("target", args[1].detach())
        if self.seen >= self.passes:
            self.remove()

    def remove(self) -> None:
        self.hooks.remove()


def output_facts(out: Tensor, last_module: str | None, loss: str | None, targets: Tensor | None = None,
                 last_name: str | None = None, default_loss: bool | None = None,
                 last_op: str | None = None) -> OutputFacts:
    """The numbers ``output_loss_mismatch`` reads (host syncs: call once per checkup / first steps)."""
    o = out.detach()
    width = int(o.shape[1]) if o.dim() >= 2 else 1
    facts: dict = {"loss": loss, "last_module": last_module, "last_name": last_name, "last_op": last_op,
                   "out_width": width,
                   "n_samples": int(o.shape[0]) if o.dim() else 1, "default_loss": default_loss}
    if o.numel() and o.is_floating_point():
        of = o.float()
        lo_hi = torch.stack([of.min(), of.max()]).tolist()  # host sync
        facts["out_min"], facts["out_max"] = lo_hi
        facts["strictly_inside01"] = lo_hi[0] > 0.0 and lo_hi[1] < 1.0 and facts["n_samples"] >= 8
        if o.dim() >= 2 and width > 1:
            facts["rows_sum_to_one"] = bool(((of.sum(1) - 1).abs() <= 1e-4).all())
        facts["out_rms"] = float(of.double().square().mean().sqrt())  # host sync
        if (loss == "cross_entropy" and o.dim() == 2 and width > 1 and isinstance(targets, Tensor)
                and not targets.is_floating_point() and targets.shape == o.shape[:1] and targets.numel()
                and 0 <= int(targets.min()) and int(targets.max()) < width):
            logp = torch.log_softmax(of.double(), dim=1)
            loss = -logp.gather(1, targets.long()[:, None]).squeeze(1)
            uniform = -logp.mean(1)  # the loss each row would score with its label drawn uniformly
            gain = loss - uniform
            se = gain.std() / math.sqrt(len(gain)) if len(gain) > 1 else torch.tensor(math.nan)
            vals = torch.stack([logp.amax(1).exp().mean(), loss.mean(), uniform.mean(), gain.mean() / se]).tolist()
            facts["peak_prob"], facts["out_loss"], facts["uniform_loss"], facts["label_z"] = vals  # host sync
    if targets is not None and isinstance(targets, Tensor) and targets.numel():
        t = targets.detach()
        facts["target_kind"] = "float" if t.is_floating_point() else "int"
        stats = [t.min(), t.max()] + ([t.double().square().mean().sqrt()] if t.is_floating_point() else [])
        vals = torch.stack([v.double() for v in stats]).tolist()  # host sync
        facts["target_min"], facts["target_max"] = vals[:2]
        if t.is_floating_point():
            facts["target_rms"] = vals[2]
        else:
            facts["target_distinct"] = int(torch.unique(t).numel())  # host sync
    return OutputFacts(**facts)


def function_output_facts(out: Tensor, loss: Tensor, last_module: str | None, targets: Tensor | None = None,
                          last_name: str | None = None, last_op: str | None = None) -> OutputFacts | None:
    """``output_facts`` for a loss given as the user's own function (kind read from the loss tensor's
    graph, ``graph_loss_kind``; None when not recognised). A class-score output with more than 2 dims
    (batch, ..., classes) is read with its classes last, as token losses flatten it
    (``out.reshape(-1, classes)``), and targets are flattened alike."""
    kind = graph_loss_kind(loss)
    if kind is None:
        return None
    if kind in ("cross_entropy", "nll") and out.dim() > 2:
        out = out.reshape(-1, out.shape[-1])
        if isinstance(targets, Tensor) and targets.numel() == out.shape[0]:
            targets = targets.reshape(-1)
    return output_facts(out, last_module, kind, targets, last_name, last_op=last_op)


def input_facts(x: Tensor | None, first_layer: str | None = None,
                first_out_std: float | None = None) -> InputFacts | None:
    """Per-feature mean and std of a floating input batch (feature = last dim of a 2-D batch, channel
    dim 1 otherwise) and the layer it feeds; None for non-float inputs (token ids) or fewer than 2 samples."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] < 2:
        return None
    xd = x.detach().double()
    dim = -1 if x.dim() == 2 else 1
    dims = reduce_dims(xd, dim)
    mean, std = xd.mean(dims), xd.std(dims, correction=0)
    both = torch.stack([mean, std]).cpu().tolist()  # host sync
    return InputFacts(tuple(both[0]), tuple(both[1]), first_layer, first_out_std)


def _floating(value) -> list[Tensor]:
    """The floating tensors in a batch given as a tensor, a tuple/list or a dict of them."""
    if isinstance(value, Tensor):
        return [value] if value.is_floating_point() or value.is_complex() else []
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _floating(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _floating(v)]
    return []


CHUNK = 1 << 22  # entries per isfinite call when counting: a 4M-entry bool mask, not a copy of a 100M-entry weight


def _count_bad(tensors: list[Tensor]) -> list[int]:
    """The number of NaN/±Inf entries of each tensor, in at most two host syncs.

    Screened by the sum first: one NaN makes the sum NaN and one ±Inf makes it ±Inf or NaN, so a finite
    sum proves every entry finite (one read, nothing allocated). Only a tensor whose sum is not finite
    (a bad entry, or finite entries whose sum overflowed) is counted entry by entry, in chunks of
    ``CHUNK``: ``torch.isfinite`` of a whole float weight allocates masks and an ``abs`` copy as large
    as the weight itself (+900 MiB on VGG-11's 4096×25088 layer)."""
    if not tensors:
        return []
    sums = torch.stack([t.detach().sum().to(torch.complex128 if t.is_complex() else torch.float64).cpu()
                        for t in tensors])
    finite = torch.isfinite(sums).tolist()  # host sync
    flagged = [i for i, ok in enumerate(finite) if not ok]
    counts = [0] * len(tensors)
    if flagged:
        exact = torch.stack([sum((~torch.isfinite(c)).sum() for c in tensors[i].detach().reshape(-1).split(CHUNK))
                             .cpu() for i in flagged]).tolist()  # host sync, only when something may be bad
        for i, n in zip(flagged, exact):
            counts[i] = int(n)
    return counts


def nonfinite_facts(inputs=None, targets=None, model: nn.Module | None = None, output=None,
                    loss=None) -> NonFiniteFacts:
    """Count the NaN/±Inf entries of the input batch, the targets, every parameter of `model`, the
    output and the loss: a full pass over each (once per checkup, or on a Monitor's first step), read
    in one host sync (two when some sum is not finite; see ``_count_bad``). Arguments left None are not measured (None in the record)."""
    groups = {"inputs": _floating(inputs) if inputs is not None else None,
              "targets": _floating(targets) if targets is not None else None,
              "output": _floating(output) if output is not None else None,
              "loss": _floating(loss) if loss is not None else None}
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point() and p.device.type != "meta"
             ] if model is not None else []  # a meta tensor has no values to count
    checked, where = [], []
    for key, tensors in groups.items():
        if tensors:
            checked += tensors
            where += [key] * len(tensors)
    checked += [p for _, p in named]
    where += [n for n, _ in named]
    values = _count_bad(checked)
    total = {key: 0 for key, tensors in groups.items() if tensors is not None}
    weights = []
    for key, v in zip(where, values):
        if key in groups:
            total[key] += int(v)
        elif v:
            weights.append((key, int(v)))
    size = lambda ts: sum(t.numel() for t in ts) if ts is not None else None  # noqa: E731
    return NonFiniteFacts(total.get("inputs"), size(groups["inputs"]), total.get("targets"),
                          size(groups["targets"]), tuple(weights),
                          sum(p.numel() for _, p in named) if model is not None else None,
                          total.get("output"), size(groups["output"]),
                          bool(total["loss"]) if "loss" in total else None)

