"""Near-duplicate search that is not quadratic: shift-tolerant descriptors, an ANN index, then verification.

1. *Descriptors*: the square root of the 2-D Fourier magnitude of the Hann-windowed, mean-removed thumbnail,
   lowest ``DESC_R`` (12) frequencies (265 values), L2-normalised. The magnitude does not change when the
   picture moves, so 1-2 px shifts keep their neighbours. Two views per thumbnail: *canonical* (resized to
   32x32, catches resized copies) and *native* (pasted at its own scale on a 32x32 canvas, catches crops of
   small images); thumbnails already 32x32 have one view. Besides the image's own thumbnail, its centre zoomed
   back and its value channel are searched (``pairs.extra_views``).
2. *Candidates* (``curate.stages.dedupe.index``): the ``k`` nearest views of every query view by inner product
   after a PCA to 64 dimensions with mild whitening (exact for small sets, IVF above ``EXACT_MAX``
   views, so the work grows like n^1.5, not n^2); hits whose plain descriptor cosine is below ``DESC_MIN`` (0.80)
   are dropped. The descriptors are held as 64 float16 numbers per view, never all 265 at once.
3. *Verification* (``curate.stages.dedupe.pairs.pair_scores``): the aligned score (``verify``) of every
   candidate; the fitted-filter score (``robust``) only where the pair is close enough in descriptor space
   for it to matter (``pairs.ROBUST_GATE``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from curate.stages.dedupe.signatures import THUMB

DESC_R = 12
DEFAULT_K = 4
DEFAULT_NPROBE = 4


@lru_cache(maxsize=128)
def _axis_matrix(n_in: int, view: str) -> np.ndarray:
    """``(n_in, 2F)`` matrix: one thumbnail side -> Hann-windowed DFT (cos | sin) at the descriptor frequencies.

    ``view="canonical"`` folds in the resize to ``THUMB``; ``"native"`` places the side centred on the canvas.
    Frequencies are 0..R-1 (``F = R``) for x and -(R-1)..R-1 (``F = 2R-1``) for y; the caller picks the set.
    """
    n = THUMB
    h = np.hanning(n + 2)[1:-1]
    if view == "canonical":
        from curate.stages.dedupe.verify import resize_matrix

        place = resize_matrix(n, n_in).astype(np.float64)  # (n, n_in)
    else:
        place = np.zeros((n, n_in))
        o = (n - n_in) // 2
        place[o + np.arange(n_in), np.arange(n_in)] = 1.0
    return (place.T * h).astype(np.float64)  # (n_in, n): pixel -> windowed canvas position


@lru_cache(maxsize=128)
def _view_mats(h: int, w: int, view: str) -> tuple[np.ndarray, np.ndarray]:
    """For thumbnails of shape (h, w): the x matrix ``(w, 2R)`` and the y matrix ``(h, 2U)`` of ``fft_descriptor``."""
    r = DESC_R
    pos = np.arange(THUMB)
    ax = 2 * np.pi * np.outer(pos, np.arange(r)) / THUMB
    uy = np.concatenate([np.arange(r), np.arange(-r + 1, 0)])
    ay = 2 * np.pi * np.outer(pos, uy) / THUMB
    mx = _axis_matrix(w, view) @ np.concatenate([np.cos(ax), -np.sin(ax)], 1)
    my = _axis_matrix(h, view) @ np.concatenate([np.cos(ay), np.sin(ay)], 1)
    return mx.astype(np.float32), my.astype(np.float32)


def fft_descriptor(x: np.ndarray, views: tuple[str, ...] = ("canonical",)) -> list[np.ndarray]:
    """``(M, h, w)`` thumbnails (uint8 or float) -> one ``(M, R^2 + (R-1)^2)`` float32 unit-vector array per view.

    The few Fourier coefficients needed are two small float32 matrix products with the resize (canonical view)
    or the placement on the canvas (native view) and the Hann window folded in: no padded copies, no full FFT.
    The first product is shared by the views. Descriptors do not depend on the intensity scale.
    """
    m_all, h, w = x.shape
    r, nu = DESC_R, 2 * DESC_R - 1
    mats = [_view_mats(h, w, v) for v in views]
    mx_all = np.concatenate([mx for mx, _ in mats], 1)
    outs = [np.empty((m_all, r * r + (r - 1) ** 2), np.float32) for _ in views]
    for s in range(0, m_all, 2048):
        g = x[s : s + 2048].astype(np.float32)
        m = len(g)
        g -= g.mean((1, 2), keepdims=True)
        gx_all = (g.reshape(m * h, w) @ mx_all).reshape(m, h, len(views), 2 * r)
        for k, (_, my) in enumerate(mats):
            gx = gx_all[:, :, k].transpose(0, 2, 1).reshape(m * 2 * r, h)
            t = (gx @ my).reshape(m, 2, r, 2, nu)  # [real/imag along x, v, cos/sin along y, u]
            mag = np.sqrt(np.hypot(t[:, 0, :, 0] + t[:, 1, :, 1], t[:, 1, :, 0] - t[:, 0, :, 1]))  # (m, v, u)
            f = np.concatenate([mag[:, :, :r].reshape(m, -1), mag[:, 1:, r:].reshape(m, -1)], 1)
            f -= f.mean(1, keepdims=True)
            f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
            outs[k][s : s + m] = f
    return outs


def _one_blas_thread() -> Any:
    """Limit BLAS to one thread inside the block (threadpoolctl, a scikit-learn dependency, when present)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _near_mirrored(
    thumbs: np.ndarray,
    shapes: np.ndarray,
    sizes: np.ndarray,
    query: np.ndarray,
    values: np.ndarray | None,
    has_value: np.ndarray | None,
    **kw: Any,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """``near_pairs`` over the images plus their mirror images; a pair with a mirrored member counts for the image."""
    from curate.stages.dedupe.pairs import mirrored

    n = len(thumbs)
    base = np.concatenate([np.arange(n), np.arange(n)])
    two = np.concatenate
    pairs, scores, timings = near_pairs(
        two([thumbs, mirrored(thumbs, shapes)]), two([shapes, shapes]), two([sizes, sizes]), query=two([query, query]), flip=False,
        values=None if values is None else two([values, mirrored(values, shapes)]),
        has_value=None if has_value is None else two([has_value, has_value]), **kw,
    )  # fmt: skip
    a, b = base[pairs[:, 0]], base[pairs[:, 1]]
    keep = a != b
    a, b, scores = np.minimum(a, b)[keep], np.maximum(a, b)[keep], scores[keep]
    order = np.lexsort((-scores, b, a))  # per pair, the best of its (up to 4) plain/mirrored versions first
    a, b, scores = a[order], b[order], scores[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return np.stack([a[first], b[first]], 1), scores[first], timings


def near_pairs(
    thumbs: np.ndarray,
    shapes: np.ndarray,
    sizes: np.ndarray,
    threshold: float,
    *,
    robust_threshold: float = 2.0,
    values: np.ndarray | None = None,
    has_value: np.ndarray | None = None,
    query: np.ndarray | None = None,
    k: int = DEFAULT_K,
    nprobe: int = DEFAULT_NPROBE,
    threads: int = 1,
    flip: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Near-duplicate pairs of images.

    Args:
        thumbs, shapes: ``curate.stages.dedupe.signatures.thumbs_array``; sizes: ``(N, 2)`` decoded (height, width).
        threshold: minimum aligned verification score (``curate.stages.dedupe.verify``) of a duplicate pair.
        robust_threshold: minimum fitted-filter score (``curate.stages.dedupe.robust``); 1 or more = not used.
        values, has_value: ``signatures.value_thumbs`` (value-channel views and scores for colour images).
        query: ``(N,)`` bool, default all; see ``candidate_pairs``.
        threads: threads for the descriptors, the faiss search (OpenMP) and the verification.
        flip: a left-right mirror image counts as a duplicate (its views are searched and verified too).

    Returns:
        ``(pairs (E, 2) int64, scores (E,) float32, timings)`` for the duplicate pairs (``pairs.pair_scores``).
    """
    import time

    from curate.stages.dedupe.index import ViewSet, candidate_pairs
    from curate.stages.dedupe.pairs import pair_scores

    query = np.ones(len(thumbs), bool) if query is None else query
    if flip:
        kw = {"threshold": threshold, "robust_threshold": robust_threshold, "k": k, "nprobe": nprobe, "threads": threads}
        return _near_mirrored(thumbs, shapes, sizes, query, values, has_value, **kw)
    t0 = time.perf_counter()
    # Many small products: BLAS threads only add overhead here (measured: a 265x265 eigh took 1.2 s of CPU with
    # OpenBLAS threads and 5 ms without), so BLAS gets one thread and the work is parallelised by chunks instead.
    with _one_blas_thread():
        views = ViewSet(thumbs, shapes, values, np.flatnonzero(has_value) if has_value is not None else np.empty(0, np.int64))
        parts: dict[str, float] = {}
        cand, close = candidate_pairs(views, query, k=k, nprobe=nprobe, threads=threads, timings=parts)
        t1 = time.perf_counter()
        scores, keep, n_robust = pair_scores(
            thumbs, shapes, sizes, cand, threshold, robust_threshold, values=values, has_value=has_value, closeness=close,
            threads=threads,
        )
    t2 = time.perf_counter()
    timings = {
        **parts,
        "index_s": round(t1 - t0, 3),
        "verify_s": round(t2 - t1, 3),
        "candidates": int(len(cand)),
        "robust_scored": n_robust,
    }
    return cand[keep], scores[keep], timings
