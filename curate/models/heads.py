"""Heads on frozen embeddings: k-fold out-of-sample probabilities from a linear model, in seconds.

``oof_linear`` is the embedding counterpart of ``curate.learn.predict.oof_predict`` and returns the same ``OOF``
(probabilities, optional OOD z-scores, fold of each row), so a stage can take either: k logistic regressions on
``(N, D)`` vectors instead of k CNN trainings on pixels. ``knn_outliers`` scores rows by their cosine distance to
their nearest reference rows. ``curate clean --model`` uses both.
"""

from __future__ import annotations

import numpy as np

from curate.errors import CurateError


def oof_linear(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    folds: int = 5,
    seed: int = 0,
    ood: bool = False,
    c: float = 1.0,
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

    Returns:
        ``OOF``: ``probs`` float32 ``(N, K)`` (each row from a model that never saw it), ``ood_z`` or None, ``fold``.

    Raises:
        CurateError: shapes that disagree, non-finite values, under 2 classes, or a class with fewer rows than folds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

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
        scaler = StandardScaler().fit(x[tr])
        xt, xh = scaler.transform(x[tr]), scaler.transform(x[ho])
        model = LogisticRegression(C=c, max_iter=1000).fit(xt, y[tr])
        probs[np.ix_(ho, model.classes_)] = model.predict_proba(xh)
        fold_of[ho] = f
        if ood_z is not None:
            means, precision = fit_gaussians(xt, y[tr], n_classes)
            ood_z[ho] = robust_z(mahalanobis(xh, means, precision))
    return OOF(probs, ood_z, fold_of)


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
