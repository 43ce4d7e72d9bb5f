"""Input sources for ingest: each turns a user's folder, manifest, idx pair or archive into item batches.

An item batch is a ``pyarrow.Table`` with the columns of ``ITEM_SCHEMA``; exactly one of ``path``, ``url``,
``data`` says where the bytes come from, or ``pre_reason`` says why there are none (an unsafe archive
member). Sources only enumerate; reading, hashing and decoding happen in the per-sample function of the
ingest stage, wherever the executor runs it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from curate.errors import CurateError, UsageError

ITEM_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("label", pa.string()),
        ("origin_split", pa.string()),
        ("path", pa.string()),
        ("url", pa.string()),
        ("data", pa.binary()),
        ("encode", pa.string()),  # "L:HxW" raw pixels to encode as PNG (idx files)
        ("pre_reason", pa.string()),
        ("pre_error", pa.string()),
        ("extra", pa.string()),  # JSON object of a manifest's other columns, kept as text columns
    ]
)

#: Bytes of data one item batch carries at most (one item larger than this is a batch of its own).
BATCH_BYTES = 16 << 20

SOURCE_SCHEMES = ("file://", "s3://", "gs://", "az://", "hf://")
FORMATS = ("auto", "folder", "csv", "parquet", "jsonl", "idx", "tar", "zip")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass
class SourceOptions:
    """What the user told ingest about the source (see ``curate ingest --help``)."""

    unlabeled: bool = False
    path_col: str | None = None
    label_col: str | None = None
    split_col: str | None = None
    split_name: str | None = None
    class_names: tuple[str, ...] | None = None  # idx: names for label ids 0..K-1
    max_bytes: int = 64 << 20
    follow_links: bool = False  # folder: read symbolic links that point outside the folder
    # manifest: other columns but none named like a label is an error (a misnamed label column), not unlabeled
    # rows; ingest asks for it, predict and crawl (url + caption lists) do not
    ask_label: bool = False
    notes: dict[str, int] = field(default_factory=dict)  # counters sources report (hidden files skipped ...)


class Source(abc.ABC):
    """Base class: ``total`` (items, or None if unknown up front) and ``items()``."""

    total: int | None = None

    @abc.abstractmethod
    def items(self) -> Iterator[dict]:
        """Yield one dict per input with keys of ``ITEM_SCHEMA`` (missing keys are null)."""

    def batches(self, batch_size: int, max_batch_bytes: int = BATCH_BYTES) -> Iterator[pa.Table]:
        """Group ``items()`` into ``ITEM_SCHEMA`` tables of at most ``batch_size`` rows.

        A batch also ends once the bytes it carries (archive members, idx pixels) reach ``max_batch_bytes``:
        a count alone let 512 members of 60 MB each make one 30 GB batch. A single larger item is a batch
        of its own.
        """
        buf: list[dict] = []
        held = 0
        for item in self.items():
            data = item.get("data")
            held += len(data) if data is not None else 0
            buf.append(item)
            del item, data  # only the buffer may hold a member's bytes: a large one must not linger twice
            if len(buf) >= batch_size or held >= max_batch_bytes:
                held = 0
                yield _drain(buf)
        if buf:
            yield _drain(buf)


def _drain(buf: list[dict]) -> pa.Table:
    """``buf`` as an ``ITEM_SCHEMA`` table, emptying it: the caller yields the table without keeping a name for
    it or for the items, so while the consumer works on a batch of large members only one copy exists."""
    table = pa.Table.from_pylist(buf, schema=ITEM_SCHEMA)
    buf.clear()
    return table


def detect_format(path: Path) -> str:
    """Guess the source format from the path (``--format auto``)."""
    if path.is_dir():
        from curate.sources.idx import find_idx_pairs

        return "idx" if find_idx_pairs(path) else "folder"
    return format_from_name(str(path))


def format_from_name(src: str) -> str:
    """The format a file's name says (``.csv``, ``.tar.gz`` ...), for a local path or a URL.

    Raises:
        UsageError: the name says nothing curate reads.
    """
    name = src.rsplit("/", 1)[-1].lower()
    if "idx3-ubyte" in name:
        return "idx"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    raise UsageError(
        f"{src}: cannot tell the source format from the name",
        hint="pass --format folder|csv|parquet|jsonl|idx|tar|zip",
    )


def open_source(src: str, fmt: str, opts: SourceOptions) -> Source:
    """Build the ``Source`` for ``src``: a local path, a ``file://`` URL or an fsspec URL (``s3://bucket/prefix/``).

    Raises:
        CurateError: the path does not exist or the manifest lacks the needed columns.
        UsageError: unknown format or options that do not fit it.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    from curate.remote import is_remote, local_path, scheme

    if is_remote(src):
        from curate.sources.remote import open_remote

        return open_remote(src, fmt, opts)
    if scheme(src) in ("http", "https"):
        raise UsageError(
            f"{src}: ingest takes http(s) URLs as rows of a manifest, not as the source",
            hint="list them in a CSV or JSONL manifest (a path or url column), or use `curate crawl`",
        )
    if scheme(src) not in (None, "file"):
        raise UsageError(
            f"{src}: ingest does not read {scheme(src)}:// sources", hint=f"use a local path or one of {', '.join(SOURCE_SCHEMES)}"
        )
    src = local_path(src)
    # Absolute and normalised: a row's source must still mean something after a `cd`, and `imgs`, `./imgs/`
    # and `/home/me/imgs` are the same place (re-ingesting them must not record every file a second time).
    path = Path(os.path.abspath(Path(src).expanduser()))
    if not path.exists():
        raise CurateError(f"{src}: no such file or directory")
    if not path.is_dir():
        from curate.sources.readfile import not_regular

        # a named pipe would block the first read until a writer comes (forever), and a manifest is read twice
        # (columns, then rows); a device reads without end
        bad = not_regular(path.stat().st_mode)
        if bad is not None:
            raise CurateError(f"{src}: {bad[1]}, not a file or folder", hint="save the manifest or archive to a file first")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "folder":
        from curate.sources.files import FolderSource

        if not path.is_dir():
            raise UsageError(f"{src}: --format folder needs a directory")
        return FolderSource(path, opts)
    if fmt in ("csv", "parquet", "jsonl"):
        from curate.sources.manifest import ManifestSource

        return ManifestSource(path, fmt, opts)
    if fmt == "idx":
        from curate.sources.idx import IdxSource

        return IdxSource(path, opts)
    from curate.sources.files import ArchiveSource

    return ArchiveSource(path, fmt, opts)
