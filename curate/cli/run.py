"""``curate run``: run a pipeline file (the steps, their settings, caching and resume live in ``curate.pipeline``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from curate.cli.common import DebugOpt, JsonOpt, handle_errors, say

if TYPE_CHECKING:
    from curate.pipeline.plan import Plan
    from curate.workspace import Workspace

STYLE = {"run": "green", "cached": "cyan", "failed": "bold red", "interrupted": "bold red", "running": "yellow", "pending": "dim"}


def _configure_executor(executor: str | None, address: str | None, workers: int | None) -> str:
    """Select the executor process-wide through ``curate.executors.configure``; returns the name in force.

    Without --executor/--address the choice made before (``curate --executor``, ``CURATE_EXECUTOR``) stands.
    """
    import curate.executors
    from curate.errors import UsageError

    configure = getattr(curate.executors, "configure", None)
    if executor is None and address is None:
        current = getattr(curate.executors, "current", None)
        return current().name if current is not None else "local"
    name = executor or "ray"  # naming a cluster means using it
    if configure is None:
        if name != "local":
            raise UsageError(f"--executor {name}: this curate has no executor selection (curate.executors.configure is missing)",
                             hint="use --executor local")  # fmt: skip
        return name
    configure(name, address=address, workers=workers)
    return name


def _table(journal: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    from curate.ui import cell, out_console

    table = Table(title=cell(f"pipeline {journal['pipeline']}: {journal['status']}"), title_justify="left")
    for name, kw in (("#", {"justify": "right"}), ("step", {}), ("status", {}), ("version", {}),
                     ("seconds", {"justify": "right"}), ("summary", {"overflow": "fold"})):  # fmt: skip
        table.add_column(name, **kw)
    for rec in journal["steps"]:
        secs = f"{rec['seconds']:.1f}" if rec.get("seconds") is not None else ""
        status = Text(str(rec["status"]), style=STYLE.get(rec["status"], ""))
        table.add_row(
            str(rec["index"]), cell(rec["label"]), status, cell(rec.get("version")), secs, cell(rec.get("error") or rec.get("summary"))
        )
    out_console.print(table)


def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline file: a [pipeline] table and [[step]] tables (README: Pipelines).")],
    set_values: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a setting: STAGE.KEY=VALUE (every STAGE step), STAGE#N.KEY=VALUE (its N-th step) or "
            'pipeline.KEY=VALUE. VALUE is read as TOML (3, 0.5, true, "a", [1, 2]), else as text. Repeatable.',
        ),
    ] = None,
    executor: Annotated[
        str | None, typer.Option(help="Where per-sample work runs: local (this machine; the default) | ray.", show_default=False)
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (implies --executor ray): HOST:PORT, ray://HOST:10001, auto.")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Worker processes of every step that has them.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only validate the file and list the resolved steps.")] = False,
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", envvar="CURATE_WORKSPACE", help="Workspace folder (default: the file's, else ./data)."),
    ] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run the steps of a pipeline file in order; what is already done is skipped (cached).

    Settings: each stage's defaults < the file < --set. Every step's settings are checked before the first
    one runs. A step whose parent version and settings already made a version is cached; so are an ingest whose
    input files are unchanged, a complete export and a finished training run. After a failure, fix it and run
    the same command again: the finished steps come out cached and work continues at the failed step. A
    journal of every run is kept in WORKSPACE/runs/NAME.json.

    Examples:

        curate run pipelines/demo.toml
        curate run pipelines/demo.toml --set clean.folds=5 --set train.epochs=3
        curate run pipelines/fashion-mnist.toml --set ingest.source=../shared/datasets/fashion-mnist
        curate run pipelines/demo.toml --dry-run --json
        curate run pipelines/fashion-mnist.toml --executor ray --address auto --set ingest.source=...
    """
    from curate.errors import UsageError
    from curate.pipeline.plan import load_plan
    from curate.workspace import DEFAULT_WORKSPACE, Workspace

    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    plan = load_plan(pipeline, set_values, workers=workers)
    ws = Workspace(workspace or plan.workspace or DEFAULT_WORKSPACE)
    if dry_run:
        _dry_run(plan, ws, json_out)
        return
    _run_plan(plan, ws, _configure_executor(executor, address, workers), json_out)


def _dry_run(plan: Plan, ws: Workspace, json_out: bool) -> None:
    """List the resolved steps of ``plan``; nothing runs."""
    import dataclasses

    from curate.ui import emit_json

    steps = [{"index": ps.index, "label": ps.label, "stage": ps.stage, "config": dataclasses.asdict(ps.config),
              "options": ps.options, "config_sha256": ps.config_sha256} for ps in plan.steps]  # fmt: skip
    if json_out:
        emit_json({"pipeline": plan.name, "file": str(plan.path), "workspace": ws.location, "steps": steps})
        return
    say(f"pipeline {plan.name} ({plan.path}): {len(steps)} steps, workspace {ws.location}; nothing run")
    for s in steps:
        say(f"  {s['index']}. {s['label']}: " + ", ".join(f"{k}={v!r}" for k, v in {**s["config"], **s["options"]}.items()))


def _run_plan(plan: Plan, ws: Workspace, executor_name: str, json_out: bool) -> None:
    """Run ``plan`` with a line per step (or, with ``--json``, the journal), the table, and the report's path."""
    from curate.pipeline.runner import journal_path, read_journal, run_plan
    from curate.ui import emit_json

    n = len(plan.steps)

    def on_step(event: str, ps: Any, rec: dict[str, Any]) -> None:
        if json_out:
            return
        if event == "start":
            say(f"step {ps.index}/{n}: {ps.label}")
        elif rec["status"] in ("run", "cached"):
            say(f"  {rec['status']} -> {rec['version']} in {rec['seconds']:.1f}s: {rec['summary']}")

    try:
        journal = run_plan(
            ws, plan, progress=not json_out, log=(lambda s: None) if json_out else say, on_step=on_step, executor=executor_name
        )
    except BaseException:
        failed = read_journal(journal_path(ws, plan.name))
        if failed is not None and failed.get("pipeline") == plan.name and failed.get("status") in ("failed", "interrupted"):
            if json_out:
                emit_json({**failed, "journal": str(journal_path(ws, plan.name))})
            else:
                _table(failed)
        raise
    if json_out:
        emit_json({**journal, "journal": str(journal_path(ws, plan.name))})
        return
    _table(journal)
    say(f"HEAD {journal['head']}; journal {journal_path(ws, plan.name)}")
    for rec in journal["steps"]:
        if rec["stage"] == "report" and rec.get("result", {}).get("path"):
            say(f"report: {rec['result']['path']}")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Pipelines")(handle_errors(run))
