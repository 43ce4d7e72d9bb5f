"""Sample tables in and out: a DataFrame or Table as a sample table (``as_table``); a table to Parquet, CSV or JSONL
(list columns become JSON text in CSV)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa


def as_table(data: Any) -> pa.Table:
    """A stage's input as a pyarrow Table: a Table as it is, a pandas DataFrame or a RecordBatch converted.

    Reserved columns (``curate.schema.RESERVED``) are cast to their types, so that a DataFrame read back from
    ``curate.Workspace.samples()`` (where an all-null ``split`` column has no type left) is a valid sample table
    again. Other columns keep the types pandas gives them; the index is dropped.

    Raises:
        TypeError: ``data`` is none of these.
        CurateError: a reserved column cannot be cast (text in ``width``).
    """
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    elif not isinstance(data, pa.Table):
        import pandas as pd

        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"expected a pandas DataFrame or a pyarrow Table, got {type(data).__name__}")
        data = pa.Table.from_pandas(data, preserve_index=False).replace_schema_metadata(None)
    from curate.errors import CurateError
    from curate.schema import RESERVED

    for i, name in enumerate(data.column_names):
        typ = RESERVED.get(name)
        if typ is not None and data.column(i).type != typ:
            try:
                data = data.set_column(i, name, data.column(i).cast(typ))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise CurateError(f"column {name!r} has type {data.column(i).type}, expected {typ}: {exc}") from None
    return data


def write_table(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path``; the format follows the suffix (.parquet, .csv, .jsonl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path, compression="zstd")
    elif suffix == ".csv":
        import pyarrow.csv as pacsv

        cols = []
        for name in table.column_names:
            col = table.column(name)
            if pa.types.is_list(col.type) or pa.types.is_struct(col.type):
                col = pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()], pa.string())
            cols.append(col)
        pacsv.write_csv(pa.Table.from_arrays(cols, names=table.column_names), path)
    elif suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as fh:
            for batch in table.to_batches(65536):
                for row in batch.to_pylist():
                    fh.write(json.dumps(row, default=str) + "\n")
    else:
        raise ValueError(f"unsupported table format {suffix}")


def per_row(batch: pa.Table, fn: Callable[[bytes], dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """``fn(data)`` for every ``sample_id``/``data`` row of ``batch``, as a table of ``schema`` in the same order.

    Bytes that make ``fn`` raise give a row of nulls whose ``error`` says why: hostile input is reported, never
    crashes a stage's per-sample work (``schema`` must have ``sample_id`` and ``error``).
    """
    rows: dict[str, list[Any]] = {name: [] for name in schema.names}
    for sid, data in zip(batch.column("sample_id").to_pylist(), batch.column("data").to_pylist(), strict=True):
        try:
            row = fn(data)
        except Exception as exc:  # noqa: BLE001 - hostile bytes: the row is reported, never crashes the stage
            row = {name: None for name in schema.names}
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        row["sample_id"] = sid
        for name in schema.names:
            rows[name].append(row[name])
    return pa.table(rows, schema=schema)
