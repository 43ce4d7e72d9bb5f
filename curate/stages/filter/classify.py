"""Filter: score samples with a trained curate classifier and exclude those unlikely to belong to the task.

The standard clean-up for data gathered from the web: train a classifier whose classes tell relevant images
from irrelevant ones (``relevant`` / ``irrelevant``, or the task's classes plus an ``other`` class), then drop
what it does not believe belongs. The model is any run folder written by ``curate train``
(``curate.learn.predict.load_run``); it runs on the GPU when there is one (``--device auto``), else on the CPU.

Score. ``filter_score`` is the model's probability that a sample belongs to the task:

- with task classes (``--classes``, or by default the model classes that also occur as labels among the
  version's included rows): the *sum* of the probabilities of those classes, so "belongs to one of the task's
  classes, whichever" counts, and an image split between two task classes is not penalised;
- when the default would name every model class (a model trained on the task classes only, without an
  "other" class), a sum would always be 1.0, so the score falls back to the *maximum* probability: a model
  that cannot decide between the task classes is taken as a sign that the image belongs to none of them.

Columns added (rows scored by this run; other rows keep what an earlier filter run gave them, else null):

| column | meaning |
| --- | --- |
| filter_score | probability mass on the task classes (or the max probability, see above), 0..1 (float64) |
| filter_predicted | the model's most probable class (argmax), a model class name |
| filter_confidence | the probability of ``filter_predicted`` |
| is_filtered | ``filter_score < min_prob`` |

Scored rows are the ``ok`` rows of the selected splits (``--splits``; ``all`` includes rows with no split yet).
Rows already excluded are not scored and keep their status, stage and reason. With ``action="exclude"`` (the
default) every ``is_filtered`` row is excluded with stage ``filter`` and reason ``classifier_filter``;
``flag`` only writes the columns. Every row stays in the table. The full probability vectors of the scored rows
go to ``state/filter_probs.parquet`` (``sample_id`` plus one ``p_<class>`` column per model class).

Blobs are read pack by pack (``BlobStore.iter_packs``) and scored in batches of ``batch_size``, so memory is
bounded by one batch of decoded images plus one float per class and row. The result is deterministic on a
given device (eval mode, no sampling); the checkpoint's sha256 is part of the stage config, so a retrained
model at the same path is not mistaken for the cached result of the old one.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import executors
from curate.blobs import file_sha256
from curate.errors import CurateError
from curate.models.actors import ModelHandle
from curate.schema import OK, conform, exclude
from curate.stage import StageResult, no_progress
from curate.stages.filter import REASON, FilterConfig, check_config
from curate.stages.filter.scoring import HandleScorer, ScoreJob, load_model, rebatch, resolve_target, score_probs

if TYPE_CHECKING:
    from curate.stage import Advance, Progress
    from curate.workspace import Workspace

STAGE = "filter"
COLUMNS: dict[str, pa.DataType] = {
    "filter_score": pa.float64(),
    "filter_predicted": pa.string(),
    "filter_confidence": pa.float64(),
    "is_filtered": pa.bool_(),
}


def selected_mask(table: pa.Table, splits: tuple[str, ...]) -> pa.Array:
    """Rows to score (a bool array, one per row): ``ok`` and in one of ``splits`` (``all``: any split, or none yet)."""
    ok = pc.equal(table.column("status"), OK)
    if "all" not in splits:
        split = pc.fill_null(table.column("split"), "none")
        ok = pc.and_(ok, pc.is_in(split, pa.array(list(splits), pa.string())))
    mask = pc.fill_null(ok, False)
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


def _merge_column(table: pa.Table, name: str, typ: pa.DataType, new: pa.Array, scored: pa.Array) -> pa.Table:
    """Set ``name`` to ``new`` where ``scored``; elsewhere keep an earlier run's value (null when there is none)."""
    if name in table.column_names:
        old = table.column(name).combine_chunks()
        try:
            old = old.cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            old = pa.nulls(table.num_rows, typ)  # a foreign column of that name: ours replaces it
        col = pc.if_else(scored, new, old)
        return table.set_column(table.schema.get_field_index(name), name, col)
    return table.append_column(name, pc.if_else(scored, new, pa.nulls(table.num_rows, typ)))


def _quantiles(values: np.ndarray) -> dict[str, float]:
    """5/25/50/75/95th percentiles of the scores (how sharply the model separates; where the threshold falls)."""
    if not len(values):
        return {}
    qs = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {name: round(float(v), 6) for name, v in zip(("p05", "p25", "p50", "p75", "p95"), qs, strict=True)}


def _counts(values: list[Any]) -> dict[str, int]:
    return dict(sorted(Counter("(none)" if v is None else str(v) for v in values).items()))


def _score_all(
    scored: Iterable[pa.Table],
    position: dict[str, int],
    probs: np.ndarray,
    seen: np.ndarray,
    errors: dict[str, str],
    advance: Advance,
) -> None:
    """Put every scored batch (``Scorer`` output) into ``probs`` (rows by ``position``), marking ``seen`` rows and
    decode ``errors``."""
    k = probs.shape[1]
    for out in scored:
        ids = out.column("sample_id").to_pylist()
        at = np.fromiter((position[sid] for sid in ids), np.int64, len(ids))
        probs[at] = np.asarray(out.column("probs").combine_chunks().flatten(), np.float32).reshape(len(ids), k)
        seen[at] = True
        for sid, err in zip(ids, out.column("error").to_pylist(), strict=True):
            if err is not None:
                errors[sid] = err
        advance(len(ids))


def run_filter(
    ws: Workspace,
    parent: pa.Table | None,
    parent_id: str | None,
    cfg: FilterConfig,
    *,
    run: Any = None,
    checkpoint_sha: str | None = None,
    progress: Progress = no_progress,
) -> StageResult:
    """Score the selected ``ok`` rows of ``parent`` with the classifier and filter those below ``min_prob``.

    Args:
        ws: the workspace (its blob packs).
        parent: the parent sample table; parent_id: its version id.
        cfg: the settings (``check_config`` is applied).
        run: an already loaded ``LoadedRun`` (else ``cfg.model`` is loaded here).
        checkpoint_sha: the checkpoint's sha256 when the caller already computed it.
        progress: the progress factory (``curate.stage.Progress``).

    Returns:
        The full table with the filter columns (module doc), stats (counts per split and per predicted class of
        the filtered rows, the score used, the model identity) and ``state/filter_probs.parquet``.

    Raises:
        CurateError: empty workspace, missing run/checkpoint, blobs missing from the packs; UsageError: bad
        settings or class names.
    """
    check_config(cfg)
    if parent is None:
        raise CurateError("the workspace has no versions yet", hint="run `curate ingest SRC` first")
    t0 = time.perf_counter()
    table = conform(parent)
    splits = tuple(cfg.splits)
    mask = selected_mask(table, splits)
    sel_idx = np.flatnonzero(mask.to_numpy(zero_copy_only=False))  # table rows to score, in table order
    rows = table.filter(mask).select(["sample_id", "pack"])
    classes, probs, errors, state, model_stats = _probabilities(ws, table, sel_idx, rows, cfg, run, checkpoint_sha, progress)
    target = resolve_target(cfg, classes, table)
    t_score = time.perf_counter() - t0
    table, d = _annotate(table, probs, sel_idx, classes, target, cfg)
    score, pred, idx_scored, good = d["score"], d["pred"], d["idx_scored"], d["good"]
    idx_filtered = np.flatnonzero(d["filtered"])
    split_col = table.column("split")
    split_of = split_col.take(pa.array(idx_filtered)).to_pylist() if len(idx_filtered) else []
    stats = {
        **model_stats,
        "model_classes": classes,
        "classes": list(target.classes),
        "score": target.mode,
        "score_description": target.describe(),
        "classes_from": target.source,
        "min_prob": cfg.min_prob,
        "action": cfg.action,
        "splits": list(splits),
        "candidates": rows.num_rows,
        "scored": int(d["scored"].sum()),
        "decode_errors": len(errors),
        "filtered": len(idx_filtered),
        "excluded": d["excluded_now"],
        "scored_per_split": _counts(split_col.take(pa.array(idx_scored)).to_pylist() if len(idx_scored) else []),
        "filtered_per_split": _counts(split_of),
        "filtered_per_predicted": _counts([classes[i] for i in pred[idx_filtered]]),
        "score_quantiles": _quantiles(score[idx_scored]),
        "seconds_scoring": round(t_score, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if errors:
        stats["decode_error_examples"] = dict(sorted(errors.items())[:5])
    ids_scored = table.column("sample_id").take(pa.array(idx_scored, pa.int64()))
    prob_cols = {f"p_{c}": pa.array(good[:, j], pa.float32()) for j, c in enumerate(classes)}
    buf = io.BytesIO()
    pq.write_table(pa.table({"sample_id": ids_scored, **prob_cols}), buf, compression="zstd")
    return StageResult(table=table, stats=stats, state={**state, "filter_probs.parquet": buf.getvalue()})


def _probabilities(
    ws: Workspace, table: pa.Table, sel_idx: np.ndarray, rows: pa.Table, cfg: FilterConfig, run: Any,
    checkpoint_sha: str | None, progress: Progress,
) -> tuple[list[str], np.ndarray, dict[str, str], dict[str, bytes], dict[str, Any]]:  # fmt: skip
    """The model's probabilities of the selected rows: a run folder (``curate:RUN`` too) or a model backend
    (``curate.stages.filter.backend``; ``run`` may be its ``Judge`` already loaded by ``key``).

    Returns:
        ``(classes, probs (m, K) in rows order, decode errors, state files, the model's stats)``.
    """
    from curate.stages.filter.backend import Judge, is_backend_spec, load_judge, score_rows

    if isinstance(run, Judge) or (run is None and is_backend_spec(cfg.model)):
        judge = run if isinstance(run, Judge) else load_judge(ws, table, cfg)
        probs, errors, state, info = score_rows(ws, table, sel_idx, judge, cfg, progress)
        b = judge.backend
        stats = {"model": str(cfg.model), "checkpoint": str(b.path), "checkpoint_sha256": b.digest, "device": b.device,
                 "backend": judge.describe(), **info}  # fmt: skip
        return list(judge.classes), probs, errors, state, stats
    run = run if run is not None else load_model(cfg, ws.root)
    probs, errors = _score_selected(ws, rows, run, cfg, progress)
    sha = checkpoint_sha or file_sha256(run.path)
    stats = {"model": str(cfg.model), "checkpoint": str(run.path), "checkpoint_sha256": sha, "device": str(run.device)}
    return list(run.classes), probs, errors, {}, stats


def _score_selected(
    ws: Workspace, rows: pa.Table, run: Any, cfg: FilterConfig, progress: Progress
) -> tuple[np.ndarray, dict[str, str]]:
    """Per-sample work: decode + forward pass of ``rows`` (``sample_id``, ``pack``), pack by pack, one batch at a
    time. Probabilities are kept only for these rows (``(m, k)`` float32, NaN where an image does not decode):
    bounded by the rows scored, not by the images or the whole table.

    Returns:
        ``(probs, errors)``: probabilities in the order of ``rows``; sample_id -> decode error.
    """
    m, k = rows.num_rows, len(run.classes)
    probs = np.full((m, k), np.nan, np.float32)
    errors: dict[str, str] = {}
    position = {sid: i for i, sid in enumerate(rows.column("sample_id").to_pylist())}
    seen = np.zeros(m, bool)
    # The model runs as executor actors: here with ``run`` on the local executor, one load per Ray actor.
    job = ScoreJob(ModelHandle(partial(load_model, cfg), run), cfg.batch_size)
    try:
        with progress("filter", m) as advance:
            batches = rebatch(ws.blobs.iter_packs(rows, batch_rows=cfg.batch_size), cfg.batch_size)
            _score_all(executors.map_batches_actor(HandleScorer, batches, job, workers=None), position, probs, seen, errors, advance)
    except FileNotFoundError as exc:
        where = exc.filename or str(exc)  # pyarrow names the file in the message only
        raise CurateError(
            f"a blob pack of this version is missing: {where}", hint="was `curate gc` run, or the workspace copied in part?"
        ) from exc
    if not seen.all():
        missing = rows.column("sample_id").filter(pa.array(~seen)).to_pylist()
        raise CurateError(f"{len(missing)} samples have no bytes in the blob packs (e.g. {missing[0]})", hint="was `curate gc` run?")
    return probs, errors


def _annotate(
    table: pa.Table, probs: np.ndarray, sel_idx: np.ndarray, classes: list[str], target: Any, cfg: FilterConfig
) -> tuple[pa.Table, dict[str, Any]]:
    """Global decisions over small arrays: score, threshold, the filter columns, the exclusion.

    Returns:
        The table with the columns (and, with ``action = exclude``, the exclusions), and the arrays the stats need:
        ``score``/``pred`` per table row, ``filtered``/``scored`` masks, ``idx_scored``, ``good`` (the decoded rows'
        probabilities) and ``excluded_now``.
    """
    n = table.num_rows
    ok_probs = ~np.isnan(probs).any(1)  # undecodable images stay unscored
    good = probs[ok_probs]
    idx_scored = sel_idx[ok_probs]
    scored_np = np.zeros(n, bool)
    scored_np[idx_scored] = True
    score = np.zeros(n, np.float64)
    pred = np.zeros(n, np.int64)
    conf = np.zeros(n, np.float64)
    if len(good):
        score[idx_scored] = score_probs(good, classes, target)
        pred[idx_scored] = good.argmax(1)
        conf[idx_scored] = good.max(1)
    filtered_np = scored_np & (score < cfg.min_prob)
    unscored = ~scored_np
    scored = pa.array(scored_np)
    new = {
        "filter_score": pa.array(score, pa.float64(), mask=unscored),
        "filter_predicted": pa.array(classes, pa.string()).take(pa.array(pred, pa.int64(), mask=unscored)),
        "filter_confidence": pa.array(conf, pa.float64(), mask=unscored),
        "is_filtered": pa.array(filtered_np, pa.bool_(), mask=unscored),
    }
    for name, typ in COLUMNS.items():
        table = _merge_column(table, name, typ, new[name], scored)
    status_before = table.column("status")
    if cfg.action == "exclude":
        table = exclude(table, pa.array(filtered_np), stage=STAGE, reason=REASON)
    excluded_now = int(pc.sum(pc.and_(pc.equal(status_before, OK), pc.not_equal(table.column("status"), OK))).as_py() or 0)
    arrays = {"score": score, "pred": pred, "filtered": filtered_np, "scored": scored_np, "idx_scored": idx_scored, "good": good}
    return table, {**arrays, "excluded_now": excluded_now}
