"""The one runner: run a stage against a workspace (lock, resolve the parent, call it, commit, move HEAD).

``execute(stage, ctx, cfg)`` runs any registered ``curate.stage.Stage`` for the CLI, pipeline files, Ray runs and
the Python API alike. A stage whose parent version and resolved settings already produced a version is not run
again (nor one whose HEAD already is that stage's output with the same settings): HEAD moves to that version and
the result says ``cached``. Sources opt out (their input lives outside the workspace and may have changed); in a
pipeline they are reused when their input fingerprint is unchanged. Pipeline files (``curate run``) are read by
``curate.pipeline.plan`` and run by ``curate.pipeline.runner``, which passes an explicit parent so that each step
builds on the previous step's version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from curate.stage import HEAD, OUTPUT, Context, Stage, StageResult
from curate.summary import summarize
from curate.workspace import Workspace, config_sha256

StageFn = Callable[[pa.Table | None, str | None], StageResult | dict[str, Any]]
__all__ = ["HEAD", "execute", "run_stage"]


def run_stage(
    ws: Workspace,
    stage: str,
    config: dict[str, Any],
    fn: StageFn,
    *,
    cacheable: bool = True,
    parent: str | None = HEAD,
    lazy: bool = False,
) -> dict[str, Any]:
    """Run ``fn(parent_table, parent_id)`` under the workspace lock and commit its result.

    Args:
        ws: the workspace.
        stage: stage name; becomes part of the version id.
        config: the resolved, JSON-able stage config.
        fn: the stage body; gets the parent table (None for an empty workspace) and the parent id.
        cacheable: reuse a version made from the same parent with the same config.
        parent: the version to build on (None: none, the first version); ``HEAD`` (default): the current HEAD.
        lazy: ``fn`` reads the parent table itself (``Context.table``): it gets None instead.

    Returns:
        ``{"version", "parent", "stage", "cached", "stats"}``; stats carry a ``summary`` of the new table.
    """
    t0 = time.perf_counter()
    with ws.writer():
        parent_id = ws.head() if parent == HEAD else parent
        sha = config_sha256(config)
        if cacheable:
            cached = ws.find_cached(parent=parent_id, stage=stage, config_sha=sha)
            if cached is None and parent_id is not None:
                # HEAD itself came from this stage with these settings: running it again would change nothing.
                head = ws.info(parent_id)
                if head["stage"] == stage and head["config_sha256"] == sha:
                    cached = parent_id
            if cached is not None:
                ws.set_head(cached)
                return {"version": cached, "parent": parent_id, "stage": stage, "cached": True, "stats": ws.stats(cached)}
        table = ws.samples(parent_id) if parent_id and not lazy else None
        result = fn(table, parent_id)
        if not isinstance(result, StageResult):  # a report-only mode: nothing to commit
            return result
        stats = {"stage": stage, "parent": parent_id, **result.stats}
        stats["summary"] = summarize(result.table)
        stats["seconds_total"] = round(time.perf_counter() - t0, 3)
        vid = ws.commit(stage=stage, parent=parent_id, table=result.table, config=config, stats=stats, state=result.state)
    return {"version": vid, "parent": parent_id, "stage": stage, "cached": False, "stats": stats}


def execute(stage: Stage, ctx: Context, cfg: Any) -> dict[str, Any]:
    """Run one ``Stage`` with its resolved Config: the one runner behind the CLI, ``curate run`` and the API.

    Outputs run as they are. Sources and stages run under the workspace lock: a cacheable stage whose parent and
    key already made a version (or whose parent is one) returns it; in a pipeline (``ctx.reuse``) a source whose
    inputs' fingerprint is unchanged returns its existing version; otherwise ``run`` builds the child, which is
    committed and becomes HEAD. A ``run`` that returns a plain dict (a report-only mode) commits nothing.

    Returns:
        ``{"version", "parent", "stage", "cached", "stats"}`` for a commit or a cache hit (``stage.finish`` may add
        keys), else the dict ``run`` returned.
    """
    if stage.check is not None:
        stage.check(cfg)
    if stage.before is not None:
        _run_before(ctx, stage.before(ctx, cfg))
    if stage.kind == OUTPUT:
        return stage.run(ctx, cfg)
    if stage.reads_version and ctx.base not in (HEAD, None):  # --version 3: build on that version's id
        ctx.base = ctx.ws.resolve(ctx.base)
    key = stage.key(ctx, cfg)
    fingerprint = stage.fingerprint(ctx, cfg) if stage.fingerprint is not None else None
    if ctx.reuse and fingerprint is not None:
        from curate.sources.fingerprint import find_reusable, reuse_version

        hit, ctx.base = find_reusable(ctx.ws, stage.name, key, ctx.base, *fingerprint)
        if hit is not None:
            return _finish(stage, ctx, cfg, reuse_version(ctx.ws, hit))

    def body(_table: pa.Table | None, parent_id: str | None) -> StageResult | dict[str, Any]:
        ctx.parent = parent_id
        res = stage.run(ctx, cfg)
        if fingerprint is not None and isinstance(res, StageResult):
            res.stats[fingerprint[0]] = fingerprint[1]
        return res

    res = run_stage(ctx.ws, stage.name, key, body, cacheable=stage.is_cacheable(ctx, cfg), parent=ctx.base, lazy=True)
    return _finish(stage, ctx, cfg, res) if "version" in res and "stats" in res else res


def _run_before(ctx: Context, steps: list[tuple[str, dict[str, Any]]]) -> None:
    """Run (and commit) the stages ``Stage.before`` names, each on the previous one's version; ``ctx.base`` moves to
    the last one's version and ``ctx.scratch["before"]`` holds their results by stage name."""
    from curate import registry

    done: dict[str, Any] = {}
    for name, values in steps:
        dep = registry.get(name)
        values = dep.prepare(values) if dep.prepare is not None else values
        sub = Context(ctx.ws, base=ctx.base, workers=ctx.workers, progress=ctx.progress, seed=ctx.seed, device=ctx.device,
                      log=ctx.log, reuse=ctx.reuse)  # fmt: skip
        done[name] = execute(dep, sub, dep.config(**values))
        ctx.base = done[name]["version"]
    ctx.scratch["before"] = done


def _finish(stage: Stage, ctx: Context, cfg: Any, res: dict[str, Any]) -> dict[str, Any]:
    return stage.finish(ctx, cfg, res) if stage.finish is not None else res
