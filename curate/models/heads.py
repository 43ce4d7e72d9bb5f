"""Heads on frozen embeddings: k-fold out-of-sample probabilities from a linear model, in seconds.

``oof_linear`` is the embedding counterpart of ``curate.learn.predict.oof_predict`` and returns the same ``OOF``
(probabilities, optional OOD z-scores, fold of each row), so a stage can take either: k logistic regressions on
``(N, D)`` vectors instead of k CNN trainings on pixels. ``knn_outliers`` scores rows by their cosine distance to
their nearest reference rows. ``curate clean --model`` uses both.
"""

from __future__ import annotations

import numpy as np

from curate.errors import CurateError

#: Inverse L2 strength of ``clean --model``'s k-fold head on noisy labels (sklearn's ``C``; 1.0 elsewhere). A head
#: fitted to the labels it judges learns their errors too; a stronger penalty learns less of them. Chosen among
#: 1, 0.1 and 0.01 on issue 18's calibration set (Fashion-MNIST, 10% look-alike flips: rows wrongly kept plus
#: clean rows lost under the shipped policy 629 / 603 / 580) and confirmed on a held-out set (mix 10% s3: 485 ->
#: 454); BENCHMARKS.md "A linear head on noisy labels".
NOISY_LABEL_C = 0.01


def oof_linear(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    folds: int = 5,
    seed: int = 0,
    ood: bool = False,
    c: float = 1.0,
    train_mask: np.ndarray | None = None,
):  # noqa: ANN201 - curate.learn.predict.OOF (imported lazily: it brings torch)
    """k-fold out-of-sample probabilities of a multinomial logistic regression on standardized embeddings.

    Args:
        embeddings: float ``(N, D)``.
        labels: int ``(N,)`` class indices in ``[0, n_classes)``.
        n_classes: ``K``; a class without rows gets probability 0 everywhere.
        folds: k, stratified by label, deterministic for ``seed``.
        ood: also score each held-out row by the robust z of its log Mahalanobis distance to the class Gaussians of
            its fold's training rows (``curate.learn.ood``), as ``oof_predict`` does with CNN features.
        c: inverse L2 strength of the regression (sklearn's ``C``).
        train_mask: bool ``(N,)``; rows where it is False are predicted out-of-sample like the others but never
            fitted on (``clean --passes 2``: a second head without the rows the first one judged wrong).

    Returns:
        ``OOF``: ``probs`` float32 ``(N, K)`` (each row from a model that never saw it), ``ood_z`` or None, ``fold``.

    Raises:
        CurateError: shapes that disagree, non-finite values, under 2 classes, or a class with fewer rows than folds.
    """
    from sklearn.model_selection import StratifiedKFold

    from curate.learn.ood import fit_gaussians, mahalanobis, robust_z
    from curate.learn.predict import OOF

    x = np.asarray(embeddings, np.float64)
    y = np.asarray(labels, np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise CurateError(f"embeddings of shape {list(x.shape)} do not fit {len(y)} labels")
    if not np.isfinite(x).all():
        raise CurateError("embeddings hold NaN or infinite values")
    counts = np.bincount(y, minlength=n_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise CurateError("out-of-sample predictions need at least 2 classes with labeled rows")
    if counts[present].min() < folds:
        raise CurateError(f"a class has {counts[present].min()} labeled rows, fewer than --folds {folds}", hint="lower --folds")
    probs = np.zeros((len(y), n_classes), np.float32)
    ood_z = np.zeros(len(y), np.float64) if ood else None
    fold_of = np.zeros(len(y), np.int64)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for f, (tr, ho) in enumerate(splitter.split(x, y)):
        if train_mask is not None:
            tr = tr[np.asarray(train_mask, bool)[tr]]
        xt, xh, probs[ho] = fit_predict(x[tr], y[tr], x[ho], n_classes, c)
        fold_of[ho] = f
        if ood_z is not None:
            means, precision = fit_gaussians(xt, y[tr], n_classes)
            ood_z[ho] = robust_z(mahalanobis(xh, means, precision))
    return OOF(probs, ood_z, fold_of)


def fit_predict(
    x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray, n_classes: int, c: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One logistic regression on standardized ``x_fit`` -> ``(x_fit scaled, x_new scaled, probs of x_new)``.

    ``probs`` is float32 ``(len(x_new), n_classes)``; a class absent from ``y_fit`` gets probability 0.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_fit)
    xt, xn = scaler.transform(x_fit), scaler.transform(x_new)
    model = LogisticRegression(C=c, max_iter=1000).fit(xt, y_fit)
    probs = np.zeros((len(x_new), n_classes), np.float32)
    if len(x_new):
        probs[:, model.classes_] = model.predict_proba(xn)
    return xt, xn, probs


def linear_scores(
    fit: np.ndarray, labels: np.ndarray, other: np.ndarray, n_classes: int, *, folds: int = 5, seed: int = 0, c: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A linear head defined by labeled rows, scoring those rows out of sample and any other rows with all of them.

    Args:
        fit: float ``(L, D)`` embeddings of the labeled rows; labels: int ``(L,)`` in ``[0, n_classes)``.
        other: float ``(M, D)`` embeddings of rows that are not among them (may be empty).
        folds, seed, c: as ``oof_linear``.

    Returns:
        ``(fit_probs, other_probs)``: float32 ``(L, K)`` k-fold out-of-sample (a row is never scored by a model that
        saw it) and float32 ``(M, K)`` from one model fitted on every labeled row.

    Raises:
        CurateError: as ``oof_linear``; also embeddings of different widths.
    """
    x_new = np.asarray(other, np.float64).reshape(len(other), -1) if len(other) else np.zeros((0, fit.shape[1]))
    if x_new.shape[1] != np.asarray(fit).shape[1]:
        raise CurateError(f"embeddings of dimension {x_new.shape[1]} do not fit the labeled rows' {np.asarray(fit).shape[1]}")
    oof = oof_linear(fit, labels, n_classes, folds=folds, seed=seed, c=c)
    rest = fit_predict(np.asarray(fit, np.float64), np.asarray(labels, np.int64), x_new, n_classes, c)[2]
    return oof.probs, rest


def knn_vote(query: np.ndarray, reference: np.ndarray, labels: np.ndarray, n_classes: int, *, k: int = 10,
             chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The majority class among each query row's ``k`` nearest reference rows by cosine similarity.

    Args:
        query: float ``(N, D)``; reference: float ``(M, D)`` with int ``labels`` ``(M,)`` in ``[0, n_classes)``.
        k: neighbours (at most M are used).

    Returns:
        ``(vote, share)``: int64 ``(N,)`` the class with the most neighbours (a tie goes to the class whose tied
        neighbours are more similar in sum), float64 ``(N,)`` the fraction of the k neighbours that voted for it.

    Raises:
        CurateError: no reference rows, or widths that differ.
    """
    q = np.asarray(query, np.float32)
    r = np.asarray(reference, np.float32)
    if not len(r):
        raise CurateError("a kNN vote needs labeled reference rows, found none")
    if q.ndim != 2 or r.ndim != 2 or (len(q) and q.shape[1] != r.shape[1]):
        raise CurateError(f"embeddings of shape {list(q.shape)} do not fit the labeled rows' {list(r.shape)}")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    y = np.asarray(labels, np.int64)
    kk = min(k, len(r))
    vote = np.zeros(len(q), np.int64)
    share = np.zeros(len(q), np.float64)
    for i in range(0, len(q), chunk):
        sim = q[i : i + chunk] @ r.T
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        rows = np.arange(len(sim))[:, None]
        counts = np.zeros((len(sim), n_classes), np.float64)
        np.add.at(counts, (np.broadcast_to(rows, top.shape), y[top]), 1.0)
        simsum = np.zeros_like(counts)
        np.add.at(simsum, (np.broadcast_to(rows, top.shape), y[top]), sim[rows, top])
        # similarities are in [-1, 1] and at most k of them add up: scaled below one vote, they only break ties
        best = (counts + simsum / (2.0 * kk + 1.0)).argmax(1)
        vote[i : i + chunk] = best
        share[i : i + chunk] = counts[np.arange(len(sim)), best] / kk
    return vote, share


KNN_K = 10  # neighbours of the outlier distance: enough to smooth one odd neighbour, few enough for small classes


def knn_outliers(embeddings: np.ndarray, reference: np.ndarray, *, k: int = KNN_K) -> tuple[np.ndarray, np.ndarray]:
    """Outlier scores from the mean cosine distance to the ``k`` nearest reference rows (deep kNN, Sun et al. 2022).

    Args:
        embeddings: float ``(N, D)``, the rows to score.
        reference: bool ``(N,)``: the rows that define "typical" (clean: the included train rows). A reference row
            is scored against the other reference rows (leave-self-out), any other row against all of them.
        k: neighbours.

    Returns:
        ``(distance, score)``, float64 ``(N,)`` each: the mean cosine distance, and ``curate.learn.ood.ood_score``
        of its robust z (log distance against the median and MAD of all scored rows): 0 at or below the median,
        rising towards 1; 0.75 (clean's default ``outlier_threshold``) is a z of 5.5, far outside the bulk.

    Raises:
        CurateError: fewer than 2 reference rows.
    """
    from curate.learn.ood import ood_score, robust_z
    from curate.learn.selftrain import knn_distance

    x = np.asarray(embeddings, np.float32)
    ref = np.asarray(reference, bool)
    if ref.sum() < 2:
        raise CurateError(f"outliers in embedding space need at least 2 reference (included train) rows, found {int(ref.sum())}")
    dist = np.zeros(len(x), np.float64)
    dist[ref] = knn_distance(x[ref], x[ref], k=k, exclude_self=True)
    if (~ref).any():
        dist[~ref] = knn_distance(x[~ref], x[ref], k=k)
    return dist, ood_score(robust_z(dist))
