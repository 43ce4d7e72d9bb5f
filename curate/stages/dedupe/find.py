"""Dedupe: find exact and near-duplicate images, group them, keep one representative per group.

Per-sample work (``compute_batch``: decode, pixel hash, 32 px thumbnail, sharpness; ``curate.stages.dedupe.signatures``) runs
wherever the executor puts it, only for samples whose signature is not cached in ``state/signatures.parquet``
of this version's lineage (or of the ``--against`` reference). The driver (``run_dedupe``) does the rest over
small arrays: exact groups by pixel hash, near pairs by ``curate.stages.dedupe.search`` (descriptor ANN index + aligned
verification, ``curate.stages.dedupe.verify``), connected components, the representative, the columns.

Columns added (``ok`` rows that took part; other rows keep what they had):

| column | meaning |
| --- | --- |
| dup_group | sample_id of the group's representative; null when the image has no duplicate |
| is_duplicate | true for every member but the representative (never for ``--against`` reference rows) |
| dup_of | the representative a duplicate was matched to |
| dup_score | similarity to the representative: 1.0 same pixels, else the verification score (null for others) |
| dup_kind | ``exact`` (same decoded pixels), ``near`` (pixel signatures) or ``semantic`` (linked only by ``--model``'s embeddings) |
| dup_label_conflict | the group's members carry more than one distinct label (a label-noise signal) |

Threshold calibration of the aligned score alone (issue 3: 0.90, ``bench/bench_dedupe.py``): 10,000 Fashion-MNIST train images
plus 1,000 planted copies, 100 per named transform (PNG re-encode, 2x upscale, Lanczos to 22 px, JPEG q90/q75,
brightness x1.2/x0.8, 1 px and 2 px shift, 25x25 crop). Sweeping the threshold over the scored candidate pairs:

| threshold | lowest recall of a transform | recall | precision (planted) | pairs among originals |
| --- | --- | --- | --- | --- |
| 0.86 | 0.98 | 0.995 | 0.966 | 93 |
| 0.88 | 0.98 | 0.995 | 0.980 | 32 |
| 0.90 | 0.98 | 0.994 | 0.989 | 8 |
| 0.91 | 0.96 | 0.992 | 0.992 | 2 |
| 0.92 | 0.88 | 0.983 | 0.997 | 2 |

0.90 is the highest threshold at which no transform falls below 0.98 (above it the x1.2 brightness copies, whose
highlights clip, drop first); below it recall gains nothing while look-alike pairs among the originals grow
fast. Raise it to flag only closer copies; lower it (0.85) to catch heavier edits at the cost of look-alikes.
The stage itself at 0.90 (connected groups): recall 0.99-1.00 per transform, precision 0.98 on pairs with a
planted copy (BENCHMARKS.md, "Dedupe").

Issue 16 added the fitted-filter score (``curate.stages.dedupe.robust``, ``robust_threshold``) for edits nobody
named, and refitted both thresholds together on 12 transform families of ``curate.stages.dedupe.transforms``
(webp, sharpen, rotate and their pairs held out), on Fashion-MNIST and a photo set at once, for the best mean
recall at precision >= 0.97: ``DEFAULT_THRESHOLD`` 0.92, ``DEFAULT_ROBUST_THRESHOLD`` 0.94
(``bench/bench_dedupe_generalize.py``; BENCHMARKS.md "Dedupe: edits nobody named").
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.schema import OK, conform
from curate.stage import StageResult, no_progress
from curate.stages.dedupe import DedupeConfig, check_config
from curate.stages.dedupe.groups import annotate, group_items
from curate.stages.dedupe.signatures import SIGNATURE_SCHEMA, UniqueSignatures, cache_bytes, compute_signatures, read_cached

if TYPE_CHECKING:
    from curate.stage import Progress
    from curate.workspace import Workspace

STAGE = "dedupe"


def compute_batch(batch: pa.Table, cfg: DedupeConfig) -> pa.Table:
    """Per-sample work: ``sample_id``/``data`` rows -> ``curate.stages.dedupe.signatures.SIGNATURE_SCHEMA`` rows, same order."""
    return compute_signatures(batch)


def _items(table: pa.Table, ids: pa.ChunkedArray) -> pa.Table:
    """``sample_id``/``pack``/``label``/``order`` of ``ids`` in ``table`` (order = row index)."""
    idx = pc.index_in(ids, table.column("sample_id"))
    t = table.select(["sample_id", "pack", "label"]).take(idx)
    return t.append_column("order", idx.cast(pa.int64()))


def _signatures(
    ws: Workspace, lineages: list[tuple[Workspace, str | None]], rows: pa.Table, cfg: DedupeConfig, workers: int,
    progress: Progress,
) -> tuple[pa.Table, pa.Table]:
    """Signatures of ``rows`` (sample_id, pack): cached ones from the ``(workspace, version)`` lineages, in order,
    the rest computed from the blobs of ``ws``.

    Returns:
        ``(all signatures of rows, in no particular order; the ones computed now)``.
    """
    from curate.executors import map_batches

    want = rows.column("sample_id")  # Arrow, not a Python string per row (a million rows: ~120 MB of str)
    found: list[pa.Table] = []
    for lws, vid in lineages:
        if vid is not None and len(want):
            got = read_cached(lws, vid, want)
            found.append(got)
            want = want.filter(pc.invert(pc.is_in(want, got.column("sample_id"))))
    cached = pa.concat_tables(found) if found else SIGNATURE_SCHEMA.empty_table()
    missing = rows.filter(pc.invert(pc.is_in(rows.column("sample_id"), cached.column("sample_id"))))
    if not missing.num_rows:
        return cached, SIGNATURE_SCHEMA.empty_table()
    parts = []
    with progress("signatures", missing.num_rows) as advance:
        batches = ws.blobs.iter_packs(missing, batch_rows=cfg.batch_size)
        for out in map_batches(compute_batch, batches, cfg, workers=workers):
            parts.append(out)
            advance(out.num_rows)
    computed = pa.concat_tables(parts) if parts else SIGNATURE_SCHEMA.empty_table()
    if computed.num_rows < missing.num_rows:
        lost = set(missing.column("sample_id").to_pylist()) - set(computed.column("sample_id").to_pylist())
        example = sorted(lost)[0]
        raise CurateError(f"{len(lost)} samples have no bytes in the blob packs (e.g. {example})", hint="was `curate gc` run?")
    return pa.concat_tables([cached, computed]), computed


def resolve_against(ws: Workspace, against: str) -> tuple[Workspace, str]:
    """``VERSION`` (this workspace) or ``PATH[@VERSION]`` (another workspace) -> ``(workspace, version id)``."""
    from pathlib import Path

    from curate.workspace import Workspace

    path, _, ref = against.partition("@")
    if Path(path).is_dir() and (Path(path) / "versions").is_dir():
        other = Workspace(path)
        return other, other.resolve(ref or None)
    if "@" in against or "/" in against:
        raise CurateError(
            f"--against {against}: no workspace at {path}",
            hint="give a version of this workspace, a workspace folder, or FOLDER@VERSION",
        )
    return ws, ws.resolve(against)


def _with_reference(
    ws: Workspace, parent_id: str | None, cfg: DedupeConfig, items: pa.Table, sigs: pa.Table, computed: pa.Table, workers: int,
    progress: Progress,
) -> tuple[Workspace, set[str], pa.Table, pa.Table, pa.Table]:  # fmt: skip
    """``--against``: the reference's workspace, its ok sample_ids, and ``items``/``sigs``/``computed`` extended by
    the reference rows outside this table (``order`` -1)."""
    rws, rvid = resolve_against(ws, cfg.against or "")
    rtab = rws.samples(rvid, columns=["sample_id", "status", "pack", "label"])
    rtab = rtab.filter(pc.equal(rtab.column("status"), OK))
    ref_ids = set(rtab.column("sample_id").to_pylist())
    ext = rtab.filter(pc.invert(pc.is_in(rtab.column("sample_id"), items.column("sample_id"))))
    ext_items = ext.select(["sample_id", "pack", "label"]).append_column("order", pa.array(np.full(ext.num_rows, -1), pa.int64()))
    # reference rows outside this table: cached here (an earlier --against run) or there, else computed once
    ext_sigs, ext_computed = _signatures(rws, [(ws, parent_id), (rws, rvid)], ext_items, cfg, workers, progress)
    return (rws, ref_ids, pa.concat_tables([items, ext_items]), pa.concat_tables([sigs, ext_sigs]),
            pa.concat_tables([computed, ext_computed]))  # fmt: skip


def run_dedupe(
    ws: Workspace, parent: pa.Table | None, parent_id: str | None, cfg: DedupeConfig, *, workers: int = 1,
    progress: Progress = no_progress,
) -> StageResult:
    """Find duplicates among the ``ok`` rows of ``parent`` (and against ``cfg.against``) and annotate them.

    Args:
        ws: the workspace (its blobs, its signature caches).
        parent: the parent sample table; parent_id: its version id.
        workers: processes for the per-sample signatures (1 = in this process).
        progress: the progress factory (``curate.stage.Progress``).

    Raises:
        CurateError: empty workspace, missing blobs, an unknown ``--against``; UsageError: bad settings.
    """
    check_config(cfg)
    if parent is None:
        raise CurateError("the workspace has no versions yet", hint="run `curate ingest SRC` first")
    t0 = time.perf_counter()
    table = conform(parent)
    ok_ids = table.column("sample_id").filter(pc.equal(table.column("status"), OK))  # not a copy of every column
    items = _items(table, ok_ids)
    sigs, computed = _signatures(ws, [(ws, parent_id)], items, cfg, workers, progress)
    ref_ids: set[str] = set()
    rws = None
    if cfg.against:
        rws, ref_ids, items, sigs, computed = _with_reference(ws, parent_id, cfg, items, sigs, computed, workers, progress)
    t_sig = time.perf_counter() - t0
    # The cache is written now and every Arrow copy of the signatures dropped before the search: at a million
    # images they were ~1 GB beside the search's arrays (BENCHMARKS.md, "1M chain ... in 3 GB").
    n_computed, cache = computed.num_rows, cache_bytes(computed) if computed.num_rows else None
    n_errors = sigs.num_rows - sigs.column("error").null_count
    del computed
    items = items.filter(pc.is_in(items.column("sample_id"), sigs.column("sample_id").filter(pc.is_null(sigs.column("error")))))
    cols = ["pixel_hash", "thumb", "thumb_h", "thumb_w", "thumb_v", "width", "height", "sharpness"]
    good = sigs.select(cols).take(pc.index_in(items.column("sample_id"), sigs.column("sample_id")))  # align with items
    del sigs
    sig = UniqueSignatures.of(good)
    n_good = good.num_rows
    del good
    semantic = None
    if cfg.model:  # after the signature filter: the embedding pairs index the same items
        from curate.stages.dedupe.semantic import semantic_edges

        is_ref = np.array([s in ref_ids for s in items.column("sample_id").to_pylist()], bool)
        semantic = semantic_edges(ws, items, is_ref, cfg, ref_ws=rws, threads=workers, progress=progress)
    result = group_items(
        items, sig, ref_ids, threshold=cfg.threshold, robust_threshold=cfg.robust_threshold, flip=cfg.flip_is_duplicate,
        keep=cfg.keep, exact_only=cfg.exact_only, k=cfg.k, nprobe=cfg.nprobe, threads=workers, semantic=semantic,
    )  # fmt: skip
    table, stats = annotate(table, items, result, exclude_duplicates=cfg.action == "exclude", stage=STAGE)
    stats["action"] = cfg.action
    state = {"dup_pairs.parquet": result["edges"].parquet()}
    if semantic is not None:
        state.update(semantic.state)
        stats["semantic"] = semantic.info
    if cache is not None:  # only new ones: older ones stay in the ancestors' state and are found through the lineage
        state["signatures.parquet"] = cache
    stats.update(
        {
            "participants": len(ok_ids),
            "reference": cfg.against,
            "reference_rows": len(ref_ids),
            "signatures_computed": n_computed,
            "signatures_cached": n_good + n_errors - n_computed,
            "signature_errors": n_errors,
            "seconds_signatures": round(t_sig, 3),
            "search": result["timings"],
            "seconds": round(time.perf_counter() - t0, 3),
        }
    )
    return StageResult(table=table, stats=stats, state=state)
