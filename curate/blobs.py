"""Content-addressed blob packs: the original image bytes, shared by every version of a workspace.

A pack is ``blobs/pack-<token>-<seq>.parquet`` with columns ``sample_id`` (sha256 hex of ``data``) and
``data`` (binary), written once and never modified. Small images are kept in packs rather than one file each
because millions of tiny files are inode- and seek-bound; Parquet row groups keep random reads cheap.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PACK_SCHEMA = pa.schema([pa.field("sample_id", pa.string()), pa.field("data", pa.binary())])
ROW_GROUP_ROWS = 1024
#: A row group also ends at this many bytes of blobs: the Parquet writer holds a whole row group in memory
#: (six 60 MB blobs in one group cost several times their size while being written).
ROW_GROUP_BYTES = 16 << 20


class PackWriter:
    """Buffers ``(sample_id, bytes)`` and writes packs of about ``target_bytes`` each.

    The pack name of a blob is known when it is added (``add`` returns it), so callers can fill the
    ``pack`` column without a second pass. Packs are written to a temporary name and renamed, so a reader
    never sees half a pack; an interrupted run leaves only unreferenced packs that ``curate gc`` removes.

    Args:
        root: the ``blobs/`` folder.
        token: a name prefix unique to this run (derived from parent version and config).
        target_bytes: flush when the buffered bytes reach this size.
    """

    def __init__(self, root: Path, token: str, *, target_bytes: int = 64 << 20) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.target_bytes = target_bytes
        self._seq = 0
        self._ids: list[str] = []
        self._data: list[bytes | pa.Array] = []  # add()'s bytes, add_many()'s array slices
        self._sizes: list[int] = []
        self._size = 0
        self.written: list[str] = []

    @property
    def current(self) -> str:
        return f"pack-{self.token}-{self._seq:05d}"

    def add(self, sample_id: str, data: bytes) -> str:
        """Buffer one blob and return the name of the pack it will live in.

        A pack holds at most ``target_bytes`` unless one blob alone is larger: flushing only after the
        buffer overflowed let one pack take the target plus a whole large blob.
        """
        if self._ids and self._size + len(data) > self.target_bytes:
            self.flush()
        name = self.current
        self._ids.append(sample_id)
        self._data.append(data)
        self._sizes.append(len(data))
        self._size += len(data)
        if self._size >= self.target_bytes or len(data) >= ROW_GROUP_BYTES:  # a large blob is written, not held
            self.flush()
        return name

    def add_many(self, sample_ids: Sequence[str], data: pa.Array | pa.ChunkedArray) -> list[str]:
        """``add`` for each ``(sample_ids[i], data[i])`` in order, without turning the bytes into Python objects.

        The packs (names, rows, row groups) are those the same ``add`` calls would write; the buffer holds slices
        of ``data`` (binary, no nulls) until a flush copies them into the pack.

        Returns:
            The pack name of each blob, parallel to ``sample_ids``.
        """
        names: list[str] = []
        pos = 0
        for chunk in data.chunks if isinstance(data, pa.ChunkedArray) else [data]:
            sizes = pc.binary_length(chunk).to_pylist()
            total = sum(sizes)
            if self._size + total < self.target_bytes and max(sizes, default=0) < ROW_GROUP_BYTES:
                # No flush anywhere in this chunk (the loop below would find none): buffer it whole.
                names += [self.current] * len(sizes)
                self._ids += sample_ids[pos : pos + len(sizes)]
                self._sizes += sizes
                self._size += total
                self._data.append(chunk)
                pos += len(sizes)
                continue
            start = 0  # first row of ``chunk`` not in the buffer yet
            for i, size in enumerate(sizes):
                if self._ids and self._size + size > self.target_bytes:
                    self._data.append(chunk.slice(start, i - start))
                    start = i
                    self.flush()
                names.append(self.current)
                self._ids.append(sample_ids[pos])
                self._sizes.append(size)
                self._size += size
                pos += 1
                if self._size >= self.target_bytes or size >= ROW_GROUP_BYTES:
                    self._data.append(chunk.slice(start, i + 1 - start))
                    start = i + 1
                    self.flush()
            if start < len(sizes):
                self._data.append(chunk.slice(start))
        return names

    def _blob_array(self) -> pa.Array:
        """The buffered blobs as one binary array (``add``'s bytes and ``add_many``'s slices, in order)."""
        parts: list[pa.Array] = []
        run: list[bytes] = []
        for part in self._data:
            if isinstance(part, bytes):
                run.append(part)
                continue
            if run:
                parts.append(pa.array(run, pa.binary()))
                run = []
            parts.append(part)
        if run:
            parts.append(pa.array(run, pa.binary()))
        return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)

    def flush(self) -> None:
        if not self._ids:
            return
        name = self.current
        table = pa.table({"sample_id": self._ids, "data": self._blob_array()}, schema=PACK_SCHEMA)
        sizes = self._sizes
        self._data = []  # the table holds the bytes now: do not keep a second copy while writing
        tmp = self.root / f".tmp-{name}.parquet"
        # recorded before the file exists: a Ctrl-C anywhere below still lets ``discard`` find what was written
        self.written.append(name)
        # No dictionary and no min/max statistics for the blobs: every blob is distinct (its id is its hash),
        # and both would copy the bytes once more while writing.
        with pq.ParquetWriter(
            tmp, PACK_SCHEMA, compression="snappy", use_dictionary=["sample_id"], write_statistics=["sample_id"]
        ) as out:
            for start, rows in _row_groups(sizes):
                out.write_table(table.slice(start, rows), row_group_size=rows)
        os.replace(tmp, self.root / f"{name}.parquet")
        self._ids, self._data, self._sizes, self._size = [], [], [], 0
        self._seq += 1

    def close(self) -> list[str]:
        """Flush the last pack; returns every pack name written."""
        self.flush()
        return self.written

    def discard(self) -> None:
        """Delete the packs this writer wrote (the run failed and commits nothing)."""
        self._ids, self._data, self._sizes, self._size = [], [], [], 0
        for name in self.written:
            (self.root / f"{name}.parquet").unlink(missing_ok=True)
            (self.root / f".tmp-{name}.parquet").unlink(missing_ok=True)
        self.written = []


def _row_groups(sizes: list[int]) -> Iterator[tuple[int, int]]:
    """``(first row, rows)`` of each row group: at most ``ROW_GROUP_ROWS`` rows and about ``ROW_GROUP_BYTES``."""
    start = held = 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= ROW_GROUP_ROWS or held + size > ROW_GROUP_BYTES):
            yield start, i - start
            start, held = i, 0
        held += size
    if sizes:
        yield start, len(sizes) - start


class BlobStore:
    """Read access to the packs of a workspace.

    Args:
        root: the ``blobs/`` folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, pack: str) -> Path:
        return self.root / f"{pack}.parquet"

    def packs(self) -> list[str]:
        """Names of all complete packs on disk."""
        if not self.root.exists():
            return []
        return sorted(p.stem for p in self.root.glob("pack-*.parquet"))

    def read_pack(self, pack: str, ids: Iterable[str] | None = None) -> pa.Table:
        """Rows of one pack (``sample_id``, ``data``), optionally only those whose id is in ``ids``."""
        table = pq.read_table(self.path(pack), schema=PACK_SCHEMA)
        if ids is not None:
            table = table.filter(pc.is_in(table.column("sample_id"), pa.array(list(ids), pa.string())))
        return table

    def get_many(self, sample_ids: Iterable[str], packs: Iterable[str]) -> dict[str, bytes]:
        """Bytes for each ``sample_id`` (parallel to ``packs``); reads each pack once."""
        by_pack: dict[str, set[str]] = defaultdict(set)
        for sid, pack in zip(sample_ids, packs, strict=True):
            if pack is not None:
                by_pack[pack].add(sid)
        out: dict[str, bytes] = {}
        for pack, ids in by_pack.items():
            t = self.read_pack(pack, ids)
            out.update(zip(t.column("sample_id").to_pylist(), t.column("data").to_pylist(), strict=True))
        return out

    def iter_packs(self, table: pa.Table, *, batch_rows: int = 4096, carry: Sequence[str] = ()) -> PackBatches:
        """Stream ``sample_id``/``data`` for the rows of ``table`` that have a pack, pack by pack.

        Memory stays bounded by one pack's row groups, not by the dataset size.

        Args:
            table: rows with ``sample_id`` and ``pack`` (and the ``carry`` columns).
            batch_rows: rows read per batch (before keeping only the wanted ones).
            carry: columns of ``table`` to append to each batch, matched by ``sample_id``.
        """
        return PackBatches(self, table, batch_rows=batch_rows, carry=carry)


class PackBatches:
    """What ``BlobStore.iter_packs`` returns: an iterable of batches, and the plan behind it for remote executors.

    Iterating reads the packs in this process. An executor that runs the per-sample work elsewhere (Ray) calls
    ``slices`` instead: one small row per batch (pack path, first row, rows, kept positions, carried values), and
    each worker rebuilds its batch with ``read_slice``, so the image bytes are read where they are processed and
    never pass through the driver. Both give the same rows in the same batches.
    """

    def __init__(self, store: BlobStore, table: pa.Table, *, batch_rows: int, carry: Sequence[str] = ()) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.carry = table.select(["sample_id", *carry]) if carry else None
        self.wanted: dict[str, list[str]] = defaultdict(list)
        for sid, pack in zip(table.column("sample_id").to_pylist(), table.column("pack").to_pylist(), strict=True):
            if pack is not None:
                self.wanted[pack].append(sid)

    def _scan(self, columns: list[str]) -> Iterator[tuple[str, int, pa.Table, pa.Array]]:
        """``(pack path, first row of the batch in the pack, the batch as read, mask of wanted rows)``.

        Only batches with at least one wanted row; the batch boundaries are those of ``iter_batches``.
        """
        for pack in sorted(self.wanted):
            keep = pa.array(self.wanted[pack], pa.string())
            path = self.store.path(pack)
            start = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_rows, columns=columns):
                t = pa.Table.from_batches([batch])
                mask = pc.is_in(t.column("sample_id"), keep)
                if pc.any(mask).as_py():
                    yield str(path), start, t, mask
                start += batch.num_rows

    def _with_carry(self, t: pa.Table) -> pa.Table:
        if self.carry is None:
            return t
        idx = pc.index_in(t.column("sample_id"), self.carry.column("sample_id"))
        for name in self.carry.column_names[1:]:
            t = t.append_column(name, self.carry.column(name).take(idx))
        return t

    def __iter__(self) -> Iterator[pa.Table]:
        for _, _, t, mask in self._scan(["sample_id", "data"]):
            yield self._with_carry(t.filter(mask))

    def slices(self) -> pa.Table:
        """One row per batch that iterating would yield, in the same order, for ``read_slice`` on another node.

        Columns: ``path`` (the pack file), ``start`` and ``rows`` (the rows of the pack the batch was read from),
        ``keep`` (positions within those rows that are wanted), and each carried column as a list per batch.
        Only ``sample_id`` is read here: small, whatever the image sizes.
        """
        cols: dict[str, list[Any]] = {"path": [], "start": [], "rows": [], "keep": []}
        carried: list[pa.Table] = []
        for path, start, t, mask in self._scan(["sample_id"]):
            cols["path"].append(path)
            cols["start"].append(start)
            cols["rows"].append(t.num_rows)
            cols["keep"].append(np.flatnonzero(mask.to_numpy(zero_copy_only=False)).astype(np.int32))
            carried.append(self._with_carry(t.filter(mask)))
        out = pa.table(
            {
                "path": pa.array(cols["path"], pa.string()),
                "start": pa.array(cols["start"], pa.int64()),
                "rows": pa.array(cols["rows"], pa.int64()),
                "keep": pa.array(cols["keep"], pa.list_(pa.int32())),
            }
        )
        if self.carry is not None:
            offsets = pa.array(np.concatenate([[0], np.cumsum([c.num_rows for c in carried])]), pa.int32())
            whole = pa.concat_tables(carried) if carried else self.carry.schema.empty_table()
            for name in self.carry.column_names[1:]:
                values = whole.column(name).combine_chunks()
                out = out.append_column(name, pa.ListArray.from_arrays(offsets, values))
        return out


@functools.lru_cache(maxsize=4)
def _open(path: str, mtime_ns: int, size: int) -> pq.ParquetFile:
    """An open pack, kept for the next slice of it on this worker; keyed by mtime and size so a pack that
    ``curate gc`` removed and a later run wrote again under the same name is never read from a stale handle."""
    return pq.ParquetFile(path)


def read_slice(path: str, start: int, rows: int, keep: Sequence[int]) -> pa.Table:
    """The batch ``PackBatches`` describes in one row of ``slices``: rows ``keep`` of ``[start, start + rows)``."""
    st = os.stat(path)
    pf = _open(path, st.st_mtime_ns, st.st_size)
    md = pf.metadata
    groups, first, at = [], None, 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if at < start + rows and at + n > start:
            groups.append(g)
            first = at if first is None else first
        at += n
    t = pf.read_row_groups(groups, columns=["sample_id", "data"]).slice(start - (first or 0), rows)
    return t.take(pa.array(keep, pa.int32())).combine_chunks()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (the identity of a checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
