"""Can a cheap first score spare the fitted-filter score? Counts at 70k and two candidate first scores (issue 16).

Part 1 (``--count N``): the stage's search over the first N Fashion-MNIST train + test images (signatures,
candidates and closeness as ``near_pairs`` makes them): how many candidate pairs reach the fitted-filter score
(``robust_scores``, closeness >= ``pairs.ROBUST_GATE`` and aligned score < the default threshold), how many it
accepts, and how its scores spread. A first score with a reject bound can at best drop the pairs whose full
score is below that bound, so the spread caps what any cascade saves.

Part 2 (``--first-scores``): the bench sets of ``bench_dedupe_generalize.py`` (Fashion-MNIST test + planted copies,
photos + planted copies). Every candidate pair at or above the closeness gate gets the full fitted-filter score
and two cheap first scores:

- *half*: the fitted-filter score on both thumbnails halved (about a third of the CPU);
- *blurred*: ``verify``'s aligned score (gain + offset fit, block RMS) after a Gaussian blur (sigma 1 px) of
  both, under the same frame, 6 zooms (1/1.25 .. 1.25) and +-3 degrees (the cheap model of blur, zoom, rotation).

Each bound is calibrated as the closeness gate is: the lowest first score among the planted pairs of the
calibration families (all but ``HELD_OUT``) whose full score reaches the grid's lowest threshold (0.86), less
``GATE_MARGIN`` (0.05, fixed before any run). Reported: the share of the non-planted gated pairs it rejects
(the work saved) and the planted pairs of every family, held-out ones included, it would lose.

Run::

    nice -n 15 .venv/bin/python bench/bench_dedupe_cascade.py --count 70000 --first-scores
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from bench_dedupe_generalize import GATE_MARGIN, HELD_OUT, T_ROBUST, curate_scores, load_sets  # noqa: E402

BLUR_SIGMA = 1.0
ZOOMS = (1 / 1.25, 1 / 1.15, 1 / 1.07, 1.07, 1.15, 1.25)
ANGLES = (-3.0, 3.0)


def count(n: int) -> None:
    """Part 1: candidates, the pairs that reach the fitted-filter score, what it accepts, its score spread."""
    import pyarrow as pa
    from bench_dedupe import _png, load_fashion

    from curate.stages.dedupe import DEFAULT_ROBUST_THRESHOLD, DEFAULT_THRESHOLD
    from curate.stages.dedupe.index import ViewSet, candidate_pairs
    from curate.stages.dedupe.pairs import ROBUST_GATE
    from curate.stages.dedupe.robust import robust_scores
    from curate.stages.dedupe.search import _one_blas_thread
    from curate.stages.dedupe.signatures import compute_signatures, thumbs_array
    from curate.stages.dedupe.verify import verify_pairs

    x = load_fashion()[0][:n]
    sigs = compute_signatures(pa.table({"sample_id": [str(i) for i in range(len(x))], "data": [_png(a) for a in x]}))
    thumbs, shapes = thumbs_array(sigs)
    sizes = np.stack([sigs.column("height").to_numpy(), sigs.column("width").to_numpy()], 1).astype(np.int64)
    with _one_blas_thread():
        cand, close = candidate_pairs(ViewSet(thumbs, shapes, None, np.empty(0, np.int64)), np.ones(n, bool), threads=2)
        aligned = verify_pairs(thumbs, shapes, sizes, cand, floor=DEFAULT_THRESHOLD, threads=2)
        todo = np.flatnonzero((close >= ROBUST_GATE) & (aligned < DEFAULT_THRESHOLD))
        c0 = time.process_time()
        full = robust_scores(thumbs, shapes, cand[todo], threads=2)
        cpu = time.process_time() - c0
    per_image = np.bincount(cand[todo].ravel(), minlength=n)
    print(f"\n{n:,} Fashion-MNIST images: {len(cand):,} candidate pairs ({len(cand) / n:.2f} per image), "
          f"{int((aligned >= DEFAULT_THRESHOLD).sum())} accepted by the aligned score, "
          f"{len(todo):,} reach the fitted-filter score ({len(todo) / n:.2f} per image; an image is in "
          f"{np.median(per_image[per_image > 0]):.0f} of them at the median, {per_image.max()} at most), "
          f"{int((full >= DEFAULT_ROBUST_THRESHOLD).sum())} accepted by it; its CPU {cpu:.1f} s "
          f"({cpu / max(1, len(todo)) * 1e3:.3f} ms per pair)")  # fmt: skip
    print("  full score percentiles 10/50/90/99/99.9:", np.percentile(full, [10, 50, 90, 99, 99.9]).round(3).tolist())
    for t in (0.80, 0.81, 0.86, 0.90):
        print(f"  full score >= {t}: {int((full >= t).sum()):,} ({(full >= t).mean():.1%})")


def _blur(x: np.ndarray) -> np.ndarray:
    """Gaussian blur (``BLUR_SIGMA``) of ``(P, h, w)`` float images, edges renormalised."""
    p, h, w = x.shape

    def mat(m: int) -> np.ndarray:
        k = np.exp(-0.5 * ((np.arange(m)[:, None] - np.arange(m)[None, :]) / BLUR_SIGMA) ** 2)
        return (k / k.sum(1, keepdims=True)).astype(np.float32)

    y = x.reshape(p * h, w) @ mat(w).T
    y = np.ascontiguousarray(y.reshape(p, h, w).transpose(0, 2, 1)).reshape(p * w, h) @ mat(h).T
    return np.ascontiguousarray(y.reshape(p, w, h).transpose(0, 2, 1))


def _zoom(x: np.ndarray, s: float) -> np.ndarray:
    """The centre ``1/s`` of each image resized back to its shape."""
    from curate.stages.dedupe.verify import resize_batch

    p, h, w = x.shape
    th, tw = round(h / s), round(w / s)
    oy, ox = (h - th) // 2, (w - tw) // 2
    return resize_batch(np.ascontiguousarray(x[:, oy : oy + th, ox : ox + tw]), h, w)


def blurred_scores(thumbs: np.ndarray, shapes: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The *blurred* first score of image pairs (module docstring), on each pair's common grid."""
    from curate.stages.dedupe.robust import _detail, _rotate
    from curate.stages.dedupe.verify import _float, _same_frame, resize_batch

    out = np.ones(len(pairs), np.float32)  # grids under 8 px: not rejected
    key = [tuple(x) for x in np.concatenate([shapes[pairs[:, 0]], shapes[pairs[:, 1]]], 1).tolist()]
    groups: dict[tuple[int, ...], list[int]] = {}
    for idx, k in enumerate(key):
        groups.setdefault(k, []).append(idx)
    for (ha, wa, hb, wb), members in groups.items():
        h, w = min(ha, hb), min(wa, wb)
        if min(h, w) < 8:
            continue
        for s in range(0, len(members), 512):
            sel = np.array(members[s : s + 512])
            a = resize_batch(_float(thumbs[pairs[sel, 0], :ha, :wa]), h, w)
            b = resize_batch(_float(thumbs[pairs[sel, 1], :hb, :wb]), h, w)
            swap = _detail(b) > _detail(a)
            a[swap], b[swap] = b[swap], a[swap].copy()
            a, b = _blur(a), _blur(b)
            best = _same_frame(a, b, -1.0)[0]
            for z in ZOOMS:
                best = np.maximum(best, _same_frame(_zoom(a, z), b, -1.0)[0] if z > 1 else _same_frame(a, _zoom(b, 1 / z), -1.0)[0])
            for deg in ANGLES:
                best = np.maximum(best, _same_frame(_rotate(a, deg), b, -1.0)[0])
            out[sel] = best
    return out


def half_scores(thumbs: np.ndarray, shapes: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The *half* first score: ``robust_scores`` on every thumbnail halved (sides under 20 px: 1.0, not rejected)."""
    from curate.stages.dedupe.robust import robust_scores
    from curate.stages.dedupe.verify import _float, resize_batch

    used = np.unique(pairs)
    half = np.zeros_like(thumbs)
    hs = shapes // 2
    for h, w in np.unique(shapes[used], axis=0).tolist():
        sel = used[(shapes[used, 0] == h) & (shapes[used, 1] == w)]
        half[sel, : h // 2, : w // 2] = np.clip(np.rint(255 * resize_batch(_float(thumbs[sel, :h, :w]), h // 2, w // 2)), 0, 255)
    out = robust_scores(half, hs, pairs)
    small = np.minimum(hs[pairs[:, 0]], hs[pairs[:, 1]]).min(1) < 10
    out[small] = 1.0
    return out


def _best_of(fn: Any, sc: dict[str, Any], idx: np.ndarray) -> tuple[np.ndarray, float]:
    """``fn`` on luma, and the better of luma and value channel for colour pairs; and its CPU ms per pair."""
    thumbs, shapes, values, colour = sc["images"]
    c0 = time.process_time()
    s = fn(thumbs, shapes, sc["local"][idx])
    c = np.flatnonzero(colour[idx])
    if c.size:
        s[c] = np.maximum(s[c], fn(values, shapes, sc["local"][idx[c]]))
    return s, (time.process_time() - c0) / max(1, len(idx)) * 1e3


def first_scores(args: argparse.Namespace) -> None:
    """Part 2: the two first scores on the bench sets, their calibrated bounds, what they would save and lose."""
    from bench_dedupe_generalize import planted_mask, robust_where

    from curate.stages.dedupe.pairs import ROBUST_GATE
    from curate.stages.dedupe.search import _one_blas_thread

    data = load_sets(args)
    rows = []
    for k, (folder, t) in data.items():
        sc = curate_scores(folder, t["names"], args.workers)
        gated = np.flatnonzero(sc["close"] >= ROBUST_GATE)
        robust_where(sc, sc["close"] >= ROBUST_GATE, args.workers)
        n = t["n"]
        fam_of = {min(c, s) * n + max(c, s): f for c, s, f in t["copy_idx"]}
        code = sc["cand"][gated, 0].astype(np.int64) * n + sc["cand"][gated, 1]
        fams = np.array([fam_of.get(int(x), "") for x in code])
        with _one_blas_thread():
            proxies = {"half": _best_of(half_scores, sc, gated), "blurred": _best_of(blurred_scores, sc, gated)}
        rows.append((k, t, sc["robust"][gated], fams, proxies, planted_mask(sc, t)[gated]))
    for name in ("half", "blurred"):
        ok = [(p[name][0], fams, full) for _, t, full, fams, p, _ in rows]
        calib = np.concatenate([s[(fams != "") & ~np.isin(fams, HELD_OUT) & (full >= min(T_ROBUST))] for s, fams, full in ok])
        bound = float(calib.min()) - GATE_MARGIN
        print(f"\nfirst score {name!r}: bound {bound:.3f} (calibrated without {', '.join(HELD_OUT)})")
        for k, _, full, fams, p, planted in rows:
            s, ms = p[name]
            lost = {f: int(((fams == f) & (full >= min(T_ROBUST)) & (s < bound)).sum()) for f in sorted(set(fams) - {""})}
            print(f"  {k}: {ms:.3f} ms of CPU per pair; rejects {(s[~planted] < bound).mean():.1%} of the "
                  f"{int((~planted).sum()):,} non-planted gated pairs; planted pairs (full >= {min(T_ROBUST)}) lost: "
                  f"{ {f: v for f, v in lost.items() if v} or 'none'}")  # fmt: skip
            for f in sorted(set(fams) - {""}):
                m = (fams == f) & (full >= min(T_ROBUST))
                if m.any():
                    print(f"    {f:11s} lowest first score of its accepted pairs {s[m].min():.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=0, help="part 1 on the first N Fashion-MNIST images (0: skip)")
    ap.add_argument("--first-scores", action="store_true", help="part 2 on the bench sets")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--per-family", type=int, default=60)
    ap.add_argument("--per-family-photos", type=int, default=25)
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args()
    args.sets = "fashion,photos"
    print(machine(), "| load average", os.getloadavg())
    if args.count:
        count(args.count)
    if args.first_scores:
        first_scores(args)
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
