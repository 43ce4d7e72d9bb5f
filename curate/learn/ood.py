"""Out-of-distribution scores from a classifier's features (class-conditional Mahalanobis distance).

Why Mahalanobis and not kNN distance: junk mixed into a scraped set is rarely alone. 500 MNIST digits among
60,000 Fashion-MNIST images are each other's nearest neighbours, so a kNN distance calls them typical; their
distance to every class's feature distribution stays large however many of them there are (Lee et al. 2018,
"A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks").

The fit uses the features of the rows a fold model trained on, grouped by their given labels; the held-out
rows are scored. Distances of different fold models are not on one scale, so ``fold_scores`` turns them into
a per-fold robust z-score of the log distance, which is comparable across folds (each fold is a stratified
random fifth of the same data).
"""

from __future__ import annotations

import numpy as np


def fit_gaussians(
    features: np.ndarray, labels: np.ndarray, num_classes: int, *, shrinkage: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the shared precision matrix of ``features``.

    Args:
        features: float ``(N, D)``.
        labels: int ``(N,)`` in ``[0, num_classes)``; classes without rows get the global mean.
        shrinkage: weight of the scaled identity mixed into the shared covariance (keeps it invertible when
            ``D`` is large or features are rank deficient, e.g. after ReLU).

    Returns:
        ``(means (K, D), precision (D, D))``, float64.
    """
    x = features.astype(np.float64)
    glob = x.mean(0)
    means = np.tile(glob, (num_classes, 1))
    centered = np.empty_like(x)
    for k in range(num_classes):
        m = labels == k
        if m.any():
            means[k] = x[m].mean(0)
            centered[m] = x[m] - means[k]
    cov = centered.T @ centered / max(len(x) - 1, 1)
    d = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * (np.trace(cov) / d) * np.eye(d)
    return means, np.linalg.pinv(cov, hermitian=True)


def mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
    """Squared Mahalanobis distance of each row to its nearest class mean: float64 ``(N,)``."""
    out = np.empty(len(features), np.float64)
    for i in range(0, len(features), chunk):
        x = features[i : i + chunk].astype(np.float64)
        best = np.full(len(x), np.inf)
        for mu in means:
            diff = x - mu
            best = np.minimum(best, np.einsum("nd,de,ne->n", diff, precision, diff))
        out[i : i + chunk] = best
    return out


def robust_z(distances: np.ndarray) -> np.ndarray:
    """Robust z-score of ``log(distance)``: (x - median) / (1.4826 * MAD); float64 ``(N,)``."""
    x = np.log(np.maximum(distances, 1e-12))
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    return (x - med) / max(mad, 1e-9)


def ood_score(z: np.ndarray) -> np.ndarray:
    """Map robust z-scores to ``[0, 1)``: 0 for anything at or below the median, rising towards 1 far out.

    ``1 - exp(-z / 4)`` for ``z > 0``: z = 4 (well outside the bulk) scores 0.63, z = 8 scores 0.86. Monotone,
    so it ranks exactly like ``z``; the flag is a threshold on ``z`` itself.
    """
    return np.where(z > 0, 1.0 - np.exp(-np.maximum(z, 0) / 4.0), 0.0)
