"""Content-addressed blob packs: the original image bytes, shared by every version of a workspace.

A pack is ``blobs/pack-<token>-<seq>.parquet`` with columns ``sample_id`` (sha256 hex of ``data``) and
``data`` (binary), written once and never modified. Small images are kept in packs rather than one file each
because millions of tiny files are inode- and seek-bound; Parquet row groups keep random reads cheap.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PACK_SCHEMA = pa.schema([pa.field("sample_id", pa.string()), pa.field("data", pa.binary())])
ROW_GROUP_ROWS = 1024


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
        self._data: list[bytes] = []
        self._size = 0
        self.written: list[str] = []

    @property
    def current(self) -> str:
        return f"pack-{self.token}-{self._seq:05d}"

    def add(self, sample_id: str, data: bytes) -> str:
        """Buffer one blob and return the name of the pack it will live in."""
        name = self.current
        self._ids.append(sample_id)
        self._data.append(data)
        self._size += len(data)
        if self._size >= self.target_bytes:
            self.flush()
        return name

    def flush(self) -> None:
        if not self._ids:
            return
        name = self.current
        table = pa.table({"sample_id": self._ids, "data": pa.array(self._data, pa.binary())}, schema=PACK_SCHEMA)
        tmp = self.root / f".tmp-{name}.parquet"
        # recorded before the file exists: a Ctrl-C anywhere below still lets ``discard`` find what was written
        self.written.append(name)
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, compression="snappy")
        os.replace(tmp, self.root / f"{name}.parquet")
        self._ids, self._data, self._size = [], [], 0
        self._seq += 1

    def close(self) -> list[str]:
        """Flush the last pack; returns every pack name written."""
        self.flush()
        return self.written

    def discard(self) -> None:
        """Delete the packs this writer wrote (the run failed and commits nothing)."""
        self._ids, self._data, self._size = [], [], 0
        for name in self.written:
            (self.root / f"{name}.parquet").unlink(missing_ok=True)
            (self.root / f".tmp-{name}.parquet").unlink(missing_ok=True)
        self.written = []


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

    def iter_packs(self, table: pa.Table, *, batch_rows: int = 4096) -> Iterator[pa.Table]:
        """Stream ``sample_id``/``data`` for the rows of ``table`` that have a pack, pack by pack.

        Memory stays bounded by one pack's row groups, not by the dataset size.
        """
        ids = table.column("sample_id")
        packs = table.column("pack")
        wanted: dict[str, list[str]] = defaultdict(list)
        for sid, pack in zip(ids.to_pylist(), packs.to_pylist(), strict=True):
            if pack is not None:
                wanted[pack].append(sid)
        for pack in sorted(wanted):
            keep = pa.array(wanted[pack], pa.string())
            pf = pq.ParquetFile(self.path(pack))
            for batch in pf.iter_batches(batch_size=batch_rows):
                t = pa.Table.from_batches([batch])
                t = t.filter(pc.is_in(t.column("sample_id"), keep))
                if t.num_rows:
                    yield t
