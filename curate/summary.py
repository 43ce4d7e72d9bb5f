"""Counts over a sample table: what ``curate show`` prints and what every stats.json carries.

Counts are plain dicts of ints so that stats from shards or workers merge by addition (``merge_counts``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.schema import OK


def _value_counts(arr: pa.ChunkedArray | pa.Array, null: str = "(none)") -> dict[str, int]:
    out: dict[str, int] = {}
    for item in pc.value_counts(arr).to_pylist():
        key = item["values"]
        out[null if key is None else str(key)] = int(item["counts"])
    return dict(sorted(out.items()))


def summarize(table: pa.Table) -> dict[str, Any]:
    """Counts of a sample table.

    Returns:
        ``{"rows", "included", "excluded", "status", "excluded_by_reason" ("stage:reason" -> n),
        "per_class" (included rows), "per_split" (included rows), "per_split_class" (split -> class -> n)}``.
    """
    status = table.column("status")
    ok_mask = pc.equal(status, OK)
    ok = table.filter(ok_mask)
    excl = table.filter(pc.invert(ok_mask))
    reasons: dict[str, int] = {}
    if excl.num_rows:
        keys = pc.binary_join_element_wise(
            pc.fill_null(excl.column("excluded_by"), "?"), pc.fill_null(excl.column("reason"), "?"), ":"
        )
        reasons = _value_counts(keys)
    per_split_class: dict[str, dict[str, int]] = {}
    if ok.num_rows:
        splits = pc.fill_null(ok.column("split"), "(none)")
        for split in pc.unique(splits).to_pylist():
            sub = ok.filter(pc.equal(splits, split))
            per_split_class[split] = _value_counts(sub.column("label"), null="(unlabeled)")
    return {
        "rows": table.num_rows,
        "included": ok.num_rows,
        "excluded": excl.num_rows,
        "status": _value_counts(status),
        "excluded_by_reason": reasons,
        "per_class": _value_counts(ok.column("label"), null="(unlabeled)") if ok.num_rows else {},
        "per_split": _value_counts(ok.column("split")) if ok.num_rows else {},
        "per_split_class": dict(sorted(per_split_class.items())),
    }


def merge_counts(*counts: dict[str, int]) -> dict[str, int]:
    """Add count dicts key by key (stats from several workers or shards)."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(sorted(total.items()))


def diff_tables(a: pa.Table, b: pa.Table) -> dict[str, Any]:
    """What changed from version ``a`` to ``b``, matched by ``sample_id``.

    Returns:
        ``{"added", "removed", "newly_excluded" (reason -> n), "newly_included", "label_changed",
        "split_changed", "columns_added", "columns_removed"}``.
    """
    ids_a = set(a.column("sample_id").to_pylist())
    ids_b = set(b.column("sample_id").to_pylist())
    cols = ["sample_id", "status", "reason", "label", "split"]
    da = {r["sample_id"]: r for r in a.select(cols).to_pylist()}
    newly_excluded: Counter[str] = Counter()
    newly_included = label_changed = split_changed = 0
    for r in b.select(cols).to_pylist():
        old = da.get(r["sample_id"])
        if old is None:
            continue
        if old["status"] == OK and r["status"] != OK:
            newly_excluded[str(r["reason"])] += 1
        elif old["status"] != OK and r["status"] == OK:
            newly_included += 1
        label_changed += old["label"] != r["label"]
        split_changed += old["split"] != r["split"]
    return {
        "added": len(ids_b - ids_a),
        "removed": len(ids_a - ids_b),
        "newly_excluded": dict(sorted(newly_excluded.items())),
        "newly_included": newly_included,
        "label_changed": label_changed,
        "split_changed": split_changed,
        "columns_added": [c for c in b.column_names if c not in a.column_names],
        "columns_removed": [c for c in a.column_names if c not in b.column_names],
    }
