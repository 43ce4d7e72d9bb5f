"""A workspace: a chain of immutable dataset versions plus the blob packs they share (on a bucket: ``bucketws``).

Layout (see ARCHITECTURE.md section 3)::

    <root>/blobs/pack-*.parquet
    <root>/versions/<NNNNNN>-<stage>/{samples/part-*.parquet, state/, stats.json, version.json}
    <root>/HEAD
    <root>/exports/<version>/
    <root>/.lock

A version is built in ``versions/.tmp-*`` and renamed into place with ``version.json`` written last, then HEAD
is replaced atomically: a crash at any point leaves the previous version and HEAD as they were.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import __version__, wslock
from curate.blobs import BlobStore, PackWriter
from curate.errors import CurateError
from curate.schema import conform, validate

DEFAULT_WORKSPACE = "data"
PART_ROWS = 1_000_000
_VERSION_RE = re.compile(r"^(\d{6})-([a-z0-9_]+)$")


def config_sha256(config: dict[str, Any]) -> str:
    """Stable hash of a resolved stage config (keys sorted, JSON-encoded)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


#: ``s3://b/ws``, or ``s3:/b/ws`` as a Path option collapses it: a URL where a local workspace folder belongs.
_URL_ROOT = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):/+")


def bucket_url(text: str) -> str | None:
    """The bucket URL ``text`` names (``s3:/b/ws/`` -> ``s3://b/ws``), or None for a local path or ``file://`` URL."""
    m = _URL_ROOT.match(text)
    if m is None or m.group(1).lower() == "file":
        return None
    return f"{m.group(1).lower()}://{text[m.end() :]}".rstrip("/")


def _local_root(text: str) -> str:
    """The workspace folder ``text`` names: a ``file://`` URL is its path."""
    m = _URL_ROOT.match(text)
    return "/" + text[m.end() :] if m is not None else text


class Workspace:
    """Open a workspace folder (created on first write); a bucket URL opens a ``curate.bucketws.BucketWorkspace``.

    Args:
        root: the workspace folder or ``s3://`` URL; ``--workspace`` / ``CURATE_WORKSPACE``, default ``./data``.

    Raises:
        CurateError: ``root`` is a file.
        UsageError: ``root`` is a URL of a protocol the bucket workspace does not support.
    """

    def __new__(cls, root: Any = None) -> Workspace:  # noqa: D102 - the class docstring says it
        if cls is Workspace and root is not None and bucket_url(os.fspath(root)) is not None:
            from curate.bucketws import BucketWorkspace

            return super().__new__(BucketWorkspace)
        return super().__new__(cls)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(_local_root(os.fspath(root)))
        if self.root.exists() and not self.root.is_dir():
            raise CurateError(f"{self.root}: the workspace path is a file, not a folder", hint="give --workspace a folder")
        self.versions_dir = self.root / "versions"
        self.blobs = BlobStore(self.root / "blobs")
        self._lock_fh: Any = None

    @property
    def location(self) -> str:
        """Where the workspace is, for messages: its folder (a bucket workspace: its URL)."""
        return str(self.root)

    # ----------------------------------------------------------------- locking
    @contextlib.contextmanager
    def writer(self) -> Iterator[Workspace]:
        """Hold the single-writer lock for the block: an ``flock`` on ``<root>/.lock`` (why: ``curate.wslock``).

        Raises:
            WorkspaceBusy: another process is writing to this workspace (fails at once, never waits).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        fh = wslock.acquire(self.root / ".lock")
        self._lock_fh = fh
        owner = os.getpid()
        try:
            yield self
        finally:
            if os.getpid() == owner:  # a forked child leaving this block must not unlock its parent's lock
                wslock.release(fh)
                self._lock_fh = None

    def _require_lock(self) -> None:
        if self._lock_fh is None:
            raise RuntimeError("workspace writes need `with ws.writer():`")

    # ----------------------------------------------------------------- reading
    def exists(self) -> bool:
        return self.versions_dir.exists()

    def head(self) -> str | None:
        """The current version id, or None for an empty workspace."""
        path = self.root / "HEAD"
        if not path.exists():
            return None
        vid = path.read_text().strip()
        return vid or None

    def version_ids(self) -> list[str]:
        """All committed versions (those with ``version.json``), oldest first."""
        if not self.versions_dir.exists():
            return []
        out = [p.name for p in self.versions_dir.iterdir() if _VERSION_RE.match(p.name) and (p / "version.json").exists()]
        return sorted(out)

    def resolve(self, ref: str | None = None) -> str:
        """Turn ``None``/``HEAD``/``HEAD~N``/``N``/``000003``/``000003-ingest`` into a version id.

        Raises:
            CurateError: empty workspace, unknown or ambiguous reference.
        """
        if ref is None or ref.startswith("HEAD"):
            head = self.head()
            if head is None:
                raise CurateError(f"workspace {self.location} has no versions yet", hint="run `curate ingest SRC` first")
            back = 0
            if ref and ref != "HEAD":
                m = re.fullmatch(r"HEAD(~(\d+)|\^+)", ref)
                if not m:
                    raise CurateError(f"cannot parse version reference {ref!r}", exit_code=2)
                back = int(m.group(2)) if m.group(2) else len(ref) - 4
            vid = head
            for _ in range(back):
                parent = self.info(vid).get("parent")
                if parent is None:
                    raise CurateError(f"{ref} goes back past the first version")
                vid = parent
            return vid
        ids = self.version_ids()
        if ref in ids:
            return ref
        if ref.isdigit():
            num = f"{int(ref):06d}"
            hits = [v for v in ids if v.startswith(num + "-")]
        else:
            hits = [v for v in ids if v.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise CurateError(f"unknown version {ref!r} in {self.location}", hint="`curate log` lists the versions")
        raise CurateError(f"version reference {ref!r} is ambiguous: {', '.join(hits)}")

    def path(self, vid: str) -> Path:
        return self.versions_dir / vid

    def info(self, vid: str) -> dict[str, Any]:
        """The parsed ``version.json`` of ``vid``."""
        try:
            return json.loads((self.path(vid) / "version.json").read_text())
        except FileNotFoundError:
            raise CurateError(f"unknown version {vid!r} in {self.location}") from None

    def stats(self, vid: str) -> dict[str, Any]:
        path = self.path(vid) / "stats.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def samples(self, vid: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """The sample table of a version (all rows, excluded ones included)."""
        vid = self.resolve(vid)
        return pq.read_table(self.path(vid) / "samples", columns=columns)

    def state_path(self, vid: str, name: str) -> Path:
        return self.path(vid) / "state" / name

    def model_dir(self, name: str) -> Path:
        """A folder of trained models of this workspace: ``<root>/models/<name>`` (e.g. ``<vid>-pseudolabel``)."""
        return self.models_dir() / name

    def review_journal(self, vid: str) -> Path:
        """The JSONL journal of review decisions on ``vid``: ``<root>/review/<vid>.jsonl`` (a version is immutable,
        its review goes on after the commit)."""
        return self.root / "review" / f"{vid}.jsonl"

    def crawl_journal(self, crawl_id: str) -> Path:
        """One crawl's journal folder (``<root>/crawls/<crawl_id>``): per-URL records, so a killed crawl resumes."""
        return self.root / "crawls" / crawl_id

    def exports_dir(self) -> Path:
        """The folder of the default exports: ``<root>/exports``."""
        return self.root / "exports"

    def export_dir(self, vid: str) -> Path:
        """The default export of version ``vid`` (``curate export`` without ``--out``): ``<root>/exports/<vid>``."""
        return self.exports_dir() / vid

    def export_target(self, vid: str) -> str:
        """Where ``curate export`` without ``--out`` writes: ``export_dir`` (a bucket workspace: under its URL)."""
        return str(self.export_dir(vid))

    def models_dir(self) -> Path:
        """Where training runs go and are looked for by default: ``<root>/models``."""
        return self.root / "models"

    def report_file(self) -> Path:
        """The default HTML report (``curate report`` without ``--out``, a pipeline's report step): ``<root>/report.html``."""
        return self.root / "report.html"

    def run_journal(self, name: str) -> Path:
        """The journal of pipeline ``name`` (``curate run``): ``<root>/runs/<name>.json``."""
        return self.root / "runs" / f"{name}.json"

    def lineage(self, vid: str) -> list[str]:
        """``vid`` and its ancestors, oldest first."""
        chain: list[str] = []
        cur: str | None = vid
        while cur is not None:
            chain.append(cur)
            cur = self.info(cur).get("parent")
        return chain[::-1]

    def find_cached(self, *, parent: str | None, stage: str, config_sha: str) -> str | None:
        """A version that this stage already produced from ``parent`` with the same resolved config."""
        for vid in reversed(self.version_ids()):
            info = self.info(vid)
            if info["stage"] == stage and info.get("parent") == parent and info["config_sha256"] == config_sha:
                return vid
        return None

    # ----------------------------------------------------------------- writing
    def commit(
        self,
        *,
        stage: str,
        parent: str | None,
        table: pa.Table,
        config: dict[str, Any],
        stats: dict[str, Any],
        state: dict[str, bytes] | None = None,
        move_head: bool = True,
    ) -> str:
        """Write a new immutable version and (by default) point HEAD at it.

        Args:
            stage: the stage name (lowercase), part of the version id.
            parent: the version this one was derived from (None for the first).
            table: the full sample table; reserved columns are conformed and validated.
            config: the resolved stage config (stored with its sha256 so reruns can be skipped).
            stats: counts in/out, excluded by reason, per class and split, seconds.
            state: files for ``state/`` (normalization.json, pred_probs.parquet, ...), name -> bytes.
            move_head: False leaves HEAD where it is.

        Returns:
            The new version id, ``NNNNNN-stage``.
        """
        self._require_lock()
        table = conform(table)
        validate(table)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.versions_dir / f".tmp-{uuid.uuid4().hex}"
        try:
            (tmp / "samples").mkdir(parents=True)
            for i, start in enumerate(range(0, max(table.num_rows, 1), PART_ROWS)):
                part = table.slice(start, PART_ROWS)
                pq.write_table(part, tmp / "samples" / f"part-{i:05d}.parquet", compression="zstd")
            if state:
                (tmp / "state").mkdir()
                for name, data in state.items():
                    _fsync_write(tmp / "state" / name, data)
            _fsync_write(tmp / "stats.json", json.dumps(stats, indent=2, sort_keys=True, default=str).encode())
            vid = f"{self._last_number() + 1:06d}-{stage}"
            n_ok = pc.sum(pc.equal(table.column("status"), "ok")).as_py() or 0
            info = {
                "id": vid,
                "parent": parent,
                "stage": stage,
                "config": config,
                "config_sha256": config_sha256(config),
                "code_version": __version__,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "rows": table.num_rows,
                "included": n_ok,
                "excluded": table.num_rows - n_ok,
                "columns": table.column_names,
            }
            _fsync_write(tmp / "version.json", json.dumps(info, indent=2, default=str).encode())
            self._publish(tmp, vid, table, move_head=move_head)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return vid

    def _last_number(self) -> int:
        """The highest version number taken (finished or not): the next commit takes the one after it."""
        return max((int(p.name[:6]) for p in self.versions_dir.iterdir() if _VERSION_RE.match(p.name)), default=0)

    def _publish(self, tmp: Path, vid: str, table: pa.Table, *, move_head: bool) -> None:
        """Make the finished version folder ``tmp`` version ``vid``: one rename, then HEAD (``table``: its rows)."""
        os.rename(tmp, self.versions_dir / vid)
        if move_head:
            self.set_head(vid)

    def set_head(self, vid: str) -> None:
        """Point HEAD at ``vid`` atomically (write + fsync + rename)."""
        self._require_lock()
        if not (self.path(vid) / "version.json").exists():
            raise CurateError(f"unknown version {vid!r} in {self.location}")
        tmp = self.root / f".HEAD.{os.getpid()}"
        _fsync_write(tmp, (vid + "\n").encode())
        os.replace(tmp, self.root / "HEAD")

    def gc(self, *, dry_run: bool = False, grace_s: float | None = None) -> dict[str, Any]:
        """Delete garbage: unfinished version folders, temp files, and packs no version references.

        ``grace_s`` matters on a bucket only (no lock there: garbage younger than it may be a writer's upload).

        Returns:
            ``{"removed_dirs": [...], "removed_packs": [...], "freed_bytes": int}``.
        """
        self._require_lock()
        removed_dirs: list[str] = []
        freed = 0
        if self.versions_dir.exists():
            for p in self.versions_dir.iterdir():
                if p.name.startswith(".tmp-") or (_VERSION_RE.match(p.name) and not (p / "version.json").exists()):
                    freed += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
                    removed_dirs.append(p.name)
                    if not dry_run:
                        shutil.rmtree(p, ignore_errors=True)
        # Leftovers of interrupted exports and HEAD updates.
        for folder, prefixes in ((self.exports_dir(), (".tmp-export-", ".trash-")), (self.root, (".HEAD.", ".lock."))):
            if folder.exists():
                for p in folder.iterdir():
                    if p.name.startswith(prefixes):
                        freed += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
                        removed_dirs.append(str(p.relative_to(self.root)))
                        if not dry_run and p.is_dir():
                            shutil.rmtree(p, ignore_errors=True)
                        elif not dry_run:
                            p.unlink(missing_ok=True)
        referenced: set[str] = set()
        for vid in self.version_ids():
            packs = pq.read_table(self.path(vid) / "samples", columns=["pack"]).column("pack")
            referenced.update(p for p in packs.unique().to_pylist() if p is not None)
        removed_packs: list[str] = []
        if self.blobs.root.exists():
            for f in self.blobs.root.iterdir():
                name = f.name.removesuffix(".parquet")
                if f.name.startswith(".tmp-") or (name.startswith("pack-") and name not in referenced):
                    freed += f.stat().st_size
                    removed_packs.append(f.name)
                    if not dry_run:
                        f.unlink(missing_ok=True)
        return {"removed_dirs": sorted(removed_dirs), "removed_packs": sorted(removed_packs), "freed_bytes": freed}

    def pack_writer(self, token: str) -> PackWriter:
        """A ``PackWriter`` for new blobs of this workspace (needs the writer lock).

        Pack names must be unique: the same stage on the same parent with the same settings (a checkout, or an
        ingest whose files changed) must never replace a pack a version references, since packs are immutable. A
        counter suffix is added only when the plain token is taken: a fresh workspace gets the same names every time.
        """
        self._require_lock()
        name, n = token, 0
        while self._pack_name_taken(name):
            n += 1
            name = f"{token}.{n}"
        return PackWriter(self.blobs.root, name)

    def _pack_name_taken(self, name: str) -> bool:
        return any(self.blobs.root.glob(f"pack-{name}-*.parquet"))
