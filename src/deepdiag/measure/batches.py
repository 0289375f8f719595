"""The class mix of training batches: which classes each mini-batch's targets hold.

``BatchClasses(loss_fn)`` puts a forward pre-hook on a loss *module* and, for the training calls (autograd
on) of the first epoch, keeps each batch's class counts (of its integer targets, negative ids such as
ignore_index −100 left out; ``_class_counts``). The counts stay on the device: nothing is read back
until ``counts()``. It removes itself after ``max_batches`` batches or at ``epoch_end()``, so it costs
one small kernel per step of the first epoch and nothing afterwards. A loss called as a function has no
hook to take: then nothing is recorded.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

MAX_BATCHES = 512  # enough batches to estimate the class shares; bounded memory on endless epochs


class BatchClasses:
    def __init__(self, loss_fn, max_batches: int = MAX_BATCHES):
        self.max_batches = max_batches
        self._counts: list[Tensor] = []
        self._handle = loss_fn.register_forward_pre_hook(self._pre) if isinstance(loss_fn, nn.Module) else None

    def _pre(self, module, args, *rest):
        if not torch.is_grad_enabled() or len(args) < 2 or not isinstance(args[1], Tensor):
            return
        y = args[1].detach()
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.numel() < 2:
            return
        self._counts.append(_class_counts(y.reshape(-1), module, args[0]))
        if len(self._counts) >= self.max_batches:
            self.remove()

    def epoch_end(self) -> None:
        """The first epoch is over: stop recording."""
        if self._counts:
            self.remove()

    def counts(self) -> list[list[int]]:
        """Per recorded batch, its count of each class id (0, 1, ..., C − 1 for cross-entropy and NLL, whose
        scores give C; else up to the largest id seen), as integers."""
        if not self._counts:
            return []
        k = max(len(c) for c in self._counts)
        table = torch.stack([nn.functional.pad(c, (0, k - len(c))) for c in self._counts])
        return table.cpu().tolist()

    @property
    def n_hooks(self) -> int:
        return int(self._handle is not None)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _class_counts(ids: Tensor, loss: nn.Module, scores) -> Tensor:
    """Count of each class id in `ids`, negative ids and the loss's ``ignore_index`` left out. For
    cross-entropy and NLL, whose scores are (N, C, ...), into C bins fixed by the shape (a scatter-add:
    nothing read back; on CUDA, ``bincount`` and a boolean mask both wait for the device to learn their
    output's size, at every step of the first epoch); for other losses by ``bincount`` of the
    non-negative ids. Integer targets of any dtype (uint8 masks too) are counted as int64."""
    ids = ids.long()
    if isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)) and isinstance(scores, Tensor) and scores.dim() >= 2:
        k = int(scores.shape[1])
        ids = ids.masked_fill(ids == loss.ignore_index, -1)  # (e.g. 255 in segmentation masks)
        bins = ids.clamp(-1, k - 1) + 1  # ignored and negative ids into bin 0, dropped (an id >= C fails the loss)
        return torch.zeros(k + 1, dtype=torch.long, device=ids.device).scatter_add_(0, bins, torch.ones_like(bins))[1:]
    return torch.bincount(ids[ids >= 0])


__all__ = ["MAX_BATCHES", "BatchClasses"]
