"""Run a validated pipeline: each step in order, skipping work that exists, with a journal in the workspace.

The pipeline keeps its own position (a version id; None before its first version) and hands it to every step, so
it never depends on where HEAD points; stage steps move HEAD as they commit or reuse a version. Whether a step is
skipped is decided from the workspace itself, never from the journal alone: run_stage reuses a version made from
the same parent and settings, source and output steps check their inputs and files (``curate.sources.fingerprint``,
the ``run`` of ``curate.stages.export`` / ``train`` / ``report``). A rerun after a failure therefore finds every
finished step cached and continues at the one that failed.

The journal, ``ws.run_journal(name)`` (``<workspace>/runs/<pipeline name>.json``), is rewritten atomically after
every step: the base version the run started from, then per step its status (pending, running, run, cached,
failed, interrupted), the resolved config's sha256, the output version, seconds and a one-line summary. A rerun
starts from the previous run's base when HEAD is still one of the versions that run made (so an unchanged rerun
is all cached), else from HEAD.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import CurateError
from curate.pipeline import execute
from curate.pipeline.plan import Plan, PlannedStep
from curate.stage import SOURCE, STAGE, Context, rich_progress

if TYPE_CHECKING:
    from curate.workspace import Workspace

OnStep = Callable[[str, PlannedStep, dict[str, Any]], None]
RESULT_KEYS = ("out", "path", "run", "requested", "mtime_ns")  # what later runs may need from a step's result


def journal_path(ws: Workspace, name: str) -> Path:
    return ws.run_journal(name)


def read_journal(path: Path) -> dict[str, Any] | None:
    """The journal of the previous run (None when missing or unreadable: it is a record, not a requirement)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("steps"), list) else None


def write_journal(path: Path, data: dict[str, Any]) -> None:
    """Write + fsync a temporary file, then rename: a reader sees the old or the new journal, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=2, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def start_version(ws: Workspace, previous: dict[str, Any] | None) -> str | None:
    """Where a run starts: the previous run's base while HEAD is one of its versions, else HEAD."""
    head = ws.head()
    if previous is None or head is None:
        return head
    made = {s.get("version") for s in previous["steps"]} | {previous.get("base")}
    base = previous.get("base")
    if head in made and (base is None or base in ws.version_ids()):
        return base
    return head


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _previous_record(previous: dict[str, Any] | None, ps: PlannedStep) -> dict[str, Any] | None:
    """This step's record from the previous run, when it was the same stage with the same settings and finished."""
    if previous is None or len(previous["steps"]) < ps.index:
        return None
    rec = previous["steps"][ps.index - 1]
    same = rec.get("stage") == ps.stage and rec.get("config_sha256") == ps.config_sha256
    return rec if same and rec.get("status") in ("run", "cached") else None


def run_plan(
    ws: Workspace,
    plan: Plan,
    *,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
    on_step: OnStep = lambda event, ps, rec: None,
    executor: str = "local",
) -> dict[str, Any]:
    """Run every step of ``plan`` on ``ws``; returns the final journal.

    Args:
        progress: progress bars on stderr.
        log: running commentary of the steps (training epochs).
        on_step: called with ``("start" | "end", step, its journal record)``.
        executor: recorded in the journal.

    Raises:
        CurateError: a step failed (the journal records it as failed, with the message).
    """
    path = journal_path(ws, plan.name)
    previous = read_journal(path)
    cursor = start_version(ws, previous)
    journal: dict[str, Any] = {
        "pipeline": plan.name,
        "file": str(plan.path),
        "file_sha256": plan.file_sha256,
        "workspace": ws.location,
        "executor": executor,
        "base": cursor,
        "started": _now(),
        "finished": None,
        "status": "running",
        "head": None,
        "steps": [
            {"index": ps.index, "stage": ps.stage, "label": ps.label, "config_sha256": ps.config_sha256, "status": "pending",
             "version": None, "seconds": None, "summary": "", "error": None}
            for ps in plan.steps
        ],
    }  # fmt: skip
    write_journal(path, journal)
    outputs: dict[str, Any] = {}
    for ps, rec in zip(plan.steps, journal["steps"], strict=True):
        if cursor is None and ps.step.kind != SOURCE:
            _finish(path, journal, "failed")
            raise CurateError(
                f"{plan.path}: step {ps.index} ({ps.label}) needs a dataset version, and the workspace {ws.location} is empty",
                hint="start the pipeline with an ingest or crawl step",
            )
        ctx = Context(ws, base=cursor, workers=ps.options.get("workers"), progress=rich_progress(progress), log=log,
                      reuse=True, options=ps.options, outputs=outputs, previous=_previous_record(previous, ps))  # fmt: skip
        rec["status"] = "running"
        write_journal(path, journal)
        on_step("start", ps, rec)
        t0 = time.perf_counter()
        try:
            res = execute(ps.step, ctx, ps.config)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            rec.update(status="interrupted" if interrupted else "failed", seconds=round(time.perf_counter() - t0, 3),
                       error=getattr(exc, "message", None) or str(exc) or type(exc).__name__)  # fmt: skip
            journal["head"] = cursor
            _finish(path, journal, rec["status"])
            on_step("end", ps, rec)
            raise
        rec.update(status="cached" if res.get("cached") else "run", version=res.get("version"),
                   seconds=round(time.perf_counter() - t0, 3), summary=ps.step.one_line(res),
                   result={k: str(res[k]) if isinstance(res[k], Path) else res[k] for k in RESULT_KEYS if k in res})  # fmt: skip
        if ps.step.kind in (SOURCE, STAGE) and res.get("version"):
            cursor = res["version"]
        if ps.stage == "train" and res.get("run"):
            outputs["run"] = res["run"]
        write_journal(path, journal)
        on_step("end", ps, rec)
    if cursor is not None and ws.head() != cursor:
        with ws.writer():
            ws.set_head(cursor)
    journal["head"] = cursor
    _finish(path, journal, "ok")
    return journal


def _finish(path: Path, journal: dict[str, Any], status: str) -> None:
    journal.update(status=status, finished=_now())
    write_journal(path, journal)
