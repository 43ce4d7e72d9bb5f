"""The ``pseudolabel`` step: optionally bring in an outside pool (ingest + dedupe), then run the loop."""

from __future__ import annotations

from typing import Any

from curate.pipeline import run_stage
from curate.steps import StepContext


def pseudolabel_step(ws: Any, cfg: Any, ctx: StepContext) -> dict[str, Any]:
    """``curate pseudolabel``; ``ctx.options["pool"]`` (a folder, manifest or archive) is ingested unlabeled into
    the version and deduplicated first, so a pool image that duplicates a labeled, val or test image is excluded
    as a duplicate (the earlier row is kept) and never pseudo-labeled.

    Returns:
        ``run_stage``'s result; ``pool`` holds the ingest and dedupe results when a pool was given.
    """
    from curate.stages.pseudolabel import config_dict, run_pseudolabel

    extra: dict[str, Any] = {}
    pool = ctx.options.get("pool")
    if pool:
        from curate.pipeline import execute
        from curate.stage import Context, rich_progress
        from curate.stages.dedupe import DedupeConfig
        from curate.stages.ingest import STAGE as INGEST
        from curate.stages.ingest import IngestConfig
        from curate.steps.curation import dedupe_step

        ing = execute(INGEST, Context(ws, base=ctx.base, workers=ctx.workers, progress=rich_progress(ctx.progress), reuse=ctx.reuse),
                      IngestConfig(source=str(pool), unlabeled=True))  # fmt: skip
        dd = dedupe_step(ws, DedupeConfig(), StepContext(workers=ctx.workers, progress=ctx.progress, log=ctx.log))
        extra["pool"] = {"ingest": ing["version"], "dedupe": dd["version"], "new_samples": ing["stats"].get("new_samples")}
        ctx = StepContext(workers=ctx.workers, progress=ctx.progress, log=ctx.log, base=dd["version"], reuse=ctx.reuse)

    def body(table: Any, parent_id: str | None) -> Any:
        from curate.ui import progress

        bar = (lambda desc, total: progress(desc, total, enabled=ctx.progress)) if ctx.progress else None
        return run_pseudolabel(ws, table, parent_id, cfg, log=ctx.log, progress=bar)

    res = run_stage(ws, "pseudolabel", config_dict(cfg), body, parent=ctx.base)
    return {**res, **extra}


def summary(res: dict[str, Any]) -> str:
    """One line for the pipeline table: the best round, what it committed, val accuracy before and after."""
    st = res["stats"]
    before, after = st.get("val_accuracy_supervised"), st.get("val_accuracy_best")
    val = f"; val {before:.4f} -> {after:.4f}" if before is not None and after is not None else ""
    return f"{st['accepted']:,} pseudo-labels (round {st['best_round']} of {st['rounds_run']}){val}"
