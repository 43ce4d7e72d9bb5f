"""Pseudolabel: grow the labeled train set with confident, in-distribution predictions on the unlabeled pool.

Rows, in the parent version:

- labeled train rows (``status=ok``, a label that is not a pseudo-label, ``split=train``) train every round;
- val rows (labeled, ``split=val``) rank the rounds' models and calibrate the OOD filter; test rows are unused;
- the pool: ``ok`` rows without a label whose split is unset or ``train`` (pseudo-labels of an earlier run go
  back into the pool: a rerun starts from the given labels). Val and test rows are never pseudo-labeled.

The loop is ``curate.pseudoloop`` (rounds, the classifier filter, revocation, early stopping). The committed
version holds the pseudo-labels that trained the best round's model:

| column | meaning |
| --- | --- |
| label, label_source | the predicted class and ``pseudo:<round>`` on accepted rows (``split`` set to ``train``) |
| pseudo_round | the round since which the row's pseudo-label has been accepted (null: not accepted) |
| pseudo_predicted, pseudo_confidence | the best round's selection: argmax class and its probability (pool rows) |
| pseudo_status | ``accepted``, ``below_threshold``, ``ood``, ``over_quota`` (pool rows) |
| pseudo_ood_score | feature distance to the labeled rows / the OOD threshold (> 1 = out of distribution) |
| pseudo_revoked_round | the last round that revoked an earlier pseudo-label of the row (null: never) |

Nothing is dropped: rows that were not accepted stay unlabeled with their status. Every round's model is saved to
``out`` as ``model_round<r>.pt`` (round 0: supervised only) and the best one again as ``model_best.pt``, loadable
by ``curate evaluate``/``predict``/``filter``; ``state/pseudolabel.json`` holds the per-round report.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError, UsageError
from curate.schema import OK, conform
from curate.stage import no_progress
from curate.stages import StageResult

STAGE = "pseudolabel"
FILTERS = ("ood", "none")
RUNTIME = ("device",)  # settings that change the speed only: left out of the cache key


@dataclass(frozen=True)
class PseudolabelConfig:
    """Settings of ``curate pseudolabel`` (defaults < curate.toml ``[pseudolabel]`` < CLI flags).

    Attributes:
        ratio: ``L:P`` labeled to pseudo-labeled rows in every training batch (``curate.learn.selftrain``).
        rounds: selection + retraining rounds after the supervised round 0.
        threshold: confidence bar of an easy class; harder classes get FlexMatch's lower bar (``curate.pseudoselect``).
        min_threshold: no class's bar goes below this.
        per_class_top: instead of thresholds, the K most confident predictions of each class.
        filter: ``ood`` (refuse rows far from the labeled rows in feature space) or ``none``.
        ood_quantile: the val rows' distance quantile that is the OOD threshold.
        max_pseudo: cap on accepted rows (shared out equally among classes); None: no cap.
        balance: no class takes more than this times the median class's candidates.
        patience: rounds without a better val accuracy before stopping.
        min_steps: optimizer steps per round at least (small labeled sets get more epochs).
        truth: a file (Parquet/CSV: ``sample_id`` or ``source``, and ``label``) with hidden pool labels, for the
            per-round pseudo-label accuracy in benchmarks; never used for selection.
        out: folder for the models (default ``models/<parent>-pseudolabel``).
    """

    ratio: str = "10:1"
    rounds: int = 3
    threshold: float = 0.95
    min_threshold: float = 0.8
    per_class_top: int | None = None
    filter: str = "ood"
    ood_quantile: float = 0.99
    ood_k: int = 5
    max_pseudo: int | None = None
    balance: float = 2.0
    patience: int = 1
    arch: str = "small-cnn"
    epochs: int = 10
    min_steps: int = 500
    batch_size: int = 128
    lr: float = 3e-3
    augment: str = "none"
    image_size: int | None = None
    device: str = "auto"
    seed: int = 0
    truth: str | None = None
    out: str | None = None


def check_config(cfg: PseudolabelConfig) -> None:
    """Raises ``UsageError`` for impossible settings, before any work starts."""
    from curate.learn.selftrain import parse_ratio
    from curate.learn.train import check_config as check_train

    parse_ratio(cfg.ratio)
    checks = [
        (cfg.rounds >= 1, f"--rounds {cfg.rounds}: give 1 or more"),
        (0 < cfg.threshold <= 1 and 0 <= cfg.min_threshold <= cfg.threshold, "--threshold must be in (0, 1] and >= --min-threshold"),
        (cfg.per_class_top is None or cfg.per_class_top >= 1, "--per-class-top must be at least 1"),
        (cfg.filter in FILTERS, f"--filter {cfg.filter!r}: choose from {', '.join(FILTERS)}"),
        (0 < cfg.ood_quantile <= 1 and cfg.ood_k >= 1, "--ood-quantile must be in (0, 1] and ood_k >= 1"),
        (cfg.max_pseudo is None or cfg.max_pseudo >= 0, "--max-pseudo must be >= 0"),
        (cfg.balance >= 0 and cfg.patience >= 1 and cfg.min_steps >= 1, "balance >= 0, patience >= 1 and min_steps >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    try:
        check_train(_train_config(cfg))
    except CurateError as exc:
        raise UsageError(exc.message) from exc


def _train_config(cfg: PseudolabelConfig) -> Any:
    from curate.learn.train import TrainConfig

    # patience 0 inside a round: the round's length is fixed by min_steps/epochs; the best val epoch is kept
    return TrainConfig(
        arch=cfg.arch,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        augment=cfg.augment,
        device=cfg.device,
        seed=cfg.seed,
        patience=0,
        image_size=cfg.image_size,
    )


def config_dict(cfg: PseudolabelConfig) -> dict[str, Any]:
    """The resolved config stored with the version (the cache key); the device is left out."""
    d = dataclasses.asdict(cfg)
    for key in RUNTIME:
        d.pop(key)
    if cfg.truth:
        d["truth_sha256"] = _sha(cfg.truth)
    return d


def _sha(path: str) -> str:
    from curate.stages.filter.scoring import file_sha256

    if not Path(path).exists():
        raise UsageError(f"--truth {path}: no such file")
    return file_sha256(path)


def _masks(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean ``(N,)`` masks: labeled train, val, pool (module doc)."""
    ok = np.asarray(pc.fill_null(pc.equal(table.column("status"), OK), False))
    src = table.column("label_source").to_pylist()
    pseudo = np.array([s is not None and str(s).startswith("pseudo:") for s in src], bool)
    has_label = np.asarray(pc.is_valid(table.column("label"))) & ~pseudo
    split = np.array(table.column("split").to_pylist(), dtype=object)
    unsplit = np.array([s is None for s in split], bool)
    return ok & has_label & (split == "train"), ok & has_label & (split == "val"), ok & ~has_label & (unsplit | (split == "train"))


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
    ws: Any, parent: pa.Table | None, parent_id: str | None, cfg: PseudolabelConfig, *, log: Any = None, progress: Any = None
) -> StageResult:
    """Run the loop on ``parent`` and return the table with the pseudo-label columns (module doc).

    Raises:
        CurateError: no versions, no labeled train rows, a single class, an empty pool, undecodable blobs.
    """
    from curate.learn.data import DecodedSplit, fit_normalization
    from curate.learn.selftrain import parse_ratio
    from curate.pseudoloop import LoopSettings, run_loop
    from curate.stages.clean.labelissues import geometry, load_images

    check_config(cfg)
    if parent is None:
        raise CurateError("the workspace has no versions yet", hint="run `curate ingest SRC` first")
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    table = conform(parent)
    lab_m, val_m, pool_m = _masks(table)
    if not lab_m.any():
        raise CurateError("no labeled train rows to learn from", hint="run `curate split` first (pseudolabel trains on split=train)")
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
        bar = progress or no_progress  # the one Progress shape; None: silent
        return load_images(ws, table.take(pa.array(pos)).select(cols), channels, size, progress=bar, description=f"decode {what}")

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
    settings = LoopSettings(
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
    )
    result = run_loop(
        lab, val, pool, classes, _train_config(cfg), settings, normalization=normalization, truth=truth, log=log, progress=progress
    )
    out = Path(cfg.out) if cfg.out else Path("models") / f"{parent_id}-pseudolabel"
    _save_models(out, result, normalization, parent_id)
    table = _annotate(table, pool_pos, result, classes)
    report = {
        "classes": classes,
        "best_round": result.best_round,
        "rounds": result.rounds,
        "models": str(out),
        "ratio": cfg.ratio,
        "labeled": len(lab),
        "val": 0 if val is None else len(val),
        "pool": len(pool_pos),
    }
    accepted = int(result.selection.accepted.sum()) if result.selection is not None else 0
    stats = {
        "pool": int(len(pool_pos)),
        "labeled_train": int(len(lab_pos)),
        "val": report["val"],
        "accepted": accepted,
        "best_round": result.best_round,
        "rounds_run": len(result.rounds) - 1,
        "val_accuracy_supervised": result.rounds[0]["val_accuracy"],
        "val_accuracy_best": next(r["val_accuracy"] for r in result.rounds if r["round"] == result.best_round),
        "models": str(out),
        "rounds": result.rounds,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return StageResult(table, stats, {"pseudolabel.json": json.dumps(report, indent=2).encode()})


def _save_models(out: Path, result: Any, normalization: dict[str, Any], parent_id: str | None) -> None:
    """``model_best.pt`` (the best round) and ``model_round<r>.pt`` for every round (round 0: supervised only), in
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
            "pseudolabel_round": result.best_round if name == "best" else int(name.removeprefix("round")),
        }
        save_checkpoint(
            out / f"model_{name}.pt", {"format": CKPT_FORMAT, "model": res["model"].state_dict(), "meta_json": json.dumps(meta)}
        )
        write_json(out / f"meta_{name}.json", meta)
    write_json(out / "rounds.json", result.rounds)


def _annotate(table: pa.Table, pool_pos: np.ndarray, result: Any, classes: list[str]) -> pa.Table:
    """Write the pseudo-label columns (module doc) for the pool rows; every other row keeps nulls."""
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
    for name, col in new.items():
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, col)
        else:
            table = table.append_column(name, col)
    return table
