"""The work of ``curate pseudolabel``: decode the rows, run the loop (``loop``), save the models, write the columns.

The rows it reads and the columns it writes are described in ``curate.stages.pseudolabel``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError, UsageError
from curate.schema import OK, conform
from curate.stage import StageResult, no_progress
from curate.stages.pseudolabel import PseudolabelConfig, check, train_config

if TYPE_CHECKING:
    from curate.stage import Progress
    from curate.stages.pseudolabel.loop import LoopSettings
    from curate.workspace import Workspace


def role_masks(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean ``(N,)`` masks: labeled train, val, pool (module doc)."""
    ok = np.asarray(pc.fill_null(pc.equal(table.column("status"), OK), False))
    src = table.column("label_source").to_pylist()
    pseudo = np.array([s is not None and str(s).startswith("pseudo:") for s in src], bool)
    has_label = np.asarray(pc.is_valid(table.column("label"))) & ~pseudo
    split = np.array(table.column("split").to_pylist(), dtype=object)
    unsplit = np.array([s is None for s in split], bool)
    return ok & has_label & (split == "train"), ok & has_label & (split == "val"), ok & ~has_label & (unsplit | (split == "train"))


def labeled_parent(parent: pa.Table | None) -> tuple[pa.Table, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The conformed parent table and its ``role_masks``.

    Raises:
        CurateError: no version yet, or no labeled train rows to learn from.
    """
    if parent is None:
        raise CurateError("the workspace has no versions yet", hint="run `curate ingest SRC` first")
    table = conform(parent)
    masks = role_masks(table)
    if not masks[0].any():
        raise CurateError("no labeled train rows to learn from", hint="run `curate split` first (pseudolabel trains on split=train)")
    return table, masks


def _read_truth(path: str, table: pa.Table, pool_pos: np.ndarray, classes: list[str]) -> np.ndarray:
    """Hidden pool labels as class indices (-1 where unknown or not a class of the labeled rows)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        t = pcsv.read_csv(path) if str(path).lower().endswith(".csv") else pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UsageError(f"--truth {path}: cannot read: {str(exc).splitlines()[0]}") from exc
    key = "sample_id" if "sample_id" in t.column_names else "source"
    if key not in t.column_names or "label" not in t.column_names:
        raise UsageError(f"--truth {path}: needs a label column and a sample_id or source column")
    known = dict(zip(t.column(key).to_pylist(), (str(v) for v in t.column("label").to_pylist()), strict=True))
    keys = table.column(key).take(pa.array(pool_pos)).to_pylist()
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(known.get(k, ""), -1) for k in keys], np.int64)


def run_pseudolabel(
    ws: Workspace,
    parent: pa.Table | None,
    parent_id: str | None,
    cfg: PseudolabelConfig,
    *,
    out: Path,
    log: Callable[[str], None] | None = None,
    progress: Progress = no_progress,
) -> StageResult:
    """Run the loop on ``parent`` and return the table with the pseudo-label columns (``curate.stages.pseudolabel``).

    Args:
        out: the folder for the rounds' models (``cfg.out``, or a workspace model folder: ``Workspace.model_dir``).

    Raises:
        CurateError: no versions, no labeled train rows, a single class, an empty pool, undecodable blobs.
    """
    from curate.learn.blobimages import geometry, load_images
    from curate.learn.data import DecodedSplit, fit_normalization
    from curate.stages.pseudolabel.agree import knn_votes
    from curate.stages.pseudolabel.loop import run_loop

    check(cfg)
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    table, (lab_m, val_m, pool_m) = labeled_parent(parent)
    if not pool_m.any():
        raise CurateError(
            "no unlabeled rows to pseudo-label", hint="ingest a pool with `curate ingest SRC --unlabeled`, or use --pool"
        )
    labels = table.column("label").to_pylist()
    classes = sorted({labels[i] for i in np.flatnonzero(lab_m)})
    if len(classes) < 2:
        raise CurateError(f"the labeled train rows have {len(classes)} class; pseudo-labeling needs at least 2")
    lab_pos, val_pos, pool_pos = (np.flatnonzero(m) for m in (lab_m, val_m, pool_m))
    cols = ["sample_id", "pack", "mode", "width", "height"]
    channels, size = geometry(table.take(pa.array(lab_pos)).select(cols), cfg.image_size)
    index = {c: i for i, c in enumerate(classes)}

    def decoded(pos: np.ndarray, what: str) -> np.ndarray:
        return load_images(ws, table.take(pa.array(pos)).select(cols), channels, size,
                           progress=progress, description=f"decode {what}")  # fmt: skip

    ids = table.column("sample_id").to_pylist()
    lab = DecodedSplit(decoded(lab_pos, "labeled"), np.array([index[labels[i]] for i in lab_pos]), [ids[i] for i in lab_pos])
    # val rows whose class the train rows lack cannot be scored by the model: left out of val
    val_keep = val_pos[[labels[i] in index for i in val_pos]] if len(val_pos) else val_pos
    val = (
        DecodedSplit(decoded(val_keep, "val"), np.array([index[labels[i]] for i in val_keep]), [ids[i] for i in val_keep])
        if len(val_keep)
        else None
    )
    pool = decoded(pool_pos, "pool")
    truth = _read_truth(cfg.truth, table, pool_pos, classes) if cfg.truth else None
    normalization = {**fit_normalization(lab.images), "source": "labeled train rows (curate pseudolabel)"}
    votes = knn_votes(ws, table, lab_pos, lab.labels, pool_pos, len(classes), cfg, progress) if cfg.select == "knn" else None
    result = run_loop(lab, val, pool, classes, train_config(cfg), _settings(cfg), normalization=normalization, truth=truth,
                      knn_vote=votes.vote if votes else None, log=log, progress=progress)  # fmt: skip
    _save_models(out, result, normalization, parent_id)
    table = _annotate(table, pool_pos, result, classes, votes.vote if votes else None)
    n_val = 0 if val is None else len(val)
    stats, report = _report(result, classes, out, cfg.ratio, len(lab_pos), n_val, len(pool_pos))
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    if votes is not None:
        stats["knn"] = report["knn"] = votes.info
    state = {**(votes.state if votes else {}), "pseudolabel.json": json.dumps(report, indent=2).encode()}
    return StageResult(table, stats, state)


def _settings(cfg: PseudolabelConfig) -> LoopSettings:
    """The loop's knobs (``LoopSettings``) from the stage's settings."""
    from curate.learn.selftrain import parse_ratio
    from curate.stages.pseudolabel.loop import LoopSettings

    return LoopSettings(
        ratio=parse_ratio(cfg.ratio),
        rounds=cfg.rounds,
        threshold=cfg.threshold,
        min_threshold=cfg.min_threshold,
        per_class_top=cfg.per_class_top,
        ood_filter=cfg.filter == "ood",
        ood_quantile=cfg.ood_quantile,
        ood_k=cfg.ood_k,
        max_pseudo=cfg.max_pseudo,
        balance=cfg.balance,
        patience=cfg.patience,
        min_steps=cfg.min_steps,
        stable=cfg.stable,
        consistency=consistency_settings(cfg),
    )


def consistency_settings(cfg: PseudolabelConfig) -> Any:
    """The ``ConsistencySettings`` of ``--consistency fixmatch`` (None with ``none``)."""
    from curate.learn.consistency import ConsistencySettings

    if cfg.consistency == "none":
        return None
    return ConsistencySettings(cfg.consistency_weight, cfg.consistency_threshold, cfg.unlabeled_ratio, cfg.consistency_strength)


def _report(
    result: Any, classes: list[str], out: Path, ratio: str, n_lab: int, n_val: int, n_pool: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The version's stats and ``state/pseudolabel.json``'s per-round report."""
    report = {
        "classes": classes,
        "chosen_round": result.chosen_round,
        "stopped": result.stopped,
        "rounds": result.rounds,
        "models": str(out),
        "ratio": ratio,
        "labeled": n_lab,
        "val": n_val,
        "pool": n_pool,
    }
    accepted = int(result.selection.accepted.sum()) if result.selection is not None else 0
    stats = {
        "pool": n_pool,
        "labeled_train": n_lab,
        "val": report["val"],
        "accepted": accepted,
        "chosen_round": result.chosen_round,
        "rounds_run": len(result.rounds) - 1,
        "stopped": result.stopped,
        "val_accuracy_supervised": result.rounds[0]["val_accuracy"],
        "val_accuracy_chosen": next(r["val_accuracy"] for r in result.rounds if r["round"] == result.chosen_round),
        "models": str(out),
        "rounds": result.rounds,
    }
    return stats, report


def _save_models(out: Path, result: Any, normalization: dict[str, Any], parent_id: str | None) -> None:
    """``model_best.pt`` (the chosen round) and ``model_round<r>.pt`` for every round (round 0: supervised only), in
    ``curate train``'s format, so any round can be scored on test afterwards (``curate evaluate``)."""
    from curate.learn.runtime import CKPT_FORMAT, save_checkpoint, write_json

    out.mkdir(parents=True, exist_ok=True)
    for name, res in result.models.items():
        meta = {
            **res["meta"],
            "normalization": {k: normalization[k] for k in ("mean", "std", "channels")},
            "dataset_version": parent_id,
            "best": res["best"],
            "history": res["history"],
            "pseudolabel_round": result.chosen_round if name == "best" else int(name.removeprefix("round")),
        }
        save_checkpoint(
            out / f"model_{name}.pt", {"format": CKPT_FORMAT, "model": res["model"].state_dict(), "meta_json": json.dumps(meta)}
        )
        write_json(out / f"meta_{name}.json", meta)
    write_json(out / "rounds.json", result.rounds)


def _annotate(table: pa.Table, pool_pos: np.ndarray, result: Any, classes: list[str], vote: np.ndarray | None = None) -> pa.Table:
    """Write the pseudo-label columns (module doc) for the pool rows; every other row keeps nulls (``pseudo_knn_vote``:
    only with a kNN ``vote``, int ``(P,)`` per pool row)."""
    n = table.num_rows
    sel = result.selection

    def column(values: list[Any], typ: pa.DataType) -> pa.Array:
        full: list[Any] = [None] * n
        for p, v in zip(pool_pos.tolist(), values, strict=True):
            full[p] = v
        return pa.array(full, typ)

    label = table.column("label").to_pylist()
    source = table.column("label_source").to_pylist()
    split = table.column("split").to_pylist()
    for p in pool_pos.tolist():  # an earlier run's pseudo-labels go back to the pool
        if source[p] is not None and str(source[p]).startswith("pseudo:"):
            label[p] = source[p] = None
    if sel is not None:
        for i, p in enumerate(pool_pos.tolist()):
            if sel.accepted[i]:
                label[p] = classes[int(sel.predicted[i])]
                source[p] = f"pseudo:{int(result.first_round[i])}"
                split[p] = "train"
    new = {
        "label": pa.array(label, pa.string()),
        "label_source": pa.array(source, pa.string()),
        "split": pa.array(split, pa.string()),
        "pseudo_round": column(
            [int(v) if sel is not None and sel.accepted[i] else None for i, v in enumerate(result.first_round)], pa.int32()
        ),
        "pseudo_predicted": column(
            [classes[int(c)] for c in sel.predicted] if sel is not None else [None] * len(pool_pos), pa.string()
        ),
        "pseudo_confidence": column(sel.confidence.tolist() if sel is not None else [None] * len(pool_pos), pa.float64()),
        "pseudo_status": column(list(sel.status) if sel is not None else ["no_gain"] * len(pool_pos), pa.string()),
        "pseudo_ood_score": column(result.ood_score.tolist(), pa.float64()),
        "pseudo_revoked_round": column([int(v) or None for v in result.revoked_round], pa.int32()),
    }
    if vote is not None:
        new["pseudo_knn_vote"] = column([classes[int(c)] for c in vote], pa.string())
    elif "pseudo_knn_vote" in table.column_names:  # an earlier run's votes do not describe this run
        new["pseudo_knn_vote"] = pa.nulls(n, pa.string())
    for name, col in new.items():
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, col)
        else:
            table = table.append_column(name, col)
    return table
