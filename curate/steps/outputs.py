"""Output steps: ``export``, ``train``, ``evaluate`` and ``report`` read a version and write files; none commits one.

In a pipeline (``ctx.reuse``) each proves from its own files that its work is already done, so that a rerun skips
it: an export whose ``dataset.json`` names the same version, lineage and shard settings and whose every indexed
shard is there with its size; a training run folder whose ``metrics.json`` holds the same dataset version and
settings (a run with checkpoints but no final metrics is resumed); a report recorded in the previous run's journal
for the same version, run and settings whose file is untouched since. A pipeline's training runs go to
``<workspace>/models/<version>-<arch>-<settings hash>`` unless ``out`` is set, so a workspace holds its own runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import CurateError, UsageError
from curate.steps import StepContext
from curate.workspace import config_sha256


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """The training settings that decide the model: no dataset version, no runtime knobs (device, workers ...)."""
    from curate.learn.train import RUNTIME

    return json.loads(json.dumps({k: v for k, v in config.items() if k not in RUNTIME and k != "version"}))


def _finished_run(run_dir: Path, cfg: Any, vid: str) -> dict[str, Any] | None:
    """``curate train``'s result rebuilt from ``metrics.json`` when the folder holds this run finished, else None.

    Raises:
        CurateError: the folder holds a run of another version or other settings.
    """
    meta = run_dir / "metrics.json"
    if not meta.exists():
        return None
    m = json.loads(meta.read_text())
    if m.get("dataset_version") != vid or _settings(m.get("config", {})) != _settings(dataclasses.asdict(cfg)):
        raise CurateError(f"{run_dir} holds a training run of other data or settings", hint="set train.out to another folder")
    keys = ("accuracy", "macro_f1", "roc_auc_ovr_macro", "topk_error")
    return {"run": str(run_dir), "version": vid, "arch": m["config"]["arch"], "device": m.get("device"), "amp": m.get("amp"),
            "epochs_run": len(m.get("history", [])), "stopped": m.get("stopped"), "best_epoch": (m.get("best") or {}).get("epoch"),
            "train_seconds": m.get("train_seconds"), "cached": True,
            "metrics": {s: {k: v.get(k) for k in keys} for s, v in m.get("splits", {}).items()},
            "errors": m.get("errors"), "diagnosis": _diagnosis(m.get("errors"))}  # fmt: skip


def _diagnosis(errors: dict[str, Any] | None) -> dict[str, Any] | None:
    from curate.learn.gaps import diagnose

    return diagnose(errors) if errors else None


def train_step(ws: Any, cfg: Any, ctx: StepContext, *, sanity: bool = False) -> dict[str, Any]:
    """``curate train``: fit on the version's shards (exported when missing), score val/test, write the run folder.

    Pipeline mode: skip a finished run of the same version and settings, resume an unfinished one.
    """
    from curate.learn.train import train
    from curate.ui import progress

    if ctx.reuse:
        vid = ws.resolve(ctx.version())
        cfg = dataclasses.replace(cfg, version=vid)
        if cfg.out is None:
            sha = config_sha256(_settings(dataclasses.asdict(cfg)))[:8]
            cfg = dataclasses.replace(cfg, out=str(ws.root / "models" / f"{vid}-{cfg.arch}-{sha}"))
        run_dir = Path(cfg.out)
        done = _finished_run(run_dir, cfg, vid)
        if done is not None:
            return done
        last = run_dir / "meta_last.json"
        if last.exists():
            saved = json.loads(last.read_text())
            if saved.get("dataset_version") != vid or _settings(saved.get("config", {})) != _settings(dataclasses.asdict(cfg)):
                raise CurateError(f"{run_dir} holds a training run of other data or settings", hint="set train.out to another folder")
            cfg = dataclasses.replace(cfg, resume=True)
    res = train(ws, cfg, log=ctx.log, sanity=sanity, progress=lambda d, n: progress(d, n, enabled=ctx.progress))
    return {**res, "cached": False} if ctx.reuse else res


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of ``curate evaluate`` (a pipeline's ``evaluate`` step).

    Attributes:
        run: run folder or ``model_*.pt``; in a pipeline, default the run its train step made.
        split: the split scored, or ``all``: every split of the version (train, train_dev, val, test) with the
            bias / variance / data-mismatch diagnosis of their errors.
        which: ``best`` or ``last`` checkpoint.
        version: the dataset version scored (default: the one the run was trained on).
        src: instead of a split: a labeled folder or manifest outside the workspace (anything ingest reads),
            scored the same way; its files go to ``<run>/eval-<name>/``.
        human_error: the human-level error (0..1) the diagnosis of ``split = "all"`` measures avoidable bias against.
    """

    run: str | None = None
    split: str = "test"
    which: str = "best"
    version: str | None = None
    src: str | None = None
    human_error: float | None = None


def check_evaluate(cfg: EvaluateConfig) -> None:
    """Reject an unknown checkpoint choice, and ``src`` with ``version`` (exit code 2)."""
    if cfg.which not in ("best", "last"):
        raise UsageError(f"--which {cfg.which!r}: choose best or last")
    if cfg.src is not None and cfg.version is not None:
        raise UsageError("--src scores a source outside the workspace: drop --version")
    check_human_error(cfg.human_error)


def check_human_error(value: float | None) -> None:
    """A human-level error is a rate in [0, 1) (exit code 2 otherwise)."""
    if value is not None and not 0 <= value < 1:
        raise UsageError(f"--human-error {value}: give an error rate in [0, 1), e.g. 0.02 for 2%")


def source_name(src: str) -> str:
    """A file-name-safe name for a source: its folder or file name without suffixes (``held-out``, ``list``)."""
    import re

    name = Path(str(src)).resolve().name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "src"


def _evaluate_source(loaded: Any, run: Path, cfg: EvaluateConfig, ctx: StepContext) -> dict[str, Any]:
    """Score ``cfg.src`` (a labeled source outside the workspace): ``<run>/eval-<name>/eval_<name>.json``, its
    confusion plot and ``predictions.parquet`` (every input, failed ones with their reason)."""
    import pyarrow.parquet as pq

    from curate.learn.metrics import write_report
    from curate.learn.predict import labeled_scores, predict_source

    table = predict_source(loaded, str(cfg.src), progress=ctx.bar("predict"))
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


def evaluate_step(ws: Any, cfg: EvaluateConfig, ctx: StepContext) -> dict[str, Any]:
    """``curate evaluate``: score a run on a split (or on ``cfg.src``); writes ``eval_SPLIT.json`` and its confusion plot
    into the run."""
    from curate.learn.data import eval_loader, load_split
    from curate.learn.metrics import write_report
    from curate.learn.predict import load_run
    from curate.learn.shards import open_export
    from curate.learn.train import evaluate
    from curate.ui import progress

    run = Path(cfg.run) if cfg.run else ctx.outputs.get("run")
    if run is None:
        raise CurateError("evaluate needs a run folder", hint="set run, or put a train step before evaluate")
    run = Path(run)
    loaded = load_run(run, cfg.which)
    if cfg.src is not None:
        return _evaluate_source(loaded, run, cfg, ctx)
    info = open_export(ws, cfg.version or loaded.meta["dataset_version"])
    if cfg.split == "all":
        return _evaluate_all(loaded, run, info, cfg, ctx)
    if cfg.split not in info.card["splits"]:
        raise CurateError(
            f"version {info.card['version']} has no {cfg.split!r} split", hint=f"splits: {', '.join(info.card['splits'])}"
        )
    if info.classes != loaded.classes:
        raise CurateError(f"the classes of {info.card['version']} differ from those {run} was trained on")
    with progress(f"decode {cfg.split}", info.card["splits"][cfg.split], enabled=ctx.progress) as advance:
        data = load_split(info.files(cfg.split, "parquet"), "parquet", int(loaded.meta["channels"]), loaded.size, advance=advance)
    ev = evaluate(loaded.model, eval_loader(data.labeled(), loaded.meta["normalization"]), loaded.device)
    out_dir = run if run.is_dir() else run.parent
    extra = {"run": str(run), "checkpoint": str(loaded.path), "dataset_version": info.card["version"], "split": cfg.split}
    m = write_report(out_dir, {cfg.split: ev}, loaded.classes, None, name=f"eval_{cfg.split}.json", extra=extra)[cfg.split]
    keys = ("n", "accuracy", "macro_f1", "roc_auc_ovr_macro", "topk_error", "per_class", "worst")
    path = str(out_dir / f"eval_{cfg.split}.json")
    return {"run": str(run), "version": info.card["version"], "split": cfg.split, "path": path, **{k: m[k] for k in keys}}


def _evaluate_all(loaded: Any, run: Path, info: Any, cfg: EvaluateConfig, ctx: StepContext) -> dict[str, Any]:
    """Score every split of the version (``eval_all.json``) and diagnose bias / variance / data mismatch."""
    from curate.learn.data import SPLITS, eval_loader, load_split
    from curate.learn.evaluation import evaluate
    from curate.learn.gaps import diagnose
    from curate.learn.metrics import write_report
    from curate.ui import progress

    if info.classes != loaded.classes:
        raise CurateError(f"the classes of {info.card['version']} differ from those {run} was trained on")
    scored = {}
    for split in (s for s in SPLITS if s in info.card["splits"]):
        with progress(f"decode {split}", info.card["splits"][split], enabled=ctx.progress) as advance:
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


@dataclass(frozen=True)
class ReportConfig:
    """Settings of a pipeline's ``report`` step (``curate.report.write_report``).

    Attributes:
        out: the HTML file (default ``<workspace>/report.html``).
        run: a training run folder (default: the run the pipeline's train step made, if any).
        max_gallery: most thumbnails per gallery.
        seed: the seed of the sampled galleries.
        human_error: human-level error (0..1) for the bias / variance / data-mismatch table; None: unknown.
        tags: a CSV of error-analysis tags (``sample_id`` or ``source``, ``cause``: one or several joined by ``;``)
            counted per cause and per class, beside any ``review_tags`` the version carries.
    """

    out: str | None = None
    run: str | None = None
    max_gallery: int = 48
    seed: int = 0
    human_error: float | None = None
    tags: str | None = None


def report_step(ws: Any, cfg: ReportConfig, ctx: StepContext) -> dict[str, Any]:
    """The HTML report of the version, with the pipeline's training run."""
    from curate.report import write_report
    from curate.ui import progress

    vid = ws.resolve(ctx.version())
    out = Path(cfg.out) if cfg.out else ws.root / "report.html"
    run = cfg.run or ctx.outputs.get("run")
    asked = str(run) if run else None
    rec = (ctx.previous or {}).get("result", {})
    if ctx.reuse and out.exists() and (ctx.previous or {}).get("version") == vid and (
        rec.get("path"), rec.get("requested"), rec.get("mtime_ns")) == (str(out), asked, out.stat().st_mtime_ns
    ):  # fmt: skip
        return {
            "version": vid,
            "path": str(out),
            "run": rec.get("run"),
            "requested": asked,
            "mtime_ns": rec["mtime_ns"],
            "cached": True,
        }
    optional = {"models": ws.root / "models", "progress": lambda d, t: progress(d, t, enabled=ctx.progress),
                "human_error": cfg.human_error, "tags": Path(cfg.tags) if cfg.tags else None}  # fmt: skip
    params = inspect.signature(write_report).parameters
    res = write_report(ws, out, version=vid, run=Path(run) if run else None, max_gallery=cfg.max_gallery, seed=cfg.seed,
                       **{k: v for k, v in optional.items() if k in params})  # fmt: skip
    return {**res, "version": vid, "requested": asked, "mtime_ns": out.stat().st_mtime_ns, "cached": False}


def summary(res: dict[str, Any]) -> str:
    """One line for the pipeline table."""
    if "shards" in res:
        return f"{res['shards']} shards, " + ", ".join(f"{s} {n:,}" for s, n in res["splits"].items()) + f" -> {res['out']}"
    if "epochs_run" in res:
        scores = ", ".join(f"{s} acc {m['accuracy']:.3f}" for s, m in res["metrics"].items())
        return f"{res['arch']}, {res['epochs_run']} epochs{', ' + scores if scores else ''} -> {res['run']}"
    if res.get("split") == "all":
        return ", ".join(f"{s} err {e:.3f}" for s, e in res["errors"].items()) + f"; largest gap: {res['diagnosis']['largest']}"
    if "accuracy" in res:
        return f"{res['split']} acc {res['accuracy']:.3f}, macro-F1 {res['macro_f1']:.3f} ({res['n']:,} images)"
    return f"-> {res.get('path', '')}"
