"""The crawl journal: an append-only record of every finished URL, so a killed crawl resumes without refetching.

Layout under ``<workspace>/crawls/<crawl_id>/``::

    meta.json          crawl id, what is crawled, the current generation, committed yes/no and the version
    journal.jsonl      one JSON object per finished URL (status, HTTP status, error, bytes, elapsed ...)
    bodies-<gen>.bin   the bytes of the images downloaded in generation <gen>, back to back
    journal-<k>.jsonl, bodies-<gen>-<k>.bin    the same for worker process k > 0 (``--workers``): one writer per file

Records are buffered and written in batches (every quarter second or 1024 records or 16 MiB) by one background
thread: the bodies first, then the lines, each file fsynced, so a line never points at bytes that are not on
disk. After ``kill -9`` everything written survives (the kernel has it); a torn last line is ignored. A resumed
crawl reads the records back and fetches only what has none.

Generations: the first crawl is generation 1. A crawl that committed its version and is run again starts afresh
(the directory is reset); ``--retry-failed`` starts generation g+1 on the same history and only refetches URLs
whose last record failed. ``records()`` returns the history (latest record per URL); ``current()`` the records
of the running generation, which are what the stage commits.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from curate.errors import CurateError

FLUSH_RECORDS = 1024
FLUSH_BYTES = 16 << 20


def _fsync_replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Journal:
    """The journal of one crawl.

    Args:
        root: ``<workspace>/crawls/<crawl_id>``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.meta: dict[str, Any] = {}
        self.history: dict[str, dict[str, Any]] = {}  # url -> latest record (this generation and earlier ones)
        self.resumed = 0  # records of the current generation found on disk when it was opened
        self._lines: list[bytes] = []
        self._bodies: list[bytes] = []
        self._buffered = 0
        self._offset = 0
        self.part = 0  # which worker process writes through this object (0: the only one, or the first)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()

    # -------------------------------------------------------------------------------- opening
    def read_meta(self) -> dict[str, Any] | None:
        """``meta.json`` as it is on disk (None before the first run)."""
        path = self.root / "meta.json"
        return json.loads(path.read_text()) if path.exists() else None

    def open(self, identity: dict[str, Any], *, retry_failed: bool) -> str:
        """Start or resume; returns the mode: ``fresh``, ``resume``, ``retry`` or ``resume-retry``.

        Raises:
            CurateError: ``retry_failed`` without an earlier crawl of the same inputs.
        """
        meta_path = self.root / "meta.json"
        meta = self.read_meta()
        if meta is None or (meta.get("committed") and not retry_failed):
            if retry_failed:
                raise CurateError(
                    "--retry-failed: no earlier crawl of these inputs in this workspace",
                    hint="run the same `curate crawl` command without --retry-failed first",
                    exit_code=2,
                )
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True)
            meta, mode = {"identity": identity, "gen": 1, "committed": False, "version": None}, "fresh"
        elif meta.get("committed"):
            meta, mode = {**meta, "gen": meta["gen"] + 1, "committed": False, "version": None}, "retry"
        else:
            mode = "resume-retry" if retry_failed else "resume"
        self.meta = meta
        _fsync_replace(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
        self._load()
        self.use_part(0)
        return mode

    def use_part(self, part: int) -> None:
        """Write to part ``part`` from now on (a forked worker process calls this before its first record)."""
        self.part = part
        self._lines, self._bodies, self._buffered, self._pending, self._pool = [], [], 0, [], None
        self._lock = threading.Lock()
        path = self.bodies_path()
        self._offset = path.stat().st_size if path.exists() else 0  # bytes of a killed run stay where they are

    @property
    def gen(self) -> int:
        return int(self.meta["gen"])

    def bodies_path(self, part: int | None = None) -> Path:
        part = self.part if part is None else part
        return self.root / (f"bodies-{self.gen}.bin" if part == 0 else f"bodies-{self.gen}-{part}.bin")

    def journal_path(self, part: int | None = None) -> Path:
        part = self.part if part is None else part
        return self.root / ("journal.jsonl" if part == 0 else f"journal-{part}.jsonl")

    def reload(self) -> None:
        """Read the journal again (after worker processes wrote their parts)."""
        self._load()

    def _load(self) -> None:
        """Read every part back: ``history`` gets the latest record per URL (parts never share a URL)."""
        self.history, self.resumed = {}, 0
        sizes: dict[int, int] = {}
        for path in sorted(self.root.glob("journal*.jsonl")):
            data = path.read_bytes()
            lines = data.split(b"\n")
            if not data.endswith(b"\n"):
                lines = lines[:-1]  # a torn last line: that URL is simply fetched again
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("gen") == self.gen:
                    part = rec.get("part", 0)
                    if part not in sizes:
                        body = self.bodies_path(part)
                        sizes[part] = body.stat().st_size if body.exists() else 0
                    if "offset" in rec and rec["offset"] + rec["length"] > sizes[part]:
                        continue  # its bytes never reached the disk: fetch again
                    self.resumed += 1
                old = self.history.get(rec["url"])
                if old is None or old.get("gen", 0) <= rec.get("gen", 0):  # files are read in name order, not time order
                    self.history[rec["url"]] = rec

    def current(self) -> list[dict[str, Any]]:
        """Latest record per URL of the running generation, sorted by URL."""
        return sorted((r for r in self.history.values() if r.get("gen") == self.gen), key=lambda r: r["url"])

    # -------------------------------------------------------------------------------- writing
    def append(self, rec: dict[str, Any], body: bytes | None = None) -> None:
        """Add a finished URL (``body``: the image bytes to keep); written by the next ``flush``."""
        rec = {k: v for k, v in rec.items() if v is not None}
        rec["gen"] = self.gen
        if self.part:
            rec["part"] = self.part
        with self._lock:
            if body is not None:
                rec["offset"], rec["length"] = self._offset, len(body)
                self._offset += len(body)
                self._bodies.append(body)
                self._buffered += len(body)
            self._lines.append(json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
            full = len(self._lines) >= FLUSH_RECORDS or self._buffered >= FLUSH_BYTES
        self.history[rec["url"]] = rec
        if full:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered records to the writer thread (returns at once)."""
        with self._lock:
            if not self._lines:
                return
            lines, bodies = self._lines, self._bodies
            self._lines, self._bodies, self._buffered = [], [], 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="curate-journal")  # one writer keeps the order
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._pool.submit(self._write, lines, bodies))

    def _write(self, lines: list[bytes], bodies: list[bytes]) -> None:
        if bodies:
            with open(self.bodies_path(), "ab") as fh:  # noqa: SIM117 - two files, two fsyncs, in this order
                fh.write(b"".join(bodies))
                fh.flush()
                os.fsync(fh.fileno())
        with open(self.journal_path(), "ab") as fh:
            fh.write(b"".join(lines))
            fh.flush()
            os.fsync(fh.fileno())

    def sync(self) -> None:
        """Flush and wait until everything appended so far is on disk (raises what the writer raised)."""
        self.flush()
        for fut in self._pending:
            fut.result()
        self._pending = []

    def close(self) -> None:
        self.sync()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    # -------------------------------------------------------------------------------- reading back
    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[dict[str, Any]], bytes]]:
        """``read(record) -> bytes`` for ``downloaded`` records of this generation, from memory-mapped bodies files
        (a seek and a read per small image cost more than the copy)."""
        maps: dict[int, Any] = {}
        with contextlib.ExitStack() as stack:

            def read(rec: dict[str, Any]) -> bytes:
                part = rec.get("part", 0)
                if part not in maps:
                    path = self.bodies_path(part)
                    if not path.exists() or path.stat().st_size == 0:
                        maps[part] = b""
                    else:
                        fh = stack.enter_context(open(path, "rb"))
                        maps[part] = stack.enter_context(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
                start, length = rec["offset"], rec["length"]
                data = maps[part][start : start + length]
                if len(data) != length:
                    raise CurateError(f"crawl journal {self.root}: bytes of {rec['url']} are missing", hint="run `curate crawl` again")
                return bytes(data)

            yield read

    def mark_committed(self, version: str) -> None:
        """The version holding this generation is committed: keep the records, drop the bytes (now in packs).

        The journal is rewritten as one file with the latest record per URL first, so records that were superseded,
        or dropped at load time because their bytes were missing, never count as history again.
        """
        if not self.history:
            self._load()
        lines = b"".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for r in self.history.values())
        _fsync_replace(self.root / "journal.jsonl", lines)
        self.meta = {**self.meta, "committed": True, "version": version}
        _fsync_replace(self.root / "meta.json", json.dumps(self.meta, indent=1, sort_keys=True).encode())
        for path in [*self.root.glob("journal-*.jsonl"), *self.root.glob(f"bodies-{self.gen}*.bin")]:
            path.unlink(missing_ok=True)
