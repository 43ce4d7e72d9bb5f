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
   ``|res . res'| <= r r'`` (``z`` the PCA coordinates, recovered from the index): the plain cosine of two
   views is known to within ``r r'``.
3. *Neighbours*: faiss, exact ``IndexFlatIP`` up to ``EXACT_MAX`` views, else IVF-Flat (``nlist = 2 sqrt(n)``,
   10 k-means iterations on at most 32 vectors per list; float16 vectors above ``F32_INDEX_BYTES``); each view
   is assigned to its ``nprobe`` nearest lists once, and that serves both its add and its search
   (``search_preassigned``): the coarse step, as costly as the scan, runs once instead of twice. A query's
   ``k`` nearest views are its hits.
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


@dataclass
class ViewSet:
    """The searched views of N images: rows of luma, zoom and value thumbnails, each a canonical and maybe a native view.

    Attributes:
        thumbs, shapes: ``(N, 32, 32)`` uint8 zero-padded luma thumbnails and their ``(N, 2)`` (h, w).
        values: ``(N, 32, 32)`` value-channel thumbnails or None; value_rows: the images that have one.
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
        out = self.thumbs[img]
        z = np.flatnonzero(kind == 1)
        if z.size:
            out[z] = zoom_views(self.thumbs[img[z]], self.shapes[img[z]])
        v = np.flatnonzero(kind == 2)
        if v.size and self.values is not None:
            out[v] = self.values[img[v]]
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


def build(vs: ViewSet, nprobe: int, *, threads: int = 1, seed: int = 0) -> tuple[object, np.ndarray | None, Coords]:
    """The faiss index of every view's whitened vector, each view's ``nprobe`` coarse lists (IVF) and ``Coords``.

    Descriptors are computed chunk by chunk on ``threads`` threads and added in view order (deterministic).
    """
    import faiss

    from curate.stages.dedupe.verify import parallel

    n_views = vs.n_views
    pca = _Pca(vs, seed)
    d = len(pca.scale)
    xmu, r, wnorm = (np.empty(n_views, np.float32) for _ in range(3))
    assign = None
    if n_views <= EXACT_MAX:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(2 * np.sqrt(n_views))
        quantizer = faiss.IndexFlatIP(d)
        if n_views * d * 4 <= F32_INDEX_BYTES:
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:  # half the memory; inner products off by ~1e-3, so near-ties among the k nearest may change
            fp16 = faiss.ScalarQuantizer.QT_fp16
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, fp16, faiss.METRIC_INNER_PRODUCT, False)
        index.cp.niter = 10
        index.cp.min_points_per_centroid = 1  # no warning for the small training sample
        train = np.random.default_rng(seed).choice(n_views, min(n_views, 32 * nlist), replace=False)
        index.train(pca(vs.descriptors(train))[0])
        index.nprobe = nprobe
        assign = np.empty((n_views, nprobe), np.int32)
    step = CHUNK * max(1, threads)
    for s in range(0, n_views, step):
        views = np.arange(s, min(s + step, n_views))
        y = np.empty((len(views), d), np.float32)

        def run(lo: int, views: np.ndarray = views, y: np.ndarray = y) -> None:
            part = views[lo : lo + CHUNK]
            y[lo : lo + len(part)], xmu[part], r[part], wnorm[part] = pca(vs.descriptors(part))

        parallel(run, list(range(0, len(views), CHUNK)), threads)
        if assign is None:
            index.add(y)
            continue
        _, lists = index.quantizer.search(y, nprobe)
        assign[views] = lists
        first = np.ascontiguousarray(lists[:, 0], dtype=np.int64)
        ids = views.astype(np.int64)  # named: swig_ptr does not keep its array alive
        index.add_core(len(y), faiss.swig_ptr(y), faiss.swig_ptr(ids), faiss.swig_ptr(first))
    if assign is not None:
        index.make_direct_map()  # the queries are the stored vectors themselves
    return index, assign, Coords(xmu, r, wnorm, float(pca.mu @ pca.mu), 1 / pca.scale**2)


def _hits(index: object, assign: np.ndarray | None, views: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(len(views), k)`` neighbour view ids of ``views`` (-1 = none) and the query vectors ``(len(views), d)``."""
    y = index.reconstruct_batch(views.astype(np.int64))  # type: ignore[attr-defined]
    if assign is None:
        return index.search(y, k)[1], y  # type: ignore[attr-defined]
    lists = assign[views].astype(np.int64)
    return index.search_preassigned(y, k, lists, np.zeros(lists.shape, np.float32))[1], y  # type: ignore[attr-defined]


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
    index, assign, c = build(vs, nprobe, threads=threads, seed=seed)
    t1 = time.perf_counter()
    k = min(k, vs.n_views)
    qv = np.flatnonzero(query[vs.owner])
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for s in range(0, len(qv), 65536):
        q = qv[s : s + 65536]
        ids, yq = _hits(index, assign, q, k)
        qa, qb = np.repeat(np.arange(len(q)), ids.shape[1]), ids.reshape(-1)
        ok = np.flatnonzero((qb >= 0) & (vs.owner[q[qa]] != vs.owner[np.maximum(qb, 0)]))
        qa, qb = qa[ok], qb[ok]
        yb = index.reconstruct_batch(qb.astype(np.int64))  # type: ignore[attr-defined]
        parts.append(_plain_test(vs, c, q[qa], qb, yq[qa], yb))
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
