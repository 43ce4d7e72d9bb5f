"""``curate report``: the HTML report of a version (and a training run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, VersionOpt, WorkspaceOpt, handle_errors, human_bytes, say


def report(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="The HTML file to write, its folder created (default report.html).")
    ] = None,
    version: VersionOpt = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run", help="A training run folder (curate train --out); default: the newest run in models/ trained on the version."
        ),
    ] = None,
    max_gallery: Annotated[
        int | None, typer.Option(help="At most this many thumbnails per gallery, sampled or worst first (default 48).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampled galleries; same seed, same page (default 0).")] = None,
    human_error: Annotated[
        float | None,
        typer.Option("--human-error", help="Human-level error (0.02 = 2%) that avoidable bias is measured against (default: 0)."),
    ] = None,
    tags: Annotated[
        Path | None,
        typer.Option("--tags", help="CSV of error-analysis tags: sample_id (or source) and cause (several joined by ';')."),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one self-contained HTML page about a version: what every stage did and why.

    Sections: the lineage of versions with counts in and out per stage; classes per split before and after
    balancing; excluded samples by stage and reason with thumbnails; duplicate groups side by side; label issues
    (given vs suggested label, worst first); outliers; the normalization histogram; pseudo-label rounds; and the
    training run's curves, confusion matrices and worst errors; the run's train / train-dev / dev / test errors with
    the largest gap (avoidable bias, variance, data mismatch) named; and tagged errors counted by cause.
    Images and plots are embedded, nothing is fetched; galleries are sampled, so the file stays small for any
    dataset size.

    Examples:

        curate report -o report.html
        curate report --version 3 -o v3.html
        curate report --run models/fm -o fm.html --max-gallery 24
        curate report --human-error 0.02 --tags worst100.csv
    """
    from curate.config import command_config
    from curate.report import write_report
    from curate.steps.outputs import ReportConfig
    from curate.ui import emit_json, progress
    from curate.workspace import Workspace

    cli = {"out": str(out) if out else None, "run": str(run) if run else None, "max_gallery": max_gallery, "seed": seed,
           "human_error": human_error, "tags": str(tags) if tags else None}  # fmt: skip
    cfg = command_config(ReportConfig, "report", workspace, cli)
    res = write_report(
        Workspace(workspace),
        Path(cfg.out or "report.html"),
        version=version,
        run=Path(cfg.run) if cfg.run else None,
        max_gallery=cfg.max_gallery,
        seed=cfg.seed,
        human_error=cfg.human_error,
        tags=Path(cfg.tags) if cfg.tags else None,
        progress=lambda desc, total: progress(desc, total, enabled=not json_out),
    )
    if json_out:
        emit_json(res)
        return
    say(f"report of {res['version']} -> {res['path']} ({human_bytes(res['bytes'])}, {res['images']:,} thumbnails)")
    say(f"  sections: {', '.join(res['sections'])}")
    if res["diagnosis"]:
        from curate.learn.gaps import summary_line

        say(f"  {summary_line(res['diagnosis'])}")
    if res["causes"]:
        c = res["causes"]
        top = c["causes"][0]
        say(f"  causes: {c['tagged']:,} tagged rows; top cause {top['cause']} ({top['rows']:,}, {100 * top['share']:.1f}%)")
    for sid, why in res["omitted"].items():
        say(f"  not shown: {sid}: {why}")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Reports")(handle_errors(report))
