"""Class counts of a split and the seeded hash order: what balancing and ``to_balance`` augmentation both count by.

A class's count is its *effective* count over the included (``status == "ok"``), labeled rows of the split: the
sum of ``repeat`` (1 when the column is absent or null), i.e. how many samples of it the train shards hold.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from curate.schema import OK

TRAIN = "train"


def order_key(seed: int, key: str) -> bytes:
    """The seeded hash that orders rows for every random choice (independent of row order)."""
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def train_mask(table: pa.Table, split: str = TRAIN) -> pa.ChunkedArray:
    """Included, labeled rows of ``split``."""
    ok = pc.and_(pc.equal(table.column("status"), OK), pc.equal(pc.fill_null(table.column("split"), ""), split))
    return pc.and_(ok, pc.is_valid(table.column("label")))


def repeats(table: pa.Table) -> list[int]:
    """``repeat`` per row (1 when the column is absent or null)."""
    values = table.column("repeat").to_pylist() if "repeat" in table.column_names else [None] * table.num_rows
    return [1 if r is None else int(r) for r in values]


def class_counts(table: pa.Table, split: str = TRAIN) -> dict[str, int]:
    """Effective samples per class (sum of ``repeat``) over the included, labeled rows of ``split``."""
    counts: dict[str, int] = defaultdict(int)
    mask = train_mask(table, split).to_pylist()
    for m, label, r in zip(mask, table.column("label").to_pylist(), repeats(table), strict=True):
        if m:
            counts[label] += r
    return dict(sorted(counts.items()))


def resolve_target(counts: dict[str, int], target: str | int) -> int:
    """The per-class sample count a target word or number stands for."""
    if isinstance(target, int):
        return target
    values = list(counts.values())
    return {"max": max(values), "min": min(values), "median": int(statistics.median(values))}[target]
