"""``curate export``."""

from __future__ import annotations

from typing import Annotated

import typer

from curate.cli.common import (
    DEFAULT_WS,
    DebugOpt,
    JsonOpt,
    VersionOpt,
    WorkspaceOpt,
    handle_errors,
    human_bytes,
    say,
)


def export(
    version: VersionOpt = None,
    format: Annotated[str | None, typer.Option("--format", "-f", help="Comma-separated: parquet,webdataset (default both).")] = None,
    shard_size: Annotated[str | None, typer.Option(help="Samples per shard (default 10000) or bytes per shard (256MB).")] = None,
    min_shards: Annotated[
        int | None, typer.Option(help="At least this many shards per split when it has the rows (default 4: one per loader worker).")
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Folder or bucket URL s3://b/prefix (default <workspace>/exports/<version>).")
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write the included rows of a version as training shards per split.

    Writes parquet/{split}-NNNNNN.parquet and/or webdataset/{split}-NNNNNN.tar (one folder per format, shards
    only, so `parquet/*.parquet` reads exactly the rows), index.json (file, rows, bytes, sha256) and dataset.json
    (classes, counts, lineage, normalization, image mode and channels). A version without splits exports as `all`.
    Exporting the same version twice gives byte-identical files. Settings may also come from [export] in curate.toml.

    Examples:

        curate export
        curate export --format webdataset --shard-size 256MB --out shards/
        curate export --out s3://bucket/datasets/v3      # credentials: AWS_* variables, ~/.aws, fsspec config
    """
    import dataclasses

    from curate.config import command_config
    from curate.export import ExportConfig, parse_formats, parse_shard_size, prepare_export
    from curate.pipeline import HEAD
    from curate.steps import StepContext
    from curate.steps.outputs import check_export, export_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    cli = {
        "formats": parse_formats(format) if format is not None else None,
        "min_shards": min_shards,
        "out": out or None,
    }
    cfg = command_config(ExportConfig, "export", ws.root, cli, prepare=prepare_export)
    if shard_size is not None:  # one size sets both limits: a row count clears the byte limit and vice versa
        rows, nbytes = parse_shard_size(shard_size)
        cfg = dataclasses.replace(cfg, shard_rows=rows, shard_bytes=nbytes)
    check_export(cfg)
    res = export_step(ws, cfg, StepContext(base=version or HEAD, progress=not json_out))
    vid = res["version"]
    if json_out:
        emit_json(res)
        return
    splits = ", ".join(f"{s} {n:,}" for s, n in res["splits"].items())
    say(
        f"export {vid} -> {res['out']}: {res['shards']} shards ({', '.join(res['formats'])}), {splits}; "
        f"{human_bytes(res['bytes'])} in {res['seconds']:.1f}s ({res['mb_per_s']} MB/s)"
    )


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Stages")(handle_errors(export))
