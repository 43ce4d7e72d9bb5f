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

import contextlib
import dataclasses
import io
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import CurateError, UsageError
from curate.schema import OK, conform, exclude
from curate.scoring import (
    Scorer,
    Target,
    file_sha256,
    load_model,
    rebatch,
    resolve_target,
    score_probs,
)
from curate.stages import StageResult

STAGE = "filter"
REASON = "classifier_filter"
ACTIONS = ("exclude", "flag")
SPLITS = ("train", "train_dev", "val", "test", "none")  # "none": rows without a split yet
DEVICES = ("auto", "cpu", "cuda", "mps")
CHECKPOINTS = ("best", "last")
COLUMNS: dict[str, pa.DataType] = {
    "filter_score": pa.float64(),
    "filter_predicted": pa.string(),
    "filter_confidence": pa.float64(),
    "is_filtered": pa.bool_(),
}


@dataclass(frozen=True)
class FilterConfig:
    """Settings of ``curate filter`` (defaults < curate.toml ``[filter]`` < CLI flags).

    Attributes:
        model: run folder written by ``curate train`` (or a ``model_*.pt`` file). Required.
        classes: the model classes that belong to the task; None: the model classes that occur as labels among
            the version's included rows (max probability when that is every model class, see the module doc).
        min_prob: rows with ``filter_score`` below this are filtered (0 < min_prob <= 1).
        action: ``exclude`` (reason ``classifier_filter``) or ``flag`` (columns only).
        splits: splits whose ``ok`` rows are scored: names from train, val, test, none (no split yet), or ``all``.
        which: checkpoint of the run: ``best`` (falls back to ``last``) or ``last``.
        batch_size: images decoded and scored per batch (bounds memory).
        device: ``auto`` (cuda, then mps, then cpu), ``cpu``, ``cuda`` or ``mps``.
    """

    model: str | None = None
    classes: tuple[str, ...] | None = None
    min_prob: float = 0.5
    action: str = "exclude"
    splits: tuple[str, ...] = ("all",)
    which: str = "best"
    batch_size: int = 256
    device: str = "auto"


def check_config(cfg: FilterConfig) -> None:
    """Raises ``UsageError`` for missing or out-of-range settings (before any work starts)."""
    if not cfg.model:
        raise UsageError("--model is required: a run folder written by `curate train`")
    if cfg.action not in ACTIONS:
        raise UsageError(f"--action must be one of {', '.join(ACTIONS)}, not {cfg.action!r}")
    if not 0.0 < cfg.min_prob <= 1.0:
        raise UsageError(f"--min-prob must be in (0, 1], not {cfg.min_prob}")
    if cfg.which not in CHECKPOINTS:
        raise UsageError(f"--which must be one of {', '.join(CHECKPOINTS)}, not {cfg.which!r}")
    if cfg.device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, not {cfg.device!r}")
    if cfg.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    splits = tuple(cfg.splits)
    if not splits:
        raise UsageError("--splits needs at least one split, or all")
    bad = [s for s in splits if s not in (*SPLITS, "all")]
    if bad:
        raise UsageError(f"--splits: unknown split(s) {', '.join(bad)}; choose from {', '.join(SPLITS)} or all")
    if "all" in splits and len(splits) > 1:
        raise UsageError("--splits all cannot be combined with named splits")
    if cfg.classes is not None and not cfg.classes:
        raise UsageError("--classes needs at least one class name")


def selected_mask(table: pa.Table, splits: tuple[str, ...]) -> pa.Array:
    """Rows to score (a bool array, one per row): ``ok`` and in one of ``splits`` (``all``: any split, or none yet)."""
    ok = pc.equal(table.column("status"), OK)
    if "all" not in splits:
        split = pc.fill_null(table.column("split"), "none")
        ok = pc.and_(ok, pc.is_in(split, pa.array(list(splits), pa.string())))
    mask = pc.fill_null(ok, False)
    return mask.combine_chunks() if isinstance(mask, pa.ChunkedArray) else mask


def config_dict(cfg: FilterConfig, run: Any, target: Target, checkpoint_sha: str | None = None) -> dict[str, Any]:
    """The resolved config stored in version.json and hashed by ``run_stage`` for caching.

    Holds what decides the result: the checkpoint's sha256 (a retrained model at the same path is a new
    config), the resolved task classes and score mode, the threshold, action and splits. The batch size and
    device are left out: they change the speed and at most the float rounding of a score (batched convolutions
    round differently), so a result computed with other values of them is reused.
    """
    d = dataclasses.asdict(cfg)
    for runtime in ("batch_size", "device"):
        d.pop(runtime)
    d["model"] = str(cfg.model)
    d["classes"] = list(target.classes)
    d["splits"] = list(cfg.splits)
    d.update(
        {
            "checkpoint": str(run.path),
            "checkpoint_sha256": checkpoint_sha or file_sha256(run.path),
            "model_classes": list(run.classes),
            "score": target.mode,
            "classes_from": target.source,
        }
    )
    return d


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
    scorer: Scorer,
    batches: Any,
    position: dict[str, int],
    probs: np.ndarray,
    seen: np.ndarray,
    errors: dict[str, str],
    advance: Any,
) -> None:
    """Score every batch into ``probs`` (rows by ``position``), marking ``seen`` rows and decode ``errors``."""
    k = probs.shape[1]
    for batch in batches:
        out = scorer(batch)
        ids = out.column("sample_id").to_pylist()
        at = np.fromiter((position[sid] for sid in ids), np.int64, len(ids))
        probs[at] = np.asarray(out.column("probs").combine_chunks().flatten(), np.float32).reshape(len(ids), k)
        seen[at] = True
        for sid, err in zip(ids, out.column("error").to_pylist(), strict=True):
            if err is not None:
                errors[sid] = err
        if advance:
            advance(len(ids))


def run_filter(
    ws: Any,
    parent: pa.Table | None,
    parent_id: str | None,
    cfg: FilterConfig,
    *,
    run: Any = None,
    checkpoint_sha: str | None = None,
    progress: Any = None,
) -> StageResult:
    """Score the selected ``ok`` rows of ``parent`` with the classifier and filter those below ``min_prob``.

    Args:
        ws: the workspace (its blob packs).
        parent: the parent sample table; parent_id: its version id.
        cfg: the settings (``check_config`` is applied).
        run: an already loaded ``LoadedRun`` (else ``cfg.model`` is loaded here).
        checkpoint_sha: the checkpoint's sha256 when the caller already computed it.
        progress: optional ``progress(total) -> context manager yielding advance(n)``.

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
    run = run if run is not None else load_model(cfg)
    sha = checkpoint_sha or file_sha256(run.path)
    classes = list(run.classes)
    table = conform(parent)
    target = resolve_target(cfg, classes, table)
    splits = tuple(cfg.splits)
    mask = selected_mask(table, splits)
    sel_idx = np.flatnonzero(mask.to_numpy(zero_copy_only=False))  # table rows to score, in table order
    rows = table.filter(mask).select(["sample_id", "pack"])
    n, m, k = table.num_rows, len(sel_idx), len(classes)

    # --- per-sample work: decode + forward pass, pack by pack, one batch at a time. Probabilities are kept only
    # for the selected rows (m x k float32): bounded by the rows scored, not by the images or the whole table.
    probs = np.full((m, k), np.nan, np.float32)
    errors: dict[str, str] = {}
    position = {sid: i for i, sid in enumerate(rows.column("sample_id").to_pylist())}
    seen = np.zeros(m, bool)
    scorer = Scorer(run, cfg.batch_size)
    bar = progress(m) if progress else contextlib.nullcontext(None)
    try:
        with bar as advance:
            _score_all(
                scorer,
                rebatch(ws.blobs.iter_packs(rows, batch_rows=cfg.batch_size), cfg.batch_size),
                position,
                probs,
                seen,
                errors,
                advance,
            )
    except FileNotFoundError as exc:
        where = exc.filename or str(exc)  # pyarrow names the file in the message only
        raise CurateError(
            f"a blob pack of this version is missing: {where}", hint="was `curate gc` run, or the workspace copied in part?"
        ) from exc
    t_score = time.perf_counter() - t0
    if not seen.all():
        missing = rows.column("sample_id").filter(pa.array(~seen)).to_pylist()
        raise CurateError(f"{len(missing)} samples have no bytes in the blob packs (e.g. {missing[0]})", hint="was `curate gc` run?")

    # --- global decisions over small arrays: score, threshold, columns, exclusion
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

    # --- stats and state
    idx_filtered = np.flatnonzero(filtered_np)
    split_col = table.column("split")
    split_of = split_col.take(pa.array(idx_filtered)).to_pylist() if len(idx_filtered) else []
    stats = {
        "model": str(cfg.model),
        "checkpoint": str(run.path),
        "checkpoint_sha256": sha,
        "model_classes": classes,
        "classes": list(target.classes),
        "score": target.mode,
        "score_description": target.describe(),
        "classes_from": target.source,
        "min_prob": cfg.min_prob,
        "action": cfg.action,
        "splits": list(splits),
        "device": str(run.device),
        "candidates": rows.num_rows,
        "scored": int(scored_np.sum()),
        "decode_errors": len(errors),
        "filtered": int(filtered_np.sum()),
        "excluded": excluded_now,
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
    return StageResult(table=table, stats=stats, state={"filter_probs.parquet": buf.getvalue()})
