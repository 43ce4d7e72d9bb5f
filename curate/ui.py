"""Progress bars and summaries on the terminal. Stages only see a ``progress(n)`` callback."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console

err_console = Console(stderr=True)
# Piped output (logs, CI, `| less`) gets wide lines instead of 80-column tables with truncated ids.
out_console = Console(width=None if sys.stdout.isatty() else 160)

Advance = Callable[[int], None]


@contextlib.contextmanager
def progress(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Advance]:
    """A rich progress bar on stderr (rate and ETA); a no-op when disabled or stderr is not a terminal."""
    if not enabled or not err_console.is_terminal:
        yield lambda n=1: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed or 0:>9,.0f}/s")

    cols = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*cols, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def emit_json(payload: Any) -> None:
    """Print a machine-readable summary on stdout (``--json``)."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
