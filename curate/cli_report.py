"""``curate report``: the HTML report of a version (and a training run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from curate.cli_common import DEFAULT_WS, DebugOpt, JsonOpt, VersionOpt, WorkspaceOpt, handle_errors, human_bytes, say


def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write (its folder is created).")] = Path("report.html"),
    version: VersionOpt = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run", help="A training run folder (curate train --out); default: the newest run in models/ trained on the version."
        ),
    ] = None,
    max_gallery: Annotated[int, typer.Option(help="At most this many thumbnails per gallery (sampled, or worst first).")] = 48,
    seed: Annotated[int, typer.Option(help="Seed of the sampled galleries (same seed, same page).")] = 0,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one self-contained HTML page about a version: what every stage did and why.

    Sections: the lineage of versions with counts in and out per stage; classes per split before and after
    balancing; excluded samples by stage and reason with thumbnails; duplicate groups side by side; label issues
    (given vs suggested label, worst first); outliers; the normalization histogram; pseudo-label rounds; and the
    training run's curves, confusion matrices and worst errors. Images and plots are embedded, nothing is fetched;
    galleries are sampled, so the file stays small for any dataset size.

    Examples:

        curate report -o report.html
        curate report --version 3 -o v3.html
        curate report --run models/fm -o fm.html --max-gallery 24
    """
    from curate.report import write_report
    from curate.ui import emit_json, progress
    from curate.workspace import Workspace

    res = write_report(
        Workspace(workspace),
        out,
        version=version,
        run=run,
        max_gallery=max_gallery,
        seed=seed,
        progress=lambda desc, total: progress(desc, total, enabled=not json_out),
    )
    if json_out:
        emit_json(res)
        return
    say(f"report of {res['version']} -> {res['path']} ({human_bytes(res['bytes'])}, {res['images']:,} thumbnails)")
    say(f"  sections: {', '.join(res['sections'])}")
    for sid, why in res["omitted"].items():
        say(f"  not shown: {sid}: {why}")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Reports")(handle_errors(report))
