"""Extra descriptor views (zoomed, value channel, mirrored) and the pair decision that combines both scores.

Used by ``curate.stages.dedupe.search.near_pairs``:

- *Views* (searched by ``curate.stages.dedupe.index.ViewSet``): besides an image's own descriptor views, its
  centre at ``ZOOM_VIEW`` (85 % of each side, resized back), so a copy with a border, or a crop resized back,
  keeps its source among its nearest neighbours (their plain descriptors differ by a zoom of 10-20 %, which
  moves every frequency); and a colour image's value-channel thumbnail, so a hue-rotated or re-saturated copy does.
- *Decision* (``pair_scores``): cheapest first, each score only where the previous ones fell short: the aligned
  score on luma, then on the value channel (both colour), then the fitted-filter score on luma, then on value.
  The fitted-filter score costs about 0.5 ms of CPU per pair, so it runs only on pairs whose descriptor
  closeness (the best whitened cosine of the pair's hits, ``index.candidate_pairs``) is at least
  ``ROBUST_GATE``: no planted copy that this score accepts lies below it (calibrated with families held out,
  ``bench/bench_dedupe_generalize.py``). No cheaper first score stands before it: Fashion-MNIST's look-alikes
  score 0.52-0.92 on it (median 0.75), and the two first scores measured (the same fit at half resolution, an
  aligned score after a blur) rejected 0 % and 36 % of them at bounds that keep the planted copies, for 40-110 %
  of its cost (``bench/bench_dedupe_cascade.py``, BENCHMARKS.md).
"""

from __future__ import annotations

import numpy as np

from curate.stages.dedupe.signatures import THUMB

ZOOM_VIEW = 0.85
#: descriptor closeness below which the fitted-filter score is not computed: the lowest planted pair that it could
#: accept, over the calibration families (held out: webp, sharpen, rotate, pair), was at 0.610, less a margin
#: of 0.05 fixed beforehand (``bench/bench_dedupe_generalize.py``, BENCHMARKS.md)
ROBUST_GATE = 0.56


def mirrored(thumbs: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Each thumbnail flipped left-right within its own (h, w) (the zero padding stays right and bottom)."""
    out = np.zeros_like(thumbs)
    for h, w in np.unique(shapes, axis=0).tolist():
        sel = np.flatnonzero((shapes[:, 0] == h) & (shapes[:, 1] == w))
        out[sel, :h, :w] = thumbs[sel, :h, :w][:, :, ::-1]
    return out


def zoom_views(thumbs: np.ndarray, shapes: np.ndarray, factor: float = ZOOM_VIEW) -> np.ndarray:
    """The central ``factor`` of every thumbnail (each side), resized to ``THUMB`` x ``THUMB`` (uint8)."""
    from curate.stages.dedupe.verify import resize_batch

    out = np.zeros((len(thumbs), THUMB, THUMB), np.uint8)
    for h, w in np.unique(shapes, axis=0).tolist():
        sel = np.flatnonzero((shapes[:, 0] == h) & (shapes[:, 1] == w))
        my, mx = round(h * (1 - factor) / 2), round(w * (1 - factor) / 2)
        for s in range(0, len(sel), 8192):
            part = sel[s : s + 8192]
            x = thumbs[part, my : h - my, mx : w - mx].astype(np.float32)
            out[part] = np.clip(np.rint(resize_batch(x, THUMB, THUMB)), 0, 255).astype(np.uint8)
    return out


def pair_scores(
    thumbs: np.ndarray,
    shapes: np.ndarray,
    sizes: np.ndarray,
    pairs: np.ndarray,
    threshold: float,
    robust_threshold: float,
    *,
    values: np.ndarray | None = None,
    has_value: np.ndarray | None = None,
    closeness: np.ndarray | None = None,
    gate: float | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of image pairs and the decision.

    Args:
        thumbs, shapes, sizes: as for ``verify.verify_pairs``; values, has_value: ``signatures.value_thumbs``.
        threshold: the aligned score (``verify``) that makes a duplicate; robust_threshold: the fitted-filter
            score (``robust``) that does (1 = not used).
        closeness: ``(P,)`` descriptor closeness of each pair (``index.candidate_pairs``); with it, the
            fitted-filter score runs only where closeness >= ``gate`` (default ``ROBUST_GATE``). None = everywhere.

    Returns:
        ``(score (P,) float32, duplicate (P,) bool, pairs given the fitted-filter score)``: ``score`` is the best
        score computed for the pair (the later ones are computed only where the earlier ones fell short of their
        threshold).
    """
    from curate.stages.dedupe.robust import robust_scores
    from curate.stages.dedupe.verify import verify_pairs

    score = verify_pairs(thumbs, shapes, sizes, pairs, floor=threshold, threads=threads)
    dup = score >= threshold
    colour = np.zeros(len(pairs), bool) if has_value is None or values is None else has_value[pairs].all(1)
    steps = [(values, "aligned", colour)]
    if robust_threshold < 1.0:
        close = np.ones(len(pairs), bool) if closeness is None else closeness >= (ROBUST_GATE if gate is None else gate)
        steps += [(thumbs, "robust", close), (values, "robust", colour & close)]
    n_robust = 0
    for images, kind, applies in steps:
        rest = np.flatnonzero(~dup & applies)
        if not rest.size or images is None:
            continue
        if kind == "aligned":
            s = verify_pairs(images, shapes, sizes, pairs[rest], floor=threshold, threads=threads)
            dup[rest] = s >= threshold
        else:
            n_robust += rest.size
            s = robust_scores(images, shapes, pairs[rest], threads=threads)
            dup[rest] = s >= robust_threshold
        score[rest] = np.maximum(score[rest], s)
    return score, dup, n_robust
