"""``curate review``: the review desk (serve the page) and ``--commit`` (its decisions as a new version)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from curate.cli.common import DEFAULT_WS, DebugOpt, JsonOpt, WorkspaceOpt, handle_errors, say

if TYPE_CHECKING:
    from curate.workspace import Workspace


def review(
    version: Annotated[str | None, typer.Argument(help="Version to review (id, number or HEAD~N; default HEAD).")] = None,
    queue: Annotated[
        str, typer.Option(help="label_issues | outliers | duplicates | low_quality | errors:RUN (a `curate train` run folder).")
    ] = "label_issues",
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: a free one).")] = 0,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the URL only; do not open a browser.")] = False,
    causes: Annotated[
        str | None, typer.Option(help="Your own cause tags after the default ones, comma-separated: --causes glare,cropped.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows, worst first.")] = 500,
    commit: Annotated[bool, typer.Option("--commit", help="Commit the decisions of VERSION as a new version (no server).")] = False,
    workspace: WorkspaceOpt = DEFAULT_WS,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Review flagged samples in a local web page and commit your decisions as a new version.

    The page lists the rows of a queue worst first: the image (click for full size), given and suggested label,
    scores, the duplicate group beside it. Decide by click or key: k keep, a accept the suggestion, x exclude,
    l set a label, 1-9 toggle a cause (blurry, mislabeled, occluded, ambiguous, wrong_class, duplicate, then
    --causes). Every decision is written at once to <workspace>/review/<version>.jsonl; reload, close the tab or
    stop the server and nothing is lost. The server listens on 127.0.0.1 only and needs the token in the printed URL.

    Examples:

        curate review                                  # label issues of HEAD; Ctrl-C stops the server
        curate review --queue duplicates --causes glare,cropped
        curate review --queue errors:models/run1 --no-browser
        curate review --commit                         # decisions of HEAD -> a new version (HEAD)
    """
    from curate.errors import UsageError
    from curate.review.queues import check_queue
    from curate.workspace import Workspace

    ws = Workspace(workspace)
    if commit:
        from curate.review.decisions import commit_review

        res = commit_review(ws, version)
        if json_out:
            from curate.ui import emit_json

            emit_json(res)
        else:
            _committed(res)
        return
    check_queue(queue)
    if not 0 <= port <= 65535 or limit < 1:
        raise UsageError(f"--port must be 0..65535 and --limit >= 1 (got {port}, {limit})")
    _serve(ws, version, queue, port, causes, limit, json_out, not no_browser)


def _serve(
    ws: Workspace, version: str | None, queue: str, port: int, causes: str | None, limit: int, json_out: bool, browser: bool
) -> None:
    from curate.review.desk import Desk, parse_causes

    try:
        desk = Desk(ws, version, queue=queue, causes=parse_causes(causes), port=port, limit=limit)
    except OSError as exc:
        from curate.errors import CurateError

        raise CurateError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}", hint="use another --port, or 0") from exc
    try:  # Ctrl-C is how the desk ends: from here on it is a normal stop, not an interruption
        if json_out:  # one line, so a script can read the URL and go on reading nothing else
            sys.stdout.write(json.dumps({"url": desk.url, "version": desk.vid, "queue": queue, "rows": len(desk.items),
                                         "journal": str(desk.journal)}) + "\n")  # fmt: skip
            sys.stdout.flush()
        else:
            say(f"review: {len(desk.items):,} rows of the {queue} queue of version {desk.vid}")
            say(f"  open {desk.url}")
            say(f"  decisions -> {desk.journal}; Ctrl-C stops the server; then `curate review --commit {desk.vid}`")
            sys.stdout.flush()
        if browser:
            import webbrowser

            webbrowser.open(desk.url)
        desk.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        desk.server.server_close()
    if not json_out:
        from curate.review import journal

        n = len(journal.read(desk.journal))
        say(f"review: stopped; {n:,} decisions on {desk.vid} in the journal (`curate review --commit {desk.vid}`)")


def _committed(res: dict[str, Any]) -> None:
    st = res["stats"]
    if res["cached"]:
        say(f"review: these decisions were committed before as {res['version']}; HEAD moved there")
    else:
        say(
            f"review: {st['reviewed']:,} decisions from {res['journal']}: {st['kept']:,} kept, {st['relabeled']:,} relabeled, "
            f"{st['excluded']:,} excluded, {st['tagged']:,} tagged"
        )
    causes = ", ".join(f"{c} {n}" for c, n in sorted(st.get("by_cause", {}).items(), key=lambda kv: (-kv[1], kv[0])))
    if causes:
        say(f"  causes: {causes}")
    say(f"  version {res['version']} (HEAD): {st['summary']['included']:,} included, {st['summary']['excluded']:,} excluded")


def register(app: typer.Typer) -> None:
    app.command(rich_help_panel="Stages")(handle_errors(review))
