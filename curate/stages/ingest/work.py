"""The per-sample work of ingest (``process_items``): read or take the bytes, sha256 them, decode them fully.

It runs wherever the executor puts it (this process, a pool worker, a Ray task) on one batch of
``curate.sources.ITEM_SCHEMA`` rows and returns one ``OUT_SCHEMA`` row per input; the driver's merge is in
``read.py``. The output columns are built a column at a time: the pass-through columns never leave Arrow.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.images import bomb_guard, inspect_guarded
from curate.schema import EXCLUDED, OK, placeholder_id, sha256_hex
from curate.sources.readfile import read_path
from curate.stages.ingest import IngestConfig

OUT_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("origin_split", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mode", pa.string()),
        ("format", pa.string()),
        ("exif_orientation", pa.int8()),
        ("nbytes", pa.int64()),
        ("data", pa.binary()),
        ("extra", pa.string()),
    ]
)


def _encode_raw(data: bytes, spec: str) -> bytes:
    from PIL import Image

    mode, size = spec.split(":")
    h, w = (int(x) for x in size.split("x"))
    buf = io.BytesIO()
    Image.frombytes(mode, (w, h), data).save(buf, format="PNG")
    return buf.getvalue()


def process_items(batch: pa.Table, cfg: IngestConfig) -> pa.Table:
    """Per-sample work: get the bytes, hash them, decode them fully (URL rows arrive fetched, see ``run_ingest``).

    Args:
        batch: rows of ``curate.sources.ITEM_SCHEMA``.
        cfg: the ingest config (size caps, allowed classes, fetch timeout).

    Returns:
        A table of ``OUT_SCHEMA``, one row per input row in the same order; ``data`` is null for excluded rows.
    """
    allowed = set(cfg.classes) if cfg.classes else None
    # Column lists, not one dict per row; the columns passed through unchanged never leave Arrow.
    paths, encodes, raw, pre_reasons, pre_errors = (
        batch.column(c).to_pylist() for c in ("path", "encode", "data", "pre_reason", "pre_error")
    )
    labels = batch.column("label").to_pylist() if allowed is not None else None
    ids: list[str] = []
    reasons: list[str | None] = []
    errors: list[str | None] = []
    facts: list[tuple[Any, ...]] = []
    sizes: list[int | None] = []
    kept: list[bytes | None] = []
    with bomb_guard(cfg.max_pixels):  # one warnings filter for the batch, not one per image
        for i, reason in enumerate(pre_reasons):
            data, error = None, pre_errors[i]
            if reason is None:
                if paths[i] is not None:
                    data, reason, error = read_path(paths[i], cfg.max_bytes)
                elif encodes[i] is not None:
                    data = _encode_raw(raw[i], encodes[i])
                else:
                    data = raw[i] if raw[i] is not None else b""
            check = inspect_guarded(data, max_pixels=cfg.max_pixels, max_bytes=cfg.max_bytes) if reason is None else None
            if check is not None:
                reason, error = check.reason, check.error
                facts.append((check.width, check.height, check.mode, check.format, check.exif_orientation))
            else:
                facts.append(_NO_FACTS)
            if reason is None and labels is not None and labels[i] is not None and labels[i] not in allowed:
                reason, error = "unknown_label", f"label {labels[i]!r} is not in --classes"
            ids.append(sha256_hex(data) if data is not None else placeholder_id(batch.column("source")[i].as_py()))
            reasons.append(reason)
            errors.append(error)
            sizes.append(len(data) if data is not None else None)
            kept.append(data if reason is None else None)
    return _out_table(batch, ids, reasons, errors, facts, sizes, kept)


#: ``facts`` of a row that was not decoded.
_NO_FACTS = (None,) * 5


def _out_table(
    batch: pa.Table,
    ids: list[str],
    reasons: list[str | None],
    errors: list[str | None],
    facts: list[tuple[Any, ...]],
    sizes: list[int | None],
    kept: list[bytes | None],
) -> pa.Table:
    """``OUT_SCHEMA`` columns from ``process_items``' per-row lists; ``facts`` are (width, height, mode, format,
    exif_orientation) per row; source, label, origin_split and extra are the input's own columns."""
    reason = pa.array(reasons, pa.string())
    width, height, mode, fmt, orientation = zip(*facts, strict=True) if facts else ((),) * 5
    cols = {
        "sample_id": pa.array(ids, pa.string()),
        **{c: batch.column(c).cast(OUT_SCHEMA.field(c).type) for c in ("source", "label", "origin_split")},
        "status": pc.if_else(pc.is_null(reason), OK, EXCLUDED),
        "reason": reason,
        "error": pa.array(errors, pa.string()),
        "width": pa.array(width, pa.int32()),
        "height": pa.array(height, pa.int32()),
        "mode": pa.array(mode, pa.string()),
        "format": pa.array(fmt, pa.string()),
        "exif_orientation": pa.array(orientation, pa.int8()),
        "nbytes": pa.array(sizes, pa.int64()),
        "data": pa.array(kept, pa.binary()),
        "extra": batch.column("extra").cast(pa.string()),
    }
    return pa.table(cols, schema=OUT_SCHEMA)
