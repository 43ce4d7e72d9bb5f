"""Which predictions on the unlabeled pool become pseudo-labels: the classifier filter of ``curate pseudolabel``.

Pure numpy over small columns (the driver's global decision; ARCHITECTURE.md section 5). A prediction is
accepted when all three hold (four with a kNN vote):

1. **Confident, per class.** With ``threshold`` t, class c's threshold is FlexMatch's curriculum
   (Zhang et al. 2021): ``t_c = t * b_c / (2 - b_c)`` with ``b_c = n_c / max(n)``, where ``n_c`` counts the pool
   rows predicted c with confidence >= t. An easy class keeps t; a class the model rarely predicts confidently
   gets a lower bar (never below ``min_threshold``) instead of being starved. With ``per_class_top`` K the rule
   is instead the K most confident predictions of each class (at or above ``min_threshold``).
2. **In distribution** (``ood`` mask from the network's features, computed by the caller).
2b. **The neighbours agree** (only when the caller gives ``vote``: ``pseudolabel --select knn``): the majority
   class of the row's nearest labeled rows in a model's embedding space is the predicted class. A confident
   classifier can be confidently wrong (a shortcut in the pixels, a shift between labeled rows and pool); a
   second, independent view of the row that disagrees is the cheapest evidence of that. A row that clears its
   bar but is voted down gets the status ``knn_disagree``.
3. **Within the class quota.** No class takes more than ``balance`` times the median class's candidates, and
   ``max_pseudo`` (when given) is shared out equally (water-filling: a class with fewer candidates leaves its
   share to the others); within a class the most confident win.

Every pool row gets a status: ``accepted``, ``below_threshold``, ``ood``, ``knn_disagree`` or ``over_quota``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ACCEPTED, BELOW, OOD, OVER_QUOTA = "accepted", "below_threshold", "ood", "over_quota"
DISAGREE = "knn_disagree"


@dataclass
class Selection:
    """The filter's verdict on N pool rows.

    Attributes:
        predicted: int64 ``(N,)`` argmax class index.
        confidence: float64 ``(N,)`` its probability.
        accepted: bool ``(N,)``.
        status: object ``(N,)`` one of the statuses above.
        thresholds: float64 ``(K,)`` the confidence bar of each class this round.
    """

    predicted: np.ndarray
    confidence: np.ndarray
    accepted: np.ndarray
    status: np.ndarray
    thresholds: np.ndarray


def class_thresholds(predicted: np.ndarray, confidence: np.ndarray, k: int, *, threshold: float, min_threshold: float) -> np.ndarray:
    """FlexMatch's per-class thresholds (module doc, rule 1), float64 ``(K,)``."""
    n = np.bincount(predicted[confidence >= threshold], minlength=k).astype(np.float64)
    if n.max() == 0:
        return np.full(k, max(min_threshold, 0.0))
    b = n / n.max()
    return np.maximum(threshold * b / (2.0 - b), min_threshold)


def quotas(candidates: np.ndarray, *, balance: float, max_pseudo: int | None) -> np.ndarray:
    """Per-class caps, int64 ``(K,)``, from the candidate counts (module doc, rule 3)."""
    cand = np.asarray(candidates, np.int64)
    present = cand[cand > 0]
    cap = cand.copy()
    if len(present) and balance > 0:
        cap = np.minimum(cap, math.ceil(balance * float(np.median(present))))
    if max_pseudo is None or cap.sum() <= max_pseudo:
        return cap
    # water-filling: raise a common level until max_pseudo rows are shared out
    out = np.zeros_like(cap)
    left, open_ = int(max_pseudo), cap > 0
    while left > 0 and open_.any():
        share = max(1, left // int(open_.sum()))
        for c in np.flatnonzero(open_):
            take = min(share, int(cap[c] - out[c]), left)
            out[c] += take
            left -= take
            if out[c] >= cap[c]:
                open_[c] = False
            if left == 0:
                break
    return out


def select_pseudo(
    probs: np.ndarray,
    *,
    ood: np.ndarray | None = None,
    threshold: float = 0.95,
    min_threshold: float = 0.8,
    per_class_top: int | None = None,
    balance: float = 2.0,
    max_pseudo: int | None = None,
    vote: np.ndarray | None = None,
) -> Selection:
    """Apply the filter (module doc) to float ``(N, K)`` pool probabilities; ``ood`` is bool ``(N,)`` (True = out),
    ``vote`` int ``(N,)`` the kNN class of each row (None: no agreement rule)."""
    p = np.asarray(probs, np.float64)
    n, k = p.shape
    predicted = p.argmax(1) if n else np.zeros(0, np.int64)
    confidence = p[np.arange(n), predicted] if n else np.zeros(0)
    is_ood = np.zeros(n, bool) if ood is None else np.asarray(ood, bool)
    status = np.full(n, BELOW, dtype=object)
    status[is_ood] = OOD
    if per_class_top:
        thr = np.full(k, float(min_threshold))
        ok = ~is_ood & (confidence >= min_threshold)
    else:
        thr = class_thresholds(predicted[~is_ood], confidence[~is_ood], k, threshold=threshold, min_threshold=min_threshold)
        ok = ~is_ood & (confidence >= thr[predicted])
    if vote is not None:
        disagree = ok & (np.asarray(vote, np.int64) != predicted)
        status[disagree] = DISAGREE
        ok &= ~disagree
    cand = np.bincount(predicted[ok], minlength=k)
    cap = np.minimum(cand, per_class_top) if per_class_top else cand
    cap = quotas(cap, balance=0.0 if per_class_top else balance, max_pseudo=max_pseudo)
    accepted = np.zeros(n, bool)
    for c in range(k):
        rows = np.flatnonzero(ok & (predicted == c))
        # most confident first; ties by row so the choice is deterministic
        order = rows[np.lexsort((rows, -confidence[rows]))]
        accepted[order[: cap[c]]] = True
        status[order[cap[c] :]] = OVER_QUOTA
    status[accepted] = ACCEPTED
    return Selection(predicted.astype(np.int64), confidence, accepted, status, thr)


def selection_change(prev: Selection | None, sel: Selection) -> float:
    """The share of the accepted rows (accepted in either selection) that changed between two rounds: newly
    accepted, revoked, or accepted with another class. 1.0 without a previous selection; 0.0 when neither accepted
    anything. The loop stops below ``stable``: retraining on (almost) the same rows would give the same model."""
    if prev is None:
        return 1.0
    either = prev.accepted | sel.accepted
    if not either.any():
        return 0.0
    changed = (prev.accepted != sel.accepted) | (sel.accepted & (prev.predicted != sel.predicted))
    return float(changed.sum() / either.sum())
