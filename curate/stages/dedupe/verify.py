"""Pairwise verification of near-duplicate candidates: align two thumbnails, then score the worst local difference.

Candidates come from ``curate.stages.dedupe.search`` (a shift-tolerant descriptor and an ANN index); they are only
*look-alikes*. On Fashion-MNIST nearly every image has a different garment with the same silhouette whose
global correlation with it is 0.98-0.99, higher than that of its own JPEG or resized copy, so a global score
cannot separate them (measured: BENCHMARKS.md "Dedupe"). What does separate them is alignment plus a *local*
score: after the two images are put on one pixel grid and the best translation is found, a true copy differs
from its source by small noise everywhere, while a different garment differs a lot somewhere.

Hypotheses tried for a pair (A, B), the better one wins:

1. *Same frame* (re-encode, resize, JPEG, brightness, 1-3 px shift): both thumbnails on their common grid
   (as they are when their shapes match; else both resampled to 0.8x the smaller one, which washes out the
   difference between resampling kernels), the central part of B (a ``SHIFT`` px margin) placed over A at
   the offset estimated from row and column profiles.
2. *Crop* (B is a sub-window of A at A's scale): B's thumbnail brought to A's thumbnail scale (a no-op for
   images of at most 32 px, so a crop of a small image matches exactly), searched over every offset in A.

The score of a placement is ``1 - max_block_rms``: the residual after fitting B ~ gain * A + offset (so
brightness and contrast changes are free) is cut into about 6x6 blocks, and the largest block RMS (0..1
intensity units) is subtracted from 1. The score is also capped by ``2 * ncc - 1`` (``ncc``: the Pearson
correlation of the two windows), so low-contrast images, whose residual is small whatever they show, need
a correlation near 0.95 to pass a 0.9 threshold; true copies correlate at 0.99 or more.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

SHIFT = 3
COMMON_SCALE = 0.8
CROP_MIN = 0.7
CHUNK = 8192


@lru_cache(maxsize=256)
def resize_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` bicubic (a=-0.5) resampling matrix, antialiased when shrinking (like PIL's BICUBIC)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    x = (np.arange(n_in)[None, :] + 0.5 - (np.arange(n_out)[:, None] + 0.5) * scale) / support
    ax = np.abs(x)
    a = -0.5
    w = np.where(ax < 1, (a + 2) * ax**3 - (a + 3) * ax**2 + 1, np.where(ax < 2, a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a, 0.0))
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def resize_batch(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize a ``(P, H, W)`` float batch to ``(P, h, w)`` with ``resize_matrix`` (identity when equal)."""
    p, hh, ww = x.shape
    if (hh, ww) == (h, w):
        return x
    # two large products over the whole batch, not one small product per image (numpy's stacked matmul)
    y = np.ascontiguousarray(x).reshape(p * hh, ww) @ resize_matrix(w, ww).T
    y = np.ascontiguousarray(y.reshape(p, hh, w).transpose(0, 2, 1)).reshape(p * w, hh) @ resize_matrix(h, hh).T
    return np.ascontiguousarray(y.reshape(p, w, h).transpose(0, 2, 1))


def _block_edges(n: int) -> np.ndarray:
    """Start indices of about 6 equal blocks along a side of ``n`` pixels (at least 2 px each)."""
    bs = max(2, round(n / 6))
    return np.arange(0, n, bs)


def placement_scores(a: np.ndarray, b: np.ndarray, floor: float = -1.0) -> tuple[np.ndarray, np.ndarray]:
    """Score aligned windows ``a``, ``b`` of shape ``(P, h, w)`` (floats in 0..1).

    Args:
        floor: pairs whose score cannot reach it skip the block step and get an upper bound below it
            (the global residual RMS bounds the largest block RMS from below).

    Returns:
        ``(score, ncc)``, each ``(P,)`` float32: ``score = min(1 - max block RMS residual, 2 * ncc - 1)`` and the
        Pearson correlation ``ncc`` of the two windows.
    """
    p, h, w = a.shape
    npx = h * w
    af = a.reshape(p, npx)
    bf = b.reshape(p, npx)
    ma = af.mean(1)
    mb = bf.mean(1)
    saa = np.maximum(np.einsum("pi,pi->p", af, af) - npx * ma * ma, 0)
    sbb = np.maximum(np.einsum("pi,pi->p", bf, bf) - npx * mb * mb, 0)
    sab = np.einsum("pi,pi->p", af, bf) - npx * ma * mb
    flat_a, flat_b = saa < 1e-6 * npx, sbb < 1e-6 * npx  # uniform windows (std below ~0.25 grey levels)
    ncc = np.clip(sab / np.sqrt(saa * sbb + 1e-12), -1, 1)
    ncc = np.where(flat_a | flat_b, np.where(flat_a & flat_b, 1.0 - 2.0 * np.abs(ma - mb), 0.0), ncc)
    gain = sab / (saa + 1e-9)
    global_rms = np.sqrt(np.maximum(sbb - gain * sab, 0) / npx)
    score = np.minimum(1.0 - global_rms, 2 * ncc - 1)  # an upper bound of the final score
    todo = np.flatnonzero(score >= floor)
    if todo.size:
        off = mb[todo] - gain[todo] * ma[todo]
        e2 = bf[todo] - gain[todo, None] * af[todo] - off[:, None]
        e2 *= e2
        e2 = e2.reshape(len(todo), h, w)
        ry, rx = _block_edges(h), _block_edges(w)
        sums = np.add.reduceat(np.add.reduceat(e2, ry, axis=1), rx, axis=2)
        area = np.outer(np.diff(np.append(ry, h)), np.diff(np.append(rx, w)))
        score[todo] = np.minimum(1.0 - np.sqrt((sums / area).reshape(len(todo), -1).max(1)), 2 * ncc[todo] - 1)
    return score.astype(np.float32), ncc.astype(np.float32)


def _profile_offset(pa: np.ndarray, pb: np.ndarray, margin: int) -> np.ndarray:
    """Offset (0..2*margin) that best aligns profile ``pb[margin:-margin]`` inside ``pa`` (1-D correlation)."""
    from numpy.lib.stride_tricks import sliding_window_view

    n = pb.shape[1]
    seg = pb[:, margin : n - margin]
    ln = seg.shape[1]
    seg = seg - seg.mean(1, keepdims=True)  # zero mean: the windows of pa need no centring for the numerator
    num = np.einsum("pl,pdl->pd", seg, sliding_window_view(pa, ln, axis=1))
    c1 = np.concatenate([np.zeros((len(pa), 1), np.float32), np.cumsum(pa, 1)], 1)
    c2 = np.concatenate([np.zeros((len(pa), 1), np.float32), np.cumsum(pa * pa, 1)], 1)
    s1 = c1[:, ln:] - c1[:, :-ln]
    s2 = c2[:, ln:] - c2[:, :-ln]
    return (num / np.sqrt(np.maximum(s2 - s1 * s1 / ln, 0) + 1e-6)).argmax(1)


def _float(x: np.ndarray) -> np.ndarray:
    """uint8 (0..255) or float pixels -> float32 in 0..1 (one pass)."""
    if x.dtype == np.uint8:
        return np.multiply(x, np.float32(1 / 255), dtype=np.float32)
    return x.astype(np.float32, copy=False)


def _same_frame(
    a: np.ndarray, b: np.ndarray, floor: float, profiles: tuple[np.ndarray, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Hypothesis 1 on same-shape batches (uint8 or float): profile-estimated shift, then score the centre of ``b``.

    ``profiles`` = (rows of a, rows of b, columns of a, columns of b) when the caller has them precomputed.
    """
    p, h, w = a.shape
    m = SHIFT if min(h, w) - 2 * SHIFT >= 8 else 0
    if profiles is None:
        profiles = (a.mean(2, dtype=np.float32), b.mean(2, dtype=np.float32), a.mean(1, dtype=np.float32), b.mean(1, dtype=np.float32))
    ra, rb, ca, cb = profiles
    dy = _profile_offset(ra, rb, m) if m else np.zeros(p, np.int64)
    dx = _profile_offset(ca, cb, m) if m else np.zeros(p, np.int64)
    score = np.full(p, -1.0, np.float32)
    ncc = np.full(p, -1.0, np.float32)
    code = dy * (2 * m + 1) + dx
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange((2 * m + 1) ** 2 + 1))
    for c in range((2 * m + 1) ** 2):
        sel = order[bounds[c] : bounds[c + 1]]
        if sel.size:
            oy, ox = divmod(c, 2 * m + 1)
            aw = _float(a[sel, oy : oy + h - 2 * m, ox : ox + w - 2 * m])
            score[sel], ncc[sel] = placement_scores(aw, _float(b[sel, m : h - m, m : w - m]), floor)
    return score, ncc


def _crop_search(a: np.ndarray, t: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Hypothesis 2: template ``t`` (P, th, tw) at every offset inside ``a`` (P, h, w); best by correlation."""
    p, h, w = a.shape
    _, th, tw = t.shape
    a, t = _float(a), _float(t)
    best_s = np.full(p, -1.0, np.float32)
    best_n = np.full(p, -2.0, np.float32)
    for oy in range(h - th + 1):
        for ox in range(w - tw + 1):
            s, n = placement_scores(a[:, oy : oy + th, ox : ox + tw], t, floor)
            better = n > best_n
            best_s = np.where(better, s, best_s)
            best_n = np.where(better, n, best_n)
    return best_s, best_n


def parallel(fn: Callable[[Any], None], tasks: list[Any], threads: int) -> None:
    """Run ``fn(task)`` for every task, on ``threads`` threads when > 1 (results are written by ``fn``)."""
    if threads <= 1 or len(tasks) <= 1:
        for t in tasks:
            fn(t)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, tasks))


def verify_pairs(
    thumbs: np.ndarray, shapes: np.ndarray, sizes: np.ndarray, pairs: np.ndarray, floor: float = -1.0, *, threads: int = 1
) -> np.ndarray:
    """Score candidate pairs of images.

    Args:
        thumbs: ``(N, H, W)`` uint8 zero-padded thumbnails, H, W <= 32 (``curate.stages.dedupe.signatures.thumbs_array``).
        shapes: ``(N, 2)`` thumbnail (h, w).
        sizes: ``(N, 2)`` decoded image (height, width).
        pairs: ``(P, 2)`` int indices into the above.
        floor: scores below it may be returned as upper bounds (faster; pass the duplicate threshold).
        threads: chunks of pairs verified in parallel.

    Returns:
        ``(P,)`` float32 scores in [-1, 1]; 1.0 = same pixels up to brightness/contrast and translation.
    """
    out = np.full(len(pairs), -1.0, np.float32)
    if not len(pairs):
        return out
    area = sizes[:, 0].astype(np.int64) * sizes[:, 1]
    # A = the member with the larger decoded area (the possible uncropped original).
    swap = area[pairs[:, 1]] > area[pairs[:, 0]]
    ia = np.where(swap, pairs[:, 1], pairs[:, 0])
    ib = np.where(swap, pairs[:, 0], pairs[:, 1])
    key = ((shapes[ia, 0] * 64 + shapes[ia, 1]) * 64 + shapes[ib, 0]) * 64 + shapes[ib, 1]
    order = np.argsort(key, kind="stable")
    uniq, starts = np.unique(key[order], return_index=True)
    rows, cols = _profiles(thumbs, shapes)
    ends = np.append(starts[1:], len(order))
    tasks = []
    for kk, s0, s1 in zip(uniq, starts, ends, strict=True):
        shape4 = ((int(kk) >> 18) & 63, (int(kk) >> 12) & 63, (int(kk) >> 6) & 63, int(kk) & 63)
        tasks += [(shape4, order[start : min(start + CHUNK, s1)]) for start in range(s0, s1, CHUNK)]

    def run(task: tuple[tuple[int, int, int, int], np.ndarray]) -> None:
        (ha, wa, hb, wb), k = task
        a = thumbs[ia[k], :ha, :wa]
        b = thumbs[ib[k], :hb, :wb]
        if (ha, wa) == (hb, wb):
            profiles = (rows[ia[k], :ha], rows[ib[k], :ha], cols[ia[k], :wa], cols[ib[k], :wa])
            score, _ = _same_frame(a, b, floor, profiles)
        else:
            h, w = max(2, round(COMMON_SCALE * min(ha, hb))), max(2, round(COMMON_SCALE * min(wa, wb)))
            score, _ = _same_frame(resize_batch(_float(a), h, w), resize_batch(_float(b), h, w), floor)
        differ = np.flatnonzero((sizes[ia[k]] != sizes[ib[k]]).any(1))
        if differ.size:
            crop = _crop_scores(a[differ], b[differ], sizes[ia[k[differ]]], sizes[ib[k[differ]]], floor)
            score[differ] = np.maximum(score[differ], crop)
        out[k] = score

    parallel(run, tasks, threads)
    return out


def _profiles(thumbs: np.ndarray, shapes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column means ``(N, 32)`` of every thumbnail over its own (h, w) (padding excluded)."""
    n, side, _ = thumbs.shape
    rows = np.zeros((n, side), np.float32)
    cols = np.zeros((n, side), np.float32)
    for s in range(0, n, 8192):
        t = thumbs[s : s + 8192].astype(np.float32)
        rows[s : s + 8192] = t.sum(2)
        cols[s : s + 8192] = t.sum(1)
    rows /= np.maximum(shapes[:, 1:2], 1)
    cols /= np.maximum(shapes[:, 0:1], 1)
    return rows, cols


def _crop_scores(a: np.ndarray, b: np.ndarray, size_a: np.ndarray, size_b: np.ndarray, floor: float) -> np.ndarray:
    """Hypothesis 2 for a same-shape group: B brought to A's thumbnail scale, when it fits as a crop."""
    p, ha, wa = a.shape
    th = np.rint(size_b[:, 0] * ha / size_a[:, 0]).astype(int)
    tw = np.rint(size_b[:, 1] * wa / size_a[:, 1]).astype(int)
    ok = (th <= ha) & (tw <= wa) & ((th < ha) | (tw < wa)) & (th >= CROP_MIN * ha) & (tw >= CROP_MIN * wa) & (np.minimum(th, tw) >= 6)
    out = np.full(p, -1.0, np.float32)
    for shape in {(int(x), int(y)) for x, y in zip(th[ok], tw[ok], strict=True)}:
        sel = np.flatnonzero(ok & (th == shape[0]) & (tw == shape[1]))
        out[sel], _ = _crop_search(a[sel], resize_batch(_float(b[sel]), *shape), floor)
    return out
