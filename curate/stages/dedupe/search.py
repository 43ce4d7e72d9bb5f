"""Near-duplicate search that is not quadratic: shift-tolerant descriptors, an ANN index, then verification.

1. *Descriptors* (driver, from the cached thumbnails): the square root of the 2-D Fourier magnitude of the
   Hann-windowed, mean-removed thumbnail, lowest ``DESC_R`` (12) frequencies (265 values), L2-normalised. The
   magnitude does not change when the picture moves, so 1-2 px shifts keep their neighbours. Two views per
   image: *canonical* (thumbnail resized to 32x32, catches resized copies) and *native* (thumbnail pasted at its
   own scale on a 32x32 canvas, catches crops of small images); images already 32x32 have one view.
2. *Candidates*: the ``k`` nearest views of every query view by inner product, via faiss: exact
   ``IndexFlatIP`` for small sets, an IVF index (``nlist = 2 sqrt(n)``, ``nprobe`` lists probed) above
   ``EXACT_MAX`` vectors, so the work grows like n^1.5, not n^2. Neighbours are searched after a PCA to 64
   dimensions with mild whitening; pairs whose plain descriptor similarity is below ``DESC_MIN`` (0.80; the
   lowest planted pair in the benchmark is at 0.91, random images stay below 0.45) are not verified.
3. *Verification* (``curate.stages.dedupe.verify``) aligns each candidate pair and scores it; pairs at or above the
   threshold are near duplicates.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from curate.stages.dedupe.signatures import THUMB
from curate.stages.dedupe.verify import parallel

DESC_R = 12
PCA_DIM = 64
EXACT_MAX = 4096
DEFAULT_K = 4
DESC_MIN = 0.80
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


def descriptor_views(thumbs: np.ndarray, shapes: np.ndarray, *, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors of the canonical and native views.

    Args:
        thumbs: ``(N, 32, 32)`` uint8 zero-padded thumbnails; shapes: ``(N, 2)`` their (h, w).
        threads: chunks computed in parallel (numpy releases the GIL in the heavy parts).

    Returns:
        ``(vectors (M, D) float32, owner (M,) int64)``: ``owner[m]`` is the image of view ``m``; N <= M <= 2N,
        canonical views first.
    """
    n = len(thumbs)
    dim = DESC_R * DESC_R + (DESC_R - 1) ** 2
    canon = np.empty((n, dim), np.float32)
    second = np.flatnonzero((shapes[:, 0] != THUMB) | (shapes[:, 1] != THUMB))
    native = np.empty((len(second), dim), np.float32)
    where = np.full(n, -1)
    where[second] = np.arange(len(second))
    keys = shapes[:, 0] * 1000 + shapes[:, 1]
    tasks = []
    for key in np.unique(keys):
        sel = np.flatnonzero(keys == key)
        tasks += [(int(key // 1000), int(key % 1000), sel[s : s + 8192]) for s in range(0, len(sel), 8192)]

    def run(task: tuple[int, int, np.ndarray]) -> None:
        h, w, part = task
        if (h, w) == (THUMB, THUMB):
            canon[part] = fft_descriptor(thumbs[part], ("canonical",))[0]
        else:
            canon[part], native[where[part]] = fft_descriptor(thumbs[part, :h, :w], ("canonical", "native"))

    parallel(run, tasks, threads)
    owner = np.concatenate([np.arange(n), second]).astype(np.int64)
    return np.concatenate([canon, native]), owner


def whiten(vecs: np.ndarray, dim: int = PCA_DIM, *, sample: int = 20_000, seed: int = 0) -> np.ndarray:
    """PCA to ``dim`` dimensions with mild whitening, then L2-normalised (float32).

    Dividing each component by ``sqrt(eigenvalue + 1% of the largest)`` stops the few high-variance directions
    (overall silhouette) from dominating, which puts a copy's source among its nearest neighbours more often.
    Fitted on a deterministic sample of ``vecs`` itself.
    """
    if len(vecs) <= dim + 1:
        return vecs
    rng = np.random.default_rng(seed)
    fit = vecs[rng.choice(len(vecs), min(len(vecs), sample), replace=False)].astype(np.float64)
    mu = fit.mean(0)
    fit -= mu
    lam, vec = np.linalg.eigh(fit.T @ fit / max(1, len(fit) - 1))
    lam, vec = lam[::-1][:dim], vec[:, ::-1][:, :dim]
    proj = (vec / np.sqrt(np.maximum(lam, 0) + 0.01 * lam[0])).astype(np.float32)
    y = vecs @ proj
    y -= (mu @ proj).astype(np.float32)
    y /= np.linalg.norm(y, axis=1, keepdims=True) + 1e-12
    return y.astype(np.float32)


def knn(
    base: np.ndarray,
    queries: np.ndarray | None,
    k: int,
    *,
    nprobe: int = DEFAULT_NPROBE,
    threads: int = 1,
    seed: int = 0,
    query_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` nearest ``base`` rows of each query by inner product: ``(sims (Q, k), ids (Q, k))``; ids -1 = none.

    ``queries=None`` searches with ``base[query_rows]`` (all rows when None) without copying them.

    Exact (``IndexFlatIP``) up to ``EXACT_MAX`` base vectors; above, IVF-Flat with ``2 sqrt(n)`` lists trained
    (10 k-means iterations) on at most 32 vectors per list, ``nprobe`` lists scanned per query: each query
    scans about ``nprobe * sqrt(n) / 2`` vectors, so the whole search grows like n^1.5. faiss runs on
    ``threads`` OpenMP threads.
    """
    import faiss

    faiss.omp_set_num_threads(max(1, threads))

    d = base.shape[1]
    k = min(k, len(base))
    if len(base) <= EXACT_MAX:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(2 * np.sqrt(len(base)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        index.cp.niter = 10
        index.cp.min_points_per_centroid = 1  # no warning for the small training sample
        index.train(base[rng.choice(len(base), min(len(base), 32 * nlist), replace=False)])
        index.nprobe = nprobe
    index.add(base)
    if queries is not None:
        return index.search(queries, k)
    rows = np.arange(len(base)) if query_rows is None else query_rows
    if len(rows) == len(base):
        return index.search(base, k)
    return index.search(base[rows], k)


def candidate_pairs(
    vecs: np.ndarray, owner: np.ndarray, query: np.ndarray, *, k: int = DEFAULT_K, nprobe: int = DEFAULT_NPROBE, threads: int = 1
) -> np.ndarray:
    """Unique image pairs ``(P, 2)`` (i < j) where a view of one is among the ``k`` nearest views of the other.

    Neighbours are searched in the whitened space (``whiten``); a neighbour whose plain descriptor cosine is
    below ``DESC_MIN`` is dropped (every planted copy in the benchmark is above 0.91, random images below 0.45).

    Args:
        vecs, owner: from ``descriptor_views``.
        query: ``(N,)`` bool; only views of query images search, and a pair needs at least one query image
            (``--against``: the reference set is not compared with itself).
    """
    qv = np.flatnonzero(query[owner])
    if not len(qv):
        return np.empty((0, 2), np.int64)
    _, ids = knn(whiten(vecs), None, k, nprobe=nprobe, threads=threads, query_rows=qv)
    qrow = np.repeat(qv, ids.shape[1])
    flat = ids.reshape(-1)
    keep = np.flatnonzero(flat >= 0)
    qrow, flat = qrow[keep], flat[keep]
    cos = np.empty(len(flat), np.float32)
    for s in range(0, len(flat), 65536):
        cos[s : s + 65536] = np.einsum("pd,pd->p", vecs[qrow[s : s + 65536]], vecs[flat[s : s + 65536]])
    keep = (cos >= DESC_MIN) & (owner[qrow] != owner[flat])
    a, b = owner[qrow[keep]], owner[flat[keep]]
    if not len(a):
        return np.empty((0, 2), np.int64)
    n = np.int64(len(query))
    code = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    return np.stack([code // n, code % n], 1)


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

    from curate.stages.dedupe.pairs import extra_views, pair_scores

    query = np.ones(len(thumbs), bool) if query is None else query
    if flip:
        kw = {"threshold": threshold, "robust_threshold": robust_threshold, "k": k, "nprobe": nprobe, "threads": threads}
        return _near_mirrored(thumbs, shapes, sizes, query, values, has_value, **kw)
    t0 = time.perf_counter()
    # Many small products: BLAS threads only add overhead here (measured: a 265x265 eigh took 1.2 s of CPU with
    # OpenBLAS threads and 5 ms without), so BLAS gets one thread and the work is parallelised by chunks instead.
    with _one_blas_thread():
        x_thumbs, x_shapes, x_owner = extra_views(thumbs, shapes, values, has_value)
        vecs, owner = descriptor_views(np.concatenate([thumbs, x_thumbs]), np.concatenate([shapes, x_shapes]), threads=threads)
        owner = np.concatenate([np.arange(len(thumbs)), x_owner])[owner]
        t1 = time.perf_counter()
        cand = candidate_pairs(vecs, owner, query, k=k, nprobe=nprobe, threads=threads)
        t2 = time.perf_counter()
        scores, keep = pair_scores(
            thumbs, shapes, sizes, cand, threshold, robust_threshold, values=values, has_value=has_value, threads=threads
        )
    t3 = time.perf_counter()
    timings = {
        "descriptors_s": round(t1 - t0, 3),
        "index_s": round(t2 - t1, 3),
        "verify_s": round(t3 - t2, 3),
        "candidates": int(len(cand)),
    }
    return cand[keep], scores[keep], timings
