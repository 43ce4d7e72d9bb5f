"""``curate ingest``."""

from __future__ import annotations

from typing import Annotated

import typer

from curate.cli.common import (
    DEFAULT_WS,
    DebugOpt,
    JsonOpt,
    WorkspaceOpt,
    handle_errors,
    human_bytes,
    say,
)
from curate.cli.crawl import (
    AllowHostOpt,
    AllowNoaiOpt,
    AllowPrivateOpt,
    ConcurrencyOpt,
    IgnoreRobotsOpt,
    PerHostOpt,
    ProxyOpt,
)


def _size(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    from curate.errors import CurateError
    from curate.stages.export import parse_shard_size

    try:
        rows, nbytes = parse_shard_size(text)
    except CurateError as exc:
        raise CurateError(f"--{what} {text!r}: give a number of bytes or a size (64MB, 1GiB)", exit_code=exc.exit_code) from None
    return nbytes if nbytes is not None else rows


def ingest(
    src: Annotated[str, typer.Argument(help="Folder, manifest (.csv/.parquet/.jsonl), idx file or folder, .tar/.zip.")],
    format: Annotated[str | None, typer.Option("--format", "-f", help="auto|folder|csv|parquet|jsonl|idx|tar|zip")] = None,
    unlabeled: Annotated[bool | None, typer.Option("--unlabeled", help="Ignore folder names / label column: no labels.")] = None,
    path_col: Annotated[str | None, typer.Option(help="Manifest column with the path (relative to the manifest) or URL.")] = None,
    label_col: Annotated[str | None, typer.Option(help="Manifest column with the label (optional).")] = None,
    split_col: Annotated[str | None, typer.Option(help="Manifest column with a train/val/test origin (optional).")] = None,
    split_name: Annotated[str | None, typer.Option(help="Record this origin split (e.g. train, test) on every row.")] = None,
    assign_split: Annotated[bool | None, typer.Option("--assign-split", help="Also use the origin split as `split`.")] = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated allowed labels; others are excluded (unknown_label).")] = None,
    class_names: Annotated[str | None, typer.Option(help="idx: comma-separated names for label ids 0..K-1.")] = None,
    max_bytes: Annotated[str | None, typer.Option(help="Largest file accepted, e.g. 64MB.")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Largest width*height decoded (decompression-bomb guard).")] = None,
    max_error_fraction: Annotated[
        float | None, typer.Option(help="Fail and commit nothing when more than this share of inputs failed (default 0.5).")
    ] = None,
    follow_links: Annotated[
        bool | None, typer.Option("--follow-links", help="Read symbolic links that point outside the source folder.")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="Processes for decode/hash (default: cores).")] = None,
    timeout: Annotated[
        float | None, typer.Option(help="URL rows: seconds each URL may take in all, retries included. Default 30.")
    ] = None,
    concurrency: ConcurrencyOpt = None,
    per_host: PerHostOpt = None,
    allow_private: AllowPrivateOpt = None,
    allow_host: AllowHostOpt = None,
    ignore_robots: IgnoreRobotsOpt = None,
    allow_noai: AllowNoaiOpt = None,
    proxy: ProxyOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Add images to the workspace as a new version (the first one, or on top of HEAD).

    Every file is read, sha256-hashed and fully decoded. Corrupt, truncated, empty, non-image and too-large
    files become rows with status=excluded and a reason; the same bytes twice are one sample.
    http(s) URLs in a manifest are fetched like `curate crawl` fetches them: concurrently, robots.txt obeyed,
    only public addresses unless --allow-private (cloud metadata never), no proxy unless --proxy, --timeout
    per URL in all.

    Examples:

        curate ingest photos/                      # ImageFolder: photos/<class>/<file>
        curate ingest crawl/ --unlabeled           # flat folder, no labels
        curate ingest list.csv --path-col file --label-col species
        curate ingest ../shared/datasets/fashion-mnist --assign-split
        curate ingest archive.tar.gz
        curate ingest s3://bucket/photos/          # also s3://b/list.csv, s3://b/x.tar.gz (AWS_* variables)
    """
    from curate.config import command_config
    from curate.stages.ingest import IngestConfig
    from curate.steps import StepContext
    from curate.steps.sources import ingest_step
    from curate.ui import emit_json
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    cli = {
        "source": src,
        "format": format,
        "unlabeled": unlabeled,
        "path_col": path_col,
        "label_col": label_col,
        "split_col": split_col,
        "split_name": split_name,
        "assign_split": assign_split,
        "classes": classes,
        "class_names": class_names,
        "max_bytes": _size(max_bytes, "max-bytes"),
        "max_pixels": max_pixels,
        "max_error_fraction": max_error_fraction,
        "timeout": timeout,
        "concurrency": concurrency,
        "per_host": per_host,
        "allow_private": allow_private,
        "allow_hosts": tuple(allow_host) if allow_host else None,
        "ignore_robots": ignore_robots,
        "allow_noai": allow_noai,
        "proxy": proxy,
        "follow_links": follow_links,
    }
    cfg = command_config(IngestConfig, "ingest", ws.root, cli)
    res = ingest_step(ws, cfg, StepContext(workers=workers, progress=not json_out))
    st = res["stats"]
    if json_out:
        emit_json(res)
        return
    excl = st["new_excluded_by_reason"]
    say(
        f"ingest {cfg.source}: {st['inputs']:,} inputs -> {st['new_samples']:,} new samples "
        f"({st['duplicate_bytes']:,} duplicate bytes merged), {human_bytes(st['bytes_stored'])} stored, "
        f"{st['seconds']:.1f}s ({st['inputs'] / max(st['seconds'], 1e-9):,.0f}/s)"
    )
    if excl:
        say("  excluded: " + ", ".join(f"{r} {n:,}" for r, n in excl.items()))
    for note, n in st.get("notes", {}).items():
        say(f"  note: {note.replace('_', ' ')}: {n:,}")
    summ = st["summary"]
    say(
        f"  version {res['version']} (HEAD): {summ['included']:,} included, {summ['excluded']:,} excluded, "
        f"{len(summ['per_class'])} classes"
    )


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Stages")(handle_errors(ingest))
