"""A workspace on an S3 bucket: the same versions as a local one, committed without rename and without a lock.

Layout under the workspace URL (``s3://bkt/ws``)::

    blobs/pack-*.parquet                          packs, uploaded before any version that names them
    versions/<NNNNNN>-<stage>-<token>/...         one version: samples/, state/, stats.json, version.json (last)
    HEAD                                          {"head": vid, "versions": {vid: prefix}}: the only mutable object
    exports/<version>/                            the default exports

An object store has no rename of a prefix and no lock, so the commit protocol is optimistic:

1. ``writer()`` reads HEAD and its ETag once; the command works on that snapshot (stages read local files from
   a cache folder, ``root``; packs and version files are downloaded on first use: both are immutable).
2. ``commit`` builds the version locally, uploads the packs it references that the bucket lacks (create-only
   writes of immutable names), then the version's files under a prefix no other writer uses (a random token),
   ``version.json`` last.
3. HEAD is replaced with a conditional write: ``If-Match`` the ETag read in step 1 (``If-None-Match: *`` for the
   first commit). If another writer moved HEAD in between, S3 answers 412 and the command fails with "workspace
   moved on (HEAD is now X): rerun"; its prefix is deleted (best effort) and is otherwise garbage for ``gc``.

A version exists only once HEAD lists it, so a reader that follows HEAD never sees a half-uploaded version, and a
crash at any step leaves HEAD and every committed version as they were. ``gc`` removes unlisted prefixes and
unreferenced packs older than a grace period (default an hour): younger ones may be another writer's upload in
flight. Only ``s3://`` is supported: the protocol needs conditional writes, which s3fs exposes for S3 only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.blobs import BlobStore
from curate.errors import CurateError, UsageError
from curate.remote import filesystem, remote_error
from curate.workspace import _VERSION_RE, Workspace, bucket_url

HEAD_KEY = "HEAD"
HEAD_FORMAT = "curate-bucket-workspace/1"
#: Garbage younger than this is left alone by ``gc``: without a lock it may be a writer's upload in progress.
GC_GRACE_S = 3600.0
SUPPORTED = ("s3", "s3a")
#: Stores (endpoint and bucket) this process has seen refuse a write whose If-Match cannot hold.
_PROBED: set[str] = set()


class WorkspaceMoved(CurateError):
    """Another writer moved HEAD of a bucket workspace after this command read it: nothing was committed."""


def cache_root(url: str) -> Path:
    """The local cache folder of the bucket workspace ``url``: ``$CURATE_CACHE_DIR`` (default
    ``$XDG_CACHE_HOME/curate``, ``~/.cache/curate``) ``/buckets/<hash of the URL and the endpoint>``.

    The endpoint is part of the key: the same bucket name on two S3-compatible stores is two workspaces.
    """
    base = os.environ.get("CURATE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "curate"
    )
    key = hashlib.sha256(f"{url}|{os.environ.get('AWS_ENDPOINT_URL', '')}".encode()).hexdigest()[:16]
    return Path(base) / "buckets" / key


def _code(exc: BaseException) -> str:
    """The S3 error code behind an s3fs error (``NoSuchKey``, ``NoSuchBucket``, ``PreconditionFailed``...)."""
    resp = getattr(exc.__cause__, "response", None) or getattr(exc, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


class _BucketBlobs(BlobStore):
    """The packs of a bucket workspace: read from the local cache, downloaded there on first use."""

    def __init__(self, owner: BucketWorkspace) -> None:
        super().__init__(owner.root / "blobs")  # the workspace's own layout: this class is part of it
        self.owner = owner

    def path(self, pack: str) -> Path:
        local = self.root / f"{pack}.parquet"
        if not local.exists():
            self.owner._download(f"blobs/{pack}.parquet", local)
        return local


class BucketWorkspace(Workspace):
    """A workspace at an ``s3://`` URL (see the module docstring for the protocol).

    Args:
        root: ``s3://bucket/prefix`` (``s3:/bucket/prefix`` as a Path option writes it).

    Raises:
        UsageError: a protocol other than ``s3://``.
        CurateError: the bucket cannot be reached (missing, no credentials), on first access.
    """

    def __init__(self, root: Any = None) -> None:
        self.url = bucket_url(os.fspath(root)) or ""
        if self.url.split("://", 1)[0] not in SUPPORTED:
            raise UsageError(
                f"{self.url}: a workspace on {self.url.split('://', 1)[0]}:// is not supported (the commit needs "
                "conditional writes; only s3:// is implemented)",
                hint="use a local --workspace or s3://; sources and exports can be on any fsspec URL",
            )
        self.prefix = filesystem(self.url)[1]
        self.root = cache_root(self.url)
        self.versions_dir = self.root / "versions"
        self.blobs = _BucketBlobs(self)
        self._lock_fh: Any = None
        self._manifest: dict[str, Any] | None = None
        self._etag: str | None = None

    @property
    def location(self) -> str:
        return self.url

    @property
    def fs(self) -> Any:
        """fsspec's filesystem for the URL in this process (never one inherited through fork or pickling)."""
        return filesystem(self.url)[0]

    # ----------------------------------------------------------------- storage calls
    def _key(self, rel: str) -> str:
        return f"{self.prefix.rstrip('/')}/{rel}"

    def _call(self, doing: str, rel: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CurateError:
            raise
        except Exception as exc:  # noqa: BLE001 - storage libraries raise their own types: one line each
            raise remote_error(f"{self.url}/{rel}".rstrip("/"), exc, doing) from None

    def _download(self, rel: str, local: Path) -> None:
        """Copy the immutable object ``rel`` into the cache (through a temporary name: never half a file)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{local.name}")
        try:
            self._call("read", rel, self.fs.get_file, self._key(rel), str(tmp))
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def _read_head(self) -> tuple[dict[str, Any], str | None]:
        """HEAD's manifest and ETag in one GET; an empty manifest and None when there is no HEAD yet."""
        from fsspec.asyn import sync

        async def get() -> tuple[bytes, str]:
            bucket, key, _ = self.fs.split_path(self._key(HEAD_KEY))
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            return await resp["Body"].read(), resp["ETag"]

        try:
            body, etag = sync(self.fs.loop, get)
        except FileNotFoundError as exc:
            if _code(exc) == "NoSuchBucket" or "bucket" in str(exc).lower():
                raise remote_error(self.url, exc, "open the workspace") from None
            return {"format": HEAD_FORMAT, "head": None, "versions": {}}, None
        except Exception as exc:  # noqa: BLE001 - credentials, endpoint: one line
            raise remote_error(self.url, exc, "open the workspace") from None
        try:
            return json.loads(body), etag
        except ValueError:
            raise CurateError(f"{self.url}/{HEAD_KEY}: damaged (not JSON)") from None

    def _snapshot(self) -> dict[str, Any]:
        """The manifest: inside ``writer()`` the one it read (the optimistic base); else the last one read
        (read once per instance: a long-lived read-only ``Workspace`` does not see later commits of others)."""
        if self._manifest is None:
            self._manifest, self._etag = self._read_head()
        return self._manifest

    def _check_conditional_writes(self) -> None:
        """Refuse a store that ignores ``If-Match`` (then a "conditional" HEAD write could drop another's commit).

        Once per process and store: a PUT of an empty probe object with an ``If-Match`` no object can match must
        fail (412, or 404 where the key is missing). If it succeeds, the store ignored the condition.
        """
        store = f"{os.environ.get('AWS_ENDPOINT_URL', '')}|{self._key('')}"
        if store in _PROBED:
            return
        bucket, key, _ = self.fs.split_path(self._key(".curate-probe"))
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"", IfMatch='"curate-probe-matches-nothing"')
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - told apart by the S3 error code
            if _code(exc) != "PreconditionFailed" and "precondition" not in str(exc).lower():
                raise remote_error(self.url, exc, "write") from None
        else:
            with contextlib.suppress(Exception):
                self.fs.rm_file(f"{bucket}/{key}")
            raise CurateError(
                f"{self.url}: the store ignores conditional writes (If-Match), so commits of two writers could be lost",
                hint="use a store with conditional writes (AWS S3, MinIO, recent Ceph) or a local --workspace",
            )
        _PROBED.add(store)

    def _move_head(self, manifest: dict[str, Any]) -> None:
        """Replace HEAD with ``manifest`` if nobody replaced it since ``writer()`` read it (the commit point).

        Raises:
            WorkspaceMoved: another writer committed first (S3 answered 412, or 409 for a concurrent write).
        """
        self._check_conditional_writes()
        cond = {"IfMatch": self._etag} if self._etag else {"IfNoneMatch": "*"}
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        bucket, key, _ = self.fs.split_path(self._key(HEAD_KEY))
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **cond)
        except Exception as exc:  # noqa: BLE001 - told apart by the S3 error code
            moved = isinstance(exc, FileExistsError) or _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict")
            if not moved and not (isinstance(exc, OSError) and "precondition" in str(exc).lower()):
                raise remote_error(f"{self.url}/{HEAD_KEY}", exc, "move HEAD") from None
            now = self._read_head()[0].get("head")
            raise WorkspaceMoved(
                f"{self.url}: workspace moved on (HEAD is now {now}): rerun",
                hint="another command committed to this workspace while this one ran; nothing was committed",
            ) from None
        self.fs.invalidate_cache(self._key(HEAD_KEY))
        self._manifest, self._etag = manifest, out.get("ETag")

    # ----------------------------------------------------------------- the Workspace interface
    @contextlib.contextmanager
    def writer(self) -> Iterator[Workspace]:
        """Read HEAD once (the base every commit of the block is checked against); no lock: see the module."""
        manifest, etag = self._read_head()
        outer = self._lock_fh
        self._lock_fh, self._manifest, self._etag = "optimistic", manifest, etag
        try:
            yield self
        finally:
            self._lock_fh = outer

    def exists(self) -> bool:
        return bool(self._snapshot()["versions"])

    def head(self) -> str | None:
        return self._snapshot().get("head")

    def version_ids(self) -> list[str]:
        return sorted(self._snapshot()["versions"])

    def _prefix_of(self, vid: str) -> str:
        prefix = self._snapshot()["versions"].get(vid)
        if prefix is None:
            raise CurateError(f"unknown version {vid!r} in {self.url}", hint="`curate log` lists the versions")
        return prefix

    def path(self, vid: str) -> Path:
        """The local copy of version ``vid`` (downloaded whole on first use; versions never change)."""
        prefix = self._prefix_of(vid)
        local = self.versions_dir / prefix
        if not local.exists():
            tmp = self.versions_dir / f".tmp-{uuid.uuid4().hex}"
            try:
                found = self._call("list", f"versions/{prefix}", self.fs.find, self._key(f"versions/{prefix}"))
                base = self._key(f"versions/{prefix}/")
                for key in found:
                    self._download(key[len(self.prefix.rstrip("/")) + 1 :], tmp / key[len(base) :])
                os.replace(tmp, local)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return local

    def info(self, vid: str) -> dict[str, Any]:
        """``version.json`` of ``vid``, read alone (``find_cached`` reads every version's)."""
        prefix = self._prefix_of(vid)
        full = self.versions_dir / prefix / "version.json"
        if full.exists():
            return json.loads(full.read_text())
        local = self.root / "info" / f"{prefix}.json"
        if not local.exists():
            self._download(f"versions/{prefix}/version.json", local)
        return json.loads(local.read_text())

    def export_dir(self, vid: str) -> Path:
        """A local export (training reads shards from local disk): ``<cache>/exports/<vid>``."""
        return self.root / "exports" / vid

    def export_target(self, vid: str) -> str:
        """``curate export`` without ``--out``: ``<url>/exports/<vid>``, beside the versions."""
        return f"{self.url}/exports/{vid}"

    def _last_number(self) -> int:
        return max((int(v[:6]) for v in self._snapshot()["versions"] if _VERSION_RE.match(v)), default=0)

    def _pack_name_taken(self, name: str) -> bool:
        if super()._pack_name_taken(name):
            return True
        found = self._call("list", "blobs", self.fs.glob, self._key(f"blobs/pack-{name}-*.parquet"))
        return bool(found)

    def set_head(self, vid: str) -> None:
        """Point HEAD at the committed version ``vid`` (a conditional write, as a commit's)."""
        self._require_lock()
        manifest = self._snapshot()
        self._prefix_of(vid)
        if manifest.get("head") != vid:
            self._move_head({**manifest, "head": vid})

    def _publish(self, tmp: Path, vid: str, table: pa.Table, *, move_head: bool) -> None:
        """Upload the finished local version ``tmp`` as ``vid`` (packs, files, ``version.json`` last), then HEAD."""
        self._check_conditional_writes()
        self._upload_packs(table)
        prefix = f"{vid}-{uuid.uuid4().hex[:12]}"
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != "version.json")
        for f in [*files, tmp / "version.json"]:
            rel = f"versions/{prefix}/{f.relative_to(tmp).as_posix()}"
            self._call("upload", rel, self.fs.put_file, str(f), self._key(rel))
        manifest = self._snapshot()
        new = {**manifest, "format": HEAD_FORMAT, "versions": {**manifest["versions"], vid: prefix}}
        if move_head:
            new["head"] = vid
        try:
            self._move_head(new)
        except WorkspaceMoved:
            with contextlib.suppress(Exception):  # best effort: gc removes what is left
                self.fs.rm(self._key(f"versions/{prefix}"), recursive=True)
            raise
        os.replace(tmp, self.versions_dir / prefix)

    def _upload_packs(self, table: pa.Table) -> None:
        """Upload the packs ``table`` names that the bucket lacks: create-only writes, before the version."""
        names = {p for p in table.column("pack").unique().to_pylist() if p is not None}
        listed = self._call("list", "blobs", self.fs.glob, self._key("blobs/pack-*.parquet")) if names else []
        have = {k.rsplit("/", 1)[1].removesuffix(".parquet") for k in listed}
        for name in sorted(names - have):
            local, rel = self.blobs.root / f"{name}.parquet", f"blobs/{name}.parquet"
            if not local.exists():
                raise CurateError(f"{self.url}/{rel}: a pack of this version is neither on the bucket nor in {local.parent}")
            try:
                self.fs.put_file(str(local), self._key(rel), mode="create")
            except FileExistsError:  # written meanwhile by another writer: fine if it is the same bytes
                if self._call("check", rel, self.fs.size, self._key(rel)) != local.stat().st_size:
                    raise WorkspaceMoved(f"{self.url}/{rel}: another writer wrote a different pack of that name: rerun") from None
            except Exception as exc:  # noqa: BLE001
                raise remote_error(f"{self.url}/{rel}", exc, "upload") from None

    def gc(self, *, dry_run: bool = False, grace_s: float | None = None) -> dict[str, Any]:
        """Delete version prefixes HEAD does not list and packs no listed version references, if older than
        ``grace_s`` (default ``GC_GRACE_S``); the local cache's copies of them go too.

        Returns:
            ``{"removed_dirs": [...], "removed_packs": [...], "freed_bytes": int}``.
        """
        self._require_lock()
        grace = GC_GRACE_S if grace_s is None else grace_s
        listed = set(self._snapshot()["versions"].values())
        found = self._call("list", "", self.fs.find, self._key(""), detail=True)
        base = self._key("")
        cutoff = time.time() - grace
        referenced: set[str] = set()
        for vid in self.version_ids():
            packs = pq.read_table(self.path(vid) / "samples", columns=["pack"]).column("pack")
            referenced.update(p for p in packs.unique().to_pylist() if p is not None)
        dirs: dict[str, list[tuple[str, int, float]]] = {}
        packs: dict[str, tuple[str, int, float]] = {}
        for key, meta in found.items():
            rel = key[len(base) :]
            when = meta.get("LastModified")
            stamp = when.timestamp() if hasattr(when, "timestamp") else 0.0
            parts = rel.split("/")
            if parts[0] == "versions" and len(parts) > 2 and parts[1] not in listed:
                dirs.setdefault(parts[1], []).append((key, int(meta.get("size") or 0), stamp))
            elif parts[0] == "blobs" and len(parts) == 2 and parts[1].removesuffix(".parquet") not in referenced:
                packs[parts[1]] = (key, int(meta.get("size") or 0), stamp)
        old_dirs = {d: objs for d, objs in dirs.items() if max(o[2] for o in objs) <= cutoff}
        old_packs = {p: v for p, v in packs.items() if v[2] <= cutoff}
        if not dry_run:
            doomed = [o[0] for objs in old_dirs.values() for o in objs] + [v[0] for v in old_packs.values()]
            if doomed:
                self._call("delete", "", self.fs.rm, doomed)
            for name in old_dirs:
                shutil.rmtree(self.versions_dir / name, ignore_errors=True)
            for name in old_packs:
                (self.blobs.root / name).unlink(missing_ok=True)
        freed = sum(o[1] for objs in old_dirs.values() for o in objs) + sum(v[1] for v in old_packs.values())
        return {"removed_dirs": sorted(f"versions/{d}" for d in old_dirs), "removed_packs": sorted(old_packs), "freed_bytes": freed}
