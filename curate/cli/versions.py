"""Version commands: log, show, diff, checkout, samples, gc."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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


def _ws(path: Path) -> Any:
    from curate.errors import CurateError
    from curate.workspace import Workspace

    ws = Workspace(path)
    if not ws.exists():
        raise CurateError(f"{ws.location}: not a curate workspace (no versions yet)", hint="run `curate ingest SRC` first")
    return ws


def log(workspace: WorkspaceOpt = DEFAULT_WS, json_out: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the versions of the workspace, newest first; `*` marks HEAD.

    Example:  curate log
    """
    from rich.table import Table

    from curate.ui import cell, emit_json, out_console

    ws = _ws(workspace)
    head = ws.head()
    infos = [ws.info(v) for v in reversed(ws.version_ids())]
    if json_out:
        emit_json({"head": head, "versions": infos})
        return
    t = Table(box=None, header_style="bold")
    for col in ("", "version", "parent", "stage", "included", "excluded", "created"):
        t.add_column(col)
    for i in infos:
        t.add_row(
            "*" if i["id"] == head else "",
            cell(i["id"]),
            cell(i.get("parent") or "-"),
            cell(i["stage"]),
            f"{i['included']:,}",
            f"{i['excluded']:,}",
            cell(i["created"]),
        )
    out_console.print(t)


def show(
    version: Annotated[str | None, typer.Argument(help="Version (default HEAD).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Counts of a version: per class, per split, per status, excluded by stage and reason.

    Examples:  curate show;  curate show 3;  curate show HEAD~1 --json
    """
    from rich.table import Table
    from rich.text import Text

    from curate.api import describe
    from curate.ui import cell, emit_json, out_console

    shown = describe(_ws(workspace), version)
    if json_out:
        emit_json(shown)
        return
    info, summ, leaks = shown["version"], shown["summary"], shown["leakage"]
    vid = info["id"]
    say(Text.assemble((vid, "bold"), f"  stage={info['stage']}  parent={info.get('parent') or '-'}  created={info['created']}"))
    say(f"rows {summ['rows']:,}: included {summ['included']:,}, excluded {summ['excluded']:,}")
    splits = sorted(summ["per_split_class"])
    classes = sorted({c for d in summ["per_split_class"].values() for c in d})
    t = Table(title="included samples per class and split", box=None, header_style="bold")
    t.add_column("class")
    for s in splits:
        t.add_column(cell(s), justify="right")
    t.add_column("total", justify="right")
    for c in classes:
        row = [summ["per_split_class"][s].get(c, 0) for s in splits]
        t.add_row(cell(c), *(f"{n:,}" for n in row), f"{sum(row):,}")
    out_console.print(t)
    if leaks is not None:
        say(f"leakage: {leaks['groups_crossing']} of {leaks['groups_checked']} duplicate groups cross splits")
    if summ["excluded_by_reason"]:
        t = Table(title="excluded (stage:reason)", box=None, header_style="bold")
        t.add_column("stage:reason")
        t.add_column("rows", justify="right")
        for r, n in summ["excluded_by_reason"].items():
            t.add_row(cell(r), f"{n:,}")
        out_console.print(t)


def diff(
    a: Annotated[str, typer.Argument(help="Older version.")],
    b: Annotated[str, typer.Argument(help="Newer version.")] = "HEAD",
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """What changed between two versions (rows added, excluded, relabeled, moved between splits).

    Example:  curate diff 1 HEAD
    """
    from curate.summary import diff_tables
    from curate.ui import emit_json

    ws = _ws(workspace)
    va, vb = ws.resolve(a), ws.resolve(b)
    d = {"from": va, "to": vb, **diff_tables(ws.samples(va), ws.samples(vb))}
    if json_out:
        emit_json(d)
        return
    excl = ", ".join(f"{r} {n:,}" for r, n in d["newly_excluded"].items()) or "none"
    say(
        f"{va} -> {vb}: +{d['added']:,} rows, -{d['removed']:,} rows; newly excluded: {excl}; "
        f"re-included {d['newly_included']:,}; label changed {d['label_changed']:,}; "
        f"split changed {d['split_changed']:,}"
    )
    if d["columns_added"] or d["columns_removed"]:
        say(f"columns added: {', '.join(d['columns_added']) or '-'}; removed: {', '.join(d['columns_removed']) or '-'}")


def checkout(
    version: Annotated[str, typer.Argument(help="Version to make HEAD.")],
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Move HEAD to another version (nothing is deleted; the next stage builds on it).

    Example:  curate checkout 2
    """
    from curate.ui import emit_json

    ws = _ws(workspace)
    with ws.writer():
        vid = ws.resolve(version)
        old = ws.head()
        ws.set_head(vid)
    if json_out:
        emit_json({"head": vid, "previous": old})
    else:
        say(f"HEAD: {old} -> {vid}")


def samples(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .parquet, .csv or .jsonl.")],
    version: VersionOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write the whole sample table of a version (excluded rows included) for pandas, DuckDB or a spreadsheet.

    Examples:  curate samples --out samples.parquet;  curate samples -v 1 -o v1.csv
    """
    from curate.errors import UsageError
    from curate.tables import write_table
    from curate.ui import emit_json

    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv", ".jsonl"):
        raise UsageError(f"--out {out}: use a .parquet, .csv or .jsonl file name")
    ws = _ws(workspace)
    vid = ws.resolve(version)
    table = ws.samples(vid)
    write_table(table, out)
    if json_out:
        emit_json({"version": vid, "out": str(out), "rows": table.num_rows, "columns": table.column_names})
    else:
        say(f"{table.num_rows:,} rows x {table.num_columns} columns of {vid} -> {out}")


def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    grace: Annotated[
        float | None,
        typer.Option("--grace", help="A bucket workspace (no lock): keep garbage younger than this many seconds (default 3600)."),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Remove garbage: unfinished versions from interrupted commands and blob packs no version uses.

    Example:  curate gc --dry-run
    """
    from curate.ui import emit_json

    ws = _ws(workspace)
    with ws.writer():
        res = ws.gc(dry_run=dry_run, grace_s=grace)
    if json_out:
        emit_json({"dry_run": dry_run, **res})
        return
    verb = "would remove" if dry_run else "removed"
    say(
        f"gc: {verb} {len(res['removed_dirs'])} unfinished version folders and {len(res['removed_packs'])} "
        f"unreferenced packs ({human_bytes(res['freed_bytes'])})"
    )


def register(app: typer.Typer) -> None:
    for fn in (log, show, diff, checkout, samples, gc):
        app.command(rich_help_panel="Versions")(handle_errors(fn))
