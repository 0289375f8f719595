"""Training labels the data dispute: confident learning (Northcutt, Jiang & Chuang, JAIR 2021).

When a share of the training labels is wrong, no change to the model or the training makes the
training labels right; what can be done is to find the samples whose label the rest of the data
contradicts and train without them. Confident learning does it from out-of-fold predicted
probabilities p̂ᵢ (each sample predicted by a model that never saw it):

* per class j, the threshold tⱼ = mean of p̂ᵢⱼ over the samples labelled j (the model's average
  self-confidence on its own class: a calibration-free, per-class bar);
* sample i, labelled ỹᵢ, is counted for the classes j with p̂ᵢⱼ ≥ tⱼ, and assigned the most probable of
  them, j* = argmax_{j: p̂ᵢⱼ ≥ tⱼ} p̂ᵢⱼ; it is *disputed* when j* ≠ ỹᵢ (an off-diagonal entry of the
  confident joint). A sample above no threshold is not counted and kept.

Each fold model is trained as configured but keeps the weights of its epoch with the lowest loss on its
held-out part (``restore_best``): under uniform label noise the expected held-out loss is lowest for the
noisy posterior (1 − ρ)·p + ρ/k, whose most probable class is the clean one, so this early stopping
picks the model before it memorises the noise, with labels it never trained on.

Why out of fold: a network memorises its training labels, wrong ones included (Zhang et al. 2017), so
in-sample predictions agree with any label; a model that never saw sample i predicts it from the
patterns the other samples share, which the clean majority of labels dominates (networks learn those
patterns before they memorise noise: Arpit et al. 2017). Why per-class thresholds: classes differ in
how confidently they are predicted; a single bar would flag the hard class wholesale. With uniform
noise on a fraction ρ < (k−1)/k of the labels over k classes, the true class keeps the plurality of
every region's labels, so the out-of-fold predictions follow it and the wrong labels are the
disputed ones. With every label random (ρ = (k−1)/k) there is nothing to follow: the predictions are
near uniform, the disputed set is noise, and retraining without it does not help — which the repair
search then measures.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .data import ArrayData

FOLDS = 4  # each sample predicted by a model trained on the other 3/4 (cleanlab's default is 5; measured on
# half the data, as with 2 folds, the fold models of an LSTM or a small ResNet lose 15-25 points of accuracy and
# dispute clean labels wholesale)


def disputed(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the samples whose label the out-of-fold probabilities dispute (module doc).

    probs: (n, k) predicted class probabilities of samples none of which the predicting model saw;
    labels: (n,) integer class ids in [0, k)."""
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be (n, k) and labels (n,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    probs, labels = probs.double(), labels.long()
    k = probs.shape[1]
    counts = torch.bincount(labels, minlength=k).double()
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, probs.gather(1, labels[:, None]).squeeze(1))
    threshold = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, torch.inf))
    above = probs >= threshold
    best = torch.where(above, probs, torch.full_like(probs, -1.0)).argmax(dim=1)
    return above.any(dim=1) & (best != labels)


def class_probabilities(model: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """(n, ..., k) class probabilities of `model` on `x` in eval mode: a softmax over the last dimension,
    or, for one output per sample (a binary logit), (1 − σ(z), σ(z))."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(device)
            if xb.is_floating_point() and param is not None and param.is_floating_point():
                xb = xb.to(param.dtype)
            outs.append(model(xb).float().cpu())
    z = torch.cat(outs)
    if z.dim() == 1 or z.shape[-1] == 1:
        p = torch.sigmoid(z.reshape(len(z), *z.shape[1:-1]) if z.dim() > 1 else z)
        return torch.stack([1 - p, p], dim=-1)
    return torch.softmax(z, dim=-1)


def out_of_fold(make_model: Callable[[int], nn.Module], data, train: Callable[[nn.Module, object], None],
                folds: int = FOLDS, seed: int = 0) -> torch.Tensor:
    """Out-of-fold class probabilities of every training sample: the training split cut into `folds`
    parts by a permutation seeded with `seed`; for each part, ``make_model(fold)`` is trained by
    ``train(model, fold_data)`` on the other parts (their data as ``x_train``/``y_train``; the held-out
    part as ``x_val``/``y_val``) and predicts the held-out part."""
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    parts = order.chunk(folds)
    probs = None
    for f, held in enumerate(parts):
        rest = torch.cat([p for g, p in enumerate(parts) if g != f])
        fold = ArrayData(x[rest], y[rest], x[held], y[held], getattr(data, "task", "classification"))
        model = make_model(f)
        train(model, fold)
        p = class_probabilities(model, x[held])
        if probs is None:
            probs = torch.empty((len(x), *p.shape[1:]), dtype=p.dtype)
        probs[held] = p
    return probs


def disputed_samples(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample mask for labels of any shape: (n,) labels with (n, k) probabilities, or per-position
    labels (n, ...) with (n, ..., k) probabilities (a token model), where a sample is disputed when more
    than half of its positions are."""
    labels = torch.as_tensor(labels).long()
    if probs.dim() == 2:
        return disputed(probs, labels.reshape(-1))
    flat = disputed(probs.reshape(-1, probs.shape[-1]), labels.reshape(-1)).reshape(labels.shape)
    return flat.reshape(len(labels), -1).double().mean(dim=1) > 0.5


__all__ = ["FOLDS", "class_probabilities", "disputed", "disputed_samples", "out_of_fold"]
