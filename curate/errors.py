"""User-facing errors. They become exit codes and one-line messages only at the CLI edge (curate.cli)."""

from __future__ import annotations


class CurateError(Exception):
    """A data or user error: bad input, a missing file, a busy workspace.

    Args:
        message: one line that names the file, URL or version and the reason.
        hint: an optional second line that tells the user what to do about it.
        exit_code: 1 for data/user errors, 2 for bad usage.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(CurateError):
    """Options that contradict each other or cannot be parsed (exit code 2)."""

    exit_code = 2


class WorkspaceBusy(CurateError):
    """Another process holds the workspace lock."""


class TooManyErrors(CurateError):
    """More than ``max_error_fraction`` of a stage's inputs failed; nothing was committed."""
