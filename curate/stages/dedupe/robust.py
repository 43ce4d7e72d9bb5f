"""The second verification score: a fitted local filter under zoom hypotheses, for edits nobody named.

``curate.stages.dedupe.verify`` scores a pair after fitting ``B ~ gain * A + offset``: exact for re-encodes,
shifts, crops and brightness, but a blurred, sharpened, gamma-corrected or re-cropped-and-resized copy leaves
a residual as large as that of a different garment (issue 16: blur 0.08, 2 px crop resized back 0.00). This
score widens the model of "the same picture" in two directions, each small enough not to turn one picture into
another:

- *Photometric / filter*: ``B ~ k * A + c * A^2 + offset`` with ``k`` a 3x3 kernel fitted per pair (least
  squares, 11 unknowns over about 500 pixels). Blur, mild sharpening, resampling kernels, JPEG smoothing,
  sub-pixel shifts, contrast and gamma are all (nearly) in that model; a different print or silhouette is not.
- *Geometric*: ``ZOOMS`` (15 zooms, about 3.8 % apart, within +-30 %) and ``ANGLES`` (+-1.5, 3, 4.5 degrees).
  For a zoom ``s > 1`` B is taken as a window of A enlarged by ``s`` (a crop resized back), for ``s < 1`` A as a
  window of B (a border or a padding resized back), for an angle A is rotated. Each hypothesis is placed at the
  offset where its template correlates best with the image (``ncc_map``, every offset, one depthwise
  convolution per hypothesis over the batch of pairs); the ``TOP`` two by that
  correlation, and the same-frame one, get the fit.

The score of a placement is ``min(1 - max block RMS of the residual, 2 * sqrt(R^2) - 1)`` (the same block rule
and low-contrast guard as ``verify``); the best hypothesis wins. Its threshold is separate from ``verify``'s
(``DedupeConfig.robust_threshold``) and calibrated with families held out (``bench/bench_dedupe_generalize.py``).

Cost: about 0.5 ms of CPU per pair. An image is in about ten candidate pairs at 70k Fashion-MNIST images, so
``robust_scores`` orders a shape group's pairs by their likely original (the filter's input) and ``zoom_scores``
computes what depends on the original alone (its six rotations, the integral images of it and of them, the
templates shrunk from it) once per distinct original in a chunk: the same scores (to float rounding), 1.7x
less CPU.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from curate.stages.dedupe.signatures import THUMB
from curate.stages.dedupe.verify import _block_edges, _float, parallel, resize_batch, resize_matrix

#: zoom hypotheses, about 3.8 % apart: crops resized back (>1) and borders or paddings resized back (<1), +-30 %
ZOOMS = tuple(float(z) for z in np.exp(np.linspace(np.log(1 / 1.3), np.log(1.3), 15)))
#: rotation hypotheses (degrees): a rotated copy is matched within about 0.75 degrees
ANGLES = (-4.5, -3.0, -1.5, 1.5, 3.0, 4.5)
#: hypotheses scored with the full fit per pair (the best ones by plain correlation)
TOP = 2
RIDGE = 1e-3
#: a placement is fitted only where its fit window holds at least this many pixels (about 9 per unknown of the
#: 11-unknown fit): with fewer, any two images fit. Random 8x8 images all scored 1.0 (200,000 of them became one
#: group); white and smooth noise at 8-24 px chose the rule, Fashion-MNIST downscaled to 12-20 px confirmed it
#: (distinct nearest neighbours over 0.94: 10.6% -> 0% at 12 px; 28 px images are unaffected, every window >= 324)
MIN_FIT_PIXELS = 100
CHUNK = 512  # pairs per task: 8 integral-image pairs of float64 per pair in flight (2048: ~220 MB per thread)


def integral(img: np.ndarray) -> np.ndarray:
    """Integral images of ``img`` ``(P, h, w)`` and of its square: ``(2, P, h + 1, w + 1)`` float64, zero first row/column.

    float64: a window's sum of squared deviations is a difference of two such sums, exact enough in float64.
    """
    p, h, w = img.shape
    s = np.zeros((2, p, h + 1, w + 1))
    s[0, :, 1:, 1:] = img
    s[1, :, 1:, 1:] = s[0, :, 1:, 1:] ** 2
    np.cumsum(s, axis=2, out=s)
    np.cumsum(s, axis=3, out=s)
    return s


def window_var(sums: np.ndarray, th: int, tw: int) -> np.ndarray:
    """Sum of squared deviations of every ``(th, tw)`` window, from ``integral`` sums: ``(P, h - th + 1, w - tw + 1)``."""
    ny, nx = sums.shape[2] - th, sums.shape[3] - tw
    box = sums[:, :, th:, tw:] - sums[:, :, :ny, tw:] - sums[:, :, th:, :nx] + sums[:, :, :ny, :nx]
    return np.maximum(box[1] - box[0] * box[0] / (th * tw), 0)


def ncc_map(img: np.ndarray, t: np.ndarray, var: np.ndarray | None = None) -> np.ndarray:
    """Normalised cross-correlation of template ``t`` ``(P, th, tw)`` at every offset inside ``img`` ``(P, h, w)``.

    The numerators are one depthwise convolution over the batch (torch, one kernel per pair: about 30 times
    faster than a product per offset, the same sums to float32 rounding); ``var`` is the windows' sums of
    squared deviations (``window_var`` of ``img``'s integral images; computed here when None).

    Returns:
        ``(P, h - th + 1, w - tw + 1)`` float32 Pearson correlations.
    """
    import torch

    p = len(img)
    _, th, tw = t.shape
    tc = t - t.mean((1, 2), keepdims=True)
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]
    k = torch.from_numpy(np.ascontiguousarray(tc, dtype=np.float32))[:, None]
    with torch.no_grad():
        num = torch.nn.functional.conv2d(x, k, groups=p)[0].numpy()
    var = window_var(integral(img), th, tw) if var is None else var
    den = np.sqrt(var * np.einsum("pij,pij->p", tc, tc)[:, None, None]) + 1e-6
    return (num / den).astype(np.float32)


def _gather(img: np.ndarray, oy: np.ndarray, ox: np.ndarray, th: int, tw: int) -> np.ndarray:
    """Per-pair windows ``img[p, oy[p]:oy[p]+th, ox[p]:ox[p]+tw]`` as ``(P, th, tw)``."""
    from numpy.lib.stride_tricks import sliding_window_view

    return sliding_window_view(img, (th, tw), axis=(1, 2))[np.arange(len(img)), oy, ox]


@lru_cache(maxsize=64)
def _rotation_matrix(h: int, w: int, deg: float) -> Any:
    """Sparse ``(h*w, h*w)`` bilinear rotation by ``deg`` about the centre, edge pixels replicated outside."""
    from scipy.sparse import csr_matrix

    r = np.deg2rad(deg)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    sy = np.clip(cy + np.cos(r) * (yy - cy) - np.sin(r) * (xx - cx), 0, h - 1).ravel()
    sx = np.clip(cx + np.sin(r) * (yy - cy) + np.cos(r) * (xx - cx), 0, w - 1).ravel()
    y0, x0 = np.minimum(np.floor(sy).astype(int), h - 2), np.minimum(np.floor(sx).astype(int), w - 2)
    fy, fx = sy - y0, sx - x0
    rows = np.repeat(np.arange(h * w), 4)
    cols = np.stack([y0 * w + x0, y0 * w + x0 + 1, (y0 + 1) * w + x0, (y0 + 1) * w + x0 + 1], 1).ravel()
    vals = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], 1).ravel()
    return csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(h * w, h * w))


def _rotate(x: np.ndarray, deg: float) -> np.ndarray:
    """``(P, h, w)`` images rotated by ``deg`` about their centres (bilinear, edges replicated)."""
    p, h, w = x.shape
    return np.asarray((_rotation_matrix(h, w, deg) @ x.reshape(p, h * w).T).T, np.float32).reshape(p, h, w)


def _hypotheses(au: np.ndarray, inv: np.ndarray, b: np.ndarray) -> list[tuple[str | float, np.ndarray, bool]]:
    """``(image, template, template_is_copy)`` for every zoom and angle: the template to look for, per pair, and
    the image to look in: ``"a"``, ``"b"`` or an angle (``a`` rotated by it).

    ``au`` holds the distinct ``a`` images (``a = au[inv]``): what depends on ``a`` alone is computed once each.
    """
    _, h, w = b.shape
    m = max(2, round(min(h, w) * 0.08))
    centre_b = b[:, m : h - m, m : w - m]
    out: list[tuple[str | float, np.ndarray, bool]] = [("a", centre_b, True)]
    for s in ZOOMS:
        if abs(s - 1) < 0.02:
            continue
        f = 1 / s if s > 1 else s
        th, tw = max(6, round(h * f)), max(6, round(w * f))
        k = max(1, round(min(th, tw) * 0.05))  # the rim carries resampling edges and the other image's extra
        if (th - 2 * k - 2) * (tw - 2 * k - 2) < MIN_FIT_PIXELS:
            continue
        if s > 1:  # a window of a enlarged: b's copy of it, shrunk, is looked for in a
            t = resize_matrix(th, h) @ b @ resize_matrix(tw, w).T
            out.append(("a", t[:, k : th - k, k : tw - k], True))
        else:  # b is a shrunk into a border: a, shrunk, is looked for in b
            t = (resize_matrix(th, h) @ au @ resize_matrix(tw, w).T)[:, k : th - k, k : tw - k]
            out.append(("b", t[inv], False))
    out += [(deg, centre_b, True) for deg in ANGLES]
    return out


def filter_fit_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Score aligned windows ``(P, h, w)`` (floats 0..1): fit ``b`` from a 3x3 filter of ``a``, a tone term, an offset.

    Returns:
        ``(P,)`` float32 ``min(1 - max block RMS residual, 2 sqrt(R^2) - 1)``; -1 where ``b`` is flat (a flat
        window matches anything and says nothing).
    """
    p, h, w = a.shape
    n = (h - 2) * (w - 2)
    bi = b[:, 1:-1, 1:-1].reshape(p, n)
    # features as rows (P, 11, n): the products below run along contiguous pixels
    x = np.empty((p, 11, h - 2, w - 2), np.float32)
    for dy in range(3):
        for dx in range(3):
            x[:, 3 * dy + dx] = a[:, dy : dy + h - 2, dx : dx + w - 2]
    np.multiply(x[:, 4], x[:, 4], out=x[:, 9])  # the tone term: the centre pixel squared
    x[:, 10] = 1.0
    x = x.reshape(p, 11, n)
    gram = np.matmul(x, x.transpose(0, 2, 1))
    gram += np.float32(RIDGE * n) * np.eye(11, dtype=np.float32)
    theta = np.linalg.solve(gram, np.matmul(x, bi[..., None]))
    res = bi - np.matmul(theta.transpose(0, 2, 1), x)[:, 0]
    sst = ((bi - bi.mean(1, keepdims=True)) ** 2).sum(1)
    e2 = res * res
    r2 = 1 - e2.sum(1) / (sst + 1e-9)
    e2 = e2.reshape(p, h - 2, w - 2)
    ry, rx = _block_edges(h - 2), _block_edges(w - 2)
    sums = np.add.reduceat(np.add.reduceat(e2, ry, axis=1), rx, axis=2)
    area = np.outer(np.diff(np.append(ry, h - 2)), np.diff(np.append(rx, w - 2)))
    block = np.sqrt((sums / area).reshape(p, -1).max(1))
    score = np.minimum(1 - block, 2 * np.sqrt(np.clip(r2, 0, 1)) - 1)
    return np.where(sst < 1e-6 * n, -1.0, score).astype(np.float32)


def zoom_scores(a: np.ndarray, b: np.ndarray, a_ids: np.ndarray | None = None) -> np.ndarray:
    """Best ``filter_fit_scores`` over the zoom and rotation hypotheses for same-shape batches ``(P, h, w)``.

    Every hypothesis is placed at its best offset by normalised cross-correlation (``ncc_map``, all offsets);
    the ``TOP`` hypotheses of each pair by that correlation, and the same-frame one, get the full fit (at the
    best offset +-1 px, by correlation again), and the best fit is the score. ``a`` is the original (the
    filter's input), ``b`` the copy. ``a_ids`` ``(P,)``: which image each ``a`` is (pairs that share one share
    its rotations, integral images and shrunk templates, computed once: the same scores, less work).
    """
    a, b = _float(a), _float(b)
    p = len(a)
    _, first, inv = np.unique(np.arange(p) if a_ids is None else a_ids, return_index=True, return_inverse=True)
    au = a[first]
    images: dict[str | float, np.ndarray] = {"a": a, "b": b}
    sums = {"a": integral(au), "b": integral(b)}  # per image of the hypotheses: its integral images
    for deg in ANGLES:
        rot = _rotate(au, deg)
        images[deg], sums[deg] = rot[inv], integral(rot)
    hyps = _hypotheses(au, inv, b)
    ncc = np.full((len(hyps), p), -2.0, np.float32)
    where = np.zeros((len(hyps), p, 2), np.int64)
    for i, (key, t, _) in enumerate(hyps):
        var = window_var(sums[key], t.shape[1], t.shape[2])
        c = ncc_map(images[key], t, var if key == "b" else var[inv])
        flat = c.reshape(p, -1).argmax(1)
        ncc[i] = c.reshape(p, -1)[np.arange(p), flat]
        where[i] = np.stack(np.unravel_index(flat, c.shape[1:]), 1)
    top = np.concatenate([np.argsort(-ncc, axis=0)[:TOP], np.zeros((1, p), np.int64)])
    best = np.full(p, -1.0, np.float32)
    for i, (key, t, t_is_copy) in enumerate(hyps):
        sel = np.flatnonzero((top == i).any(0))
        if not sel.size:
            continue
        _, th, tw = t.shape
        win = _gather(images[key][sel], where[i, sel, 0], where[i, sel, 1], th, tw)
        sc = filter_fit_scores(win, t[sel]) if t_is_copy else filter_fit_scores(t[sel], win)
        best[sel] = np.maximum(best[sel], sc)
    return best


def _detail(x: np.ndarray) -> np.ndarray:
    """High-frequency energy ``(P,)`` of ``(P, h, w)`` images relative to their variance (sharpness, scale-free)."""
    dx = np.diff(x, axis=2)
    dy = np.diff(x, axis=1)
    return ((dx * dx).mean((1, 2)) + (dy * dy).mean((1, 2))) / (x.var((1, 2)) + 1e-6)


def _likely_original(thumbs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``(P,)`` the member of each pair with more detail on its padded thumbnail: most often the one that
    ``robust_scores`` takes as the filter's input (only the order of the work depends on it, not a score)."""
    used, inv = np.unique(pairs, return_inverse=True)
    det = np.empty(len(used), np.float32)
    h, w = thumbs.shape[1:]
    for s in range(0, len(used), 8192):
        padded = np.zeros((len(used[s : s + 8192]), THUMB, THUMB), np.float32)  # as if padded to 32 (the same order)
        padded[:, :h, :w] = _float(thumbs[used[s : s + 8192]])
        det[s : s + 8192] = _detail(padded)
    d = det[inv.reshape(pairs.shape)]
    return np.where(d[:, 1] > d[:, 0], pairs[:, 1], pairs[:, 0])


def robust_scores(thumbs: np.ndarray, shapes: np.ndarray, pairs: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """``zoom_scores`` of image pairs on their common grid.

    Args:
        thumbs: ``(N, H, W)`` uint8 zero-padded thumbnails (H, W <= 32); shapes: ``(N, 2)`` their (h, w).
        pairs: ``(P, 2)`` indices; both members are resampled to the smaller height and the smaller width.

    Returns:
        ``(P,)`` float32 scores in [-1, 1].
    """
    out = np.full(len(pairs), -1.0, np.float32)
    if not len(pairs):
        return out
    key = ((shapes[pairs[:, 0], 0] * 64 + shapes[pairs[:, 0], 1]) * 64 + shapes[pairs[:, 1], 0]) * 64 + shapes[pairs[:, 1], 1]
    order = np.lexsort((_likely_original(thumbs, pairs), key))  # pairs that share their original, together
    uniq, starts = np.unique(key[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    tasks = [
        (int(kk), order[s : min(s + CHUNK, e)]) for kk, s0, e in zip(uniq, starts, ends, strict=True) for s in range(s0, e, CHUNK)
    ]

    def run(task: tuple[int, np.ndarray]) -> None:
        kk, sel = task
        ha, wa, hb, wb = (kk >> 18) & 63, (kk >> 12) & 63, (kk >> 6) & 63, kk & 63
        h, w = min(ha, hb), min(wa, wb)
        m = max(2, round(min(h, w) * 0.08))  # the same-frame window of ``_hypotheses``
        if (h - 2 * m - 2) * (w - 2 * m - 2) < MIN_FIT_PIXELS:
            return  # too few pixels to tell a filtered copy from another image: the aligned score decides
        a = resize_batch(_float(thumbs[pairs[sel, 0], :ha, :wa]), h, w)
        b = resize_batch(_float(thumbs[pairs[sel, 1], :hb, :wb]), h, w)
        # the sharper member is the filter's input (blur is a 3x3 filter, un-blur is not; un-sharpen nearly is)
        swap = _detail(b) > _detail(a)
        a[swap], b[swap] = b[swap], a[swap].copy()
        out[sel] = zoom_scores(a, b, np.where(swap, pairs[sel, 1], pairs[sel, 0]))

    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # the chunks run on ``threads`` threads; each convolution on one
    try:
        parallel(run, tasks, threads)
    finally:
        torch.set_num_threads(prev)
    return out
