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


def summary(res: dict[str, Any]) -> str:
    """One line for the pipeline table: what the stage found, then the included/excluded counts."""
    if "report" in res:
        return "report only: " + ", ".join(f"{s} max/min {r['ratio']:.2f}" for s, r in res["report"].items())
    st = res["stats"]
    found = {
        "split": lambda: ", ".join(f"{k} {v:,}" for k, v in st["summary"]["per_split"].items()),
        "normalize": lambda: f"mean {[round(m, 3) for m in st['normalization']['mean']]}",
        "augment": lambda: f"{st['new_samples']:,} new samples",
        "balance": lambda: f"{st['strategy']}",
    }.get(res["stage"], lambda: "")
    try:
        head = found()
    except (KeyError, TypeError):  # a version made by an older curate may lack a stat: the counts still tell
        head = ""
    counts = f"{st['summary']['included']:,} included, {st['summary']['excluded']:,} excluded"
    return f"{head}; {counts}" if head else counts
