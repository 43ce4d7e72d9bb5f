"""``curate filter``: the classifier filter (torch is imported inside the command only)."""

from __future__ import annotations

from typing import Annotated

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, VersionOpt, WorkspaceOpt, handle_errors, say


def _split_list(value: str | None) -> tuple[str, ...] | None:
    """``"a, b"`` -> ``("a", "b")``; None stays None (so curate.toml and the defaults apply)."""
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _per(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "none"


def filter_(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Run folder written by `curate train` (or a model_*.pt file). Required.")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated model classes that belong to the task; filter_score = the sum of their probabilities. "
            "Default: the model classes that occur as labels of the version's included rows; when that is every model "
            "class (no 'other' class), filter_score = the max probability."
        ),
    ] = None,
    min_prob: Annotated[float | None, typer.Option(help="Rows with filter_score below this are filtered (0-1]. Default 0.5.")] = None,
    action: Annotated[
        str | None, typer.Option(help="exclude (default): filtered rows excluded, reason classifier_filter; flag: columns only.")
    ] = None,
    splits: Annotated[
        str | None,
        typer.Option(help="Splits whose included rows are scored: train,val,test,none (no split yet), or all (default)."),
    ] = None,
    which: Annotated[str | None, typer.Option(help="Checkpoint of the run: best (default; else last) | last.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images decoded and scored per batch (bounds memory). Default 256.")] = None,
    device: Annotated[str | None, typer.Option(help="auto (cuda, then mps, then cpu; default) | cpu | cuda | mps.")] = None,
    version: VersionOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Score every included sample with a trained classifier and exclude those unlikely to belong to the task.

    The usual clean-up for web data: train a classifier (classes relevant/irrelevant, or the task classes plus
    an "other" class) with `curate train`, then drop what it does not believe belongs. Adds filter_score (the
    probability mass on --classes), filter_predicted (the argmax class), filter_confidence (its probability) and
    is_filtered (filter_score < --min-prob). Filtered rows are excluded (stage filter, reason classifier_filter)
    unless --action flag; rows already excluded are not scored and keep their reason; every row stays in the
    table. Without --classes the task classes are the model classes found among the version's labels; if that
    is all of them the score falls back to the max probability (a model unsure between the task classes).
    Uses the GPU when there is one. --version filters another version: the result is its child and becomes
    HEAD. The checkpoint's sha256 is part of the stage settings, so a retrained model is never a cached no-op.

    Examples:

        curate filter --model models/web-relevance --classes relevant --min-prob 0.5
        curate filter -m models/fm-plus-other --classes shirt,shoe,bag --min-prob 0.7 --action flag
        curate filter -m models/fm --splits train --device cpu      # max probability (no "other" class)
    """
    from curate.config import command_config
    from curate.pipeline import HEAD
    from curate.stages.filter import FilterConfig, check_config
    from curate.steps import StepContext
    from curate.steps.curation import filter_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    cli = {
        "model": model,
        "classes": _split_list(classes),
        "min_prob": min_prob,
        "action": action,
        "splits": _split_list(splits),
        "which": which,
        "batch_size": batch_size,
        "device": device,
    }
    cfg = command_config(FilterConfig, "filter", ws.root, cli)
    check_config(cfg)
    res = filter_step(ws, cfg, StepContext(base=version or HEAD, progress=not json_out))
    vid = res["parent"]
    if json_out:
        emit_json(res)
        return
    st = res["stats"]
    if res["cached"]:
        say(f"filter: same parent, model and settings as {res['version']}; HEAD moved there (nothing recomputed)")
        return
    verb = "excluded" if st["action"] == "exclude" else "flagged"
    say(
        f"filter {vid} with {st['checkpoint']} ({st['device']}): {st['scored']:,} scored, {st['filtered']:,} with "
        f"score < {st['min_prob']} {verb}; score = {st['score_description']}; {st['seconds']:.1f}s"
    )
    if st["filtered"]:
        say(f"  filtered per split: {_per(st['filtered_per_split'])}")
        say(f"  filtered per predicted class: {_per(st['filtered_per_predicted'])}")
    if st["decode_errors"]:
        say(f"  {st['decode_errors']:,} images could not be decoded and were not scored")
    say(f"  version {res['version']} (HEAD): {st['summary']['included']:,} included, {st['summary']['excluded']:,} excluded")


def register(app: typer.Typer) -> None:
    app.command("filter", rich_help_panel="Stages")(handle_errors(filter_))
