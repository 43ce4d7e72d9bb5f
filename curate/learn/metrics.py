"""Classification metrics from predicted probabilities, the error-analysis table, and the PNG plots.

Everything takes ``y`` int ``(N,)`` true class indices in ``0..K-1`` and ``probs`` float ``(N, K)`` rows that
sum to 1. Implemented in numpy (the tests check it against scikit-learn); classes absent from ``y`` get
precision/recall/F1 of 0 and an AUC of None, and are left out of the macro AUC (sklearn's convention for F1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``(K, K)`` counts; row = true class, column = predicted class."""
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` mask (Mann-Whitney U, ties averaged)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    first = np.r_[True, s[1:] != s[:-1]]  # the first of each run of equal scores
    starts = np.flatnonzero(first)
    stops = np.r_[starts[1:], len(s)]
    r = np.empty(len(s), np.float64)
    r[order] = ((starts + stops + 1) / 2.0)[np.cumsum(first) - 1]  # 1-based ranks, averaged over ties
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str], topk: tuple[int, ...] = (1, 3, 5)) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support/AUC, confusion matrix, macro one-vs-rest ROC AUC
    and top-k error (for each k < K) of ``probs`` ``(N, K)`` against ``y`` ``(N,)``."""
    y = np.asarray(y, np.int64)
    probs = np.asarray(probs, np.float64)
    k = len(classes)
    pred = probs.argmax(1)
    cm = confusion(y, pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    aucs = [roc_auc(probs[:, c], y == c) for c in range(k)]
    valid = [a for a in aucs if a is not None]
    # top-k: the true class is not among the k highest probabilities (stable order breaks ties by class index)
    rank_of_true = (probs > probs[np.arange(len(y)), y][:, None]).sum(1) if len(y) else np.zeros(0)
    return {
        "n": len(y),
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "macro_f1": float(f1.mean()) if k else None,
        "roc_auc_ovr_macro": float(np.mean(valid)) if valid else None,
        "topk_error": {str(t): float((rank_of_true >= t).mean()) for t in topk if t < k and len(y)},
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "roc_auc": aucs[i],
            }
            for i, c in enumerate(classes)
        },
        "confusion": cm.tolist(),
    }


def worst_samples(sample_ids: list[str], y: np.ndarray, probs: np.ndarray, classes: list[str], n: int = 50) -> list[dict[str, Any]]:
    """The ``n`` misclassified samples the model was most sure about, worst first.

    Returns:
        Rows ``{"sample_id", "true", "predicted", "confidence" (probability of the prediction), "p_true"}``.
    """
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    p_true = probs[np.arange(len(y)), y]
    wrong = wrong[np.argsort(p_true[wrong], kind="stable")][:n]
    return [
        {
            "sample_id": sample_ids[i],
            "true": classes[y[i]],
            "predicted": classes[pred[i]],
            "confidence": round(float(probs[i, pred[i]]), 6),
            "p_true": round(float(p_true[i]), 6),
        }
        for i in wrong
    ]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch (train, train_dev when scored, val) side by side, written as PNG."""
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((a, "loss"), (b, "acc")):
        for split in ("train", "train_dev", "val"):
            if any(h.get(f"{split}_{metric}") is not None for h in history):
                ax.plot(ep, [h.get(f"{split}_{metric}", float("nan")) for h in history], "o-", label=split)
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    b.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(cm: list[list[int]], classes: list[str], path: Path, title: str = "confusion") -> Path:
    """A row-normalized confusion matrix (counts in the cells when there are at most 20 classes), as PNG."""
    plt = _plt()
    m = np.asarray(cm, np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(classes)
    side = min(4 + 0.5 * k, 20)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if k <= 50:
        ax.set_xticks(range(k), classes, rotation=90 if k > 6 else 0)
        ax.set_yticks(range(k), classes)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(
    run_dir: Path,
    splits: dict[str, dict[str, Any]],
    classes: list[str],
    history: list[dict[str, Any]] | None,
    extra: dict[str, Any] | None = None,
    name: str = "metrics.json",
) -> dict[str, dict[str, Any]]:
    """Score each split's predictions, write ``name`` (metrics + worst samples + history) and the PNG plots.

    Args:
        splits: split -> ``{"ids", "y", "probs"}`` as returned by ``curate.learn.train.evaluate``.
        history: per-epoch rows for the curves plot (None: no curves).

    Returns:
        split -> the metrics dict of ``classification_metrics`` (plus ``worst``).
    """
    import json

    out: dict[str, dict[str, Any]] = {}
    stem = Path(name).stem
    for split, ev in splits.items():
        m = classification_metrics(ev["y"], ev["probs"], classes)
        m["worst"] = worst_samples(ev["ids"], ev["y"], ev["probs"], classes)
        out[split] = m
        plot_confusion(
            m["confusion"],
            classes,
            run_dir / f"{'' if stem == 'metrics' else 'eval_'}confusion_{split}.png",
            title=f"{split}: accuracy {m['accuracy']:.4f}",
        )
    if history:
        plot_curves(history, run_dir / "curves.png")
    payload = {**(extra or {}), "classes": classes, "splits": out, "history": history or []}
    (run_dir / name).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out


def fmt_metrics(split: str, m: dict[str, Any]) -> str:
    """``val: accuracy 0.9012, macro-F1 0.8990, AUC 0.9911, top-2 err 0.0210``."""
    top = ", ".join(f"top-{k} err {v:.4f}" for k, v in m.get("topk_error", {}).items() if k != "1")
    auc = f", AUC {m['roc_auc_ovr_macro']:.4f}" if m.get("roc_auc_ovr_macro") is not None else ""
    return f"{split}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}{auc}{', ' + top if top else ''}"
