"""The training-run section of the report: curves, metrics, confusion matrices and the worst errors of a run.

A run folder (``curate train --out``, default ``<workspace>/models/<version>-<arch>``) holds ``metrics.json`` (``history``: one
row per epoch; ``splits``: per split ``accuracy``, ``macro_f1``, ``per_class``, ``confusion``, ``worst``: the
misclassified samples the model was surest about), ``meta_best.json``/``meta_last.json`` (config, classes,
``dataset_version``, ``history``) and ``model_best.pt``. When ``metrics.json`` is missing (a run killed before its
final scoring) the section loads the checkpoint and predicts the version's val/test rows itself (at most
``PREDICT_ROWS`` per split, a seeded sample), so the worst errors are shown either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.report.collect import Context, Section, omitted, section
from curate.report.gallery import item, rows_of, sample_table
from curate.schema import OK

PREDICT_ROWS = 2000
_RUN_FILES = ("metrics.json", "meta_best.json", "meta_last.json")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_info(run: Path) -> dict[str, Any] | None:
    """``metrics.json`` of a run, else its newest ``meta_*.json`` (``{"meta": ...}`` marks the latter); None if neither."""
    metrics = _read_json(run / "metrics.json")
    if metrics is not None:
        return metrics
    for name in ("meta_last.json", "meta_best.json"):
        meta = _read_json(run / name)
        if meta is not None:
            return {
                "meta": meta,
                "dataset_version": meta.get("dataset_version"),
                "history": meta.get("history") or [],
                "classes": meta.get("classes") or [],
                "config": meta.get("config") or {},
            }
    return None


#: Where ``curate train`` put its runs before the workspace held them (``ws.models_dir()``): relative to the working
#: folder; the report still looks there when the workspace has no ``models/``.
LEGACY_MODELS = Path("models")


def find_run(vid: str, run: Path | None, models: Path = LEGACY_MODELS) -> tuple[Path | None, str]:
    """The run folder to report on and, when there is none, why.

    Without ``run``: the newest folder under ``models`` (by the time its run files were written) whose dataset version
    is ``vid``.

    Raises:
        CurateError: ``run`` is not a folder, or holds none of ``metrics.json``/``meta_*.json``.
    """
    if run is not None:
        if not run.is_dir():
            raise CurateError(f"training run {run} does not exist", hint="pass the folder `curate train --out` wrote")
        if not any((run / n).exists() for n in _RUN_FILES):
            raise CurateError(f"{run} is not a training run (no metrics.json or meta_*.json)", hint="pass a `curate train` run folder")
        return run, ""
    if not models.is_dir():
        return None, f"no --run given and no {models}/ folder (`curate train`)"
    found = []
    for d in sorted(p for p in models.iterdir() if p.is_dir()):
        info = run_info(d)
        if info is not None and info.get("dataset_version") == vid:
            mtime = max((d / n).stat().st_mtime for n in _RUN_FILES if (d / n).exists())
            found.append((mtime, d.name, d))
    if not found:
        return None, f"no run in {models}/ was trained on {vid} (`curate train`, or pass --run)"
    return max(found)[2], ""


def _predicted_splits(ctx: Context, run: Path, vid: str) -> tuple[dict[str, Any], list[str]]:
    """Score the run's best checkpoint on the version's val/test rows (a fallback when metrics.json is missing)."""
    import numpy as np

    from curate.learn.metrics import classification_metrics, worst_samples
    from curate.learn.predict import load_run, predict_bytes

    loaded = load_run(run, device="cpu")
    classes = loaded.classes
    index = {c: i for i, c in enumerate(classes)}
    t = ctx.ws.samples(vid, columns=["sample_id", "pack", "label", "split", "status"])
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        mask = pc.and_(pc.equal(t.column("status"), OK), pc.equal(pc.fill_null(t.column("split"), ""), split))
        mask = pc.and_(mask, pc.and_(pc.is_in(t.column("label"), pa.array(classes, pa.string())), pc.is_valid(t.column("pack"))))
        rows = rows_of(sample_table(t.filter(pc.fill_null(mask, False)), PREDICT_ROWS, ctx.seed), ("sample_id", "pack", "label"))
        if not rows:
            continue
        blobs = ctx.ws.blobs.get_many([r["sample_id"] for r in rows], [r["pack"] for r in rows])
        rows = [r for r in rows if r["sample_id"] in blobs]
        probs = predict_bytes(loaded, [blobs[r["sample_id"]] for r in rows])
        y = np.asarray([index[r["label"]] for r in rows], np.int64)
        m = classification_metrics(y, probs, classes)
        m["worst"] = worst_samples([r["sample_id"] for r in rows], y, probs, classes, n=ctx.max_gallery)
        out[split] = m
    return out, classes


def training(ctx: Context, folder: Path | None, why: str = "") -> Section:
    """Curves, metrics per split, confusion matrices and the most confident mistakes of the run in ``folder``
    (``find_run``'s answer; ``why`` says why there is none)."""
    from curate.report import plots

    sid, title = "training", "Training run"
    if folder is None:
        return omitted(sid, title, why)
    info = run_info(folder) or {}
    run_vid = info.get("dataset_version") or ctx.vid
    splits, classes = info.get("splits") or {}, list(info.get("classes") or [])
    note = ""
    if not splits and any((folder / f"model_{w}.pt").exists() for w in ("best", "last")):
        try:
            splits, classes = _predicted_splits(ctx, folder, run_vid if run_vid in ctx.ws.version_ids() else ctx.vid)
            note = f" No metrics.json: val/test scored here with the checkpoint (at most {PREDICT_ROWS} rows per split)."
        except (CurateError, OSError, RuntimeError, KeyError, ValueError) as exc:
            note = f" No metrics.json, and the checkpoint could not be scored: {exc}."
    cfg = info.get("config") or {}
    best = info.get("best") or {}
    pairs = [
        ("run", str(folder)),
        ("dataset version", run_vid + ("" if run_vid == ctx.vid else f" (this report: {ctx.vid})")),
        ("arch", cfg.get("arch", "?")),
        ("epochs run", f"{len(info.get('history') or [])} of {cfg.get('epochs', '?')}"),
        ("stopped", info.get("stopped", "?")),
        ("best epoch", best.get("epoch", "?")),
        ("device", info.get("device", "?")),
        ("parameters", f"{info['params']:,}" if isinstance(info.get("params"), int) else "?"),
    ]
    blocks: list[dict[str, Any]] = [{"kind": "kv", "pairs": pairs}]
    if splits:
        head = ["split", "n", "accuracy", "macro-F1", "ROC AUC (macro)", "top-k error"]
        rows = [
            [
                s,
                m.get("n"),
                _n(m.get("accuracy")),
                _n(m.get("macro_f1")),
                _n(m.get("roc_auc_ovr_macro")),
                ", ".join(f"top-{k} {v:.3f}" for k, v in (m.get("topk_error") or {}).items() if k != "1"),
            ]
            for s, m in splits.items()
        ]
        blocks.append({"kind": "table", "head": head, "rows": rows})
    history = info.get("history") or []
    if history:
        blocks.append({"kind": "plot", "uri": plots.curves(history), "alt": "training curves"})
    for s, m in splits.items():
        if m.get("confusion") and classes:
            blocks.append(
                {
                    "kind": "plot",
                    "uri": plots.confusion(m["confusion"], classes, f"{s}: accuracy {_f(m.get('accuracy'))}"),
                    "alt": f"confusion matrix {s}",
                }
            )
    focus = "test" if "test" in splits else next(iter(splits), None)
    if focus is not None:
        per = splits[focus].get("per_class") or {}
        rows = [[c, _n(v.get("precision")), _n(v.get("recall")), _n(v.get("f1")), v.get("support")] for c, v in per.items()]
        blocks.append(
            {
                "kind": "table",
                "head": ["class", "precision", "recall", "F1", "support"],
                "rows": rows[:200],
                "caption": f"per class, {focus}",
            }
        )
        blocks.extend(_worst_gallery(ctx, run_vid, focus, splits[focus].get("worst") or []))
    return section(sid, title, f"Run {folder}.{note}", blocks)


def _f(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _n(value: Any) -> float | str:
    """A table cell: the number (the renderer right-aligns and rounds it) or '-'."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _worst_gallery(ctx: Context, vid: str, split: str, worst: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The most confident mistakes as a gallery (true vs predicted), with their packs looked up in ``vid``."""
    worst = worst[: ctx.max_gallery]
    if not worst:
        return []
    t = ctx.ws.samples(vid, columns=["sample_id", "pack"]) if vid in ctx.ws.version_ids() else ctx.table.select(["sample_id", "pack"])
    ids = pa.array([w["sample_id"] for w in worst], pa.string())
    sub = t.filter(pc.is_in(t.column("sample_id"), ids))
    packs = dict(zip(sub.column("sample_id").to_pylist(), sub.column("pack").to_pylist(), strict=True))
    items = [
        item(
            {"sample_id": w["sample_id"], "pack": packs.get(w["sample_id"])},
            f"true: {w.get('true')}",
            f"predicted: {w.get('predicted')} {_f(w.get('confidence'))}",
            f"p(true) {_f(w.get('p_true'))}",
        )
        for w in worst
    ]
    return [
        {"kind": "gallery", "title": f"worst errors on {split}: the {len(items)} mistakes the model was surest about", "items": items}
    ]
