"""The self-training loop of ``curate pseudolabel`` over decoded arrays (no workspace here; the stage does I/O).

Round 0 trains on the labeled train rows only (the supervised baseline, same architecture and step budget).
Each round r = 1..R then

1. predicts the pool with the **latest** model (round r - 1's: selecting with the best model so far made round 2
   repeat round 1 exactly whenever round 1 was not ranked higher);
2. marks rows out of distribution: the mean cosine distance of a row's penultimate features to its k nearest
   labeled train rows is above the ``ood_quantile`` of the same distance for the val rows (held out, in
   distribution, so about 1 % of in-distribution rows are refused at 0.99); or the same distance on the raw
   pixels is (computed once: it does not depend on the model). A net trained on a few hundred labels maps
   what it has never seen onto the classes it knows (on the demo's pool, MNIST digits sat among the sandals in
   its features, predicted at 0.99+); the pixels are a second view that does not learn that mistake;
3. selects pseudo-labels (``curate.stages.pseudolabel.select``: per-class confidence thresholds, class quotas); a
   row that was accepted last round and is not now, or now with another class, is *revoked* (counted, recorded).
   When fewer than ``stable`` of the accepted rows changed since the last selection, the loop stops here:
   retraining on the same rows would give the same model;
4. trains a fresh model on labeled + accepted rows mixed ``ratio`` in every batch (``curate.learn.selftrain``;
   with ``consistency`` set, plus a FixMatch term over the pool rows the OOD filter let through,
   ``curate.learn.consistency``) and compares it on val, row by row, with every kept earlier round
   (``curate.stages.pseudolabel.rank``). It is kept unless it is significantly worse than one of them; after
   ``patience`` rejected rounds in a row the loop stops.

The result is the **chosen** round: the last kept one (normally the last round run), its model and the
pseudo-labels that trained it. Val and test rows never enter selection; val only compares models and calibrates
the OOD threshold. Without val every round is kept (nothing to compare on) and the OOD threshold is calibrated
leave-one-out on the labeled rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.learn.consistency import ConsistencySettings
from curate.learn.data import DecodedSplit
from curate.stages.pseudolabel.rank import Comparison, brier, strictest
from curate.stages.pseudolabel.select import DISAGREE, Selection, select_pseudo, selection_change

THUMB = 32  # the pixel OOD score compares images at most this many pixels a side


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
    stable: float = 0.005
    consistency: ConsistencySettings | None = None  # FixMatch term over the in-distribution pool in rounds 1+


@dataclass
class LoopResult:
    """What the loop found.

    Attributes:
        rounds: one JSON-able dict per round (0 = supervised only): accepted per class, mean confidence, revoked,
            selection change, val accuracy and Brier score, the paired comparison (``vs_round``, ``delta_accuracy``,
            ``delta_low``, ``delta_high``), ``kept``, thresholds, pseudo accuracy (with ``truth``), seconds.
        chosen_round: the last kept round (0: every pseudo-labeled round was significantly worse).
        selection: the selection that trained the chosen round's model (None for round 0).
        first_round: int ``(N,)`` for each pool row, the round since which its current pseudo-label has been
            accepted without a break (0 when not accepted in ``selection``).
        revoked_round: int ``(N,)`` the last round that revoked the row's pseudo-label (0: never).
        ood_score: float ``(N,)`` the chosen selection's OOD score: the larger of the feature and the pixel distance,
            each divided by its threshold (> 1 = out).
        stopped: why the loop ended, one line.
        models: ``{"round0": ..., "round1": ..., "best": ...}``: the fit result of every round; ``best`` is the
            chosen round's (saved as ``model_best.pt``, the name ``curate evaluate RUN`` loads).
    """

    rounds: list[dict[str, Any]]
    chosen_round: int
    selection: Selection | None
    first_round: np.ndarray
    revoked_round: np.ndarray
    ood_score: np.ndarray
    stopped: str
    models: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Scored:
    """A round's fit result with its model's view of val: bool ``(V,)`` correct, Brier, features ``(V, D)``."""

    res: dict[str, Any]
    run: Any
    correct: np.ndarray
    brier: float | None
    val_feats: np.ndarray | None


@dataclass
class _Track:
    """Per pool row across rounds: since when its current pseudo-label is accepted, when it was last revoked."""

    first: np.ndarray
    revoked: np.ndarray
    prev: Selection | None = None

    def update(self, sel: Selection, r: int) -> int:
        """Record round ``r``'s selection; returns how many earlier pseudo-labels it revoked."""
        if self.prev is None:
            self.first = np.where(sel.accepted, r, 0)
            self.prev = sel
            return 0
        prev = self.prev
        lost = prev.accepted & (~sel.accepted | (sel.predicted != prev.predicted))
        self.revoked[lost] = r
        kept = prev.accepted & sel.accepted & (sel.predicted == prev.predicted)
        self.first = np.where(kept, self.first, np.where(sel.accepted, r, 0))
        self.prev = sel
        return int(lost.sum())


def _score(res: dict[str, Any], val: DecodedSplit | None, normalization: dict[str, Any], device: Any) -> _Scored:
    """Wrap a fit result as a loaded run and score it on val row by row (its features calibrate the OOD filter)."""
    from curate.learn.predict import LoadedRun, predict_with_features

    run = LoadedRun(res["model"].eval(), {**res["meta"], "normalization": normalization}, device, Path("."))
    if val is None or not len(val):
        return _Scored(res, run, np.zeros(0, bool), None, None)
    probs, feats = predict_with_features(run, val.images)
    return _Scored(res, run, probs.argmax(1) == val.labels, round(brier(probs, val.labels), 6), feats)


def _ood_score(query: np.ndarray, ref: np.ndarray, val: np.ndarray | None, s: LoopSettings) -> np.ndarray:
    """float ``(N,)``: the kNN distance of ``query`` rows to the labeled ``ref`` rows over the ``ood_quantile`` of
    the same distance for the val rows (leave-one-out on ``ref`` without val); > 1 = out of distribution."""
    from curate.learn.selftrain import knn_distance

    cal = knn_distance(val, ref, k=s.ood_k) if val is not None else knn_distance(ref, ref, k=s.ood_k, exclude_self=True)
    return knn_distance(query, ref, k=s.ood_k) / max(float(np.quantile(cal, s.ood_quantile)), 1e-9)


def _pixel_ood(labeled: DecodedSplit, val: DecodedSplit | None, pool: np.ndarray, s: LoopSettings) -> np.ndarray | None:
    """The raw-pixel OOD score of the pool rows (module doc, step 2); None with the filter off."""
    if not s.ood_filter or not len(pool):
        return None

    def flat(a: np.ndarray) -> np.ndarray:
        # block means down to at most THUMB px a side: a float copy of full-size photos would not fit in memory
        f = max(1, -(-max(a.shape[1], a.shape[2]) // THUMB))
        h, w = a.shape[1] // f * f, a.shape[2] // f * f
        out = [a[i : i + 4096, :h, :w].reshape(-1, h // f, f, w // f, f, a.shape[3]).mean((2, 4), dtype=np.float32)
               for i in range(0, len(a), 4096)]  # fmt: skip
        return np.concatenate(out).reshape(len(a), -1) if out else np.zeros((0, 1), np.float32)

    return _ood_score(flat(pool), flat(labeled.images), flat(val.images) if val is not None and len(val) else None, s)


def _score_pool(latest: _Scored, labeled: DecodedSplit, pool: np.ndarray, pixel: np.ndarray | None,
                s: LoopSettings) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """The latest model's pool probabilities ``(N, K)`` and OOD score ``(N,)``: the larger of its feature score
    and the ``pixel`` score (None: filter off; > 1 = out)."""
    from curate.learn.predict import predict_with_features

    probs, feats = predict_with_features(latest.run, pool)
    if pixel is None:
        return probs, None
    _, ref = predict_with_features(latest.run, labeled.images)
    return probs, np.maximum(_ood_score(feats, ref, latest.val_feats, s), pixel)


def _row(r: int, sel: Selection, cur: _Scored, cmp: Comparison | None, classes: list[str], truth: np.ndarray | None,
         **extra: Any) -> dict[str, Any]:  # fmt: skip
    """Round ``r``'s row of the report (``LoopResult.rounds``)."""
    acc_idx = np.flatnonzero(sel.accepted)
    res = cur.res
    row: dict[str, Any] = {
        "round": r,
        "accepted_total": int(len(acc_idx)),
        "accepted": {classes[c]: int(v) for c, v in enumerate(np.bincount(sel.predicted[acc_idx], minlength=len(classes)))},
        **extra,
        "knn_disagree": int((sel.status == DISAGREE).sum()),
        "mean_confidence": round(float(sel.confidence[acc_idx].mean()), 6) if len(acc_idx) else None,
        "thresholds": {classes[c]: round(float(t), 6) for c, t in enumerate(sel.thresholds)},
        **_val_fields(cur, cmp),
        "steps": res["steps"],
        "consistency_mask_rate": res.get("consistency_mask_rate"),
        "pseudo_per_batch": res["pseudo_per_batch"],
        "labeled_per_batch": res["lab_per_batch"],
    }
    if truth is not None:
        known = acc_idx[truth[acc_idx] >= 0]
        row["pseudo_accuracy"] = round(float((sel.predicted[known] == truth[known]).mean()), 6) if len(known) else None
    return row


def _val_fields(cur: _Scored, cmp: Comparison | None) -> dict[str, Any]:
    """Val accuracy and Brier score of a round, and its paired comparison (None: no val or round 0)."""
    acc = float(cur.correct.mean()) if len(cur.correct) else None
    out: dict[str, Any] = {"val_accuracy": acc, "val_brier": cur.brier}
    if cmp is not None:
        out.update(vs_round=cmp.against, delta_accuracy=round(cmp.delta, 6), delta_low=round(cmp.low, 6),
                   delta_high=round(cmp.high, 6))  # fmt: skip
    out["kept"] = cmp is None or not cmp.worse
    return out


def _log_round(log: Callable[[str], None], row: dict[str, Any]) -> None:
    acc = row["val_accuracy"]
    val = f"val accuracy {acc:.4f}" if acc is not None else "no val"
    if row["round"] == 0:
        log(f"round 0 (labeled only): {val}")
        return
    if "delta_accuracy" in row:
        val += f", vs round {row['vs_round']} {row['delta_accuracy']:+.3f} [{row['delta_low']:+.3f}, {row['delta_high']:+.3f}]"
    pa_txt = f", pseudo-label accuracy {row['pseudo_accuracy']:.4f}" if row.get("pseudo_accuracy") is not None else ""
    took = f"accepted {row['accepted_total']:,} (revoked {row['revoked']:,}, ood {row['ood']:,})"
    change = f"{row['selection_change']:.1%} changed"
    log(f"round {row['round']}: {took}, {change}, {val}{pa_txt}{'' if row['kept'] else ' (significantly worse: not kept)'}")


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
        val: the val rows (None: every round is kept, and the OOD threshold is calibrated leave-one-out on the
            labeled rows, which are in-sample and so give a stricter threshold).
        pool: uint8 ``(N, H, W, C)`` unlabeled images.
        train_cfg: a ``curate.learn.train.TrainConfig`` (arch, epochs, batch size, lr, augment, device, seed).
        truth: int ``(N,)`` hidden pool labels (-1 unknown) for the per-round pseudo accuracy (benchmarks).
        knn_vote: int ``(N,)`` the class the labeled rows' kNN vote gives each pool row in a model's embedding space
            (fixed across rounds: the embeddings and the labeled rows do not change); a prediction it disagrees
            with is not accepted (``select_pseudo``). None: the confidence bars alone.
        progress: ``progress(description, total)`` context manager (a bar per round's epochs).
    """
    from curate.learn.runtime import pick_device
    from curate.learn.selftrain import train_round

    device, n, s = pick_device(train_cfg.device), len(pool), settings

    def train(pseudo: DecodedSplit | None, unlabeled: np.ndarray | None = None) -> _Scored:
        kw = {"ratio": s.ratio, "normalization": normalization, "min_steps": s.min_steps, "progress": progress,
              "unlabeled": unlabeled, "consistency": s.consistency}  # fmt: skip
        return _score(train_round(labeled, pseudo, val, classes, train_cfg, **kw), val, normalization, device)

    t0 = time.perf_counter()
    latest = train(None)
    models = {"round0": latest.res, "best": latest.res}
    rounds = [{"round": 0, "accepted_total": 0, "accepted": {}, **_val_fields(latest, None), "steps": latest.res["steps"],
               "seconds": round(time.perf_counter() - t0, 2)}]  # fmt: skip
    _log_round(log, rounds[0])
    kept, pixel = {0: latest.correct}, _pixel_ood(labeled, val, pool, s)
    track = _Track(np.zeros(n, np.int64), np.zeros(n, np.int64))
    chosen: tuple[int, Selection | None, np.ndarray, np.ndarray] = (0, None, np.zeros(n, np.int64), np.zeros(n))
    stopped, bad = f"ran the {s.rounds} round(s) asked for", 0
    for r in range(1, s.rounds + 1):
        t0 = time.perf_counter()
        probs, ood_score = _score_pool(latest, labeled, pool, pixel, s)
        ood = ood_score > 1.0 if ood_score is not None else None
        sel = select_pseudo(probs, ood=ood, threshold=s.threshold, min_threshold=s.min_threshold, per_class_top=s.per_class_top,
                            balance=s.balance, max_pseudo=s.max_pseudo, vote=knn_vote)  # fmt: skip
        change = selection_change(track.prev, sel)
        if track.prev is not None and change < s.stable:
            stopped = f"selection stable: {change:.2%} of the accepted rows changed in round {r} (< {s.stable:.1%})"
            break
        n_revoked = track.update(sel, r)
        acc_idx = np.flatnonzero(sel.accepted)
        unlabeled = (pool[~ood] if ood is not None else pool) if s.consistency is not None else None  # OOD rows teach nothing
        latest = train(DecodedSplit(pool[acc_idx], sel.predicted[acc_idx], [f"pool:{i}" for i in acc_idx]), unlabeled)
        models[f"round{r}"] = latest.res
        cmp = strictest(latest.correct, kept, seed=train_cfg.seed) if len(latest.correct) else None
        row = _row(r, sel, latest, cmp, classes, truth, revoked=n_revoked, ood=int(ood.sum()) if ood is not None else 0,
                   selection_change=round(change, 6))  # fmt: skip
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rounds.append(row)
        _log_round(log, row)
        if row["kept"]:
            kept[r], bad, models["best"] = latest.correct, 0, latest.res
            chosen = (r, sel, track.first.copy(), ood_score.copy() if ood_score is not None else np.zeros(n))
            continue
        bad += 1
        if bad >= s.patience:
            stopped = f"round {r} significantly worse than round {row['vs_round']} on val ({bad} in a row)"
            break
    log(f"stopped: {stopped}; round {chosen[0]} chosen")
    return LoopResult(rounds, chosen[0], chosen[1], chosen[2], track.revoked, chosen[3], stopped, models)
