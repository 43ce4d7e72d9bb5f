"""The second verification score: a fitted local filter under zoom hypotheses, for edits nobody named.

``curate.stages.dedupe.verify`` scores a pair after fitting ``B ~ gain * A + offset``: exact for re-encodes,
shifts, crops and brightness, but a blurred, sharpened, gamma-corrected or re-cropped-and-resized copy leaves
a residual as large as that of a different garment (issue 16: blur 0.08, 2 px crop resized back 0.00). This
score widens the model of "the same picture" in two directions, each small enough not to turn one picture into
another:

- *Photometric / filter*: ``B ~ k * A + c * A^2 + offset`` with ``k`` a 3x3 kernel fitted per pair (least
  squares, 11 unknowns over about 500 pixels). Blur, mild sharpening, resampling kernels, JPEG smoothing,
  sub-pixel shifts, contrast and gamma are all (nearly) in that model; a different print or silhouette is not.
- *Geometric*: zoom hypotheses ``ZOOMS`` (1, 1.1, 1.22 and their inverses): for a zoom ``s > 1`` B is taken
  as a window of A enlarged by ``s`` (a crop resized back), for ``s < 1`` A as a window of B (a border or a
  padding resized back). The shrunk image's centre is placed where its row and column profiles correlate
  best with the other image's, then scored as above.

The score of a placement is ``min(1 - max block RMS of the residual, 2 * sqrt(R^2) - 1)`` (the same block rule
and low-contrast guard as ``verify``); the best hypothesis wins. Its threshold is separate from ``verify``'s
(``DedupeConfig.robust_threshold``) and calibrated with families held out (``bench/bench_dedupe_generalize.py``).
"""

from __future__ import annotations

import numpy as np

from curate.stages.dedupe.verify import _block_edges, _float, parallel, resize_batch, resize_matrix

ZOOMS = (1.0, 1.1, 1.22, 1 / 1.1, 1 / 1.22)
RIDGE = 1e-3
CHUNK = 2048


def _offsets(p_img: np.ndarray, p_t: np.ndarray) -> np.ndarray:
    """Offset of profile ``p_t`` ``(P, l)`` inside ``p_img`` ``(P, n)`` with the best normalised correlation."""
    from numpy.lib.stride_tricks import sliding_window_view

    seg = p_t - p_t.mean(1, keepdims=True)
    win = sliding_window_view(p_img, p_t.shape[1], axis=1)  # (P, n - l + 1, l)
    num = np.einsum("pl,pdl->pd", seg, win)
    wc = win - win.mean(2, keepdims=True)
    return (num / np.sqrt(np.einsum("pdl,pdl->pd", wc, wc) + 1e-6)).argmax(1)


def _gather(img: np.ndarray, oy: np.ndarray, ox: np.ndarray, th: int, tw: int) -> np.ndarray:
    """Per-pair windows ``img[p, oy[p]:oy[p]+th, ox[p]:ox[p]+tw]`` as ``(P, th, tw)``."""
    rows = oy[:, None] + np.arange(th)
    cols = ox[:, None] + np.arange(tw)
    return img[np.arange(len(img))[:, None, None], rows[:, :, None], cols[:, None, :]]


def filter_fit_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Score aligned windows ``(P, h, w)`` (floats 0..1): fit ``b`` from a 3x3 filter of ``a``, a tone term, an offset.

    Returns:
        ``(P,)`` float32 ``min(1 - max block RMS residual, 2 sqrt(R^2) - 1)``; -1 where ``b`` is flat (a flat
        window matches anything and says nothing).
    """
    p, h, w = a.shape
    bi = b[:, 1:-1, 1:-1].reshape(p, -1)
    centre = a[:, 1:-1, 1:-1].reshape(p, -1)
    feats = [a[:, dy : dy + h - 2, dx : dx + w - 2].reshape(p, -1) for dy in range(3) for dx in range(3)]
    x = np.stack([*feats, centre * centre, np.ones_like(centre)], 2)  # (P, n, 11)
    gram = np.matmul(x.transpose(0, 2, 1), x)
    gram += np.float32(RIDGE * x.shape[1]) * np.eye(x.shape[2], dtype=np.float32)
    theta = np.linalg.solve(gram, np.matmul(x.transpose(0, 2, 1), bi[..., None]))
    res = bi - np.matmul(x, theta)[..., 0]
    sst = ((bi - bi.mean(1, keepdims=True)) ** 2).sum(1)
    r2 = 1 - (res * res).sum(1) / (sst + 1e-9)
    e2 = (res * res).reshape(p, h - 2, w - 2)
    ry, rx = _block_edges(h - 2), _block_edges(w - 2)
    sums = np.add.reduceat(np.add.reduceat(e2, ry, axis=1), rx, axis=2)
    area = np.outer(np.diff(np.append(ry, h - 2)), np.diff(np.append(rx, w - 2)))
    block = np.sqrt((sums / area).reshape(p, -1).max(1))
    score = np.minimum(1 - block, 2 * np.sqrt(np.clip(r2, 0, 1)) - 1)
    return np.where(sst < 1e-6 * bi.shape[1], -1.0, score).astype(np.float32)


def zoom_scores(a: np.ndarray, b: np.ndarray, zooms: tuple[float, ...] = ZOOMS) -> np.ndarray:
    """Best ``filter_fit_scores`` over the zoom hypotheses for same-shape batches ``(P, h, w)`` (uint8 or float)."""
    a, b = _float(a), _float(b)
    p, h, w = a.shape
    best = np.full(p, -1.0, np.float32)
    for s in zooms:
        if s == 1.0:  # B's centre inside A: shifts up to ~8 % of the side
            m = max(2, round(min(h, w) * 0.08))
            img, t = a, b[:, m : h - m, m : w - m]
        else:
            img, src = (a, b) if s > 1 else (b, a)
            f = 1 / s if s > 1 else s
            th, tw = max(6, round(h * f)), max(6, round(w * f))
            t = resize_matrix(th, h) @ src @ resize_matrix(tw, w).T
            m = max(1, round(min(th, tw) * 0.05))  # the rim carries resampling edges and the other image's extra
            t = t[:, m : th - m, m : tw - m]
        if min(t.shape[1:]) < 5:
            continue
        _, th, tw = t.shape
        oy = _offsets(img.mean(2), t.mean(2))
        ox = _offsets(img.mean(1), t.mean(1))
        win = _gather(img, oy, ox, th, tw)
        # the original (the larger view) is the filter's input, the copy its output: blur is a filter, unblur is not
        sc = filter_fit_scores(win, t) if s >= 1 else filter_fit_scores(t, win)
        best = np.maximum(best, sc)
    return best


def _detail(x: np.ndarray) -> np.ndarray:
    """High-frequency energy ``(P,)`` of ``(P, h, w)`` images relative to their variance (sharpness, scale-free)."""
    dx = np.diff(x, axis=2)
    dy = np.diff(x, axis=1)
    return ((dx * dx).mean((1, 2)) + (dy * dy).mean((1, 2))) / (x.var((1, 2)) + 1e-6)


def robust_scores(thumbs: np.ndarray, shapes: np.ndarray, pairs: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """``zoom_scores`` of image pairs on their common grid.

    Args:
        thumbs: ``(N, 32, 32)`` uint8 zero-padded thumbnails; shapes: ``(N, 2)`` their (h, w).
        pairs: ``(P, 2)`` indices; both members are resampled to the smaller height and the smaller width.

    Returns:
        ``(P,)`` float32 scores in [-1, 1].
    """
    out = np.full(len(pairs), -1.0, np.float32)
    if not len(pairs):
        return out
    key = ((shapes[pairs[:, 0], 0] * 64 + shapes[pairs[:, 0], 1]) * 64 + shapes[pairs[:, 1], 0]) * 64 + shapes[pairs[:, 1], 1]
    order = np.argsort(key, kind="stable")
    uniq, starts = np.unique(key[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    tasks = [
        (int(kk), order[s : min(s + CHUNK, e)]) for kk, s0, e in zip(uniq, starts, ends, strict=True) for s in range(s0, e, CHUNK)
    ]

    def run(task: tuple[int, np.ndarray]) -> None:
        kk, sel = task
        ha, wa, hb, wb = (kk >> 18) & 63, (kk >> 12) & 63, (kk >> 6) & 63, kk & 63
        h, w = min(ha, hb), min(wa, wb)
        if min(h, w) < 8:
            return
        a = resize_batch(_float(thumbs[pairs[sel, 0], :ha, :wa]), h, w)
        b = resize_batch(_float(thumbs[pairs[sel, 1], :hb, :wb]), h, w)
        # the sharper member is the filter's input (blur is a 3x3 filter, un-blur is not; un-sharpen nearly is)
        swap = _detail(b) > _detail(a)
        a[swap], b[swap] = b[swap], a[swap].copy()
        out[sel] = zoom_scores(a, b)

    parallel(run, tasks, threads)
    return out
