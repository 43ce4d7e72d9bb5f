"""Bias, variance and data mismatch: which gap between the error rates of a run is largest, and what to do next.

The error ladder of a classifier, each rung an error rate (1 - accuracy) in 0..1:

    human-level  ->  train  ->  train_dev  ->  dev (val)  ->  test
        avoidable bias   variance    data mismatch   overfitting to dev

``train_dev`` (``curate split --train-dev``) is held out of training but drawn from the training distribution, so
train -> train_dev is what the model fails to generalise (variance) and train_dev -> dev is what differs between
the training data and the data that matters (data mismatch). Without a human-level error the bias is measured
against 0 (Bayes error unknown). Without train_dev, variance and mismatch cannot be told apart: their sum
(train -> dev) is reported as ``variance`` with a note. The dev -> test gap is shown but never "the largest": it
says the model selection overfitted val, not what to change in the model or the data.

Pure Python (no numpy, no torch): the report, ``curate train`` and ``curate evaluate`` all call it.
"""

from __future__ import annotations

from typing import Any

LADDER = ("human", "train", "train_dev", "val", "test")
#: gap name -> (from rung, to rung, the usual next steps)
GAPS: dict[str, tuple[str, str, str]] = {
    "avoidable bias": ("human", "train", "a bigger model, train longer or with a better optimizer, a better architecture"),
    "variance": ("train", "train_dev", "more training data, regularisation (weight decay, dropout, label smoothing), augmentation"),
    "data mismatch": (
        "train_dev",
        "val",
        "make the training data more like dev: collect or synthesise similar images, study how train and dev differ",
    ),
    "overfitting to dev": ("val", "test", "a bigger dev set; fewer decisions tuned on val"),
}
#: Gaps that compete for "largest" (the three a model or data change fixes).
COMPETING = ("avoidable bias", "variance", "data mismatch")


def errors_from_accuracy(accuracy: dict[str, float | None]) -> dict[str, float | None]:
    """``{split: accuracy}`` -> ``{split: error}`` (1 - accuracy; None stays None)."""
    return {k: None if v is None else 1.0 - float(v) for k, v in accuracy.items()}


def diagnose(errors: dict[str, float | None], human: float | None = None) -> dict[str, Any]:
    """The gaps between consecutive error rates and the largest of bias / variance / mismatch.

    Args:
        errors: split -> error rate in 0..1 (``train``, ``train_dev``, ``val``, ``test``; missing or None: unknown).
        human: the human-level (or best achievable) error in 0..1; None: unknown, bias measured against 0.

    Returns:
        ``{"errors": {rung: error or None} (LADDER order), "gaps": [{"name", "from", "to", "value", "advice"}],
        "largest": gap name or None, "advice": its next steps or "", "notes": [str]}``. A gap is None when a rung
        it needs is unknown; ``largest`` is None when no competing gap is known or all are <= 0.
    """
    e: dict[str, float | None] = {k: errors.get(k) for k in LADDER if k != "human"}
    e = {"human": human, **e}
    notes: list[str] = []
    base = {**e}
    if human is None:
        base["human"] = 0.0
        notes.append("no human-level error given: avoidable bias is measured against 0 (--human-error)")
    if e["train_dev"] is None and e["train"] is not None and e["val"] is not None:
        notes.append("no train_dev split: variance and data mismatch are not told apart (curate split --train-dev)")
    gaps = []
    for name, (lo, hi, advice) in GAPS.items():
        a, b = base[lo], base[hi]
        if name == "variance" and b is None:  # without train_dev: train -> val holds variance and mismatch together
            b = base["val"]
            hi = "val"
        value = None if a is None or b is None else float(b) - float(a)
        gaps.append({"name": name, "from": lo, "to": hi, "value": value, "advice": advice})
    known = [g for g in gaps if g["name"] in COMPETING and g["value"] is not None]
    top = max(known, key=lambda g: g["value"], default=None)
    largest = top["name"] if top is not None and top["value"] > 0 else None
    return {
        "errors": e,
        "gaps": gaps,
        "largest": largest,
        "advice": top["advice"] if largest else "",
        "notes": notes,
    }


def summary_line(diag: dict[str, Any]) -> str:
    """One line for a terminal: the error ladder and the largest gap."""
    ladder = ", ".join(f"{k} {v:.4f}" for k, v in diag["errors"].items() if v is not None)
    if not diag["largest"]:
        return f"errors: {ladder}; no gap stands out"
    g = next(g for g in diag["gaps"] if g["name"] == diag["largest"])
    return f"errors: {ladder}; largest gap: {g['name']} ({g['from']} -> {g['to']} +{g['value']:.4f}): {g['advice']}"
