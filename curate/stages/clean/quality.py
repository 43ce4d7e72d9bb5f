"""Image quality checks without a model, for ``curate clean --find-low-quality``.

Two steps, split the way ARCHITECTURE.md section 5 splits every stage:

- ``quality_batch`` (per-sample, needs pixels, runs on any executor): decode each image once, as the trainer sees
  it (EXIF applied, alpha dropped), and keep a handful of raw measurements (``MEASUREMENT_SCHEMA``).
- ``flag_quality`` (global, small columns only): one score and one flag per check. ``grayscale`` is the only
  dataset-level decision: a gray image is odd only in a mostly color set.

Every ``<check>_score`` points the same way, **lower = more of the issue**, and ``is_<check>`` is true when the
score is below the check's threshold (in the score's own units; ``odd_aspect`` and ``grayscale`` see the table).

| check | score (lower = worse) | range | flagged when (default) |
| --- | --- | --- | --- |
| dark | 99th percentile of luma: even the brightest 1% is dark | 0..1 | score < ``dark`` (0.15) |
| bright | 1 - 1st percentile of luma: even the darkest 1% is bright | 0..1 | score < ``bright`` (0.15) |
| blurry | mean spatial frequency of the edges (below); null for a flat image | 0..1 | score < ``blurry`` (0.25) |
| low_information | min(entropy of the 256-bin gray histogram / 8 bits, 2 x luma std) | 0..1 | score < ``low_information`` (0.035) |
| tiny | shorter side in pixels | >= 1 | score < ``tiny`` (16) |
| odd_aspect | shorter side / longer side | 0..1 | longer / shorter > ``odd_aspect`` (4.0) |
| grayscale | color spread: 99th percentile of max-min over the channels | 0..1 | gray and >= ``grayscale_majority`` (0.9) color |

An image is gray when it decodes as mode L or its color spread is at most ``GRAY_SPREAD``/255 (JPEG chroma noise);
the majority is the share of color images among the rows given to ``flag_quality``.

Why percentiles rather than the mean luma for dark/bright: black-background sets (MNIST, Fashion-MNIST, product
shots) have mean luma 0.02-0.3 and would all be "dark"; an image is too dark when its brightest 1% is dark.
Why the spread term in low_information: a flat image with sensor or JPEG noise has bits of entropy but no spread,
while a binary digit (90% black) has under 0.5 bit of entropy and plenty of spread.

Blur: ``sqrt(mean(lap^2) / (8 * mean(|grad|^2)))`` of the gray image (4-neighbour Laplacian, forward differences).
Per Fourier mode the Laplacian's eigenvalue ``lam`` (0..8) equals the gradient's energy factor, so this is
``sqrt(sum lam^2 |c|^2 / (8 sum lam |c|^2))``: the energy-weighted edge frequency relative to the pixel grid. It is
contrast-free (a dim sharp photo is not blurry) and flat regions add nothing to it (a sharp subject under a smooth
sky is not blurry, unlike the plain variance of the Laplacian, which also depends on contrast). Resolution: pixels
are measured on the image's own grid, downscaled (antialiased) to at most ``WORK_SIDE`` px a side and never
upscaled. Downscaling makes blur relative to the picture (a 2,000 px photo with a 4 px blur reads like a 500 px
one with a 1 px blur), while upscaling a small image would only add interpolation blur and flag every 28 px image.

Calibration (``quality_batch`` on the ../shared/datasets idx images re-encoded as PNG, one process on this 2-core
machine, ~7,000 28x28 images/s; a 4000x3000 JPEG takes ~20 ms thanks to the draft decode). With the defaults, no
check flags any of the first 5,000 Fashion-MNIST train images (0.00% each), nor any of all 60,000, nor of the
10,000 Fashion-MNIST and 10,000 MNIST test images. Closest calls on Fashion-MNIST train: dark score min 0.20
(threshold 0.15), blurry min 0.42 (0.25), low_information min 0.085 (0.035; MNIST test min 0.051), bright 1.0.
Three photos (sklearn's china and flower, matplotlib's grace_hopper; 427-640 px) and 2-10x downscales of them
score blurry 0.44-0.60; Gaussian blur at the photo's own size gives 0.37-0.46 (sigma 1 px), 0.28-0.33 (sigma 2 px,
not flagged) and 0.17-0.19 (sigma 4 px, flagged); luma scaled into the bottom 15% is dark, into the top 15% bright.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError, UsageError
from curate.stage import no_progress
from curate.tables import per_row

if TYPE_CHECKING:
    from curate.stage import Progress
    from curate.workspace import Workspace

#: Longest side (px) at which pixels are measured; larger images are downscaled (antialiased), smaller ones kept.
WORK_SIDE = 256
#: A color image whose 99th-percentile channel spread is at most this (of 255) counts as gray: JPEG chroma noise.
GRAY_SPREAD = 6
#: ``low_quality_score`` of a grayscale flag: it has no distance to a threshold, and is milder than a broken image.
GRAY_RATIO = 0.5
QUALITY_CHECKS: tuple[str, ...] = ("dark", "bright", "blurry", "low_information", "tiny", "odd_aspect", "grayscale")

#: Raw per-sample measurements (``quality_batch``): what each column holds is in its docstring.
MEASUREMENT_SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("width", pa.int32()), ("height", pa.int32())]
    + [(name, pa.float32()) for name in ("brightness", "luma_p01", "luma_p99", "contrast", "entropy", "sharpness", "color_spread")]
    + [("is_gray", pa.bool_()), ("error", pa.string())]
)


@dataclass(frozen=True)
class QualityThresholds:
    """Where each check flags; each field is a ``curate clean`` option (module docstring: scores and calibration).

    Attributes:
        dark: flag when the 99th-percentile luma (0..1) is below this.
        bright: flag when 1 - the 1st-percentile luma (0..1) is below this.
        blurry: flag when the edge frequency (0..1) is below this.
        low_information: flag when min(gray entropy / 8 bits, 2 x luma std) (0..1) is below this.
        tiny: flag when the shorter side (px) is below this.
        odd_aspect: flag when longer side / shorter side is above this.
        grayscale_majority: flag gray images only when at least this fraction of the measured images is color.
    """

    dark: float = 0.15
    bright: float = 0.15
    blurry: float = 0.25
    low_information: float = 0.035
    tiny: int = 16
    odd_aspect: float = 4.0
    grayscale_majority: float = 0.9

    def check(self) -> None:
        """Raises ``UsageError`` naming the threshold that is outside its range."""
        for name in ("dark", "bright", "blurry", "low_information", "grayscale_majority"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"quality threshold {name} must be in [0, 1], not {value}")
        if self.tiny < 0:
            raise UsageError(f"quality threshold tiny must be >= 0 px, not {self.tiny}")
        if self.odd_aspect < 1.0:
            raise UsageError(f"quality threshold odd_aspect must be >= 1, not {self.odd_aspect}")


def _open_working(data: bytes) -> tuple[Any, int, int]:
    """Decode ``data`` as the trainer sees it (EXIF applied, alpha dropped) at <= ``WORK_SIDE`` px.

    Returns:
        ``(PIL image in mode L or RGB, original width, original height)`` (sizes after the EXIF orientation).
    """
    from PIL import Image, ImageOps

    im = Image.open(io.BytesIO(data))
    width, height = im.size
    if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # these orientations swap the sides
        width, height = height, width
    if im.format == "JPEG":  # DCT-domain downscale (1/2..1/8): a 12 MP photo decodes in a fraction of the time
        im.draft(im.mode, (WORK_SIDE, WORK_SIDE))
    im = ImageOps.exif_transpose(im)
    im = im.convert("L") if im.mode in ("L", "LA", "1") else im.convert("RGB")
    if max(im.size) > WORK_SIDE:
        s = WORK_SIDE / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR, reducing_gap=2.0)
    return im, width, height


def edge_sharpness(gray: np.ndarray) -> float | None:
    """Mean spatial frequency of the edges, 0..1: ``sqrt(mean(lap^2) / (8 * mean(|grad|^2)))`` (module docstring).

    A pixel checkerboard (all energy at the Nyquist frequency) scores 1. None when there is nothing to measure: a
    perfectly flat image has no edges (it is low-information, not blurry) and a side under 3 px has no Laplacian.
    """
    if min(gray.shape) < 3:
        return None
    g = gray.astype(np.float32) / 255.0
    gx, gy = np.diff(g, axis=1), np.diff(g, axis=0)
    grad = float((gx * gx).mean() + (gy * gy).mean())
    if grad < 1e-10:
        return None
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(min(1.0, np.sqrt(float((lap * lap).mean()) / (8.0 * grad))))


def measure(data: bytes) -> dict[str, Any]:
    """One ``MEASUREMENT_SCHEMA`` row (without ``sample_id``) for the image bytes ``data``; raises on bad bytes."""
    im, width, height = _open_working(data)
    arr = np.asarray(im)
    if arr.ndim == 3:
        spread = (arr.max(axis=2) - arr.min(axis=2)).ravel()
        color_spread = float(np.percentile(spread, 99)) / 255.0
        gray = np.asarray(im.convert("L"))
    else:
        color_spread, gray = 0.0, arr
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    cdf = np.cumsum(p)
    levels = np.arange(256, dtype=np.float64)
    mean = float(p @ levels)
    nz = p[p > 0]
    return {
        "width": width,
        "height": height,
        "brightness": mean / 255.0,
        "luma_p01": float(np.searchsorted(cdf, 0.01)) / 255.0,
        "luma_p99": float(np.searchsorted(cdf, 0.99)) / 255.0,
        "contrast": float(np.sqrt(p @ (levels - mean) ** 2)) / 255.0,
        "entropy": max(0.0, float(-(nz * np.log2(nz)).sum())),  # max: a flat image gives -0.0
        "sharpness": edge_sharpness(gray),
        "color_spread": color_spread,
        "is_gray": color_spread * 255.0 <= GRAY_SPREAD,
        "error": None,
    }


def quality_batch(batch: pa.Table, cfg: Any = None) -> pa.Table:
    """Raw quality measurements of a batch of images (per-sample work; picklable; any executor).

    Args:
        batch: columns ``sample_id`` (string) and ``data`` (binary image bytes).
        cfg: unused; present so the function fits ``map_batches(fn, batches, cfg)`` and Ray's ``fn_kwargs``.

    Returns:
        ``MEASUREMENT_SCHEMA`` rows in input order: ``width``/``height`` (decoded, EXIF applied), ``brightness``
        (mean luma 0..1), ``luma_p01``/``luma_p99`` (luma percentiles 0..1), ``contrast`` (luma std 0..1),
        ``entropy`` (bits, 0..8), ``sharpness`` (0..1, see module doc; null for a flat image or a side under 3 px),
        ``color_spread`` (0..1), ``is_gray``;
        undecodable bytes give a row whose measurements are null and whose ``error`` says why.
    """
    return per_row(batch, measure, MEASUREMENT_SCHEMA)


def compute_quality(
    ws: Workspace, table: pa.Table, *, workers: int = 1, progress: Progress = no_progress, batch_rows: int = 512
) -> pa.Table:
    """Measurements for the ``ok`` rows of ``table``, read from the workspace's blob packs.

    Args:
        ws: the workspace (``ws.blobs``).
        table: a sample table with at least ``sample_id`` and ``pack`` (``status`` when present: only ``ok`` rows).
        workers: processes for the per-sample work (1 = in this process).
        progress: the progress factory (``curate.stage.Progress``; the bar is named ``quality``).
        batch_rows: images per batch handed to the executor.

    Returns:
        ``MEASUREMENT_SCHEMA`` rows, one per measured ``sample_id``, in blob-pack order.

    Raises:
        CurateError: some ``ok`` rows have no bytes in the blob packs.
    """
    from curate.executors import map_batches

    rows = table
    if "status" in rows.column_names:
        rows = rows.filter(pc.equal(rows.column("status"), "ok"))
    rows = rows.select(["sample_id", "pack"])
    if not rows.num_rows:
        return MEASUREMENT_SCHEMA.empty_table()
    parts: list[pa.Table] = []
    with progress("quality", rows.num_rows) as advance:
        for out in map_batches(quality_batch, ws.blobs.iter_packs(rows, batch_rows=batch_rows), None, workers=workers):
            parts.append(out)
            advance(out.num_rows)
    out = pa.concat_tables(parts) if parts else MEASUREMENT_SCHEMA.empty_table()
    if out.num_rows < rows.num_rows:
        lost = sorted(set(rows.column("sample_id").to_pylist()) - set(out.column("sample_id").to_pylist()))
        raise CurateError(f"{len(lost)} samples have no bytes in the blob packs (e.g. {lost[0]})", hint="was `curate gc` run?")
    return out


def _col(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def flag_quality(measurements: pa.Table, *, thresholds: QualityThresholds = QualityThresholds()) -> pa.Table:
    """Scores and flags per check from ``compute_quality`` / ``quality_batch`` measurements.

    Args:
        measurements: ``MEASUREMENT_SCHEMA`` rows; the rows are the dataset for the ``grayscale`` decision, so pass
            the included rows only. Rows with an ``error`` get null scores and no flags.
        thresholds: where each check flags.

    Returns:
        ``sample_id``; for each check in ``QUALITY_CHECKS`` ``<check>_score`` (float64, lower = worse) and
        ``is_<check>`` (bool); ``is_low_quality`` (any flag); ``low_quality_reasons`` (flagged checks joined by
        commas in ``QUALITY_CHECKS`` order, null when none); ``low_quality_score`` (0..1, lower = worse, to sort a
        review worst first: the smallest score/threshold ratio among the flagged checks, ``GRAY_RATIO`` for a
        grayscale flag (a mismatch with the set, not a broken image), 1.0 when nothing is flagged).
    """
    thresholds.check()
    m = measurements
    n = m.num_rows
    bad = np.asarray(pc.is_valid(m.column("error")).to_numpy(zero_copy_only=False), bool) if n else np.zeros(0, bool)
    width, height = _col(m, "width"), _col(m, "height")
    short, long_ = np.fmin(width, height), np.fmax(width, height)
    is_gray = np.asarray(pc.fill_null(m.column("is_gray"), False).to_numpy(zero_copy_only=False), bool)
    n_good = int((~bad).sum())
    color_share = float((~is_gray & ~bad).sum()) / n_good if n_good else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = {
            "dark": _col(m, "luma_p99"),
            "bright": 1.0 - _col(m, "luma_p01"),
            "blurry": _col(m, "sharpness"),
            "low_information": np.fmin(_col(m, "entropy") / 8.0, 2.0 * _col(m, "contrast")),
            "tiny": short,
            "odd_aspect": short / long_,
            "grayscale": _col(m, "color_spread"),
        }
        t = thresholds
        limits = {"dark": t.dark, "bright": t.bright, "blurry": t.blurry, "low_information": t.low_information}
        limits.update({"tiny": float(t.tiny), "odd_aspect": 1.0 / t.odd_aspect})
        flags = {name: (scores[name] < limits[name]) & ~bad for name in limits}
        flags["grayscale"] = is_gray & ~bad & (color_share >= thresholds.grayscale_majority)
        ratio = np.ones(n)
        for name, limit in limits.items():
            r = np.clip(scores[name] / limit, 0.0, 1.0) if limit > 0 else np.zeros(n)
            ratio = np.where(flags[name], np.fmin(ratio, r), ratio)
        ratio = np.where(flags["grayscale"], np.fmin(ratio, GRAY_RATIO), ratio)
    cols: dict[str, Any] = {"sample_id": m.column("sample_id")}
    for name in QUALITY_CHECKS:
        cols[f"{name}_score"] = pa.array(scores[name], pa.float64(), mask=bad | np.isnan(scores[name]))
        cols[f"is_{name}"] = pa.array(flags[name], pa.bool_())
    any_flag = np.logical_or.reduce([flags[c] for c in QUALITY_CHECKS])
    reasons = [",".join(c for c in QUALITY_CHECKS if flags[c][i]) or None for i in range(n)]
    cols["is_low_quality"] = pa.array(any_flag, pa.bool_())
    cols["low_quality_reasons"] = pa.array(reasons, pa.string())
    cols["low_quality_score"] = pa.array(ratio, pa.float64(), mask=bad)
    return pa.table(cols)
