"""Candidate pairs from compact descriptors: every view's descriptor is computed once, kept as 64 float16 numbers.

Memory is what limits the search at a million images (issue 16: 1M signatures under 2 GB for the dedupe step),
so the 265-value Fourier descriptors (``search.fft_descriptor``) of the views are never held together:

1. *Views* (``ViewSet``): the luma thumbnail, its centre zoomed back (``pairs.zoom_views``, computed chunk by
   chunk, never stored) and the value-channel thumbnail of colour images; each gives a *canonical* view and,
   when it is not 32x32, a *native* one.
2. *Coordinates*: a PCA to ``PCA_DIM`` dimensions is fitted on a deterministic sample of at most 20,000 views;
   each view is then kept as ``z = V^T (x - mu)`` in float16 (128 bytes), plus ``x . mu`` and the norm ``r`` of
   the part of ``x - mu`` that the PCA drops. For unit vectors, ``x . x' = z . z' + x.mu + x'.mu - |mu|^2 +
   res . res'``, and ``|res . res'| <= r r'``: so the plain cosine of two views is known to within ``r r'``.
3. *Neighbours*: the whitened ``z`` (each component over ``sqrt(lambda + 1% of the largest)``, L2-normalised,
   as before) go into a faiss index: exact ``IndexFlatIP`` up to ``EXACT_MAX`` views, else an IVF index
   (``nlist = 2 sqrt(n)``) storing the vectors as float16; every view is assigned to its coarse lists once,
   and that assignment serves both the add and the search, whose ``k`` nearest views are the hits.
4. *The plain-cosine test*: a hit is kept when its plain descriptor cosine is at least ``DESC_MIN``. Where the
   bound of step 2 decides it (nearly always: random images' hits lie far below, copies far above), nothing is
   recomputed; the hits in the band are decided exactly, from their views' descriptors computed again.

Each candidate image pair also carries its *closeness*: the best whitened cosine among its hits, which is what
``pairs.pair_scores`` gates the expensive fitted-filter score on.
"""

from __future__ import annotations

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
#: float16 coordinates put the bound off by at most ~1e-3; this slack keeps the kept/dropped decision exact
SLACK = 4e-3


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
    """Compact per-view coordinates (module docstring, step 2): ``z`` float16 ``(V, d)``, ``xmu``, ``r``, ``scale``."""

    z: np.ndarray
    xmu: np.ndarray
    r: np.ndarray
    mu2: float
    scale: np.ndarray  # (d,) whitening factors
    wnorm: np.ndarray  # (V,) norm of z * scale

    def white(self, views: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised float32 vectors of ``views``."""
        y = self.z[views].astype(np.float32) * self.scale
        y /= self.wnorm[views, None] + 1e-12
        return y


def coordinates(vs: ViewSet, *, threads: int = 1, seed: int = 0) -> Coords:
    """PCA on a sample of views, then every view's compact coordinates, chunk by chunk (module docstring, step 2)."""
    from curate.stages.dedupe.verify import parallel

    n_views = vs.n_views
    if n_views <= PCA_DIM + 1:  # too few to fit: the plain descriptors themselves, unwhitened
        x = vs.descriptors(np.arange(n_views))
        z = x.astype(np.float16)
        return Coords(z, np.zeros(n_views, np.float32), np.zeros(n_views, np.float32), 0.0, np.ones(x.shape[1], np.float32),
                      np.linalg.norm(z.astype(np.float32), axis=1))  # fmt: skip
    rng = np.random.default_rng(seed)
    fit = vs.descriptors(np.sort(rng.choice(n_views, min(n_views, SAMPLE), replace=False))).astype(np.float64)
    mu = fit.mean(0)
    fit -= mu
    lam, vec = np.linalg.eigh(fit.T @ fit / max(1, len(fit) - 1))
    lam, vec = lam[::-1][:PCA_DIM], vec[:, ::-1][:, :PCA_DIM]
    scale = (1 / np.sqrt(np.maximum(lam, 0) + 0.01 * lam[0])).astype(np.float32)
    v32, mu32 = vec.astype(np.float32), mu.astype(np.float32)
    z = np.empty((n_views, PCA_DIM), np.float16)
    xmu, r, wnorm = (np.empty(n_views, np.float32) for _ in range(3))

    def run(start: int) -> None:
        views = np.arange(start, min(start + CHUNK, n_views))
        x = vs.descriptors(views)
        xmu[views] = x @ mu32
        x -= mu32
        zz = x @ v32
        r[views] = np.sqrt(np.maximum(np.einsum("pd,pd->p", x, x) - np.einsum("pd,pd->p", zz, zz), 0))
        z[views] = zz
        wnorm[views] = np.linalg.norm(z[views].astype(np.float32) * scale, axis=1)

    parallel(run, list(range(0, n_views, CHUNK)), threads)
    return Coords(z, xmu, r, float(mu @ mu), scale, wnorm)


def _index(c: Coords, n_views: int, nprobe: int, seed: int) -> tuple[object, np.ndarray | None]:
    """The faiss index over all views and, for IVF, each view's ``nprobe`` coarse lists ``(V, nprobe)`` int32."""
    import faiss

    d = c.z.shape[1]
    if n_views <= EXACT_MAX:
        index = faiss.IndexFlatIP(d)
        index.add(c.white(np.arange(n_views)))
        return index, None
    nlist = int(2 * np.sqrt(n_views))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False)
    rng = np.random.default_rng(seed)
    index.cp.niter = 10
    index.cp.min_points_per_centroid = 1  # no warning for the small training sample
    index.train(c.white(np.sort(rng.choice(n_views, min(n_views, 32 * nlist), replace=False))))
    index.nprobe = nprobe
    assign = np.empty((n_views, nprobe), np.int32)
    for s in range(0, n_views, 65536):
        views = np.arange(s, min(s + 65536, n_views))
        y = c.white(views)
        _, lists = quantizer.search(y, nprobe)
        assign[views] = lists
        first = np.ascontiguousarray(lists[:, 0], dtype=np.int64)
        ids = views.astype(np.int64)  # named: swig_ptr does not keep its array alive
        index.add_core(len(y), faiss.swig_ptr(y), faiss.swig_ptr(ids), faiss.swig_ptr(first))
    return index, assign


def _hits(index: object, assign: np.ndarray | None, c: Coords, views: np.ndarray, k: int) -> np.ndarray:
    """``(len(views), k)`` neighbour view ids of ``views`` (-1 = none)."""
    y = c.white(views)
    if assign is None:
        return index.search(y, k)[1]  # type: ignore[attr-defined]
    lists = assign[views].astype(np.int64)
    return index.search_preassigned(y, k, lists, np.zeros(lists.shape, np.float32))[1]  # type: ignore[attr-defined]


def candidate_pairs(
    vs: ViewSet, query: np.ndarray, *, k: int = 4, nprobe: int = 4, threads: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unique image pairs ``(P, 2)`` (i < j) where a view of one is among the ``k`` nearest views of the other.

    A hit counts when the two views' plain descriptor cosine is at least ``DESC_MIN`` (every planted copy in
    the benchmarks is above 0.81, random images below 0.45) and their images differ.

    Args:
        vs: the views (``ViewSet``); query: ``(N,)`` bool: only views of query images search, and a pair needs
            at least one query image (``--against``: the reference set is not compared with itself).

    Returns:
        ``(pairs (P, 2) int64, closeness (P,) float32)``: closeness = the best whitened cosine of the pair's hits.
    """
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    c = coordinates(vs, threads=threads, seed=seed)
    index, assign = _index(c, vs.n_views, nprobe, seed)
    k = min(k, vs.n_views)
    qv = np.flatnonzero(query[vs.owner])
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for s in range(0, len(qv), 65536):
        q = qv[s : s + 65536]
        ids = _hits(index, assign, c, q, k)
        qa, qb = np.repeat(q, ids.shape[1]), ids.reshape(-1)
        ok = np.flatnonzero(qb >= 0)
        qa, qb = qa[ok], qb[ok]
        ok = np.flatnonzero(vs.owner[qa] != vs.owner[qb])
        parts.append(_plain_test(vs, c, qa[ok], qb[ok]))
    a = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    b = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    sim = np.concatenate([p[2] for p in parts]) if parts else np.empty(0, np.float32)
    return _unique_pairs(vs.owner[a], vs.owner[b], sim, len(query))


def _plain_test(vs: ViewSet, c: Coords, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hits ``(a, b)`` (view ids) whose plain cosine is >= ``DESC_MIN``, with their whitened cosines."""
    za, zb = c.z[a].astype(np.float32), c.z[b].astype(np.float32)
    base = np.einsum("pd,pd->p", za, zb) + c.xmu[a] + c.xmu[b] - c.mu2
    band = c.r[a] * c.r[b] + SLACK
    keep = base - band >= DESC_MIN
    unsure = np.flatnonzero((base + band >= DESC_MIN) & ~keep)
    if unsure.size:
        keep[unsure] = _exact_cosine(vs.descriptors, a[unsure], b[unsure]) >= DESC_MIN
    a, b, za, zb = a[keep], b[keep], za[keep], zb[keep]
    white = np.einsum("pd,pd->p", za * c.scale, zb * c.scale) / (c.wnorm[a] * c.wnorm[b] + 1e-12)
    return a, b, white.astype(np.float32)


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
