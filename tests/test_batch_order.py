"""Batches ordered by class (not shuffled): the class mix a loss module sees, and the rule that names it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deepdiag.measure.batches import BatchClasses
from deepdiag.rules.batches import random_classes, unshuffled_batches


def batches_of(y: torch.Tensor, size: int) -> list[list[int]]:
    return [torch.bincount(y[i:i + size], minlength=int(y.max()) + 1).tolist() for i in range(0, len(y), size)]


def test_classes_of_random_batches_mean_and_variance_bound():
    assert random_classes([0.5, 0.5], 1) == pytest.approx((1.0, 0.5))  # one class; bound 2·½·½ (true: 0)
    # B = 2: both classes unless both draws agree; 1 or 2 classes with probability ½ each: variance ¼ ≤ 3/8
    assert random_classes([0.5, 0.5], 2) == pytest.approx((1.5, 2 * 0.75 * 0.25))
    q = 1 - 0.9 ** 32
    assert random_classes([0.1] * 10, 32) == pytest.approx((10 * q, 10 * q * (1 - q)))


def test_sorted_labels_are_named_and_shuffled_ones_are_not():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(10, (2000,), generator=g)
    sorted_y = y.sort().values
    (f,) = unshuffled_batches(batches_of(sorted_y, 32))
    assert f.code == "oscillating_loss" and f.evidence["cause"] == "unshuffled"
    assert f.evidence["classes_per_batch"] < 1.2 and f.evidence["expected_if_shuffled"] > 9
    assert unshuffled_batches(batches_of(y, 32)) == []
    two = torch.randint(2, (2000,), generator=g)  # two classes: random batches hold both
    assert unshuffled_batches(batches_of(two, 16)) == []
    assert unshuffled_batches(batches_of(two.sort().values, 16))  # sorted: one class per batch


def test_too_few_batches_or_batches_of_one_are_not_judged():
    y = torch.arange(10).repeat_interleave(20)
    assert unshuffled_batches(batches_of(y, 32)[:15]) == []  # 15 batches < 16
    assert unshuffled_batches(batches_of(y, 1)) == []  # a batch of one holds one class whatever the order


def test_the_threshold_is_half_of_the_extra_classes_of_a_random_mix():
    # 16 batches of 8 over 2 equal classes: random batches hold 2 - 2·0.5^8 = 1.992 classes
    assert unshuffled_batches([[8, 0]] * 16) == []  # one class overall: nothing to expect
    assert unshuffled_batches([[8, 0]] * 8 + [[0, 8]] * 8)  # one class per batch, two overall
    # extra classes 7/16 = 0.44 <= half of 0.992: named; 9/16 = 0.56 > 0.496: silent
    assert unshuffled_batches([[8, 0]] * 5 + [[0, 8]] * 4 + [[4, 4]] * 7)
    assert unshuffled_batches([[8, 0]] * 4 + [[0, 8]] * 3 + [[4, 4]] * 9) == []


def test_the_hook_counts_training_targets_of_a_loss_module_for_one_epoch():
    loss_fn = nn.CrossEntropyLoss()
    seen = BatchClasses(loss_fn)
    out = torch.randn(4, 3, requires_grad=True)
    loss_fn(out, torch.tensor([0, 0, 2, 2]))
    with torch.no_grad():
        loss_fn(out, torch.tensor([1, 1, 1, 1]))  # evaluation: not a training batch
    loss_fn(out.reshape(2, 2, 3).transpose(1, 2), torch.tensor([[1, -100], [1, 2]]))  # ignore_index left out
    assert seen.counts() == [[2, 0, 2], [0, 2, 1]]
    seen.epoch_end()
    loss_fn(out, torch.tensor([0, 1, 2, 0]))
    assert len(seen.counts()) == 2  # stopped after the first epoch
    assert BatchClasses(nn.functional.cross_entropy).counts() == []  # a function has no hook


def _train(sort: bool, loss_fn=None, epochs=2):
    import deepdiag as dd

    torch.manual_seed(0)
    x = torch.randn(640, 8)
    y = (x[:, :4].argmax(1))  # 4 classes
    if sort:
        order = y.argsort(stable=True)
        x, y = x[order], y[order]
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    with dd.Monitor(model, loss_fn=loss_fn, optimizer=opt, n_classes=4) as mon:
        for _ in range(epochs):
            for i in range(0, 640, 32):
                opt.zero_grad()
                loss = loss_fn(model(x[i:i + 32]), y[i:i + 32])
                loss.backward()
                opt.step()
                mon.step(loss)
            mon.epoch(train_loss=float(loss.detach()))
        return [f for f in mon.diagnose() if f.evidence.get("cause") == "unshuffled"], mon


def test_the_monitor_names_a_loop_over_class_sorted_data():
    found, mon = _train(sort=True)
    assert len(found) == 1 and found[0].evidence["classes_per_batch"] < 1.5
    assert found[0].evidence["batches"] == 20  # the first epoch only
    assert mon.n_hooks == 0
    assert _train(sort=False)[0] == []
    assert _train(sort=True, loss_fn=nn.functional.cross_entropy)[0] == []  # a function: not seen


@pytest.mark.parametrize("case", ["int64", "uint8", "ignore_index_255", "nll_negative", "other_loss"])
def test_class_counts_of_any_integer_targets(case):
    """Each class id counted once per target, ignored targets (negative ids, the loss's ignore_index) left
    out, for the targets' integer dtype (uint8 masks too), against bincount of the kept ids."""
    from deepdiag.measure.batches import _class_counts

    ids = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    loss, scores = nn.CrossEntropyLoss(), torch.zeros(8, 4)
    if case == "uint8":
        ids = ids.to(torch.uint8)
    elif case == "ignore_index_255":
        ids, loss = torch.tensor([0, 0, 1, 1, 255, 255, 3, 1]), nn.CrossEntropyLoss(ignore_index=255)
    elif case == "nll_negative":
        ids, loss = torch.tensor([0, -100, 1, 3, -100, 2, 0, 1]), nn.NLLLoss()
    elif case == "other_loss":
        loss = nn.MultiMarginLoss()
    got = _class_counts(ids, loss, scores).tolist()
    kept = ids.long()[(ids.long() >= 0) & (ids.long() != getattr(loss, "ignore_index", -1))]
    want = torch.bincount(kept, minlength=4 if case != "other_loss" else 0).tolist()
    assert got == want
