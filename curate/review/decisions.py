"""The decisions a person made at the review desk (``curate review``), committed as a child of the reviewed version.

``commit_review`` (``curate review --commit`` and the desk's commit button) reads the version's journal
(``curate.review.journal``) and commits through ``curate.pipeline.run_stage`` like every stage: the child is built
on the reviewed version (not on whatever HEAD is), HEAD moves to it, and committing the same decisions again returns
the version they already made (the cache key is the digest of the decisions). ``apply_decisions`` turns them into
columns:

| decision | effect |
| --- | --- |
| keep | nothing but ``review_decision = "keep"`` (the reviewer saw the row and left it as it is) |
| accept / label | ``label`` = the suggested / chosen label, ``label_source = "review"``; the old label -> ``given_label`` (*) |
| exclude | ``status = "excluded"``, ``excluded_by = "review"``, ``reason = "review:<first cause>"`` or ``"review:excluded"`` |
| tags | ``review_tags`` (``list<string>``): the causes, united with tags the row already had; the report counts them |

(*) unless an earlier stage (clean's relabel) already kept the original label there. Every reviewed row gets
``review_decision`` (null where only tags were given). Nothing is dropped: excluded rows stay in the table. A row
already excluded by an earlier stage keeps that stage and reason (the first decision is the one to audit), but gets
its label and tags.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from curate.errors import CurateError
from curate.pipeline import run_stage
from curate.review import journal
from curate.review.tags import TAGS_COLUMN
from curate.schema import exclude
from curate.stage import StageResult
from curate.workspace import Workspace

STAGE = "review"
LABEL_SOURCE = "review"


def _set(table: pa.Table, name: str, values: list[Any], typ: pa.DataType) -> pa.Table:
    arr = pa.array(values, typ)
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, arr)
    return table.append_column(name, arr)


def apply_decisions(table: pa.Table, state: dict[str, dict[str, Any]], *, source: str = "the journal") -> StageResult:
    """Apply review decisions to ``table``.

    Args:
        table: the reviewed version's full sample table.
        state: sample_id -> ``{"decision", "label", "tags"}`` (``curate.review.journal.read``).
        source: where the decisions come from, for error messages.

    Returns:
        A StageResult with every row of ``table`` and stats ``{"reviewed", "kept", "relabeled", "excluded", "tagged",
        "by_cause": {cause: rows}}``.

    Raises:
        CurateError: no decisions, or a decision names a sample the version does not have.
    """
    if not state:
        raise CurateError(f"{source}: no review decisions to commit", hint="make some with `curate review` first")
    ids = table.column("sample_id").to_pylist()
    pos = {sid: i for i, sid in enumerate(ids)}
    missing = [sid for sid in state if sid not in pos]
    if missing:
        raise CurateError(f"{source}: sample {missing[0]} is not in this version ({len(missing)} unknown)")
    n = table.num_rows
    cols = table.column_names
    labels, sources = table.column("label").to_pylist(), table.column("label_source").to_pylist()
    given = table.column("given_label").to_pylist() if "given_label" in cols else [None] * n
    tags = table.column(TAGS_COLUMN).to_pylist() if TAGS_COLUMN in cols else [None] * n
    decided = table.column("review_decision").to_pylist() if "review_decision" in cols else [None] * n
    stats: dict[str, Any] = {"reviewed": len(state), "kept": 0, "relabeled": 0, "excluded": 0, "tagged": 0, "by_cause": {}}
    excluded: dict[str, list[bool]] = {}
    for sid, entry in state.items():
        p, decision = pos[sid], entry["decision"]
        decided[p] = decision
        if entry["tags"]:
            tags[p] = list(dict.fromkeys([*(tags[p] or []), *entry["tags"]]))
            stats["tagged"] += 1
            for cause in entry["tags"]:
                stats["by_cause"][cause] = stats["by_cause"].get(cause, 0) + 1
        if decision == "keep":
            stats["kept"] += 1
        elif decision in ("accept", "label") and entry["label"] != labels[p]:
            given[p] = given[p] if given[p] is not None else labels[p]
            labels[p], sources[p] = entry["label"], LABEL_SOURCE
            stats["relabeled"] += 1
        elif decision == "exclude":
            reason = f"review:{entry['tags'][0]}" if entry["tags"] else "review:excluded"
            excluded.setdefault(reason, [False] * n)[p] = True
            stats["excluded"] += 1
    table = _set(table, "label", labels, pa.string())
    table = _set(table, "label_source", sources, pa.string())
    if stats["relabeled"] or "given_label" in cols:
        table = _set(table, "given_label", given, pa.string())
    table = _set(table, TAGS_COLUMN, tags, pa.list_(pa.string()))
    table = _set(table, "review_decision", decided, pa.string())
    for reason, mask in sorted(excluded.items()):
        table = exclude(table, pa.array(mask), stage=STAGE, reason=reason)
    return StageResult(table=table, stats=stats)


def commit_review(ws: Workspace, version: str | None = None) -> dict[str, Any]:
    """Commit the review decisions on ``version`` (default HEAD) as a new ``review`` version.

    Returns:
        ``run_stage``'s dict (``version``, ``parent``, ``stage``, ``cached``, ``stats``) plus ``journal`` (its path).

    Raises:
        CurateError: an unknown version, or no decisions in its journal.
    """
    vid = ws.resolve(version)
    path = ws.review_journal(vid)
    state = journal.read(path)
    if not state:
        raise CurateError(f"no review decisions for version {vid} ({path})", hint=f"make some with `curate review {vid}`")
    config = {"reviewed_version": vid, "decisions": len(state), "decisions_sha256": journal.digest(state)}
    res = run_stage(ws, STAGE, config, lambda table, _pid: apply_decisions(table, state, source=str(path)), parent=vid)
    return {**res, "journal": str(path)}
