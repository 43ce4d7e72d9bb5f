"""Where an export lands: a local folder (written aside, then renamed into place) or an fsspec URL (uploaded).

Shards are always written by the same code into a local staging folder, so an export on a bucket is
byte-identical to a local one. What a reader can rely on:

- **Local folder:** all or nothing. The export is complete in a hidden sibling folder before one ``rename``
  puts it in place (a re-export swaps the old folder aside first).
- **Bucket (S3 and other object stores):** there is no rename, only whole-object writes: each object appears
  complete or not at all, never half-written, but the export as a whole appears object by object. So
  ``dataset.json`` is deleted first (re-export), shards are uploaded as they are written (staging holds one
  memory chunk of shards at a time), then ``index.json``, then ``dataset.json`` LAST; keys of an older export
  that the new index does not name are deleted after it. A reader that starts from ``dataset.json`` and reads
  the files ``index.json`` names sees a complete export or none; a bare glob of ``parquet/*.parquet`` during
  an export can see some shards. A failed export deletes what it uploaded (best effort) and leaves no
  ``dataset.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.remote import filesystem, is_remote, remote_error

CARD = "dataset.json"
#: Top-level names an export consists of: a prefix holding only these may be overwritten by a new export.
LAYOUT = frozenset({CARD, "index.json", "parquet", "webdataset"})


class LocalSink:
    """An export into a local folder, committed by rename."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.where = str(out)

    def check(self) -> None:
        """Refuse a file, or a non-empty folder that is not an export (never replace a folder of the user's)."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise CurateError(f"{out}: exists and is not a folder", hint="give --out a folder (new, empty or a previous export)")
        if out.exists() and any(out.iterdir()) and not (out / CARD).exists():
            raise CurateError(f"{out}: folder is not empty and is not a curate export; refusing to overwrite it")

    def staging(self) -> Path:
        """A new empty folder beside ``out`` (same file system, so the final rename is atomic)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.parent / f".tmp-export-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        return tmp

    def shards_done(self, tmp: Path, files: list[str]) -> None:
        """Nothing to do: shards stay in staging until the rename."""

    def commit(self, tmp: Path) -> None:
        """Put the complete export in place: one rename (a previous export is moved aside, then deleted)."""
        out = self.out
        if out.exists():
            trash = out.parent / f".trash-{uuid.uuid4().hex[:8]}"
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def read_text(self, name: str) -> str | None:
        try:
            return (self.out / name).read_text()
        except OSError:
            return None

    def size(self, name: str) -> int | None:
        p = self.out / name
        return p.stat().st_size if p.is_file() else None


class RemoteSink:
    """An export under an fsspec URL: uploaded object by object, ``dataset.json`` last (see the module docstring)."""

    def __init__(self, url: str, scratch: Path) -> None:
        self.fs, path = filesystem(url)
        self.root = path.rstrip("/")
        self.where = url.rstrip("/")
        self.scratch = scratch
        self.uploaded: list[str] = []
        self._before: list[str] = []

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}"

    def check(self) -> None:
        """Refuse a prefix that holds anything but an export; fail in one line on a missing bucket or credentials."""
        try:
            if self.fs.isfile(self.root):
                raise CurateError(f"{self.where}: is an object, not a prefix", hint="give --out a prefix (s3://bucket/exports/v1)")
            found = self.fs.find(self.root)
            if not found:  # find() of a missing bucket may just be empty: ask the bucket itself
                self.fs.ls(self.root.split("/", 1)[0])
        except CurateError:
            raise
        except Exception as exc:  # noqa: BLE001 - storage libraries raise their own types
            raise remote_error(self.where, exc, "write the export there") from None
        rel = [k[len(self.root) + 1 :] for k in found if k.startswith(self.root + "/")]
        foreign = sorted(r for r in rel if r.split("/", 1)[0] not in LAYOUT)
        if foreign:
            raise CurateError(
                f"{self.where}: prefix holds objects that are not a curate export ({foreign[0]}); refusing to overwrite it",
                hint="give --out an empty prefix or a previous export",
            )
        self._before = rel

    def staging(self) -> Path:
        """A local folder for shards between writing and upload (inside the workspace: local disk, not tmpfs)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        tmp = self.scratch / f".tmp-export-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        # Re-export: the old card goes first, so no reader takes old and new shards for one export.
        if CARD in self._before:
            self._call("delete the previous dataset.json", self.fs.rm_file, self._key(CARD))
        return tmp

    def _call(self, doing: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - storage libraries raise their own types
            raise remote_error(self.where, exc, doing) from None

    def _put(self, tmp: Path, name: str) -> None:
        self._call(f"upload {name}", self.fs.put_file, str(tmp / name), self._key(name))
        self.uploaded.append(name)
        (tmp / name).unlink()

    def shards_done(self, tmp: Path, files: list[str]) -> None:
        """Upload shards as soon as they are written: local staging holds one chunk of shards at a time."""
        for name in files:
            self._put(tmp, name)

    def commit(self, tmp: Path) -> None:
        """``index.json``, then ``dataset.json`` last; then the keys of an older export the new index does not name."""
        self._put(tmp, "index.json")
        self._put(tmp, CARD)
        stale = [self._key(r) for r in self._before if r not in set(self.uploaded)]
        if stale:
            self._call("delete shards of the previous export", self.fs.rm, stale)
        shutil.rmtree(tmp, ignore_errors=True)

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        # Best effort: without dataset.json the objects are no export, and the next export may overwrite them.
        if self.uploaded:
            with contextlib.suppress(Exception):
                self.fs.rm([self._key(n) for n in self.uploaded])

    def read_text(self, name: str) -> str | None:
        try:
            return self.fs.cat_file(self._key(name)).decode()
        except Exception:  # noqa: BLE001 - missing or unreadable: the caller treats it as "no finished export"
            return None

    def size(self, name: str) -> int | None:
        try:
            return int(self.fs.size(self._key(name)))
        except Exception:  # noqa: BLE001
            return None


def open_sink(out: str, scratch: Path) -> LocalSink | RemoteSink:
    """The sink for ``--out``: an fsspec URL (``s3://bucket/prefix``) or a local folder (a ``file://`` URL too)."""
    if is_remote(out):
        return RemoteSink(out, scratch)
    from curate.remote import local_path

    return LocalSink(Path(local_path(out)))


def read_finished(sink: LocalSink | RemoteSink) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """``(dataset.json, index.json)`` of a complete export at ``sink`` (every shard there with its size), else None."""
    try:
        card = json.loads(sink.read_text(CARD) or "")
        index = json.loads(sink.read_text("index.json") or "")
    except ValueError:
        return None
    if not all(sink.size(r["file"]) == r["bytes"] for r in index):
        return None
    return card, index
