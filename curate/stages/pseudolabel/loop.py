"""The self-training loop of ``curate pseudolabel`` over decoded arrays (no workspace here; the stage does I/O).

Round 0 trains on the labeled train rows only (the supervised baseline, same architecture and step budget).
Each round r = 1..R then

1. predicts the pool with the best model so far (the filter is a batch inference job);
2. marks rows out of distribution: the mean cosine distance of a row's penultimate features to its k nearest
   labeled train rows is above the ``ood_quantile`` of the same distance for the val rows (held out, in
   distribution, so about 1 % of in-distribution rows are refused at 0.99);
3. selects pseudo-labels (``curate.stages.pseudolabel.select``: per-class confidence thresholds, class quotas); a row that
   was accepted last round and is not now, or now with another class, is *revoked* (counted, recorded);
4. trains a fresh model on labeled + accepted rows mixed ``ratio`` in every batch (``curate.learn.selftrain``)
   and scores it on val; the loop stops after ``patience`` rounds without a better val accuracy.

The result is the best round: its model and the pseudo-labels that trained it. Val and test rows never enter
selection; val only ranks models and calibrates the OOD threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.learn.data import DecodedSplit
from curate.stages.pseudolabel.select import DISAGREE, Selection, select_pseudo


@dataclass
class LoopSettings:
    """Knobs of the loop (the stage's config minus I/O); see ``curate.stages.pseudolabel.PseudolabelConfig``."""

    ratio: tuple[float, float] = (10.0, 1.0)
    rounds: int = 3
    threshold: float = 0.95
    min_threshold: float = 0.8
    per_class_top: int | None = None
    ood_filter: bool = True
    ood_quantile: float = 0.99
    ood_k: int = 5
    max_pseudo: int | None = None
    balance: float = 2.0
    patience: int = 1
    min_steps: int = 500


@dataclass
class LoopResult:
    """What the loop found.

    Attributes:
        rounds: one JSON-able dict per round (0 = supervised only): accepted per class, mean confidence, revoked,
            val accuracy, thresholds, pseudo accuracy (when ``truth`` was given), seconds.
        best_round: the round whose model had the best val accuracy (0: pseudo-labels did not help).
        selection: the selection that trained the best round's model (None for round 0).
        first_round: int ``(N,)`` for each pool row, the round since which its current pseudo-label has been
            accepted without a break (0 when not accepted in ``selection``).
        revoked_round: int ``(N,)`` the last round that revoked the row's pseudo-label (0: never).
        ood_score: float ``(N,)`` the best round's feature distance divided by the OOD threshold (> 1 = out).
        models: ``{"round0": ..., "round1": ..., "best": ...}``: the fit result of every round and of the best.
    """

    rounds: list[dict[str, Any]]
    best_round: int
    selection: Selection | None
    first_round: np.ndarray
    revoked_round: np.ndarray
    ood_score: np.ndarray
    models: dict[str, Any] = field(default_factory=dict)


def _as_run(res: dict[str, Any], normalization: dict[str, Any], device: Any) -> Any:
    from curate.learn.predict import LoadedRun

    return LoadedRun(res["model"].eval(), {**res["meta"], "normalization": normalization}, device, Path("."))


def _val_acc(res: dict[str, Any]) -> float | None:
    best = res.get("best") or {}
    return float(best["val_acc"]) if "val_acc" in best else None


def run_loop(
    labeled: DecodedSplit,
    val: DecodedSplit | None,
    pool: np.ndarray,
    classes: list[str],
    train_cfg: Any,
    settings: LoopSettings,
    *,
    normalization: dict[str, Any],
    truth: np.ndarray | None = None,
    knn_vote: np.ndarray | None = None,
    log: Callable[[str], None] = lambda s: None,
    progress: Any = None,
) -> LoopResult:
    """Run the loop (module doc).

    Args:
        labeled: the labeled train rows (uint8 images, int labels).
        val: the val rows (None: no early stopping by val; the OOD threshold is then calibrated leave-one-out
            on the labeled rows, which are in-sample and so give a stricter threshold).
        pool: uint8 ``(N, H, W, C)`` unlabeled images.
        train_cfg: a ``curate.learn.train.TrainConfig`` (arch, epochs, batch size, lr, augment, device, seed).
        truth: int ``(N,)`` hidden pool labels (-1 unknown) for the per-round pseudo accuracy (benchmarks).
        knn_vote: int ``(N,)`` the class the labeled rows' kNN vote gives each pool row in a model's embedding space
            (fixed across rounds: the embeddings and the labeled rows do not change); a prediction it disagrees
            with is not accepted (``select_pseudo``). None: the confidence bars alone.
        progress: ``progress(description, total)`` context manager (a bar per round's epochs).
    """
    import time

    from curate.learn.predict import predict_with_features
    from curate.learn.runtime import pick_device
    from curate.learn.selftrain import knn_distance, train_round

    device = pick_device(train_cfg.device)
    n = len(pool)

    def train(pseudo: DecodedSplit | None) -> dict[str, Any]:
        kw = {"ratio": settings.ratio, "normalization": normalization, "min_steps": settings.min_steps, "progress": progress}
        return train_round(labeled, pseudo, val, classes, train_cfg, **kw)

    t0 = time.perf_counter()
    best = train(None)
    models = {"round0": best, "best": best}
    best_acc, best_round, best_sel = _val_acc(best), 0, None
    rounds = [
        {
            "round": 0,
            "accepted_total": 0,
            "accepted": {},
            "val_accuracy": best_acc,
            "steps": best["steps"],
            "seconds": round(time.perf_counter() - t0, 2),
        }
    ]
    log(f"round 0 (labeled only): val accuracy {best_acc if best_acc is not None else float('nan'):.4f}")
    first = np.zeros(n, np.int64)
    revoked = np.zeros(n, np.int64)
    ood_score = np.zeros(n, np.float64)
    best_ood = ood_score
    prev: Selection | None = None
    bad = 0
    for r in range(1, settings.rounds + 1):
        t0 = time.perf_counter()
        run = _as_run(best, normalization, device)
        probs, feats = predict_with_features(run, pool)
        ood = None
        if settings.ood_filter and n:
            _, ref = predict_with_features(run, labeled.images)
            if val is not None and len(val):
                cal = knn_distance(predict_with_features(run, val.images)[1], ref, k=settings.ood_k)
            else:
                cal = knn_distance(ref, ref, k=settings.ood_k, exclude_self=True)
            limit = max(float(np.quantile(cal, settings.ood_quantile)), 1e-9)
            ood_score = knn_distance(feats, ref, k=settings.ood_k) / limit
            ood = ood_score > 1.0
        sel = select_pseudo(
            probs,
            ood=ood,
            threshold=settings.threshold,
            min_threshold=settings.min_threshold,
            per_class_top=settings.per_class_top,
            balance=settings.balance,
            max_pseudo=settings.max_pseudo,
            vote=knn_vote,
        )
        n_revoked = 0
        if prev is not None:
            lost = prev.accepted & (~sel.accepted | (sel.predicted != prev.predicted))
            revoked[lost] = r
            n_revoked = int(lost.sum())
            kept = prev.accepted & sel.accepted & (sel.predicted == prev.predicted)
            first = np.where(kept, first, np.where(sel.accepted, r, 0))
        else:
            first = np.where(sel.accepted, r, 0)
        acc_idx = np.flatnonzero(sel.accepted)
        pseudo = DecodedSplit(pool[acc_idx], sel.predicted[acc_idx], [f"pool:{i}" for i in acc_idx])
        res = train(pseudo)
        models[f"round{r}"] = res
        acc = _val_acc(res)
        row: dict[str, Any] = {
            "round": r,
            "accepted_total": int(len(acc_idx)),
            "accepted": {classes[c]: int(v) for c, v in enumerate(np.bincount(sel.predicted[acc_idx], minlength=len(classes)))},
            "revoked": n_revoked,
            "ood": int(ood.sum()) if ood is not None else 0,
            "knn_disagree": int((sel.status == DISAGREE).sum()),
            "mean_confidence": round(float(sel.confidence[acc_idx].mean()), 6) if len(acc_idx) else None,
            "thresholds": {classes[c]: round(float(t), 6) for c, t in enumerate(sel.thresholds)},
            "val_accuracy": acc,
            "steps": res["steps"],
            "pseudo_per_batch": res["pseudo_per_batch"],
            "labeled_per_batch": res["lab_per_batch"],
        }
        if truth is not None:
            known = acc_idx[truth[acc_idx] >= 0]
            row["pseudo_accuracy"] = round(float((sel.predicted[known] == truth[known]).mean()), 6) if len(known) else None
        # a tie goes to the later round: it saw more data, and a small val set ties often (100 rows: 1 % steps)
        improved = best_acc is None or (acc is not None and acc >= best_acc)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rounds.append(row)
        pa_txt = f", pseudo-label accuracy {row['pseudo_accuracy']:.4f}" if row.get("pseudo_accuracy") is not None else ""
        log(
            f"round {r}: accepted {len(acc_idx):,} (revoked {n_revoked:,}, ood {row['ood']:,}), val accuracy "
            f"{acc if acc is not None else float('nan'):.4f}{pa_txt}{' *' if improved else ''}"
        )
        prev = sel
        if improved:
            best, best_acc, best_round, best_sel, bad = res, acc, r, sel, 0
            best_ood = ood_score.copy()
            models["best"] = res
            best_first = first.copy()
        else:  # strictly worse than the best round
            bad += 1
            if bad >= settings.patience:
                log(f"stopping: val accuracy below the best round for {bad} round(s)")
                break
    final_first = best_first if best_sel is not None else np.zeros(n, np.int64)
    return LoopResult(rounds, best_round, best_sel, final_first, revoked, best_ood, models)
