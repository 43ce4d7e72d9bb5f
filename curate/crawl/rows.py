"""Crawl journal records -> sample rows: what ``curate.stages.crawl`` commits (see its docstring for the rules).

Several URLs with the same bytes are one sample whose row goes to the first URL in sorted order, whatever finished
first, so two crawls of the same site give the same table; the others become ``extra_sources``. A failed image URL is
an excluded row with ``sample_id = placeholder_id(url)``; a later outcome of the same URL replaces that row.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.crawl import DOWNLOADED, DUPLICATE
from curate.errors import CurateError
from curate.schema import EXCLUDED, OK, RESERVED, conform, placeholder_id, sha256_hex

STAGE = "crawl"
CRAWL_COLUMNS = {
    "crawl_status": pa.string(),
    "http_status": pa.int32(),
    "elapsed": pa.float64(),
    "attempts": pa.int32(),
    "bytes_received": pa.int64(),
    "final_url": pa.string(),
    "page_url": pa.string(),
    "content_type": pa.string(),
    "depth": pa.int32(),
}


def new_rows(
    records: list[dict[str, Any]], read: Callable[[dict[str, Any]], bytes], packs: Any, *, known_parent: set[str]
) -> tuple[pa.Table, dict[str, list[tuple[str, str | None]]], int]:
    """Sample rows for the image URLs of this run; bytes of downloads (``read(record)``) go into ``packs``.

    Returns:
        ``(rows, extra, bytes_stored)``: ``extra`` maps a sample id to further ``(url, label)`` places of its bytes.
    """
    cols: dict[str, list[Any]] = {n: [] for n in ("sample_id", "source", "label", "origin_split", "status", "reason", "error")}
    cols.update({n: [] for n in ("width", "height", "mode", "format", "exif_orientation", "nbytes", "pack", "extra")})
    cols.update({n: [] for n in CRAWL_COLUMNS})
    extra: dict[str, list[tuple[str, str | None]]] = {}
    added: set[str] = set()
    n_bytes = 0
    # Which of several URLs with the same bytes finished first depends on timing; the row goes to the first URL in
    # sorted order whatever the timing, so two crawls of the same site give the same table.
    holder = {r["sample_id"]: r for r in records if r["status"] == DOWNLOADED and r.get("row")}
    for r in records:
        if not r.get("row"):
            continue
        status, sid = r["status"], r.get("sample_id")
        if status in (DOWNLOADED, DUPLICATE) and (sid in added or sid in known_parent or sid not in holder):
            extra.setdefault(sid, []).append((r["url"], r.get("label")))
            continue
        pack = None
        if status in (DOWNLOADED, DUPLICATE):
            data = read(holder[sid])
            if sha256_hex(data) != sid:
                raise CurateError(f"crawl journal: stored bytes of {holder[sid]['url']} do not match their sha256")
            pack = packs.add(sid, data)
            n_bytes += len(data)
            added.add(sid)
            status = DOWNLOADED
        else:
            sid = placeholder_id(r["url"])
        ok = status == DOWNLOADED
        for key, value in (
            ("sample_id", sid),
            ("source", r["url"]),
            ("label", r.get("label")),
            ("origin_split", r.get("split")),
            ("status", OK if ok else EXCLUDED),
            ("reason", None if ok else status),
            ("error", r.get("error")),
            ("nbytes", holder[sid]["length"] if ok else None),
            ("pack", pack),
            ("extra", r.get("extra")),
            ("crawl_status", status),
            ("page_url", r.get("page")),
            ("elapsed", r.get("elapsed")),
            ("bytes_received", r.get("nbytes", 0)),
        ):
            cols[key].append(value)
        for key in (
            "width",
            "height",
            "mode",
            "format",
            "exif_orientation",
            "http_status",
            "attempts",
            "final_url",
            "content_type",
            "depth",
        ):
            cols[key].append(r.get(key))
    types = {**RESERVED, **CRAWL_COLUMNS, "extra": pa.string()}
    new = pa.table({k: pa.array(v, types[k]) for k, v in cols.items()})
    new = new.append_column("excluded_by", pc.if_else(pc.equal(new.column("status"), OK), pa.scalar(None, pa.string()), STAGE))
    new = new.append_column("label_source", pc.if_else(pc.is_null(new.column("label")), pa.scalar(None, pa.string()), "given"))
    return expand_extra(new), extra, n_bytes


def expand_extra(new: pa.Table) -> pa.Table:
    """A manifest's other columns (JSON in ``extra``) as text columns; a name already taken gets a ``src_`` prefix."""
    raw = new.column("extra").to_pylist()
    new = new.drop_columns(["extra"])
    dicts = [json.loads(r) if r else {} for r in raw]
    taken = set(RESERVED) | set(new.column_names)
    for key in dict.fromkeys(k for d in dicts for k in d):
        new = new.append_column(key if key not in taken else f"src_{key}", pa.array([d.get(key) for d in dicts], pa.string()))
    return new


def merge(parent: pa.Table, new: pa.Table, extra: dict[str, list[tuple[str, str | None]]], records: list[dict[str, Any]]) -> pa.Table:
    """Parent rows (minus crawl placeholders this run replaces) + new rows, with further places of known bytes."""
    redo = pa.array([placeholder_id(r["url"]) for r in records if r.get("row")], pa.string())
    stale = pc.and_(pc.is_in(parent.column("sample_id"), redo), pc.equal(pc.fill_null(parent.column("excluded_by"), ""), STAGE))
    table = pa.concat_tables([parent.filter(pc.invert(stale)), conform(new)], promote_options="default")
    if not extra:
        return table
    ids = table.column("sample_id").to_pylist()
    srcs, labs = table.column("extra_sources").to_pylist(), table.column("extra_labels").to_pylist()
    sources, labels = table.column("source").to_pylist(), table.column("label").to_pylist()
    for i, sid in enumerate(ids):
        more = extra.get(sid)
        if more:
            have = {(sources[i], labels[i]), *zip(srcs[i] or [], labs[i] or [], strict=False)}
            fresh = [(s, lab) for s, lab in more if (s, lab) not in have and not have.add((s, lab))]
            if fresh:  # a row without new places stays as it was (null stays null)
                srcs[i] = (srcs[i] or []) + [s for s, _ in fresh]
                labs[i] = (labs[i] or []) + [lab for _, lab in fresh]
    table = table.set_column(table.schema.get_field_index("extra_sources"), "extra_sources", pa.array(srcs, RESERVED["extra_sources"]))
    return table.set_column(table.schema.get_field_index("extra_labels"), "extra_labels", pa.array(labs, RESERVED["extra_labels"]))


def crawl_log(records: list[dict[str, Any]]) -> bytes:
    """Every URL of this run, one row each (pages included), as Parquet bytes for ``state/crawl_log.parquet``."""
    import pyarrow.parquet as pq

    types = {
        "url": pa.string(), "kind": pa.string(), "depth": pa.int32(), "page": pa.string(), "seed": pa.int32(),
        "label": pa.string(), "status": pa.string(), "http_status": pa.int32(), "error": pa.string(), "nbytes": pa.int64(),
        "elapsed": pa.float64(), "attempts": pa.int32(), "final_url": pa.string(), "content_type": pa.string(),
        "sample_id": pa.string(),
    }  # fmt: skip
    table = pa.table({k: pa.array([r.get(k) for r in records], t) for k, t in types.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
