"""Disputed training labels (deepdiag.labels, confident learning) and the drop_disputed_labels fix."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import deepdiag as dd
from deepdiag import labels
from deepdiag.fixes import apply_fix, fix_data


def test_a_label_is_disputed_when_another_class_clears_its_threshold_and_is_most_probable():
    # class 0's threshold: mean p0 over samples labelled 0 = (0.9 + 0.8 + 0.2) / 3 = 0.633
    # class 1's threshold: mean p1 over samples labelled 1 = (0.7 + 0.6 + 0.1) / 3 = 0.467
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8],   # labelled 0
                          [0.3, 0.7], [0.4, 0.6], [0.9, 0.1]])  # labelled 1
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    assert labels.disputed(probs, y).tolist() == [False, False, True, False, False, True]


def test_a_sample_above_no_threshold_is_kept():
    # thresholds: class 0 mean(0.6, 0.5) = 0.55, class 1 mean(0.9) = 0.9: sample 1 (p0 0.5 < 0.55, p1 0.5 < 0.9)
    # clears neither and is not counted, although class 1 ties with its label
    probs = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.1, 0.9]])
    assert labels.disputed(probs, torch.tensor([0, 0, 1])).tolist() == [False, False, False]


def test_per_position_labels_dispute_a_sample_when_most_positions_are_disputed():
    # thresholds over positions: class 0 mean(0.9, 0.9, 0.1, 0.1, 0.9) = 0.58, class 1 mean(0.9) = 0.9
    probs = torch.tensor([[[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]],
                          [[0.1, 0.9], [0.1, 0.9], [0.9, 0.1]]])
    y = torch.tensor([[0, 0, 1], [0, 0, 0]])  # the second sample's first two positions look like class 1
    assert labels.disputed_samples(probs, y).tolist() == [False, True]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\(n, k\)"):
        labels.disputed(torch.rand(4), torch.zeros(4, dtype=torch.long))


def blobs(n=400, flip=0.3, seed=0):
    """Two well separated Gaussian blobs in 2-d; a `flip` share of the training labels swapped."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 4.0 * (2 * y[:, None] - 1)
    wrong = torch.rand(n, generator=g) < flip
    return x, y, torch.where(wrong, 1 - y, y), wrong


def test_out_of_fold_predictions_find_the_flipped_labels_of_a_separable_problem():
    """Blobs 8 standard deviations apart: any fitted linear model separates them, so the out-of-fold
    predictions follow the true class and the flipped labels are exactly the disputed ones (up to a few)."""
    x, _, noisy, wrong = blobs()
    data = SimpleNamespace(x_train=x, y_train=noisy, task="classification")
    train = lambda m, d: dd.fit(m, d, optimizer="adam", lr=0.05, epochs=20, batch_size=64, restore_best=True)

    def make(fold):
        torch.manual_seed(fold)
        return nn.Linear(2, 2)

    probs = labels.out_of_fold(make, data, train, seed=0)
    assert probs.shape == (len(x), 2) and torch.allclose(probs.sum(1), torch.ones(len(x)))
    flagged = labels.disputed_samples(probs, noisy)
    hits = int((flagged & wrong).sum())
    assert hits >= 0.9 * int(wrong.sum()) and hits >= 0.9 * int(flagged.sum())


def test_fix_data_drops_the_disputed_samples_and_needs_the_mask():
    x, y = torch.arange(10.0)[:, None], torch.arange(10) % 2
    data = SimpleNamespace(x_train=x, y_train=y, x_val=x[:3], y_val=y[:3])
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4]] = True
    new = fix_data(data, {"drop_disputed_labels": True}, disputed=mask)
    assert new.x_train.squeeze(1).tolist() == [0, 2, 3, 5, 6, 7, 8, 9] and new.y_train.tolist() == [0, 0, 1, 1, 0, 1, 0, 1]
    assert new.x_val is data.x_val and len(data.x_train) == 10  # other splits and the original untouched
    with pytest.raises(ValueError, match="disputed="):
        fix_data(data, {"drop_disputed_labels": True})
    with pytest.raises(ValueError, match="one entry per training sample"):
        fix_data(data, {"drop_disputed_labels": True}, disputed=mask[:5])


def test_apply_fix_passes_the_key_on_as_a_data_change():
    _, changes = apply_fix(nn.Linear(2, 2), {"drop_disputed_labels": True})
    assert changes.data == {"drop_disputed_labels": True} and not changes.train
    with pytest.raises(TypeError, match="drop_disputed_labels"):
        apply_fix(nn.Linear(2, 2), {"drop_disputed_labels": "yes"})


def test_labels_that_disagree_with_validation_get_the_drop_fix():
    from deepdiag.rules.curves import labels_disagree

    (f,) = labels_disagree([0.5, 0.55, 0.56], [0.8, 0.82, 0.83])
    assert f.fix == {"drop_disputed_labels": True} and "disputed" in f.remedy
