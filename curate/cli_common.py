"""Shared pieces of the CLI: common options, and turning domain errors into exit codes (only here)."""

from __future__ import annotations

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
    typer.Option("--workspace", "-w", envvar="CURATE_WORKSPACE", help="Workspace folder.", show_default=True),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks for unexpected errors.")]
VersionOpt = Annotated[str | None, typer.Option("--version", "-v", help="Version id, number or HEAD~N (default HEAD).")]
DEFAULT_WS = Path(os.environ.get("CURATE_WORKSPACE", "data"))


def fail(message: str, hint: str | None = None, code: int = 1) -> None:
    """Print one error line (and an optional hint) on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint: {hint}[/]", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Wrap a command: CurateError -> one line + exit 1/2; Ctrl-C -> exit 130; other errors -> one line
    naming the bug (the traceback only with ``--debug``)."""

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
        except KeyboardInterrupt:
            err_console.print("interrupted: nothing was committed; the previous version and HEAD are unchanged")
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the CLI edge: a bug gets one line unless --debug
            if debug:
                raise
            fail(f"internal error: {type(exc).__name__}: {exc}", "rerun with --debug for the traceback and report it")
        return None

    return wrapper  # type: ignore[return-value]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


def say(text: str) -> None:
    """A human summary line on stdout."""
    from curate.ui import out_console

    out_console.print(text, highlight=False, soft_wrap=True)
