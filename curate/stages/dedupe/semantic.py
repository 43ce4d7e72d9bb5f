"""Semantic near duplicates (``curate dedupe --model``): pairs of images whose model embeddings point the same way.

The pixel signatures find copies of one picture (re-encodes, resizes, crops, filters); a model's embedding can
also see a copy through edits that move many pixels (on Fashion-MNIST, with a small curate net: watermarks, heavy
JPEG, small rotations), and, with a loose threshold, different photos of one scene. How much it adds depends on
the model: an instance-level backbone (DINOv2, CLIP) more than a classifier, whose features are built to forget
what sets two shirts apart. It is an extra signal, off by default: the pairs it adds are
unioned with the pixel pairs into the same groups, and a member linked to its representative only through
embedding pairs gets ``dup_kind`` ``semantic`` (excluded with reason ``semantic_duplicate``), its ``dup_score`` the
cosine to the representative.

Embeddings come from any ``curate.models`` backend and are cached per (sample_id, model digest) in the version's
state (``curate.models.cache``), so a rerun with another threshold embeds nothing. Vectors are whitened on the
set itself and L2-normalised (``whiten``: the cosine is then the *whitened* cosine); each queried image's ``k``
nearest neighbours by inner product (faiss: exact up to ``EXACT_MAX`` images, else IVF-Flat
with ``nprobe`` lists) are pairs when their cosine is at least the threshold. Reference rows (``--against``) are
never queried, so two reference rows are never paired. The threshold is ``DedupeConfig.semantic_threshold`` (its
default and how it was fitted: ``curate.stages.dedupe.DEFAULT_SEMANTIC_THRESHOLD``).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curate.errors import CurateError

if TYPE_CHECKING:
    from curate.stage import Progress
    from curate.workspace import Workspace

EXACT_MAX = 20_000  # images searched exactly (IndexFlatIP); above, IVF-Flat
SAMPLE = 50_000  # vectors the whitening and the IVF coarse quantizer are fitted on (a seeded sample)


@dataclass
class Semantic:
    """What ``semantic_edges`` returns.

    Attributes:
        pairs: ``(P, 2)`` int64 item indices, ``a < b``; scores: ``(P,)`` float32 cosines, each >= the threshold.
        vectors: ``(M, d)`` float32 whitened unit vectors aligned with the items (zero where the model gave a zero
            vector).
        state: the new version's state files (newly embedded rows, ``dedupe_model.json``).
        info: stats: the model's ``describe()``, embedding counts and seconds, pairs, threshold, search seconds.
    """

    pairs: np.ndarray
    scores: np.ndarray
    vectors: np.ndarray
    state: dict[str, bytes] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def semantic_edges(
    ws: Workspace, items: pa.Table, is_ref: np.ndarray, cfg: Any, *, ref_ws: Workspace | None = None,
    threads: int = 1, progress: Progress | None = None,
) -> Semantic:  # fmt: skip
    """Embed ``items`` with ``cfg.model`` and return the pairs whose cosine is at least ``cfg.semantic_threshold``.

    Args:
        items: ``sample_id``, ``pack``, ``order`` (-1: a reference row outside this workspace's table).
        is_ref: ``(M,)`` bool, the ``--against`` reference rows (never queried).
        cfg: ``DedupeConfig`` (``model``, ``semantic_threshold``, ``device``, ``model_batch_size``, ``k``, ``nprobe``).
        ref_ws: the workspace whose blobs hold the rows with ``order`` -1 (another workspace's reference).

    Raises:
        CurateError: the model cannot be loaded or rejects the images, an embeddings file lacks some sample_ids,
            or the model gives non-finite numbers (each one line naming the model).
    """
    from curate.models import load_backend

    load = partial(load_backend, cfg.model, workspace=ws.root, device=cfg.device, batch_size=cfg.model_batch_size)
    backend = load()
    t0 = time.perf_counter()
    vectors, state, counts = _embed(ws, ref_ws, items, backend, load, progress)
    bad = int((~np.isfinite(vectors).all(1)).sum()) if vectors.size else 0
    if bad:
        raise CurateError(f"{backend.spec}: the model gives NaN or infinite embeddings for {bad} images")
    norms = np.linalg.norm(vectors, axis=1)
    unit = whiten(vectors, norms > 0)
    t1 = time.perf_counter()
    query = ~is_ref & (norms > 0)
    pairs, scores = neighbour_pairs(unit, query, cfg.semantic_threshold, k=cfg.k, nprobe=cfg.nprobe, threads=threads)
    info = {
        "model": backend.describe(),
        "embeddings": {**counts, "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0, "seconds": round(t1 - t0, 2)},
        "threshold": cfg.semantic_threshold,
        "pairs": len(pairs),
        "zero_vectors": int((norms == 0).sum()),
        "search_seconds": round(time.perf_counter() - t1, 3),
    }
    state = {**state, "dedupe_model.json": json.dumps({**info["model"], "embeddings": info["embeddings"]}, indent=2).encode()}
    return Semantic(pairs, scores, unit, state, info)


def _embed(
    ws: Workspace, ref_ws: Workspace | None, items: pa.Table, backend: Any, load: Any, progress: Progress | None
) -> tuple[np.ndarray, dict[str, bytes], dict[str, int]]:
    """Vectors of every item (rows of this workspace from its blobs; outside reference rows from ``ref_ws``'s, after
    this workspace's cache), the merged cache state, and the counts computed / cached / from_file."""
    import pyarrow.compute as pc

    from curate.models.cache import cache_name

    outside = pc.less(items.column("order"), 0).to_numpy(zero_copy_only=False)
    states: list[bytes | None] = []
    counts = {"computed": 0, "cached": 0, "from_file": 0}
    vectors: np.ndarray | None = None
    for where, mask in ((ws, ~outside), (ref_ws or ws, outside)):
        if not mask.any():
            continue
        rows = items.filter(pa.array(mask)).select(["sample_id", "pack"])
        got = _embed_rows(ws, where, rows, backend, load, progress)
        if vectors is None:
            vectors = np.zeros((items.num_rows, got.vectors.shape[1]), np.float32)
        if got.vectors.shape[1] != vectors.shape[1]:
            raise CurateError(f"{backend.spec}: embeddings of different lengths {vectors.shape[1]} and {got.vectors.shape[1]}")
        vectors[mask] = got.vectors
        states.append(got.state.get(cache_name(backend.digest)) if backend.kind != "embeddings" else None)
        for key in counts:
            counts[key] += getattr(got, key)
    merged = [s for s in states if s]
    state = {cache_name(backend.digest): _concat_parquet(merged)} if merged else {}
    return (vectors if vectors is not None else np.zeros((0, 0), np.float32)), state, counts


def _embed_rows(ws: Workspace, where: Workspace, rows: pa.Table, backend: Any, load: Any, progress: Progress | None) -> Any:
    """``embed_samples`` over ``where``'s blobs; rows of another workspace first look in this workspace's cache."""
    from curate.models.cache import Embedded, embed_samples, read_cached

    if where is ws or backend.kind == "embeddings":
        return embed_samples(where, rows, backend, load=load, progress=progress)
    ids = rows.column("sample_id").to_pylist()
    here = read_cached(ws, backend.digest, ids)
    rest = rows.filter(pa.array([s not in here for s in ids], pa.bool_()))
    got = embed_samples(where, rest, backend, load=load, progress=progress)
    new = dict(zip(rest.column("sample_id").to_pylist(), got.vectors, strict=True))
    vec = np.stack([here[s] if s in here else new[s] for s in ids]) if ids else got.vectors
    return Embedded(vec.astype(np.float32, copy=False), got.state, computed=got.computed, cached=got.cached + len(here))


def _concat_parquet(blobs: list[bytes]) -> bytes:
    """One Parquet file of several cache files of one model (same schema and metadata)."""
    import pyarrow.parquet as pq

    if len(blobs) == 1:
        return blobs[0]
    tables = [pq.read_table(io.BytesIO(b)) for b in blobs]
    buf = io.BytesIO()
    pq.write_table(pa.concat_tables(tables), buf, compression="zstd")
    return buf.getvalue()


def whiten(vectors: np.ndarray, valid: np.ndarray | None = None, *, seed: int = 0) -> np.ndarray:
    """Whitened unit vectors: centred on the set's mean, each principal axis divided by ``sqrt(lambda + 1% of the
    largest)`` (the pixel index's whitening, ``index._Pca``), L2-normalised.

    Why: a model's features share a few dominant directions (a classifier's, after a ReLU, all lie in one orthant),
    so their plain cosine is high for any two images of one kind; whitened, the cosine measures what sets one image
    apart from the rest of the set. Fitted on at most ``SAMPLE`` valid rows (a seeded sample), axes with no variance
    dropped.

    Args:
        vectors: ``(M, D)`` float32 embeddings; valid: ``(M,)`` bool, rows to fit on and return (others come back zero).

    Returns:
        ``(M, d)`` float32, ``d`` <= ``D`` (the axes with variance), unit rows (zero where not valid).
    """
    m = len(vectors)
    valid = np.ones(m, bool) if valid is None else valid
    rows = np.flatnonzero(valid)
    if len(rows) < 2:
        return np.zeros((m, 0), np.float32)
    if len(rows) > SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(rows, SAMPLE, replace=False))
    fit = vectors[rows].astype(np.float64)
    mu = fit.mean(0)
    fit -= mu
    lam, vec = np.linalg.eigh(fit.T @ fit / (len(fit) - 1))
    keep = lam > max(lam.max(), 0.0) * 1e-6
    if not keep.any():  # every valid row the same vector: nothing sets one apart
        return np.zeros((m, 0), np.float32)
    proj = vec[:, keep] / np.sqrt(lam[keep] + 0.01 * lam.max())
    z = ((vectors.astype(np.float64) - mu) @ proj).astype(np.float32)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    out = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)
    out[~valid] = 0.0
    return out


def neighbour_pairs(
    unit: np.ndarray, query: np.ndarray, threshold: float, *, k: int = 4, nprobe: int = 4, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs among L2-normalised rows: each ``query`` row's ``k`` nearest others with cosine >= ``threshold``.

    Args:
        unit: ``(M, D)`` float32 unit (or zero) vectors; query: ``(M,)`` bool, the rows whose neighbours are fetched.

    Returns:
        ``(P, 2)`` int64 pairs ``a < b`` (each once, sorted) and their ``(P,)`` float32 cosines.
    """
    import faiss

    m = len(unit)
    q = np.flatnonzero(query)
    if m < 2 or not len(q) or unit.shape[1] == 0:
        return np.empty((0, 2), np.int64), np.empty(0, np.float32)
    faiss.omp_set_num_threads(max(1, threads))
    d = unit.shape[1]
    if m <= EXACT_MAX:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(2 * np.sqrt(m))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(0).choice(m, min(m, SAMPLE), replace=False))
        index.train(np.ascontiguousarray(unit[sample]))
        index.nprobe = nprobe
    index.add(np.ascontiguousarray(unit))
    sims, nbrs = index.search(np.ascontiguousarray(unit[q]), min(k + 1, m))
    a = np.repeat(q, nbrs.shape[1])
    b, s = nbrs.reshape(-1), sims.reshape(-1)
    keep = (b >= 0) & (b != a) & (s >= threshold - 1e-6)
    if not keep.any():
        return np.empty((0, 2), np.int64), np.empty(0, np.float32)
    pairs = np.unique(np.stack([np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])], 1).astype(np.int64), axis=0)
    # the cosine from the vectors themselves: faiss' sums differ in the last bits between batches and index kinds
    scores = np.minimum(np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]]), 1.0).astype(np.float32)
    ok = scores >= threshold - 1e-6
    return pairs[ok], scores[ok]
