"""The work of ``curate evaluate``: score a trained run on a split of a version, on every split (with the bias /
variance / data-mismatch diagnosis), or on a labeled source outside the workspace; the report files go into the run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import CurateError

if TYPE_CHECKING:
    from curate.learn.shards import ExportInfo
    from curate.stage import Context
    from curate.stages.evaluate import EvaluateConfig


def source_name(src: str) -> str:
    """A file-name-safe name for a source: its folder or file name without suffixes (``held-out``, ``list``)."""
    name = Path(str(src)).resolve().name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "src"


def _evaluate_source(loaded: Any, run: Path, cfg: EvaluateConfig, ctx: Context) -> dict[str, Any]:
    """Score ``cfg.src`` (a labeled source outside the workspace): ``<run>/eval-<name>/eval_<name>.json``, its
    confusion plot and ``predictions.parquet`` (every input, failed ones with their reason)."""
    import pyarrow.parquet as pq

    from curate.learn.metrics import write_report
    from curate.learn.predict import labeled_scores, predict_source

    table = predict_source(loaded, str(cfg.src), progress=lambda total: ctx.progress("predict", total))
    scores = labeled_scores(loaded, table)
    if scores is None:
        raise CurateError(
            f"{cfg.src}: no readable image has a label among the run's classes ({', '.join(loaded.classes)})",
            hint="give a labeled folder (SRC/<class>/...) or a manifest with a label column",
        )
    name = source_name(str(cfg.src))
    out_dir = (run if run.is_dir() else run.parent) / f"eval-{name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_dir / "predictions.parquet")
    skipped = {"errors": scores["errors"], "unlabeled": scores["unlabeled"], "unknown_labels": scores["unknown_labels"]}
    extra = {"run": str(run), "checkpoint": str(loaded.path), "source": str(cfg.src), "split": name, "skipped": skipped}
    m = write_report(out_dir, {name: scores}, loaded.classes, None, name=f"eval_{name}.json", extra=extra)[name]
    keys = ("n", "accuracy", "macro_f1", "roc_auc_ovr_macro", "topk_error", "per_class", "worst")
    return {"run": str(run), "version": None, "source": str(cfg.src), "split": name, "path": str(out_dir / f"eval_{name}.json"),
            "skipped": skipped, **{k: m[k] for k in keys}}  # fmt: skip


def evaluate_run(ctx: Context, cfg: EvaluateConfig, version: str | None) -> dict[str, Any]:
    """Score a run on a split of ``version`` (default: the one it was trained on) or on ``cfg.src``; writes
    ``eval_SPLIT.json`` and its confusion plot into the run."""
    from curate.learn.data import eval_loader, load_split
    from curate.learn.metrics import write_report
    from curate.learn.predict import load_run
    from curate.learn.shards import open_export
    from curate.learn.train import evaluate

    run = Path(cfg.run) if cfg.run else ctx.outputs.get("run")
    if run is None:
        raise CurateError("evaluate needs a run folder", hint="set run, or put a train step before evaluate")
    run = Path(run)
    loaded = load_run(run, cfg.which)
    if cfg.src is not None:
        return _evaluate_source(loaded, run, cfg, ctx)
    info = open_export(ctx.ws, version or loaded.meta["dataset_version"])
    if cfg.split == "all":
        return _evaluate_all(loaded, run, info, cfg, ctx)
    if cfg.split not in info.card["splits"]:
        raise CurateError(
            f"version {info.card['version']} has no {cfg.split!r} split", hint=f"splits: {', '.join(info.card['splits'])}"
        )
    if info.classes != loaded.classes:
        raise CurateError(f"the classes of {info.card['version']} differ from those {run} was trained on")
    with ctx.progress(f"decode {cfg.split}", info.card["splits"][cfg.split]) as advance:
        data = load_split(info.files(cfg.split, "parquet"), "parquet", int(loaded.meta["channels"]), loaded.size, advance=advance)
    ev = evaluate(loaded.model, eval_loader(data.labeled(), loaded.meta["normalization"]), loaded.device)
    out_dir = run if run.is_dir() else run.parent
    extra = {"run": str(run), "checkpoint": str(loaded.path), "dataset_version": info.card["version"], "split": cfg.split}
    m = write_report(out_dir, {cfg.split: ev}, loaded.classes, None, name=f"eval_{cfg.split}.json", extra=extra)[cfg.split]
    keys = ("n", "accuracy", "macro_f1", "roc_auc_ovr_macro", "topk_error", "per_class", "worst")
    path = str(out_dir / f"eval_{cfg.split}.json")
    return {"run": str(run), "version": info.card["version"], "split": cfg.split, "path": path, **{k: m[k] for k in keys}}


def _evaluate_all(loaded: Any, run: Path, info: ExportInfo, cfg: EvaluateConfig, ctx: Context) -> dict[str, Any]:
    """Score every split of the version (``eval_all.json``) and diagnose bias / variance / data mismatch."""
    from curate.learn.data import SPLITS, eval_loader, load_split
    from curate.learn.evaluation import evaluate
    from curate.learn.gaps import diagnose
    from curate.learn.metrics import write_report

    if info.classes != loaded.classes:
        raise CurateError(f"the classes of {info.card['version']} differ from those {run} was trained on")
    scored = {}
    for split in (s for s in SPLITS if s in info.card["splits"]):
        with ctx.progress(f"decode {split}", info.card["splits"][split]) as advance:
            data = load_split(info.files(split, "parquet"), "parquet", int(loaded.meta["channels"]), loaded.size, advance=advance)
        scored[split] = evaluate(loaded.model, eval_loader(data.labeled(), loaded.meta["normalization"]), loaded.device)
    errors = {s: 1.0 - ev["acc"] for s, ev in scored.items()}
    diag = diagnose(errors, cfg.human_error)
    out_dir = run if run.is_dir() else run.parent
    extra = {"run": str(run), "checkpoint": str(loaded.path), "dataset_version": info.card["version"], "split": "all",
             "errors": errors, "human_error": cfg.human_error, "diagnosis": diag}  # fmt: skip
    m = write_report(out_dir, scored, loaded.classes, None, name="eval_all.json", extra=extra)
    keys = ("n", "accuracy", "macro_f1", "roc_auc_ovr_macro", "topk_error")
    return {"run": str(run), "version": info.card["version"], "split": "all", "path": str(out_dir / "eval_all.json"),
            "metrics": {s: {k: v[k] for k in keys} for s, v in m.items()}, "errors": errors, "diagnosis": diag}  # fmt: skip
