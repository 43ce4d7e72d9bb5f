"""Progress bars and summaries on the terminal. Stages only see a ``progress(n)`` callback.

Text from data (labels, paths, URLs, error messages) is never read as rich markup or emoji codes: a class named
``p[red]x`` or a file ``a[/]b.png`` prints literally, and ``--ratios a:b:c`` stays ``a:b:c`` (``:b:`` is an emoji
code). So both consoles have ``emoji=False``, and styled lines build ``rich.text.Text`` objects or ``escape`` data.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console

err_console = Console(stderr=True, emoji=False)
# Piped output (logs, CI, `| less`) gets wide lines instead of 80-column tables with truncated ids.
out_console = Console(width=None if sys.stdout.isatty() else 160, emoji=False)

Advance = Callable[[int], None]
CrawlUpdate = Callable[[int, "int | None", int, int], None]


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
        TextColumn("{task.description}", style="bold", markup=False),
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


@contextlib.contextmanager
def crawl_progress(total: int | None, *, enabled: bool = True) -> Iterator[CrawlUpdate]:
    """A rich bar on stderr: URLs done / known, URLs per second, failures and bytes received (no-op off a terminal)."""
    if not enabled or not err_console.is_terminal:
        yield lambda done, total, errors, nbytes: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from curate.cli.common import human_bytes

    cols = [
        TextColumn("crawl", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8,.0f} URLs/s", markup=False),
        TextColumn("{task.fields[errors]:,} failed", style="red", markup=False),
        TextColumn("{task.fields[received]}", markup=False),
        TimeElapsedColumn(),
    ]
    with Progress(*cols, console=err_console, transient=True) as bar:
        task = bar.add_task("crawl", total=total, rate=0.0, errors=0, received="0 B")
        t0, start = time.perf_counter(), None

        def update(done: int, known: int | None, errors: int, nbytes: int) -> None:
            nonlocal start
            start = done if start is None else start  # resumed URLs do not count towards the rate
            rate = (done - start) / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=done, total=known, rate=rate, errors=errors, received=human_bytes(nbytes))

        yield update


def cell(value: object) -> Any:
    """A table cell or line part from data: a ``rich.text.Text`` (never parsed as markup or emoji)."""
    from rich.text import Text

    return Text("" if value is None else str(value))
