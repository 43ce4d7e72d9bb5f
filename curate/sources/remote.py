"""Sources on an fsspec URL (``s3://bucket/prefix/``): an ImageFolder layout under a prefix, a manifest or an archive.

The driver only lists keys and streams manifests and archives; the bytes of a folder's images are read by the
per-sample function wherever the executor runs it, each worker opening the filesystem from the URL itself
(``curate.remote.read_capped``). Hidden keys (a part starting with ``.``) and ``__MACOSX/`` are skipped as in a
local folder; there are no links on an object store, so there is nothing to refuse as ``outside_source``.
"""

from __future__ import annotations

from collections.abc import Iterator

from curate.errors import UsageError
from curate.remote import filesystem, remote_error, url_of
from curate.sources import Source, SourceOptions, format_from_name


class RemoteFolderSource(Source):
    """Every object below the prefix ``url`` (sorted by key), labelled by the first folder under it."""

    def __init__(self, url: str, opts: SourceOptions) -> None:
        self.url = url
        self.opts = opts
        self._files = self._list()
        self.total = len(self._files)

    def _list(self) -> list[str]:
        # Keys first (strings only), as the local walk does: the progress bar gets a total.
        fs, root = filesystem(self.url)
        try:
            names = fs.find(root)
        except Exception as exc:  # noqa: BLE001 - storage libraries raise their own types
            raise remote_error(self.url, exc, "list") from None
        root = root.rstrip("/") + "/"
        out: list[str] = []
        hidden = 0
        for name in sorted(names):
            rel = name[len(root) :] if name.startswith(root) else name
            if not rel or rel.endswith("/"):  # a zero-byte "folder" marker some tools write
                continue
            if any(p.startswith(".") or p == "__MACOSX" for p in rel.split("/")):
                hidden += 1
                continue
            out.append(rel)
        if hidden:
            self.opts.notes["skipped_hidden"] = self.opts.notes.get("skipped_hidden", 0) + hidden
        return out

    def items(self) -> Iterator[dict]:
        root_files = 0
        for rel in self._files:
            parts = rel.split("/")
            label = parts[0] if len(parts) > 1 and not self.opts.unlabeled else None
            if label is None and not self.opts.unlabeled:
                root_files += 1
            url = f"{self.url}/{rel}"
            yield {"source": url, "label": label, "origin_split": self.opts.split_name, "path": url}
        if root_files:
            self.opts.notes["unlabeled_root_files"] = root_files


def open_remote(src: str, fmt: str, opts: SourceOptions) -> Source:
    """The ``Source`` for an fsspec URL: a prefix (folder) or one object (manifest or archive).

    Raises:
        CurateError: the bucket or key is not there, no credentials, access denied: one line naming ``src``.
        UsageError: a format that needs a local folder (idx) or one that does not fit the object.
    """
    fs, path = filesystem(src)
    try:
        info = fs.info(path)
    except Exception as exc:  # noqa: BLE001 - storage libraries raise their own types
        raise remote_error(src, exc, "open the source") from None
    # Normalised like a local path: s3://b/imgs and s3://b/imgs/ are the same source (the same row sources).
    url = url_of(fs, path)
    is_dir = info.get("type") == "directory"
    if fmt == "auto":
        fmt = "folder" if is_dir else format_from_name(url)
    if fmt == "idx":
        raise UsageError(f"{src}: idx files are read from a local folder", hint="copy them to local disk, or export them as a folder")
    if fmt == "folder":
        if not is_dir:
            raise UsageError(f"{src}: --format folder needs a prefix with objects under it")
        return RemoteFolderSource(url, opts)
    if is_dir:
        raise UsageError(f"{src}: is a prefix, not one {fmt} object", hint="name the object, or --format folder")
    if fmt in ("csv", "parquet", "jsonl"):
        from curate.sources.manifest import ManifestSource

        return ManifestSource(url, fmt, opts)
    from curate.sources.files import ArchiveSource

    return ArchiveSource(url, fmt, opts)
