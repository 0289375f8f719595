"""Batch-order rule: training batches that hold far fewer classes than random batches would (class
counts per batch in, ``Finding``s out)."""
from __future__ import annotations

from collections.abc import Sequence

from ..findings import Finding

MIN_BATCHES = 16  # batches recorded before judging (see the docstring)
MIX_FRACTION = 0.5  # a batch's classes beyond its first: at most half of what random batches hold ...
Z = 4.0  # ... and the shortfall >= 4 standard deviations of the random batches' mean


def presence(shares: Sequence[float], size: int) -> list[float]:
    """qⱼ = 1 − (1 − pⱼ)^size: the probability that a batch of `size` samples drawn at random from data
    with class shares pⱼ holds class j (drawing with replacement; a shuffled epoch draws without, which
    makes each class a little more likely to appear)."""
    return [1.0 - (1.0 - p) ** size for p in shares if p > 0]


def random_classes(shares: Sequence[float], size: int) -> tuple[float, float]:
    """(mean, variance bound) of the number of distinct classes in a random batch of `size`: E = Σⱼ qⱼ and
    Σⱼ qⱼ(1 − qⱼ) (``presence``; the indicators of the classes are negatively associated, so the true
    variance is at most their summed variances)."""
    q = presence(shares, size)
    return sum(q), sum(x * (1 - x) for x in q)


def unshuffled_batches(counts: Sequence[Sequence[int]], step: int | None = None) -> list[Finding]:
    """oscillating_loss (cause "unshuffled"): over ≥ 16 training batches of the first epoch, the batches
    hold far fewer classes than batches drawn at random from the same data (class shares pooled over those
    batches) → warning. Far fewer: the classes beyond the first, D̄ − 1, are at most half of the random
    batches' E − 1, and the shortfall E − D̄ is ≥ 4 standard deviations of the mean of m random batches.

    Why: a shuffled epoch draws every batch from the whole data set, so a batch of B holds class j with
    probability qⱼ = 1 − (1 − pⱼ)^B and E = Σⱼ qⱼ classes on average. The count of distinct classes is a
    sum of negatively associated indicators, so its variance is at most Σⱼ qⱼ(1 − qⱼ), and the mean of m
    batches has at most that over m. A shortfall of 4 such deviations has probability ≤ 1/16 whatever the
    distribution (Chebyshev) and about 3e-5 for a mean over ≥ 16 batches (normal approximation); halving
    the extra classes on top makes it a large effect, not a statistical quirk. Batches that hold one class each
    mean the data are ordered by class and not shuffled: every step pulls the model towards its batch's
    class, and the loss swings from batch to batch (the per-step curve oscillates, epoch after epoch; the
    model ends biased towards the last classes it saw). Batch size 1 (one class whatever the order) and a
    single full batch are not judged.
    """
    rows = [list(map(int, c)) for c in counts if sum(c) > 0]
    if len(rows) < MIN_BATCHES:
        return []
    k = max(len(r) for r in rows)
    totals = [sum(r[j] for r in rows if j < len(r)) for j in range(k)]
    n = sum(totals)
    shares = [t / n for t in totals]
    moments = [random_classes(shares, sum(r)) for r in rows]  # per batch: its size drawn at random
    observed = sum(sum(1 for x in r if x > 0) for r in rows) / len(rows)
    expected = sum(e for e, _ in moments) / len(rows)
    sd = (sum(v for _, v in moments) / len(rows) ** 2) ** 0.5  # of the mean of m independent batches
    if not (observed - 1 <= MIX_FRACTION * (expected - 1) and expected - observed >= Z * sd
            and expected - observed > 0.5):
        return []
    ev = {"batches": len(rows), "classes_per_batch": observed, "expected_if_shuffled": expected,
          "sd_if_shuffled": sd, "classes": sum(1 for t in totals if t > 0), "threshold": MIX_FRACTION,
          "cause": "unshuffled"}
    return [Finding("oscillating_loss", "warning",
                    f"Training batches hold {observed:.1f} classes on average where batches drawn at random from "
                    f"the same data would hold {expected:.1f} (of {ev['classes']} classes, over {len(rows)} "
                    f"batches): the data are ordered by class and not shuffled, so each step pulls the model "
                    f"towards its batch's classes and the loss swings from batch to batch.", ev,
                    "Shuffle the training data every epoch: DataLoader(..., shuffle=True), or index the data "
                    "with torch.randperm(n) each epoch.", [], step)]


__all__ = ["MIN_BATCHES", "presence", "random_classes", "unshuffled_batches"]
