"""``curate dedupe``."""

from __future__ import annotations

from typing import Annotated

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, WorkspaceOpt, handle_errors, say


def dedupe(
    threshold: Annotated[
        float | None,
        typer.Option(help="Near-duplicate score needed (0-1, higher = stricter). Default 0.90, calibrated on planted copies."),
    ] = None,
    action: Annotated[
        str | None, typer.Option(help="exclude: mark duplicates excluded (reason duplicate); flag: columns only.")
    ] = None,
    keep: Annotated[str | None, typer.Option(help="Representative kept per group: first | largest | sharpest.")] = None,
    against: Annotated[
        str | None,
        typer.Option(
            help="Check rows not in this reference against it: a VERSION of this workspace, a workspace folder, or FOLDER@VERSION."
        ),
    ] = None,
    exact_only: Annotated[
        bool | None, typer.Option("--exact-only", help="Only identical decoded pixels; skip the near search.")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Processes for decoding (default: cores).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Find exact and near-duplicate images and keep one per group.

    Exact duplicates have the same decoded pixels (a PNG and its lossless re-encode); near duplicates survive
    re-encoding, resizing, JPEG, small brightness changes, 1-2 px shifts and small crops. Each group gets one
    representative (--keep); the others get is_duplicate=true and dup_of, and are excluded (reason duplicate)
    unless --action flag. Groups whose labels disagree are flagged dup_label_conflict. Signatures are cached per
    sample, so re-running or checking new data with --against only decodes what is new.

    Examples:

        curate dedupe
        curate dedupe --threshold 0.95 --action flag
        curate dedupe --keep largest
        curate dedupe --against 2                 # new rows vs version 2 of this workspace
        curate dedupe --against ../train-ws       # vs HEAD of another workspace
    """
    from curate.config import command_config
    from curate.stages.dedupe import DedupeConfig, check_config
    from curate.steps import StepContext
    from curate.steps.curation import dedupe_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    cli = {"threshold": threshold, "action": action, "keep": keep, "against": against, "exact_only": exact_only}
    cfg = command_config(DedupeConfig, "dedupe", ws.root, cli)
    check_config(cfg)
    res = dedupe_step(ws, cfg, StepContext(workers=workers, progress=not json_out))
    st = res["stats"]
    if json_out:
        emit_json(res)
        return
    if res["cached"]:
        say(f"dedupe: same parent and settings as {res['version']}; HEAD moved there (nothing recomputed)")
        return
    verb = "excluded" if cfg.action == "exclude" else "flagged"
    say(
        f"dedupe: {st['participants']:,} samples, {st['groups']:,} groups -> {st['duplicates']:,} duplicates {verb} "
        f"({st['exact_duplicates']:,} exact, {st['near_duplicates']:,} near; largest group {st['largest_group']}), "
        f"{st['seconds']:.1f}s"
    )
    say(f"  signatures: {st['signatures_computed']:,} computed, {st['signatures_cached']:,} cached, {st['signature_errors']:,} failed")
    if st["label_conflict_groups"]:
        say(f"  label conflicts: {st['label_conflict_groups']:,} groups ({st['label_conflict_rows']:,} rows) carry different labels")
    cross = st["cross_split"]
    if cross["groups_spanning"]:
        per = ", ".join(f"{s} {n:,}" for s, n in sorted(cross["rows_with_dup_in_other_split"].items()))
        say(f"  across {cross['column']}: {cross['groups_spanning']:,} groups span several splits ({per} rows)")
    say(f"  version {res['version']} (HEAD): {st['summary']['included']:,} included, {st['summary']['excluded']:,} excluded")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Stages")(handle_errors(dedupe))
