"""Which round ``curate pseudolabel`` commits: a paired comparison of two rounds' models on the same val rows.

At 1,000 labels val holds about 100 rows, so one row is one point of accuracy and ranking rounds by their val
accuracy ranks noise (BENCHMARKS.md: a model 0.2 points better on 10,000 test images was ranked lower by one val
row, and the loop committed nothing). Two models scored on the *same* rows are compared row by row instead:
``d_i = correct_new_i - correct_ref_i`` in {-1, 0, 1}, and the bootstrap over the val rows of ``mean(d)`` gives a
confidence interval of the accuracy difference. Rows both models get right (or both wrong) carry no information
and add no noise, which is what makes the paired test far sharper than two separate accuracies.

A later round saw more data (the labeled rows plus the accepted pool rows), so the prior is on its side: it is
kept unless it is **significantly worse**, i.e. the upper end of the two-sided ``level`` interval (one-sided
``(1 + level) / 2``) is below zero. With 100 val rows that takes about four more rows lost than won; a tie or a
one-row difference never discards a round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.90  # two-sided: the upper bound is a one-sided 95 % bound
N_BOOT = 4000


@dataclass(frozen=True)
class Comparison:
    """A round's model against an earlier round's model on the same val rows.

    Attributes:
        against: the earlier round.
        delta: mean paired accuracy difference, new minus earlier (0.01 = one more row right in 100).
        low, high: the bootstrap interval of ``delta`` at ``LEVEL``.
        worse: ``high < 0``: the new model is significantly worse.
    """

    against: int
    delta: float
    low: float
    high: float

    @property
    def worse(self) -> bool:
        return self.high < 0.0


def paired_interval(new_correct: np.ndarray, ref_correct: np.ndarray, *, level: float = LEVEL, n_boot: int = N_BOOT,
                    seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """``(delta, low, high)``: the mean paired difference of two bool ``(N,)`` correctness vectors and its
    percentile bootstrap interval.

    ``d`` takes three values, so a bootstrap resample is fully described by how many of its N rows are +1 and how
    many -1: one multinomial draw per resample instead of N indices (exact, and cheap for any val size).
    """
    d = np.asarray(new_correct, np.int64) - np.asarray(ref_correct, np.int64)
    n = len(d)
    if n == 0:
        return 0.0, float("-inf"), float("inf")
    p = np.array([(d == -1).sum(), (d == 0).sum(), (d == 1).sum()], np.float64) / n
    counts = np.random.default_rng(seed).multinomial(n, p, size=n_boot)
    means = (counts[:, 2] - counts[:, 0]) / n
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(d.mean()), float(low), float(high)


def strictest(new_correct: np.ndarray, kept: dict[int, np.ndarray], *, seed: int = 0) -> Comparison | None:
    """The new model against every kept earlier round (``{round: bool (N,) correct}``): the comparison with the
    lowest upper bound (ties: the earliest round). Comparing against all of them, not only the last kept one,
    stops a slow slide: each round a little worse than the one before, none significantly, the last one well
    below round 0. None without val rows or earlier rounds."""
    out: Comparison | None = None
    for r in sorted(kept):
        if len(new_correct) == 0:
            return None
        c = Comparison(r, *paired_interval(new_correct, kept[r], seed=seed + r))
        if out is None or c.high < out.high:
            out = c
    return out


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean Brier score of float ``(N, K)`` probabilities against int ``(N,)`` labels (0 = perfect, 2 = worst): a
    continuous companion of accuracy in the round rows (recorded, not used to choose)."""
    if len(labels) == 0:
        return float("nan")
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(1).mean())
