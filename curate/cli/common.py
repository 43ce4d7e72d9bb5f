"""Shared pieces of the CLI: common options, and turning domain errors into exit codes (only here)."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from curate.errors import CurateError
from curate.ui import err_console

F = TypeVar("F", bound=Callable[..., Any])

WorkspaceOpt = Annotated[
    Path,
    typer.Option(
        "--workspace", "-w", envvar="CURATE_WORKSPACE", help="Workspace folder, or an s3://bucket/prefix URL.", show_default=True
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks for unexpected errors.")]
VersionOpt = Annotated[str | None, typer.Option("--version", "-v", help="Version id, number or HEAD~N (default HEAD).")]
DEFAULT_WS = Path(os.environ.get("CURATE_WORKSPACE", "data"))


def fail(message: str, hint: str | None = None, code: int = 1) -> None:
    """Print one error line (and an optional hint) on stderr and exit with ``code``.

    The message and hint often quote data (a path, a label, a URL): they are rich ``Text``, never markup.
    """
    from rich.text import Text

    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    if hint:
        err_console.print(Text(f"hint: {hint}", style="dim"), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Wrap a command: CurateError -> one line + exit 1/2; an OSError (disk full, read-only, a file in the way)
    -> one line naming the path and the cause + exit 1; Ctrl-C -> exit 130; other errors -> one line naming the
    bug (the traceback only with ``--debug``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug"))
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except CurateError as exc:
            if debug:
                raise
            fail(exc.message, exc.hint, exc.exit_code)
        except OSError as exc:  # the disk, not curate: full, read-only, a file where a folder belongs
            if debug:
                raise
            fail(*system_error(exc, kwargs.get("workspace")))
        except KeyboardInterrupt:
            err_console.print("interrupted: nothing was committed; the previous version and HEAD are unchanged", markup=False)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the CLI edge: a bug gets one line unless --debug
            if debug:
                raise
            fail(f"internal error: {type(exc).__name__}: {exc}", "rerun with --debug for the traceback and report it")
        return None

    return wrapper  # type: ignore[return-value]


_HINTS = {
    errno.ENOSPC: "free some disk space (`curate gc` removes unfinished versions and unused blob packs) or use another --workspace",
    errno.EDQUOT: "free some space within your quota, or use another --workspace",
    errno.EACCES: "this user cannot write there: fix the folder's permissions or use another --workspace / --out",
    errno.EPERM: "this user cannot write there: fix the folder's permissions or use another --workspace / --out",
    errno.EROFS: "the file system is read-only: use a --workspace / --out on a writable disk",
    errno.ENOTDIR: "a file is in the way where curate needs a folder: move it or choose another path",
    errno.EEXIST: "a file is in the way where curate needs a folder: move it or choose another path",
}


def system_error(exc: OSError, workspace: Path | None = None) -> tuple[str, str]:
    """One line for an operating-system error: the path (the error's own, else the workspace) and the cause.

    Returns:
        ``(message, hint)``; the hint says what to do about the cause. Versions are renamed into place only when
        complete, so such an error never leaves a half-written version or a moved HEAD.
    """
    path = exc.filename or workspace or "(unknown path)"
    cause = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    # pyarrow's write errors carry the errno in their text only
    code = exc.errno or (errno.ENOSPC if "No space left" in str(exc) else 0)
    hint = _HINTS.get(code, "the previous version and HEAD are unchanged; rerun with --debug for the traceback")
    return f"{path}: {cause}", hint


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


def say(text: Any) -> None:
    """A human summary line on stdout. A ``str`` prints literally (its data may hold ``[/]``); pass a rich
    ``Text`` for styling."""
    from curate.ui import out_console

    out_console.print(text, highlight=False, soft_wrap=True, markup=False)
