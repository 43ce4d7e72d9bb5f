"""The work of ``curate normalize`` (contract and semantics: ``curate.stages.normalize``)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.schema import OK, conform
from curate.stage import Progress, StageResult, no_progress
from curate.stages.normalize import NormalizeConfig

if TYPE_CHECKING:
    from curate.workspace import Workspace

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
PARTIAL_SCHEMA = pa.schema([("images", pa.int64()), ("pixels", pa.int64()), ("sum", pa.list_(pa.int64())),
                            ("sumsq", pa.list_(pa.int64())), ("hist", pa.list_(pa.int64()))])


def to_array(data: bytes, channels: int) -> np.ndarray:
    """Decode (EXIF orientation applied) to uint8 ``(H, W, channels)``; alpha is dropped, gray is replicated."""
    from curate.images import decode_rgb_or_l

    im = decode_rgb_or_l(data)
    im = im.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def pixel_stats(batch: pa.Table, cfg: NormalizeConfig) -> pa.Table:
    """Per-sample work: integer sums over the images of ``batch`` (columns ``sample_id``, ``data``).

    Returns:
        One row of ``PARTIAL_SCHEMA``: image and pixel counts, per-channel sum and sum of squares (int64), and a
        256-bin histogram per channel flattened to ``channels * 256`` counts.
    """
    c = cfg.channels
    s = np.zeros(c, np.int64)
    q = np.zeros(c, np.int64)
    hist = np.zeros((c, 256), np.int64)
    pixels = 0
    for data in batch.column("data").to_pylist():
        arr = to_array(data, c).reshape(-1, c)
        pixels += arr.shape[0]
        wide = arr.astype(np.int64)
        s += wide.sum(axis=0)
        q += (wide * wide).sum(axis=0)
        for ch in range(c):
            hist[ch] += np.bincount(arr[:, ch], minlength=256)
    return pa.table({"images": [batch.num_rows], "pixels": [pixels], "sum": [s.tolist()], "sumsq": [q.tolist()],
                     "hist": [hist.ravel().tolist()]}, schema=PARTIAL_SCHEMA)


def finish(partials: list[pa.Table], channels: int) -> dict[str, Any]:
    """Merge partial sums (by addition) into mean/std on the 0..1 scale plus the histogram."""
    images = pixels = 0
    s = np.zeros(channels, np.int64)
    q = np.zeros(channels, np.int64)
    hist = np.zeros(channels * 256, np.int64)
    for t in partials:
        for row in t.to_pylist():
            images += row["images"]
            pixels += row["pixels"]
            s += np.asarray(row["sum"], np.int64)
            q += np.asarray(row["sumsq"], np.int64)
            hist += np.asarray(row["hist"], np.int64)
    # Exact integers until this point; var = E[x^2] - E[x]^2 in float64 on the 0..255 scale, then rescaled.
    mean = s.astype(np.float64) / pixels
    var = q.astype(np.float64) / pixels - mean**2
    std = np.sqrt(np.maximum(var, 0.0))
    return {
        "mean": (mean / 255.0).tolist(),
        "std": (std / 255.0).tolist(),
        "channels": channels,
        "scale": "0..1 (pixel / 255)",
        "images": images,
        "pixels_per_channel": pixels,
        "histogram": hist.reshape(channels, 256).tolist(),
    }


def run_normalize(
    ws: Workspace, parent: pa.Table, cfg: NormalizeConfig, *, workers: int = 1, progress: Progress = no_progress
) -> StageResult:
    """Compute the statistics over included ``cfg.split`` rows and store them as ``state/normalization.json``.

    Raises:
        CurateError: no included rows in the split (run ``curate split`` first).
    """
    from curate.executors import map_batches

    t0 = time.perf_counter()
    table = conform(parent)
    rows = table.filter(pc.and_(pc.equal(table.column("status"), OK), pc.equal(pc.fill_null(table.column("split"), ""), cfg.split)))
    rows = rows.filter(pc.is_valid(rows.column("pack")))
    if rows.num_rows == 0:
        raise CurateError(f"no included {cfg.split!r} rows to compute normalization from", hint="run `curate split` first")
    channels = cfg.channels or (1 if set(rows.column("mode").to_pylist()) <= GRAY_MODES else 3)
    run_cfg = NormalizeConfig(split=cfg.split, channels=channels)
    partials: list[pa.Table] = []
    with progress("normalize", rows.num_rows) as advance:
        for part in map_batches(pixel_stats, ws.blobs.iter_packs(rows, batch_rows=1024), run_cfg, workers=workers):
            partials.append(part)
            advance(part.column("images")[0].as_py())
    stats = finish(partials, channels)
    stats["split"] = cfg.split
    state = {"normalization.json": (json.dumps(stats, indent=1) + "\n").encode()}
    summary = {k: stats[k] for k in ("mean", "std", "channels", "images", "split")}
    return StageResult(table=table, stats={"normalization": summary, "seconds": round(time.perf_counter() - t0, 3)}, state=state)
