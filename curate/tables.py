"""Write a sample table to Parquet, CSV or JSONL (list columns become JSON text in CSV)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa


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
