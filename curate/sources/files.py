"""Folder (ImageFolder layout or flat with ``--unlabeled``) and tar/zip archive sources.

Labels come from the first path component under the root (``root/cat/a/b.png`` is ``cat``), so nested
folders inside a class are fine. Archives are read member by member into memory, never extracted to disk,
and any member that could escape a target folder (absolute path, ``..``, links, devices) is refused with a
row of its own rather than skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pyarrow as pa

from curate.errors import CurateError
from curate.sources import BATCH_BYTES, ITEM_SCHEMA, Source, SourceOptions


def _label_from_parts(parts: tuple[str, ...], opts: SourceOptions) -> str | None:
    if opts.unlabeled or len(parts) < 2:
        return None
    return parts[0]


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


class FolderSource(Source):
    """Every file below ``root`` (sorted walk, hidden files and folders skipped and counted).

    A symbolic link to a file inside the folder is read like the file; one that resolves outside the folder
    becomes a row with reason ``outside_source`` unless ``follow_links`` (a folder from elsewhere must not make
    ingest read ``~/.ssh`` or ``/etc``). Links to folders are not descended (counted in ``notes``).
    """

    def __init__(self, root: Path, opts: SourceOptions) -> None:
        self.root = root
        self.opts = opts
        self._links: set[str] = set()
        self._files = self._walk()
        self.total = len(self._files)

    def _walk(self) -> list[str]:
        # Listing paths first (strings only) gives the progress bar a total; 1M paths is ~100 MB at most.
        # scandir tells links apart for free (d_type), where os.walk would need an lstat per file.
        out: list[str] = []
        hidden = linked_dirs = 0
        stack = [str(self.root)]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:  # unreadable folder: skipped, as os.walk did
                continue
            subdirs: list[str] = []
            for e in entries:
                is_dir = e.is_dir()  # follows links, like os.walk
                if e.name.startswith(".") or (is_dir and e.name == "__MACOSX"):
                    hidden += 1
                elif is_dir and e.is_symlink():
                    linked_dirs += 1
                elif is_dir:
                    subdirs.append(e.path)
                else:
                    out.append(e.path)
                    if e.is_symlink():
                        self._links.add(e.path)
            stack.extend(reversed(subdirs))  # depth first in sorted order: the order os.walk gave
        for note, n in (("skipped_hidden", hidden), ("skipped_linked_folders", linked_dirs)):
            if n:
                self.opts.notes[note] = self.opts.notes.get(note, 0) + n
        return out

    def _outside(self, path: str, real_root: str) -> str | None:
        """The target of a link at ``path`` that resolves outside the folder, else None."""
        if path not in self._links or self.opts.follow_links:
            return None
        target = os.path.realpath(path)
        return None if os.path.commonpath([real_root, target]) == real_root else target

    def _entries(self) -> Iterator[tuple[str, str | None, str | None, str | None]]:
        """``(path, label, pre_reason, pre_error)`` per file: a reason for a file ingest must not read (a link that
        points outside, a name that is not UTF-8), else None; the files at the root of a labeled folder are counted
        in ``notes`` once all are listed."""
        # Every path starts with the root (the walk built them): cutting the prefix is ~20x cheaper than relpath.
        cut = len(os.path.join(str(self.root), ""))
        real_root = os.path.realpath(self.root)
        labeled = not self.opts.unlabeled
        root_files = 0
        for path in self._files:
            reason = error = None
            if not path.isascii() and not _utf8(path):
                # A POSIX name may be any bytes; Arrow strings must be UTF-8. The row keeps a readable spelling
                # of the name (its bad bytes as \xNN) and the reason, and the file is not read.
                path = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                reason, error = "bad_name", "the file name is not valid UTF-8 (rename the file to ingest it)"
            # the first folder under the root (``_label_from_parts``), found without splitting the whole path
            end = path.find(os.sep, cut)
            label = path[cut:end] if labeled and end >= 0 else None
            if label is None and labeled:
                root_files += 1
            target = self._outside(path, real_root) if reason is None and path in self._links else None
            if target is not None:
                reason, error = "outside_source", f"symbolic link to {target} (--follow-links reads it)"
            yield path, label, reason, error
        if root_files:
            self.opts.notes["unlabeled_root_files"] = root_files

    def items(self) -> Iterator[dict]:
        for path, label, reason, error in self._entries():
            item = {"source": path, "label": label, "origin_split": self.opts.split_name, "path": path}
            if reason is not None:
                item.update(path=None, pre_reason=reason, pre_error=error)
            yield item

    def batches(self, batch_size: int, max_batch_bytes: int = BATCH_BYTES) -> Iterator[pa.Table]:
        """``Source.batches`` without a dict per file: folder items carry no bytes, so only ``batch_size`` counts."""
        del max_batch_bytes  # no item holds data
        entries = self._entries()
        while chunk := list(itertools.islice(entries, batch_size)):
            paths, labels, reasons, errors = zip(*chunk, strict=True)
            n = len(paths)
            cols = {
                "source": pa.array(paths, pa.string()),
                "label": pa.array(labels, pa.string()),
                "origin_split": pa.array([self.opts.split_name] * n, pa.string()),
                "path": pa.array([p if r is None else None for p, r in zip(paths, reasons, strict=True)], pa.string()),
                "pre_reason": pa.array(reasons, pa.string()),
                "pre_error": pa.array(errors, pa.string()),
            }
            yield pa.Table.from_arrays([cols.get(f.name, pa.nulls(n, f.type)) for f in ITEM_SCHEMA], schema=ITEM_SCHEMA)


def _utf8(name: str) -> bool:
    """Whether ``name`` (from ``os.scandir``: undecodable bytes as lone surrogates) encodes as UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unsafe(name: str) -> str | None:
    """Why an archive member name could escape the target folder, or None if it is safe."""
    if not name or "\x00" in name:
        return "empty or NUL in member name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path contains '..'"
    return None


def _read_capped(fh: zipfile.ZipExtFile, cap: int, chunk: int = 1 << 20) -> bytes:
    """At most ``cap + 1`` bytes of a zip member, in chunks.

    One ``fh.read(cap + 1)`` would let zlib inflate up to ``cap`` bytes in a single call even when the header
    promises a few hundred (zipfile trims to the header size only afterwards): a zip bomb then costs ``cap``
    of memory per member. Reading in 1 MB steps bounds that to the chunk size.
    """
    parts: list[bytes] = []
    got = 0
    while got <= cap:
        data = fh.read(min(chunk, cap + 1 - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


class ArchiveSource(Source):
    """Members of a tar (any compression) or zip archive, labels from the folder under a wrapper folder.

    ``path`` is a local ``Path`` or an fsspec URL (``s3://b/x.tar.gz``). A URL is streamed: a tar is read front to
    back twice (member names first, for the total and the wrapper folder, then the members), a zip in ranged
    reads of its directory and members; neither is ever held whole in memory or on disk.
    """

    def __init__(self, path: Path | str, fmt: str, opts: SourceOptions) -> None:
        self.path = path
        self.fmt = fmt
        self.opts = opts
        try:
            if fmt == "tar":
                with self._tar() as tf:
                    names = [m.name for m in tf.getmembers() if not m.isdir()]
            else:
                with self._zip() as zf:
                    names = [i.filename for i in zf.infolist() if not i.is_dir()]
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CurateError(f"{path}: not a readable {fmt} archive ({exc})") from exc
        self.total = len(names)
        self._strip = self._common_prefix(names)

    @contextlib.contextmanager
    def _tar(self) -> Iterator[tarfile.TarFile]:
        if isinstance(self.path, Path):
            with tarfile.open(self.path, "r:*") as tf:
                yield tf
            return
        from curate.remote import open_input

        # Stream mode ("r|"): forward reads only, so the read-ahead cache serves every byte once.
        with open_input(self.path) as fh, tarfile.open(fileobj=fh, mode="r|*") as tf:
            yield tf

    @contextlib.contextmanager
    def _zip(self) -> Iterator[zipfile.ZipFile]:
        from curate.remote import open_input

        with open_input(self.path) as fh, zipfile.ZipFile(fh) as zf:
            yield zf

    @staticmethod
    def _common_prefix(names: list[str]) -> int:
        # ``sample.tar`` usually wraps ``sample/<class>/<file>``: drop one shared top folder when every member
        # sits at least two folders deep, so the class is the first folder under it.
        # Hidden entries (__MACOSX/, .DS_Store) are skipped as members, so they must not decide the wrapper either.
        parts = [p for n in names if not _unsafe(n) and not _hidden(p := PurePosixPath(n).parts)]
        if parts and all(len(p) >= 3 for p in parts) and len({p[0] for p in parts}) == 1:
            return 1
        return 0

    def _item(self, name: str, *, data: bytes | None = None, reason: str | None = None, error: str | None = None) -> dict:
        parts = PurePosixPath(name).parts[self._strip :]
        label = _label_from_parts(tuple(parts), self.opts) if not reason else None
        return {
            "source": f"{self.path}::{name}",
            "label": label,
            "origin_split": self.opts.split_name,
            "data": data,
            "pre_reason": reason,
            "pre_error": error,
        }

    def items(self) -> Iterator[dict]:
        cap = self.opts.max_bytes
        if self.fmt == "tar":
            with self._tar() as tf:
                for m in tf:
                    why = _unsafe(m.name)  # before the hidden check: a '..' part also starts with '.'
                    if m.isdir() or (why is None and _hidden(PurePosixPath(m.name).parts)):
                        continue
                    if why is None and (m.issym() or m.islnk()):
                        why = f"link to {m.linkname!r}"
                    elif why is None and not m.isfile():
                        why = "not a regular file"
                    if why:
                        yield self._item(m.name, reason="unsafe_member", error=why)
                    elif m.size > cap:
                        yield self._item(m.name, reason="too_large", error=f"{m.size} bytes > max_bytes {cap}")
                    else:
                        fh = tf.extractfile(m)
                        yield self._item(m.name, data=fh.read() if fh else b"")
            return
        with self._zip() as zf:
            for info in zf.infolist():
                why = _unsafe(info.filename)  # before the hidden check: a '..' part also starts with '.'
                if info.is_dir() or (why is None and _hidden(PurePosixPath(info.filename).parts)):
                    continue
                if why is None and stat.S_ISLNK(info.external_attr >> 16):
                    why = "symbolic link"
                if why:
                    yield self._item(info.filename, reason="unsafe_member", error=why)
                    continue
                if info.file_size > cap:
                    yield self._item(info.filename, reason="too_large", error=f"{info.file_size} bytes > max_bytes {cap}")
                    continue
                try:
                    with zf.open(info) as fh:
                        data = _read_capped(fh, cap)  # the header's size can lie (zip bomb): read at most cap+1
                except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                    yield self._item(info.filename, reason="corrupt", error=f"cannot read member: {exc}")
                    continue
                if len(data) > cap:
                    yield self._item(info.filename, reason="too_large", error=f"more than max_bytes {cap}")
                else:
                    yield self._item(info.filename, data=data)
