"""Stage steps: each commits a child of the version it is given (``ctx.base``, HEAD for the CLI) through
``curate.pipeline.run_stage``, which returns the existing version instead when the same parent and settings
already made one. The ``curate <stage>`` commands and ``curate run`` both call these functions.
"""

from __future__ import annotations

from typing import Any

from curate.errors import CurateError
from curate.pipeline import run_stage
from curate.steps import StepContext


def _need(table: Any) -> Any:
    if table is None:
        raise CurateError("the workspace has no versions yet", hint="run `curate ingest SRC` first")
    return table


def balance_step(ws: Any, cfg: Any, ctx: StepContext) -> dict[str, Any]:
    """``curate balance``: without a strategy only ``{"version", "report"}`` (nothing committed)."""
    from curate.stages.balance import imbalance_report, run_balance

    if cfg.strategy is None:
        vid = ws.resolve(ctx.version())
        return {"version": vid, "report": imbalance_report(ws.samples(vid), cfg.beta)}
    config: dict[str, Any] = {"strategy": cfg.strategy, "target": cfg.target, "drop": cfg.drop, "seed": cfg.seed, "beta": cfg.beta}
    if cfg.strategy == "augment":
        from curate.augment_policies import check_policy

        config.update(policy=cfg.policy, policy_sha256=check_policy(cfg.policy))

    def body(table: Any, pid: str | None) -> Any:
        return run_balance(ws, _need(table), pid, cfg, workers=ctx.n_workers(), progress=ctx.bar("augment"))

    return run_stage(ws, "balance", config, body, parent=ctx.base)


def augment_step(ws: Any, cfg: Any, ctx: StepContext) -> dict[str, Any]:
    """``curate augment``: offline albumentations copies of train images as new samples."""
    from curate.stages.augment import check_config, run_augment

    config = {
        "policy": cfg.policy,
        "policy_sha256": check_config(cfg),
        "copies": cfg.copies,
        "to_balance": cfg.to_balance,
        "target": cfg.target,
        "seed": cfg.seed,
    }

    def body(table: Any, pid: str | None) -> Any:
        return run_augment(ws, _need(table), pid, cfg, workers=ctx.n_workers(), progress=ctx.bar("augment"))

    return run_stage(ws, "augment", config, body, parent=ctx.base)


def filter_step(ws: Any, cfg: Any, ctx: StepContext) -> dict[str, Any]:
    """``curate filter``: score the included rows with a trained classifier; its child of the version becomes HEAD."""
    from curate.scoring import file_sha256, load_model, resolve_target
    from curate.stages.filter import config_dict, run_filter

    vid = ws.resolve(ctx.version())
    run = load_model(cfg)
    sha = file_sha256(run.path)
    # the task classes are part of the stage settings (and so of the cache key): resolve them before running
    target = resolve_target(cfg, run.classes, ws.samples(vid, columns=["status", "label"]))

    def body(table: Any, parent_id: str | None) -> Any:
        return run_filter(ws, table, parent_id, cfg, run=run, checkpoint_sha=sha, progress=ctx.bar("filter"))

    # built on the chosen version, not on HEAD: HEAD moves only when the new version is committed
    return run_stage(ws, "filter", config_dict(cfg, run, target, sha), body, parent=vid)


def summary(res: dict[str, Any]) -> str:
    """One line for the pipeline table: what the stage found, then the included/excluded counts."""
    if "report" in res:
        return "report only: " + ", ".join(f"{s} max/min {r['ratio']:.2f}" for s, r in res["report"].items())
    st = res["stats"]
    found = {
        "dedupe": lambda: f"{st['duplicates']:,} duplicates",
        "clean": lambda: ", ".join(
            f"{st[k]['flagged']:,} {k.replace('_', ' ')} ({st[k].get('acted_on', 0):,} acted on)"
            for k in ("label_issues", "outliers", "low_quality")
            if k in st
        ),
        "split": lambda: ", ".join(f"{k} {v:,}" for k, v in st["summary"]["per_split"].items()),
        "normalize": lambda: f"mean {[round(m, 3) for m in st['normalization']['mean']]}",
        "augment": lambda: f"{st['new_samples']:,} new samples",
        "balance": lambda: f"{st['strategy']}",
        "filter": lambda: f"{st['filtered']:,} filtered",
    }.get(res["stage"], lambda: "")
    try:
        head = found()
    except (KeyError, TypeError):  # a version made by an older curate may lack a stat: the counts still tell
        head = ""
    counts = f"{st['summary']['included']:,} included, {st['summary']['excluded']:,} excluded"
    return f"{head}; {counts}" if head else counts
