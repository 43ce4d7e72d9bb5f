"""``curate review --commit`` (and the desk's commit button): the journal of a version committed as its child.

It goes through ``curate.pipeline.run_stage`` like every stage: the child is built on the reviewed version (not on
whatever HEAD is), HEAD moves to it, and committing the same decisions again returns the version they already made
(the cache key is the digest of the decisions).
"""

from __future__ import annotations

from typing import Any

from curate import reviewjournal
from curate.pipeline import run_stage
from curate.workspace import Workspace


def commit_review(ws: Workspace, version: str | None = None) -> dict[str, Any]:
    """Commit the review decisions on ``version`` (default HEAD) as a new ``review`` version.

    Returns:
        ``run_stage``'s dict (``version``, ``parent``, ``stage``, ``cached``, ``stats``) plus ``journal`` (its path).

    Raises:
        CurateError: an unknown version, or no decisions in its journal.
    """
    from curate.stages.review import STAGE, apply_decisions

    vid = ws.resolve(version)
    path = ws.review_journal(vid)
    state = reviewjournal.read(path)
    if not state:
        from curate.errors import CurateError

        raise CurateError(f"no review decisions for version {vid} ({path})", hint=f"make some with `curate review {vid}`")
    config = {"reviewed_version": vid, "decisions": len(state), "decisions_sha256": reviewjournal.digest(state)}
    res = run_stage(ws, STAGE, config, lambda table, _pid: apply_decisions(table, state, source=str(path)), parent=vid)
    return {**res, "journal": str(path)}
