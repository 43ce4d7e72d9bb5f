"""``curate split`` and ``curate normalize``."""

from __future__ import annotations

from typing import Annotated

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, WorkspaceOpt, handle_errors, say


def split(
    ratios: Annotated[str | None, typer.Option(help="train:val:test (70:20:10), train:val (80:20) or train=8,val=1,test=1.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the assignment order (same seed, same splits).")] = None,
    group_col: Annotated[str | None, typer.Option(help="Column whose equal values must share a split (e.g. patient_id).")] = None,
    keep_existing: Annotated[bool | None, typer.Option("--keep-existing", help="Keep the source's own split (origin_split, "
                                                       "e.g. MNIST test) and carve val out of its train rows.")] = None,
    train_dev: Annotated[str | None, typer.Option("--train-dev", help="Carve a train_dev split out of train: a fraction "
                                                  "(0.05) of each class's train rows or a row count (500).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Only report duplicate groups that cross splits; commit nothing.")] = False,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Assign train/val/test: stratified by label, duplicate groups whole, stable when data is added later.

    Rows that already have a split keep it; new rows fill each class up to the ratios. Every duplicate group
    (from `curate dedupe`) and every value of `--group-col` lands in one split, so nothing leaks.

    Examples:

        curate split                         # 70:20:10
        curate split --ratios 80:10:10 --seed 1 --group-col patient_id
        curate split --keep-existing         # MNIST: official test stays test; val carved out of train
        curate split --check                 # leakage report only
        curate split --train-dev 0.05        # 5% of train (per class) held out as train_dev
    """
    from curate.config import command_config
    from curate.stages.split import SplitConfig, leakage, parse_ratios, parse_train_dev
    from curate.steps import StepContext
    from curate.steps.curation import prepare_split, split_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    if check:
        vid = ws.resolve(None)
        res = {"version": vid, **leakage(ws.samples(vid), group_col)}
        if json_out:
            emit_json(res)
        else:
            say(f"leakage check {vid}: {res['groups_crossing']} of {res['groups_checked']} duplicate/user groups cross splits "
                f"({res['rows_in_crossing_groups']} rows)")
        if res["groups_crossing"]:
            raise typer.Exit(1)
        return
    cli = {"ratios": parse_ratios(ratios) if ratios else None, "seed": seed, "group_col": group_col, "keep_existing": keep_existing,
           "train_dev": parse_train_dev(train_dev)}
    cfg = command_config(SplitConfig, "split", ws.root, cli, prepare=prepare_split)
    res = split_step(ws, cfg, StepContext(progress=not json_out))
    if json_out:
        emit_json(res)
        return
    st = res["stats"]
    per_split = st["summary"]["per_split"]
    cached = " (cached: same parent and settings)" if res["cached"] else ""
    say(f"split -> {res['version']}{cached}: " + ", ".join(f"{k} {v:,}" for k, v in per_split.items()))
    if not res["cached"]:
        lk = st["leakage"]
        say(f"  newly assigned {st['newly_assigned']:,}; groups crossing splits: {lk['groups_crossing']} of {lk['groups_checked']}")
        if "train_dev" in st:
            say(f"  train_dev: {st['train_dev']['rows']:,} rows ({st['train_dev']['moved']:,} moved from train now)")


def normalize(
    split_name: Annotated[
        str | None, typer.Option("--split", help="Split whose included rows define the statistics (default train).")
    ] = None,
    channels: Annotated[int | None, typer.Option(help="1 or 3; 0 decides from the data (default 0).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Processes for decoding (default: cores).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Per-channel mean/std (and a pixel histogram) from the included train rows only.

    Stored in the version state; every later export's dataset.json and every checkpoint carries it.

    Example:  curate normalize
    """
    from curate.config import command_config
    from curate.stages.normalize import NormalizeConfig
    from curate.steps import StepContext
    from curate.steps.curation import check_normalize, normalize_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    cfg = command_config(NormalizeConfig, "normalize", workspace, {"split": split_name, "channels": channels})
    check_normalize(cfg)
    res = normalize_step(Workspace(workspace), cfg, StepContext(workers=workers, progress=not json_out))
    if json_out:
        emit_json(res)
        return
    norm = res["stats"]["normalization"]
    fmt = ", ".join
    say(f"normalize -> {res['version']}: {norm['images']:,} {norm['split']} images, {norm['channels']} channel(s); "
        f"mean [{fmt(f'{m:.4f}' for m in norm['mean'])}] std [{fmt(f'{s:.4f}' for s in norm['std'])}]")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Stages")(handle_errors(split))
    app.command(rich_help_panel="Stages")(handle_errors(normalize))
