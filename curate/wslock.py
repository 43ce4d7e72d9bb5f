"""The workspace's single-writer lock: an ``flock`` on ``<root>/.lock`` holding the holder's pid.

flock, not POSIX ``lockf``: a POSIX lock is dropped when the process closes *any* descriptor of the file (a second
``Workspace`` in the same process reading who holds it would release it), while an flock belongs to one open file
and the kernel drops it when its holder dies, ``kill -9`` included. What an flock does share is fork: children (a
worker pool) inherit the open file and kept the lock held after their parent was killed. So forked children give
their copy up at once (``_drop_inherited_locks``), and a lock whose recorded holder is no longer running is taken
over with a notice on stderr.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

from curate.errors import WorkspaceBusy

# Descriptors of the writer locks this process holds: a forked child must not keep them (see _drop_inherited_locks).
_HELD_LOCK_FDS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a freshly forked child: let go of the parent's writer locks.

    An flock belongs to the open file, which fork shares: a worker that outlived a killed parent kept the
    workspace locked forever. Closing the child's copy releases nothing for the parent (LOCK_UN would), and
    pointing the descriptor at /dev/null instead of closing it keeps the number valid for the inherited file
    object, so nothing in the child can later close an unrelated file that reused it.
    """
    if not _HELD_LOCK_FDS:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    for fd in _HELD_LOCK_FDS:
        os.dup2(null, fd)
    os.close(null)
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _pid_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): kill(0) said it exists
        return True


def acquire(path: Path) -> Any:
    """Open ``path`` and take its flock (non-blocking); returns the open file, with this pid written in it.

    Every attempt runs under a short flock on the workspace folder, so taking over a stale lock (replacing
    the file) and writing the holder's pid are never interleaved with another attempt: a second writer
    either sees the live pid or the new file. A holder that left its pid in a file someone else still
    locks (a worker of a killed curate that is still alive) is gone: the lock is taken over with a notice.

    Raises:
        WorkspaceBusy: a running process holds the lock.
    """
    guard = os.open(path.parent, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        _flock_within(guard, seconds=10.0, path=path)
        fh = open(path, "a+")  # noqa: SIM115 - held open for the duration of the lock
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            pid = int(holder[4:]) if re.fullmatch(r"pid \d+", holder) else None
            if pid is None or _pid_running(pid):
                raise WorkspaceBusy(
                    f"workspace busy: {path.parent} is locked by {holder or 'another process'}",
                    hint="wait for the other curate command to finish, or use another --workspace",
                ) from None
            fh = _replace_lock_file(path)
            print(f"curate: taking over the lock of {path.parent}: its holder (pid {pid}) is no longer running", file=sys.stderr)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        _HELD_LOCK_FDS.add(fh.fileno())
        return fh
    finally:
        os.close(guard)  # closing the folder's only descriptor here releases the guard


def _flock_within(fd: int, *, seconds: float, path: Path) -> None:
    """Take an exclusive flock on ``fd``, retrying for up to ``seconds`` (the guard is held for microseconds)."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise WorkspaceBusy(f"workspace busy: another process keeps taking the lock of {path.parent}") from None
            time.sleep(0.005)


def _replace_lock_file(path: Path) -> Any:
    """A new, locked lock file renamed over ``path`` (the old one stays locked by a dead holder's leftovers)."""
    tmp = path.with_name(f".lock.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    fh = open(tmp, "a+")  # noqa: SIM115 - returned open
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else can hold it
    os.replace(tmp, path)
    return fh


def release(fh: Any) -> None:
    """Give up a lock taken by ``acquire``: clear the pid, unlock, close."""
    fh.seek(0)
    fh.truncate()
    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    _HELD_LOCK_FDS.discard(fh.fileno())
    fh.close()
