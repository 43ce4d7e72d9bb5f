"""Reserved sample-table columns, their Arrow types, validation and helpers to exclude rows with a reason.

The sample table holds one row per image (metadata only, never pixels). Stages add their own columns
named ``is_<issue>``, ``<issue>_score`` or plain facts; the reserved ones below mean the same everywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError

OK = "ok"
EXCLUDED = "excluded"

#: Reserved columns in table order. ``extra_sources``/``extra_labels`` record every further place the same
#: bytes were found (same sha256 = same sample), so a second source is never lost.
RESERVED: dict[str, pa.DataType] = {
    "sample_id": pa.string(),
    "source": pa.string(),
    "label": pa.string(),
    "label_source": pa.string(),
    "split": pa.string(),
    "status": pa.string(),
    "excluded_by": pa.string(),
    "reason": pa.string(),
    "error": pa.string(),
    "width": pa.int32(),
    "height": pa.int32(),
    "mode": pa.string(),
    "format": pa.string(),
    "exif_orientation": pa.int8(),
    "nbytes": pa.int64(),
    "pack": pa.string(),
    "origin_split": pa.string(),
    "extra_sources": pa.list_(pa.string()),
    "extra_labels": pa.list_(pa.string()),
}

SAMPLE_SCHEMA = pa.schema([pa.field(name, typ) for name, typ in RESERVED.items()])


def sha256_hex(data: bytes) -> str:
    """The sample identity: sha256 of the original bytes, lowercase hex (64 chars)."""
    return hashlib.sha256(data).hexdigest()


def placeholder_id(source: str) -> str:
    """Identity for an input whose bytes could not be read (missing file, failed download).

    It cannot collide with a real sha256 of image bytes because the prefix is part of the hashed text.
    """
    return hashlib.sha256(b"curate:unreadable:" + source.encode("utf-8", "surrogateescape")).hexdigest()


def empty_table(schema: pa.Schema = SAMPLE_SCHEMA) -> pa.Table:
    """A zero-row table with ``schema``."""
    return schema.empty_table()


def conform(table: pa.Table) -> pa.Table:
    """Cast reserved columns to their types, add missing ones as nulls, keep extra stage columns after them.

    Raises:
        CurateError: if a reserved column cannot be cast (a stage wrote the wrong type).
    """
    n = table.num_rows
    arrays, fields = [], []
    for name, typ in RESERVED.items():
        if name in table.column_names:
            col = table.column(name)
            if col.type != typ:
                try:
                    col = col.cast(typ)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise CurateError(f"column {name!r} has type {col.type}, expected {typ}: {exc}") from exc
        else:
            col = pa.nulls(n, typ)
        arrays.append(col)
        fields.append(pa.field(name, typ))
    for name in table.column_names:
        if name not in RESERVED:
            arrays.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def validate(table: pa.Table) -> None:
    """Check the invariants every committed version must hold.

    Raises:
        CurateError: duplicate or null ``sample_id``, unknown ``status``, excluded rows without a reason.
    """
    ids = table.column("sample_id")
    if ids.null_count:
        raise CurateError("sample table has rows without sample_id")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        raise CurateError("sample table has duplicate sample_id values")
    status = table.column("status")
    bad = pc.invert(pc.is_in(status, pa.array([OK, EXCLUDED])))
    if pc.any(pc.fill_null(bad, True)).as_py():
        raise CurateError("sample table has rows whose status is neither 'ok' nor 'excluded'")
    excl = pc.equal(status, EXCLUDED)
    no_reason = pc.and_(excl, pc.is_null(table.column("reason")))
    if pc.any(no_reason).as_py():
        raise CurateError("sample table has excluded rows without a reason")


def exclude(table: pa.Table, mask: pa.Array | Iterable[bool], *, stage: str, reason: str) -> pa.Table:
    """Mark rows where ``mask`` is true and still ``ok`` as excluded by ``stage`` for ``reason``.

    Rows already excluded keep their first stage and reason: the earliest decision is the one to audit.
    """
    mask = pa.array(mask, type=pa.bool_()) if not isinstance(mask, pa.Array | pa.ChunkedArray) else mask
    hit = pc.and_(pc.fill_null(mask, False), pc.equal(table.column("status"), OK))
    out = table
    for name, value in (("status", EXCLUDED), ("excluded_by", stage), ("reason", reason)):
        col = pc.if_else(hit, pa.scalar(value, pa.string()), table.column(name))
        out = out.set_column(out.schema.get_field_index(name), name, col)
    return out


def included(table: pa.Table) -> pa.Table:
    """Rows with ``status == 'ok'``."""
    return table.filter(pc.equal(table.column("status"), OK))


def class_list(labels: list[str | None]) -> list[str]:
    """Sorted class names; numerically when every name is an integer (so "10" follows "9")."""
    names = {x for x in labels if x is not None}
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)
