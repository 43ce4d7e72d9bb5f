"""Candidate pairs from compact views: each view's descriptor is computed once and kept as 64 floats in the index.

Memory is what limits the search at a million images (issue 16: 1M signatures under 2 GB for the dedupe step),
so the 265-value Fourier descriptors (``search.fft_descriptor``) of the views are never held together:

1. *Views* (``ViewSet``): the luma thumbnail, its centre zoomed back (``pairs.zoom_views``, computed chunk by
   chunk, never stored) and the value-channel thumbnail of colour images; each gives a *canonical* view and,
   when it is not 32x32, a *native* one.
2. *Whitening* (``_Pca``): a PCA to ``PCA_DIM`` dimensions fitted on a deterministic sample of at most 20,000
   views, each component divided by ``sqrt(lambda + 1% of the largest)``, L2-normalised. Descriptors are then
   computed chunk by chunk, whitened and added to the index; besides the index's 64 float32 numbers per view,
   three floats are kept: ``x . mu``, the norm ``r`` of the part of ``x - mu`` that the PCA drops, and the
   whitened norm. For unit vectors ``x . x' = z . z' + x.mu + x'.mu - |mu|^2 + res . res'`` with
   ``|res . res'| <= r r'`` (``z`` the PCA coordinates, recovered from the stored vector): the plain cosine of two
   views is known to within ``r r'``.
3. *Neighbours* (``knn``): exact up to ``EXACT_MAX`` views, else an IVF (``nlist = 2 sqrt(n)`` lists, faiss's
   k-means, 10 iterations on at most 32 vectors per list) kept as plain arrays (``Store``; float16 vectors
   above ``F32_INDEX_BYTES``): each view is assigned to its ``nprobe`` nearest lists once, is stored in the
   first and searches all of them, list by list as matrix products (what faiss's IVF-Flat
   ``search_preassigned`` returns, without its one-query-at-a-time scan). A query's ``k`` nearest views are
   its hits.
4. *The plain-cosine test*: a hit is kept when its plain descriptor cosine is at least ``DESC_MIN``. Where the
   bound of step 2 decides it (random images' hits lie far below, copies far above), nothing is recomputed;
   the hits in the band are decided exactly, from their views' descriptors computed again.

Each candidate image pair also carries its *closeness*: the best whitened cosine among its hits, which is what
``pairs.pair_scores`` gates the expensive fitted-filter score on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from curate.stages.dedupe.search import DESC_R
from curate.stages.dedupe.signatures import THUMB

PCA_DIM = 64
EXACT_MAX = 4096
DESC_MIN = 0.80
DESC_DIM = DESC_R * DESC_R + (DESC_R - 1) ** 2
SAMPLE = 20_000
CHUNK = 8192
#: float32 rounding of the bound; the slack keeps the kept/dropped decision exact
SLACK = 1e-3
#: above this many bytes of float32 vectors (about 1M views) the IVF lists store float16 (memory at 1M images)
F32_INDEX_BYTES = 256 << 20
#: queries searched together by ``knn`` (its buffers: 16 numbers per query and probed list)
QUERY_BLOCK = 1 << 18


@dataclass
class ViewSet:
    """The searched views of N images: rows of luma, zoom and value thumbnails, each a canonical and maybe a native view.

    Attributes:
        thumbs, shapes: ``(N, H, W)`` uint8 zero-padded luma thumbnails (H, W <= 32: padded to 32 or only to the
            largest, ``signatures.thumbs_array``) and their ``(N, 2)`` (h, w).
        values: ``(N, H, W)`` value-channel thumbnails or None; value_rows: the images that have one.
        rows: ``R`` rows = N luma + N zoom + ``len(value_rows)`` value; row_image ``(R,)``, row_kind ``(R,)``
            (0 luma, 1 zoom, 2 value). Views: ``0..R-1`` canonical of each row, then ``R + i`` the native
            view of row ``native_rows[i]`` (rows whose thumbnail is not 32x32); ``owner`` ``(V,)`` the image of each.
    """

    thumbs: np.ndarray
    shapes: np.ndarray
    values: np.ndarray | None
    value_rows: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.thumbs)
        self.row_image = np.concatenate([np.arange(n), np.arange(n), self.value_rows]).astype(np.int64)
        self.row_kind = np.concatenate([np.zeros(n), np.ones(n), np.full(len(self.value_rows), 2)]).astype(np.int8)
        sh = self.row_shapes(np.arange(len(self.row_image)))
        self.native_rows = np.flatnonzero((sh[:, 0] != THUMB) | (sh[:, 1] != THUMB))
        self.owner = np.concatenate([self.row_image, self.row_image[self.native_rows]])
        self.n_views = len(self.owner)

    def row_shapes(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), 2)`` thumbnail shapes (zoom rows are 32x32)."""
        sh = self.shapes[self.row_image[rows]].copy()
        sh[self.row_kind[rows] == 1] = THUMB
        return sh

    def row_thumbs(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), 32, 32)`` uint8 thumbnails of ``rows`` (zoom views computed here)."""
        from curate.stages.dedupe.pairs import zoom_views

        img, kind = self.row_image[rows], self.row_kind[rows]
        h, w = self.thumbs.shape[1:]  # the arrays may be padded only to their largest thumbnail
        out = np.zeros((len(rows), THUMB, THUMB), np.uint8)
        out[:, :h, :w] = self.thumbs[img]
        z = np.flatnonzero(kind == 1)
        if z.size:
            out[z] = zoom_views(self.thumbs[img[z]], self.shapes[img[z]])
        v = np.flatnonzero(kind == 2)
        if v.size and self.values is not None:
            out[v, :h, :w] = self.values[img[v]]
        return out

    def descriptors(self, views: np.ndarray) -> np.ndarray:
        """Plain descriptors ``(len(views), D)`` float32 of the given views (``search.fft_descriptor``)."""
        from curate.stages.dedupe.search import fft_descriptor

        r = len(self.row_image)
        native = views >= r
        rows = views.copy()
        rows[native] = self.native_rows[views[native] - r]
        th, sh = self.row_thumbs(rows), self.row_shapes(rows)
        out = np.empty((len(views), DESC_DIM), np.float32)
        keys = sh[:, 0] * 1000 + sh[:, 1] + native * 10**6
        for key in np.unique(keys):
            sel = np.flatnonzero(keys == key)
            h, w = int(key % 10**6 // 1000), int(key % 1000)
            out[sel] = fft_descriptor(th[sel, :h, :w], ("native" if key >= 10**6 else "canonical",))[0]
        return out


@dataclass
class Coords:
    """What is kept of every view besides its whitened vector in the index (module docstring, step 2).

    ``y = normalise(scale * z)`` is in the index; ``z . z' = wnorm wnorm' sum(y y' / scale^2)``.
    """

    xmu: np.ndarray  # (V,) x . mu
    r: np.ndarray  # (V,) norm of the residual the PCA drops
    wnorm: np.ndarray  # (V,) norm of scale * z
    mu2: float
    inv_s2: np.ndarray  # (d,) 1 / scale^2


class _Pca:
    """The whitening PCA fitted on a sample of views (identity for too few views to fit)."""

    def __init__(self, vs: ViewSet, seed: int) -> None:
        n_views = vs.n_views
        if n_views <= PCA_DIM + 1:  # too few to fit: the plain descriptors themselves, unwhitened
            self.mu, self.vec, self.scale = np.zeros(DESC_DIM, np.float32), None, np.ones(DESC_DIM, np.float32)
            self.proj = self.mu_proj = None
            return
        fit = vs.descriptors(np.random.default_rng(seed).choice(n_views, min(n_views, SAMPLE), replace=False)).astype(np.float64)
        mu = fit.mean(0)
        fit -= mu
        lam, vec = np.linalg.eigh(fit.T @ fit / max(1, len(fit) - 1))
        lam, vec = lam[::-1][:PCA_DIM], vec[:, ::-1][:, :PCA_DIM]
        self.scale = (1 / np.sqrt(np.maximum(lam, 0) + 0.01 * lam[0])).astype(np.float32)
        self.proj = (vec / np.sqrt(np.maximum(lam, 0) + 0.01 * lam[0])).astype(np.float32)
        self.mu_proj = (mu @ self.proj).astype(np.float32)
        self.mu, self.vec = mu.astype(np.float32), vec.astype(np.float32)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Plain descriptors ``(M, D)`` -> ``(y (M, d) whitened unit vectors, x . mu, residual norm, norm of scale * z)``."""
        xmu = x @ self.mu
        if self.vec is None:
            return x.copy(), xmu, np.zeros(len(x), np.float32), np.linalg.norm(x, axis=1)
        xc = x - self.mu
        z = xc @ self.vec
        r = np.sqrt(np.maximum(np.einsum("pd,pd->p", xc, xc) - np.einsum("pd,pd->p", z, z), 0))
        y = x @ self.proj  # = scale * z, the formula the search has always used (its neighbours stay the same)
        y -= self.mu_proj
        wnorm = np.linalg.norm(y, axis=1)
        y /= wnorm[:, None] + 1e-12
        return y.astype(np.float32), xmu, r, wnorm


@dataclass
class Store:
    """Every view's whitened vector and, above ``EXACT_MAX`` views, its coarse lists (an IVF kept as plain arrays).

    Attributes:
        y: ``(V, d)`` whitened unit vectors, float32 (float16 above ``F32_INDEX_BYTES``).
        assign: ``(V, nprobe)`` int32 coarse lists of each view, nearest first (None = exact search); a view is
            stored in its first list and searches all of them.
    """

    y: np.ndarray
    assign: np.ndarray | None

    def vectors(self, views: np.ndarray) -> np.ndarray:
        """``(len(views), d)`` float32 vectors of ``views``."""
        return self.y[views].astype(np.float32, copy=False)


def build(vs: ViewSet, nprobe: int, *, threads: int = 1, seed: int = 0) -> tuple[Store, Coords]:
    """Every view's whitened vector, its ``nprobe`` coarse lists (IVF, above ``EXACT_MAX`` views) and ``Coords``.

    Descriptors are computed chunk by chunk on ``threads`` threads (deterministic: each chunk writes its own
    rows). The coarse centroids are faiss's k-means (``IndexIVFFlat.train``); ``knn`` searches the lists.
    """
    import faiss

    from curate.stages.dedupe.verify import parallel

    n_views = vs.n_views
    pca = _Pca(vs, seed)
    d = len(pca.scale)
    xmu, r, wnorm = (np.empty(n_views, np.float32) for _ in range(3))
    quantizer, assign = None, None
    if n_views > EXACT_MAX:
        nlist = int(2 * np.sqrt(n_views))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 10
        ivf.cp.min_points_per_centroid = 1  # no warning for the small training sample
        train = np.random.default_rng(seed).choice(n_views, min(n_views, 32 * nlist), replace=False)
        ivf.train(pca(vs.descriptors(train))[0])
        quantizer = ivf.quantizer
        assign = np.empty((n_views, nprobe), np.int32)
    # float16 above about 1M views (half the memory; inner products off by ~1e-3, so near-ties may change)
    y = np.empty((n_views, d), np.float16 if n_views * d * 4 > F32_INDEX_BYTES else np.float32)
    step = CHUNK * max(1, threads)
    for s in range(0, n_views, step):
        views = np.arange(s, min(s + step, n_views))
        y32 = np.empty((len(views), d), np.float32)

        def run(lo: int, views: np.ndarray = views, y32: np.ndarray = y32) -> None:
            part = views[lo : lo + CHUNK]
            y32[lo : lo + len(part)], xmu[part], r[part], wnorm[part] = pca(vs.descriptors(part))

        parallel(run, list(range(0, len(views), CHUNK)), threads)
        y[views] = y32
        if quantizer is not None:  # one batch for the step: faiss's matrix product runs on all threads
            assign[views] = quantizer.search(y32, nprobe)[1]
    return Store(y, assign), Coords(xmu, r, wnorm, float(pca.mu @ pca.mu), 1 / pca.scale**2)


def knn(store: Store, queries: np.ndarray, k: int, *, threads: int = 1) -> np.ndarray:
    """``(len(queries), k)`` ids of the ``k`` nearest views (inner product) of each query view, best first (-1 = none).

    Exact up to ``EXACT_MAX`` views; above, a query searches the views stored in its ``nprobe`` lists, as an
    IVF-Flat ``search_preassigned`` does, but list by list: one matrix product of all the queries that probe a
    list with the list's vectors (``faiss.knn``: BLAS plus a k-heap), then the ``nprobe`` partial results of
    each query merged. faiss's IVF scan goes one query at a time: on 300,000 random thumbnails this took 2.3x
    less CPU (46.2 -> 19.8 s; BENCHMARKS.md, issue 16, third part) for the same neighbours.
    """
    import faiss

    if store.assign is None:
        return faiss.knn(store.vectors(queries), store.vectors(np.arange(len(store.y))), k, faiss.METRIC_INNER_PRODUCT)[1]
    first = store.assign[:, 0]
    n_lists = int(store.assign.max()) + 1
    stored = np.argsort(first, kind="stable")  # views by list, ascending ids within a list
    s_bounds = np.searchsorted(first[stored], np.arange(n_lists + 1))
    out = np.empty((len(queries), k), np.int64)
    faiss.omp_set_num_threads(1)  # parallel over lists instead
    try:
        for s in range(0, len(queries), QUERY_BLOCK):  # bounded buffers: (block, nprobe * k) candidates
            out[s : s + QUERY_BLOCK] = _knn_block(store, queries[s : s + QUERY_BLOCK], k, stored, s_bounds, threads)
    finally:
        faiss.omp_set_num_threads(max(1, threads))
    return out


def _knn_block(store: Store, queries: np.ndarray, k: int, stored: np.ndarray, s_bounds: np.ndarray, threads: int) -> np.ndarray:
    """``knn`` for one block of queries: every list they probe searched once, the ``nprobe`` results merged."""
    import faiss

    from curate.stages.dedupe.verify import parallel

    probe, n_lists = store.assign.shape[1], len(s_bounds) - 1  # type: ignore[union-attr]
    q_lists = store.assign[queries].reshape(-1)  # type: ignore[index]  # incidence i: query i // probe, its (i % probe)-th list
    q_order = np.argsort(q_lists, kind="stable")
    q_bounds = np.searchsorted(q_lists[q_order], np.arange(n_lists + 1))
    best_d = np.full((len(queries), probe * k), -np.inf, np.float32)
    best_i = np.full((len(queries), probe * k), -1, np.int64)

    def run(lst: int) -> None:
        inc = q_order[q_bounds[lst] : q_bounds[lst + 1]]
        db = stored[s_bounds[lst] : s_bounds[lst + 1]]
        if not inc.size or not db.size:
            return
        rows = inc // probe  # each (query, list) incidence fills its own k columns: no two threads write a cell
        dist, idx = faiss.knn(store.vectors(queries[rows]), store.vectors(db), min(k, len(db)), faiss.METRIC_INNER_PRODUCT)
        cols = (inc % probe)[:, None] * k + np.arange(dist.shape[1])
        best_d[rows[:, None], cols] = dist
        best_i[rows[:, None], cols] = np.where(idx >= 0, db[np.maximum(idx, 0)], -1)

    parallel(run, list(range(n_lists)), threads)
    top = np.argsort(-best_d, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(best_i, top, 1)
    out[np.take_along_axis(best_d, top, 1) == -np.inf] = -1
    return out


def candidate_pairs(
    vs: ViewSet, query: np.ndarray, *, k: int = 4, nprobe: int = 4, threads: int = 1, seed: int = 0,
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Unique image pairs ``(P, 2)`` (i < j) where a view of one is among the ``k`` nearest views of the other.

    A hit counts when the two views' plain descriptor cosine is at least ``DESC_MIN`` (every planted copy in
    the benchmarks is above 0.81, random images below 0.45) and their images differ.

    Args:
        vs: the views (``ViewSet``); query: ``(N,)`` bool: only views of query images search, and a pair needs
            at least one query image (``--against``: the reference set is not compared with itself).
        timings: filled with ``build_s`` (descriptors, whitening, index) and ``knn_s`` (neighbours, cosine test).

    Returns:
        ``(pairs (P, 2) int64, closeness (P,) float32)``: closeness = the best whitened cosine of the pair's hits.
    """
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    t0 = time.perf_counter()
    store, c = build(vs, nprobe, threads=threads, seed=seed)
    t1 = time.perf_counter()
    k = min(k, vs.n_views)
    qv = np.flatnonzero(query[vs.owner])
    hits = knn(store, qv, k, threads=threads)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for s in range(0, len(qv), 65536):
        q, ids = qv[s : s + 65536], hits[s : s + 65536]
        qa, qb = np.repeat(np.arange(len(q)), ids.shape[1]), ids.reshape(-1)
        ok = np.flatnonzero((qb >= 0) & (vs.owner[q[qa]] != vs.owner[np.maximum(qb, 0)]))
        qa, qb = q[qa[ok]], qb[ok]
        parts.append(_plain_test(vs, c, qa, qb, store.vectors(qa), store.vectors(qb)))
    a = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    b = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    sim = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.float32)
    if timings is not None:
        timings.update({"build_s": round(t1 - t0, 3), "knn_s": round(time.perf_counter() - t1, 3)})
    return _unique_pairs(vs.owner[a], vs.owner[b], sim, len(query))


def _plain_test(
    vs: ViewSet, c: Coords, a: np.ndarray, b: np.ndarray, ya: np.ndarray, yb: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hits ``(a, b)`` (view ids; ``ya``, ``yb`` their whitened vectors) whose plain cosine is >= ``DESC_MIN``,
    with their whitened cosines."""
    white = np.einsum("pd,pd->p", ya, yb)
    zz = np.einsum("pd,pd,d->p", ya, yb, c.inv_s2) * c.wnorm[a] * c.wnorm[b]
    base = zz + c.xmu[a] + c.xmu[b] - c.mu2
    band = c.r[a] * c.r[b] + SLACK
    keep = base - band >= DESC_MIN
    unsure = np.flatnonzero((base + band >= DESC_MIN) & ~keep)
    if unsure.size:
        keep[unsure] = _exact_cosine(vs.descriptors, a[unsure], b[unsure]) >= DESC_MIN
    return a[keep], b[keep], white[keep].astype(np.float32)


def _exact_cosine(desc: Callable[[np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain descriptor cosines of view pairs, each view's descriptor computed once."""
    views, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    out = np.empty(len(a), np.float32)
    x = np.empty((len(views), DESC_DIM), np.float32)
    for s in range(0, len(views), 65536):
        x[s : s + 65536] = desc(views[s : s + 65536])
    ia, ib = inv[: len(a)], inv[len(a) :]
    for s in range(0, len(a), 65536):
        out[s : s + 65536] = np.einsum("pd,pd->p", x[ia[s : s + 65536]], x[ib[s : s + 65536]])
    return out


def _unique_pairs(a: np.ndarray, b: np.ndarray, sim: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Image pairs (i < j), each once, with the best ``sim`` among its hits."""
    if not len(a):
        return np.empty((0, 2), np.int64), np.empty(0, np.float32)
    code = np.minimum(a, b).astype(np.int64) * n + np.maximum(a, b)
    uniq, inv = np.unique(code, return_inverse=True)
    best = np.full(len(uniq), -2.0, np.float32)
    np.maximum.at(best, inv, sim)
    return np.stack([uniq // n, uniq % n], 1), best
