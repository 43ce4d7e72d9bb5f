"""Run one stage against a workspace: lock, read the parent, call the stage, commit, move HEAD.

A stage whose parent version and resolved settings already produced a version is not run again (nor one whose
HEAD already is that stage's output with the same settings): HEAD moves to that version and the result says
``cached`` (ingest opts out, since its input lives outside the
workspace and may have changed). Pipeline files (``curate run``) are in ``curate.steps``: they call this with an
explicit ``parent`` so that each step builds on the previous step's version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from curate.stages import StageResult
from curate.summary import summarize
from curate.workspace import Workspace, config_sha256

StageFn = Callable[[pa.Table | None, str | None], StageResult]
#: ``parent=HEAD`` builds on the workspace's HEAD; a pipeline passes its own position (a version id, or None for
#: an empty start) so that it never depends on where HEAD happens to point.
HEAD = "HEAD"


def run_stage(
    ws: Workspace, stage: str, config: dict[str, Any], fn: StageFn, *, cacheable: bool = True, parent: str | None = HEAD
) -> dict[str, Any]:
    """Run ``fn(parent_table, parent_id)`` under the workspace lock and commit its result.

    Args:
        ws: the workspace.
        stage: stage name; becomes part of the version id.
        config: the resolved, JSON-able stage config.
        fn: the stage body; gets the parent table (None for an empty workspace) and the parent id.
        cacheable: reuse a version made from the same parent with the same config.
        parent: the version to build on (None: none, the first version); ``HEAD`` (default): the current HEAD.

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
        table = ws.samples(parent_id) if parent_id else None
        result = fn(table, parent_id)
        stats = {"stage": stage, "parent": parent_id, **result.stats}
        stats["summary"] = summarize(result.table)
        stats["seconds_total"] = round(time.perf_counter() - t0, 3)
        vid = ws.commit(stage=stage, parent=parent_id, table=result.table, config=config, stats=stats, state=result.state)
    return {"version": vid, "parent": parent_id, "stage": stage, "cached": False, "stats": stats}
