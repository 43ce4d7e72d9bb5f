"""Run one stage against a workspace: lock, read the parent, call the stage, commit, move HEAD.

A stage whose parent version and resolved settings already produced a version is not run again (nor one whose
HEAD already is that stage's output with the same settings): HEAD moves to that version and the result says
``cached`` (ingest opts out, since its input lives outside the
workspace and may have changed).
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


def run_stage(ws: Workspace, stage: str, config: dict[str, Any], fn: StageFn, *, cacheable: bool = True) -> dict[str, Any]:
    """Run ``fn(parent_table, parent_id)`` under the workspace lock and commit its result.

    Args:
        ws: the workspace.
        stage: stage name; becomes part of the version id.
        config: the resolved, JSON-able stage config.
        fn: the stage body; gets the parent table (None for an empty workspace) and the parent id.
        cacheable: reuse a version made from the same parent with the same config.

    Returns:
        ``{"version", "parent", "stage", "cached", "stats"}``; stats carry a ``summary`` of the new table.
    """
    t0 = time.perf_counter()
    with ws.writer():
        parent_id = ws.head()
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
        parent = ws.samples(parent_id) if parent_id else None
        result = fn(parent, parent_id)
        stats = {"stage": stage, "parent": parent_id, **result.stats}
        stats["summary"] = summarize(result.table)
        stats["seconds_total"] = round(time.perf_counter() - t0, 3)
        vid = ws.commit(stage=stage, parent=parent_id, table=result.table, config=config, stats=stats, state=result.state)
    return {"version": vid, "parent": parent_id, "stage": stage, "cached": False, "stats": stats}
